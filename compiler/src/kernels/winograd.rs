//! Winograd F(m x m, 3 x 3) for 3x3 convolutions (stride 1, or the strided F(2 x 2, 3 x 3)
//! of stride-2 ones, whose input tiles start `2 m` pixels apart), and F(3 x 3, 4 x 4) for
//! the 7x7 stem over its input's phases (`Winograd::phases`: a 4x4 stride-1 conv, generated
//! from `Conv::computed_by`), as three kernels over the step's two scratch buffers (see
//! `plan::winograd_layouts`):
//!
//! 1. `wino_in`:   `V[xi] = (B^T d B)[xi]` for every `n x n` input tile `d` (read through
//!    the input's zero halo, so no border branches) and input channel block;
//! 2. `wino_gemm`: `M[xi] = V[xi] x U[xi]` for each of the `n * n` positions `xi`: a
//!    register-blocked matrix product of tiles x input channels by input x output channels,
//!    broadcast-FMA like the direct conv's 1x1 case;
//! 3. `wino_out`:  `y = A^T M A + bias (+ residual) (ReLU)` per output tile, stored in the
//!    output layout with its zero halo.
//!
//! Along rows (F(1 x m, 3 x 3), `Winograd::row`) a tile is `m` pixels of one row and each
//! kernel row is a 1-D F(m, 3): `V[xi] = B^T d` for every row tile of every input row the
//! output reads, `M[xi][y] = sum_tap V[xi][y + tap] U[xi][tap]` (the products reduce over
//! the three kernel rows too), `y = A^T M`: `3 n` weights per channel pair instead of
//! `n^2`, for `3 n / m` multiplies per output instead of `(n / m)^2`.
//!
//! Scratch index: `[xi][channel block][tile][lane]`, so one position's matrix is contiguous;
//! positions are `plan::winograd_plane_floats` apart (an odd number of cache lines).
//! The weight side `U = G g G^T` (along rows `G g_r` per kernel row) is packed once at
//! load (`runtime::pack::pack_winograd`), or with raw weights (`Winograd::raw`) computed
//! by the products themselves from the packed 3x3 filters ([`RawPipeline`]).
//! With square tiles both transforms run separably, rows then columns, per tile. The
//! input transform keeps the row pass's `n x n` vectors in registers (the backend spills
//! what does not fit to the stack) and stores only the results in `V`; the output
//! transform passes its rows through `M` itself, in loops (less code for rustc), which
//! keeps its live registers to about `2n` plus the constants.
//!
//! A large conv runs in bands of tile rows (`plan::winograd_band_rows`): the three kernels
//! of one band, then the next band's, so `V` and `M` stay in L2. A band's kernels index
//! the output and residual from the band's first row and the input from that row times
//! the stride (the calls' pointers are advanced there), and `V` and `M` from its first
//! tile; only the first and last bands write the halo rows above and below the output.
//! The runtime runs bands on different threads at once, each in its own scratch slot
//! (`exec::Order::BandGroup`).

use super::conv::{
    blocks_per_iteration, channel_unroll, pixel_budget, tile_pixels, FMA_CHAINS, PREFETCH_FLOATS, WIDE_TILE,
};
use super::simple::{pixel, zero_halo_of_band_row, zero_halo_of_row, zero_span};
use super::WeightAlloc;
use crate::graph::{Conv, Winograd};
use crate::kir::{Addr, Builder, Cond, Expr, Index, Kernel, Src, Stmt, VReg};
use crate::plan::Buffer;
use crate::target::Target;
use resnetc_runtime::exec::BAND_SLOTS;
use resnetc_runtime::pack::WinogradPacking;
use resnetc_runtime::winograd::Transform;
use std::collections::BTreeMap;

pub struct Generated {
    /// The bands of tile rows the conv runs as, in call order (one for the whole output
    /// unless `plan::winograd_band_rows` splits it).
    pub bands: Vec<Band>,
    pub packing: WinogradPacking,
}

/// The kernels of one band: input transform, matrix products, output transform, in call
/// order. They index the output and residual from the band's first output row, the input
/// from that row times the stride (the calls' pointers are advanced there), and `V` and
/// `M` from the band's first tile.
pub struct Band {
    pub kernels: [Kernel; 3],
    /// The band's first output row.
    pub row0: usize,
    /// Its tile rows.
    pub tile_rows: usize,
}

/// One register per distinct coefficient other than 0 and 1, splatted at kernel entry.
struct Consts(BTreeMap<u32, VReg>);

impl Consts {
    fn new(b: &mut Builder, coefs: &[f64]) -> Consts {
        let mut map = BTreeMap::new();
        for &c in coefs {
            let bits = (c as f32).to_bits();
            if c != 0.0 && c != 1.0 && !map.contains_key(&bits) {
                let r = b.vreg();
                b.set(r, Expr::Splat(bits));
                map.insert(bits, r);
            }
        }
        Consts(map)
    }

    /// `dst = init + sum(coef * src)` over the nonzero terms (`dst` is not a source).
    fn combine(&self, b: &mut Builder, dst: VReg, init: Option<Src>, terms: impl Iterator<Item = (f64, VReg)>) {
        self.combine_src(b, dst, init, terms.map(|(c, r)| (c, Src::Reg(r))));
    }

    /// [`Consts::combine`] over sources that may be memory operands (a first term that
    /// is not 1 multiplies its coefficient's register by it).
    fn combine_src(&self, b: &mut Builder, dst: VReg, init: Option<Src>, terms: impl Iterator<Item = (f64, Src)>) {
        let mut started = false;
        if let Some(s) = init {
            b.set(dst, Expr::Src(s));
            started = true;
        }
        for (c, s) in terms.filter(|(c, _)| *c != 0.0) {
            let k = (c != 1.0).then(|| self.0[&(c as f32).to_bits()]);
            let e = match (started, k) {
                (false, None) => Expr::Src(s),
                (false, Some(k)) => match s {
                    Src::Reg(r) => Expr::Mul(r, Src::Reg(k)),
                    s => Expr::Mul(k, s),
                },
                (true, None) => Expr::Add(dst, s),
                (true, Some(k)) => Expr::Fma(dst, s, Src::Reg(k)),
            };
            b.set(dst, e);
            started = true;
        }
        if !started {
            b.set(dst, Expr::Zero);
        }
    }
}

/// `G = D G'` with `D` diagonal, each row of `G'` starting with a 1 (so `G'` holds small
/// integers: F(3,3)'s rows `[1,1,1]`, `[1,-1,1]`, `[1,2,4]`, ...), and `A^T D`. Products
/// with raw weights apply `G'`, which takes about half the operations of `G` (adds
/// instead of multiplies), and the output transform folds `D` back in at no cost (its
/// coefficients are multiplies already): `A^T D (G' g G'^T .* V) D A = A^T (U .* V) A`.
fn split_g(tr: &Transform) -> (Vec<f64>, Vec<f64>) {
    let d: Vec<f64> = tr.g.chunks(3).map(|row| row.iter().copied().find(|&c| c != 0.0).unwrap_or(1.0)).collect();
    let g = tr.g.iter().enumerate().map(|(i, &c)| c / d[i / 3]).collect();
    let at = tr.at.iter().enumerate().map(|(i, &c)| c * d[i % tr.n]).collect();
    (g, at)
}

/// Vector operations of products with raw weights (`Winograd::raw`) per channel pair to
/// transform its weights with `G'` ([`split_g`]): `G' g_r` for each kernel row, or
/// `(G' g) G'^T` (`G'` on 3 columns, then on `n` rows). Applying a row of `G'` takes a
/// multiply by its first coefficient (none when it is 1) and an add or multiply-add for
/// each further one.
pub(crate) fn raw_transform_ops(w: Winograd) -> usize {
    let Some(tr) = w.transform() else { return 0 };
    let g = split_g(&tr).0;
    let per_application: usize = g
        .chunks(3)
        .map(|row| {
            let mut terms = row.iter().filter(|&&c| c != 0.0);
            terms.next().map_or(0, |&c| usize::from(c != 1.0)) + terms.count()
        })
        .sum();
    per_application * if w.row { 3 } else { 3 + tr.n }
}

/// Geometry shared by the three kernels.
struct Tiles {
    tr: Transform,
    /// The `G` the products apply to raw weights and the `A^T` of the output transform:
    /// the transform's own, or with raw weights (`Winograd::raw`) `G = D G'` split into
    /// `G'` (small integers: fewer operations in the products, which then compute
    /// `U' = U / (d_a d_b)`) and `A^T D`, which scales `M` back ([`split_g`]).
    g: Vec<f64>,
    at: Vec<f64>,
    /// Along rows (`wino.row`) a tile is `m` pixels of one row, and `V` holds the tiles
    /// of every input row the output reads (one more above and below).
    wino: Winograd,
    /// Tiles per row of the output, and tile rows of this band (of the output when the
    /// conv is not in bands).
    tw: usize,
    th: usize,
    /// Tiles of this band's transformed input, in `V` (`plan::winograd_tiles`).
    v_tiles: usize,
    lanes: usize,
    /// The conv's input channels, without the padding to whole channel blocks.
    cin: usize,
    /// The output rows this band writes (`th` tile rows from `rows.start`; all rows
    /// unless the conv runs in bands).
    rows: std::ops::Range<usize>,
}

