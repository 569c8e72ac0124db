//! The `resnetc` command line. Every failure exits non-zero with one line on stderr.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use resnetc::jit_model::JitModel;
use resnetc::{
    aot_build, bench, cranelift, emit, fashion, from_spec, graph::Graph, inspect, kernels, passes, plan, reference,
    spec, target::Target, weights,
};
use resnetc::{rust_build, rustgen};
use resnetc_runtime::stdout;
use resnetc_runtime::{classes, image, npy, preprocess, safetensors};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "resnetc",
    version,
    about = "Compiles residual networks (ResNet-18 to 152 and custom specs) into specialized native code."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-layer table of output shapes, parameters and multiply-adds, with totals.
    Inspect {
        /// A preset name (resnet18, resnet50, resnet20, ...) or a path to a .toml spec.
        #[arg(required_unless_present = "compare_blocks")]
        model: Option<String>,
        /// Print JSON: {"params", "macs", "layers": [...]}.
        #[arg(long)]
        json: bool,
        /// Compare a basic block and a bottleneck block with C input and output channels.
        #[arg(long, value_name = "C", conflicts_with = "model")]
        compare_blocks: Option<usize>,
    },
    /// Runs a model on an .npy batch or on an image.
    Run {
        /// A preset name or a path to a .toml spec.
        model: String,
        /// Weights in safetensors format with torchvision names.
        #[arg(long, value_name = "W.safetensors")]
        weights: PathBuf,
        /// Input batch, float32 .npy of shape [N, C, H, W].
        #[arg(long, value_name = "X.npy", required_unless_present = "image", conflicts_with = "image")]
        input: Option<PathBuf>,
        /// Where to write the logits, float32 .npy of shape [N, classes].
        #[arg(long, value_name = "Y.npy", conflicts_with = "image")]
        output: Option<PathBuf>,
        /// A PNG or JPEG image: prints the top-5 classes.
        #[arg(long, value_name = "photo.jpg")]
        image: Option<PathBuf>,
        /// Which executor runs the model.
        #[arg(long, value_enum, default_value_t = Backend::Cranelift)]
        backend: Backend,
        /// Worker threads.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        threads: u32,
    },
    /// Compiles ahead of time: an object file with a C header, or an executable.
    Build {
        /// A preset name or a path to a .toml spec.
        model: String,
        /// Weights in safetensors format with torchvision names (packed into the output).
        #[arg(long, value_name = "W.safetensors")]
        weights: PathBuf,
        /// Output path (the header goes beside an object, with extension .h).
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
        /// What to produce.
        #[arg(long, value_enum, default_value_t = EmitKind::Exe)]
        emit: EmitKind,
        /// Which backend generates the code.
        #[arg(long, value_enum, default_value_t = Backend::Cranelift)]
        backend: Backend,
        /// With --backend rust: at most this many MB of packed weights (estimated). The
        /// cost model then gives back the Winograd choices (whose weights are up to 4x
        /// larger) that cost the least time per byte, trading speed for memory.
        #[arg(long, value_name = "MB")]
        max_weight_mb: Option<f64>,
    },
    /// Prints a stage of compilation.
    Emit {
        /// A preset name or a path to a .toml spec.
        model: String,
        /// Which stage to print.
        #[arg(value_enum)]
        stage: Stage,
        /// Print JSON where the stage supports it (fused, memory).
        #[arg(long)]
        json: bool,
        /// The backend whose layouts and kernels to show.
        #[arg(long, value_enum, default_value_t = Backend::Cranelift)]
        backend: Backend,
        /// Show only the kernel with this name (kernels, clif, asm).
        #[arg(long, value_name = "NAME")]
        kernel: Option<String>,
        /// With --backend rust: the weight budget of `build --max-weight-mb`, to see its choices.
        #[arg(long, value_name = "MB")]
        max_weight_mb: Option<f64>,
    },
    /// Measures latency: median over repeated runs, GFLOP/s, compile time.
    Bench {
        /// A preset name or a path to a .toml spec.
        model: String,
        /// Which backend to measure.
        #[arg(long, value_enum, default_value_t = Backend::Cranelift)]
        backend: Backend,
        /// Worker threads.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        threads: u32,
        /// Images per run.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
        batch: u64,
        /// Weights (seeded weights when absent: speed does not depend on values).
        #[arg(long, value_name = "W.safetensors")]
        weights: Option<PathBuf>,
        /// Also time every kernel.
        #[arg(long)]
        per_layer: bool,
        /// Minimum timed runs (at most 100000), after 3 warm-up runs; the timing lasts
        /// at least 2 s.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        runs: u64,
        /// Print JSON: {"median_ms", "gflops", "compile_ms", ...}.
        #[arg(long)]
        json: bool,
    },
    /// Classifies the bundled Fashion-MNIST images with the bundled trained model (JIT).
    Demo {
        /// Worker threads.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        threads: u32,
    },
    /// Accuracy of a model on a dataset's test set, with a confusion matrix.
    Eval {
        /// A preset name or a path to a .toml spec (input [1, 28, 28], 10 classes).
        model: String,
        /// Weights in safetensors format with torchvision names.
        #[arg(long, value_name = "W.safetensors")]
        weights: PathBuf,
        /// The dataset: only fashion-mnist.
        #[arg(long, value_enum)]
        dataset: Dataset,
        /// Directory with the IDX files (default: Debian's /usr/share/datasets/fashion-mnist).
        dir: Option<PathBuf>,
        /// PyTorch's predictions, one class index per line, to compare with: any that
        /// differs is an error.
        #[arg(long, value_name = "PREDICTIONS.txt")]
        compare: Option<PathBuf>,
        /// Worker threads.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
        threads: u32,
        /// Images per forward call.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10000))]
        batch: u64,
    },
    /// Writes seeded weights or a seeded input batch (the generator tests and goldens use).
    Seed {
        /// A preset name or a path to a .toml spec.
        model: String,
        /// What to generate.
        #[arg(value_enum)]
        what: SeedWhat,
        /// Output file (.safetensors for weights, .npy for an input).
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
        /// Generator seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Images in the input batch.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
        batch: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// Native code through Cranelift (JIT).
    Cranelift,
    /// The reference executor: plain loops, the oracle.
    Reference,
    /// Rust with SIMD intrinsics, compiled by rustc.
    Rust,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stage {
    /// The graph built from the spec, one line per operator.
    Graph,
    /// The graph as Graphviz DOT.
    Dot,
    /// The graph after folding and fusion.
    Fused,
    /// The memory plan.
    Memory,
    /// The kernel IR.
    Kernels,
    /// Cranelift IR.
    Clif,
    /// Disassembled machine code.
    Asm,
    /// Generated Rust.
    Rust,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EmitKind {
    /// A self-contained executable (needs a C compiler driver, `cc`, to link).
    Exe,
    /// An object file and a C header.
    Obj,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dataset {
    FashionMnist,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SeedWhat {
    Weights,
    Input,
}

fn model(name: &str) -> Result<(spec::Spec, Graph)> {
    let spec = spec::resolve(name)?;
    let graph = from_spec::build(&spec).with_context(|| format!("model `{name}`"))?;
    Ok((spec, graph))
}

fn main() -> ExitCode {
    // A panic is a bug, but even then the user gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error (please report): {msg}{at}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            // clap's message without its usage block, on one line.
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:"))
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{}", lines.join(" "));
            return ExitCode::from(2);
        }
    };
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> Result<()> {
    match command {
        Command::Inspect { model: name, json, compare_blocks } => {
            if let Some(c) = compare_blocks {
                if c < 4 {
                    bail!("--compare-blocks: need at least 4 channels (the bottleneck width is C/4), got {c}");
                }
                stdout::write(&inspect::compare_blocks(c))?;
                return Ok(());
            }
            let name = name.expect("clap requires a model");
            let (spec, graph) = model(&name)?;
            if json {
                stdout::write(&(serde_json::to_string_pretty(&inspect::json(&spec.name, &graph))? + "\n"))?;
            } else {
                stdout::write(&inspect::table(&spec.name, &graph))?;
            }
        }
        Command::Run { model: name, weights: wpath, input, output, image: img, backend, threads } => {
            let (spec, graph) = model(&name)?;
            if input.is_some() && output.is_none() {
                bail!("--input needs --output Y.npy: where to write the logits");
            }
            let tensors = weights::load(&graph, &wpath)?;
            let x = match (&input, &img) {
                (Some(path), _) => npy::read(path)?,
                (None, Some(path)) => preprocess::image_to_input(&image::decode(path)?, spec.input)
                    .with_context(|| path.display().to_string())?,
                (None, None) => unreachable!("clap requires --input or --image"),
            };
            let input_name = input.as_deref().or(img.as_deref()).map(Path::display).unwrap().to_string();
            let start = Instant::now();
            let y = match backend {
                Backend::Reference => reference::run(&graph, &tensors, &x),
                Backend::Cranelift => JitModel::new(&spec, &tensors, threads as usize)?.forward(&x),
                Backend::Rust => {
                    // Compile the Rust backend's executable and let it do the run.
                    let path =
                        |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
                    let mut args = vec!["--threads".to_string(), threads.to_string()];
                    match (&input, &output, &img) {
                        (Some(i), Some(o), _) => {
                            let out_abs = std::env::current_dir()?.join(o);
                            args.extend(["--input".into(), path(i), "--output".into(), out_abs.display().to_string()]);
                        }
                        (_, _, Some(i)) => args.push(path(i)),
                        _ => unreachable!("checked above"),
                    }
                    stdout::write(&rust_build::run_executable(&spec, &tensors, &args)?)?;
                    return Ok(());
                }
            }
            .with_context(|| input_name.clone())?;
            let elapsed = start.elapsed();
            match output {
                Some(out) => {
                    npy::write(&out, &y)?;
                    eprintln!(
                        "{name}: {} image(s) in {:.1} ms -> {}",
                        x.shape()[0],
                        elapsed.as_secs_f64() * 1e3,
                        out.display()
                    );
                }
                None => stdout::write(&classes::top5_text(y.data(), spec.num_classes))?,
            }
        }
        Command::Build { model: name, weights: wpath, output, emit: kind, backend, max_weight_mb } => {
            let budget = weight_budget(max_weight_mb, backend)?;
            let (spec, graph) = model(&name)?;
            let tensors = weights::load(&graph, &wpath)?;
            match (backend, kind) {
                (Backend::Reference, _) => {
                    bail!("build: the reference executor is an interpreter; use --backend cranelift or rust")
                }
                (Backend::Rust, EmitKind::Obj) => bail!(
                    "build --backend rust --emit obj: use --emit exe, or `resnetc emit {name} rust` for the source"
                ),
                (Backend::Rust, EmitKind::Exe) => {
                    let target = rustgen::TARGET.with_weight_budget(budget);
                    rust_build::build_executable_for(&spec, target, &tensors, &output)?;
                    eprintln!("wrote {}", output.display());
                }
                (Backend::Cranelift, kind) => match kind {
                    EmitKind::Obj => {
                        let h = aot_build::write_object(&spec, &tensors, &output)?;
                        eprintln!("wrote {} and {}", output.display(), h.display());
                    }
                    EmitKind::Exe => {
                        aot_build::write_executable(&spec, &tensors, &output)?;
                        eprintln!("wrote {}", output.display());
                    }
                },
            }
        }
        Command::Emit { model: name, stage, json, backend, kernel, max_weight_mb } => {
            let budget = weight_budget(max_weight_mb, backend)?;
            if kernel.is_some() && !matches!(stage, Stage::Kernels | Stage::Clif | Stage::Asm) {
                bail!("--kernel: only the kernels, clif and asm stages show one kernel");
            }
            if backend == Backend::Reference && !matches!(stage, Stage::Graph | Stage::Dot) {
                bail!("emit: the reference backend runs the graph as it is (stages graph and dot); use --backend cranelift or rust");
            }
            let (spec, graph) = model(&name)?;
            let target = target_of(backend).with_weight_budget(budget);
            let plan = || -> Result<plan::Plan> { plan::build(&passes::fuse(&graph).0, target) };
            let program = || -> Result<kernels::Program> {
                let p = kernels::lower(&plan()?)?;
                if let Some(k) = &kernel {
                    if !p.kernels.iter().any(|x| &x.name == k) {
                        let names: Vec<&str> = p.kernels.iter().map(|x| x.name.as_str()).collect();
                        bail!("--kernel {k}: no such kernel (kernels: {})", names.join(", "));
                    }
                }
                Ok(p)
            };
            let text = match (stage, json) {
                (Stage::Graph, false) => graph.to_text(),
                (Stage::Dot, false) => graph.to_dot(&spec.name),
                (Stage::Fused, false) => emit::fused_text(&plan()?),
                (Stage::Fused, true) => serde_json::to_string_pretty(&emit::fused_json(&plan()?))? + "\n",
                (Stage::Memory, false) => emit::memory_text(&plan()?),
                (Stage::Memory, true) => serde_json::to_string_pretty(&emit::memory_json(&plan()?))? + "\n",
                (Stage::Kernels, false) => match &kernel {
                    Some(k) => program()?.kernels.iter().find(|x| &x.name == k).unwrap().to_string() + "\n",
                    None => kernels::to_text(&program()?),
                },
                (Stage::Clif, false) => {
                    cranelift_only(backend, "clif")?;
                    cranelift::clif_text(&program()?.kernels, kernel.as_deref())?
                }
                (Stage::Asm, false) => {
                    cranelift_only(backend, "asm")?;
                    cranelift::asm::disassemble(&program()?.kernels, kernel.as_deref())?
                }
                (Stage::Rust, false) => {
                    rustgen::generate_for(&spec, target, &type_name(&spec.name), "pub", "::resnetc_runtime")?
                }
                (_, true) => bail!("--json is available for the fused and memory stages"),
            };
            stdout::write(&text)?;
        }
        Command::Bench { model: name, backend, threads, batch, weights: wpath, per_layer, runs, json } => {
            let (spec, graph) = model(&name)?;
            let tensors = match &wpath {
                Some(p) => weights::load(&graph, p)?,
                None => weights::seeded(&graph, 0),
            };
            let report = match backend {
                Backend::Cranelift => {
                    bench_jit(&spec, &tensors, threads as usize, batch as usize, per_layer, runs as usize)?
                }
                Backend::Reference => bail!("bench: the reference executor is an oracle, not a benchmark target"),
                Backend::Rust => bench_rust(&spec, &tensors, threads as usize, batch as usize, runs as usize)?,
            };
            if json {
                stdout::write(&(serde_json::to_string_pretty(&report.json())? + "\n"))?;
            } else {
                stdout::write(&report.text())?;
            }
        }
        Command::Demo { threads } => {
            fashion::demo(threads as usize, &stdout::write)?;
        }
        Command::Eval { model: name, weights: wpath, dataset: Dataset::FashionMnist, dir, compare, threads, batch } => {
            let (spec, graph) = model(&name)?;
            let tensors = weights::load(&graph, &wpath)?;
            let m = JitModel::new(&spec, &tensors, threads as usize)?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(fashion::DEFAULT_DIR));
            fashion::eval(&m, &dir, compare.as_deref(), batch as usize, &stdout::write)?;
        }
        Command::Seed { model: name, what, output, seed, batch } => {
            let (spec, graph) = model(&name)?;
            match what {
                SeedWhat::Weights => safetensors::write(&output, &weights::seeded(&graph, seed))?,
                SeedWhat::Input => {
                    let [c, h, w] = spec.input;
                    let bytes = 4 * batch as u128 * (c * h * w) as u128;
                    if bytes > from_spec::MAX_ACTIVATION_BYTES as u128 {
                        bail!(
                            "--batch {batch}: {batch} images of {:?} take {:.1} GiB, more than {} GiB",
                            spec.input,
                            bytes as f64 / (1u64 << 30) as f64,
                            from_spec::MAX_ACTIVATION_BYTES >> 30
                        );
                    }
                    npy::write(&output, &weights::seeded_input(spec.input, batch as usize, seed))?
                }
            }
        }
    }
    Ok(())
}

fn cranelift_only(backend: Backend, stage: &str) -> Result<()> {
    if backend != Backend::Cranelift {
        bail!("emit {stage}: shows Cranelift output; use --backend cranelift");
    }
    Ok(())
}

/// Builds the Rust backend's executable and lets it time itself.
fn bench_rust(
    spec: &spec::Spec,
    tensors: &resnetc_runtime::safetensors::Tensors,
    threads: usize,
    batch: usize,
    runs: usize,
) -> Result<bench::Report> {
    let t = Instant::now();
    let args: Vec<String> =
        ["--bench", &runs.max(10).to_string(), "--batch", &batch.to_string(), "--threads", &threads.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let text = rust_build::run_executable(spec, tensors, &args)?;
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let v: serde_json::Value = serde_json::from_str(text.trim()).context("the model executable printed no timing")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let graph = from_spec::build(spec)?;
    Ok(bench::Report {
        model: spec.name.clone(),
        backend: "rust".into(),
        threads,
        batch,
        macs_per_image: inspect::layers(&graph).iter().map(|l| l.macs).sum(),
        compile_ms: build_ms,
        stats: bench::Stats { median: f("median_ms"), min: f("min_ms"), max: f("max_ms"), runs: f("runs") as usize },
        layers: vec![],
    })
}

/// Compiles with the JIT and measures batch latency (and per-kernel times if asked).
fn bench_jit(
    spec: &spec::Spec,
    tensors: &resnetc_runtime::safetensors::Tensors,
    threads: usize,
    batch: usize,
    per_layer: bool,
    runs: usize,
) -> Result<bench::Report> {
    let m = JitModel::new(spec, tensors, threads)?;
    let x = weights::seeded_input(spec.input, batch, 1);
    let mut y = vec![0.0f32; batch * spec.num_classes];
    eprintln!(
        "{}: compiled {} kernels in {:.1} ms; timing {} thread(s), batch {batch}",
        spec.name,
        m.program.kernels.len(),
        m.stats.lower_ms + m.stats.codegen_ms,
        threads
    );
    let stats =
        bench::measure(bench::WARMUP, runs.clamp(1, bench::MAX_RUNS), bench::MAX_RUNS, bench::MIN_SECONDS, || {
            m.forward_into(x.data(), &mut y, batch)
        })?;
    let mut layers = vec![];
    if per_layer {
        let calls = &m.program.calls;
        let mut samples: Vec<Vec<f64>> = vec![vec![]; calls.len()];
        for _ in 0..runs.max(5) {
            let mut t = vec![0.0; calls.len()];
            m.forward_timed(x.data(), &mut y, batch, Some(&mut t))?;
            for (s, v) in samples.iter_mut().zip(t) {
                s.push(v * 1e3);
            }
        }
        for (c, s) in calls.iter().zip(samples.iter_mut()) {
            layers.push(bench::LayerTime {
                name: c.name.clone(),
                kernel: m.program.kernels[c.kernel].name.clone(),
                macs: c.macs,
                median_ms: bench::summarize(s).median,
            });
        }
    }
    let macs = m.program.calls.iter().map(|c| c.macs).sum();
    Ok(bench::Report {
        model: spec.name.clone(),
        backend: "cranelift".into(),
        threads,
        batch,
        macs_per_image: macs,
        compile_ms: m.stats.lower_ms + m.stats.codegen_ms,
        stats,
        layers,
    })
}

/// `resnet50` -> `Resnet50`, `wide_resnet50_2` -> `WideResnet502`: the type `emit rust` names.
fn type_name(model: &str) -> String {
    resnetc::identifier(model)
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| p[..1].to_ascii_uppercase() + &p[1..])
        .collect()
}

/// `--max-weight-mb` in bytes; only the Rust backend takes it.
fn weight_budget(mb: Option<f64>, backend: Backend) -> Result<Option<usize>> {
    match mb {
        None => Ok(None),
        Some(_) if backend != Backend::Rust => bail!("--max-weight-mb: only with --backend rust"),
        Some(mb) if !(mb.is_finite() && mb > 0.0) => bail!("--max-weight-mb {mb}: not a positive size"),
        Some(mb) => Ok(Some((mb * (1u64 << 20) as f64) as usize)),
    }
}

/// The code-generation target of a backend on this machine.
fn target_of(backend: Backend) -> Target {
    match backend {
        Backend::Rust => Target::AVX512,
        Backend::Cranelift | Backend::Reference => Target::CRANELIFT_X64,
    }
}
