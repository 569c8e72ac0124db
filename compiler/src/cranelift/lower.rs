//! Kernel IR -> Cranelift IR, on 128-bit vectors (f32x4).
//!
//! Following what we measured of Cranelift's x64 backend (DESIGN.md section 5): loops are
//! top-tested with the loop state in frontend variables (so the exit reads header
//! parameters, not both `brif` targets), and every memory operand of an FMA is its own
//! load right before it, so that it folds into the instruction (`vbroadcastss`, or the
//! FMA's memory operand). The CLIF keeps the kernel IR's order: the functions are
//! compiled without the e-graph pass (`super::host_isa`).

use crate::kir::{Addr, Cmp, Expr, Index, Kernel, Src, Stmt};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, ExtFuncData, ExternalName, FuncRef, Function, InstBuilder, MemFlagsData, Signature,
    UserExternalName, UserFuncName, Value,
};
use cranelift_codegen::isa::{CallConv, TargetIsa};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use std::collections::HashMap;

/// Whether the target has fused multiply-add (`fma` lowers to one `vfmadd`).
#[derive(Clone, Copy, Debug)]
pub struct Features {
    pub fma: bool,
}

/// The kernel ABI: `(args: *const *mut f32, begin: i64, end: i64)`.
pub fn signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..3 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

/// One memory stream of a kernel: an argument and the variable terms of its index (those
/// over bound variables, [`Lowerer::restricted`]).
type StreamKey = (usize, Vec<(usize, i64)>);

struct Lowerer<'a> {
    b: FunctionBuilder<'a>,
    features: Features,
    args: Vec<Value>,
    vars: Vec<Variable>,
    regs: Vec<Variable>,
    /// Which loop and task variables are bound at the current point.
    bound: Vec<bool>,
    /// Strength-reduced pointers: `arg + 4 * sum(terms)` for terms over bound variables.
    /// Each is a variable bumped at the end of the loop iteration that changes it, so
    /// inner loops address memory as `[pointer + constant]` without recomputing indices.
    ptrs: HashMap<StreamKey, Variable>,
    /// The prefetch helper ([`super::prefetch_helper`]), when the kernel prefetches.
    prefetch: Option<FuncRef>,
}

