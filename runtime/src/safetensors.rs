//! The safetensors container: an 8-byte little-endian header length, a JSON header that
//! maps tensor names to dtype, shape and byte range, then the raw bytes.
//!
//! Only float32 tensors are loaded; `num_batches_tracked` (any dtype) is skipped, as the
//! contract says. Every structural fault names the file and the tensor.

use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Headers larger than this are refused before they are parsed (the format's own limit).
const MAX_HEADER: u64 = 100 << 20;

/// Tensors by name, in name order.
pub type Tensors = BTreeMap<String, Tensor>;

/// Reads a safetensors file.
pub fn read(path: &Path) -> Result<Tensors> {
    let bytes = crate::read_file(path)?;
    parse(&bytes).with_context(|| path.display().to_string())
}

fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Parses the bytes of a safetensors file.
pub fn parse(bytes: &[u8]) -> Result<Tensors> {
    if bytes.len() < 8 {
        bail!("not a safetensors file: {} bytes, shorter than the 8-byte header length", bytes.len());
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if header_len > MAX_HEADER {
        bail!("safetensors header length {header_len} exceeds the {MAX_HEADER}-byte limit");
    }
    let body_start = 8 + header_len as usize;
    if body_start > bytes.len() {
        bail!("safetensors header length {header_len} runs past the end of the file ({} bytes)", bytes.len());
    }
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..body_start])
        .map_err(|e| anyhow::anyhow!("safetensors header is not a JSON object: {e}"))?;
    let body = &bytes[body_start..];
    let mut out = Tensors::new();
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| info.get(k).with_context(|| format!("tensor `{name}`: header entry has no `{k}`"));
        let dtype = field("dtype")?.as_str().with_context(|| format!("tensor `{name}`: dtype is not a string"))?;
        let size = dtype_size(dtype).with_context(|| format!("tensor `{name}`: unknown dtype {dtype}"))?;
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .with_context(|| format!("tensor `{name}`: shape is not a list of sizes"))?;
        let offsets: Vec<u64> = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .with_context(|| format!("tensor `{name}`: data_offsets is not [begin, end]"))?;
        let (begin, end) = (offsets[0], offsets[1]);
        if begin > end || end > body.len() as u64 {
            bail!("tensor `{name}`: data_offsets [{begin}, {end}] lie outside the {}-byte data section", body.len());
        }
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let want = count.and_then(|c| c.checked_mul(size));
        if want != Some((end - begin) as usize) {
            bail!(
                "tensor `{name}`: shape {shape:?} of {dtype} needs {} bytes but data_offsets span {}",
                want.map_or("too many".to_string(), |w| w.to_string()),
                end - begin
            );
        }
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        if dtype != "F32" {
            bail!("tensor `{name}` has dtype {dtype}; resnetc loads float32 (F32) weights only");
        }
        let raw = &body[begin as usize..end as usize];
        let data = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        out.insert(name.clone(), Tensor::new(shape, data));
    }
    Ok(out)
}

/// Serializes float32 tensors to safetensors bytes (names sorted, data contiguous).
pub fn to_bytes(tensors: &Tensors) -> Vec<u8> {
    let mut header = Map::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        let len = t.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape(), "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = Value::Object(header).to_string();
    // Pad so the data section starts 8-byte aligned, as the reference writer does.
    text.push_str(&" ".repeat((8 - text.len() % 8) % 8));
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    for t in tensors.values() {
        for v in t.data() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Writes tensors as a safetensors file, atomically.
pub fn write(path: &Path, tensors: &Tensors) -> Result<()> {
    crate::write_file_atomic(path, &to_bytes(tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tensors {
        let mut t = Tensors::new();
        t.insert("a.weight".into(), Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]));
        t.insert("b".into(), Tensor::new(vec![3], vec![-1.0, 0.5, 9.0]));
        t
    }

    fn with_header(h: &str, body: &[u8]) -> Vec<u8> {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn round_trips() {
        assert_eq!(parse(&to_bytes(&sample())).unwrap(), sample());
    }

    #[test]
    fn skips_num_batches_tracked_of_any_dtype() {
        let h = r#"{"bn.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[0,8]}}"#;
        assert!(parse(&with_header(h, &[0; 8])).unwrap().is_empty());
    }

    #[test]
    fn refuses_broken_files_naming_the_fault() {
        let err = |b: &[u8]| format!("{:#}", parse(b).unwrap_err());
        assert!(err(&[1, 2, 3]).contains("shorter than the 8-byte"));
        assert!(err(&u64::MAX.to_le_bytes()).contains("exceeds"));
        assert!(err(&1000u64.to_le_bytes()).contains("past the end"));
        assert!(err(&with_header("{nope", &[])).contains("not a JSON object"));
        let past = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        assert!(err(&with_header(past, &[0; 8])).contains("tensor `w`: data_offsets [0, 16] lie outside"));
        let f16 = r#"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        assert!(err(&with_header(f16, &[0; 4])).contains("dtype F16"));
        let wrong = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(err(&with_header(wrong, &[0; 8])).contains("needs 12 bytes"));
    }
}
