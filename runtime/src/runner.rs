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
//! model --bench RUNS [--batch N] [--threads N]   (prints timing JSON)
//! model --help
//! ```

use crate::exec::{Arg, Call, KernelFn};
use crate::model::Model;
use crate::timing::{measure, MAX_RUNS, MIN_SECONDS, WARMUP};
use crate::{classes, image, npy, preprocess};
use anyhow::{bail, Context, Result};
use std::ffi::{c_char, c_int, CStr};
use std::path::PathBuf;

/// Layout version of [`ModelDesc`]; bumped on any change.
pub const DESC_VERSION: u64 = 2;

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
    /// [`crate::exec::Order`] as its code.
    pub order: u64,
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
/// `argv` holds `argc` C strings and `model` points to a descriptor written by resnetc,
/// whose weights are read-only data of the executable's file (`--bench` drops their
/// resident pages once copied, [`crate::model::Weights::from_embedded`]).
#[no_mangle]
pub unsafe extern "C" fn resnetc_runner_main(
    argc: c_int,
    argv: *const *const c_char,
    model: *const ModelDesc,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    let args: Vec<String> = (1..argc.max(0) as usize)
        .map(|i| unsafe { CStr::from_ptr(*argv.add(i)) }.to_string_lossy().into_owned())
        .collect();
    // SAFETY: guaranteed by the caller.
    let m = unsafe { &*model };
    let shape = [m.input_c as usize, m.input_h as usize, m.input_w as usize];
    main_with(&args, shape, m.classes as usize, |setup| {
        if m.version != DESC_VERSION {
            bail!("model descriptor version {} is not the runtime's {DESC_VERSION}", m.version);
        }
        // SAFETY: the descriptor's pointers come from the same object file.
        let calls = unsafe { std::slice::from_raw_parts(m.calls, m.ncalls as usize) }
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(Call {
                    f: c.f,
                    tasks: c.tasks as usize,
                    order: crate::exec::Order::from_code(c.order)
                        .with_context(|| format!("model descriptor: call {i} has unknown batch order {}", c.order))?,
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
            })
            .collect::<Result<Vec<Call>>>()?;
        // SAFETY: as above; the kernels were generated for these sizes and weights, which
        // lie in the object's read-only data.
        unsafe {
            let weights = std::slice::from_raw_parts(m.weights, m.weight_floats as usize);
            let weights = crate::model::Weights::from_embedded(weights, setup.many_calls)?;
            Model::new("model", shape, m.classes as usize, calls, weights, m.arena_floats as usize, setup.threads)
        }
    })
}

/// What a model executable's run asks of the model it builds.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Setup {
    /// Threads per forward call, the caller's included.
    pub threads: usize,
    /// Whether the run makes many forward calls (`--bench`): they pay back copying
    /// embedded weights into huge pages ([`crate::model::Weights::from_embedded`]), which
    /// one call does not.
    pub many_calls: bool,
}

/// The command line of a model executable: parses `args`, builds the model with `make`,
/// runs it, and returns the process exit code. Errors are one line on stderr; a panic
/// never escapes.
pub fn main_with(
    args: &[String],
    shape: [usize; 3],
    classes: usize,
    make: impl FnOnce(Setup) -> Result<Model>,
) -> c_int {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(args, shape, classes, make)));
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
    /// `--bench RUNS`: time at least RUNS forward calls, and at least
    /// [`crate::timing::MIN_SECONDS`], on a batch of `batch` and print JSON.
    bench: Option<usize>,
    batch: usize,
    /// `-h`/`--help`: print the usage and stop.
    help: bool,
}

const USAGE: &str = "usage: MODEL --input X.npy --output Y.npy [--threads N] | MODEL IMAGE [--threads N] | MODEL --bench RUNS [--batch N] [--threads N]

  --input X.npy     a float32 batch [N, C, H, W]; --output Y.npy receives the logits [N, classes]
  IMAGE             a PNG or JPEG image: prints the top-5 classes
  --bench RUNS      times forward calls on a batch of --batch images, at least RUNS of them and
                    at least 2 s after 3 warm-up calls, and prints JSON (median, min, max ms)
  --threads N       threads in all, the caller's included (default 1)
  -h, --help        this text";

