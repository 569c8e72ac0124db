//! Kernels other than convolution: input packing, max-pool, global average pool, the
//! classifier and output unpacking. Each writes its whole output buffer, halo included.

use super::conv::PREFETCH_FLOATS;
use super::WeightAlloc;
use crate::graph::MaxPool;
use crate::kir::{Addr, Builder, Cond, Expr, Index, Kernel, Src, Stmt};
use crate::plan::{Buffer, Layout, Step};
use crate::target::Target;
use resnetc_runtime::pack::LinearPacking;
use resnetc_runtime::winograd::phase_source;

/// Float index of the vector at channel block `cblock`, row `y`, column `x` (unpadded
/// coordinates, so the halo is added here) of a channel-blocked layout.
pub(crate) fn pixel(l: &Layout, cblock: &Index, y: &Index, x: &Index) -> Index {
    cblock
        .scaled(l.hp() as i64)
        .plus(&y.offset(l.halo as i64))
        .scaled(l.wp() as i64)
        .plus(&x.offset(l.halo as i64))
        .scaled(l.cb as i64)
}

/// Stores `n` zeros at `arg[index..]`: full vectors, then one partial store.
pub(crate) fn zero_span(b: &mut Builder, lanes: usize, arg: usize, index: &Index, n: usize) {
    let z = b.vreg();
    b.set(z, Expr::Zero);
    let full = n / lanes;
    b.for_loop(full, |b, i| {
        b.push(Stmt::Store { addr: Addr { arg, index: index.plus(&i.scaled(lanes as i64)) }, src: z })
    });
    if !n.is_multiple_of(lanes) {
        let at = index.offset((full * lanes) as i64);
        b.push(Stmt::StorePartial { addr: Addr { arg, index: at }, src: z, n: n % lanes });
    }
}

/// Copies `n` floats from `src` to `dst`: full vectors, then one partial vector.
fn copy_span(b: &mut Builder, lanes: usize, dst: (usize, &Index), src: (usize, &Index), n: usize) {
    let v = b.vreg();
    let full = n / lanes;
    b.for_loop(full, |b, i| {
        let off = i.scaled(lanes as i64);
        b.set(v, Expr::Src(Src::Load(Addr { arg: src.0, index: src.1.plus(&off) })));
        b.push(Stmt::Store { addr: Addr { arg: dst.0, index: dst.1.plus(&off) }, src: v });
    });
    if !n.is_multiple_of(lanes) {
        let off = (full * lanes) as i64;
        b.set(v, Expr::LoadPartial(Addr { arg: src.0, index: src.1.offset(off) }, n % lanes));
        b.push(Stmt::StorePartial { addr: Addr { arg: dst.0, index: dst.1.offset(off) }, src: v, n: n % lanes });
    }
}

/// Zeroes the halo of row `y` (a task variable) of channel block `cblock` in `out`
/// (argument `arg`): its left and right border, and, for the first and last row, the
/// border rows above and below.
pub(crate) fn zero_halo_of_row(b: &mut Builder, lanes: usize, arg: usize, l: &Layout, cblock: &Index, y: &Index) {
    zero_halo_of_band_row(b, lanes, arg, l, cblock, y, 0..l.h);
}

