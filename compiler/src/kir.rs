//! The kernel IR: one loop nest per kernel shape, over vector registers, with every
//! shape, stride, padding and layout stride folded into constants. Arena offsets are not
//! in the IR: a kernel reads its buffers through pointer arguments, so one kernel serves
//! every instance of its shape.
//!
//! A kernel is a function `fn(args: *const *mut f32, begin: i64, end: i64)`: it runs tasks
//! `begin..end` of its task space (a row-major product of `task_dims`), binding the task
//! coordinates to variables `0..task_dims.len()`. Tasks write disjoint memory, and no task
//! writes what another reads, so any split of `0..tasks()` over threads is correct.
//!
//! Every backend (Cranelift, Rust) lowers this IR, and [`interpret`] executes it: no
//! kernel logic is written twice.
//!
//! **Architecture Invariant:** addresses are affine in loop variables and in bounds for
//! every value the variables take; vector accesses touch `lanes` consecutive floats
//! (fewer only in `LoadPartial`/`StorePartial`).

use std::fmt::{self, Write};

/// A loop or task variable.
pub type Var = usize;
/// A virtual vector register (`lanes` f32).
pub type VReg = usize;

/// `constant + sum(coef * var)`, in f32 elements.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Index {
    pub terms: Vec<(Var, i64)>,
    pub constant: i64,
}

impl Index {
    pub fn constant(c: i64) -> Index {
        Index { terms: vec![], constant: c }
    }
    pub fn var(v: Var, coef: i64) -> Index {
        Index { terms: vec![(v, coef)], constant: 0 }.normalized()
    }
    /// `self + other`.
    pub fn plus(&self, other: &Index) -> Index {
        let mut terms = self.terms.clone();
        terms.extend_from_slice(&other.terms);
        Index { terms, constant: self.constant + other.constant }.normalized()
    }
    pub fn offset(&self, c: i64) -> Index {
        Index { terms: self.terms.clone(), constant: self.constant + c }
    }
    pub fn scaled(&self, k: i64) -> Index {
        Index { terms: self.terms.iter().map(|&(v, c)| (v, c * k)).collect(), constant: self.constant * k }.normalized()
    }
    /// Sorted by variable, like terms merged, zero coefficients dropped.
    fn normalized(mut self) -> Index {
        self.terms.sort();
        let mut out: Vec<(Var, i64)> = Vec::with_capacity(self.terms.len());
        for (v, c) in self.terms {
            match out.last_mut() {
                Some((lv, lc)) if *lv == v => *lc += c,
                _ => out.push((v, c)),
            }
        }
        out.retain(|&(_, c)| c != 0);
        self.terms = out;
        self
    }
    pub fn eval(&self, vars: &[i64]) -> i64 {
        self.constant + self.terms.iter().map(|&(v, c)| c * vars[v]).sum::<i64>()
    }
}

/// A memory location: pointer argument `arg` plus an index in floats.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    pub arg: usize,
    pub index: Index,
}

/// A vector operand: a register or a memory read folded into the instruction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Src {
    Reg(VReg),
    /// `lanes` consecutive floats.
    Load(Addr),
    /// One float splatted to every lane.
    Bcast(Addr),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    Zero,
    /// A constant (bit pattern of an f32) in every lane.
    Splat(u32),
    Src(Src),
    /// First `n` lanes from memory, the rest zero.
    LoadPartial(Addr, usize),
    /// `acc + a * b`, fused.
    Fma(VReg, Src, Src),
    Add(VReg, Src),
    Mul(VReg, Src),
    Max(VReg, Src),
    /// `max(x, 0)`.
    Relu(VReg),
}

/// A comparison of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cmp {
    Eq,
    Lt,
}

impl Cmp {
    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Lt => "<",
        }
    }
    pub fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Lt => a < b,
        }
    }
}

/// A condition on variables: `index cmp value`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cond {
    pub index: Index,
    pub cmp: Cmp,
    pub value: i64,
}