impl Tiles {
    /// Tiles of the output, in `M`.
    fn count(&self) -> usize {
        self.tw * self.th
    }
    /// Float index of the vector of position `xi`, channel block `cblock` (of `cblocks`),
    /// tile `tile` (of `tiles`) in a scratch buffer.
    fn scratch(&self, tiles: usize, xi: &Index, cblocks: usize, cblock: &Index, tile: &Index) -> Index {
        let plane = crate::plan::winograd_plane_floats(cblocks, tiles, self.lanes) as i64;
        xi.scaled(plane).plus(&cblock.scaled(tiles as i64).plus(tile).scaled(self.lanes as i64))
    }
}

pub fn generate(
    t: Target,
    c: &Conv,
    wino: Winograd,
    input: &Buffer,
    out: &Buffer,
    res: Option<&Buffer>,
    w: &mut WeightAlloc,
) -> Generated {
    let m = wino.m;
    assert!(!(wino.raw && wino.phases), "{}: raw weights are 3x3 filters, not the stem's phases", c.weight);
    let (li, lo) = (input.layout, out.layout);
    let out_shape = crate::graph::Shape { c: lo.c, h: lo.h, w: lo.w };
    let (tw, th) = wino.grid(lo.h, lo.w);
    let band_rows = crate::plan::winograd_band_rows(t, c, wino, out_shape);
    let tiles = |ty0: usize, rows: usize| {
        let tr = wino.transform().expect("the cost model only picks Winograd algorithms that have a transform");
        let v_tiles = if wino.row { crate::plan::winograd_tiles(wino, out_shape).1 } else { rows * tw };
        let y0 = ty0 * wino.tile_rows();
        let rows_px = y0..lo.h.min(y0 + rows * wino.tile_rows());
        let (g, at) = if wino.raw { split_g(&tr) } else { (tr.g.to_vec(), tr.at.to_vec()) };
        Tiles { tr, g, at, wino, tw, th: rows, v_tiles, lanes: t.lanes, cin: c.cin, rows: rows_px }
    };
    // Row products are one output vector wide (`products_row`). Every band has the same
    // weights, so the first band's register tile decides their packing.
    let pt = (!wino.row).then(|| product_tile(t, lo.cblocks(), tw * band_rows, band_rows < th));
    let jl = pt.as_ref().map_or(1, |pt| pt.j) * t.lanes;
    let ktiles = lo.cblocks() * t.lanes / jl;
    let mut packing = WinogradPacking {
        weight: c.weight.clone().into(),
        bn: c.folded_bn.clone().map(Into::into),
        cout: c.cout,
        cin: c.cin,
        m,
        row: wino.row,
        stride: wino.stride,
        raw: wino.raw,
        phases: wino.phases,
        jl,
        ktiles,
        cin_pad: li.cpad(),
        offset: 0,
        bias_offset: 0,
    };
    packing.offset = w.take(packing.weight_floats());
    packing.bias_offset = w.take(ktiles * jl);
    let shape = format!("{}x{}x{}_to{}x{}x{}", li.c, li.h, li.w, lo.c, lo.h, lo.w);
    let bands = (0..th)
        .step_by(band_rows)
        .map(|ty0| {
            let rows = band_rows.min(th - ty0);
            let g = tiles(ty0, rows);
            let kernels = match &pt {
                None => [
                    input_transform_row(&g, &li, &shape),
                    if wino.raw {
                        products_row_raw(t, &g, li.cblocks(), lo.cblocks(), &shape)
                    } else {
                        products_row(t, &g, li.cblocks(), lo.cblocks(), &shape)
                    },
                    output_transform_row(&g, c, &lo, res, &shape),
                ],
                Some(pt) if rows < th => {
                    // The last band may be shorter: fewer tiles per block, the same output
                    // vectors (the weights are packed for them).
                    let pt = ProductTile { j: pt.j, tiles: pt.tiles.min(g.count()) };
                    let band = format!("{shape}_band{rows}");
                    let mut edges = band.clone();
                    if g.rows.start == 0 {
                        edges += "_first";
                    }
                    if g.rows.end == lo.h {
                        edges += "_last";
                    }
                    [
                        input_transform(&g, &li, &band),
                        products(t, &g, &pt, li.cblocks(), lo.cblocks(), false, &band),
                        output_transform(&g, c, &lo, res, false, &edges),
                    ]
                }
                Some(pt) => [
                    input_transform(&g, &li, &shape),
                    if wino.raw {
                        assert_eq!(pt.j, 1, "raw weights only with every tile in registers (`raw_fits`)");
                        products_raw(t, &g, li.cblocks(), lo.cblocks(), &shape)
                    } else {
                        products(t, &g, pt, li.cblocks(), lo.cblocks(), true, &shape)
                    },
                    output_transform(&g, c, &lo, res, true, &shape),
                ],
            };
            Band { kernels, row0: g.rows.start, tile_rows: rows }
        })
        .collect();
    Generated { bands, packing }
}

/// Kernel name prefix: `wino2`, `wino1x2` along rows, `wino2s2` with stride 2, `wino3ph`
/// over the stem's phases.
fn prefix(g: &Tiles) -> String {
    if g.wino.phases {
        format!("wino{}ph", g.tr.m)
    } else if g.wino.row {
        format!("wino1x{}", g.tr.m)
    } else if g.wino.stride > 1 {
        format!("wino{}s{}", g.tr.m, g.wino.stride)
    } else {
        format!("wino{}", g.tr.m)
    }
}

/// `V = B^T d B` per tile and input channel block. Arguments: 0 `V`, 1 input.
/// Tasks: (channel block, tile row). Input tiles start `m * stride` pixels apart, one
/// pixel (the padding) above and left of their output tile's first input pixel.
fn input_transform(g: &Tiles, li: &crate::plan::Layout, shape: &str) -> Kernel {
    let (tr, lanes) = (&g.tr, g.lanes);
    let (n, step) = (tr.n, tr.m * g.wino.stride);
    // Whole tiles read past the border into the halo (`plan::halo_needed`); the
    // interpreter would not catch a short halo (those reads feed only discarded outputs).
    // The last tile of this band reads up to input index `(T - 1) step + n - 2`.
    let last = |tiles: usize| (tiles - 1) * step + n - 2;
    let ty0 = g.rows.start / tr.m;
    assert!(
        last(ty0 + g.th) < li.h + li.halo && last(g.tw) < li.w + li.halo,
        "{shape}: Winograd tiles read past the input's halo"
    );
    let m = step as i64;
    let cblocks = li.cblocks();
    let mut b = Builder::new(2);
    let (cb, ty) = (Index::var(0, 1), Index::var(1, 1));
    let k = Consts::new(&mut b, tr.bt);
    let d: Vec<VReg> = (0..n).map(|_| b.vreg()).collect();
    // The row pass's results, `s[i * n + c]`, stay in registers: more than there are (36 at
    // F(4,3); AVX-512 has 32, Cranelift's x86 16), so the backend spills some to the stack,
    // which stays in L1. Passing them through `V` instead, as the output transform does
    // through `M`, took 1.2-1.7x the time on ResNet-18's input transforms (Rust AVX-512, 1
    // thread). With them in registers the model takes 0.994x the time (Cranelift 0.99x; the
    // Rust AVX2 and portable versions not measured), and 0.975-0.985x at 2 threads while
    // the vCPUs shared no cache (where the first store to each line of `V` that the other
    // thread's products read still waits, about 70 ns: `bench/cross_write.c`).
    // The cost: registers are named per row and column, so the kernel is unrolled, and
    // rustc took 59.8 s instead of 48.7 for the ResNet-152 executable (67.6 with the
    // output transform unrolled too, for 1.08x on its time: not done).
    let s: Vec<VReg> = (0..n * n).map(|_| b.vreg()).collect();
    let dst = b.vreg();
    b.for_loop(g.tw, |b, tx| {
        let tile = ty.scaled(g.tw as i64).plus(&tx);
        // Rows: s[i][c] = sum_j d[i][j] B[j][c].
        for i in 0..n {
            for (jx, &r) in d.iter().enumerate() {
                let y = ty.scaled(m).offset(i as i64 - 1);
                let x = tx.scaled(m).offset(jx as i64 - 1);
                b.set(r, Expr::Src(Src::Load(Addr { arg: 1, index: pixel(li, &cb, &y, &x) })));
            }
            for col in 0..n {
                k.combine(b, s[i * n + col], None, (0..n).map(|jx| (tr.bt[col * n + jx], d[jx])));
            }
        }
        // Columns: V[r][c] = sum_i B^T[r][i] s[i][c], position `r * n + c` of the tile.
        for col in 0..n {
            for row in 0..n {
                k.combine(b, dst, None, (0..n).map(|i| (tr.bt[row * n + i], s[i * n + col])));
                let xi = Index::constant((row * n + col) as i64);
                let index = g.scratch(g.v_tiles, &xi, cblocks, &cb, &tile);
                b.push(Stmt::Store { addr: Addr { arg: 0, index }, src: dst });
            }
        }
    });
    let name = format!("{}_in_{shape}", prefix(g));
    b.finish(name, vec!["v", "in"], lanes, vec![cblocks, g.th])
}

