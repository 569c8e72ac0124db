//! Direct convolution as a register-blocked micro-kernel: a tile of `P` output pixels of
//! one row times `J` vectors of output channels stays in registers while the reduction
//! runs over (kh, kw, input channel), each step one broadcast of an input value times one
//! weight vector per accumulator. Bias initializes the accumulators; the epilogue adds
//! the residual, applies ReLU and stores, so a fused conv makes one pass over memory.
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
pub(super) fn j_candidates(t: Target) -> Vec<usize> {
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
    let js: Vec<usize> = j_candidates(t).into_iter().filter(|j| cblocks_out % j == 0).collect();
    if c.groups == 1 {
        return dense(if wide { WIDE_TILE.1 } else { js[0] });
    }
    for &j in &js {
        let jl = j * lanes;
        // Several whole groups per tile: the tile reads their input channels.
        if jl % cout_g == 0 && c.cout % jl == 0 {
            let icr = jl / cout_g * cin_g;
            if icr % cb_in == 0 {
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
/// rotate through registers and the loop's back edge moves them back, one move per FMA.
/// Two channels per iteration halve those moves (measured: ResNet-50 1 thread 382 -> 315
/// ms; four channels spill). LLVM unrolls the Rust backend's loops itself.
pub(super) fn channel_unroll(t: Target, cb_in: usize) -> usize {
    if t.vregs < 32 && cb_in % 2 == 0 {
        2
    } else {
        1
    }
}

/// Pixels x output vectors of the wide register tile.
const WIDE_TILE: (usize, usize) = (14, 2);

/// Whether a conv uses [`WIDE_TILE`] instead of 7 pixels x 4 vectors: with 32 registers,
/// when rows are multiples of 14 wide (or 7 wide: then a task takes two rows, the 14
/// pixels of its register tile) and a tile's weights (`k * k * cin` x 4 vectors)
/// miss L1, so every register tile re-reads them from L2: 14 x 2 reads half the weight
/// bytes per FMA. The price is twice the channel tiles, each re-reading the input; a 1x1
/// conv pays it only when its input stays in L2. Measured on ResNet-50 (1 thread): 14x14
/// 1x1 convs 0.90-0.96x the time, strided 3x3 and the 7x7 stem 0.83-0.92x; 1x1 convs on
/// 28x28 inputs of 512 channels 1.03-1.04x, hence the input condition.
fn wide_tile(t: Target, c: &Conv, input: &Layout, width: usize, cblocks_out: usize) -> bool {
    let tile_weight_bytes = c.kernel * c.kernel * input.cpad() * 4 * t.lanes * 4;
    t.vregs >= 32
        && c.groups == 1
        && (width % WIDE_TILE.0 == 0 || width * 2 == WIDE_TILE.0)
        && cblocks_out % WIDE_TILE.1 == 0
        && tile_weight_bytes > t.l1_tile_weight_bytes
        && (c.kernel > 1 || input.bytes() <= t.l2_bytes / 2)
}

/// Output pixels per register tile.
pub(super) fn tile_pixels(t: Target, j: usize, width: usize) -> usize {
    let budget = if t.vregs >= 32 { 24 } else { 12 };
    let p = (budget / j).clamp(1, width);
    // With 32 registers one more pixel fits (the broadcast folds into the FMA): take it when
    // it divides the row, so no narrow remainder tile is left (7, 14, 28, 56, 112 wide rows).
    if t.vregs >= 32 && width % (p + 1) == 0 && (p + 1) * j <= 28 {
        return p + 1;
    }
    p
}

pub fn generate(
    t: Target,
    c: &Conv,
    input: &Buffer,
    out: &Buffer,
    res: Option<&Buffer>,
    w: &mut WeightAlloc,
) -> Result<Generated> {
    let lanes = t.lanes;
    let (li, lo) = (input.layout, out.layout);
    let cb_in = li.cb;
    let wide = wide_tile(t, c, &li, lo.w, lo.cblocks());
    let tl = tiling(t, c, lo.cblocks(), li.cpad(), cb_in, wide);
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
    };
    // Arguments: 0 out, 1 in, 2 weights, 3 bias, 4 residual.
    // Task order: output-channel tiles outside rows re-reads the input once per tile;
    // rows outside tiles re-reads the weights once per task row. Take the smaller traffic.
    // Output rows per task: two when a wide tile spans two short rows.
    let rows = if wide && lo.w * 2 == WIDE_TILE.0 { 2 } else { 1 };
    let row_tasks = lo.h.div_ceil(rows);
    let w_bytes = tiles * k * k * tl.icr * jl * 4;
    let rows_outer = li.bytes() + row_tasks * w_bytes < w_bytes + tiles * li.bytes();
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
    let p_max = if wide { WIDE_TILE.0 / rows } else { tile_pixels(t, j, ow_total) };
    let oh0 = task_row.scaled(rows as i64);
    let oh_of = |r: usize| oh0.offset(r as i64);
    let unroll = channel_unroll(t, cb_in);
    // Weights that do not stay in L2 stream from memory on a task's first pass: prefetch
    // them ahead (ResNet-50: 0.85-0.96x the time of those convs). Smaller ones are cache
    // hits, where the extra instruction only costs (1.01-1.09x).
    let prefetch = t.prefetch && w_bytes >= t.l2_bytes;
    let out_block = |jj: usize| tile.scaled(j as i64).offset(jj as i64);
    let out_at = |jj: usize, r: usize, ow: &Index, l: &crate::plan::Layout| pixel(l, &out_block(jj), &oh_of(r), ow);
    let acc: Vec<Vec<VReg>> = (0..p_max * rows).map(|_| (0..j).map(|_| b.vreg()).collect()).collect();
    let wreg: Vec<VReg> = (0..j).map(|_| b.vreg()).collect();
    // One register tile of `p` pixels starting at output column `ow0`, in each of the
    // task's first `nr` rows (accumulator `r * p + pp` is row `r`, column `ow0 + pp`).
    let emit_tile = |b: &mut Builder, ow0: &Index, p: usize, nr: usize| {
        let pixels: Vec<(usize, usize)> = (0..nr).flat_map(|r| (0..p).map(move |pp| (r, pp))).collect();
        for jj in 0..j {
            let bias = Src::Load(Addr { arg: 3, index: tile.scaled(jl as i64).offset((jj * lanes) as i64) });
            for a in acc.iter().take(pixels.len()) {
                b.set(a[jj], Expr::Src(bias.clone()));
            }
        }
        b.for_loop(k, |b, kh| {
            b.for_loop(k, |b, kw| {
                b.for_loop(tl.icr / cb_in, |b, icb| {
                    b.for_loop_unrolled(cb_in, unroll, |b, icl| {
                        let icb_abs = ic_start.plus(&icb.scaled(cbi)); // channel of (icb, lane 0)
                        let row =
                            icb_abs.scaled(hpi).plus(&oh0.scaled(s * cbi)).plus(&kh.scaled(cbi)).offset(shift * cbi);
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
                                b.push(Stmt::Prefetch { addr: Addr { arg: 2, index: ahead } });
                            }
                        }
                        for (&(r, pp), a) in pixels.iter().zip(&acc) {
                            let iw = ow0.offset(pp as i64).scaled(s).plus(&kw).offset(shift);
                            let x = row.offset(r as i64 * s * cbi).scaled(wpi).plus(&iw.scaled(cbi)).plus(&icl);
                            for jj in 0..j {
                                let x = Src::Bcast(Addr { arg: 1, index: x.clone() });
                                b.set(a[jj], Expr::Fma(a[jj], x, Src::Reg(wreg[jj])));
                            }
                        }
                    });
                });
            });
        });
        for (&(row, pp), a) in pixels.iter().zip(&acc) {
            let ow = ow0.offset(pp as i64);
            for (jj, &r) in a.iter().enumerate() {
                if let Some(rb) = res {
                    b.set(r, Expr::Add(r, Src::Load(Addr { arg: 4, index: out_at(jj, row, &ow, &rb.layout) })));
                }
                if c.relu {
                    b.set(r, Expr::Relu(r));
                }
                b.push(Stmt::Store { addr: Addr { arg: 0, index: out_at(jj, row, &ow, &lo) }, src: r });
            }
        }
    };
    // The row(s) of one task: register tiles along the row, then the rows' zero halo.
    let emit_rows = |b: &mut Builder, nr: usize| {
        let full = ow_total / p_max;
        b.for_loop(full, |b, tix| emit_tile(b, &tix.scaled(p_max as i64), p_max, nr));
        if ow_total % p_max > 0 {
            emit_tile(b, &Index::constant((full * p_max) as i64), ow_total % p_max, nr);
        }
        for r in 0..nr {
            for jj in 0..j {
                zero_halo_of_row(b, lanes, 0, &lo, &out_block(jj), &oh_of(r));
            }
        }
    };
    if full_row_tasks == row_tasks {
        emit_rows(&mut b, rows);
    } else {
        b.when(Cond::lt(task_row.clone(), full_row_tasks as i64), |b| emit_rows(b, rows));
        b.when(Cond::eq(task_row.clone(), full_row_tasks as i64), |b| emit_rows(b, lo.h % rows));
    }
    let mut name = format!("conv{k}x{k}s{}_{}x{}x{}_to{}x{}x{}", c.stride, li.c, li.h, li.w, lo.c, lo.h, lo.w);
    if c.groups > 1 {
        name += &format!("_g{}", c.groups);
    }
    if c.residual {
        name += "_res";
    }
    if c.relu {
        name += "_relu";
    }
    let mut args = vec!["out", "in", "w", "b"];
    if res.is_some() {
        args.push("res");
    }
    let dims =
        if rows_outer { vec![row_tasks, tl.groups, tl.per_group] } else { vec![tl.groups, tl.per_group, row_tasks] };
    let kernel = b.finish(name, args, lanes, dims);
    Ok(Generated { kernel, packing })
}
