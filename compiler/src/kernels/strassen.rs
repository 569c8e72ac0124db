//! 1x1 convolutions as one level of Strassen's algorithm
//! ([`resnetc_runtime::strassen`]): seven products of half-size blocks instead of eight,
//! so 7/8 of the multiply-adds. Where it runs: targets with [`Target::strassen`]
//! (128-bit vectors, whose FMAs are slow beside the extra memory traffic).
//!
//! The halves: output channels and input channels at their middle; output pixels as
//! the top half of the rows and the bottom half, each pixel `(y, x)` of the top paired
//! with `(y + h/2, x)`, cut into the register tiles a direct conv reading a panel would
//! take (`kernels::conv`'s `even_tiles_2d`). Outputs of at most 128 pixels per half take
//! flat tiles instead (they alone may have an odd height): the first `ceil(n/2)` pixels
//! in row-major order, pixel `q` paired with pixel `q + ceil(n/2)` (the odd pixel out
//! pairs with nothing: zeros in, nothing stored). A tile covers its pixels and their
//! partners.
//!
//! Two steps:
//! - the gather ([`gather`]) writes, per task row and tile of the top half, the seven
//!   activation sums of each input channel of the first half into a panel
//!   ([`panel_layout`]: `[task row][tile][product][channel block][slot][lane]`): over row
//!   halves at the start of each products task, for its task row; with flat tiles in a
//!   kernel of its own ([`pack`]);
//! - the products ([`generate`]), per task row and output vector of the first half: the
//!   seven products in turn, each over every register tile of the task row (one output
//!   vector, the half reduction), then added into the output quadrants it enters. A
//!   quadrant's first product stores bias + product (+ residual, read before anything
//!   writes that place, so the output may overwrite its residual in place); later ones
//!   load, add or subtract, store; the last applies ReLU. A task owns its pixels in all
//!   four quadrants (and, gathering, its task row of the panel), so tasks write disjoint
//!   memory.
//!
//! The weight sums are packed at load (`pack::pack_conv`, `ConvPacking::strassen`):
//! `[vector][product][input channel][lane]` over the first halves.

use super::conv::{
    blocks_per_iteration, channel_unroll, even_tiles_2d, for_row_tiles, pixel_budget, row_tile_pixels, Generated,
    TileShape, PREFETCH_FLOATS,
};
use super::simple::{pixel, zero_halo_of_row};
use super::WeightAlloc;
use crate::graph::{Conv, Shape};
use crate::kir::{Addr, Builder, Cond, Expr, Index, Kernel, Src, Stmt, VReg};
use crate::plan::{Buffer, Layout};
use crate::target::Target;
use resnetc_runtime::pack::ConvPacking;
use resnetc_runtime::strassen::{quadrant_span, PRODUCTS};

/// Fewest input channels for Strassen: each product's reduction runs over half of them,
/// and its epilogue (one or two quadrant updates per accumulator) is paid seven times per
/// tile. ResNet-50 on the JIT (1 thread, per-call minima, gather included): its 1x1 convs
/// from 64 channels 0.99-1.08x the direct time; from 128 and more 0.90-0.98x.
const MIN_CIN: usize = 128;

/// Accumulators of a register tile: those of the direct convs that read a panel on 16
/// registers (`conv::pixel_budget`), at most.
const MAX_TILE: usize = 10;

/// Most pixels of a half that take flat tiles ([`Geometry`]): every flat tile's code is
/// written out, seven times. ResNet's 14x14 and 7x7 outputs; on 14x14 the row halves (7
/// rows) would leave one task row of one row, whose short tiles wait on the FMA latency.
const FLAT_HALF_PIXELS: usize = 128;

/// Fewest multiply-adds for Strassen: a small conv saves too little for its extra gather
/// (the products' eighth against a second pass over 7/4 of the input read). On the JIT (1
/// thread, per-call minima): ResNet-18's 6.4 M (128x28x28 to 256x14x14) 1.22x the time;
/// ResNet-50's of 51 M and more 0.86-0.98x.
const MIN_MACS: usize = 25 << 20;