/// [`zero_halo_of_row`] for a kernel that writes the band `rows` of the output through
/// a pointer advanced to row `rows.start`: `y` counts from there, and only the band
/// that holds the first (last) row zeroes the border row above (below).
pub(crate) fn zero_halo_of_band_row(
    b: &mut Builder,
    lanes: usize,
    arg: usize,
    l: &Layout,
    cblock: &Index,
    y: &Index,
    rows: std::ops::Range<usize>,
) {
    if l.halo == 0 {
        return;
    }
    let (hp, wp, cb, halo) = (l.hp() as i64, l.wp() as i64, l.cb as i64, l.halo as i64);
    let plane = cblock.scaled(hp * wp * cb);
    let row = |r: &Index| plane.plus(&r.scaled(wp * cb));
    let this_row = row(&y.offset(halo));
    zero_span(b, lanes, arg, &this_row, (halo * cb) as usize);
    zero_span(b, lanes, arg, &this_row.offset((halo + l.w as i64) * cb), (halo * cb) as usize);
    if rows.start == 0 {
        b.when(Cond::eq(y.clone(), 0), |b| {
            zero_span(b, lanes, arg, &plane, (halo * wp * cb) as usize);
        });
    }
    if rows.end == l.h {
        let last = (rows.end - rows.start) as i64;
        b.when(Cond::eq(y.clone(), last - 1), |b| {
            zero_span(b, lanes, arg, &row(&Index::constant(halo + last)), (halo * wp * cb) as usize);
        });
    }
}

/// External NCHW input -> padded arena buffer (channel block 1). Tasks: (row, channel),
/// rows outside channels, so that a thread's share is a block of rows (of every channel),
/// the rows its share of the stem then reads (see [`max_pool`]).
pub fn pack_input(t: Target, step: &Step, out: &Buffer) -> Kernel {
    let l = out.layout;
    assert_eq!(l.cb, 1, "the input buffer is not channel-blocked");
    let mut b = Builder::new(2);
    let (y, c) = (Index::var(0, 1), Index::var(1, 1));
    let dst =
        c.scaled((l.hp() * l.wp()) as i64).plus(&y.offset(l.halo as i64).scaled(l.wp() as i64)).offset(l.halo as i64);
    let src = c.scaled((l.h * l.w) as i64).plus(&y.scaled(l.w as i64));
    copy_span(&mut b, t.lanes, (0, &dst), (1, &src), l.w);
    zero_halo_of_row(&mut b, t.lanes, 0, &l, &c, &y);
    let s = step.out_shape;
    b.finish(format!("pack_input_{}x{}x{}_h{}", s.c, s.h, s.w, l.halo), vec!["out", "x"], t.lanes, vec![l.h, l.c])
}

/// External NCHW input -> its four phases, which the stem reads when it runs over them
/// (`Winograd::phases`; the layout: `plan::phase_layout`). Tasks: rows of the phases,
/// halo included. Each row is zeroed whole, then each phase channel's pixels are copied
/// one float at a time (a broadcast load and a one-lane store: the kernel IR has no
/// strided loads), over the columns and rows where the input has them; the rest stays
/// zero (the stem's padding, the halo, the padded lanes).
pub fn pack_input_phases(t: Target, step: &Step, out: &Buffer) -> Kernel {
    let l = out.layout;
    let s = step.out_shape;
    assert_eq!(l.c, 4 * s.c, "four phases per input channel");
    let (h, w, halo) = (s.h as i64, s.w as i64, l.halo as i64);
    let mut b = Builder::new(1);
    let yp = Index::var(0, 1); // row of the phases' padded rows
    let v = b.vreg();
    for cblock in 0..l.cblocks() {
        let row = Index::constant((cblock * l.hp()) as i64).plus(&yp).scaled((l.wp() * l.cb) as i64);
        zero_span(&mut b, t.lanes, 0, &row, l.wp() * l.cb);
        for lane in 0..l.cb {
            let pc = cblock * l.cb + lane;
            if pc >= l.c {
                break;
            }
            let (ch, a, bp) = resnetc_runtime::winograd::phase_of(s.c, pc);
            // Pixel (y, x) holds input (phase_source(y, a), phase_source(x, b)), `2 y + a -
            // 1` (rising with y): the rows and columns `from..to` whose input index lies
            // inside the input.
            let inside = |p: usize, size: usize, len: usize| {
                let from = (0..len).find(|&i| phase_source(i, p) >= 0).unwrap_or(len);
                let to = (from..len).find(|&i| phase_source(i, p) >= size as isize).unwrap_or(len);
                (from as i64, to as i64)
            };
            let (y0, y1) = inside(a, s.h, l.h);
            let (y0, y1) = (y0 + halo, y1 + halo);
            let (x0, x1) = inside(bp, s.w, l.w);
            // yp >= y0, as -yp < 1 - y0; and yp < y1.
            b.when(Cond::lt(yp.scaled(-1), 1 - y0), |b| {
                b.when(Cond::lt(yp.clone(), y1), |b| {
                    b.for_loop((x1 - x0) as usize, |b, i| {
                        let x = i.offset(x0);
                        // Input pixel (2 y + a - 1, 2 x + b - 1), y = yp - halo.
                        let (sy, sx) = (phase_source(0, a) as i64, phase_source(0, bp) as i64);
                        let src =
                            yp.offset(-halo).scaled(2 * w).plus(&x.scaled(2)).offset((ch as i64) * h * w + sy * w + sx);
                        b.set(v, Expr::Src(Src::Bcast(Addr { arg: 1, index: src })));
                        let dst = row.plus(&x.offset(halo).scaled(l.cb as i64)).offset(lane as i64);
                        b.push(Stmt::StorePartial { addr: Addr { arg: 0, index: dst }, src: v, n: 1 });
                    });
                });
            });
        }
    }
    b.finish(format!("pack_input_phases_{}x{}x{}_h{}", s.c, s.h, s.w, l.halo), vec!["out", "x"], t.lanes, vec![l.hp()])
}

