//! The Rust backend: kernel IR -> Rust source using `std::arch` AVX-512 intrinsics, plus
//! a portable 16-lane version (compiled once with AVX2+FMA enabled and once without), and
//! the model type around them. `resnet!` expands to this text; `resnetc emit rust` prints
//! it. One function per distinct kernel shape; weights are never spliced into the code,
//! they are packed at load time by the runtime from the recipes emitted here.

use crate::kernels::{ArgRef, Program};
use crate::kir::{Addr, Expr, Index, Kernel, Src, Stmt};
use crate::spec::Spec;
use crate::target::Target;
use crate::weights;
use crate::{from_spec, kernels, passes, plan};
use anyhow::Result;
use resnetc_runtime::pack::Recipe;
use std::fmt::Write;

/// The Rust backend's target: the plan uses 16-lane blocks for every ISA variant.
pub const TARGET: Target = Target::AVX512;

/// Which vector instructions a kernel body is written with.
#[derive(Clone, Copy, PartialEq)]
enum Isa {
    Avx512,
    Portable,
}

fn index(i: &Index) -> String {
    let mut parts: Vec<String> =
        i.terms.iter().map(|&(v, c)| if c == 1 { format!("i{v}") } else { format!("{c} * i{v}") }).collect();
    if i.constant != 0 || parts.is_empty() {
        parts.push(i.constant.to_string());
    }
    parts.join(" + ")
}

fn ptr(a: &Addr) -> String {
    format!("a{}.offset({})", a.arg, index(&a.index))
}

fn src(isa: Isa, s: &Src) -> String {
    match (isa, s) {
        (_, Src::Reg(r)) => format!("v{r}"),
        (Isa::Avx512, Src::Load(a)) => format!("_mm512_loadu_ps({})", ptr(a)),
        (Isa::Avx512, Src::Bcast(a)) => format!("_mm512_set1_ps(*{})", ptr(a)),
        (Isa::Portable, Src::Load(a)) => format!("pv::load({})", ptr(a)),
        (Isa::Portable, Src::Bcast(a)) => format!("pv::bcast({})", ptr(a)),
    }
}

fn expr(isa: Isa, e: &Expr) -> String {
    use Isa::*;
    match (isa, e) {
        (Avx512, Expr::Zero) => "_mm512_setzero_ps()".into(),
        (Portable, Expr::Zero) => "pv::splat(0.0)".into(),
        (Avx512, Expr::Splat(b)) => format!("_mm512_set1_ps(f32::from_bits({b:#x}))"),
        (Portable, Expr::Splat(b)) => format!("pv::splat(f32::from_bits({b:#x}))"),
        (_, Expr::Src(s)) => src(isa, s),
        (Avx512, Expr::LoadPartial(a, n)) => format!("_mm512_maskz_loadu_ps({:#x}, {})", (1u32 << n) - 1, ptr(a)),
        (Portable, Expr::LoadPartial(a, n)) => format!("pv::load_partial({}, {n})", ptr(a)),
        (Avx512, Expr::Fma(c, a, b)) => format!("_mm512_fmadd_ps({}, {}, v{c})", src(isa, a), src(isa, b)),
        (Portable, Expr::Fma(c, a, b)) => format!("pv::fma({}, {}, v{c})", src(isa, a), src(isa, b)),
        (Avx512, Expr::Add(a, b)) => format!("_mm512_add_ps(v{a}, {})", src(isa, b)),
        (Portable, Expr::Add(a, b)) => format!("pv::add(v{a}, {})", src(isa, b)),
        (Avx512, Expr::Mul(a, b)) => format!("_mm512_mul_ps(v{a}, {})", src(isa, b)),
        (Portable, Expr::Mul(a, b)) => format!("pv::mul(v{a}, {})", src(isa, b)),
        (Avx512, Expr::Max(a, b)) => format!("_mm512_max_ps(v{a}, {})", src(isa, b)),
        (Portable, Expr::Max(a, b)) => format!("pv::max(v{a}, {})", src(isa, b)),
        (Avx512, Expr::Relu(a)) => format!("_mm512_max_ps(v{a}, _mm512_setzero_ps())"),
        (Portable, Expr::Relu(a)) => format!("pv::relu(v{a})"),
    }
}

