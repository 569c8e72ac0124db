//! Direct convolution as a register-blocked micro-kernel: a tile of `P` output pixels (of
//! one row, of two, or consecutive across rows: [`TileShape`]) times `J` vectors of
//! output channels stays in registers while the reduction
//! runs over (kh, kw, input channel), each step one broadcast of an input value times one
//! weight vector per accumulator. Bias initializes the accumulators; the epilogue adds
//! the residual, applies ReLU and stores, so a fused conv makes one pass over memory
//! (except with reduction chunks, [`reduction_chunks`], whose partial sums go through
//! the output).
//!
//! Grouped convolutions read only the input channels of the groups a tile covers:
//! several whole groups per tile, or several tiles per group; anything else falls back
//! to reading every input channel against zero weights (correct, slower).

use super::simple::{pixel, zero_halo_of_row};
use super::WeightAlloc;
use crate::graph::Conv;
use crate::kir::{Addr, Builder, Cond, Expr, Index, Kernel, Src, Stmt, VReg};
use crate::plan::{Buffer, Layout};
use crate::target::Target;
use anyhow::Result;
use resnetc_runtime::pack::ConvPacking;

/// How far ahead of its loads a kernel prefetches the weights it streams from memory:
/// 4 KB, past the page the hardware prefetcher is following (measured best of 1-4 KB on
/// the Winograd products).
pub(super) const PREFETCH_FLOATS: usize = 1024;

pub struct Generated {
    pub kernel: Kernel,
    pub packing: ConvPacking,
}

/// How output-channel tiles map to input channels.
struct Tiling {
    /// Vectors of output channels per tile.
    j: usize,
    /// Input channels read per tile.
    icr: usize,
    /// Task dimensions (groups, tiles per group): tile = g * per_group + o.
    groups: usize,
    per_group: usize,
    group_stride: usize,
    tile_stride: usize,
}

/// Candidate numbers of output vectors per tile, best first.
fn j_candidates(t: Target) -> Vec<usize> {
    if t.vregs >= 32 {
        vec![4, 2, 1]
    } else {
        vec![1]
    }
}

fn tiling(t: Target, c: &Conv, cblocks_out: usize, cin_pad: usize, cb_in: usize, wide: bool) -> Tiling {
    let lanes = t.lanes;
    let (cin_g, cout_g) = (c.cin / c.groups, c.cout / c.groups);
    let dense =
        |j: usize| Tiling { j, icr: cin_pad, groups: 1, per_group: cblocks_out / j, group_stride: 0, tile_stride: 0 };
    let js: Vec<usize> = j_candidates(t).into_iter().filter(|j| cblocks_out.is_multiple_of(*j)).collect();
    if c.groups == 1 {
        return dense(if wide { WIDE_TILE.1 } else { js[0] });
    }
    for &j in &js {
        let jl = j * lanes;
        // Several whole groups per tile: the tile reads their input channels.
        if jl.is_multiple_of(cout_g) && c.cout.is_multiple_of(jl) {
            let icr = jl / cout_g * cin_g;
            if icr.is_multiple_of(cb_in) {
                return Tiling { j, icr, groups: 1, per_group: c.cout / jl, group_stride: 0, tile_stride: icr };
            }
        }
        // Several tiles per group: the tiles of group g read its channels.
        if cout_g % jl == 0 && cin_g % cb_in == 0 {
            return Tiling {
                j,
                icr: cin_g,
                groups: c.groups,
                per_group: cout_g / jl,
                group_stride: cin_g,
                tile_stride: 0,
            };
        }
    }
    dense(*js.last().unwrap())
}

/// How many input channels of a channel block one iteration of the reduction loop covers.
/// Cranelift neither unrolls nor uses the accumulator-destination FMA form (x64
/// `vfmadd231ps`): its FMA result lands in the broadcast's register, so the accumulators
/// rotate through registers and the loop's back edge moves them back, one move per
/// accumulator and iteration. With 16 registers, an iteration covers the whole channel
/// block (four channels); each channel's FMAs run across the whole tile before the next
/// channel's (Cranelift keeps the IR's order, see `cranelift::host_isa`), so one weight
/// vector is live at a time. Measured on the ResNet-50 JIT, 1 thread: two channels
/// instead of one, 382 -> 315 ms; the direct convs' whole block against two channels,
/// 0.67-0.93x the time (except expanding 1x1 convs and one strided 3x3, 1.02-1.09x); the
/// Winograd products' whole block once they ran in order, 42.4-42.6 -> 35.0-35.5 ms (with
/// two channels and the e-graph's order they had lost 16-19%). LLVM unrolls the Rust
/// backend's loops itself.
pub(super) fn channel_unroll(t: Target, cb_in: usize) -> usize {
    match cb_in {
        _ if t.vregs >= 32 => 1,
        c if c % 4 == 0 => 4,
        c if c % 2 == 0 => 2,
        _ => 1,
    }
}

/// Channel blocks per iteration of a reduction over `blocks` blocks: with 16 registers,
/// two when their number is even, so the accumulators' back-edge moves (see
/// [`channel_unroll`]) come half as often and Cranelift's register allocator keeps them
/// in registers. Measured on the ResNet-50 JIT (1 thread), against one block: direct
/// convs 176.6-177.5 ms against 183.0-185.2 (0.84-1.02x each; four blocks 182-188 ms);
/// the Winograd products, whose loops had each spilled an accumulator, 24.3 -> 22.5 ms
/// (per-layer minima; the strided ones 0.82x, F(4,3) over 28x28 0.87x).
pub(super) fn blocks_per_iteration(t: Target, blocks: usize) -> usize {
    if t.vregs < 32 && blocks.is_multiple_of(2) {
        2
    } else {
        1
    }
}

