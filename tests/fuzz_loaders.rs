//! A seeded mutation fuzzer for the loaders of untrusted files: safetensors, .npy, TOML
//! specs, PNG/JPEG images and IDX files. Each iteration mutates a valid file (bit flips,
//! byte overwrites with boundary values, truncation, insertion, header-length edits) and
//! feeds it to the parser, which must return `Ok` or `Err` and never panic.
//!
//! Bounded by default so it runs in CI in seconds; `RESNETC_FUZZ_SECONDS=600` runs each
//! target for ten minutes, `RESNETC_FUZZ_SEED` picks another stream.

mod support;

use resnetc_runtime::{idx, image, npy, safetensors, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};
use support::random_spec::{random_toml, Rng};

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.range(1, 4) {
        let len = b.len().max(1);
        match rng.range(0, 6) {
            0 if !b.is_empty() => {
                let i = rng.range(0, b.len() - 1);
                b[i] ^= 1 << rng.range(0, 7);
            }
            1 if !b.is_empty() => {
                let i = rng.range(0, b.len() - 1);
                b[i] = *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'[', b'"', b'{', b'-', b'9']);
            }
            2 => b.truncate(rng.range(0, len - 1)),
            3 => {
                let i = rng.range(0, b.len());
                let n = rng.range(1, 16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(i..i, bytes);
            }
            4 if b.len() >= 8 => {
                // Header lengths and sizes live in the first bytes of every format here.
                let i = rng.range(0, 7.min(b.len() - 1));
                b[i] = rng.next() as u8;
            }
            5 if b.len() > 16 => {
                let (i, j) = (rng.range(0, b.len() - 1), rng.range(0, b.len() - 1));
                b.swap(i, j);
            }
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

/// Runs `parse` on mutations of `seeds` for the configured budget; panics name the input.
fn fuzz(target: &str, seeds: &[Vec<u8>], parse: impl Fn(&[u8])) {
    let seed = std::env::var("RESNETC_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let secs: u64 = std::env::var("RESNETC_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut rng = Rng::new(seed ^ resnetc_runtime::seeded::fnv1a64(target.as_bytes()));
    let start = Instant::now();
    let mut runs = 0u64;
    while runs < 2000 || start.elapsed() < Duration::from_secs(secs) {
        let input = mutate(&mut rng, &seeds[runs as usize % seeds.len()]);
        if catch_unwind(AssertUnwindSafe(|| parse(&input))).is_err() {
            let path = std::env::temp_dir().join(format!("resnetc-fuzz-{target}-{runs}.bin"));
            let _ = std::fs::write(&path, &input);
            panic!("{target}: parser panicked on input saved to {}", path.display());
        }
        runs += 1;
    }
    eprintln!("{target}: {runs} inputs in {:.1} s, no panic", start.elapsed().as_secs_f64());
}

#[test]
fn safetensors_loader_never_panics() {
    let mut t = safetensors::Tensors::new();
    t.insert("conv1.weight".into(), Tensor::new(vec![2, 1, 2, 2], (0..8).map(|v| v as f32).collect()));
    t.insert("fc.bias".into(), Tensor::new(vec![3], vec![0.5, -1.0, 2.0]));
    fuzz("safetensors", &[safetensors::to_bytes(&t)], |b| drop(safetensors::parse(b)));
}

#[test]
fn npy_reader_never_panics() {
    let seeds = [
        npy::to_bytes(&Tensor::new(vec![1, 2, 2, 2], vec![1.0; 8])),
        npy::to_bytes(&Tensor::new(vec![3], vec![0.0; 3])),
    ];
    fuzz("npy", &seeds, |b| drop(npy::parse(b)));
}

#[test]
fn spec_parser_never_panics() {
    let mut rng = Rng::new(7);
    let seeds: Vec<Vec<u8>> = (0..16).map(|_| random_toml(&mut rng).into_bytes()).collect();
    fuzz("spec", &seeds, |b| {
        if let Ok(text) = std::str::from_utf8(b) {
            if let Ok(spec) = resnetc::spec::parse(text, "fuzz") {
                // A valid spec must also build (or fail cleanly), never panic.
                drop(resnetc::from_spec::build(&spec));
            }
        }
    });
}

#[test]
fn image_decoders_never_panic() {
    let png = std::fs::read(support::root().join("examples/fashion/images/00000_ankle_boot.png")).unwrap();
    let jpg = std::fs::read(support::root().join("examples/images/chelsea.jpg")).unwrap();
    fuzz("image", &[png, jpg[..jpg.len().min(4096)].to_vec(), jpg], |b| drop(image::decode_bytes("fuzz", b)));
}

#[test]
fn idx_reader_never_panics() {
    let mut seed = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
    seed.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    fuzz("idx", &[seed], |b| drop(idx::parse(b)));
}
