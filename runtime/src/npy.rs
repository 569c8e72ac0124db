//! NumPy `.npy` files holding little-endian float32 arrays in C order: the model's I/O.
//!
//! Versions 1.0, 2.0 and 3.0 of the format are read; 1.0 is written. Anything else
//! (another dtype, big-endian data, Fortran order, a truncated body) is refused with a
//! message that names the file and what was found.

use crate::tensor::{shape_str, Tensor};
use anyhow::{bail, Context, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a float32 `.npy` file.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = crate::read_file(path)?;
    parse(&bytes).with_context(|| path.display().to_string())
}

/// Parses the bytes of a float32 `.npy` file.
pub fn parse(bytes: &[u8]) -> Result<Tensor> {
    if bytes.is_empty() {
        bail!("empty file, not a .npy array");
    }
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("not a .npy file (bad magic bytes)");
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("truncated .npy header");
            }
            (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
        }
        v => bail!("unsupported .npy format version {v}"),
    };
    let header_end =
        header_start.checked_add(header_len).filter(|&e| e <= bytes.len()).context("truncated .npy header")?;
    let header = std::str::from_utf8(&bytes[header_start..header_end]).context(".npy header is not text")?;
    let descr = dict_value(header, "descr").context(".npy header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    match descr {
        "<f4" | "=f4" => {}
        ">f4" => bail!("big-endian float32 ('>f4') is not supported; save little-endian '<f4'"),
        other => bail!("dtype '{other}' is not float32 ('<f4')"),
    }
    let fortran = dict_value(header, "fortran_order").context(".npy header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        bail!("Fortran-order arrays are not supported; save a C-order array");
    }
    let shape_text = dict_value(header, "shape").context(".npy header has no 'shape'")?;
    let shape = parse_shape(shape_text)?;
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).context(".npy shape is too large")?;
    let body = &bytes[header_end..];
    let expected = count.checked_mul(4).context(".npy shape is too large")?;
    if body.len() != expected {
        bail!("data holds {} bytes but shape {} needs {expected}", body.len(), shape_str(&shape));
    }
    let data = body.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    Ok(Tensor::new(shape, data))
}

/// The text of `key`'s value in the header's Python dict literal.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let start = quoted.iter().find_map(|q| header.find(q.as_str()).map(|i| i + q.len()))?;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}']).unwrap_or(rest.len()) };
    Some(&rest[..end])
}

fn parse_shape(text: &str) -> Result<Vec<usize>> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .with_context(|| format!("bad .npy shape {text}"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("bad .npy shape {text}")))
        .collect()
}

/// Serializes a tensor as a version 1.0 `.npy` file.
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // The header, with magic and length, is padded with spaces to a multiple of 64 bytes
    // and ends in a newline, as NumPy writes it.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in t.data() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a tensor as `.npy`, atomically: a failed write leaves no file behind.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    crate::write_file_atomic(path, &to_bytes(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = Tensor::new(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, f32::MIN_POSITIVE, 7.0]);
        let bytes = to_bytes(&t);
        assert_eq!((bytes.len() - t.len() * 4) % 64, 0);
        assert_eq!(parse(&bytes).unwrap(), t);
        let v = Tensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(parse(&to_bytes(&v)).unwrap(), v);
    }

    fn header_with(descr: &str, fortran: &str, shape: &str, body: usize) -> Vec<u8> {
        let h = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n");
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend(std::iter::repeat_n(0u8, body));
        b
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let err = |b: &[u8]| format!("{:#}", parse(b).unwrap_err());
        assert!(err(&header_with("<f8", "False", "(2,)", 16)).contains("'<f8' is not float32"));
        assert!(err(&header_with(">f4", "False", "(2,)", 8)).contains("big-endian"));
        assert!(err(&header_with("<f4", "True", "(2,)", 8)).contains("Fortran"));
        assert!(err(&header_with("<f4", "False", "(2, 3)", 8)).contains("needs 24"));
        assert!(err(b"").contains("empty"));
        assert!(err(b"PK\x03\x04 zip file").contains("magic"));
    }
}