/// Accumulators per output vector of a register tile: with 16 registers, 10 for
/// four-channel steps, 12 for two. Only one weight vector is live at a time (the kernels
/// run in order), so this is a measured rule, not a count: on the ResNet-50 JIT, 7, 11,
/// 12, 13 and 14 pixels measured the same or slower than 10 for the direct convs, and the
/// Winograd products' 12 tiles with four-channel steps slower than 10.
pub(super) fn pixel_budget(t: Target, j: usize, unroll: usize) -> usize {
    let budget = if t.vregs >= 32 { 24 } else { (t.vregs - 2 - unroll).min(12) };
    (budget / j).max(1)
}

/// Independent FMA chains a kernel needs in flight to keep the FMA units busy: two
/// ports with four cycles of latency (the x86 cores measured).
pub(super) const FMA_CHAINS: usize = 8;

/// Pixels x output vectors of the wide register tile.
pub(super) const WIDE_TILE: (usize, usize) = (14, 2);

/// Whether a conv uses [`WIDE_TILE`] instead of 7 pixels x 4 vectors: with 32 registers,
/// whenever rows are multiples of 14 wide (or 7 wide: then a task takes two rows, the 14
/// pixels of its register tile) and the output channels fill pairs of vectors. Per
/// input channel, 14 x 2 loads two weight vectors and broadcasts 14 pixels for its 28
/// FMAs, where 7 x 4 loads four and broadcasts seven; on the Zen 5 the wide tile runs
/// closer to peak even with everything in L1 (a C model of the 1x1 convs over ResNet's
/// 56x56, 28x28 and 14x14 shapes: 237-258 against 222-241 GFLOP/s). ResNet-50 in Rust,
/// 1 thread, per-kernel minima: the 1x1 convs over 56x56 and 28x28 inputs 0.89-0.93x the
/// time, the stem 0.98x; the whole model 0.97x. (On the earlier Xeon and Zen 4 it was
/// taken only where a 7 x 4 tile's weights missed L1: there 1x1 convs over 512x28x28
/// measured 1.03-1.04x with it.)
fn wide_tile(t: Target, c: &Conv, width: usize, cblocks_out: usize) -> bool {
    t.vregs >= 32
        && c.groups == 1
        && (width.is_multiple_of(WIDE_TILE.0) || width * 2 == WIDE_TILE.0)
        && cblocks_out.is_multiple_of(WIDE_TILE.1)
}

/// Output pixels per register tile of `j` output vectors, for a reduction whose inner
/// step covers `unroll` input channels ([`channel_unroll`]).
pub(crate) fn tile_pixels(t: Target, j: usize, width: usize, unroll: usize) -> usize {
    let p = pixel_budget(t, j, unroll).min(width);
    if t.vregs < 32 {
        // (The Winograd products; direct convs use `row_tiles`.) No more tiles than the
        // budget needs, as even as that count allows: a narrow remainder tile has too few
        // independent FMA chains to hide the FMA latency (16 tiles: 8 + 8, not 10 + 6).
        return width.div_ceil(width.div_ceil(p));
    }
    // With 32 registers one more pixel fits (the broadcast folds into the FMA): take it when
    // it divides the row, so no narrow remainder tile is left (7, 14, 28, 56, 112 wide rows).
    if width.is_multiple_of(p + 1) && (p + 1) * j <= 28 {
        return p + 1;
    }
    p
}

/// A register tile's pixels in each of its rows, and its rows (one or two); or, `flat`,
/// tiles of `pixels` consecutive pixels of the whole image in row-major order (a tile
/// may then continue on the next row), one task covering all `rows` rows. The last
/// `short` tiles of a row (or of the image, flat) have one pixel fewer in each row;
/// otherwise the last tile may be narrower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileShape {
    pub pixels: usize,
    pub rows: usize,
    pub flat: bool,
    pub short: usize,
}

/// Consecutive register tiles of a row of the same width: `count` tiles from tile
/// `first`, `pixels` wide in each row, the first starting at column `column`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileGroup {
    pub first: usize,
    pub count: usize,
    pub pixels: usize,
    pub column: usize,
}

impl TileShape {
    /// Pixel slots of one tile's block in a panel.
    pub fn slots(&self) -> usize {
        if self.flat {
            self.pixels
        } else {
            self.pixels * self.rows
        }
    }

    /// Register tiles per task row of a `width` x `height` output.
    pub fn tiles(&self, width: usize, height: usize) -> usize {
        let row = if self.flat { width * height } else { width };
        (row + self.short).div_ceil(self.pixels)
    }

    /// The tiles of a row `width` pixels wide (flat: the whole image's pixels), left to
    /// right: the full ones, the short ones, and a narrower last one if any. `width` is
    /// the one the shape was chosen for.
    pub fn groups(&self, width: usize) -> Vec<TileGroup> {
        let p = self.pixels;
        let long = width - self.short * (p - 1);
        let (full, rem) = (long / p, long % p);
        assert!(self.short == 0 || rem == 0, "short tiles leave no narrower tile");
        let groups = [
            TileGroup { first: 0, count: full, pixels: p, column: 0 },
            TileGroup { first: full, count: self.short, pixels: p - 1, column: full * p },
            TileGroup {
                first: full + self.short,
                count: usize::from(rem > 0),
                pixels: rem,
                column: full * p + self.short * (p - 1),
            },
        ];
        groups.into_iter().filter(|g| g.count > 0).collect()
    }
}

/// Outputs of at most this many pixels may take flat tiles ([`TileShape`]); a flat
/// tile's pixels are constants in the generated code, every tile written out.
const FLAT_PIXELS: usize = 64;

