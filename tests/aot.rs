//! Ahead-of-time outputs: a C program compiled against the generated header and linked
//! with the object file, and the `--emit exe` executable run from a temporary directory,
//! both match the JIT (and so the reference); Rust-backend executables of random specs
//! match the reference.

mod support;

use resnetc::graph::Op;
use resnetc::jit_model::JitModel;
use resnetc::{from_spec, passes, reference, rustgen, spec, weights};
use resnetc_runtime::{npy, safetensors, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::random_spec::{random_toml_sized, Rng};

const SPEC: &str = "block = \"bottleneck\"\nlayers = [1, 2]\nwidths = [8, 12]\nstem = \"imagenet\"\nstem_width = 6\ngroups = 2\nwidth_per_group = 32\nnum_classes = 7\ninput = [3, 45, 39]\n";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnetc-aot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn resnetc(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_resnetc")).args(args).output().unwrap();
    assert!(out.status.success(), "resnetc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `resnetc build SPEC --weights W -o OUT EXTRA...`
fn build(spec: &Path, weights: &Path, out: &Path, extra: &[&str]) {
    let mut args =
        vec!["build", spec.to_str().unwrap(), "--weights", weights.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    resnetc(&args);
}

/// Spec file, weights file, input batch and the JIT's logits for it.
fn setup(dir: &Path, batch: usize) -> (PathBuf, PathBuf, Tensor, Tensor) {
    let spec_path = dir.join("aotnet.toml");
    std::fs::write(&spec_path, SPEC).unwrap();
    let s = spec::load(&spec_path).unwrap();
    let graph = from_spec::build(&s).unwrap();
    let w = weights::seeded(&graph, 5);
    let wpath = dir.join("w.safetensors");
    safetensors::write(&wpath, &w).unwrap();
    let x = weights::seeded_input(s.input, batch, 6);
    let y = JitModel::new(&s, &w, 1).unwrap().forward(&x).unwrap();
    (spec_path, wpath, x, y)
}

const C_PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include "aotnet.h"

int main(int argc, char **argv) {
    long n = atol(argv[1]);
    float *x = malloc(n * AOTNET_INPUT_FLOATS * sizeof(float));
    float *y = malloc(n * AOTNET_OUTPUT_FLOATS * sizeof(float));
    void *arena = aligned_alloc(AOTNET_ARENA_ALIGN, n * AOTNET_ARENA_BYTES);
    FILE *f = fopen(argv[2], "rb");
    if (fread(x, sizeof(float), n * AOTNET_INPUT_FLOATS, f) != (size_t)(n * AOTNET_INPUT_FLOATS)) return 2;
    fclose(f);
    /* The error path: every bad argument is refused with status 1, nothing is written. */
    y[0] = 12345.0f;
    if (aotnet_forward(arena, x, y, 0) != 1) return 3;      /* n < 1 */
    if (aotnet_forward(arena, x, y, -7) != 1) return 3;
    if (aotnet_forward(NULL, x, y, n) != 1) return 4;       /* NULL arena, input, output */
    if (aotnet_forward(arena, NULL, y, n) != 1) return 4;
    if (aotnet_forward(arena, x, NULL, n) != 1) return 4;
    if (y[0] != 12345.0f) return 6;
    if (aotnet_forward(arena, x, y, n) != 0) return 5;
    f = fopen(argv[3], "wb");
    fwrite(y, sizeof(float), n * AOTNET_OUTPUT_FLOATS, f);
    fclose(f);
    return 0;
}
"#;

#[test]
fn c_program_links_the_object_and_matches_the_jit() {
    let dir = scratch("obj");
    let (spec_path, wpath, x, want) = setup(&dir, 3);
    let obj = dir.join("aotnet.o");
    build(&spec_path, &wpath, &obj, &["--emit", "obj"]);
    assert!(dir.join("aotnet.h").is_file(), "header written beside the object");
    std::fs::write(dir.join("main.c"), C_PROGRAM).unwrap();
    let exe = dir.join("prog");
    let cc = Command::new("cc").current_dir(&dir).args(["-O2", "-o", "prog", "main.c", "aotnet.o"]).output().unwrap();
    assert!(cc.status.success(), "cc: {}", String::from_utf8_lossy(&cc.stderr));
    let raw: Vec<u8> = x.data().iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("x.bin"), raw).unwrap();
    let run = Command::new(&exe).current_dir(&dir).args(["3", "x.bin", "y.bin"]).output().unwrap();
    assert!(run.status.success(), "C program exited with {:?}", run.status.code());
    let y: Vec<f32> = std::fs::read(dir.join("y.bin"))
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(y, want.data(), "the object's single-threaded forward and the JIT run the same code");
}

#[test]
fn executable_runs_from_a_temp_dir_and_matches_the_jit() {
    let dir = scratch("exe");
    let (spec_path, wpath, x, want) = setup(&dir, 2);
    let exe = dir.join("aotnet");
    build(&spec_path, &wpath, &exe, &["--emit", "exe"]);
    // Move it away from everything resnetc wrote: it must stand alone.
    let alone = scratch("exe-alone");
    std::fs::rename(&exe, alone.join("aotnet")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    npy::write(&alone.join("x.npy"), &x).unwrap();
    for threads in ["1", "2"] {
        let run = Command::new(alone.join("aotnet"))
            .current_dir(&alone)
            .args(["--input", "x.npy", "--output", "y.npy", "--threads", threads])
            .output()
            .unwrap();
        assert!(run.status.success(), "executable failed: {}", String::from_utf8_lossy(&run.stderr));
        let y = npy::read(&alone.join("y.npy")).unwrap();
        support::agree(&y, &want).unwrap();
        assert_eq!(y.data(), want.data(), "threads {threads}");
    }
    // The runtime's C entry point reports every error as status 1 and one line.
    std::fs::write(alone.join("text.npy"), b"not an array").unwrap();
    npy::write(&alone.join("wrong.npy"), &Tensor::zeros(vec![1, 1, 2, 2])).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--input", "missing.npy", "--output", "y2.npy"], "missing.npy"),
        (&["--input", "text.npy", "--output", "y2.npy"], "text.npy"),
        (&["--input", "wrong.npy", "--output", "y2.npy"], "wrong.npy: input has shape [1, 1, 2, 2]"),
        (&["--input", "x.npy", "--output", "y2.npy", "--threads", "0"], "--threads"),
        (&["--input", "x.npy"], "--output"),
        (&["--frobnicate"], "--frobnicate"),
    ];
    for (args, needle) in cases {
        let bad = Command::new(alone.join("aotnet")).current_dir(&alone).args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle) && err.trim_end().lines().count() == 1, "{args:?}: {err}");
        assert!(!alone.join("y2.npy").exists(), "{args:?} left an output file");
    }
    let help = Command::new(alone.join("aotnet")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success() && text.starts_with("usage: ") && text.contains("--bench RUNS"), "{text}");
    output_cut_short_is_quiet(&alone.join("aotnet"), true);
}

/// Output cut short (`exe --help | head -c 0`, and the same for `--bench 1`) ends
/// quietly, not with a panic: nothing on stderr, and status 0 from the Rust backend's
/// `main`; under the C `main` of the Cranelift executables SIGPIPE's default action ends
/// the process first (so there the check guards only against output on stderr).
fn output_cut_short_is_quiet(exe: &Path, c_main: bool) {
    use std::os::unix::process::ExitStatusExt;
    const SIGPIPE: i32 = 13;
    for args in [&["--help"][..], &["--bench", "1"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let cut = Command::new(exe).args(args).stdout(writer).output().unwrap();
        let err = String::from_utf8_lossy(&cut.stderr);
        let quiet = cut.status.success() || (c_main && cut.status.signal() == Some(SIGPIPE));
        assert!(quiet && err.is_empty(), "{args:?}: {:?}: {err}", cut.status);
    }
}

#[test]
fn rust_backend_executable_matches_the_jit() {
    let dir = scratch("rust");
    let (spec_path, wpath, x, want) = setup(&dir, 2);
    let exe = dir.join("aotnet-rust");
    build(&spec_path, &wpath, &exe, &["--backend", "rust"]);
    npy::write(&dir.join("x.npy"), &x).unwrap();
    let run = Command::new(&exe)
        .current_dir(&dir)
        .args(["--input", "x.npy", "--output", "y.npy", "--threads", "2"])
        .output()
        .unwrap();
    assert!(run.status.success(), "executable failed: {}", String::from_utf8_lossy(&run.stderr));
    let y = npy::read(&dir.join("y.npy")).unwrap();
    let rel = support::agree(&y, &want).unwrap();
    eprintln!("rust executable vs JIT: rel err {rel:.2e}");
    output_cut_short_is_quiet(&exe, false);
}

/// Executables of the Rust backend (AVX-512 kernels where the machine has them, each
/// spec's own crate built by rustc) on random specs larger than the JIT's differential
/// test takes (widths up to 128, sides up to 96, so that their plans take Winograd, raw
/// weights among them), at 1 and 2 threads on batches of 1 to 3, against the reference
/// executor. `RESNETC_STRESS_EXES` and `RESNETC_STRESS_EXE_SEED` run more of them, or
/// others (default 6 from the seed below; about half a minute each).
#[test]
fn rust_backend_executables_match_reference_on_random_specs() {
    let count = support::env_usize("RESNETC_STRESS_EXES", 6);
    let mut rng = Rng::new(support::env_usize("RESNETC_STRESS_EXE_SEED", 0x5eed_2057) as u64);
    // Winograd convs of the specs' plans (all, with raw weights).
    let (mut winograd, mut raw) = (0, 0);
    for i in 0..count as u64 {
        let dir = scratch(&format!("random{i}"));
        let text = random_toml_sized(&mut rng, 128, 96);
        let spec_path = dir.join("random.toml");
        std::fs::write(&spec_path, &text).unwrap();
        let s = spec::load(&spec_path).unwrap();
        let graph = from_spec::build(&s).unwrap();
        let mut fused = passes::fuse(&graph).0;
        passes::Pass::run(&passes::ChooseAlgorithm { target: rustgen::TARGET }, &mut fused);
        for node in fused.g.node_weights() {
            if let Op::Conv(c) = &node.op {
                winograd += c.winograd.is_some() as usize;
                raw += c.winograd.is_some_and(|w| w.raw) as usize;
            }
        }
        let w = weights::seeded(&graph, i);
        let wpath = dir.join("w.safetensors");
        safetensors::write(&wpath, &w).unwrap();
        let x = weights::seeded_input(s.input, 1 + i as usize % 3, i + 50);
        npy::write(&dir.join("x.npy"), &x).unwrap();
        let want = reference::run(&graph, &w, &x).unwrap();
        let exe = dir.join("random");
        build(&spec_path, &wpath, &exe, &["--backend", "rust"]);
        let threads = (1 + i % 2).to_string();
        let run = Command::new(&exe)
            .current_dir(&dir)
            .args(["--input", "x.npy", "--output", "y.npy", "--threads", &threads])
            .output()
            .unwrap();
        assert!(run.status.success(), "random spec {i}: {}\n{text}", String::from_utf8_lossy(&run.stderr));
        let y = npy::read(&dir.join("y.npy")).unwrap();
        let (rel, _) = support::agree_seeded(&y, &want, &w)
            .unwrap_or_else(|e| panic!("random spec {i}, {threads} threads: {e}\n{text}"));
        eprintln!("random spec {i}: rel err {rel:.2e}, {threads} thread(s)");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!("Winograd convs: {winograd}, with raw weights: {raw}");
    // The default run's coverage (other seeds may draw fewer Winograd convs).
    let default_run = ["RESNETC_STRESS_EXES", "RESNETC_STRESS_EXE_SEED"].iter().all(|v| std::env::var_os(v).is_none());
    assert!(
        !default_run || (winograd >= 12 && raw >= 1),
        "too few Winograd convs in the random specs: {winograd} ({raw} raw)"
    );
}
