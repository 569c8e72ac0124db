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
/// the device with a file. A symbolic link is followed, so the file it names is replaced
/// and the link stays; a replaced file keeps its permissions where the file system lets
/// it (errors name the path as given).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let cannot = || format!("{}: cannot write", path.display());
    let meta = std::fs::metadata(path);
    if meta.as_ref().is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return std::fs::write(path, bytes).with_context(cannot);
    }
    let target = resolve_links(path).with_context(cannot)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = std::fs::write(&tmp, bytes).and_then(|_| {
        if let Ok(m) = &meta {
            // Best effort: some file systems (vfat, some network mounts) refuse modes.
            let _ = std::fs::set_permissions(&tmp, m.permissions());
        }
        std::fs::rename(&tmp, &target)
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(cannot);
    }
    Ok(())
}

/// `path` with the symbolic links at its end followed, also to a file that does not
/// exist yet; a relative link is relative to its own directory. Fails on a loop.
fn resolve_links(path: &Path) -> Result<std::path::PathBuf> {
    let mut p = path.to_path_buf();
    // Linux's own limit on links followed in one lookup.
    for _ in 0..40 {
        let is_link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            return Ok(p);
        }
        let target = std::fs::read_link(&p)?;
        p = match p.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
    }
    bail!("too many levels of symbolic links")
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

    /// Writing through a symbolic link replaces the file it names and keeps the link; a
    /// replaced file keeps its permissions.
    #[test]
    fn writing_through_a_link_keeps_it_and_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("resnetc-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (target, link) = (dir.join("target.npy"), dir.join("link.npy"));
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("target.npy", &link).unwrap();
        write_file_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o640);
        // A dangling link: the file it names is created.
        std::fs::remove_file(&target).unwrap();
        write_file_atomic(&link, b"fresh").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"fresh");
        // A loop of links is an error, and both links stay.
        let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
        std::os::unix::fs::symlink("b.npy", &a).unwrap();
        std::os::unix::fs::symlink("a.npy", &b).unwrap();
        let err = format!("{:#}", write_file_atomic(&a, b"x").unwrap_err());
        assert!(err.contains("a.npy: cannot write") && err.contains("symbolic links"), "{err}");
        assert!(std::fs::symlink_metadata(&a).unwrap().file_type().is_symlink());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
