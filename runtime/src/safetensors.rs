//! The safetensors container: an 8-byte little-endian header length, a JSON header that
//! maps tensor names to dtype, shape and byte range, then the raw bytes.
//!
//! Only float32 tensors are loaded; `num_batches_tracked` (any dtype) is skipped, as the
//! contract says. As in the format's reference reader, the tensors' byte ranges must
//! cover the data section exactly (no overlap, no gap, nothing after) and `__metadata__`
//! must map strings to strings. Every structural fault names the file and the tensor.

use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Headers larger than this are refused before they are parsed (the format's own limit).
const MAX_HEADER: u64 = 100 << 20;

/// Tensors by name, in name order.
pub type Tensors = BTreeMap<String, Tensor>;

/// Reads a safetensors file. Each tensor is read from the file into its own buffer, so
/// the file is never held in memory whole beside the tensors; a pipe, which cannot seek,
/// is read into memory first, no further than its header declares (`read_stream`).
pub fn read(path: &Path) -> Result<Tensors> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = crate::open_file(path)?;
    let meta = file.metadata().with_context(|| format!("{}: cannot read", path.display()))?;
    if !meta.is_file() {
        // A pipe or device has no length to seek within: read it through the handle
        // already open (a named FIFO loses its writer's data when its only reader closes).
        let bytes = read_stream(&mut file).with_context(|| format!("{}: cannot read", path.display()))?;
        return parse(&bytes).with_context(|| path.display().to_string());
    }
    let len = meta.len();
    // Messages below get the path as context, like `parse`'s.
    let parsed = (|| -> Result<Tensors> {
        let mut prefix = [0u8; 8];
        if len >= 8 {
            file.read_exact(&mut prefix).context("cannot read")?;
        }
        let header_len = header_length(&prefix, len)?;
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).context("cannot read")?;
        let mut out = Tensors::new();
        for e in entries(&header, len - 8 - header_len)? {
            file.seek(SeekFrom::Start(8 + header_len + e.begin as u64)).context("cannot read")?;
            // Straight into the tensor's buffer: no temporary to free, which would also
            // make the allocator keep later tensors on its heap, where freeing them after
            // packing returns nothing to the system.
            let mut data = vec![0.0f32; (e.end - e.begin) / 4];
            // SAFETY: any bytes are a valid f32; the view covers exactly the vector.
            let view = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), data.len() * 4) };
            file.read_exact(view).context("cannot read")?;
            for v in &mut data {
                *v = f32::from_bits(u32::from_le(v.to_bits()));
            }
            out.insert(e.name, Tensor::new(e.shape, data));
        }
        Ok(out)
    })();
    parsed.with_context(|| path.display().to_string())
}