/// Most bytes of a Strassen panel, in units of `Target::l2_bytes`. The gather writes 7/4
/// of the input pixels the conv reads (the sums); over row halves each task row's part
/// is read by every output vector right after its gather, so the whole panel's size
/// stands for the input a conv gathers per output vector: ResNet's 56x56 convs, where few
/// output vectors share each gather, are past twice L2. The ResNet-50 JIT (1 thread,
/// per-call minima, gather included, against the direct conv and its panel): 256x56x56
/// to 64 (a 5.6 MB panel) 1.07x the time, to 128 1.00x, with a gather kernel of their
/// own; 1.03x and 0.98x gathering row by row in the products; 512x28x28 to 128 (2.8 MB)
/// 0.91x, to 256 0.91x; 1024x14x14 to 256 0.95x.
const MAX_PANEL_L2: usize = 2;

/// Whether the cost model runs conv `c` with output `out` as Strassen on `t`: where the
/// target has it, the kernels can ([`possible`]), the reduction is long enough
/// ([`MIN_CIN`]), the conv large enough ([`MIN_MACS`]) and its panel small enough
/// ([`MAX_PANEL_L2`]).
pub fn fits(t: Target, c: &Conv, out: Shape) -> bool {
    let panel_bytes = PRODUCTS.len() * (c.cin / 2) * half_pixels(out.h, out.w) * 4;
    let macs = c.cout * c.cin * out.h * out.w;
    t.strassen
        && possible(t, c, out)
        && c.cin >= MIN_CIN
        && macs >= MIN_MACS
        && panel_bytes <= MAX_PANEL_L2 * t.l2_bytes
}

/// Whether the kernels can run conv `c` with output `out` as Strassen on `t`: an
/// ungrouped 1x1 conv without padding, its input and output channels in whole pairs of
/// vectors, an even number of output rows or few enough pixels for flat tiles. (Its
/// input must be channel-blocked, as every conv's is but the stem's, which is never 1x1.)
pub fn possible(t: Target, c: &Conv, out: Shape) -> bool {
    c.kernel == 1
        && c.pad == 0
        && c.groups == 1
        && c.winograd.is_none()
        && c.cin.is_multiple_of(2 * t.lanes)
        && c.cout.is_multiple_of(2 * t.lanes)
        && (out.h.is_multiple_of(2) || half_pixels(out.h, out.w) <= FLAT_HALF_PIXELS)
}

/// Pixels of the first half of a `h` x `w` output (flat tiles).
fn half_pixels(h: usize, w: usize) -> usize {
    (h * w).div_ceil(2)
}

/// One output pixel of the first half, the pixel paired with it (`None` for the odd
/// pixel out of flat tiles), and their slot in the tile; pixels as (row, column).
struct Pair {
    a: (Index, Index),
    b: Option<(Index, Index)>,
    slot: usize,
}

impl Pair {
    /// The pixel of pixel half `half` (0: `a`, 1: `b`).
    fn pixel(&self, half: usize) -> Option<&(Index, Index)> {
        if half == 0 {
            Some(&self.a)
        } else {
            self.b.as_ref()
        }
    }
}

/// How a Strassen conv covers its output: register tiles over the top half, task rows of
/// `shape.rows` rows (the last one shorter when the half's height is odd); or flat tiles
/// over the first half of the pixels, one task row.
struct Geometry {
    shape: TileShape,
    /// Rows of each pixel half (not flat).
    half_rows: usize,
    /// Task rows of a half.
    tasks: usize,
    /// Register tiles per task row.
    tiles: usize,
    /// The output's width and height.
    width: usize,
    height: usize,
    /// Input channel blocks of each channel half.
    half_blocks: usize,
    lanes: usize,
}

