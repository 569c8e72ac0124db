//! Compiles a program's kernels in process. cranelift-jit maps code memory writable
//! while it is being emitted and switches it to read + execute before handing out
//! function pointers, so no page is ever writable and executable at once.

use super::{features, host_isa, lower};
use crate::kernels::Program;
use anyhow::{anyhow, Result};
use cranelift_codegen::ir::UserFuncName;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use resnetc_runtime::exec::KernelFn;
use std::time::Instant;

/// Machine code for every kernel of a program, alive as long as this value.
pub struct Jit {
    /// Owns the executable memory the function pointers point into.
    _module: JITModule,
    pub fns: Vec<KernelFn>,
    /// Wall time of code generation, milliseconds.
    pub compile_ms: f64,
    /// Bytes of machine code.
    pub code_bytes: usize,
}

// SAFETY: the module is only kept alive; its code is immutable after finalization.
unsafe impl Send for Jit {}
unsafe impl Sync for Jit {}

pub fn compile(p: &Program) -> Result<Jit> {
    let start = Instant::now();
    let isa = host_isa(false)?;
    let feats = features(&isa);
    let call_conv = isa.default_call_conv();
    let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let prefetch = super::define_prefetch_helper(&mut module, "prefetch", false)?;
    let mut ids = Vec::with_capacity(p.kernels.len());
    let mut code_bytes = 0;
    for k in &p.kernels {
        let id = module
            .declare_function(&k.name, Linkage::Local, &lower::signature(call_conv))
            .map_err(|e| anyhow!("kernel {}: {e}", k.name))?;
        ctx.func = lower::function(k, module.isa(), feats, UserFuncName::user(0, id.as_u32()), prefetch, &mut fctx);
        module.define_function(id, &mut ctx).map_err(|e| anyhow!("kernel {}: Cranelift failed: {e:?}", k.name))?;
        code_bytes += ctx.compiled_code().map_or(0, |c| c.code_buffer().len());
        module.clear_context(&mut ctx);
        ids.push(id);
    }
    module.finalize_definitions().map_err(|e| anyhow!("cannot finalize JIT code: {e}"))?;
    let fns = ids
        .iter()
        .map(|&id| {
            let ptr = module.get_finalized_function(id);
            // SAFETY: every kernel was built with `lower::signature`, the KernelFn ABI.
            unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) }
        })
        .collect();
    Ok(Jit { _module: module, fns, compile_ms: start.elapsed().as_secs_f64() * 1e3, code_bytes })
}