fn body(isa: Isa, stmts: &[Stmt], depth: usize, out: &mut String) {
    let pad = "    ".repeat(depth);
    for s in stmts {
        let _ = match s {
            Stmt::Loop { var, count, body: b } => {
                let _ = writeln!(out, "{pad}for i{var} in 0..{count}isize {{");
                body(isa, b, depth + 1, out);
                writeln!(out, "{pad}}}")
            }
            Stmt::If { cond, body: b } => {
                let _ = writeln!(out, "{pad}if {} {} {} {{", index(&cond.index), cond.cmp.symbol(), cond.value);
                body(isa, b, depth + 1, out);
                writeln!(out, "{pad}}}")
            }
            Stmt::Set { dst, expr: e } => writeln!(out, "{pad}v{dst} = {};", expr(isa, e)),
            Stmt::Store { addr, src } => match isa {
                Isa::Avx512 => writeln!(out, "{pad}_mm512_storeu_ps({}, v{src});", ptr(addr)),
                Isa::Portable => writeln!(out, "{pad}pv::store({}, v{src});", ptr(addr)),
            },
            Stmt::StorePartial { addr, src, n } => match isa {
                Isa::Avx512 => {
                    writeln!(out, "{pad}_mm512_mask_storeu_ps({}, {:#x}, v{src});", ptr(addr), (1u32 << n) - 1)
                }
                Isa::Portable => writeln!(out, "{pad}pv::store_partial({}, v{src}, {n});", ptr(addr)),
            },
            // `wrapping_offset`: the hinted address may lie past the argument's memory.
            Stmt::Prefetch { addr } => writeln!(
                out,
                "{pad}#[cfg(target_arch = \"x86_64\")]\n{pad}core::arch::x86_64::_mm_prefetch::<{{ core::arch::x86_64::_MM_HINT_T0 }}>(a{}.wrapping_offset({}) as *const i8);",
                addr.arg,
                index(&addr.index)
            ),
        };
    }
}

/// The body of `fn(args, begin, end)` for kernel `k`.
fn kernel_body(isa: Isa, k: &Kernel, out: &mut String) {
    for (i, name) in k.args.iter().enumerate() {
        let _ = writeln!(out, "    let a{i} = *args.add({i}); // {name}");
    }
    let (ty, zero) = match isa {
        Isa::Avx512 => ("__m512", "_mm512_setzero_ps()"),
        Isa::Portable => ("pv::V", "pv::splat(0.0)"),
    };
    for v in 0..k.vregs {
        let _ = writeln!(out, "    let mut v{v}: {ty} = {zero};");
    }
    let _ = writeln!(out, "    for task in begin as isize..end as isize {{");
    let _ = writeln!(out, "        let mut rest = task;");
    for (d, dim) in k.task_dims.iter().enumerate().rev() {
        if d == 0 {
            let _ = writeln!(out, "        let i0 = rest;");
        } else {
            let _ = writeln!(out, "        let i{d} = rest % {dim};");
            let _ = writeln!(out, "        rest /= {dim};");
        }
    }
    body(isa, &k.body, 2, out);
    let _ = writeln!(out, "    }}");
}

fn arg(a: &ArgRef) -> String {
    match a {
        ArgRef::Arena(o) => format!("Arg::Arena({o})"),
        ArgRef::Weights(o) => format!("Arg::Weights({o})"),
        ArgRef::Input => "Arg::Input".into(),
        ArgRef::Output => "Arg::Output".into(),
    }
}

fn cow(s: &str) -> String {
    format!("Cow::Borrowed({s:?})")
}

