//! Runtime of resnetc: everything a compiled model needs at run time and that every
//! backend shares: tensors, `.npy`, safetensors and image I/O, the seeded weight
//! generator, and (in later modules) weight transforms, the arena and the thread pool.

pub mod check;
pub mod classes;
pub mod exec;
pub mod fold;
pub mod hugepages;
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
pub mod stdout;
pub mod strassen;
pub mod tensor;
pub mod timing;
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
/// so that a failure never leaves a partial output file behind. A path that exists and is
/// not a regular file (`/dev/null`, a FIFO) is written in place: the rename would replace
/// the device with a file.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return std::fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()));
    }
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

// Linux: the test opens the FIFO with O_NONBLOCK's Linux value.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    /// Writing to a FIFO (as to `/dev/null` or `/dev/stdout`) writes through it and leaves
    /// it a FIFO, where a rename over it would have replaced it with a regular file.
    #[test]
    fn writing_to_a_fifo_keeps_it() {
        let dir = std::env::temp_dir().join(format!("resnetc-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("out");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("no mkfifo here: skipped");
            return;
        }
        // The read end, opened without waiting for a writer (O_NONBLOCK), so that a
        // regression fails instead of hanging.
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(0o4000).open(&fifo).unwrap();
        write_file_atomic(&fifo, b"abc").unwrap();
        let mut got = vec![];
        let _ = reader.read_to_end(&mut got);
        assert_eq!(got, b"abc");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