/// `V = B^T d` per row tile `d` of every input row the output reads (rows -1 to `h`,
/// through the input's zero halo) and input channel block. Arguments: 0 `V`, 1 input.
/// Tasks: (channel block, input row).
fn input_transform_row(g: &Tiles, li: &crate::plan::Layout, shape: &str) -> Kernel {
    let (tr, lanes) = (&g.tr, g.lanes);
    let n = tr.n;
    let cblocks = li.cblocks();
    let mut b = Builder::new(2);
    let (cb, vy) = (Index::var(0, 1), Index::var(1, 1));
    let k = Consts::new(&mut b, tr.bt);
    let d: Vec<VReg> = (0..n).map(|_| b.vreg()).collect();
    let s: Vec<VReg> = (0..n).map(|_| b.vreg()).collect();
    b.for_loop(g.tw, |b, tx| {
        let tile = vy.scaled(g.tw as i64).plus(&tx);
        for (jx, &r) in d.iter().enumerate() {
            let x = tx.scaled(tr.m as i64).offset(jx as i64 - 1);
            b.set(r, Expr::Src(Src::Load(Addr { arg: 1, index: pixel(li, &cb, &vy.offset(-1), &x) })));
        }
        for (xi, &dst) in s.iter().enumerate() {
            k.combine(b, dst, None, (0..n).map(|jx| (tr.bt[xi * n + jx], d[jx])));
            let at = g.scratch(g.v_tiles, &Index::constant(xi as i64), cblocks, &cb, &tile);
            b.push(Stmt::Store { addr: Addr { arg: 0, index: at }, src: dst });
        }
    });
    let name = format!("{}_in_{shape}", prefix(g));
    b.finish(name, vec!["v", "in"], lanes, vec![cblocks, g.th + 2])
}

/// The register tile of a Winograd product: `j` output vectors by `tiles` tiles.
pub(crate) struct ProductTile {
    pub j: usize,
    pub tiles: usize,
}

/// How a product with `cblocks_out` output channel blocks and `count` tiles blocks its
/// registers (the cost model asks too).
///
/// Few tiles (14x14 at F(3,3) or F(4,3), 7x7 at F(2,3)): one output vector by every tile
/// in registers, so each transformed weight vector is loaded once and feeds all tiles as
/// it streams in from memory. With `j` vectors and 6 tiles per register block, the first
/// block waits for memory and the others run from cache, one after the other: measured
/// 2.66 ms for a 7x7x512 product that computes in 1.2 ms and streams 16.8 MB. (Streaming
/// the raw 3x3 weights instead, 9 floats per channel pair, and computing `G g G^T` into a
/// cached scratch per chunk of input channels inside the product was measured slower:
/// 2.35 ms for that product even with the next chunk's weights prefetched during the
/// FMAs, 1.26 ms for F(4,3) on 14x14x256 against 0.9 for F(3,3) with `U` from memory;
/// the transform phase stalls on its stores and the two phases barely overlap.)
/// Otherwise, with 32 registers, 2 vectors by up to 14 tiles (28 accumulators, two
/// weight vectors and a broadcast: 31 registers), the direct conv's [`WIDE_TILE`]
/// shape: per input channel two weight loads and 14 broadcasts feed 28 FMAs. ResNet-50
/// on the Zen 5 (Rust, 1 thread, per-kernel minima, against 4 x 6 where a task's weights,
/// `cin` x 4 vectors, stayed under 32 KB, and 2 x 12 above): its F(4,3) and strided
/// products 0.91-0.99x the time (its banded 56x56 ones 0.96-1.00x), the whole model
/// 0.99x. A conv in bands (`banded`, `plan::winograd_band_rows`) reads its weights from
/// L2 for every band anyway, so its few tiles per band take blocks of tiles too, not all
/// in registers (ResNet-18's 64x56x56 bands of 14 tiles, when blocks were 4 x 6: 2.40
/// against 2.53 ms for 1 x 14 over four convs). With an odd number of output vectors, or
/// 16 registers, one vector by the pixel budget (at most 24 tiles with 32).
pub(crate) fn product_tile(t: Target, cblocks_out: usize, count: usize, banded: bool) -> ProductTile {
    if count <= t.winograd_tiles_in_registers() && !banded {
        return ProductTile { j: 1, tiles: count };
    }
    let (wide_tiles, wide_j) = WIDE_TILE;
    if t.vregs >= 32 && cblocks_out.is_multiple_of(wide_j) {
        // Blocks as even as their count allows: none more than one tile shorter.
        return ProductTile { j: wide_j, tiles: count.div_ceil(count.div_ceil(wide_tiles)) };
    }
    let p = tile_pixels(t, 1, count, channel_unroll(t, t.lanes));
    ProductTile { j: 1, tiles: if t.vregs >= 32 { p.min(24) } else { p } }
}