impl Geometry {
    fn new(t: Target, c: &Conv, out: &Layout) -> Geometry {
        assert!(possible(t, c, Shape { c: out.c, h: out.h, w: out.w }), "a conv Strassen can run");
        let budget = pixel_budget(t, 1, channel_unroll(t, t.lanes)).min(MAX_TILE);
        let (half_rows, half) = (out.h / 2, half_pixels(out.h, out.w));
        let (shape, tasks, tiles) = if half <= FLAT_HALF_PIXELS {
            let (shape, _) = even_tiles_2d(budget, half, 1);
            let shape = TileShape { flat: true, ..shape };
            (shape, 1, shape.tiles(half, 1))
        } else {
            let (shape, _) = even_tiles_2d(budget, out.w, half_rows);
            (shape, half_rows.div_ceil(shape.rows), shape.tiles(out.w, half_rows))
        };
        Geometry {
            shape,
            half_rows,
            tasks,
            tiles,
            width: out.w,
            height: out.h,
            half_blocks: c.cin / 2 / t.lanes,
            lanes: t.lanes,
        }
    }

    /// Runs `f(b, tile, pairs)` for every register tile of task row `task` (`nr` rows
    /// from output row `oh0`; flat: every tile).
    fn for_tiles(&self, b: &mut Builder, oh0: &Index, nr: usize, mut f: impl FnMut(&mut Builder, &Index, &[Pair])) {
        if self.shape.flat {
            let (w, n) = (self.width, self.width * self.height);
            let half = half_pixels(self.height, w);
            let at = |q: usize| (Index::constant((q / w) as i64), Index::constant((q % w) as i64));
            for g in self.shape.groups(half) {
                for k in 0..g.count {
                    let q0 = g.column + k * g.pixels;
                    let pairs: Vec<Pair> = (q0..q0 + g.pixels)
                        .map(|q| Pair { a: at(q), b: (q + half < n).then(|| at(q + half)), slot: q - q0 })
                        .collect();
                    f(b, &Index::constant((g.first + k) as i64), &pairs);
                }
            }
        } else {
            for_row_tiles(b, &self.shape, self.width, |b, tix, column, n| {
                let pairs: Vec<Pair> = row_tile_pixels(oh0, column, self.shape.pixels, n, nr)
                    .into_iter()
                    .map(|(oh, ow, slot)| Pair {
                        b: Some((oh.offset(self.half_rows as i64), ow.clone())),
                        a: (oh, ow),
                        slot,
                    })
                    .collect();
                f(b, tix, &pairs);
            });
        }
    }

    /// Runs `f(b, nr)` for the task rows of a kernel whose task row is `task`: all of
    /// them `shape.rows` rows, or the last one fewer.
    fn by_task_rows(&self, b: &mut Builder, task: &Index, mut f: impl FnMut(&mut Builder, usize)) {
        let rows = if self.shape.flat { self.height } else { self.shape.rows };
        let full = if self.shape.flat { 1 } else { self.half_rows / rows };
        if full == self.tasks {
            f(b, rows);
        } else {
            b.when(Cond::lt(task.clone(), full as i64), |b| f(b, rows));
            b.when(Cond::eq(task.clone(), full as i64), |b| f(b, self.half_rows % rows));
        }
    }

    /// The output rows task row `task` writes, `nr` rows from `oh0`: in both pixel halves
    /// (flat: every row).
    fn output_rows(&self, oh0: &Index, nr: usize) -> Vec<Index> {
        if self.shape.flat {
            return (0..self.height).map(|y| Index::constant(y as i64)).collect();
        }
        (0..2).flat_map(|half| (0..nr).map(move |r| oh0.offset((r + half * self.half_rows) as i64))).collect()
    }

    /// Float index of the panel block of task row `task`, tile `tile`, product `i` and
    /// channel block `cbk` of the first half: `slots * lanes` floats.
    fn block(&self, task: &Index, tile: &Index, i: usize, cbk: &Index) -> Index {
        let per_tile = task.scaled(self.tiles as i64).plus(tile).scaled(PRODUCTS.len() as i64).offset(i as i64);
        per_tile.scaled(self.half_blocks as i64).plus(cbk).scaled((self.shape.slots() * self.lanes) as i64)
    }
}

/// The scratch layout of a Strassen conv's panel ([`gather`]), 7/4 of the input pixels
/// the conv reads; only its size matters to the planner.
pub fn panel_layout(t: Target, c: &Conv, out: &Layout) -> Layout {
    let g = Geometry::new(t, c, out);
    let c = PRODUCTS.len() * g.half_blocks * t.lanes;
    Layout { c, cb: t.lanes, h: g.tasks, w: g.tiles * g.shape.slots(), halo: 0 }
}