/// The register tiles of `budget` accumulators that cover an output of `height` rows of
/// `width` pixels in the fewest modeled cycles (16 registers, one output vector per
/// tile). A tile of `q` accumulators costs `max(q, 8)`: each is one FMA chain, and two
/// FMA ports with four cycles of latency need eight chains in flight, so a narrow tile
/// costs as much as eight pixels. Tiles span one row, or two when that is cheaper per
/// row pair (a 14-wide row: three tiles of 2 x 5, 5 and 4 pixels, 28 against 7 + 7 in each
/// row, 32). Ties go to one row, then to fewer tiles, then to the more even split.
/// Measured on the ResNet-50 JIT (1 thread): 112-wide rows take 8 pixels instead of 11
/// tiles of 10 and one of 2, the stem 7.94 -> 6.63 ms; 56-wide rows 8 instead of 5 x 10 + 6,
/// the same. Small outputs take flat tiles when those cost less: 7x7 as 10, 10, 10, 10, 9
/// pixels (49) instead of 7 rows of 7 (56).
///
/// Convs that read a panel take [`even_tiles_2d`] instead (costs measured on their loop).
fn row_tiles(budget: usize, width: usize, height: usize, panel: bool) -> TileShape {
    let choose = if panel { even_tiles_2d } else { row_tiles_2d };
    let (tile, pair_cost) = choose(budget, width, height);
    if width * height <= FLAT_PIXELS {
        let (flat, flat_cost) = choose(budget, width * height, 1);
        // Costs per row pair: the flat "row" is the whole image, which is `height / 2`
        // pairs of the two-dimensional tiling.
        if flat_cost < pair_cost * height {
            return TileShape { rows: height, flat: true, ..flat };
        }
    }
    tile
}

/// Time of a register tile of `q` accumulators (one output vector, 16 registers, one
/// broadcast and one FMA per accumulator and input channel) over a long reduction from
/// a panel, in tenths of one pixel's time at the FMA peak; index `q`. Measured on the
/// Zen 5 with an assembly loop of the JIT's shape over 512 input channels in L1 and L2:
/// a tile of at most 8 accumulators waits on the FMA latency (4 cycles per input
/// channel), and even 8 run at 84% of the peak (58 GFLOP/s of 69), 10 at 89%, 12 at 91%.
const PANEL_TILE_COST: [usize; 13] = [0, 72, 77, 79, 80, 84, 89, 93, 95, 102, 112, 122, 132];

/// [`row_tiles_2d`] for convs that read a panel, costed by [`PANEL_TILE_COST`], over
/// even splits only: `n` tiles of a row as wide as each other or one pixel narrower
/// (56-wide rows: 10, 10, 9, 9, 9, 9 against 7 tiles of 8, 632 against 665; 28-wide
/// rows 10, 9, 9 against 10, 10, 8). Ties go to one row, then to fewer tiles.
pub(super) fn even_tiles_2d(budget: usize, width: usize, height: usize) -> (TileShape, usize) {
    let max_rows = if height >= 2 { 2 } else { 1 };
    (1..=max_rows)
        .filter(|&rows| budget >= rows)
        .flat_map(|rows| (width.div_ceil(budget / rows)..=width).map(move |n| (rows, n)))
        .map(|(rows, n)| {
            let pixels = width.div_ceil(n);
            let short = n * pixels - width;
            let cost = |q: usize| if q == 0 { 0 } else { PANEL_TILE_COST[q * rows] };
            let pair = ((n - short) * cost(pixels) + short * cost(pixels - 1)) * 2 / rows;
            ((pair, rows, n), TileShape { pixels, rows, flat: false, short })
        })
        .min_by_key(|&(key, _)| key)
        .map(|((pair, _, _), shape)| (shape, pair))
        .expect("a row has at least one pixel")
}

/// The cheapest one- or two-row tiles ([`row_tiles`]), with their cost per row pair.
fn row_tiles_2d(budget: usize, width: usize, height: usize) -> (TileShape, usize) {
    let chains = |q: usize| q.max(FMA_CHAINS);
    // (cost of a row pair, tiles, the smallest tile reversed) for `p` pixels in `rows` rows.
    let key = |p: usize, rows: usize| {
        let (full, rem) = (width / p, width % p);
        let cost = (full * chains(p * rows) + if rem > 0 { chains(rem * rows) } else { 0 }) * 2 / rows;
        (cost, rows, width.div_ceil(p), std::cmp::Reverse(if rem > 0 { rem } else { p }))
    };
    let row_choices = if height >= 2 { 1..=2 } else { 1..=1 };
    row_choices
        .flat_map(|rows| (1..=(budget / rows).min(width)).map(move |p| (p, rows)))
        .min_by_key(|&(p, rows)| key(p, rows))
        .map(|(pixels, rows)| (TileShape { pixels, rows, flat: false, short: 0 }, key(pixels, rows).0))
        .expect("a row has at least one pixel")
}

/// Gathers a conv's input into its panel ([`crate::plan::panel_layout`]): for each task
/// row of the conv (a task here) and register tile, the input pixels the tile reads at
/// each tap and input channel block, one after another, as the conv's reduction reads
/// them. Flat tiles: [`pack_flat_panel`].
pub fn pack_panel(t: Target, c: &Conv, input: &Buffer, panel: &Buffer, out: &Buffer) -> Kernel {
    let (li, lp, lanes) = (input.layout, panel.layout, t.lanes);
    let out = out.layout;
    let shape = panel_tile(t, c, &li, &out).expect("a conv that reads a panel");
    let TileShape { pixels: p, rows, flat, .. } = shape;
    assert_eq!(lp.w, shape.tiles(out.w, out.h) * shape.slots(), "panel sized for the conv's register tiles");
    let geometry = Panel { tiles: shape.tiles(out.w, out.h), k: c.kernel, cblocks: li.cblocks() };
    if flat {
        return pack_flat_panel(t, c, &li, &geometry, &shape, &out);
    }
    let (cblocks, k) = (li.cblocks(), c.kernel);
    let mut b = Builder::new(1);
    let task = Index::var(0, 1);
    let oh0 = task.scaled(rows as i64);
    let v = b.vreg();
    // Tiles innermost: each channel block's rows are read from start to end once.
    let copy_rows = |b: &mut Builder, nr: usize| {
        b.for_loop(k, |b, kh| {
            b.for_loop(k, |b, kw| {
                b.for_loop(cblocks, |b, cbk| {
                    for_row_tiles(b, &shape, out.w, |b, tix, column, n| {
                        let dst = geometry.block(&task, tix, &kh, &kw, &cbk).scaled((shape.slots() * lanes) as i64);
                        let pixels = row_tile_pixels(&oh0, column, p, n, nr);
                        gather(b, v, c, &li, lanes, &dst, &pixels, [&kh, &kw], &cbk);
                    });
                });
            });
        });
    };
    // With an odd height, the last task has one row (as the conv's).
    let (tasks, full_tasks) = (out.h.div_ceil(rows), out.h / rows);
    if tasks == full_tasks {
        copy_rows(&mut b, rows);
    } else {
        b.when(Cond::lt(task.clone(), full_tasks as i64), |b| copy_rows(b, rows));
        b.when(Cond::eq(task.clone(), full_tasks as i64), |b| copy_rows(b, out.h % rows));
    }
    b.finish(pack_name(c, &li, &out, &shape), vec!["panel", "in"], lanes, vec![tasks])
}