impl Lowerer<'_> {
    /// Memory flags of every access through an argument: never trapping (every address
    /// lies in the plan's buffers). Without the e-graph pass, marking reads read-only or
    /// movable changes no instruction (the machine code of every ResNet-50 kernel was
    /// identical with and without), so loads and stores keep their order.
    fn flags() -> MemFlagsData {
        MemFlagsData::new().with_notrap()
    }

    /// The pointer for `a`'s variable terms, and its constant part as a byte offset.
    fn address(&mut self, a: &Addr) -> (Value, i32) {
        let var = self.ptrs[&(a.arg, a.index.terms.clone())];
        // Cranelift's address offsets are 32-bit: a constant past 2 GB (one conv's
        // weights that large) must not wrap into another address.
        let offset = i32::try_from(a.index.constant * 4).unwrap_or_else(|_| {
            panic!("a constant offset of {} floats does not fit Cranelift's i32", a.index.constant)
        });
        (self.b.use_var(var), offset)
    }

    fn restricted(&self, a: &Addr, extra: Option<usize>) -> StreamKey {
        let terms = a.index.terms.iter().copied().filter(|&(v, _)| self.bound[v] || Some(v) == extra).collect();
        (a.arg, terms)
    }

    /// Defines pointers for every address of `body` over the variables bound now.
    fn prepare_pointers(&mut self, body: &[Stmt]) {
        for a in addresses(body) {
            let key = self.restricted(&a, None);
            if !self.ptrs.contains_key(&key) {
                let mut p = self.args[key.0];
                for &(v, c) in &key.1 {
                    let x = self.b.use_var(self.vars[v]);
                    let scaled = self.b.ins().imul_imm_s(x, c * 4);
                    p = self.b.ins().iadd(p, scaled);
                }
                let var = self.b.declare_var(types::I64);
                self.b.def_var(var, p);
                self.ptrs.insert(key, var);
            }
        }
    }

    fn load(&mut self, a: &Addr) -> Value {
        let (p, off) = self.address(a);
        let f = Self::flags();
        self.b.ins().load(types::F32X4, f, p, off)
    }

    fn bcast(&mut self, a: &Addr) -> Value {
        let (p, off) = self.address(a);
        let f = Self::flags();
        let s = self.b.ins().load(types::F32, f, p, off);
        self.b.ins().splat(types::F32X4, s)
    }

    fn src(&mut self, s: &Src) -> Value {
        match s {
            Src::Reg(r) => self.b.use_var(self.regs[*r]),
            Src::Load(a) => self.load(a),
            Src::Bcast(a) => self.bcast(a),
        }
    }

    fn zero(&mut self) -> Value {
        let z = self.b.ins().f32const(0.0);
        self.b.ins().splat(types::F32X4, z)
    }

    /// `max(x, y)` in the shape Cranelift lowers to one `maxps`.
    fn max(&mut self, x: Value, y: Value) -> Value {
        let lt = self.b.ins().fcmp(FloatCC::LessThan, y, x);
        let mask = self.b.ins().bitcast(
            types::F32X4,
            MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little),
            lt,
        );
        self.b.ins().bitselect(mask, x, y)
    }

    fn index_value(&mut self, i: &Index) -> Value {
        let mut v = self.b.ins().iconst(types::I64, i.constant);
        for &(var, c) in &i.terms {
            let x = self.b.use_var(self.vars[var]);
            let s = self.b.ins().imul_imm_s(x, c);
            v = self.b.ins().iadd(v, s);
        }
        v
    }

    fn stmts(&mut self, body: &[Stmt]) {
        for s in body {
            self.stmt(s);
        }
    }

    /// `for var in 0..count { body }`, top-tested. A pointer that depends on `var` is
    /// bumped at the end of each iteration and rewound after the loop; it reuses the
    /// enclosing pointer's variable when nothing else in the loop needs that one, so deep
    /// loop nests keep one register per memory stream.
    fn counted_loop(&mut self, var: usize, count: i64, body: &[Stmt]) {
        let addrs = addresses(body);
        let used_outer: Vec<_> = addrs
            .iter()
            .filter(|a| a.index.terms.iter().all(|&(v, _)| v != var))
            .map(|a| self.restricted(a, None))
            .collect();
        // (key inside the loop, variable, bytes per iteration, rewind afterwards?)
        let mut bumped: Vec<(StreamKey, Variable, i64, bool)> = vec![];
        for a in &addrs {
            let Some(&(_, coef)) = a.index.terms.iter().find(|&&(v, _)| v == var) else { continue };
            let key = self.restricted(a, Some(var));
            if self.ptrs.contains_key(&key) {
                continue;
            }
            let outer_key = self.restricted(a, None);
            let outer = self.ptrs[&outer_key];
            let shared = used_outer.contains(&outer_key) || bumped.iter().any(|(_, v, _, _)| *v == outer);
            let p = if shared {
                let start = self.b.use_var(outer);
                let p = self.b.declare_var(types::I64);
                self.b.def_var(p, start);
                p
            } else {
                outer
            };
            self.ptrs.insert(key.clone(), p);
            bumped.push((key, p, coef * 4, !shared));
        }
        let (header, inner, exit) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(self.vars[var], zero);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let i = self.b.use_var(self.vars[var]);
        let more = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, i, count);
        self.b.ins().brif(more, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        self.bound[var] = true;
        self.stmts(body);
        self.bound[var] = false;
        for (_, p, step, _) in &bumped {
            let v = self.b.use_var(*p);
            let next = self.b.ins().iadd_imm_s(v, *step);
            self.b.def_var(*p, next);
        }
        let i = self.b.use_var(self.vars[var]);
        let next = self.b.ins().iadd_imm_s(i, 1);
        self.b.def_var(self.vars[var], next);
        self.b.ins().jump(header, &[]);
        self.b.seal_block(inner);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
        for (key, p, step, rewind) in bumped {
            if rewind {
                let v = self.b.use_var(p);
                let back = self.b.ins().iadd_imm_s(v, -step * count);
                self.b.def_var(p, back);
            }
            self.ptrs.remove(&key);
        }
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Loop { var, count, body } => self.counted_loop(*var, *count as i64, body),
            Stmt::If { cond, body } => {
                let (then, join) = (self.b.create_block(), self.b.create_block());
                let v = self.index_value(&cond.index);
                let cc = match cond.cmp {
                    Cmp::Eq => IntCC::Equal,
                    Cmp::Lt => IntCC::SignedLessThan,
                };
                let eq = self.b.ins().icmp_imm_s(cc, v, cond.value);
                self.b.ins().brif(eq, then, &[], join, &[]);
                self.b.seal_block(then);
                self.b.switch_to_block(then);
                self.stmts(body);
                self.b.ins().jump(join, &[]);
                self.b.seal_block(join);
                self.b.switch_to_block(join);
            }
            Stmt::Set { dst, expr } => {
                let v = match expr {
                    Expr::Zero => self.zero(),
                    Expr::Splat(bits) => {
                        let c = self.b.ins().f32const(f32::from_bits(*bits));
                        self.b.ins().splat(types::F32X4, c)
                    }
                    Expr::Src(s) => self.src(s),
                    Expr::LoadPartial(a, n) => {
                        let mut v = self.zero();
                        let (p, off) = self.address(a);
                        let f = Self::flags();
                        for lane in 0..*n {
                            let x = self.b.ins().load(types::F32, f, p, off + 4 * lane as i32);
                            v = self.b.ins().insertlane(v, x, lane as u8);
                        }
                        v
                    }
                    Expr::Fma(acc, a, b) => {
                        let (a, b) = (self.src(a), self.src(b));
                        let c = self.b.use_var(self.regs[*acc]);
                        if self.features.fma {
                            self.b.ins().fma(a, b, c)
                        } else {
                            let m = self.b.ins().fmul(a, b);
                            self.b.ins().fadd(m, c)
                        }
                    }
                    Expr::Add(a, b) => {
                        let (x, y) = (self.b.use_var(self.regs[*a]), self.src(b));
                        self.b.ins().fadd(x, y)
                    }
                    Expr::Mul(a, b) => {
                        let (x, y) = (self.b.use_var(self.regs[*a]), self.src(b));
                        self.b.ins().fmul(x, y)
                    }
                    Expr::Max(a, b) => {
                        let (x, y) = (self.b.use_var(self.regs[*a]), self.src(b));
                        self.max(x, y)
                    }
                    Expr::Relu(a) => {
                        let (x, z) = (self.b.use_var(self.regs[*a]), self.zero());
                        self.max(x, z)
                    }
                };
                self.b.def_var(self.regs[*dst], v);
            }
            Stmt::Store { addr, src } => {
                let v = self.b.use_var(self.regs[*src]);
                let (p, off) = self.address(addr);
                let f = Self::flags();
                self.b.ins().store(f, v, p, off);
            }
            // CLIF has no prefetch instruction: a call to the module's helper, which
            // clobbers no register (`PreserveAll`).
            Stmt::Prefetch { addr } => {
                if let Some(f) = self.prefetch {
                    let (p, off) = self.address(addr);
                    let at = self.b.ins().iadd_imm_s(p, off as i64);
                    self.b.ins().call(f, &[at]);
                }
            }
            Stmt::StorePartial { addr, src, n } => {
                let v = self.b.use_var(self.regs[*src]);
                let (p, off) = self.address(addr);
                let f = Self::flags();
                for lane in 0..*n {
                    let x = self.b.ins().extractlane(v, lane as u8);
                    self.b.ins().store(f, x, p, off + 4 * lane as i32);
                }
            }
        }
    }
}