fn recipe(r: &Recipe) -> String {
    match r {
        Recipe::Conv(p) => format!(
            "Recipe::Conv(ConvPacking {{ weight: {}, bn: {}, cout: {}, cin: {}, kernel: {}, groups: {}, jl: {}, tiles: {}, icr: {}, per_group: {}, group_stride: {}, tile_stride: {}, offset: {}, bias_offset: {}, strassen: {} }})",
            cow(&p.weight),
            p.bn.as_ref().map_or("None".into(), |b| format!("Some({})", cow(b))),
            p.cout, p.cin, p.kernel, p.groups, p.jl, p.tiles, p.icr, p.per_group, p.group_stride, p.tile_stride, p.offset, p.bias_offset, p.strassen
        ),
        Recipe::Winograd(p) => format!(
            "Recipe::Winograd(WinogradPacking {{ weight: {}, bn: {}, cout: {}, cin: {}, m: {}, row: {}, stride: {}, raw: {}, phases: {}, jl: {}, ktiles: {}, cin_pad: {}, offset: {}, bias_offset: {} }})",
            cow(&p.weight),
            p.bn.as_ref().map_or("None".into(), |b| format!("Some({})", cow(b))),
            p.cout, p.cin, p.m, p.row, p.stride, p.raw, p.phases, p.jl, p.ktiles, p.cin_pad, p.offset, p.bias_offset
        ),
        Recipe::Linear(p) => format!(
            "Recipe::Linear(LinearPacking {{ param: {}, cin: {}, cout: {}, cinp: {}, coutp: {}, block: {}, offset: {}, bias_offset: {} }})",
            cow(&p.param), p.cin, p.cout, p.cinp, p.coutp, p.block, p.offset, p.bias_offset
        ),
    }
}

/// The kernel IR program of `spec` for the Rust backend's `target` ([`TARGET`], or a
/// variant of it with a weight budget).
pub fn program_for(spec: &Spec, target: Target) -> Result<Program> {
    let graph = from_spec::build(spec)?;
    kernels::lower(&plan::build(&passes::fuse(&graph).0, target)?)
}

/// Rust source defining `type_name` (a model type) for `spec`. `rt` is the path of the
/// runtime crate as seen from the generated code.
pub fn generate(spec: &Spec, type_name: &str, vis: &str, rt: &str) -> Result<String> {
    generate_for(spec, TARGET, type_name, vis, rt)
}

/// [`generate`] for a variant of [`TARGET`] (a weight budget).
pub fn generate_for(spec: &Spec, target: Target, type_name: &str, vis: &str, rt: &str) -> Result<String> {
    generate_program(spec, &program_for(spec, target)?, type_name, vis, rt)
}