/// A kernel name's shape part: `1x1s2_1024x14x14_to2048x7x7`, then `_flat` for flat
/// tiles.
fn shape_name(c: &Conv, li: &Layout, lo: &Layout, g: &Geometry) -> String {
    let flat = if g.shape.flat { "_flat" } else { "" };
    format!("1x1s{}_{}x{}x{}_to{}x{}x{}{flat}", c.stride, li.c, li.h, li.w, lo.c, lo.h, lo.w)
}

/// `acc + r` for a positive `sign`, else `acc - r` (as `acc + r * -1`, `minus_one` holding
/// -1 in every lane).
fn signed_add(acc: VReg, r: VReg, sign: i8, minus_one: VReg) -> Expr {
    if sign > 0 {
        Expr::Add(acc, Src::Reg(r))
    } else {
        Expr::Fma(acc, Src::Reg(r), Src::Reg(minus_one))
    }
}

/// `sum(coefs[q] * regs[q])` into `v` (a single plus term is its register itself);
/// `minus_one` holds -1 in every lane. Every sum has a plus term.
fn combine(b: &mut Builder, regs: &[VReg; 4], coefs: [i8; 4], v: VReg, minus_one: VReg) -> VReg {
    let terms: Vec<(VReg, i8)> = (0..4).filter(|&q| coefs[q] != 0).map(|q| (regs[q], coefs[q])).collect();
    let start = terms.iter().position(|&(_, s)| s > 0).expect("a sum with a plus term");
    if terms.len() == 1 {
        return terms[0].0;
    }
    let mut acc = terms[start].0;
    for (_, &(r, s)) in terms.iter().enumerate().filter(|&(k, _)| k != start) {
        b.set(v, signed_add(acc, r, s, minus_one));
        acc = v;
    }
    acc
}

/// The registers and the arguments a gather uses ([`gather`]).
struct GatherRegs {
    /// The four input vectors of a pixel slot and channel block (channel half, pixel half).
    x: [VReg; 4],
    sum: VReg,
    /// -1 in every lane, set by the caller before the gather.
    minus_one: VReg,
    panel_arg: usize,
    input_arg: usize,
}

impl GatherRegs {
    fn new(b: &mut Builder, panel_arg: usize, input_arg: usize) -> GatherRegs {
        let x = std::array::from_fn(|_| b.vreg());
        GatherRegs { x, sum: b.vreg(), minus_one: b.vreg(), panel_arg, input_arg }
    }
}

/// Writes into the panel, for input channel block `cbk` of the first half and every
/// register tile of task row `task` (`nr` rows), each pixel slot's four input vectors'
/// seven sums.
#[allow(clippy::too_many_arguments)]
fn gather(b: &mut Builder, g: &Geometry, c: &Conv, li: &Layout, task: &Index, nr: usize, cbk: &Index, r: &GatherRegs) {
    let (s, lanes) = (c.stride as i64, g.lanes);
    let oh0 = task.scaled(g.shape.rows as i64);
    g.for_tiles(b, &oh0, nr, |b, tix, pairs| {
        for p in pairs {
            for (q, &x) in r.x.iter().enumerate() {
                // Block q: channel half q / 2, pixel half q % 2.
                match p.pixel(q % 2) {
                    Some((oh, ow)) => {
                        let block = cbk.offset(((q / 2) * g.half_blocks) as i64);
                        let at = pixel(li, &block, &oh.scaled(s), &ow.scaled(s));
                        b.set(x, Expr::Src(Src::Load(Addr { arg: r.input_arg, index: at })));
                    }
                    None => b.set(x, Expr::Zero),
                }
            }
            for (i, product) in PRODUCTS.iter().enumerate() {
                let sum = combine(b, &r.x, product.activations, r.sum, r.minus_one);
                let dst = g.block(task, tix, i, cbk).offset((p.slot * lanes) as i64);
                b.push(Stmt::Store { addr: Addr { arg: r.panel_arg, index: dst }, src: sum });
            }
        }
    });
}