/// Max-pool over channel blocks; tasks: (output row, channel block). Rows outside channel
/// blocks: split across threads, each thread's share is then a block of rows of every
/// channel, as are its shares of the stem before and of the convs after (whose tasks take
/// rows outside output channels, or bands of rows), so the rows it reads were written by
/// its own core. (Channel blocks outside rows, each thread read half its input from the
/// other core. ResNet-18 at 2 threads on a Zen 4 VM whose two vCPUs did not share a cache,
/// per-call minima: max-pool 0.77x the time of that order, the conv after it 0.98x.)
pub fn max_pool(t: Target, p: &MaxPool, step: &Step, input: &Buffer, out: &Buffer) -> Kernel {
    let (li, lo) = (input.layout, out.layout);
    let lanes = t.lanes as i64;
    let mut b = Builder::new(2);
    let (y, cb) = (Index::var(0, 1), Index::var(1, 1));
    let acc = b.vreg();
    b.for_loop(lo.w, |b, x| {
        let mut first = true;
        for ky in 0..p.kernel {
            for kx in 0..p.kernel {
                // Padded input coordinates of the tap (the halo covers the padding).
                let iy = y.scaled(p.stride as i64).offset((ky + li.halo - p.pad) as i64);
                let ix = x.scaled(p.stride as i64).offset((kx + li.halo - p.pad) as i64);
                let idx = cb.scaled(li.hp() as i64).plus(&iy).scaled(li.wp() as i64).plus(&ix).scaled(lanes);
                let src = Src::Load(Addr { arg: 1, index: idx });
                b.set(acc, if first { Expr::Src(src) } else { Expr::Max(acc, src) });
                first = false;
            }
        }
        b.push(Stmt::Store { addr: Addr { arg: 0, index: pixel(&lo, &cb, &y, &x) }, src: acc });
    });
    zero_halo_of_row(&mut b, t.lanes, 0, &lo, &cb, &y);
    let s = step.in_shape;
    let name = format!("maxpool{}x{}s{}p{}_{}x{}x{}_h{}", p.kernel, p.kernel, p.stride, p.pad, s.c, s.h, s.w, li.halo);
    b.finish(name, vec!["out", "in"], t.lanes, vec![lo.h, lo.cblocks()])
}