/// The bytes of a safetensors stream, read no further than its header says: the 8-byte
/// length, a header of at most [`MAX_HEADER`] bytes, then the data section up to the
/// largest end the header declares, and one byte more to show trailing bytes. A stream
/// without a usable header stops there (so `/dev/zero` or `/dev/urandom` fail at once);
/// `parse` then gives the fault, as for a file.
fn read_stream(stream: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![];
    stream.by_ref().take(8).read_to_end(&mut bytes)?;
    if bytes.len() < 8 {
        return Ok(bytes);
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if header_len > MAX_HEADER {
        return Ok(bytes);
    }
    stream.by_ref().take(header_len).read_to_end(&mut bytes)?;
    let declared_end = serde_json::from_slice::<Map<String, Value>>(&bytes[8..])
        .ok()
        .and_then(|h| h.values().filter_map(|info| info.get("data_offsets")?.get(1)?.as_u64()).max());
    if bytes.len() as u64 == 8 + header_len {
        stream.take(declared_end.unwrap_or(0).saturating_add(1)).read_to_end(&mut bytes)?;
    }
    Ok(bytes)
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

/// The header length from the first 8 bytes (`prefix`, read only when `len >= 8`) of a
/// file of `len` bytes, checked against the format's limit and the file's length.
fn header_length(prefix: &[u8], len: u64) -> Result<u64> {
    if len < 8 {
        bail!("not a safetensors file: {len} bytes, shorter than the 8-byte header length");
    }
    let header_len = u64::from_le_bytes(prefix[..8].try_into().unwrap());
    if header_len > MAX_HEADER {
        bail!("safetensors header length {header_len} exceeds the {MAX_HEADER}-byte limit");
    }
    if 8 + header_len > len {
        bail!("safetensors header length {header_len} runs past the end of the file ({len} bytes)");
    }
    Ok(header_len)
}

/// One float32 tensor of the header: name, shape and byte range in the data section.
struct Entry {
    name: String,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// The float32 tensors the JSON `header` describes over a data section of `body_len`
/// bytes (`num_batches_tracked` skipped), every entry checked.
fn entries(header: &[u8], body_len: u64) -> Result<Vec<Entry>> {
    let header: Map<String, Value> =
        serde_json::from_slice(header).map_err(|e| anyhow::anyhow!("safetensors header is not a JSON object: {e}"))?;
    let mut out = vec![];
    // Every tensor's byte range, to check that they tile the data section.
    let mut ranges: Vec<(u64, u64, &str)> = vec![];
    for (name, info) in &header {
        if name == "__metadata__" {
            // The reference reader takes a map of strings, or null.
            let strings = info.is_null() || info.as_object().is_some_and(|m| m.values().all(Value::is_string));
            if !strings {
                bail!("safetensors header: `__metadata__` is not a map of strings to strings");
            }
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
        if begin > end || end > body_len {
            bail!("tensor `{name}`: data_offsets [{begin}, {end}] lie outside the {body_len}-byte data section");
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
        ranges.push((begin, end, name));
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        if dtype != "F32" {
            bail!("tensor `{name}` has dtype {dtype}; resnetc loads float32 (F32) weights only");
        }
        out.push(Entry { name: name.clone(), shape, begin: begin as usize, end: end as usize });
    }
    check_tiling(ranges, body_len)?;
    Ok(out)
}

/// The format's rule that the tensors' byte ranges cover the data section exactly, with
/// no overlap and no gap: overlapping tensors would alias each other's values, and bytes
/// no tensor owns are how one file is made to parse as two different things.
fn check_tiling(mut ranges: Vec<(u64, u64, &str)>, body_len: u64) -> Result<()> {
    ranges.sort();
    let mut covered = 0u64;
    let mut last: Option<&str> = None;
    for &(begin, end, name) in &ranges {
        if begin < covered {
            bail!(
                "tensor `{name}`: data_offsets [{begin}, {end}] overlap tensor `{}`, which ends at {covered}",
                last.unwrap_or("")
            );
        }
        if begin > covered {
            bail!("tensor `{name}`: data_offsets [{begin}, {end}] leave bytes {covered}..{begin} of the data section to no tensor");
        }
        covered = end;
        last = Some(name);
    }
    if covered != body_len {
        bail!(
            "the data section has {body_len} bytes but the tensors end at byte {covered}: {} trailing bytes",
            body_len - covered
        );
    }
    Ok(())
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Parses the bytes of a safetensors file.
pub fn parse(bytes: &[u8]) -> Result<Tensors> {
    let header_len = header_length(bytes, bytes.len() as u64)?;
    let body_start = 8 + header_len as usize;
    let body = &bytes[body_start..];
    let mut out = Tensors::new();
    for e in entries(&bytes[8..body_start], body.len() as u64)? {
        out.insert(e.name, Tensor::new(e.shape, floats(&body[e.begin..e.end])));
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

    /// Reading a file tensor by tensor gives what parsing its bytes gives, faults included.
    #[test]
    fn read_matches_parse() {
        let dir = std::env::temp_dir().join(format!("resnetc-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = to_bytes(&sample());
        let cases = [good.clone(), good[..good.len() - 3].to_vec(), good[..5].to_vec(), vec![]];
        for (i, bytes) in cases.iter().enumerate() {
            let path = dir.join(format!("{i}.safetensors"));
            std::fs::write(&path, bytes).unwrap();
            let (from_file, from_bytes) = (read(&path), parse(bytes));
            match (from_file, from_bytes) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "case {i}"),
                (Err(a), Err(b)) => assert_eq!(format!("{a:#}"), format!("{}: {b:#}", path.display()), "case {i}"),
                (a, b) => panic!("case {i}: read {:?} but parse {:?}", a.is_ok(), b.is_ok()),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A named FIFO is read through the one handle opened on it, like a file; a stream is
    /// read no further than its header declares.
    #[cfg(target_os = "linux")]
    #[test]
    fn reads_a_fifo_and_bounded_streams() {
        let dir = std::env::temp_dir().join(format!("resnetc-st-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("w.safetensors");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("no mkfifo here: skipped");
            return;
        }
        let good = to_bytes(&sample());
        let bytes = good.clone();
        let path = fifo.clone();
        let writer = std::thread::spawn(move || std::fs::write(path, bytes));
        assert_eq!(read(&fifo).unwrap(), sample());
        writer.join().unwrap().unwrap();
        // An endless stream of zeros: a zero-length header, which is no JSON object.
        let zeros = read_stream(&mut std::io::repeat(0)).unwrap();
        assert!(format!("{:#}", parse(&zeros).unwrap_err()).contains("not a JSON object"));
        // A good header then endless data: one byte past the declared end, then trailing bytes.
        let mut endless = std::io::Read::chain(&good[..], std::io::repeat(7));
        let got = read_stream(&mut endless).unwrap();
        assert_eq!(got.len(), good.len() + 1);
        assert!(format!("{:#}", parse(&got).unwrap_err()).contains("1 trailing bytes"));
        std::fs::remove_dir_all(&dir).unwrap();
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

    #[test]
    fn refuses_data_sections_the_tensors_do_not_tile() {
        let err = |h: &str, body: &[u8]| format!("{:#}", parse(&with_header(h, body)).unwrap_err());
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(err(overlap, &[0; 8]).contains("tensor `b`: data_offsets [4, 8] overlap tensor `a`, which ends at 8"));
        let gap = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}}"#;
        assert!(err(gap, &[0; 5]).contains("leave bytes 0..1 of the data section to no tensor"));
        let tail = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert!(err(tail, &[0; 20]).contains("16 trailing bytes"));
        let meta = r#"{"__metadata__":{"format":1},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert!(err(meta, &[0; 4]).contains("`__metadata__` is not a map of strings"));
        // Empty tensors take no bytes and may sit anywhere, as the reference writer puts them.
        let empty = r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert_eq!(parse(&with_header(empty, &[0; 4])).unwrap().len(), 2);
        let named = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert_eq!(parse(&with_header(named, &[0; 4])).unwrap().len(), 1);
        let null = r#"{"__metadata__":null,"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert_eq!(parse(&with_header(null, &[0; 4])).unwrap().len(), 1);
    }
}