fn count(flag: &str, v: &str, max: usize) -> Result<usize> {
    v.parse()
        .ok()
        .filter(|&t| (1..=max).contains(&t))
        .with_context(|| format!("{flag}: `{v}` is not a count from 1 to {max}"))
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options { input: None, output: None, image: None, threads: 1, bench: None, batch: 1, help: false };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().cloned().with_context(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--input" => o.input = Some(value("--input")?.into()),
            "--output" => o.output = Some(value("--output")?.into()),
            "--image" => o.image = Some(value("--image")?.into()),
            "--threads" => o.threads = count("--threads", &value("--threads")?, 256)?,
            "--bench" => o.bench = Some(count("--bench", &value("--bench")?, MAX_RUNS)?),
            "--batch" => o.batch = count("--batch", &value("--batch")?, 4096)?,
            "-h" | "--help" => {
                o.help = true;
                return Ok(o);
            }
            s if s.starts_with('-') => bail!("unknown option `{s}` (try --help)"),
            s if o.image.is_none() => o.image = Some(s.into()),
            s => bail!("unexpected argument `{s}`"),
        }
    }
    if o.bench.is_some() {
        return Ok(o);
    }
    match (&o.input, &o.output, &o.image) {
        (Some(_), Some(_), None) | (None, None, Some(_)) => Ok(o),
        (Some(_), None, _) => bail!("--input needs --output Y.npy"),
        (None, Some(_), _) => bail!("--output needs --input X.npy"),
        (Some(_), Some(_), Some(_)) => bail!("give either --input/--output or an image, not both"),
        (None, None, None) => bail!("nothing to do: give --input X.npy --output Y.npy, or an image path"),
    }
}

fn run(args: &[String], shape: [usize; 3], classes: usize, make: impl FnOnce(Setup) -> Result<Model>) -> Result<()> {
    let o = parse(args)?;
    if o.help {
        return crate::stdout::write(&format!("{USAGE}\n"));
    }
    if let Some(runs) = o.bench {
        let start = std::time::Instant::now();
        let model = make(Setup { threads: o.threads, many_calls: true })?;
        let setup_ms = start.elapsed().as_secs_f64() * 1e3;
        let x = vec![0.5f32; o.batch * shape.iter().product::<usize>()];
        let mut y = vec![0.0f32; o.batch * classes];
        let stats = measure(WARMUP, runs, MAX_RUNS, MIN_SECONDS, || model.forward_into(&x, &mut y, o.batch))?;
        if std::env::var_os("RESNETC_PROFILE").is_some() {
            // Mean milliseconds per kernel call over `runs` more runs, in call order (the
            // order of `resnetc emit MODEL kernels`'s call list), on stderr.
            let mut per_call = vec![0.0f64; model.num_calls()];
            for _ in 0..runs {
                model.forward_timed(&x, &mut y, o.batch, Some(&mut per_call))?;
            }
            for (i, s) in per_call.iter().enumerate() {
                eprintln!("call {i:>3}: {:9.4} ms", s * 1e3 / runs as f64);
            }
        }
        crate::stdout::write(&format!(
            "{{\"median_ms\": {}, \"min_ms\": {}, \"max_ms\": {}, \"runs\": {}, \"batch\": {}, \"threads\": {}, \"setup_ms\": {setup_ms}, \"peak_rss_mb\": {}}}\n",
            stats.median,
            stats.min,
            stats.max,
            stats.runs,
            o.batch,
            o.threads,
            crate::peak_rss_mb().map_or("null".to_string(), |m| format!("{m:.1}"))
        ))?;
        return Ok(());
    }
    let x = match (&o.input, &o.image) {
        (Some(p), _) => npy::read(p)?,
        (None, Some(p)) => {
            preprocess::image_to_input(&image::decode(p)?, shape).with_context(|| p.display().to_string())?
        }
        (None, None) => unreachable!("checked by parse"),
    };
    let model = make(Setup { threads: o.threads, many_calls: false })?;
    let name = o.input.as_ref().or(o.image.as_ref()).expect("checked by parse").display().to_string();
    crate::check::check_input(&x, shape).with_context(|| name)?;
    let y = model.forward(&x)?;
    match &o.output {
        Some(p) => npy::write(p, &y),
        None => crate::stdout::write(&classes::top5_text(y.data(), classes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usage text states the timing protocol with literals: they must be the constants.
    #[test]
    fn usage_states_the_timing_protocol() {
        let text = USAGE.split_whitespace().collect::<Vec<_>>().join(" ");
        let said = format!("at least RUNS of them and at least {MIN_SECONDS} s after {WARMUP} warm-up calls");
        assert!(text.contains(&said), "{text}");
        assert!(parse(&["--bench".into(), (MAX_RUNS + 1).to_string()]).is_err());
        assert_eq!(parse(&["--bench".into(), MAX_RUNS.to_string()]).unwrap().bench, Some(MAX_RUNS));
    }
}
