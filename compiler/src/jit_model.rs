//! A model compiled in process by the Cranelift backend, ready to run: the JIT-compiled
//! kernels, the packed weights, a thread pool and a cache of arenas.

use crate::cranelift::jit::{self, Jit};
use crate::kernels::{self, Program};
use crate::spec::Spec;
use crate::target::Target;
use crate::{from_spec, passes, plan, weights};
use anyhow::{bail, Result};
use resnetc_runtime::exec::{self, Aligned, Call, Sizes};
use resnetc_runtime::pack;
use resnetc_runtime::pool::Pool;
use resnetc_runtime::safetensors::Tensors;
use resnetc_runtime::tensor::{shape_str, Tensor};
use std::sync::Mutex;

/// Compile-time figures of a model.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileStats {
    /// Spec to kernel IR, milliseconds.
    pub lower_ms: f64,
    /// Cranelift code generation, milliseconds.
    pub codegen_ms: f64,
    /// Weight folding and packing, milliseconds.
    pub pack_ms: f64,
    pub code_bytes: usize,
}

pub struct JitModel {
    pub spec: Spec,
    pub program: Program,
    pub stats: CompileStats,
    _jit: Jit,
    calls: Vec<Call>,
    weights: Aligned,
    sizes: Sizes,
    pool: Pool,
    /// Arenas of finished calls, reused by the next ones (one per concurrent caller).
    arenas: Mutex<Vec<Aligned>>,
}

/// Spec -> fused graph -> plan -> kernel IR for the Cranelift target.
pub fn program(spec: &Spec) -> Result<Program> {
    let graph = from_spec::build(spec)?;
    let p = plan::build(&passes::fuse(&graph).0, Target::CRANELIFT_X64)?;
    kernels::lower(&p)
}

impl JitModel {
    /// Compiles `spec` and packs `tensors` (checked against the model) for `threads` threads.
    pub fn new(spec: &Spec, tensors: &Tensors, threads: usize) -> Result<JitModel> {
        let t0 = std::time::Instant::now();
        weights::check(&from_spec::build(spec)?, tensors)?;
        let program = program(spec)?;
        let lower_ms = t0.elapsed().as_secs_f64() * 1e3;
        let jit = jit::compile(&program)?;
        let t1 = std::time::Instant::now();
        let weights = Aligned::from_slice(&pack::build_blob(&program.recipes, program.weight_floats, tensors)?)?;
        let pack_ms = t1.elapsed().as_secs_f64() * 1e3;
        let calls = program
            .calls
            .iter()
            .map(|c| Call { f: jit.fns[c.kernel], args: c.args.clone(), tasks: program.tasks(c) })
            .collect();
        let sizes = Sizes {
            arena_floats: program.arena_floats,
            input_floats: program.input_floats,
            output_floats: program.num_classes,
        };
        let stats = CompileStats { lower_ms, codegen_ms: jit.compile_ms, pack_ms, code_bytes: jit.code_bytes };
        Ok(JitModel {
            spec: spec.clone(),
            program,
            stats,
            _jit: jit,
            calls,
            weights,
            sizes,
            pool: Pool::new(threads),
            arenas: Mutex::new(Vec::new()),
        })
    }

    /// Runs a batch `[N, C, H, W]`, returning logits `[N, classes]`.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let [c, h, w] = self.spec.input;
        let n = match input.shape() {
            [n, ic, ih, iw] if [*ic, *ih, *iw] == [c, h, w] && *n > 0 => *n,
            other => bail!("input has shape {} but the model expects [N, {c}, {h}, {w}]", shape_str(other)),
        };
        let mut out = vec![0.0f32; n * self.sizes.output_floats];
        self.forward_into(input.data(), &mut out, n)?;
        Ok(Tensor::new(vec![n, self.spec.num_classes], out))
    }

    /// Runs `n` images from `input` into `output` (sizes checked).
    pub fn forward_into(&self, input: &[f32], output: &mut [f32], n: usize) -> Result<()> {
        self.forward_timed(input, output, n, None)
    }

    /// [`forward_into`](Self::forward_into), adding each call's seconds to `timings`.
    pub fn forward_timed(
        &self,
        input: &[f32],
        output: &mut [f32],
        n: usize,
        timings: Option<&mut [f64]>,
    ) -> Result<()> {
        if input.len() != n * self.sizes.input_floats || output.len() != n * self.sizes.output_floats {
            bail!("forward: buffer sizes do not match {n} images");
        }
        let need = n * self.sizes.arena_floats;
        let cached = self.arenas.lock().unwrap().pop();
        let mut arena = match cached {
            Some(a) if a.len() >= need => a,
            _ => Aligned::zeroed(need)?,
        };
        // SAFETY: the kernels were generated for exactly these sizes.
        unsafe { exec::run(&self.calls, self.sizes, &self.weights, &mut arena, input, output, n, &self.pool, timings) };
        self.arenas.lock().unwrap().push(arena);
        Ok(())
    }
}