/// A pack kernel's name: the conv, then its tiles (`_p5x2r_short1`: 5 pixels in each of
/// two rows, one tile per row of one pixel fewer; `_p10flat`: flat tiles of 10 pixels).
fn pack_name(c: &Conv, li: &Layout, out: &Layout, shape: &TileShape) -> String {
    let (k, s) = (c.kernel, c.stride);
    let mut name = format!("pack_panel{k}x{k}s{s}_{}x{}x{}_to{}x{}_p{}", li.c, li.h, li.w, out.h, out.w, shape.pixels);
    if shape.flat {
        name += "flat";
    } else if shape.rows > 1 {
        name += &format!("x{}r", shape.rows);
    }
    if shape.short > 0 {
        name += &format!("_short{}", shape.short);
    }
    name
}

/// Runs `f(b, tile, column, pixels)` for every register tile of a `width`-wide task row:
/// its tile index, its first column and its pixels per row; a loop over each group of
/// equal tiles ([`TileShape::groups`]), constants for a group of one.
pub(super) fn for_row_tiles(
    b: &mut Builder,
    shape: &TileShape,
    width: usize,
    mut f: impl FnMut(&mut Builder, &Index, &Index, usize),
) {
    for g in shape.groups(width) {
        if g.count == 1 {
            f(b, &Index::constant(g.first as i64), &Index::constant(g.column as i64), g.pixels);
        } else {
            b.for_loop(g.count, |b, i| {
                let column = i.scaled(g.pixels as i64).offset(g.column as i64);
                f(b, &i.offset(g.first as i64), &column, g.pixels)
            });
        }
    }
}

/// [`pack_panel`] for flat tiles: one task per input channel block, every pixel's place a
/// constant.
fn pack_flat_panel(t: Target, c: &Conv, li: &Layout, geometry: &Panel, shape: &TileShape, out: &Layout) -> Kernel {
    let p = shape.pixels;
    let (lanes, k) = (t.lanes, c.kernel);
    let mut b = Builder::new(1);
    let cbk = Index::var(0, 1);
    let v = b.vreg();
    let zero = Index::constant(0);
    b.for_loop(k, |b, kh| {
        b.for_loop(k, |b, kw| {
            for (tix, pixels) in flat_tiles(out.w, out.h, shape).iter().enumerate() {
                let dst =
                    geometry.block(&zero, &Index::constant(tix as i64), &kh, &kw, &cbk).scaled((p * lanes) as i64);
                gather(b, v, c, li, lanes, &dst, pixels, [&kh, &kw], &cbk);
            }
        });
    });
    b.finish(pack_name(c, li, out, shape), vec!["panel", "in"], lanes, vec![li.cblocks()])
}

/// The shape of a conv's panel: tiles per task row, kernel size and input channel
/// blocks, the strides of `[task row][tile][tap][channel block]`.
struct Panel {
    tiles: usize,
    k: usize,
    cblocks: usize,
}

impl Panel {
    /// The block holding tile `tix` of task row `task` at tap (`kh`, `kw`) and input
    /// channel block `cbk`, in units of one block (`rows * pixels * lanes` floats).
    fn block(&self, task: &Index, tix: &Index, kh: &Index, kw: &Index, cbk: &Index) -> Index {
        let tap = kh.scaled(self.k as i64).plus(kw);
        let tile = task.scaled(self.tiles as i64).plus(tix);
        tile.scaled((self.k * self.k) as i64).plus(&tap).scaled(self.cblocks as i64).plus(cbk)
    }
}

/// The output pixels of one register tile, each (row, column) with its slot in the tile's
/// panel block: `n` pixels from column `ow0` in each of `nr` rows from `oh0`, `p_max`
/// slots per row.
pub(super) fn row_tile_pixels(
    oh0: &Index,
    ow0: &Index,
    p_max: usize,
    n: usize,
    nr: usize,
) -> Vec<(Index, Index, usize)> {
    (0..nr)
        .flat_map(|r| (0..n).map(move |pp| (r, pp)))
        .map(|(r, pp)| (oh0.offset(r as i64), ow0.offset(pp as i64), r * p_max + pp))
        .collect()
}

/// The flat tiles of a `width` x `height` output, consecutive pixels each
/// ([`TileShape::groups`] of the whole image): every tile's pixels as constant (row,
/// column), with their slots.
fn flat_tiles(width: usize, height: usize, shape: &TileShape) -> Vec<Vec<(Index, Index, usize)>> {
    let c = |v: usize| Index::constant(v as i64);
    let starts = shape
        .groups(width * height)
        .into_iter()
        .flat_map(|g| (0..g.count).map(move |i| (g.column + i * g.pixels, g.pixels)));
    starts.map(|(q0, n)| (q0..q0 + n).map(|q| (c(q / width), c(q % width), q - q0)).collect()).collect()
}

/// Copies into the panel block at `dst` (floats) the input pixels that output `pixels`
/// (row, column, slot) read at tap `kh, kw` of channel block `cbk`.
#[allow(clippy::too_many_arguments)]
fn gather(
    b: &mut Builder,
    v: VReg,
    c: &Conv,
    li: &Layout,
    lanes: usize,
    dst: &Index,
    pixels: &[(Index, Index, usize)],
    [kh, kw]: [&Index; 2],
    cbk: &Index,
) {
    let (s, start) = (c.stride as i64, -(c.pad as i64)); // `pixel` adds the halo
    for (oh, ow, slot) in pixels {
        let (y, x) = (oh.scaled(s).plus(kh).offset(start), ow.scaled(s).plus(kw).offset(start));
        b.set(v, Expr::Src(Src::Load(Addr { arg: 1, index: pixel(li, cbk, &y, &x) })));
        b.push(Stmt::Store { addr: Addr { arg: 0, index: dst.offset((slot * lanes) as i64) }, src: v });
    }
}