/// `M[xi] = V[xi] U[xi]`: tiles of `p` tiles x `j` output vectors in registers, reduced
/// over input channels. Arguments: 0 `M`, 1 `V` (written too with `claim_v`), 2 `U`.
/// Tasks: positions, each running every output tile over every block of tiles; or
/// (position, block of tiles), each running every output tile, where a position's `V`
/// misses L1 with 16 registers. (In bands too, for one structure: a band's calls are split
/// across threads only with other than `exec::BAND_SLOTS` threads, not measured at this
/// grain.)
///
/// With `claim_v` (a conv not in bands, whose tasks are split across threads), a task then
/// stores zeros over the `V` it has read, which nothing reads again. The next conv's input
/// transform stores to the same lines, from channel blocks split across the threads, and
/// a store to a line the other core has only read waits for it, about 70 ns per line one
/// after another when the two vCPUs share no cache; to a line the other core wrote it
/// costs a tenth of that (`bench/cross_write.c`: 900 KB with a quarter of its lines so,
/// 260 µs after mode 1's reads, 28-30 after mode 9's reads and stores, 13 alone). Rust
/// ResNet-18 at 2 threads (with the output transform's zeros over `M`): 0.935x the time
/// without a shared cache (10.14 against 10.84 ms, eight runs each), 1.00x with one; 1
/// thread 0.99x (its input transforms 0.5-0.9x: their stores find the lines just
/// written); ResNet-50 1.00x at 1 thread, 1.004x at 2 with a shared cache.
/// (So a task runs all output tiles of its positions: a position's `V` is read by all of
/// them. With 25 positions a two-way split is 13 against 12.)
///
/// Where positions share their weights (the strided transform: `Transform::weight_slots`)
/// a task's position is a weight slot instead, in two task dimensions (slot of the row,
/// slot of the column), and it runs every position of the slot, one after the other with
/// the same weights: those of its first position stream from memory, the others' come
/// from cache. (The positions of a slot differ in constants only: the conditions pick
/// them per slot.) The strided transform's last slot row holds twice the others' work and
/// its last slot four positions, so tasks run the slots last first: a two-way split then
/// starts 15 against 10 positions, and the thread that finishes first steals one-position
/// tasks from the back of the other's share. (In slot order it stole the four-position
/// task last, whole: ResNet-50's 128-channel strided products took 0.84-0.94 ms at 2
/// threads against 0.80-0.83 now, 1.55 at 1 thread; the model 0.997x with a shared cache.)
fn products(t: Target, g: &Tiles, pt: &ProductTile, cbi: usize, cbo: usize, claim_v: bool, shape: &str) -> Kernel {
    let j = pt.j;
    let (n, lanes) = (g.tr.n, t.lanes);
    let jl = (j * lanes) as i64;
    let ktiles = cbo / j;
    let count = g.count();
    let cin_pad = cbi * lanes;
    let (slots, distinct) = g.tr.weight_slots();
    let shared = distinct < n;
    let unroll = channel_unroll(t, lanes);
    let p_max = pt.tiles;
    // With one broadcast per FMA (16 registers), the broadcasts of a block wait on L2
    // when the position's `V` does not stay in L1 from one output tile to the next: then
    // a task keeps its block of `V` in L1 and reads each output tile's weights instead
    // (from L2; one vector per `p` FMAs). ResNet-50's strided products on the JIT (`V`
    // of 49 tiles x 256 channels, 196 x 128 per position): 4.12 -> 3.92 and 3.55 -> 3.32
    // ms.
    let v_bytes = 4 * count * cin_pad;
    let blocks_outer = t.vregs < 32 && v_bytes > t.l1_bytes && count > p_max;
    // Task variables: the position (or the row's and column's weight slots), then, with
    // blocks outermost, the block of tiles.
    let mut b = Builder::new(1 + usize::from(shared) + usize::from(blocks_outer));
    let block_task = blocks_outer.then(|| Index::var(if shared { 2 } else { 1 }, 1));
    // A block of fewer tiles than the FMA pipeline needs chains ([`FMA_CHAINS`]; the
    // JIT's F(4,3) over 7x7 outputs: 4 tiles of one vector) sums the input channels of
    // an unrolled step into as many accumulator sets as make up the difference and the
    // pixel budget holds, added up before the store: one FMA chain per tile kept the JIT
    // at one FMA per cycle. (Seven tiles stay one set: fourteen accumulators spilled.)
    let budget = pixel_budget(t, 1, unroll);
    let sets =
        if p_max * j < FMA_CHAINS { FMA_CHAINS.div_ceil(p_max * j).min(unroll).min(budget / (p_max * j)) } else { 1 };
    let sets = sets.max(1);
    let accs: Vec<Vec<Vec<VReg>>> =
        (0..sets).map(|_| (0..p_max).map(|_| (0..j).map(|_| b.vreg()).collect()).collect()).collect();
    let wreg: Vec<VReg> = (0..j).map(|_| b.vreg()).collect();
    let block_unroll = blocks_per_iteration(t, cbi);
    // One channel block of fewer channels (the stem's 12 phase channels of 16 lanes)
    // reduces over its channels only: the padded ones hold zeros.
    let steps = if cbi == 1 { g.cin.min(lanes).div_ceil(unroll) } else { lanes / unroll };
    // One register tile of position `xi`, its weights at slot `ws`; `first`: the first
    // position to read them, which prefetches them.
    let emit = |b: &mut Builder, xi: &Index, ws: &Index, first: bool, kt: &Index, p0: &Index, p: usize| {
        for set in &accs {
            for a in set.iter().take(p) {
                for &r in a {
                    b.set(r, Expr::Zero);
                }
            }
        }
        b.for_loop_unrolled(cbi, block_unroll, |b, icb| {
            b.for_loop(steps, |b, step| {
                for u in 0..unroll {
                    let icl = step.scaled(unroll as i64).offset(u as i64);
                    let acc = &accs[u % sets];
                    let ic = icb.scaled(lanes as i64).plus(&icl);
                    let wk = ws.scaled(ktiles as i64).plus(kt).scaled(cin_pad as i64).plus(&ic).scaled(jl);
                    for (jj, &wr) in wreg.iter().enumerate() {
                        b.set(wr, Expr::Src(Src::Load(Addr { arg: 2, index: wk.offset((jj * lanes) as i64) })));
                        // Every slot's weights are read once per image (per band in
                        // bands, from L2 after the first), from memory, by the slot's
                        // first position; its other positions find them in cache. Tasks
                        // of blocks of tiles all read them, only the first from memory:
                        // there the prefetches only cost (on the JIT, where each is a
                        // call: ResNet-50's strided products 1.02x the time).
                        if t.prefetch && first && !blocks_outer {
                            let ahead = wk.offset((jj * lanes + PREFETCH_FLOATS) as i64);
                            b.prefetch(Addr { arg: 2, index: ahead });
                        }
                    }
                    for (pp, a) in acc.iter().take(p).enumerate() {
                        let x = g.scratch(g.v_tiles, xi, cbi, &icb, &p0.offset(pp as i64)).plus(&icl);
                        for jj in 0..j {
                            let xv = Src::Bcast(Addr { arg: 1, index: x.clone() });
                            b.set(a[jj], Expr::Fma(a[jj], xv, Src::Reg(wreg[jj])));
                        }
                    }
                }
            });
        });
        let acc = &accs[0];
        for other in &accs[1..] {
            for (a, o) in acc.iter().zip(other).take(p) {
                for (&r, &q) in a.iter().zip(o) {
                    b.set(r, Expr::Add(r, Src::Reg(q)));
                }
            }
        }
        for (pp, a) in acc.iter().take(p).enumerate() {
            for (jj, &r) in a.iter().enumerate() {
                let ob = kt.scaled(j as i64).offset(jj as i64);
                b.push(Stmt::Store {
                    addr: Addr { arg: 0, index: g.scratch(count, xi, cbo, &ob, &p0.offset(pp as i64)) },
                    src: r,
                });
            }
        }
    };
    let full = count / p_max;
    let rest = count % p_max;
    let blocks = full + usize::from(rest > 0);
    // Zeros over `V` of positions `xis`, `tiles` tiles from `tile0` (contiguous in each
    // channel block), once the task has read them for the last time ([`products`]' doc:
    // `claim_v`). (Zeroed where stored: live through the products, the zero would take
    // one of the JIT's 16 registers.)
    let claim = |b: &mut Builder, xis: &[Index], tile0: &Index, tiles: usize| {
        if !claim_v {
            return;
        }
        for xi in xis {
            b.for_loop(cbi, |b, cb| zero_span(b, lanes, 1, &g.scratch(g.v_tiles, xi, cbi, &cb, tile0), tiles * lanes));
        }
    };
    // The task's work on positions `xis`, which share the weights at slot `ws`.
    let body = |b: &mut Builder, xis: &[Index], ws: &Index| {
        if blocks_outer {
            // Task `block_task` is that block of the tiles; the last may be short.
            let block_task = block_task.as_ref().expect("a task variable for blocks outermost");
            let tile0 = block_task.scaled(p_max as i64);
            let block = |b: &mut Builder, p: usize| {
                for (i, xi) in xis.iter().enumerate() {
                    b.for_loop(ktiles, |b, kt| emit(b, xi, ws, i == 0, &kt, &tile0, p));
                }
                claim(b, xis, &tile0, p);
            };
            if rest == 0 {
                block(b, p_max);
            } else {
                b.when(Cond::lt(block_task.clone(), full as i64), |b| block(b, p_max));
                b.when(Cond::eq(block_task.clone(), full as i64), |b| block(b, rest));
            }
        } else {
            b.for_loop(ktiles, |b, kt| {
                for (i, xi) in xis.iter().enumerate() {
                    b.for_loop(full, |b, q| emit(b, xi, ws, i == 0, &kt, &q.scaled(p_max as i64), p_max));
                    if rest > 0 {
                        emit(b, xi, ws, i == 0, &kt, &Index::constant((full * p_max) as i64), rest);
                    }
                }
            });
            claim(b, xis, &Index::constant(0), g.v_tiles);
        }
    };
    let name = format!("{}_gemm_{shape}", prefix(g));
    let mut dims = if shared { vec![distinct, distinct] } else { vec![n * n] };
    if blocks_outer {
        dims.push(blocks);
    }
    if !shared {
        let xi = Index::var(0, 1);
        body(&mut b, std::slice::from_ref(&xi), &xi);
        return b.finish(name, vec!["m", "v", "u"], lanes, dims);
    }
    // Along each axis: slots `0..lead` hold one row each, the row of the slot's number;
    // each later slot its rows, constants.
    let rows_of = |s: usize| (0..n).filter(|&r| slots[r] == s).collect::<Vec<_>>();
    let lead = (0..distinct).take_while(|&s| rows_of(s) == [s]).count();
    let cases = |var: &Index| {
        let mut cases = vec![];
        if lead > 0 {
            cases.push((Cond::lt(var.clone(), lead as i64), vec![var.clone()]));
        }
        for s in lead..distinct {
            let rows = rows_of(s).into_iter().map(|r| Index::constant(r as i64)).collect();
            cases.push((Cond::eq(var.clone(), s as i64), rows));
        }
        cases
    };
    // Slots last first (see above): task `(a, b)` runs slot `(distinct - 1 - a, distinct
    // - 1 - b)`.
    let reversed = |v: usize| Index::var(v, 1).scaled(-1).offset(distinct as i64 - 1);
    let (sa, sb) = (reversed(0), reversed(1));
    let ws = sa.scaled(distinct as i64).plus(&sb);
    for (ca, rows) in cases(&sa) {
        b.when(ca, |b| {
            for (cb, cols) in cases(&sb) {
                b.when(cb, |b| {
                    let xis: Vec<Index> =
                        rows.iter().flat_map(|r| cols.iter().map(move |c| r.scaled(n as i64).plus(c))).collect();
                    body(b, &xis, &ws);
                });
            }
        });
    }
    b.finish(name, vec!["m", "v", "u"], lanes, dims)
}

