//! Disassembly of the machine code Cranelift emits for each kernel (x86-64, Intel syntax).

use super::{features, host_isa, lower};
use crate::kir::Kernel;
use anyhow::{anyhow, Result};
use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::{control::ControlPlane, Context};
use cranelift_frontend::FunctionBuilderContext;
use std::fmt::Write;

/// Machine code of one kernel.
pub fn code(k: &Kernel, index: usize) -> Result<Vec<u8>> {
    let isa = host_isa(false)?;
    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = Context::for_function(lower::function(
        k,
        &*isa,
        features(&isa),
        UserFuncName::user(0, index as u32 + 1),
        super::VIEW_PREFETCH,
        &mut fctx,
    ));
    let compiled =
        ctx.compile(&*isa, &mut ControlPlane::default()).map_err(|e| anyhow!("kernel {}: {:?}", k.name, e.inner))?;
    Ok(compiled.code_buffer().to_vec())
}

/// Disassembly of every kernel (or the one named `only`).
pub fn disassemble(kernels: &[Kernel], only: Option<&str>) -> Result<String> {
    let mut out = String::new();
    for (i, k) in kernels.iter().enumerate().filter(|(_, k)| only.is_none_or(|n| k.name == n)) {
        let bytes = code(k, i)?;
        let _ = writeln!(out, "; kernel {} ({} bytes)", k.name, bytes.len());
        if cfg!(target_arch = "x86_64") {
            use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
            let mut decoder = Decoder::with_ip(64, &bytes, 0, DecoderOptions::NONE);
            let mut fmt = IntelFormatter::new();
            let mut text = String::new();
            for ins in &mut decoder {
                text.clear();
                fmt.format(&ins, &mut text);
                let _ = writeln!(out, "{:6x}:  {text}", ins.ip());
            }
        } else {
            for (j, chunk) in bytes.chunks(16).enumerate() {
                let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(out, "{:6x}:  {}", j * 16, hex.join(" "));
            }
        }
        out.push('\n');
    }
    Ok(out)
}