impl Cond {
    pub fn eq(index: Index, value: i64) -> Cond {
        Cond { index, cmp: Cmp::Eq, value }
    }
    pub fn lt(index: Index, value: i64) -> Cond {
        Cond { index, cmp: Cmp::Lt, value }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `for var in 0..count { body }`.
    Loop {
        var: Var,
        count: usize,
        body: Vec<Stmt>,
    },
    If {
        cond: Cond,
        body: Vec<Stmt>,
    },
    Set {
        dst: VReg,
        expr: Expr,
    },
    Store {
        addr: Addr,
        src: VReg,
    },
    /// Stores the first `n` lanes.
    StorePartial {
        addr: Addr,
        src: VReg,
        n: usize,
    },
    /// A hint that the cache line at `addr` will be read soon. The address may lie past
    /// the argument's memory (it is never dereferenced); no effect on the results, so the
    /// interpreter skips it (Cranelift calls a helper, `cranelift::prefetch_helper`, or
    /// skips it where there is none).
    Prefetch {
        addr: Addr,
    },
}

/// Floats in a cache line (64 bytes). What the kernels prefetch starts at line boundaries:
/// the packed weights, each conv's too (`kernels::WeightAlloc`), and the residuals
/// (arena buffers start at lines, and a residual is read a vector, 16 floats, at a time
/// on the one target that prefetches it).
pub const LINE_FLOATS: usize = 16;

/// One kernel shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub name: String,
    /// Names of the pointer arguments, in order (documentation and printing).
    pub args: Vec<&'static str>,
    pub lanes: usize,
    /// The task space; task coordinates are variables `0..task_dims.len()`.
    pub task_dims: Vec<usize>,
    /// Loop variables plus task variables.
    pub vars: usize,
    pub vregs: usize,
    pub body: Vec<Stmt>,
}

impl Kernel {
    pub fn tasks(&self) -> usize {
        self.task_dims.iter().product()
    }
}

/// Builds kernel bodies: fresh variables and registers, nested statement lists.
pub struct Builder {
    vars: usize,
    vregs: usize,
    stack: Vec<Vec<Stmt>>,
}

impl Builder {
    /// A builder whose first `task_dims` variables are the task coordinates.
    pub fn new(task_dims: usize) -> Builder {
        Builder { vars: task_dims, vregs: 0, stack: vec![vec![]] }
    }
    pub fn vreg(&mut self) -> VReg {
        self.vregs += 1;
        self.vregs - 1
    }
    pub fn push(&mut self, s: Stmt) {
        self.stack.last_mut().unwrap().push(s);
    }
    /// Prefetches the cache line at `addr`, unless `addr` provably lies inside a line
    /// (every variable term a multiple of a line, the constant offset not): then the
    /// prefetch of the same step at that line's start covers it, so a stream's prefetches
    /// come one per line. With 4-lane vectors four weight vectors share a line, and on
    /// the Cranelift backend each prefetch is a call. The caller's contract: a stream
    /// prefetched this way reads whole lines in each step from a line start (the kernels'
    /// weight streams, contiguous from a line-aligned start); a stream that started
    /// inside a line would lose its prefetches.
    pub fn prefetch(&mut self, addr: Addr) {
        let line = LINE_FLOATS as i64;
        let inside = addr.index.terms.iter().all(|&(_, c)| c % line == 0) && addr.index.constant % line != 0;
        if !inside {
            self.push(Stmt::Prefetch { addr });
        }
    }

    pub fn set(&mut self, dst: VReg, expr: Expr) {
        self.push(Stmt::Set { dst, expr });
    }
    /// Emits `for v in 0..count { f(v) }`; a count of 1 binds nothing and inlines the body
    /// with the variable fixed to zero, a count of 0 emits nothing.
    pub fn for_loop(&mut self, count: usize, f: impl FnOnce(&mut Builder, Index)) {
        if count == 0 {
            return;
        }
        if count == 1 {
            return f(self, Index::constant(0));
        }
        let var = self.vars;
        self.vars += 1;
        self.stack.push(vec![]);
        f(self, Index::var(var, 1));
        let body = self.stack.pop().unwrap();
        self.push(Stmt::Loop { var, count, body });
    }
    /// `for v in 0..count` with the body repeated `unroll` times per iteration (`unroll`
    /// must divide `count`); the body sees `v` as an index expression.
    pub fn for_loop_unrolled(&mut self, count: usize, unroll: usize, mut f: impl FnMut(&mut Builder, Index)) {
        let unroll = unroll.max(1);
        assert_eq!(count % unroll, 0, "unroll factor divides the trip count");
        self.for_loop(count / unroll, |b, i| {
            for u in 0..unroll {
                f(b, i.scaled(unroll as i64).offset(u as i64));
            }
        });
    }