/// Mean over the spatial positions; tasks: channel blocks.
pub fn global_avg_pool(t: Target, step: &Step, input: &Buffer, out: &Buffer) -> Kernel {
    let li = input.layout;
    let lanes = t.lanes as i64;
    let mut b = Builder::new(1);
    let cb = Index::var(0, 1);
    let acc = b.vreg();
    b.set(acc, Expr::Zero);
    b.for_loop(li.h, |b, y| {
        b.for_loop(li.w, |b, x| {
            b.set(acc, Expr::Add(acc, Src::Load(Addr { arg: 1, index: pixel(&li, &cb, &y, &x) })));
        });
    });
    let scale = b.vreg();
    b.set(scale, Expr::Splat((1.0f32 / (li.h * li.w) as f32).to_bits()));
    b.set(acc, Expr::Mul(acc, Src::Reg(scale)));
    b.push(Stmt::Store { addr: Addr { arg: 0, index: cb.scaled(lanes) }, src: acc });
    assert_eq!((out.layout.h, out.layout.w, out.layout.halo), (1, 1, 0));
    let s = step.in_shape;
    b.finish(
        format!("global_avg_pool_{}x{}x{}_h{}", s.c, s.h, s.w, li.halo),
        vec!["out", "in"],
        t.lanes,
        vec![li.cblocks()],
    )
}

/// The classifier: tasks are blocks of `lanes` outputs, each streaming its contiguous
/// weights (strided by all outputs, each load was a new page, and the 8 MB of ResNet-50's
/// classifier came at 5.6 GB/s); four partial sums over the input features shorten the
/// dependency chain of the accumulation.
pub fn linear(
    t: Target,
    param: &str,
    cin: usize,
    cout: usize,
    input: &Buffer,
    w: &mut WeightAlloc,
) -> (Kernel, LinearPacking) {
    let lanes = t.lanes;
    let (cinp, coutp) = (input.layout.cpad(), cout.div_ceil(lanes) * lanes);
    let packing = LinearPacking {
        param: param.to_string().into(),
        cin,
        cout,
        cinp,
        coutp,
        block: lanes,
        offset: w.take(cinp * coutp),
        bias_offset: w.take(coutp),
    };
    let mut b = Builder::new(1);
    let ob = Index::var(0, lanes as i64);
    let chains = if cinp % 4 == 0 { 4 } else { 1 };
    let acc: Vec<_> = (0..chains).map(|_| b.vreg()).collect();
    b.set(acc[0], Expr::Src(Src::Load(Addr { arg: 3, index: ob.clone() })));
    for &a in &acc[1..] {
        b.set(a, Expr::Zero);
    }
    // Each weight is read once, from memory: prefetched ahead when they do not stay in
    // L2 (ResNet-50's classifier, 8 MB).
    let prefetch = t.prefetch && !t.stays_in_l2(4 * cinp * coutp);
    b.for_loop(cinp / chains, |b, i| {
        for (u, &a) in acc.iter().enumerate() {
            let c = i.scaled(chains as i64).offset(u as i64);
            let x = Src::Bcast(Addr { arg: 1, index: c.clone() });
            let at = ob.scaled(cinp as i64).plus(&c.scaled(lanes as i64));
            if prefetch {
                b.prefetch(Addr { arg: 2, index: at.offset(PREFETCH_FLOATS as i64) });
            }
            b.set(a, Expr::Fma(a, x, Src::Load(Addr { arg: 2, index: at })));
        }
    });
    for &a in &acc[1..] {
        b.set(acc[0], Expr::Add(acc[0], Src::Reg(a)));
    }
    b.push(Stmt::Store { addr: Addr { arg: 0, index: ob }, src: acc[0] });
    let k = b.finish(format!("linear_{cin}x{cout}"), vec!["out", "in", "w", "b"], lanes, vec![coutp / lanes]);
    (k, packing)
}

/// The logits buffer -> the external output.
pub fn unpack_output(t: Target, input: &Buffer) -> Kernel {
    let mut b = Builder::new(1);
    let zero = Index::constant(0);
    copy_span(&mut b, t.lanes, (0, &zero), (1, &zero), input.layout.c);
    b.finish(format!("unpack_output_{}", input.layout.c), vec!["y", "in"], t.lanes, vec![1])
}
