//! IDX files (the MNIST / Fashion-MNIST container), plain or gzip-compressed.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// An IDX array of unsigned bytes with its dimensions.
#[derive(Debug)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file of `u8` elements (magic `0x00000803` images, `0x00000801` labels);
/// `.gz` files are decompressed.
pub fn read(path: &Path) -> Result<Idx> {
    let raw = crate::read_file(path)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        out
    } else {
        raw
    };
    parse(&bytes).with_context(|| path.display().to_string())
}

pub fn parse(bytes: &[u8]) -> Result<Idx> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("not an IDX file");
    }
    if bytes[2] != 0x08 {
        bail!("IDX element type {:#04x} is not unsigned byte (0x08)", bytes[2]);
    }
    let rank = bytes[3] as usize;
    let head = 4 + 4 * rank;
    if bytes.len() < head {
        bail!("truncated IDX header");
    }
    let dims: Vec<usize> =
        (0..rank).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).context("IDX dimensions overflow")?;
    if bytes.len() - head != count {
        bail!("IDX data holds {} bytes, dimensions {dims:?} need {count}", bytes.len() - head);
    }
    Ok(Idx { dims, data: bytes[head..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_sizes() {
        let mut b = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend([1, 2, 3, 4, 5, 6]);
        let idx = parse(&b).unwrap();
        assert_eq!((idx.dims, idx.data), (vec![2, 3], vec![1, 2, 3, 4, 5, 6]));
        assert!(parse(&b[..15]).is_err());
        assert!(parse(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap_err().to_string().contains("unsigned byte"));
    }
}
