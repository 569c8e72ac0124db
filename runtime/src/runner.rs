//! The `main` of executables built by `resnetc build --emit exe`: the object file
//! generated for the model defines `main`, which calls [`resnetc_runner_main`] with a
//! [`ModelDesc`] describing its kernels and weights. This crate is linked in as a static
//! library, so the executable needs no Rust toolchain (nor anything else) to run.
//!
//! Usage of such an executable:
//!
//! ```text
//! model --input X.npy --output Y.npy [--threads N]
//! model photo.jpg [--threads N]          (prints the top-5 classes)
//! ```

use crate::exec::{self, Aligned, Arg, Call, KernelFn, Sizes};
use crate::pool::Pool;
use crate::{classes, image, npy, preprocess, Tensor};
use anyhow::{bail, Context, Result};
use std::ffi::{c_char, c_int, CStr};
use std::path::PathBuf;

/// Layout version of [`ModelDesc`]; bumped on any change.
pub const DESC_VERSION: u64 = 1;

/// One kernel argument: `kind` 0 arena, 1 weights, 2 input, 3 output; float `offset`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArgDesc {
    pub kind: u64,
    pub offset: u64,
}

/// Up to this many arguments per kernel call.
pub const MAX_ARGS: usize = 6;

#[repr(C)]
pub struct CallDesc {
    pub f: KernelFn,
    pub tasks: u64,
    pub nargs: u64,
    pub args: [ArgDesc; MAX_ARGS],
}

/// What the generated object tells the runner about its model. Field order and widths
/// are a contract with the object writer (`compiler/src/cranelift/aot.rs`).
#[repr(C)]
pub struct ModelDesc {
    pub version: u64,
    pub arena_floats: u64,
    pub input_c: u64,
    pub input_h: u64,
    pub input_w: u64,
    pub classes: u64,
    pub weight_floats: u64,
    pub ncalls: u64,
    pub weights: *const f32,
    pub calls: *const CallDesc,
    pub name: *const c_char,
}

/// Entry point called by the generated `main`.
///
/// # Safety
/// `argv` holds `argc` C strings and `model` points to a descriptor written by resnetc.
#[no_mangle]
pub unsafe extern "C" fn resnetc_runner_main(
    argc: c_int,
    argv: *const *const c_char,
    model: *const ModelDesc,
) -> c_int {
    // Never let a panic unwind into the caller's frames (C ABI).
    let result = std::panic::catch_unwind(|| {
        // SAFETY: guaranteed by the caller.
        let args: Vec<String> = (1..argc.max(0) as usize)
            .map(|i| unsafe { CStr::from_ptr(*argv.add(i)) }.to_string_lossy().into_owned())
            .collect();
        // SAFETY: guaranteed by the caller.
        run(&args, unsafe { &*model })
    });
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            1
        }
        Err(_) => {
            eprintln!("error: internal error in the runtime");
            101
        }
    }
}

struct Options {
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    image: Option<PathBuf>,
    threads: usize,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options { input: None, output: None, image: None, threads: 1 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().cloned().with_context(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--input" => o.input = Some(value("--input")?.into()),
            "--output" => o.output = Some(value("--output")?.into()),
            "--image" => o.image = Some(value("--image")?.into()),
            "--threads" => {
                let v = value("--threads")?;
                o.threads = v
                    .parse()
                    .ok()
                    .filter(|&t| (1..=256).contains(&t))
                    .with_context(|| format!("--threads: `{v}` is not a count from 1 to 256"))?;
            }
            "-h" | "--help" => {
                bail!("usage: MODEL --input X.npy --output Y.npy [--threads N] | MODEL IMAGE [--threads N]")
            }
            s if s.starts_with('-') => bail!("unknown option `{s}` (try --help)"),
            s if o.image.is_none() => o.image = Some(s.into()),
            s => bail!("unexpected argument `{s}`"),
        }
    }
    match (&o.input, &o.output, &o.image) {
        (Some(_), Some(_), None) | (None, None, Some(_)) => Ok(o),
        (Some(_), None, _) => bail!("--input needs --output Y.npy"),
        (None, Some(_), _) => bail!("--output needs --input X.npy"),
        (Some(_), Some(_), Some(_)) => bail!("give either --input/--output or an image, not both"),
        (None, None, None) => bail!("nothing to do: give --input X.npy --output Y.npy, or an image path"),
    }
}

fn run(args: &[String], m: &ModelDesc) -> Result<()> {
    if m.version != DESC_VERSION {
        bail!("model descriptor version {} is not the runtime's {DESC_VERSION}", m.version);
    }
    let o = parse(args)?;
    let shape = [m.input_c as usize, m.input_h as usize, m.input_w as usize];
    let x = match (&o.input, &o.image) {
        (Some(p), _) => npy::read(p)?,
        (None, Some(p)) => {
            preprocess::image_to_input(&image::decode(p)?, shape).with_context(|| p.display().to_string())?
        }
        (None, None) => unreachable!("checked by parse"),
    };
    let n = match x.shape() {
        [n, c, h, w] if [*c, *h, *w] == shape && *n > 0 => *n,
        other => bail!("input has shape {other:?} but the model expects [N, {}, {}, {}]", shape[0], shape[1], shape[2]),
    };
    // SAFETY: the descriptor's pointers come from the same object file.
    let calls: Vec<Call> = unsafe { std::slice::from_raw_parts(m.calls, m.ncalls as usize) }
        .iter()
        .map(|c| Call {
            f: c.f,
            tasks: c.tasks as usize,
            args: c.args[..c.nargs as usize]
                .iter()
                .map(|a| match a.kind {
                    0 => Arg::Arena(a.offset as usize),
                    1 => Arg::Weights(a.offset as usize),
                    2 => Arg::Input,
                    _ => Arg::Output,
                })
                .collect(),
        })
        .collect();
    // SAFETY: as above.
    let weights = Aligned::from_slice(unsafe { std::slice::from_raw_parts(m.weights, m.weight_floats as usize) })?;
    let sizes = Sizes {
        arena_floats: m.arena_floats as usize,
        input_floats: shape.iter().product(),
        output_floats: m.classes as usize,
    };
    let mut arena = Aligned::zeroed(n * sizes.arena_floats)?;
    let mut y = vec![0.0f32; n * sizes.output_floats];
    let pool = Pool::new(o.threads);
    // SAFETY: the kernels were generated for exactly these sizes.
    unsafe { exec::run(&calls, sizes, &weights, &mut arena, x.data(), &mut y, n, &pool, None) };
    let y = Tensor::new(vec![n, sizes.output_floats], y);
    match &o.output {
        Some(p) => npy::write(p, &y),
        None => {
            print!("{}", classes::top5_text(y.data(), sizes.output_floats));
            Ok(())
        }
    }
}