/// How a direct conv blocks its output into register tiles.
struct RegisterTile {
    tiling: Tiling,
    /// Output rows per task row (two when a tile spans two short rows, all with flat
    /// tiles), and pixels of a register tile in each of its rows (or in all, flat).
    shape: TileShape,
}

fn register_tile(t: Target, c: &Conv, li: &Layout, lo: &Layout) -> RegisterTile {
    let wide = wide_tile(t, c, lo.w, lo.cblocks());
    let tiling = tiling(t, c, lo.cblocks(), li.cpad(), li.cb, wide);
    let shape = if wide {
        let rows = if lo.w * 2 == WIDE_TILE.0 { 2 } else { 1 };
        TileShape { pixels: WIDE_TILE.0 / rows, rows, flat: false, short: 0 }
    } else if t.vregs >= 32 {
        let pixels = tile_pixels(t, tiling.j, lo.w, channel_unroll(t, li.cb));
        TileShape { pixels, rows: 1, flat: false, short: 0 }
    } else {
        row_tiles(pixel_budget(t, tiling.j, channel_unroll(t, li.cb)), lo.w, lo.h, reads_panel(t, c, li))
    };
    RegisterTile { tiling, shape }
}

/// The register tile shape of a conv that reads its input from a panel
/// ([`crate::plan::panel_layout`]), or `None` if it reads its input in place.
///
/// A panel pays when the reduction's reads are scattered: a 1x1 conv whose input does not
/// fit in L1 (each channel block of a register tile's pixels is a few lines of another
/// plane, at least a plane apart), or reads every other pixel (stride 2). Measured on the
/// ResNet-50 JIT (1 thread, pack included): 1x1 convs on 1024x14x14 0.82x the time,
/// 512x28x28 0.86x, stride 2 0.76-0.93x (12-pixel tiles of two-channel steps); on
/// 256x56x56 0.74x (10-pixel tiles of four-channel steps). Once the kernels ran in order
/// (`cranelift::host_isa`), also on the inputs that had not paid before (planes under
/// 2 KB or rows under 32 KB): 2048x7x7 0.85x, 128x28x28 0.89x, 64x56x56 0.94x, 256x14x14
/// 0.99x, 512x7x7 1.00x (kept for a simple rule: ResNet-50's arena did not grow).
/// Strided k x k convs read a panel too (ResNet-50's three 3x3 stride-2 convs 0.72-0.90x
/// the time, pack included): each tap of a channel block reads every other pixel of its
/// lines, and a new plane per channel block.
pub fn panel_tile(t: Target, c: &Conv, li: &Layout, lo: &Layout) -> Option<TileShape> {
    reads_panel(t, c, li).then(|| register_tile(t, c, li, lo).shape)
}

/// Whether a conv reads its input from a panel ([`panel_tile`]).
fn reads_panel(t: Target, c: &Conv, li: &Layout) -> bool {
    let possible = t.panels && c.groups == 1 && li.cb == t.lanes && li.halo >= c.pad;
    let scattered = if c.kernel == 1 { c.pad == 0 && (c.stride > 1 || li.bytes() > t.l1_bytes) } else { c.stride > 1 };
    possible && scattered
}

/// Weight bytes of one output-channel tile's reduction chunk (see [`reduction_chunks`]):
/// 128 input channels of two output vectors.
const CHUNK_WEIGHT_BYTES: usize = 16 << 10;

/// Into how many chunks of input channels a conv's reduction is split (1: none). A
/// conv's tasks are (output-channel tile, task row), so every task re-reads its tile's
/// weights; when a long reduction's weights miss L1 by far (at least 1024 input channels,
/// 128 KB) and a tile has many task rows, a task instead covers every row of its tile,
/// chunk by chunk: a chunk's weights ([`CHUNK_WEIGHT_BYTES`]) stay in L1 across the rows,
/// and the partial sums go through the output (stored, and loaded by the next chunk).
/// Measured in Rust on ResNet-50, 1 thread, against the unchunked kernels (on the Xeon):
/// the 1x1 convs over 1024x14x14 0.90x (to 256 channels) and 0.91x (to 512) the time; the
/// one to 256 channels (1 MB of weights, which stay in L2) has since taken rows outside
/// tiles instead, for thread locality, neutral at 1 thread on the EPYC. Not where it did
/// not pay: 512x28x28 to 128 and to 256 (128 and 64 KB per tile) 0.96-1.03x with chunks
/// of 64 or 128 channels, 2048x7x7 to 512 (four task rows) 1.05-1.07x, strided 1x1 convs
/// 1.06-1.30x (their reads are scattered). Only stride-1 1x1 convs without a residual (a
/// residual conv's output may overwrite its residual in place before the last chunk would
/// add it), reading their input in place (a panel is per task row), with tiles outside
/// rows, only with 32 registers (measured there). The tasks are then the output-channel
/// tiles alone: 16 for ResNet-50's (1024x14x14 to 512), enough for the two cores
/// measured; many more threads would want blocks of rows as tasks too.
fn reduction_chunks(t: Target, c: &Conv, tl: &Tiling, cb_in: usize, row_tasks: usize, in_place: bool) -> usize {
    let jl = tl.j * t.lanes;
    // Input channels per chunk: the tile's weights of a chunk fill CHUNK_WEIGHT_BYTES.
    let per_chunk = (CHUNK_WEIGHT_BYTES / (4 * jl)) / cb_in * cb_in;
    let chunked = in_place
        && t.vregs >= 32
        && c.kernel == 1
        && c.stride == 1
        && c.groups == 1
        && !c.residual
        && row_tasks >= 8
        && tl.icr >= 1024
        && tl.icr * jl * 4 >= 4 * t.l1_tile_weight_bytes
        && per_chunk > 0
        && tl.icr.is_multiple_of(per_chunk);
    if chunked {
        tl.icr / per_chunk
    } else {
        1
    }
}

