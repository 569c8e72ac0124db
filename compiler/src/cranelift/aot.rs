//! Ahead-of-time output: one object file holding the kernels, the packed weights (as
//! read-only data), a single-threaded entry point for C callers, and a descriptor the
//! resnetc runner uses to drive the kernels with threads; plus a C header.
//!
//! Symbols, with `P` the sanitized model name:
//! - `P_forward(float *arena, const float *input, float *output, int64_t n) -> int32_t`:
//!   runs `n` images; `arena` holds `n * P_ARENA_BYTES` bytes aligned to 64; returns 0, or
//!   1 when a pointer is null or `n < 1`. Plain machine code: nothing can unwind out of it.
//! - `P_weights`: the packed weights; `P_model`: the runner's descriptor
//!   (`resnetc_runtime::runner::ModelDesc`); `main` in executables only.

use super::{features, host_isa, lower};
use crate::kernels::{ArgRef, Program};
use anyhow::{anyhow, Result};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Function, InstBuilder, Signature, StackSlotData, StackSlotKind, UserFuncName,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, DataDescription, DataId, FuncId, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};
use resnetc_runtime::runner::{CallDesc, DESC_VERSION, MAX_ARGS};

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("object file: {e}")
}

fn arg_kind(a: ArgRef) -> (u64, u64) {
    match a {
        ArgRef::Arena(o) => (0, o as u64),
        ArgRef::Weights(o) => (1, o as u64),
        ArgRef::Input => (2, 0),
        ArgRef::Output => (3, 0),
    }
}