/// [`generate`] for `p`, the program [`program_for`] lowered from `spec` (for callers that
/// also need the program, so it is lowered once).
pub fn generate_program(spec: &Spec, p: &Program, type_name: &str, vis: &str, rt: &str) -> Result<String> {
    let graph = from_spec::build(spec)?;
    let m = format!("__resnetc_{}", type_name.to_ascii_lowercase());
    let mut o = String::new();
    let _ = writeln!(
        o,
        "// Generated by resnetc for model `{}` ({} kernels, {} calls).",
        spec.name,
        p.kernels.len(),
        p.calls.len()
    );
    let _ = writeln!(o, "#[doc(hidden)]\n#[allow(unused, unused_mut, unused_unsafe, clippy::all)]\n{vis} mod {m} {{");
    let _ = writeln!(o, "    use {rt} as rt;\n    use rt::exec::{{Arg, KernelFn}};\n    use rt::pack::{{ConvPacking, LinearPacking, Recipe, WinogradPacking}};\n    use std::borrow::Cow;\n");
    let _ = writeln!(o, "    pub static DEF: rt::model::ModelDef = rt::model::ModelDef {{");
    let _ = writeln!(o, "        name: {:?},\n        input: {:?},\n        classes: {},\n        arena_floats: {},\n        weight_floats: {},", spec.name, spec.input, spec.num_classes, p.arena_floats, p.weight_floats);
    let _ = writeln!(o, "        expected: &[");
    for e in weights::manifest(&graph) {
        let _ = writeln!(o, "            ({:?}, &{:?}),", e.name, e.shape);
    }
    let _ = writeln!(o, "        ],\n        recipes: &[");
    for r in &p.recipes {
        let _ = writeln!(o, "            {},", recipe(r));
    }
    let _ = writeln!(o, "        ],\n        calls: &[");
    for c in &p.calls {
        let args: Vec<String> = c.args.iter().map(arg).collect();
        let _ = writeln!(
            o,
            "            ({}, {}, rt::exec::Order::{:?}, &[{}]), // {}",
            c.kernel,
            p.tasks(c),
            c.order,
            args.join(", "),
            c.name
        );
    }
    let _ = writeln!(o, "        ],\n    }};\n");

    // AVX-512 kernels.
    let _ = writeln!(o, "    #[cfg(target_arch = \"x86_64\")]\n    mod avx512 {{\n        use core::arch::x86_64::*;\n        use super::KernelFn;\n");
    for (i, k) in p.kernels.iter().enumerate() {
        let _ = writeln!(o, "        /// {}\n        #[target_feature(enable = \"avx512f\")]\n        unsafe extern \"C\" fn k{i}(args: *const *mut f32, begin: i64, end: i64) {{", k.name);
        let mut b = String::new();
        kernel_body(Isa::Avx512, k, &mut b);
        for line in b.lines() {
            let _ = writeln!(o, "        {line}");
        }
        let _ = writeln!(o, "        }}\n");
    }
    let list: Vec<String> = (0..p.kernels.len()).map(|i| format!("k{i}")).collect();
    let _ = writeln!(o, "        pub static KERNELS: &[KernelFn] = &[{}];\n    }}\n", list.join(", "));

    // Portable kernels: one body, instantiated with and without AVX2+FMA.
    let _ = writeln!(o, "    mod portable {{\n        use super::rt::simd as pv;\n        use super::KernelFn;\n");
    for (i, k) in p.kernels.iter().enumerate() {
        let _ = writeln!(o, "        /// {}\n        #[inline(always)]\n        unsafe fn k{i}(args: *const *mut f32, begin: i64, end: i64) {{", k.name);
        let mut b = String::new();
        kernel_body(Isa::Portable, k, &mut b);
        for line in b.lines() {
            let _ = writeln!(o, "        {line}");
        }
        let _ = writeln!(o, "        }}");
        let _ = writeln!(o, "        #[cfg(target_arch = \"x86_64\")]\n        #[target_feature(enable = \"avx2,fma\")]\n        unsafe extern \"C\" fn k{i}_avx2(args: *const *mut f32, begin: i64, end: i64) {{ k{i}(args, begin, end) }}");
        let _ = writeln!(o, "        unsafe extern \"C\" fn k{i}_plain(args: *const *mut f32, begin: i64, end: i64) {{ k{i}(args, begin, end) }}\n");
    }
    let avx2: Vec<String> = (0..p.kernels.len()).map(|i| format!("k{i}_avx2")).collect();
    let plain: Vec<String> = (0..p.kernels.len()).map(|i| format!("k{i}_plain")).collect();
    let _ = writeln!(
        o,
        "        #[cfg(target_arch = \"x86_64\")]\n        pub static AVX2: &[KernelFn] = &[{}];",
        avx2.join(", ")
    );
    let _ = writeln!(o, "        pub static PLAIN: &[KernelFn] = &[{}];\n    }}\n", plain.join(", "));

    let _ = writeln!(
        o,
        r#"    /// The best kernel set for this CPU, detected at run time, and its name.
    pub fn kernels() -> (&'static str, &'static [KernelFn]) {{
        #[cfg(target_arch = "x86_64")]
        {{
            if std::is_x86_feature_detected!("avx512f") {{
                return ("avx512", avx512::KERNELS);
            }}
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {{
                return ("avx2", portable::AVX2);
            }}
        }}
        ("portable", portable::PLAIN)
    }}
}}

/// The `{name}` network, compiled by resnetc into specialized kernels for this shape.
///
/// Input: `[N, {c}, {h}, {w}]` float32 (NCHW); output: `[N, {classes}]` logits.
{vis} struct {ty} {{
    model: {rt}::model::Model,
    isa: &'static str,
}}

impl {ty} {{
    /// Input shape of one image, `[C, H, W]`.
    pub const INPUT: [usize; 3] = [{c}, {h}, {w}];
    /// Number of output classes.
    pub const CLASSES: usize = {classes};

    /// Loads torchvision-named weights from a safetensors file.
    pub fn load(path: impl AsRef<std::path::Path>) -> {rt}::anyhow::Result<Self> {{
        Self::consume({rt}::safetensors::read(path.as_ref())?)
    }}

    /// Loads torchvision-named weights from the bytes of a safetensors file.
    pub fn from_safetensors(bytes: &[u8]) -> {rt}::anyhow::Result<Self> {{
        Self::consume({rt}::safetensors::parse(bytes)?)
    }}

