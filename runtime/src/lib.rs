//! Runtime of resnetc: everything a compiled model needs at run time and that every
//! backend shares: tensors, `.npy`, safetensors and image I/O, the seeded weight
//! generator, and (in later modules) weight transforms, the arena and the thread pool.

pub mod check;
pub mod classes;
pub mod exec;
pub mod fold;
pub mod idx;
pub mod image;
pub mod model;
pub mod npy;
pub mod pack;
pub mod pool;
pub mod preprocess;
pub mod runner;
pub mod safetensors;
pub mod seeded;
pub mod simd;
pub mod tensor;
pub mod winograd;

pub use anyhow;
pub use tensor::Tensor;

use anyhow::{bail, Context, Result};
use std::path::Path;

/// This process's peak resident set in MB (`VmHWM`, Linux), or `None` elsewhere. Unlike
/// `getrusage`'s `ru_maxrss`, it does not carry over the high-water mark of the process
/// image before `exec`, so a child of a large parent reports its own peak.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Opens a file for reading, with errors that name it and refuse directories up front.
pub fn open_file(path: &Path) -> Result<std::fs::File> {
    if path.is_dir() {
        bail!("{}: is a directory, expected a file", path.display());
    }
    std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// Reads a whole file, with the errors of [`open_file`].
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![];
    open_file(path)?.read_to_end(&mut bytes).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so that a failure never leaves a partial output file behind.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write", path.display()));
    }
    Ok(())
}
