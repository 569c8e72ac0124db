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

/// The host ISA with Cranelift's speed optimizations; `pic` for objects linked into
/// position-independent executables.
pub fn host_isa(pic: bool) -> Result<OwnedTargetIsa> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| anyhow!("{e}"))?;
    flags.set("is_pic", if pic { "true" } else { "false" }).map_err(|e| anyhow!("{e}"))?;
    flags.set("use_colocated_libcalls", "false").map_err(|e| anyhow!("{e}"))?;
    flags.set("enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" }).map_err(|e| anyhow!("{e}"))?;
    let builder =
        cranelift_native::builder().map_err(|e| anyhow!("this machine is not supported by Cranelift: {e}"))?;
    builder.finish(settings::Flags::new(flags)).map_err(|e| anyhow!("cannot configure Cranelift: {e}"))
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
    let isa = host_isa(false)?;
    let mut ctx = FunctionBuilderContext::new();
    let mut out = String::new();
    for (i, k) in kernels.iter().enumerate().filter(|(_, k)| only.is_none_or(|n| k.name == n)) {
        let f = lower::function(k, &*isa, features(&isa), UserFuncName::user(0, i as u32), &mut ctx);
        out.push_str(&format!("; kernel {}\n{}\n", k.name, f.display()));
    }
    Ok(out)
}