/// Writes the object file of `program` with weight blob `blob`; `with_main` adds the
/// `main` of an executable linked against the runtime's static library.
pub fn object(program: &Program, blob: &[f32], prefix: &str, input: [usize; 3], with_main: bool) -> Result<Vec<u8>> {
    let isa = host_isa(true)?;
    let feats = features(&isa);
    let call_conv = isa.default_call_conv();
    let mut module =
        ObjectModule::new(ObjectBuilder::new(isa, prefix.to_string(), default_libcall_names()).map_err(err)?);
    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = module.make_context();

    // Kernels.
    let prefetch = super::define_prefetch_helper(&mut module, &format!("{prefix}_prefetch"), true)?;
    let mut kernel_ids: Vec<FuncId> = Vec::new();
    for (i, k) in program.kernels.iter().enumerate() {
        let id = module
            .declare_function(&format!("{prefix}_k{i}_{}", k.name), Linkage::Local, &lower::signature(call_conv))
            .map_err(err)?;
        ctx.func = lower::function(k, module.isa(), feats, UserFuncName::user(0, id.as_u32()), prefetch, &mut fctx);
        module.define_function(id, &mut ctx).map_err(|e| anyhow!("kernel {}: {e:?}", k.name))?;
        module.clear_context(&mut ctx);
        kernel_ids.push(id);
    }

    // Weights, read-only, cache-line aligned.
    let weights_id = module.declare_data(&format!("{prefix}_weights"), Linkage::Export, false, false).map_err(err)?;
    let mut d = DataDescription::new();
    let bytes: Vec<u8> = blob.iter().flat_map(|v| v.to_le_bytes()).collect();
    d.define(bytes.into_boxed_slice());
    d.set_align(64);
    module.define_data(weights_id, &d).map_err(err)?;

    // `P_forward`: every call for every image, single-threaded.
    let mut sig = Signature::new(call_conv);
    for _ in 0..4 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig.returns.push(AbiParam::new(types::I32));
    let forward_id = module.declare_function(&format!("{prefix}_forward"), Linkage::Export, &sig).map_err(err)?;
    ctx.func = forward_function(&mut module, program, &kernel_ids, weights_id, sig, &mut fctx);
    module.define_function(forward_id, &mut ctx).map_err(|e| anyhow!("{prefix}_forward: {e:?}"))?;
    module.clear_context(&mut ctx);

    // The runner's descriptor: calls table, name, then the model header.
    let calls_id = module.declare_data(&format!("{prefix}_calls"), Linkage::Local, false, false).map_err(err)?;
    // Field by field as `runner::CallDesc` lays them out: f, tasks, order, nargs, args.
    let call_size = std::mem::size_of::<CallDesc>();
    debug_assert_eq!(call_size, 8 * (4 + 2 * MAX_ARGS));
    let mut table = vec![0u8; call_size * program.calls.len()];
    let mut d = DataDescription::new();
    let mut relocs = vec![];
    for (i, c) in program.calls.iter().enumerate() {
        let at = i * call_size;
        let put = |t: &mut Vec<u8>, off: usize, v: u64| t[off..off + 8].copy_from_slice(&v.to_le_bytes());
        relocs.push((at, kernel_ids[c.kernel]));
        put(&mut table, at + 8, program.tasks(c) as u64);
        put(&mut table, at + 16, c.order as u64);
        put(&mut table, at + 24, c.args.len() as u64);
        for (j, &a) in c.args.iter().enumerate() {
            let (kind, off) = arg_kind(a);
            put(&mut table, at + 32 + 16 * j, kind);
            put(&mut table, at + 40 + 16 * j, off);
        }
    }
    d.define(table.into_boxed_slice());
    d.set_align(8);
    for (at, id) in relocs {
        let f = module.declare_func_in_data(id, &mut d);
        d.write_function_addr(at as u32, f);
    }
    module.define_data(calls_id, &d).map_err(err)?;

    let name_id = module.declare_data(&format!("{prefix}_name"), Linkage::Local, false, false).map_err(err)?;
    let mut d = DataDescription::new();
    let mut name = prefix.as_bytes().to_vec();
    name.push(0);
    d.define(name.into_boxed_slice());
    module.define_data(name_id, &d).map_err(err)?;

    let model_id = module.declare_data(&format!("{prefix}_model"), Linkage::Export, false, false).map_err(err)?;
    let mut d = DataDescription::new();
    let header = [
        DESC_VERSION,
        program.arena_floats as u64,
        input[0] as u64,
        input[1] as u64,
        input[2] as u64,
        program.num_classes as u64,
        program.weight_floats as u64,
        program.calls.len() as u64,
    ];
    let mut bytes: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes.extend([0u8; 24]); // weights, calls, name: relocated pointers
    d.define(bytes.into_boxed_slice());
    d.set_align(8);
    for (slot, id) in [(0, weights_id), (1, calls_id), (2, name_id)] {
        let gv = module.declare_data_in_data(id, &mut d);
        d.write_data_addr((64 + 8 * slot) as u32, gv, 0);
    }
    module.define_data(model_id, &d).map_err(err)?;

    if with_main {
        let mut runner_sig = Signature::new(call_conv);
        for _ in 0..3 {
            runner_sig.params.push(AbiParam::new(types::I64));
        }
        runner_sig.returns.push(AbiParam::new(types::I32));
        let runner = module.declare_function("resnetc_runner_main", Linkage::Import, &runner_sig).map_err(err)?;
        let mut main_sig = Signature::new(call_conv);
        main_sig.params.push(AbiParam::new(types::I32));
        main_sig.params.push(AbiParam::new(types::I64));
        main_sig.returns.push(AbiParam::new(types::I32));
        let main_id = module.declare_function("main", Linkage::Export, &main_sig).map_err(err)?;
        let mut func = Function::with_name_signature(UserFuncName::user(1, 0), main_sig);
        {
            let mut b = FunctionBuilder::new(&mut func, &mut fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            b.seal_block(entry);
            let (argc, argv) = (b.block_params(entry)[0], b.block_params(entry)[1]);
            let argc = b.ins().sextend(types::I64, argc);
            let f = module.declare_func_in_func(runner, b.func);
            let gv = module.declare_data_in_func(model_id, b.func);
            let desc = b.ins().symbol_value(types::I64, gv);
            let call = b.ins().call(f, &[argc, argv, desc]);
            let rc = b.inst_results(call)[0];
            b.ins().return_(&[rc]);
            b.finalize(module.isa().frontend_config());
        }
        ctx.func = func;
        module.define_function(main_id, &mut ctx).map_err(|e| anyhow!("main: {e:?}"))?;
        module.clear_context(&mut ctx);
    }
    module.finish().emit().map_err(err)
}

/// `P_forward`: checks its arguments, then runs every call on every image in order.
fn forward_function(
    module: &mut ObjectModule,
    p: &Program,
    kernels: &[FuncId],
    weights: DataId,
    sig: Signature,
    fctx: &mut FunctionBuilderContext,
) -> Function {
    let mut func = Function::with_name_signature(UserFuncName::user(1, 1), sig);
    let mut b = FunctionBuilder::new(&mut func, fctx);
    let (entry, bad, images, body, done) =
        (b.create_block(), b.create_block(), b.create_block(), b.create_block(), b.create_block());
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let [arena, input, output, n] = b.block_params(entry)[..] else { unreachable!() };
    let null = |b: &mut FunctionBuilder, v| b.ins().icmp_imm_s(IntCC::Equal, v, 0);
    let mut any_bad = b.ins().icmp_imm_s(IntCC::SignedLessThan, n, 1);
    for v in [arena, input, output] {
        let z = null(&mut b, v);
        any_bad = b.ins().bor(any_bad, z);
    }
    let zero = b.ins().iconst(types::I64, 0);
    b.ins().brif(any_bad, bad, &[], images, &[zero.into()]);
    b.switch_to_block(bad);
    b.seal_block(bad);
    let one = b.ins().iconst(types::I32, 1);
    b.ins().return_(&[one]);

    // for image in 0..n
    let image = b.append_block_param(images, types::I64);
    b.switch_to_block(images);
    let more = b.ins().icmp(IntCC::SignedLessThan, image, n);
    b.ins().brif(more, body, &[], done, &[]);
    b.switch_to_block(body);
    b.seal_block(body);
    let slot = b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, (8 * MAX_ARGS) as u32, 3));
    let gv = module.declare_data_in_func(weights, b.func);
    let wbase = b.ins().symbol_value(types::I64, gv);
    let arena_img = {
        let off = b.ins().imul_imm_s(image, (p.arena_floats * 4) as i64);
        b.ins().iadd(arena, off)
    };
    let in_img = {
        let off = b.ins().imul_imm_s(image, (p.input_floats * 4) as i64);
        b.ins().iadd(input, off)
    };
    let out_img = {
        let off = b.ins().imul_imm_s(image, (p.num_classes * 4) as i64);
        b.ins().iadd(output, off)
    };
    for c in &p.calls {
        for (j, &a) in c.args.iter().enumerate() {
            let ptr = match a {
                ArgRef::Arena(o) => b.ins().iadd_imm_s(arena_img, (o * 4) as i64),
                ArgRef::Weights(o) => b.ins().iadd_imm_s(wbase, (o * 4) as i64),
                ArgRef::Input => in_img,
                ArgRef::Output => out_img,
            };
            b.ins().stack_store(types::I64, ptr, slot, (8 * j) as i32);
        }
        let args = b.ins().stack_addr(types::I64, slot, 0);
        let begin = b.ins().iconst(types::I64, 0);
        let end = b.ins().iconst(types::I64, p.tasks(c) as i64);
        let f = module.declare_func_in_func(kernels[c.kernel], b.func);
        b.ins().call(f, &[args, begin, end]);
    }
    let next = b.ins().iadd_imm_s(image, 1);
    b.ins().jump(images, &[next.into()]);
    b.seal_block(images);
    b.switch_to_block(done);
    b.seal_block(done);
    let ok = b.ins().iconst(types::I32, 0);
    b.ins().return_(&[ok]);
    b.finalize(module.isa().frontend_config());
    func
}