/// Every address in `body`, nested statements included.
fn addresses(body: &[Stmt]) -> Vec<Addr> {
    let mut out = vec![];
    let src = |s: &Src, out: &mut Vec<Addr>| {
        if let Src::Load(a) | Src::Bcast(a) = s {
            out.push(a.clone());
        }
    };
    for s in body {
        match s {
            Stmt::Loop { body, .. } | Stmt::If { body, .. } => out.extend(addresses(body)),
            Stmt::Set { expr, .. } => match expr {
                Expr::Src(s) | Expr::Add(_, s) | Expr::Mul(_, s) | Expr::Max(_, s) => src(s, &mut out),
                Expr::Fma(_, a, b) => {
                    src(a, &mut out);
                    src(b, &mut out);
                }
                Expr::LoadPartial(a, _) => out.push(a.clone()),
                Expr::Zero | Expr::Splat(_) | Expr::Relu(_) => {}
            },
            Stmt::Store { addr, .. } | Stmt::StorePartial { addr, .. } => out.push(addr.clone()),
            Stmt::Prefetch { addr } => out.push(addr.clone()),
        }
    }
    out
}

/// Whether `body` prefetches anywhere.
fn prefetches(body: &[Stmt]) -> bool {
    body.iter().any(|s| match s {
        Stmt::Loop { body, .. } | Stmt::If { body, .. } => prefetches(body),
        Stmt::Prefetch { .. } => true,
        _ => false,
    })
}