/// `panel`: the conv's input panel, when it reads one instead of `input` (on targets
/// with [`Target::panels`], see [`panel_tile`]).
pub fn generate(
    t: Target,
    c: &Conv,
    input: &Buffer,
    panel: Option<&Buffer>,
    out: &Buffer,
    res: Option<&Buffer>,
    w: &mut WeightAlloc,
) -> Result<Generated> {
    let lanes = t.lanes;
    let (li, lo) = (input.layout, out.layout);
    let cb_in = li.cb;
    let RegisterTile { tiling: tl, shape } = register_tile(t, c, &li, &lo);
    let TileShape { rows, pixels: p_max, flat, .. } = shape;
    let (j, jl, k) = (tl.j, tl.j * lanes, c.kernel);
    let tiles = tl.groups * tl.per_group;
    let packing = ConvPacking {
        weight: c.weight.clone().into(),
        bn: c.folded_bn.clone().map(Into::into),
        cout: c.cout,
        cin: c.cin,
        kernel: k,
        groups: c.groups,
        jl,
        tiles,
        icr: tl.icr,
        per_group: tl.per_group,
        group_stride: tl.group_stride,
        tile_stride: tl.tile_stride,
        offset: w.take(tiles * k * k * tl.icr * jl),
        bias_offset: w.take(tiles * jl),
        strassen: false,
    };
    // Arguments: 0 out, 1 in, 2 weights, 3 bias, 4 residual.
    // Tasks are (output-channel tile, task row), or whole tiles with reduction chunks.
    // Task order: output-channel tiles outside rows re-reads the input once per tile;
    // rows outside tiles re-reads the weights once per task row. Take the smaller traffic,
    // except for a residual conv whose input and weights both stay in L2 (so neither
    // re-read leaves it) and whose rows are long: tiles outside, each task then continues
    // the same output and residual channel planes, two sequential streams the hardware
    // prefetchers follow, instead of a new plane per task (Cranelift, ResNet-50's
    // expanding convs on 56x56 and 28x28: 0.90x the time; on 14-wide rows 1.04x). Only
    // measured with 16 registers. The traffic estimate counts the input, not a panel the
    // conv may read instead (larger for strided k x k convs).
    let row_tasks = lo.h.div_ceil(rows);
    let w_bytes = tiles * k * k * tl.icr * jl * 4;
    let cached = |bytes: usize| t.stays_in_l2(bytes);
    let streams = t.vregs < 32 && c.residual && cached(li.bytes()) && cached(w_bytes) && lo.w * lanes * 4 >= 448;
    // Also tiles outside when the weights do not stay in L2 and the input does: the
    // input's re-reads then come from L2, where rows outside would stream every weight
    // from memory again for each row. ResNet-50, 1 thread: on the JIT the 7x7-output convs
    // 0.81-0.93x the time (the strided 3x3 over 512x14x14 8.89 -> 7.22 ms); in Rust the
    // strided 1x1 over 1024x14x14 (8 MB of weights) 2.79 -> 2.12 ms.
    let weights_stream = !cached(w_bytes) && cached(li.bytes());
    // Rows outside as well whenever the weights stay in L2: their re-reads then come from
    // L2, and a thread's share of the tasks (contiguous, `Pool::split`) is a block of
    // rows, the block its share of the call before and after also covers, so the
    // activations stay in one core's cache from call to call. ResNet-50 at 2 threads
    // (both cores busy): 0.92x the time where the two vCPUs' caches were far apart (data
    // another core wrote read 4x slower than one's own); 1 thread: neutral (per-kernel
    // minima 56.85 against 57.01 ms, including the 1024x14x14 to 256 convs, which so lose
    // their reduction chunks).
    let traffic = li.bytes() + row_tasks * w_bytes < w_bytes + tiles * li.bytes();
    let rows_outer = !streams && !weights_stream && (cached(w_bytes) || traffic);
    let mut b = Builder::new(3);
    // Tasks whose rows all exist; with an odd height the last task has one row.
    let full_row_tasks = lo.h / rows;
    let (vg, vo, task_row) = if rows_outer {
        (Index::var(1, 1), Index::var(2, 1), Index::var(0, 1))
    } else {
        (Index::var(0, 1), Index::var(1, 1), Index::var(2, 1))
    };
    let tile = vg.scaled(tl.per_group as i64).plus(&vo);
    let ic_start = vg.scaled(tl.group_stride as i64).plus(&vo.scaled(tl.tile_stride as i64));
    let s = c.stride as i64;
    let shift = (li.halo - c.pad) as i64; // padded input coordinate of output pixel 0, tap 0
    let (hpi, wpi, cbi) = (li.hp() as i64, li.wp() as i64, cb_in as i64);
    let ow_total = lo.w;
    let oh0 = task_row.scaled(rows as i64);
    let unroll = channel_unroll(t, cb_in);
    // Input channel blocks a tile reduces over.
    let in_blocks = tl.icr / cb_in;
    // Channel blocks per iteration ([`blocks_per_iteration`]). With 16 registers, inputs
    // of one channel per block (the stem's image, up to four channels) take every block
    // of a tap, once per tap instead of once per channel (ResNet-50's stem on the JIT:
    // 10.7 -> 8.7 ms).
    let block_unroll =
        if t.vregs < 32 && cb_in == 1 && tl.icr <= 4 { tl.icr } else { blocks_per_iteration(t, in_blocks) };
    // Weights of at least a whole core's L2 (half `l2_bytes`: 1 MB on the machines
    // measured) stream from memory on a task's first pass: prefetch them ahead (ResNet-50:
    // 0.85-0.96x the time of the convs of 2 MB or more; on the Zen 5 its 1 MB 1x1 convs
    // over 14x14 0.95-0.96x, the whole model 0.98x at 1 and 2 threads). Smaller ones are
    // cache hits, where the extra instruction only costs (1.01-1.09x; the 256 KB 1x1
    // convs over 28x28 on the Zen 5: 1.00x).
    let prefetch = t.prefetch && w_bytes >= t.l2_bytes / 2;
    let kchunks = reduction_chunks(t, c, &tl, cb_in, row_tasks, !rows_outer && !flat && panel.is_none());
    assert!(
        in_blocks % kchunks == 0 && (kchunks == 1 || res.is_none()),
        "reduction chunks of whole blocks, no residual"
    );
    let chunk_blocks = in_blocks / kchunks;
    let out_block = |jj: usize| tile.scaled(j as i64).offset(jj as i64);
    let acc: Vec<Vec<VReg>> = (0..shape.slots()).map(|_| (0..j).map(|_| b.vreg()).collect()).collect();
    let wreg: Vec<VReg> = (0..j).map(|_| b.vreg()).collect();
    // With a panel: its task row, tile `tix` ([`crate::plan::panel_layout`]).
    let panel_geometry = panel.map(|pb| {
        assert!(c.groups == 1, "only ungrouped convs read a panel");
        assert_eq!(pb.layout.w, shape.tiles(lo.w, lo.h) * shape.slots(), "panel sized for the register tiles");
        Panel { tiles: shape.tiles(lo.w, lo.h), k, cblocks: li.cblocks() }
    });
    // Where the residual of output vector `jj` of the tile lies at pixel (oh, ow): read by
    // the epilogue, prefetched before the reduction.
    let residual_at = |rb: &Buffer, jj: usize, oh: &Index, ow: &Index| Addr {
        arg: 4,
        index: pixel(&rb.layout, &out_block(jj), oh, ow),
    };
    // One register tile (the `tix`-th of its task row): output pixel (row, column) of
    // each accumulator, and its slot in the tile's panel block.
    let emit_tile = |b: &mut Builder, tix: &Index, pixels: &[(Index, Index, usize)], chunk: &Index| {
        // Accumulators start at the bias, or with reduction chunks after the first at the
        // partial sums stored in the output.
        let init = |b: &mut Builder| {
            for jj in 0..j {
                let bias = Src::Load(Addr { arg: 3, index: tile.scaled(jl as i64).offset((jj * lanes) as i64) });
                for a in acc.iter().take(pixels.len()) {
                    b.set(a[jj], Expr::Src(bias.clone()));
                }
            }
        };
        if kchunks == 1 {
            init(b);
            // The residual's lines, on their way while the reduction runs
            // ([`Target::prefetch_residual`]).
            if let (Some(rb), true) = (res, t.prefetch && t.prefetch_residual) {
                for (oh, ow, _) in pixels {
                    for jj in 0..j {
                        b.prefetch(residual_at(rb, jj, oh, ow));
                    }
                }
            }
        } else {
            b.when(Cond::eq(chunk.clone(), 0), init);
            // chunk > 0, as -chunk < 0
            b.when(Cond::lt(chunk.scaled(-1), 0), |b| {
                for ((oh, ow, _), a) in pixels.iter().zip(&acc) {
                    for (jj, &r) in a.iter().enumerate() {
                        b.set(r, Expr::Src(Src::Load(Addr { arg: 0, index: pixel(&lo, &out_block(jj), oh, ow) })));
                    }
                }
            });
        }
        b.for_loop(k, |b, kh| {
            b.for_loop(k, |b, kw| {
                b.for_loop_unrolled(chunk_blocks, block_unroll, |b, icb| {
                    let icb = chunk.scaled(chunk_blocks as i64).plus(&icb);
                    b.for_loop_unrolled(cb_in, unroll, |b, icl| {
                        let icb_abs = ic_start.plus(&icb.scaled(cbi)); // channel of (icb, lane 0)
                        let tap_row = icb_abs.scaled(hpi).plus(&kh.scaled(cbi)).offset(shift * cbi);
                        // ((ic_block * hp + ih) * wp + iw) * cb + icl, with ic_block * cb = icb_abs.
                        let wk = tile
                            .scaled((k * k * tl.icr * jl) as i64)
                            .plus(&kh.scaled((k * tl.icr * jl) as i64))
                            .plus(&kw.scaled((tl.icr * jl) as i64))
                            .plus(&icb.scaled(cbi * jl as i64))
                            .plus(&icl.scaled(jl as i64));
                        for (jj, &wr) in wreg.iter().enumerate() {
                            let w = Src::Load(Addr { arg: 2, index: wk.offset((jj * lanes) as i64) });
                            b.set(wr, Expr::Src(w));
                            if prefetch {
                                let ahead = wk.offset((jj * lanes + PREFETCH_FLOATS) as i64);
                                b.prefetch(Addr { arg: 2, index: ahead });
                            }
                        }
                        for ((oh, ow, slot), a) in pixels.iter().zip(&acc) {
                            let x = match &panel_geometry {
                                Some(g) => g
                                    .block(&task_row, tix, &kh, &kw, &icb)
                                    .scaled((shape.slots() * lanes) as i64)
                                    .offset((slot * lanes) as i64)
                                    .plus(&icl),
                                None => {
                                    let iw = ow.scaled(s).plus(&kw).offset(shift);
                                    let row = tap_row.plus(&oh.scaled(s * cbi));
                                    row.scaled(wpi).plus(&iw.scaled(cbi)).plus(&icl)
                                }
                            };
                            for jj in 0..j {
                                let x = Src::Bcast(Addr { arg: 1, index: x.clone() });
                                b.set(a[jj], Expr::Fma(a[jj], x, Src::Reg(wreg[jj])));
                            }
                        }
                    });
                });
            });
        });
        // The epilogue after the last chunk; partial sums are stored as they are.
        let finish = |b: &mut Builder, last: bool| {
            for ((oh, ow, _), a) in pixels.iter().zip(&acc) {
                for (jj, &r) in a.iter().enumerate() {
                    if let (true, Some(rb)) = (last, res) {
                        b.set(r, Expr::Add(r, Src::Load(residual_at(rb, jj, oh, ow))));
                    }
                    if c.relu && last {
                        b.set(r, Expr::Relu(r));
                    }
                    b.push(Stmt::Store { addr: Addr { arg: 0, index: pixel(&lo, &out_block(jj), oh, ow) }, src: r });
                }
            }
        };
        if kchunks == 1 || !c.relu {
            // (No residual with chunks: without ReLU every chunk stores the same way.)
            finish(b, true);
        } else {
            b.when(Cond::eq(chunk.clone(), kchunks as i64 - 1), |b| finish(b, true));
            b.when(Cond::lt(chunk.clone(), kchunks as i64 - 1), |b| finish(b, false));
        }
    };
    // Rows `first_row ..+ nr` (a task row) at reduction chunk `chunk`: register tiles along
    // the rows (flat tiles: every tile of the image, each pixel's row and column a
    // constant), then the rows' zero halo, after the last chunk.
    let emit_rows = |b: &mut Builder, nr: usize, first_row: &Index, chunk: &Index| {
        if flat {
            for (tix, pixels) in flat_tiles(ow_total, lo.h, &shape).iter().enumerate() {
                emit_tile(b, &Index::constant(tix as i64), pixels, chunk);
            }
        } else {
            for_row_tiles(b, &shape, ow_total, |b, tix, column, n| {
                emit_tile(b, tix, &row_tile_pixels(first_row, column, p_max, n, nr), chunk)
            });
        }
        let halo = |b: &mut Builder| {
            for r in 0..nr {
                for jj in 0..j {
                    zero_halo_of_row(b, lanes, 0, &lo, &out_block(jj), &first_row.offset(r as i64));
                }
            }
        };
        if kchunks == 1 {
            halo(b);
        } else {
            b.when(Cond::eq(chunk.clone(), kchunks as i64 - 1), halo);
        }
    };
    if kchunks > 1 {
        // One task per output-channel tile: chunk by chunk, every row.
        b.for_loop(kchunks, |b, chunk| {
            b.for_loop(full_row_tasks, |b, r| emit_rows(b, rows, &r.scaled(rows as i64), &chunk));
            if full_row_tasks < row_tasks {
                emit_rows(b, lo.h % rows, &Index::constant((full_row_tasks * rows) as i64), &chunk);
            }
        });
    } else if full_row_tasks == row_tasks {
        emit_rows(&mut b, rows, &oh0, &Index::constant(0));
    } else {
        b.when(Cond::lt(task_row.clone(), full_row_tasks as i64), |b| emit_rows(b, rows, &oh0, &Index::constant(0)));
        b.when(Cond::eq(task_row.clone(), full_row_tasks as i64), |b| {
            emit_rows(b, lo.h % rows, &oh0, &Index::constant(0))
        });
    }
    let mut name = format!("conv{k}x{k}s{}_{}x{}x{}_to{}x{}x{}", c.stride, li.c, li.h, li.w, lo.c, lo.h, lo.w);
    if c.groups > 1 {
        name += &format!("_g{}", c.groups);
    }
    name += super::epilogue_suffix(c);
    if flat {
        name += "_flat";
    }
    if kchunks > 1 {
        name += &format!("_kc{kchunks}");
    }
    let mut args = vec!["out", "in", "w", "b"];
    if res.is_some() {
        args.push("res");
    }
    // (With reduction chunks a task covers every row: its row coordinate is always 0.)
    let dims = if rows_outer {
        vec![row_tasks, tl.groups, tl.per_group]
    } else {
        vec![tl.groups, tl.per_group, if kchunks > 1 { 1 } else { row_tasks }]
    };
    let kernel = b.finish(name, args, lanes, dims);
    Ok(Generated { kernel, packing })
}