/// The register block of a row product ([`products_row`]): `rows` output rows by `cols`
/// tiles of each, one output vector wide, beside the three taps' weight vectors and one
/// broadcast: at most `vregs - 8` accumulators. (All 28 tiles of a 7x7 output at F(1x2)
/// plus those 4 fill 32 registers, and LLVM spilled: 1.05x the time of 4 + 3 rows.)
/// ResNet's 7x7 at F(1x3) is one block of 7 rows of 3 tiles. Rows are split evenly, so no
/// block is much shorter than the others.
pub(crate) fn row_block(t: Target, tw: usize, th: usize) -> (usize, usize) {
    let budget = t.vregs - 8;
    let cols = tw.min(budget);
    let rows = (budget / cols).min(th);
    (th.div_ceil(th.div_ceil(rows)), cols)
}

/// The registers of a row product: `acc[row][tile]`, one weight vector per tap, the
/// broadcast.
struct RowRegs {
    acc: Vec<Vec<VReg>>,
    w: Vec<VReg>,
    x: VReg,
}

/// A register block of a row product: `r` output rows from row `y0` by `c` tiles from
/// tile `x0`.
struct RowBlock<'a> {
    y0: &'a Index,
    r: usize,
    x0: &'a Index,
    c: usize,
}

/// One register block of position `xi`'s row product into `M`'s output block `kt`,
/// reduced over the `cbi` input channel blocks (`dims`: `cbi`, `cbo` and the channel
/// unroll): `weights(b, ic)` sets the taps' weight registers of input channel `ic`, then
/// each broadcast of `V` feeds the (up to) three rows of the block that read it.
#[allow(clippy::too_many_arguments)]
fn row_products(
    b: &mut Builder,
    g: &Tiles,
    regs: &RowRegs,
    block: &RowBlock,
    xi: &Index,
    kt: &Index,
    (cbi, cbo, unroll): (usize, usize, usize),
    weights: impl Fn(&mut Builder, &Index),
) {
    let (lanes, tw) = (g.lanes, g.tw as i64);
    let RowBlock { y0, r, x0, c } = *block;
    for a in regs.acc.iter().take(r) {
        for &reg in a.iter().take(c) {
            b.set(reg, Expr::Zero);
        }
    }
    b.for_loop(cbi, |b, icb| {
        b.for_loop_unrolled(lanes, unroll, |b, icl| {
            weights(b, &icb.scaled(lanes as i64).plus(&icl));
            for vr in 0..r + 2 {
                for cc in 0..c {
                    let tile = y0.offset(vr as i64).scaled(tw).plus(x0).offset(cc as i64);
                    let at = g.scratch(g.v_tiles, xi, cbi, &icb, &tile).plus(&icl);
                    b.set(regs.x, Expr::Src(Src::Bcast(Addr { arg: 1, index: at })));
                    // Output row `vr - tap` of the block reads this row with `tap`.
                    for (tap, &wr) in regs.w.iter().enumerate().filter(|&(tap, _)| vr >= tap && vr - tap < r) {
                        let a = regs.acc[vr - tap][cc];
                        b.set(a, Expr::Fma(a, Src::Reg(regs.x), Src::Reg(wr)));
                    }
                }
            }
        });
    });
    for (rr, a) in regs.acc.iter().take(r).enumerate() {
        for (cc, &reg) in a.iter().take(c).enumerate() {
            let tile = y0.offset(rr as i64).scaled(tw).plus(x0).offset(cc as i64);
            b.push(Stmt::Store { addr: Addr { arg: 0, index: g.scratch(g.count(), xi, cbo, kt, &tile) }, src: reg });
        }
    }
}

/// `M[xi][y] = sum_tap V[xi][y + tap] U[xi][tap]` for each output row `y` (`V`'s rows
/// start one input row above the output): a register block of output rows by tiles,
/// reduced over input channels. Each broadcast of `V` feeds the (up to) three output rows
/// that read it, one per tap, so a block of `r` rows loads `r + 2` rows of broadcasts
/// for `3r` rows of FMAs (loads, not FMAs, would bound a broadcast per FMA). (Computing
/// `U = G g_r` from the raw 3x3 weights in registers instead, 9 floats per channel pair
/// streamed rather than 15, measured 1.29x the time on 7x7x512 at F(1x3): 14% more FMAs
/// and nine weight loads per channel.) Arguments: 0 `M`, 1 `V`, 2 `U`. Tasks: (position,
/// output vector).
fn products_row(t: Target, g: &Tiles, cbi: usize, cbo: usize, shape: &str) -> Kernel {
    let lanes = t.lanes;
    let taps = g.wino.taps();
    let (rows, cols) = row_block(t, g.tw, g.th);
    let cin_pad = (cbi * lanes) as i64;
    let mut b = Builder::new(2);
    let (xi, kt) = (Index::var(0, 1), Index::var(1, 1));
    let unroll = channel_unroll(t, lanes);
    let acc: Vec<Vec<VReg>> = (0..rows).map(|_| (0..cols).map(|_| b.vreg()).collect()).collect();
    let w: Vec<VReg> = (0..taps).map(|_| b.vreg()).collect();
    let x = b.vreg();
    let regs = RowRegs { acc, w, x };
    // A block of `r` rows from row `y0` by `c` tiles from tile `x0`.
    let emit = |b: &mut Builder, y0: &Index, r: usize, x0: &Index, c: usize| {
        let block = RowBlock { y0, r, x0, c };
        row_products(b, g, &regs, &block, &xi, &kt, (cbi, cbo, unroll), |b, ic| {
            let wk = xi.scaled(cbo as i64).plus(&kt).scaled(cin_pad).plus(ic).scaled((taps * lanes) as i64);
            for (tap, &wr) in regs.w.iter().enumerate() {
                let at = wk.offset((tap * lanes) as i64);
                b.set(wr, Expr::Src(Src::Load(Addr { arg: 2, index: at.clone() })));
                // Every position's weights are read once per image, from memory.
                if t.prefetch {
                    b.prefetch(Addr { arg: 2, index: at.offset(PREFETCH_FLOATS as i64) });
                }
            }
        });
    };
    register_blocks(g.th, rows, g.tw, cols).emit(&mut b, false, |b, y0, r, x0, c, _| emit(b, y0, r, x0, c));
    let name = format!("{}_gemm_{shape}", prefix(g));
    b.finish(name, vec!["m", "v", "u"], lanes, vec![g.wino.positions(), cbo])
}

/// Floats of one position's transformed weights in a raw-weight products' scratch
/// (`[ic][tap][lane]`), rounded up to an odd number of cache lines: a transform stores
/// every position of one channel at once, planes apart, which then fall in distinct L1
/// sets (as the data transforms' scratch, `plan::winograd_plane_floats`).
fn raw_plane_floats(cin_pad: usize, taps: usize, lanes: usize) -> usize {
    crate::plan::winograd_plane_floats(cin_pad, taps, lanes)
}

/// Floats of the scratch of Winograd products with raw weights ([`RawPipeline`]), in the
/// image's arena: [`BAND_SLOTS`] shares (each run by one thread) of two slots of a plane
/// per weight position, each for a unit's input channels.
pub(crate) fn raw_scratch_floats(wino: Winograd, cin: usize, lanes: usize) -> usize {
    let cin_pad = cin.div_ceil(lanes) * lanes;
    let cin_unit = if raw_halves(wino, cin, lanes) { cin_pad / 2 } else { cin_pad };
    BAND_SLOTS * 2 * wino.positions() * raw_plane_floats(cin_unit, wino.taps(), lanes)
}

/// Whether a conv may run Winograd `wino` with raw weights on `t` (the cost model's
/// candidates): the products split their units into [`BAND_SLOTS`] shares of pairs
/// ([`RawPipeline`]); square tiles also need stride 1, the whole output's tiles in
/// registers (one output vector wide, not in bands: [`product_tile`]) and at least as many
/// positions as a vector has lanes (each of the first `lanes` passes transforms a
/// `1 / lanes` of the next block's channels).
pub fn raw_fits(t: Target, c: &Conv, wino: Winograd, out: crate::graph::Shape) -> bool {
    let units = c.cout.div_ceil(t.lanes) * if raw_halves(wino, c.cin, t.lanes) { 2 } else { 1 };
    if !t.raw_winograd || !units.is_multiple_of(2 * BAND_SLOTS) || wino.transform().is_none() {
        return false;
    }
    if wino.row {
        return true;
    }
    let tiles = crate::plan::winograd_tiles(wino, out).0;
    let banded = crate::plan::winograd_band_rows(t, c, wino, out) < wino.grid(out.h, out.w).1;
    wino.stride == 1 && !banded && tiles <= t.winograd_tiles_in_registers() && wino.positions() >= t.lanes
}