/// The module function a kernel's prefetches call ([`super::prefetch_helper`]).
#[derive(Clone, Copy, Debug)]
pub struct PrefetchFn {
    /// Its index among the module's functions.
    pub index: u32,
    /// Whether it lies within a 32-bit displacement of the kernels (one object file): a
    /// direct call. The JIT's code may come in separate mappings: a call through its
    /// absolute address.
    pub near: bool,
}

/// The signature of the prefetch helper: the address, in the first argument register.
pub fn prefetch_signature() -> Signature {
    let mut sig = Signature::new(CallConv::PreserveAll);
    sig.params.push(AbiParam::new(types::I64));
    sig
}

/// Builds the Cranelift function of kernel `k`; its prefetches call `prefetch_fn`, or
/// are dropped without one.
pub fn function(
    k: &Kernel,
    isa: &dyn TargetIsa,
    features: Features,
    name: UserFuncName,
    prefetch_fn: Option<PrefetchFn>,
    ctx: &mut FunctionBuilderContext,
) -> Function {
    let call_conv = isa.default_call_conv();
    assert_eq!(k.lanes, 4, "the Cranelift backend lowers 4-lane kernels");
    let mut func = Function::with_name_signature(name, signature(call_conv));
    let mut b = FunctionBuilder::new(&mut func, ctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let [argv, begin, end] = b.block_params(entry)[..] else { unreachable!() };
    let flags = MemFlagsData::trusted().with_readonly();
    let args = (0..k.args.len()).map(|i| b.ins().load(types::I64, flags, argv, (8 * i) as i32)).collect();
    let vars = (0..k.vars).map(|_| b.declare_var(types::I64)).collect();
    let regs = (0..k.vregs).map(|_| b.declare_var(types::F32X4)).collect();
    let task = b.declare_var(types::I64);
    b.def_var(task, begin);
    let prefetch = prefetch_fn.filter(|_| prefetches(&k.body)).map(|f| {
        let signature = b.import_signature(prefetch_signature());
        let name = b.func.declare_imported_user_function(UserExternalName { namespace: 0, index: f.index });
        let name = ExternalName::user(name);
        b.import_function(ExtFuncData { name, signature, colocated: f.near, patchable: false })
    });
    let mut l = Lowerer { b, features, args, vars, regs, bound: vec![false; k.vars], ptrs: HashMap::new(), prefetch };
    // Zero-initialize every variable so that SSA construction never meets an undefined use.
    for v in 0..k.vregs {
        let z = l.zero();
        l.b.def_var(l.regs[v], z);
    }
    for v in 0..k.vars {
        let z = l.b.ins().iconst(types::I64, 0);
        l.b.def_var(l.vars[v], z);
    }
    // for task in begin..end: bind the task coordinates, run the body.
    let (header, inner, exit) = (l.b.create_block(), l.b.create_block(), l.b.create_block());
    l.b.ins().jump(header, &[]);
    l.b.switch_to_block(header);
    let t = l.b.use_var(task);
    let more = l.b.ins().icmp(IntCC::SignedLessThan, t, end);
    l.b.ins().brif(more, inner, &[], exit, &[]);
    l.b.switch_to_block(inner);
    let mut rest = l.b.use_var(task);
    for (d, &dim) in k.task_dims.iter().enumerate().rev() {
        let coord = if d == 0 { rest } else { l.b.ins().urem_imm_u(rest, dim as i64) };
        l.b.def_var(l.vars[d], coord);
        if d > 0 {
            rest = l.b.ins().udiv_imm_u(rest, dim as i64);
        }
    }
    for d in 0..k.task_dims.len() {
        l.bound[d] = true;
    }
    l.prepare_pointers(&k.body);
    l.stmts(&k.body);
    l.ptrs.clear();
    let t = l.b.use_var(task);
    let next = l.b.ins().iadd_imm_s(t, 1);
    l.b.def_var(task, next);
    l.b.ins().jump(header, &[]);
    l.b.seal_block(inner);
    l.b.seal_block(header);
    l.b.switch_to_block(exit);
    l.b.seal_block(exit);
    l.b.ins().return_(&[]);
    l.b.finalize(isa.frontend_config());
    func
}