    pub fn when(&mut self, cond: Cond, f: impl FnOnce(&mut Builder)) {
        self.stack.push(vec![]);
        f(self);
        let body = self.stack.pop().unwrap();
        if !body.is_empty() {
            self.push(Stmt::If { cond, body });
        }
    }
    pub fn finish(mut self, name: String, args: Vec<&'static str>, lanes: usize, task_dims: Vec<usize>) -> Kernel {
        let body = self.stack.pop().unwrap();
        Kernel { name, args, lanes, task_dims, vars: self.vars, vregs: self.vregs, body }
    }
}

// ---------------------------------------------------------------------------------------
// Printing

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for &(v, c) in &self.terms {
            let sep = if first { "" } else { " + " };
            if c == 1 {
                write!(f, "{sep}i{v}")?;
            } else {
                write!(f, "{sep}{c}*i{v}")?;
            }
            first = false;
        }
        if first {
            write!(f, "{}", self.constant)
        } else if self.constant != 0 {
            write!(f, " + {}", self.constant)
        } else {
            Ok(())
        }
    }
}

fn addr(k: &Kernel, a: &Addr) -> String {
    format!("{}[{}]", k.args.get(a.arg).copied().unwrap_or("?"), a.index)
}

fn src(k: &Kernel, s: &Src) -> String {
    match s {
        Src::Reg(r) => format!("v{r}"),
        Src::Load(a) => format!("load {}", addr(k, a)),
        Src::Bcast(a) => format!("bcast {}", addr(k, a)),
    }
}

fn print_body(k: &Kernel, body: &[Stmt], depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    for s in body {
        let _ = match s {
            Stmt::Loop { var, count, body } => {
                let _ = writeln!(out, "{pad}for i{var} in 0..{count} {{");
                print_body(k, body, depth + 1, out);
                writeln!(out, "{pad}}}")
            }
            Stmt::If { cond, body } => {
                let _ = writeln!(out, "{pad}if {} {} {} {{", cond.index, cond.cmp.symbol(), cond.value);
                print_body(k, body, depth + 1, out);
                writeln!(out, "{pad}}}")
            }
            Stmt::Set { dst, expr } => {
                let e = match expr {
                    Expr::Zero => "0".to_string(),
                    Expr::Splat(bits) => format!("splat {}", f32::from_bits(*bits)),
                    Expr::Src(s) => src(k, s),
                    Expr::LoadPartial(a, n) => format!("load{n} {}", addr(k, a)),
                    Expr::Fma(acc, a, b) => format!("fma v{acc}, {}, {}", src(k, a), src(k, b)),
                    Expr::Add(a, b) => format!("add v{a}, {}", src(k, b)),
                    Expr::Mul(a, b) => format!("mul v{a}, {}", src(k, b)),
                    Expr::Max(a, b) => format!("max v{a}, {}", src(k, b)),
                    Expr::Relu(a) => format!("relu v{a}"),
                };
                writeln!(out, "{pad}v{dst} = {e}")
            }
            Stmt::Store { addr: a, src } => writeln!(out, "{pad}store {}, v{src}", addr(k, a)),
            Stmt::StorePartial { addr: a, src, n } => writeln!(out, "{pad}store{n} {}, v{src}", addr(k, a)),
            Stmt::Prefetch { addr: a } => writeln!(out, "{pad}prefetch {}", addr(k, a)),
        };
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.task_dims.iter().enumerate().map(|(i, d)| format!("i{i} in 0..{d}")).collect();
        writeln!(
            f,
            "kernel {}({}) lanes {} tasks [{}] {{",
            self.name,
            self.args.join(", "),
            self.lanes,
            dims.join(", ")
        )?;
        let mut body = String::new();
        print_body(self, &self.body, 1, &mut body);
        write!(f, "{body}}}")
    }
}

// ---------------------------------------------------------------------------------------
// Interpretation

