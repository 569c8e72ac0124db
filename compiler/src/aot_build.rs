//! `resnetc build`: an object file with its C header, or a self-contained executable
//! linked with the system C compiler driver against the runtime's static library.

use crate::cranelift::aot;
use crate::jit_model::program;
use crate::spec::Spec;
use anyhow::{bail, Context, Result};
use resnetc_runtime::pack;
use resnetc_runtime::safetensors::Tensors;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Libraries the Rust standard library inside the runtime archive needs on Linux.
const SYSTEM_LIBS: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];

/// Writes `out` (object) and `out` with extension `.h` (C header).
pub fn write_object(spec: &Spec, tensors: &Tensors, out: &Path) -> Result<PathBuf> {
    let (obj, header) = object_and_header(spec, tensors, false)?;
    let h = out.with_extension("h");
    resnetc_runtime::write_file_atomic(out, &obj)?;
    resnetc_runtime::write_file_atomic(&h, header.as_bytes())?;
    Ok(h)
}

fn object_and_header(spec: &Spec, tensors: &Tensors, with_main: bool) -> Result<(Vec<u8>, String)> {
    let p = program(spec)?;
    let blob = pack::build_blob(&p.recipes, p.weight_floats, tensors)?;
    let prefix = crate::identifier(&spec.name);
    let obj = aot::object(&p, blob.as_slice(), &prefix, spec.input, with_main)?;
    Ok((obj, aot::header(&p, &prefix, spec.input, &spec.name)))
}

/// The runtime's static library: `$RESNETC_RUNTIME_LIB`, or the newest of those beside this
/// executable (where `cargo build --release` puts it) and in the `deps/` directory there.
pub fn runtime_archive() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RESNETC_RUNTIME_LIB") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("RESNETC_RUNTIME_LIB={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot locate the resnetc executable")?;
    let mut dirs = vec![];
    if let Some(d) = exe.parent() {
        dirs.push(d.to_path_buf());
        if let Some(up) = d.parent() {
            dirs.push(up.to_path_buf()); // target/release/deps -> target/release
        }
    }
    // `cargo build` leaves `libresnetc_runtime.a` beside resnetc; when the runtime was
    // only built as a dependency (e.g. by `cargo test`), cargo leaves its archive in deps/
    // with a hash suffix. Of all of them the newest: an older one may predate the
    // runtime's sources.
    let newest = dirs
        .iter()
        .flat_map(|d| {
            let deps = std::fs::read_dir(d.join("deps")).into_iter().flatten().flatten().map(|e| e.path());
            std::iter::once(d.join("libresnetc_runtime.a")).chain(deps.filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                n.starts_with("libresnetc_runtime-") && n.ends_with(".a")
            }))
        })
        .filter_map(|p| Some((p.metadata().and_then(|m| m.modified()).ok()?, p)))
        .max_by_key(|(t, _)| *t);
    if let Some((_, p)) = newest {
        return Ok(p);
    }
    bail!("cannot find libresnetc_runtime.a beside resnetc (build the workspace with `cargo build --release`, or set RESNETC_RUNTIME_LIB)")
}

/// Builds a self-contained executable at `out`.
pub fn write_executable(spec: &Spec, tensors: &Tensors, out: &Path) -> Result<()> {
    let archive = runtime_archive()?;
    let (obj, _) = object_and_header(spec, tensors, true)?;
    let dir = std::env::temp_dir().join(format!("resnetc-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let result = link(&dir, &obj, &archive, out);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn link(dir: &Path, obj: &[u8], archive: &Path, out: &Path) -> Result<()> {
    let o = dir.join("model.o");
    std::fs::write(&o, obj).with_context(|| format!("{}: cannot write", o.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let tmp = dir.join("model.exe");
    let output = Command::new(&cc)
        .arg("-o")
        .arg(&tmp)
        .arg(&o)
        .arg(archive)
        .args(SYSTEM_LIBS)
        .output()
        .with_context(|| format!("cannot run the C compiler `{cc}` to link (install gcc or clang, or set CC)"))?;
    if !output.status.success() {
        let msg = String::from_utf8_lossy(&output.stderr);
        let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        bail!("linking with `{cc}` failed: {first}");
    }
    // Copy then rename beside the target, so a failure leaves no partial executable.
    let bytes = std::fs::read(&tmp).with_context(|| format!("{}: cannot read", tmp.display()))?;
    resnetc_runtime::write_file_atomic(out, &bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("{}: cannot make executable", out.display()))?;
    }
    Ok(())
}
