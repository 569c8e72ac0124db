//! The Cranelift backend: kernel IR -> CLIF -> machine code, in process (JIT) or as an
//! object file (AOT).

pub mod aot;
pub mod asm;
pub mod jit;
pub mod lower;

use crate::kir::Kernel;
use anyhow::{anyhow, bail, Result};
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_module::{FuncId, Module};
use lower::Features;

/// The host ISA; `pic` for objects linked into position-independent executables,
/// `optimize` for Cranelift's e-graph optimizations (`opt_level=speed`, else `none`).
pub fn host_isa(pic: bool, optimize: bool) -> Result<OwnedTargetIsa> {
    let mut flags = settings::builder();
    flags.set("opt_level", if optimize { "speed" } else { "none" }).map_err(|e| anyhow!("{e}"))?;
    flags.set("is_pic", if pic { "true" } else { "false" }).map_err(|e| anyhow!("{e}"))?;
    flags.set("use_colocated_libcalls", "false").map_err(|e| anyhow!("{e}"))?;
    flags.set("enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" }).map_err(|e| anyhow!("{e}"))?;
    let builder =
        cranelift_native::builder().map_err(|e| anyhow!("this machine is not supported by Cranelift: {e}"))?;
    builder.finish(settings::Flags::new(flags)).map_err(|e| anyhow!("cannot configure Cranelift: {e}"))
}

/// Whether kernel `k` goes through Cranelift's e-graph pass. The pass re-elaborates each
/// pure value where it is used, and a reduction loop uses its accumulators only at the
/// back edge, one after another: every accumulator's FMAs of an iteration come out as one
/// dependent chain (four channels: 4 FMAs x 4 cycles), the chains one after another,
/// instead of the kernel's order, each channel's FMAs across the whole tile. Kernels
/// written [`Kernel::in_order`] skip the pass. Measured on the ResNet-50 JIT (1 thread):
/// the direct convs took 0.76-0.92x the time without it, and the 14x14 1x1 conv's loop ran
/// at 33 instead of 27 GFLOP/s with its data in L1 (the same loop reordered by hand in
/// assembly: 34 against 28). The Winograd products keep the pass: without it their
/// 12-accumulator tiles spill (0.95-1.21x the time).
pub fn optimize(k: &Kernel) -> bool {
    !k.in_order
}

/// Defines kernel `k`, lowered into `ctx.func`, as function `id` of `module` (whose ISA
/// optimizes); a kernel that skips the e-graph pass ([`optimize`]) is compiled by `plain`,
/// the same ISA with `opt_level=none`. Returns the bytes of machine code.
pub fn define_kernel<M: Module>(
    module: &mut M,
    id: FuncId,
    ctx: &mut Context,
    k: &Kernel,
    plain: &dyn TargetIsa,
) -> Result<usize> {
    if optimize(k) {
        module.define_function(id, ctx).map_err(|e| anyhow!("kernel {}: Cranelift failed: {e:?}", k.name))?;
        return Ok(ctx.compiled_code().map_or(0, |c| c.code_buffer().len()));
    }
    let code = ctx
        .compile(plain, &mut ControlPlane::default())
        .map_err(|e| anyhow!("kernel {}: Cranelift failed: {:?}", k.name, e.inner))?;
    // Kernels call nothing and keep their constants in the function's own pool.
    if !code.buffer.relocs().is_empty() {
        bail!("kernel {}: unexpected relocations in its machine code", k.name);
    }
    let bytes = code.code_buffer().to_vec();
    module
        .define_function_bytes(id, code.buffer.alignment as u64, &bytes, &[])
        .map_err(|e| anyhow!("kernel {}: {e:?}", k.name))?;
    Ok(bytes.len())
}

/// What the ISA's detected features allow.
pub fn features(isa: &OwnedTargetIsa) -> Features {
    let flag = |name: &str| isa.isa_flags().iter().any(|f| f.name == name && f.as_bool() == Some(true));
    // x64 lowers `fma` to one instruction only with both; elsewhere (aarch64) it is native.
    let fma = if cfg!(target_arch = "x86_64") { flag("has_avx") && flag("has_fma") } else { true };
    Features { fma }
}

/// The CLIF text of every kernel.
pub fn clif_text(kernels: &[crate::kir::Kernel], only: Option<&str>) -> Result<String> {
    let isa = host_isa(false, true)?;
    let mut ctx = FunctionBuilderContext::new();
    let mut out = String::new();
    for (i, k) in kernels.iter().enumerate().filter(|(_, k)| only.is_none_or(|n| k.name == n)) {
        let f = lower::function(k, &*isa, features(&isa), UserFuncName::user(0, i as u32), &mut ctx);
        out.push_str(&format!("; kernel {}\n{}\n", k.name, f.display()));
    }
    Ok(out)
}