    /// Packs tensors this type owns, freeing each once packed (lower peak memory).
    fn consume(tensors: {rt}::safetensors::Tensors) -> {rt}::anyhow::Result<Self> {{
        let (isa, kernels) = {m}::kernels();
        // SAFETY: the kernels were generated together with DEF.
        let model = unsafe {{ {rt}::model::Model::from_def_consuming(&{m}::DEF, kernels, tensors, 1)? }};
        Ok(Self {{ model, isa }})
    }}

    /// Packs already loaded tensors. Single-threaded until [`Self::set_threads`].
    pub fn from_tensors(tensors: &{rt}::safetensors::Tensors) -> {rt}::anyhow::Result<Self> {{
        let (isa, kernels) = {m}::kernels();
        // SAFETY: the kernels were generated together with DEF.
        let model = unsafe {{ {rt}::model::Model::from_def(&{m}::DEF, kernels, tensors, 1)? }};
        Ok(Self {{ model, isa }})
    }}

    /// Runs on a weight blob that resnetc packed for exactly this model at build time
    /// (as `resnetc build --backend rust` embeds one), in place: no parsing, no copy. Its
    /// length is checked; a blob of that length packed from other weights gives other
    /// (wrong) logits, never an access outside it.
    pub fn from_packed_static(blob: &'static [f32]) -> {rt}::anyhow::Result<Self> {{
        Self::__resnetc_from_packed({rt}::model::Weights::from_static(blob)?)
    }}

    /// [`Self::from_packed_static`] for a blob embedded in the executable's file (as
    /// `include_bytes!` embeds it). For a process that makes `many_calls`, copied into
    /// huge pages where the system offers them (faster weight streams), dropping the
    /// blob's own resident pages behind the copy.
    ///
    /// # Safety
    /// `blob` must be read-only data of the executable's file, never memory the program
    /// allocated (which the copy would zero).
    pub unsafe fn from_embedded(blob: &'static [f32], many_calls: bool) -> {rt}::anyhow::Result<Self> {{
        // SAFETY: forwarded from the caller.
        Self::__resnetc_from_packed(unsafe {{ {rt}::model::Weights::from_embedded(blob, many_calls)? }})
    }}

    fn __resnetc_from_packed(weights: {rt}::model::Weights) -> {rt}::anyhow::Result<Self> {{
        let (isa, kernels) = {m}::kernels();
        // SAFETY: the kernels were generated together with DEF and read the blob only at
        // offsets below its length, which `from_def_packed` checks.
        let model = unsafe {{ {rt}::model::Model::from_def_packed(&{m}::DEF, kernels, weights, 1)? }};
        Ok(Self {{ model, isa }})
    }}

    /// Uses `threads` threads per forward call.
    pub fn set_threads(&mut self, threads: usize) {{
        self.model.set_threads(threads);
    }}

    /// [`Self::set_threads`], builder style.
    pub fn with_threads(mut self, threads: usize) -> Self {{
        self.set_threads(threads);
        self
    }}

    /// The instruction set the kernels run with: "avx512", "avx2" or "portable".
    pub fn isa(&self) -> &'static str {{
        self.isa
    }}

    /// Runs a batch `[N, {c}, {h}, {w}]`, returning `[N, {classes}]` logits.
    pub fn forward(&self, input: &{rt}::Tensor) -> {rt}::anyhow::Result<{rt}::Tensor> {{
        self.model.forward(input)
    }}

    /// Runs `n` images from `input` into `output` without allocating (once warm).
    pub fn forward_into(&self, input: &[f32], output: &mut [f32], n: usize) -> {rt}::anyhow::Result<()> {{
        self.model.forward_into(input, output, n)
    }}

    /// The runtime model (for per-kernel timing and other introspection).
    pub fn model(&self) -> &{rt}::model::Model {{
        &self.model
    }}

    /// The runtime model, by value.
    pub fn into_model(self) -> {rt}::model::Model {{
        self.model
    }}
}}"#,
        name = spec.name,
        ty = type_name,
        c = spec.input[0],
        h = spec.input[1],
        w = spec.input[2],
        classes = spec.num_classes,
    );
    Ok(o)
}
