//! A model compiled in process by the Cranelift backend: the JIT-compiled kernels inside
//! a runtime [`Model`].

use crate::cranelift::jit::{self, Jit};
use crate::kernels::{self, Program};
use crate::spec::Spec;
use crate::target::Target;
use crate::{from_spec, passes, plan, weights};
use anyhow::Result;
use resnetc_runtime::exec::Call;
use resnetc_runtime::model::{Model, Weights};
use resnetc_runtime::pack;
use resnetc_runtime::safetensors::Tensors;

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
    /// Keeps the machine code alive while `model` calls it.
    _jit: Jit,
    pub model: Model,
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
        let blob = pack::build_blob(&program.recipes, program.weight_floats, tensors)?;
        let pack_ms = t1.elapsed().as_secs_f64() * 1e3;
        let calls = program
            .calls
            .iter()
            .map(|c| Call { f: jit.fns[c.kernel], args: c.args.clone(), tasks: program.tasks(c), order: c.order })
            .collect();
        let stats = CompileStats { lower_ms, codegen_ms: jit.compile_ms, pack_ms, code_bytes: jit.code_bytes };
        // SAFETY: the kernels come from this program, whose sizes and blob we pass.
        let model = unsafe {
            Model::new(
                &spec.name,
                spec.input,
                spec.num_classes,
                calls,
                Weights::Owned(blob),
                program.arena_floats,
                threads,
            )?
        };
        Ok(JitModel { spec: spec.clone(), program, stats, _jit: jit, model })
    }
}

/// A JIT model runs like any runtime [`Model`] (`forward`, `forward_into`, ...).
impl std::ops::Deref for JitModel {
    type Target = Model;

    fn deref(&self) -> &Model {
        &self.model
    }
}