#[cfg(test)]
mod tests {
    use super::{row_tiles, TileGroup, TileShape};

    #[test]
    fn row_tiles_avoid_narrow_tiles() {
        // (budget, width, height) -> (pixels, rows, flat)
        let cases = [
            ((10, 112, 112), (8, 1, false)),
            ((10, 56, 56), (8, 1, false)),
            ((10, 28, 28), (10, 1, false)),
            ((10, 14, 14), (5, 2, false)),
            ((10, 14, 1), (7, 1, false)),
            ((10, 8, 8), (8, 1, false)),
            ((10, 7, 7), (10, 7, true)),
            ((10, 3, 3), (9, 3, true)),
        ];
        for ((budget, w, h), (pixels, rows, flat)) in cases {
            let want = TileShape { pixels, rows, flat, short: 0 };
            assert_eq!(row_tiles(budget, w, h, false), want, "{w}x{h} output, {budget} accumulators");
        }
    }

    /// Convs reading a panel split rows evenly, tiles at most one pixel apart, and cover
    /// every pixel once.
    #[test]
    fn panel_tiles_split_rows_evenly() {
        // (width, height) -> (pixels, rows, flat, short) with 10 accumulators
        let cases = [
            ((56, 56), (10, 1, false, 4)),
            ((28, 28), (10, 1, false, 2)),
            ((14, 14), (5, 2, false, 1)),
            ((7, 7), (10, 7, true, 1)),
            ((112, 112), (5, 2, false, 3)),
        ];
        for ((w, h), (pixels, rows, flat, short)) in cases {
            let shape = row_tiles(10, w, h, true);
            assert_eq!(shape, TileShape { pixels, rows, flat, short }, "{w}x{h} output");
            let row = if flat { w * h } else { w };
            let groups = shape.groups(row);
            let mut next = TileGroup { first: 0, count: 0, pixels: 0, column: 0 };
            for g in &groups {
                assert_eq!((g.first, g.column), (next.first + next.count, next.column + next.count * next.pixels));
                assert!(g.pixels == pixels || g.pixels + 1 == pixels, "{g:?}");
                next = *g;
            }
            assert_eq!(next.column + next.count * next.pixels, row, "{w}x{h}: {groups:?}");
            assert_eq!(next.first + next.count, shape.tiles(w, h));
        }
    }
}