/// Runs tasks `begin..end` of `k`. Argument `i` points at float `args[i].1` of memory
/// region `args[i].0` (arguments may alias, as an in-place output and its residual do).
/// Slow and simple: it defines what the IR means, and tests compare backends with it.
/// Panics on an out-of-bounds access, which is a code-generation bug.
pub fn interpret(k: &Kernel, mem: &mut [&mut [f32]], args: &[(usize, usize)], begin: usize, end: usize) {
    let mut vars = vec![0i64; k.vars];
    let mut regs = vec![vec![0f32; k.lanes]; k.vregs];
    let mut m = Mem { mem, args };
    for t in begin..end {
        let mut rest = t;
        for (d, &dim) in k.task_dims.iter().enumerate().rev() {
            vars[d] = (rest % dim) as i64;
            rest /= dim;
        }
        run(k, &k.body, &mut vars, &mut regs, &mut m);
    }
}

struct Mem<'a, 'b> {
    mem: &'a mut [&'b mut [f32]],
    args: &'a [(usize, usize)],
}

impl Mem<'_, '_> {
    fn slice(&mut self, a: &Addr, vars: &[i64], n: usize) -> &mut [f32] {
        let (region, base) = self.args[a.arg];
        let i = base as i64 + a.index.eval(vars);
        assert!(i >= 0, "negative address");
        &mut self.mem[region][i as usize..i as usize + n]
    }
}

fn operand(k: &Kernel, s: &Src, vars: &[i64], regs: &[Vec<f32>], m: &mut Mem) -> Vec<f32> {
    match s {
        Src::Reg(r) => regs[*r].clone(),
        Src::Load(a) => m.slice(a, vars, k.lanes).to_vec(),
        Src::Bcast(a) => vec![m.slice(a, vars, 1)[0]; k.lanes],
    }
}

fn run(k: &Kernel, body: &[Stmt], vars: &mut Vec<i64>, regs: &mut Vec<Vec<f32>>, m: &mut Mem) {
    for s in body {
        match s {
            Stmt::Loop { var, count, body } => {
                for i in 0..*count {
                    vars[*var] = i as i64;
                    run(k, body, vars, regs, m);
                }
            }
            Stmt::If { cond, body } => {
                if cond.cmp.holds(cond.index.eval(vars), cond.value) {
                    run(k, body, vars, regs, m);
                }
            }
            Stmt::Set { dst, expr } => {
                let l = k.lanes;
                let zip = |a: &[f32], b: Vec<f32>, f: fn(f32, f32) -> f32| -> Vec<f32> {
                    a.iter().zip(b).map(|(x, y)| f(*x, y)).collect()
                };
                let v = match expr {
                    Expr::Zero => vec![0.0; l],
                    Expr::Splat(bits) => vec![f32::from_bits(*bits); l],
                    Expr::Src(s) => operand(k, s, vars, regs, m),
                    Expr::LoadPartial(a, n) => {
                        let mut v = m.slice(a, vars, *n).to_vec();
                        v.resize(l, 0.0);
                        v
                    }
                    Expr::Fma(acc, a, b) => {
                        let (a, b) = (operand(k, a, vars, regs, m), operand(k, b, vars, regs, m));
                        regs[*acc].iter().zip(a.iter().zip(b)).map(|(c, (x, y))| x.mul_add(y, *c)).collect()
                    }
                    Expr::Add(a, b) => zip(&regs[*a], operand(k, b, vars, regs, m), |x, y| x + y),
                    Expr::Mul(a, b) => zip(&regs[*a], operand(k, b, vars, regs, m), |x, y| x * y),
                    Expr::Max(a, b) => zip(&regs[*a], operand(k, b, vars, regs, m), f32::max),
                    Expr::Relu(a) => regs[*a].iter().map(|x| x.max(0.0)).collect(),
                };
                regs[*dst] = v;
            }
            Stmt::Store { addr, src } => {
                let v = regs[*src].clone();
                m.slice(addr, vars, k.lanes).copy_from_slice(&v);
            }
            Stmt::StorePartial { addr, src, n } => {
                let v = regs[*src][..*n].to_vec();
                m.slice(addr, vars, *n).copy_from_slice(&v);
            }
            Stmt::Prefetch { .. } => {}
        }
    }
}