/// The task structure of Winograd products with raw weights (`Winograd::raw`), which
/// transform the raw 3x3 filters themselves into a scratch of their own. Units (an
/// output vector, or with `halves` half of its input channels) run in order, each with
/// all its positions: the products of unit `u` read its transformed weights from scratch
/// slot `u % 2` while their first passes (positions) transform unit `u + 1`'s raw weights
/// into the other slot, a part per pass, a channel at a time between the FMAs. So the raw
/// weights stream under the FMAs and the transformed ones stay in L2. (A C model of
/// ResNet-50's 7x7x512 at F(1x3), `bench/winograd_otf_model.c`: 0.98-1.05x the stored
/// weights' time; transforming each block whole before its products, 1.2x.) The pipeline
/// runs within a share (`exec::Order::Pipelined`): a share's first task transforms its
/// unit whole first. Tasks: (share, pair of units, unit of the pair, position), so that
/// the slots are affine in the task: `odd` and `1 - odd`.
///
/// Halves keep a unit's working set nearer L2 size where a whole block's would not: the
/// 14x14x256 convs at F(3,3) hold `V` (640 KB) beside two slots of 410 KB. In whole blocks
/// their products took 1.25x the stored weights' time (1.06x with the transform's stores
/// all to one plane), in halves 1.20x (1.08x; ResNet-50, Rust, per-call minima). With
/// halves the second half adds to `M` what the first stored.
struct RawPipeline {
    share: Index,
    xi: Index,
    /// The unit of the pair: with halves, the half of the input channels.
    odd: Index,
    /// The output block of this unit and of the next, and the first input channel of
    /// each (0 without halves).
    kt: Index,
    next_kt: Index,
    ch0: Index,
    next_ch0: Index,
    /// The unit's place in the share.
    local: Index,
    /// The first task of a share.
    first: Index,
    /// Scratch slots of this unit's weights and of the next unit's.
    current: Index,
    next: Index,
    /// Units per share.
    per_share: usize,
    halves: bool,
    /// Positions of a block.
    positions: usize,
    /// Floats of one position's plane in the scratch, and the taps per channel.
    plane: i64,
    taps: usize,
    lanes: usize,
}

/// Whether a conv's products with raw weights run in halves of its input channels
/// ([`RawPipeline`]): square tiles with an even number of input channel blocks.
fn raw_halves(wino: Winograd, cin: usize, lanes: usize) -> bool {
    !wino.row && cin.div_ceil(lanes).is_multiple_of(2)
}

impl RawPipeline {
    fn new(wino: Winograd, cbo: usize, cin_pad: usize, lanes: usize) -> RawPipeline {
        let halves = raw_halves(wino, cin_pad, lanes);
        let units = cbo * if halves { 2 } else { 1 };
        assert!(units.is_multiple_of(2 * BAND_SLOTS), "raw Winograd weights need units in shares of pairs");
        let (positions, taps) = (wino.positions(), wino.taps());
        let per_share = units / BAND_SLOTS;
        let (share, pair, odd, xi) = (Index::var(0, 1), Index::var(1, 1), Index::var(2, 1), Index::var(3, 1));
        let local = pair.scaled(2).plus(&odd);
        let first = pair.scaled(2 * positions as i64).plus(&odd.scaled(positions as i64)).plus(&xi);
        let cin_unit = if halves { cin_pad / 2 } else { cin_pad };
        let (kt, next_kt, ch0, next_ch0) = if halves {
            // Unit `2 k + h` is half `h` of block `k`: the next unit is the second half of
            // this block, or the first half of the next one.
            let kt = share.scaled(per_share as i64 / 2).plus(&pair);
            let next_kt = kt.plus(&odd);
            (kt, next_kt, odd.scaled(cin_unit as i64), odd.scaled(-(cin_unit as i64)).offset(cin_unit as i64))
        } else {
            let kt = share.scaled(per_share as i64).plus(&local);
            (kt.clone(), kt.offset(1), Index::constant(0), Index::constant(0))
        };
        RawPipeline {
            kt,
            next_kt,
            ch0,
            next_ch0,
            share,
            xi,
            local,
            first,
            current: odd.clone(),
            next: odd.scaled(-1).offset(1),
            odd,
            per_share,
            halves,
            positions,
            plane: raw_plane_floats(cin_unit, taps, lanes) as i64,
            taps,
            lanes,
        }
    }

    fn task_dims(&self) -> Vec<usize> {
        vec![BAND_SLOTS, self.per_share / 2, 2, self.positions]
    }

    /// Float index in the scratch (argument 3) of slot `slot`, position `pos`, input
    /// channel `ic` of the unit, tap `tap`.
    fn scratch(&self, slot: &Index, pos: &Index, ic: &Index, tap: &Index) -> Index {
        let np = self.positions as i64 * self.plane;
        self.share
            .scaled(2 * np)
            .plus(&slot.scaled(np))
            .plus(&pos.scaled(self.plane))
            .plus(&ic.scaled(self.taps as i64).plus(tap).scaled(self.lanes as i64))
    }

    /// The body: at a share's first task `prologue` (the unit's transform, whole); then
    /// `position(b, transform, accumulate)` for this task's position, which transforms its
    /// part of the next unit's weights when `transform` (in the first `passes` positions
    /// of every unit but the share's last), and adds to `M` when `accumulate` (the second
    /// half).
    fn emit(
        &self,
        b: &mut Builder,
        passes: usize,
        prologue: impl FnOnce(&mut Builder),
        position: impl Fn(&mut Builder, bool, bool),
    ) {
        b.when(Cond::eq(self.first.clone(), 0), prologue);
        let halves = |b: &mut Builder, transforms: bool| {
            if self.halves {
                b.when(Cond::eq(self.odd.clone(), 0), |b| position(b, transforms, false));
                b.when(Cond::eq(self.odd.clone(), 1), |b| position(b, transforms, true));
            } else {
                position(b, transforms, false);
            }
        };
        let last = (self.per_share - 1) as i64;
        b.when(Cond::lt(self.local.clone(), last), |b| {
            b.when(Cond::lt(self.xi.clone(), passes as i64), |b| halves(b, true));
            if passes < self.positions {
                // `xi >= passes`.
                b.when(Cond::lt(self.xi.scaled(-1), 1 - passes as i64), |b| halves(b, false));
            }
        });
        // The share's last unit: with halves, a second half.
        b.when(Cond::eq(self.local.clone(), last), |b| position(b, false, self.halves));
    }
}