/// The kernel that gathers a Strassen conv's input into its panel, for flat tiles (`None`
/// over row halves, whose products gather their own task rows, [`generate`]): one task
/// per input channel block of the first half. Flat tiles have one task row, so their
/// products split by output vector and need the whole panel first.
pub fn pack(t: Target, c: &Conv, input: &Buffer, panel: &Buffer, out: &Buffer) -> Option<Kernel> {
    let (li, lo, lanes) = (input.layout, out.layout, t.lanes);
    let g = Geometry::new(t, c, &lo);
    if !g.shape.flat {
        return None;
    }
    assert_eq!(li.cb, lanes, "a channel-blocked input");
    assert_eq!(panel.layout.numel(), panel_layout(t, c, &lo).numel(), "the panel sized for the conv");
    let mut b = Builder::new(1);
    let regs = GatherRegs::new(&mut b, 0, 1);
    b.set(regs.minus_one, Expr::Splat((-1f32).to_bits()));
    gather(&mut b, &g, c, &li, &Index::constant(0), g.height, &Index::var(0, 1), &regs);
    let name = format!("pack_strassen{}", shape_name(c, &li, &lo, &g));
    Some(b.finish(name, vec!["panel", "in"], lanes, vec![g.half_blocks]))
}

/// The products of a Strassen conv. Over row halves a task is a task row: it gathers its
/// part of the panel ([`gather`]), which then stays in L2 while every output vector of
/// the first half reads it (ResNet-50 on the JIT, 1 thread, against a gather kernel of
/// its own before the products: the sum of per-call minima 0.992x, its strided
/// 256x56x56 to 512x28x28 0.98x). With flat tiles the panel comes from [`pack`], and
/// tasks are (the one task row, output vector of the first half). Each task row reads
/// every weight sum. Arguments: `out, panel, w, b`, then `res` with a residual, then
/// `in` when the products gather.
pub fn generate(
    t: Target,
    c: &Conv,
    input: &Buffer,
    panel: &Buffer,
    out: &Buffer,
    res: Option<&Buffer>,
    w: &mut WeightAlloc,
) -> Generated {
    let (li, lo, lanes) = (input.layout, out.layout, t.lanes);
    let g = Geometry::new(t, c, &lo);
    let half_vectors = lo.cblocks() / 2;
    let half_in = c.cin / 2;
    let mut packing = ConvPacking {
        weight: c.weight.clone().into(),
        bn: c.folded_bn.clone().map(Into::into),
        cout: c.cout,
        cin: c.cin,
        kernel: 1,
        groups: 1,
        jl: lanes,
        tiles: lo.cblocks(),
        icr: c.cin,
        per_group: lo.cblocks(),
        group_stride: 0,
        tile_stride: 0,
        offset: 0,
        bias_offset: 0,
        strassen: true,
    };
    packing.offset = w.take(packing.weight_floats());
    packing.bias_offset = w.take(c.cout);
    let w_bytes = packing.weight_floats() * 4;
    assert_eq!(panel.layout.numel(), panel_layout(t, c, &lo).numel(), "the panel sized for the conv");
    // Over row halves the products gather their own task row first ([`pack`] otherwise).
    let fused = !g.shape.flat;
    let task = Index::var(0, 1);
    // Weights of at least half of L2 stream from memory: prefetched, as the direct convs'.
    let prefetch = t.prefetch && w_bytes >= t.l2_bytes / 2;
    let mut b = Builder::new(if fused { 1 } else { 2 });
    let oh0 = task.scaled(g.shape.rows as i64);
    let acc: Vec<VReg> = (0..g.shape.slots()).map(|_| b.vreg()).collect();
    let (wreg, tmp, minus_one) = (b.vreg(), b.vreg(), b.vreg());
    let unroll = channel_unroll(t, lanes);
    let per_iteration = blocks_per_iteration(t, g.half_blocks);
    // Product `i` of one tile, added into the quadrants it enters.
    let epilogue = |b: &mut Builder, i: usize, pairs: &[Pair], vector: &Index| {
        let signs = PRODUCTS[i].output;
        if signs.iter().any(|&s| s < 0) {
            b.set(minus_one, Expr::Splat((-1f32).to_bits()));
        }
        for (q, &sign) in signs.iter().enumerate().filter(|&(_, &s)| s != 0) {
            let (first, last) = quadrant_span(q);
            // Quadrant q: output half q / 2, pixel half q % 2.
            let block = vector.offset(((q / 2) * half_vectors) as i64);
            let add = |b: &mut Builder, a: VReg| b.set(tmp, signed_add(tmp, a, sign, minus_one));
            for (p, &a) in pairs.iter().zip(&acc) {
                let Some((oh, ow)) = p.pixel(q % 2) else { continue };
                let at = Addr { arg: 0, index: pixel(&lo, &block, oh, ow) };
                if i == first {
                    b.set(tmp, Expr::Src(Src::Load(Addr { arg: 3, index: block.scaled(lanes as i64) })));
                    add(b, a);
                    if let Some(rb) = res {
                        let r = Src::Load(Addr { arg: 4, index: pixel(&rb.layout, &block, oh, ow) });
                        b.set(tmp, Expr::Add(tmp, r));
                    }
                } else {
                    b.set(tmp, Expr::Src(Src::Load(at.clone())));
                    add(b, a);
                }
                if i == last && c.relu {
                    b.set(tmp, Expr::Relu(tmp));
                }
                b.push(Stmt::Store { addr: at, src: tmp });
            }
        }
    };
    let products = |b: &mut Builder, nr: usize, vector: &Index| {
        for i in 0..PRODUCTS.len() {
            g.for_tiles(b, &oh0, nr, |b, tix, pairs| {
                for &a in acc.iter().take(pairs.len()) {
                    b.set(a, Expr::Zero);
                }
                b.for_loop_unrolled(g.half_blocks, per_iteration, |b, cbk| {
                    let panel_block = g.block(&task, tix, i, &cbk);
                    b.for_loop_unrolled(lanes, unroll, |b, l| {
                        let wi = vector
                            .scaled(PRODUCTS.len() as i64)
                            .offset(i as i64)
                            .scaled(half_in as i64)
                            .plus(&cbk.scaled(lanes as i64))
                            .plus(&l)
                            .scaled(lanes as i64);
                        b.set(wreg, Expr::Src(Src::Load(Addr { arg: 2, index: wi.clone() })));
                        if prefetch {
                            b.prefetch(Addr { arg: 2, index: wi.offset(PREFETCH_FLOATS as i64) });
                        }
                        for (p, &a) in pairs.iter().zip(&acc) {
                            let x = Src::Bcast(Addr {
                                arg: 1,
                                index: panel_block.offset((p.slot * lanes) as i64).plus(&l),
                            });
                            b.set(a, Expr::Fma(a, x, Src::Reg(wreg)));
                        }
                    });
                });
                epilogue(b, i, pairs, vector);
            });
        }
        for y in g.output_rows(&oh0, nr) {
            for out_half in 0..2 {
                zero_halo_of_row(b, lanes, 0, &lo, &vector.offset((out_half * half_vectors) as i64), &y);
            }
        }
    };
    if fused {
        let gather_regs = GatherRegs::new(&mut b, 1, 4 + usize::from(res.is_some()));
        g.by_task_rows(&mut b, &task, |b, nr| {
            b.set(gather_regs.minus_one, Expr::Splat((-1f32).to_bits()));
            b.for_loop(g.half_blocks, |b, cbk| gather(b, &g, c, &li, &task, nr, &cbk, &gather_regs));
            b.for_loop(half_vectors, |b, vector| products(b, nr, &vector));
        });
    } else {
        g.by_task_rows(&mut b, &task, |b, nr| products(b, nr, &Index::var(1, 1)));
    }
    let mut name = format!("strassen{}", shape_name(c, &li, &lo, &g));
    name += super::epilogue_suffix(c);
    let mut args = vec!["out", "panel", "w", "b"];
    if res.is_some() {
        args.push("res");
    }
    if fused {
        assert_eq!(li.cb, lanes, "a channel-blocked input");
        args.push("in");
    }
    let dims = if fused { vec![g.tasks] } else { vec![g.tasks, half_vectors] };
    Generated { kernel: b.finish(name, args, lanes, dims), packing }
}
