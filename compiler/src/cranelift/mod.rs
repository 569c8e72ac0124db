//! The Cranelift backend: kernel IR -> CLIF -> machine code, in process (JIT) or as an
//! object file (AOT).

pub mod aot;
pub mod asm;
pub mod jit;
pub mod lower;

use anyhow::{anyhow, Result};
use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use lower::Features;

/// The host ISA; `pic` for objects linked into position-independent executables.
///
/// Without Cranelift's e-graph pass (`opt_level=none`): the kernel IR's statement order is
/// the schedule it was written for, and the pass would undo it. It re-elaborates each pure
/// value where it is used, and a reduction loop uses its accumulators only at the back
/// edge, one after another: each accumulator's FMAs of an iteration came out as one
/// dependent chain (4 FMAs x 4 cycles per 4-channel step), the chains one after another,
/// instead of each channel's FMAs across the whole tile. The kernels need nothing else
/// from it: constant addresses are folded, and pointers strength-reduced, by `lower.rs`.
/// Found by timing the emitted loop alone: the 14x14 1x1 conv's ran at 27-28 GFLOP/s with
/// its data in L1, the same loop reordered by hand in assembly at 34. Measured on the
/// ResNet-50 JIT (1 thread): direct convs 0.76-0.92x the time; every other kernel the same
/// or faster; the AOT executable 271.7 -> 239.3 ms; JIT compile 58 -> 52 ms (the later
/// two-block steps of the direct convs brought it to 59-61 ms).
pub fn host_isa(pic: bool) -> Result<OwnedTargetIsa> {
    let mut flags = settings::builder();
    flags.set("opt_level", "none").map_err(|e| anyhow!("{e}"))?;
    flags.set("is_pic", if pic { "true" } else { "false" }).map_err(|e| anyhow!("{e}"))?;
    flags.set("use_colocated_libcalls", "false").map_err(|e| anyhow!("{e}"))?;
    flags.set("enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" }).map_err(|e| anyhow!("{e}"))?;
    let builder =
        cranelift_native::builder().map_err(|e| anyhow!("this machine is not supported by Cranelift: {e}"))?;
    builder.finish(settings::Flags::new(flags)).map_err(|e| anyhow!("cannot configure Cranelift: {e}"))
}

/// Machine code of the function the kernels call to prefetch (CLIF has no prefetch
/// instruction): on x86-64 `prefetcht0 [rdi]; ret`. It clobbers no register, as its
/// calling convention (`PreserveAll`, [`lower::prefetch_signature`]) promises the
/// caller, so a call in a reduction loop leaves the accumulators in their registers.
/// `None` elsewhere: the kernels then do not prefetch.
pub fn prefetch_helper() -> Option<&'static [u8]> {
    cfg!(target_arch = "x86_64").then_some(&[0x0F, 0x18, 0x0F, 0xC3])
}

/// Declares and defines the prefetch helper in `module` (as `name`), if this target has
/// one, for the kernels' calls (`near`: see [`lower::PrefetchFn`]).
pub fn define_prefetch_helper<M: cranelift_module::Module>(
    module: &mut M,
    name: &str,
    near: bool,
) -> Result<Option<lower::PrefetchFn>> {
    let Some(bytes) = prefetch_helper() else { return Ok(None) };
    let id = module
        .declare_function(name, cranelift_module::Linkage::Local, &lower::prefetch_signature())
        .map_err(|e| anyhow!("prefetch helper: {e}"))?;
    module.define_function_bytes(id, 16, bytes, &[]).map_err(|e| anyhow!("prefetch helper: {e}"))?;
    Ok(Some(lower::PrefetchFn { index: id.as_u32(), near }))
}

/// The prefetch helper as the views that compile kernels alone (`emit clif`, `emit
/// asm`) name it: function 0, as in a module, where it is declared first and kernel `i`
/// is function `i + 1` (its calls show, their target unresolved).
pub const VIEW_PREFETCH: Option<lower::PrefetchFn> = Some(lower::PrefetchFn { index: 0, near: true });

/// What the ISA's detected features allow.
pub fn features(isa: &OwnedTargetIsa) -> Features {
    let flag = |name: &str| isa.isa_flags().iter().any(|f| f.name == name && f.as_bool() == Some(true));
    // x64 lowers `fma` to one instruction only with both; elsewhere (aarch64) it is native.
    let fma = if cfg!(target_arch = "x86_64") { flag("has_avx") && flag("has_fma") } else { true };
    Features { fma }
}

/// The CLIF text of every kernel.
pub fn clif_text(kernels: &[crate::kir::Kernel], only: Option<&str>) -> Result<String> {
    let isa = host_isa(false)?;
    let mut ctx = FunctionBuilderContext::new();
    let mut out = String::new();
    for (i, k) in kernels.iter().enumerate().filter(|(_, k)| only.is_none_or(|n| k.name == n)) {
        let f = lower::function(k, &*isa, features(&isa), UserFuncName::user(0, i as u32 + 1), VIEW_PREFETCH, &mut ctx);
        out.push_str(&format!("; kernel {}\n{}\n", k.name, f.display()));
    }
    Ok(out)
}