/// [`products_row`] for raw weights ([`RawPipeline`]): the first three passes of a block
/// each transform one kernel row `r` of the next block (`G g_r` for every position).
/// Arguments: 0 `M`, 1 `V`, 2 raw weights (`WinogradPacking::raw_index`), 3 the scratch
/// (`[share][slot][xi][ic][tap][lane]`, [`raw_scratch_floats`]).
fn products_row_raw(t: Target, g: &Tiles, cbi: usize, cbo: usize, shape: &str) -> Kernel {
    let lanes = t.lanes;
    let (n, taps) = (g.wino.positions(), g.wino.taps());
    let (rows, cols) = row_block(t, g.tw, g.th);
    let cin_pad = cbi * lanes;
    let pipe = RawPipeline::new(g.wino, cbo, cin_pad, lanes);
    let (xi, kt) = (&pipe.xi, &pipe.kt);
    let mut b = Builder::new(4);
    let consts = Consts::new(&mut b, &g.g);
    let unroll = channel_unroll(t, lanes);
    let acc: Vec<Vec<VReg>> = (0..rows).map(|_| (0..cols).map(|_| b.vreg()).collect()).collect();
    let w: Vec<VReg> = (0..taps).map(|_| b.vreg()).collect();
    let x = b.vreg();
    let raw: Vec<VReg> = (0..3).map(|_| b.vreg()).collect();
    let u = b.vreg();
    // Kernel row `r` of input channel `ic` of output block `block`, transformed into
    // `slot`: `G g_r` for every position.
    let transform = |b: &mut Builder, block: &Index, r: &Index, ic: &Index, slot: &Index| {
        let at = block.scaled(3).plus(r).scaled(cin_pad as i64).plus(ic).scaled((3 * lanes) as i64);
        for (k, &reg) in raw.iter().enumerate() {
            let a = at.offset((k * lanes) as i64);
            b.set(reg, Expr::Src(Src::Load(Addr { arg: 2, index: a.clone() })));
            if t.prefetch {
                b.prefetch(Addr { arg: 2, index: a.offset(PREFETCH_FLOATS as i64) });
            }
        }
        for p in 0..n {
            consts.combine(b, u, None, (0..3).map(|k| (g.g[p * 3 + k], raw[k])));
            let at = pipe.scratch(slot, &Index::constant(p as i64), ic, r);
            b.push(Stmt::Store { addr: Addr { arg: 3, index: at }, src: u });
        }
    };
    let regs = RowRegs { acc, w, x };
    // A block of `r` rows from row `y0` by `c` tiles from tile `x0`; with `transforms`,
    // also kernel row `xi` of the next unit.
    let emit = |b: &mut Builder, y0: &Index, r: usize, x0: &Index, c: usize, transforms: bool| {
        let block = RowBlock { y0, r, x0, c };
        row_products(b, g, &regs, &block, xi, kt, (cbi, cbo, unroll), |b, ic| {
            if transforms {
                transform(b, &pipe.next_kt, xi, ic, &pipe.next);
            }
            for (tap, &wr) in regs.w.iter().enumerate() {
                let at = pipe.scratch(&pipe.current, xi, ic, &Index::constant(tap as i64));
                b.set(wr, Expr::Src(Src::Load(Addr { arg: 3, index: at })));
            }
        });
    };
    let blocks = register_blocks(g.th, rows, g.tw, cols);
    pipe.emit(
        &mut b,
        taps,
        |b| {
            for r in 0..taps {
                b.for_loop(cin_pad, |b, ic| transform(b, kt, &Index::constant(r as i64), &ic, &pipe.current));
            }
        },
        // The next block's kernel row is transformed in the position's first register
        // block only, once per channel.
        |b, transforms, _| blocks.emit(b, true, |b, y0, r, x0, c, first| emit(b, y0, r, x0, c, transforms && first)),
    );
    let name = format!("{}raw_gemm_{shape}", prefix(g));
    b.finish(name, vec!["m", "v", "g", "u"], lanes, pipe.task_dims())
}

/// The register blocks covering `th` rows by `tw` tiles in blocks of `rows` by `cols`
/// (the last ones shorter), in loops.
struct RegisterBlocks {
    full_r: usize,
    rem_r: usize,
    full_c: usize,
    rem_c: usize,
    rows: usize,
    cols: usize,
}

fn register_blocks(th: usize, rows: usize, tw: usize, cols: usize) -> RegisterBlocks {
    RegisterBlocks { full_r: th / rows, rem_r: th % rows, full_c: tw / cols, rem_c: tw % cols, rows, cols }
}

impl RegisterBlocks {
    /// Calls `f(b, y0, rows, x0, cols, first)` for every block, in loops; with `peel`, the
    /// first block is emitted on its own, out of the loops, and only it has `first`.
    fn emit(&self, b: &mut Builder, peel: bool, f: impl Fn(&mut Builder, &Index, usize, &Index, usize, bool)) {
        let (rows, cols) = (self.rows, self.cols);
        let row_blocks = |b: &mut Builder, y0: &Index, r: usize, first: bool| {
            if first && self.full_c > 0 {
                f(b, y0, r, &Index::constant(0), cols, true);
                b.for_loop(self.full_c - 1, |b, xb| f(b, y0, r, &xb.offset(1).scaled(cols as i64), cols, false));
            } else {
                b.for_loop(self.full_c, |b, xb| f(b, y0, r, &xb.scaled(cols as i64), cols, false));
            }
            if self.rem_c > 0 {
                f(b, y0, r, &Index::constant((self.full_c * cols) as i64), self.rem_c, first && self.full_c == 0);
            }
        };
        if peel && self.full_r > 0 {
            row_blocks(b, &Index::constant(0), rows, true);
            b.for_loop(self.full_r - 1, |b, yb| row_blocks(b, &yb.offset(1).scaled(rows as i64), rows, false));
        } else {
            b.for_loop(self.full_r, |b, yb| row_blocks(b, &yb.scaled(rows as i64), rows, false));
        }
        if self.rem_r > 0 {
            row_blocks(b, &Index::constant((self.full_r * rows) as i64), self.rem_r, peel && self.full_r == 0);
        }
    }
}

/// [`products`] for raw weights ([`RawPipeline`], in halves of the input channels where
/// their blocks are even), square tiles, one output vector by every tile in registers:
/// each of a unit's first `lanes` passes transforms one channel in `lanes` of the next
/// unit's weights (`G g G^T`: `G` on the three
/// columns, then on each row of the result, the filter taps read from memory, where they
/// stay in L1). Arguments: 0 `M`, 1 `V`, 2 raw weights (`WinogradPacking::raw_index`), 3
/// the scratch (`[share][slot][xi][ic][lane]`, [`raw_scratch_floats`]).
fn products_raw(t: Target, g: &Tiles, cbi: usize, cbo: usize, shape: &str) -> Kernel {
    let (n, lanes) = (g.tr.n, t.lanes);
    let count = g.count();
    let cin_pad = cbi * lanes;
    let pipe = RawPipeline::new(g.wino, cbo, cin_pad, lanes);
    let cbi_unit = if pipe.halves { cbi / 2 } else { cbi };
    let (xi, kt) = (&pipe.xi, &pipe.kt);
    let mut b = Builder::new(4);
    let consts = Consts::new(&mut b, &g.g);
    let acc: Vec<VReg> = (0..count).map(|_| b.vreg()).collect();
    let wreg = b.vreg();
    let trow: Vec<VReg> = (0..3).map(|_| b.vreg()).collect();
    let u = b.vreg();
    let zero = Index::constant(0);
    // Input channel `ic` of the unit starting at channel `ch0` of output block `block`,
    // transformed into `slot`: row `a` of `G g` (three vectors), then `(G g G^T)[a][c]`
    // for every column `c`.
    let transform = |b: &mut Builder, block: &Index, ch0: &Index, ic: &Index, slot: &Index| {
        let tap = |r: usize, k: usize| {
            let at = block.scaled(cin_pad as i64).plus(ch0).plus(ic).scaled(9).offset((r * 3 + k) as i64);
            Addr { arg: 2, index: at.scaled(lanes as i64) }
        };
        if t.prefetch {
            for q in 0..9 {
                let a = tap(q / 3, q % 3);
                b.prefetch(Addr { arg: 2, index: a.index.offset(PREFETCH_FLOATS as i64) });
            }
        }
        for a in 0..n {
            for (k, &tr) in trow.iter().enumerate() {
                consts.combine_src(b, tr, None, (0..3).map(|r| (g.g[a * 3 + r], Src::Load(tap(r, k)))));
            }
            for c in 0..n {
                consts.combine(b, u, None, (0..3).map(|k| (g.g[c * 3 + k], trow[k])));
                let at = pipe.scratch(slot, &Index::constant((a * n + c) as i64), ic, &zero);
                b.push(Stmt::Store { addr: Addr { arg: 3, index: at }, src: u });
            }
        }
    };
    // The unit's first channel block in `V`.
    let cb0 = if pipe.halves { pipe.odd.scaled(cbi_unit as i64) } else { Index::constant(0) };
    let position = |b: &mut Builder, transforms: bool, accumulate: bool| {
        for (p, &a) in acc.iter().enumerate() {
            let at = g.scratch(count, xi, cbo, kt, &Index::constant(p as i64));
            let init = if accumulate { Expr::Src(Src::Load(Addr { arg: 0, index: at })) } else { Expr::Zero };
            b.set(a, init);
        }
        b.for_loop(cbi_unit, |b, icb| {
            if transforms {
                // Pass `xi` transforms channel `icb` of every `cbi_unit` channels of the next
                // unit: `lanes` passes cover them all.
                let ic = xi.scaled(cbi_unit as i64).plus(&icb);
                transform(b, &pipe.next_kt, &pipe.next_ch0, &ic, &pipe.next);
            }
            let vb = icb.plus(&cb0);
            b.for_loop(lanes, |b, icl| {
                let ic = icb.scaled(lanes as i64).plus(&icl);
                let at = pipe.scratch(&pipe.current, xi, &ic, &zero);
                b.set(wreg, Expr::Src(Src::Load(Addr { arg: 3, index: at })));
                for (p, &a) in acc.iter().enumerate() {
                    let x = g.scratch(g.v_tiles, xi, cbi, &vb, &Index::constant(p as i64)).plus(&icl);
                    b.set(a, Expr::Fma(a, Src::Bcast(Addr { arg: 1, index: x }), Src::Reg(wreg)));
                }
            });
        });
        for (p, &a) in acc.iter().enumerate() {
            let at = g.scratch(count, xi, cbo, kt, &Index::constant(p as i64));
            b.push(Stmt::Store { addr: Addr { arg: 0, index: at }, src: a });
        }
    };
    pipe.emit(
        &mut b,
        lanes,
        |b| b.for_loop(cbi_unit * lanes, |b, ic| transform(b, kt, &pipe.ch0, &ic, &pipe.current)),
        position,
    );
    let name = format!("{}raw_gemm_{shape}", prefix(g));
    b.finish(name, vec!["m", "v", "g", "u"], lanes, pipe.task_dims())
}