/// The C header of an object built for model `prefix`.
pub fn header(p: &Program, prefix: &str, input: [usize; 3], model: &str) -> String {
    let up = prefix.to_ascii_uppercase();
    format!(
        r#"/* Generated by resnetc for model `{model}`. Link with the object file built beside it:
 *   cc your_program.c {prefix}.o -o your_program
 * (any C compiler and linker for this machine; nothing else is needed).
 */
#ifndef RESNETC_{up}_H
#define RESNETC_{up}_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

/* One image: input [{c}, {h}, {w}] float32, NCHW; output {classes} float32 logits. */
#define {up}_INPUT_FLOATS {input_floats}
#define {up}_OUTPUT_FLOATS {classes}
/* Scratch memory per image; the arena passed to {prefix}_forward must hold
 * n * {up}_ARENA_BYTES bytes, aligned to {up}_ARENA_ALIGN. */
#define {up}_ARENA_BYTES {arena_bytes}
#define {up}_ARENA_ALIGN 64
/* Packed weights, embedded in the object as read-only data ({up}_WEIGHT_BYTES bytes). */
#define {up}_WEIGHT_BYTES {weight_bytes}
extern const float {prefix}_weights[];

/* Runs n >= 1 images: input holds n * {up}_INPUT_FLOATS floats, output receives
 * n * {up}_OUTPUT_FLOATS logits. Returns 0 on success, 1 if a pointer is NULL or n < 1.
 * Single-threaded; calls on different arenas may run concurrently. */
int32_t {prefix}_forward(float *arena, const float *input, float *output, int64_t n);

#ifdef __cplusplus
}}
#endif

#endif
"#,
        c = input[0],
        h = input[1],
        w = input[2],
        classes = p.num_classes,
        input_floats = p.input_floats,
        arena_bytes = p.arena_floats * 4,
        weight_bytes = p.weight_floats * 4,
    )
}