/// `y = A^T M A + bias (+ residual) (ReLU)` per tile and output channel block, then the
/// output's halo. Arguments: 0 output, 1 `M`, 2 bias, 3 residual. Tasks: (channel block,
/// tile row).
fn output_transform(
    g: &Tiles,
    c: &Conv,
    lo: &crate::plan::Layout,
    res: Option<&Buffer>,
    claim_m: bool,
    shape: &str,
) -> Kernel {
    let (tr, lanes) = (&g.tr, g.lanes);
    let (n, m, at) = (tr.n, tr.m, &g.at);
    let cblocks = lo.cblocks();
    let mut b = Builder::new(2);
    let (cb, ty) = (Index::var(0, 1), Index::var(1, 1));
    let k = Consts::new(&mut b, at);
    let d: Vec<VReg> = (0..n).map(|_| b.vreg()).collect();
    let s: Vec<VReg> = (0..n).map(|_| b.vreg()).collect();
    let zero = claim_m.then(|| b.vreg());
    let bias = Src::Load(Addr { arg: 2, index: cb.scaled(lanes as i64) });
    // The last tile row and column may hang over the output: rows `>= rows_last` of the
    // last tile row and columns `>= cols_last` of the last tile column are not stored.
    let (rows_last, cols_last) = (g.rows.len() - (g.th - 1) * m, lo.w - (g.tw - 1) * m);
    let not_last_row = Cond::lt(ty.clone(), g.th as i64 - 1);
    let emit_tile = |b: &mut Builder, tx: &Index, cols: usize| {
        let tile = ty.scaled(g.tw as i64).plus(tx);
        let m_at = |i: &Index, j: &Index| Addr {
            arg: 1,
            index: g.scratch(g.count(), &i.scaled(n as i64).plus(j), cblocks, &cb, &tile),
        };
        // Rows: s[i][c] = sum_j M[i][j] A[j][c], into M[i][c] (c < cols).
        b.for_loop(n, |b, i| {
            for (jx, &r) in d.iter().enumerate() {
                b.set(r, Expr::Src(Src::Load(m_at(&i, &Index::constant(jx as i64)))));
            }
            for (col, &dst) in s.iter().take(cols).enumerate() {
                k.combine(b, dst, None, (0..n).map(|jx| (at[col * n + jx], d[jx])));
                b.push(Stmt::Store { addr: m_at(&i, &Index::constant(col as i64)), src: dst });
            }
            // The rest of the row (`cols <= m < n`) is dead: zeros make its lines this
            // core's for the next conv's products, which store to them (`products`' doc:
            // `claim_v`). Not in bands, whose `M` stays on one thread.
            if let Some(zero) = zero {
                b.set(zero, Expr::Zero);
                for col in cols..n {
                    b.push(Stmt::Store { addr: m_at(&i, &Index::constant(col as i64)), src: zero });
                }
            }
        });
        // Columns: y[r][c] = bias + sum_i A^T[r][i] s[i][c], then the epilogue.
        b.for_loop(cols, |b, col| {
            for (i, &r) in d.iter().enumerate() {
                b.set(r, Expr::Src(Src::Load(m_at(&Index::constant(i as i64), &col))));
            }
            for (row, &dst) in s.iter().take(m).enumerate() {
                let y = ty.scaled(m as i64).offset(row as i64);
                let x = tx.scaled(m as i64).plus(&col);
                let emit_row = |b: &mut Builder| {
                    k.combine(b, dst, Some(bias.clone()), (0..n).map(|i| (at[row * n + i], d[i])));
                    epilogue(b, c, lo, res, dst, &cb, &y, &x);
                };
                if row < rows_last {
                    emit_row(b);
                } else {
                    b.when(not_last_row.clone(), emit_row);
                }
            }
        });
    };
    tile_columns(&mut b, g, cols_last, emit_tile);
    for row in 0..m {
        let y = ty.scaled(m as i64).offset(row as i64);
        if row < rows_last {
            zero_halo_of_band_row(&mut b, lanes, 0, lo, &cb, &y, g.rows.clone());
        } else {
            b.when(not_last_row.clone(), |b| zero_halo_of_band_row(b, lanes, 0, lo, &cb, &y, g.rows.clone()));
        }
    }
    finish_output(b, g, c, res, shape, vec![cblocks, g.th])
}

/// `y = A^T M + bias (+ residual) (ReLU)` per row tile and output channel block, then the
/// output's halo. Arguments: 0 output, 1 `M`, 2 bias, 3 residual. Tasks: (channel block,
/// output row).
fn output_transform_row(g: &Tiles, c: &Conv, lo: &crate::plan::Layout, res: Option<&Buffer>, shape: &str) -> Kernel {
    let (tr, lanes) = (&g.tr, g.lanes);
    let (n, m, at) = (tr.n, tr.m, &g.at);
    let cblocks = lo.cblocks();
    let mut b = Builder::new(2);
    let (cb, y) = (Index::var(0, 1), Index::var(1, 1));
    let k = Consts::new(&mut b, at);
    let d: Vec<VReg> = (0..n).map(|_| b.vreg()).collect();
    let s: Vec<VReg> = (0..m).map(|_| b.vreg()).collect();
    let bias = Src::Load(Addr { arg: 2, index: cb.scaled(lanes as i64) });
    // The last tile may hang over the row: its columns `>= cols_last` are not stored.
    let cols_last = lo.w - (g.tw - 1) * m;
    let emit_tile = |b: &mut Builder, tx: &Index, cols: usize| {
        let tile = y.scaled(g.tw as i64).plus(tx);
        for (xi, &r) in d.iter().enumerate() {
            let at = g.scratch(g.count(), &Index::constant(xi as i64), cblocks, &cb, &tile);
            b.set(r, Expr::Src(Src::Load(Addr { arg: 1, index: at })));
        }
        for (col, &dst) in s.iter().take(cols).enumerate() {
            k.combine(b, dst, Some(bias.clone()), (0..n).map(|xi| (at[col * n + xi], d[xi])));
            epilogue(b, c, lo, res, dst, &cb, &y, &tx.scaled(m as i64).offset(col as i64));
        }
    };
    tile_columns(&mut b, g, cols_last, emit_tile);
    zero_halo_of_row(&mut b, lanes, 0, lo, &cb, &y);
    finish_output(b, g, c, res, shape, vec![cblocks, lo.h])
}

/// Emits `emit(tile column, columns to store)` for each tile column of the output: a loop
/// over the whole tiles, then the last tile if it hangs over the output (`cols_last <
/// m` columns of it stored).
fn tile_columns(b: &mut Builder, g: &Tiles, cols_last: usize, emit: impl Fn(&mut Builder, &Index, usize)) {
    let m = g.tr.m;
    let full = if cols_last == m { g.tw } else { g.tw - 1 };
    b.for_loop(full, |b, tx| emit(b, &tx, m));
    if full < g.tw {
        emit(b, &Index::constant(full as i64), cols_last);
    }
}

/// The output transforms' epilogue of one vector `dst` (bias already in): the residual
/// at pixel (`y`, `x`), ReLU, the store.
#[allow(clippy::too_many_arguments)]
fn epilogue(
    b: &mut Builder,
    c: &Conv,
    lo: &crate::plan::Layout,
    res: Option<&Buffer>,
    dst: VReg,
    cb: &Index,
    y: &Index,
    x: &Index,
) {
    if let Some(rb) = res {
        let at = Addr { arg: 3, index: pixel(&rb.layout, cb, y, x) };
        b.set(dst, Expr::Add(dst, Src::Load(at)));
    }
    if c.relu {
        b.set(dst, Expr::Relu(dst));
    }
    b.push(Stmt::Store { addr: Addr { arg: 0, index: pixel(lo, cb, y, x) }, src: dst });
}

/// Names the output transform and finishes it over `tasks`.
fn finish_output(b: Builder, g: &Tiles, c: &Conv, res: Option<&Buffer>, shape: &str, tasks: Vec<usize>) -> Kernel {
    let raw = if g.wino.raw { "raw" } else { "" };
    let mut name = format!("{}{raw}_out_{shape}", prefix(g));
    name += super::epilogue_suffix(c);
    let mut args = vec!["out", "m", "b"];
    if res.is_some() {
        args.push("res");
    }
    b.finish(name, args, g.lanes, tasks)
}
