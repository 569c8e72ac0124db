//! Graph rewrites of the middle-end, one small pass each. Each pass keeps the graph's
//! invariant (node index order is a topological order) and the reference semantics.
//!
//! Rewrite rules, one per pass:
//! - `fold_bn`:        `bn(conv(x, W))         = conv(x, W * s) + (beta - mean * s)`,
//!   with `s = gamma / sqrt(var + eps)` per output channel.
//! - `fuse_residual`:  `add(conv(x) + b, r)    = conv(x) with epilogue (+ b + r)`
//! - `fuse_relu`:      `relu(conv(x) + e)      = conv(x) with epilogue (+ e, max 0)`
//!
//! A producer is fused only when the consumer is its only user, so no intermediate value
//! that someone else reads disappears.
//!
//! The last pass, `choose_algorithm`, rewrites nothing: it is the cost model that marks
//! which stride-1 3x3 convs run as Winograd, F(m x m, 3 x 3) or F(1 x m, 3 x 3).

use crate::graph::{Conv, Graph, Op, Shape, Winograd};
use crate::target::Target;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// One graph-to-graph pass.
pub trait Pass {
    fn name(&self) -> &'static str;
    /// Rewrites the graph; returns how many rewrites were made.
    fn run(&self, graph: &mut Graph) -> usize;
}

/// Moves every user of `from` to read `to` instead, keeping operand positions.
fn replace_uses(graph: &mut Graph, from: NodeIndex, to: NodeIndex) {
    let outgoing: Vec<_> =
        graph.g.edges_directed(from, Direction::Outgoing).map(|e| (e.id(), e.target(), *e.weight())).collect();
    for (id, target, operand) in outgoing {
        graph.g.remove_edge(id);
        graph.g.add_edge(to, target, operand);
    }
}

/// The single producer operand of `n` when it is a conv read by nobody else.
fn sole_conv_operand(graph: &Graph, n: NodeIndex, operand: usize) -> Option<NodeIndex> {
    let src = *graph.inputs(n).get(operand)?;
    (matches!(graph.node(src).op, Op::Conv(_)) && graph.users(src) == [n]).then_some(src)
}

pub struct FoldBatchNorm;

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold_bn"
    }

    fn run(&self, graph: &mut Graph) -> usize {
        let mut count = 0;
        for n in graph.schedule() {
            let Op::BatchNorm { param } = graph.node(n).op.clone() else { continue };
            let Some(conv) = sole_conv_operand(graph, n, 0) else { continue };
            let Op::Conv(c) = &mut graph.g[conv].op else { unreachable!() };
            if c.folded_bn.is_some() || c.residual || c.relu {
                continue;
            }
            c.folded_bn = Some(param);
            replace_uses(graph, n, conv);
            graph.g.remove_node(n);
            count += 1;
        }
        count
    }
}

pub struct FuseResidual;

impl Pass for FuseResidual {
    fn name(&self) -> &'static str {
        "fuse_residual"
    }

    fn run(&self, graph: &mut Graph) -> usize {
        let mut count = 0;
        for n in graph.schedule() {
            if graph.node(n).op != Op::Add {
                continue;
            }
            let Some(conv) = sole_conv_operand(graph, n, 0) else { continue };
            let shortcut = graph.inputs(n)[1];
            // The epilogue reads the shortcut, which must exist before the conv runs.
            if shortcut > conv {
                continue;
            }
            let Op::Conv(c) = &mut graph.g[conv].op else { unreachable!() };
            if c.residual || c.relu {
                continue;
            }
            c.residual = true;
            graph.g.add_edge(shortcut, conv, 1);
            replace_uses(graph, n, conv);
            graph.g.remove_node(n);
            count += 1;
        }
        count
    }
}

pub struct FuseRelu;

impl Pass for FuseRelu {
    fn name(&self) -> &'static str {
        "fuse_relu"
    }

    fn run(&self, graph: &mut Graph) -> usize {
        let mut count = 0;
        for n in graph.schedule() {
            if graph.node(n).op != Op::Relu {
                continue;
            }
            let Some(conv) = sole_conv_operand(graph, n, 0) else { continue };
            let Op::Conv(c) = &mut graph.g[conv].op else { unreachable!() };
            if c.relu {
                continue;
            }
            c.relu = true;
            replace_uses(graph, n, conv);
            graph.g.remove_node(n);
            count += 1;
        }
        count
    }
}

/// Largest number of convs run as F(4x4, 3x3) in one model, the float32 error budget:
/// F(4,3)'s error grows with depth (DESIGN.md: <= 3.4e-5 on ResNet-18/34/50, ~1e-4 with
/// every 3x3 conv of ResNet-101/152), and the tolerance is 1e-4. An F(3,3) conv spends
/// half an F(4,3) (measured in float32 over a 256-channel sum: 2.2e-6 against 4.3e-6),
/// F(2,3) nothing (0.6e-6); once the budget is spent, convs fall back to smaller tiles.
pub const MAX_F4_LAYERS: usize = 16;

/// Error units of one Winograd conv (F(4,3) = 2), against a budget of
/// `2 * MAX_F4_LAYERS`. Along rows only one dimension is transformed, which errs less;
/// counted as the square tile all the same. The stem's F(3x3, 4x4) over its phases
/// interpolates at F(4,3)'s six points: counted as an F(4,3), 2 units.
fn error_units(w: Winograd) -> usize {
    if w.phases {
        return 2;
    }
    match w.m {
        4 => 2,
        3 => 1,
        _ => 0,
    }
}

/// The share of a row product's weight re-reads from L2 (one per register block after
/// the first) that the estimate counts: there each weight vector feeds the tiles of up
/// to three rows, and the re-reads overlap the FMAs better than in square products.
/// Calibrated on 7x7x512 (per-kernel minima, Rust, 1 thread): F(1x2) in two row blocks
/// measured the same as F(2,3) (ResNet-34: 10.35 against 10.22 ms over five convs) and
/// slower than F(1x3) in one block (about 0.1-0.3 ms per conv); counted whole, F(1x2)
/// was estimated 5% slower than F(2,3). Only on the target it was measured on (32
/// registers); elsewhere the re-reads count whole.
const ROW_REREAD_SHARE: f64 = 0.5;

/// Winograd must beat direct convolution by this factor in the cost model: the model is
/// coarse, and a wrong Winograd choice also costs accuracy.
const WINOGRAD_MARGIN: f64 = 0.8;

/// Whether the environment variable `name` is set to anything but `0`: the cost model's
/// escape hatches for measurements.
fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v != "0")
}

/// The cost model of the conv algorithm, per target: for pad-1, ungrouped 3x3 convs with at least
/// 16 input and output channels (stride 1, or 2 below), Winograd F(m, 3) (m = 4, 3 or 2) when its
/// estimated time beats direct convolution's by [`WINOGRAD_MARGIN`]. What decides: Winograd cuts
/// multiplies 4x (m = 4), 3.24x (m = 3) or 2.25x (m = 2), but its transformed weights are 4x (2.8x,
/// 1.8x) larger, streamed from memory once per image and re-read from L2 once per block of tiles;
/// direct convolution re-reads all its weights from L2 once per output row (an upper bound where a
/// task covers two rows or the whole output, see `kernels/conv.rs`), or streams them once when they
/// do not stay in L2 and its input does (output-channel tiles outside rows). So on 7x7x512 outputs
/// F(4,3) loses to direct convolution on AVX-512 while F(2,3) wins, and on the slower Cranelift
/// target F(4,3) wins at every size of ResNet. Tiles along rows, F(1 x m, 3 x 3), cut multiplies
/// only 1.5x (m = 2), 1.8x (m = 3) or 2x (m = 4) but their weights grow only 1.3x (1.7x, 2x): on
/// AVX-512 F(1x3) beats F(2,3) at 7x7x512 (measured 0.86x the time), and under a weight budget they
/// are the cheap way to give bytes back. For stride-2 3x3 convs the one candidate is the strided
/// F(2 x 2, 3 x 3) (25 multiplies per 2x2 outputs instead of 36, weights 1.8x larger: 16 of its
/// 25 positions are distinct): it pays where its weights stay small (ResNet-50's 28x28 and 14x14
/// outputs), not where they stream from memory (its 7x7x512 conv: when all 25 positions were
/// stored, 26 MB against 9.4, measured 1.15x the direct conv's time; 16.8 MB now). Sizes that
/// do not tile evenly compute whole tiles and store the valid part. A 7x7 stride-2 stem that is
/// the model input's only reader may run as F(3 x 3, 4 x 4) over its input's four phases
/// (`Winograd::phases`: 3.1x fewer multiplies, its weights 2.9x larger; on ResNet's stem
/// 1.44 against 2.19 ms with the input's copy, Rust, 1 thread). The constants in [`Target`]
/// were calibrated on the per-kernel times of ResNet-18 and ResNet-50 (`RESNETC_PROFILE`).
pub struct ChooseAlgorithm {
    pub target: Target,
}

/// Bytes of a conv's weights, direct (`None`) or Winograd, without the padding to whole
/// vectors.
fn weight_bytes(c: &Conv, w: Option<Winograd>) -> usize {
    4 * w.map_or(c.weight_count(), |w| w.stored_weights() * c.computed_by(Some(w)).cin * c.cout)
}

/// The share of a model's estimated conv time that raw weights (`Winograd::raw`: 9
/// floats per channel pair instead of 15 at F(1x3), 16 at F(2,3), 25 at F(3,3)) may add
/// by default, taken where they cost the least time per byte saved: memory for a little
/// time, which a weight budget (`Target::weight_budget`) trades further. On ResNet-50
/// (Rust, Zen 5) this takes its two 7x7x512 convs at F(1x3) (1.00x the products' time,
/// per-call minima) and two of its five 14x14x256 convs at F(3,3) (1.20x).
const RAW_TIME_SHARE: f64 = 0.01;

/// How fast the products with raw weights over square tiles store the transformed
/// weights to their scratch, GB/s: each channel's `n^2` positions go to as many planes,
/// which cost more than their arithmetic (ResNet-50's 14x14x256 convs at F(3,3) on the
/// Zen 5: 1.20x the stored weights' products' time, 1.08x with the stores all to one
/// line). Along rows, 5 planes per channel, they measured free (ResNet-50's 7x7x512 at
/// F(1x3): 1.00x), and are not counted.
const RAW_SQUARE_STORE_GBYTES: f64 = 160.0;

/// Estimated seconds of one image's conv, direct (`None`) or Winograd.
/// `c` is the graph's conv; over the stem's phases the estimate is of the 4x4 conv the
/// algorithm computes (`Conv::computed_by`), its weights those `weight_bytes` counts.
pub fn conv_seconds(t: Target, c: &Conv, out: Shape, algorithm: Option<Winograd>) -> f64 {
    let (cin, cout) = (c.computed_by(algorithm).cin as f64, c.cout as f64);
    let compute = |macs: f64| 2.0 * macs / (t.gflops as f64 * 1e9);
    let memory = |bytes: f64| bytes / (t.weight_gbytes as f64 * 1e9);
    // Re-reads of `bytes` of weights, `times` over, when a tile's share misses L1.
    let l2 = |bytes: f64, tile_bytes: f64, times: f64| {
        if tile_bytes >= t.l1_bytes as f64 {
            bytes * times / (t.l2_gbytes as f64 * 1e9)
        } else {
            0.0
        }
    };
    // Output channels of one register tile (J vectors). With 32 registers the direct
    // convs take 2 vectors wherever their rows allow (`kernels::conv::wide_tile`); the
    // estimate keeps 4, the shape its L2 figures were calibrated with.
    let jl = cout.min(if t.vregs >= 32 { 4 * t.lanes } else { t.lanes } as f64);
    match algorithm {
        None => {
            let k2 = (c.kernel * c.kernel) as f64;
            let bytes = weight_bytes(c, None) as f64;
            let macs = (out.h * out.w) as f64 * cout * k2 * cin / c.groups as f64;
            // Weights that do not stay in L2 beside an input that does: the kernel takes
            // output-channel tiles outside rows (`kernels/conv.rs`), so it streams the
            // weights once and re-reads the input from L2 once per tile instead, under its
            // FMAs (ResNet-50's strided 3x3 over 512x14x14: 244 GFLOP/s, compute-bound).
            let input = 4 * c.cin * out.h * out.w * c.stride * c.stride;
            let rereads = if !t.stays_in_l2(bytes as usize) && t.stays_in_l2(input) {
                0.0
            } else {
                l2(bytes, 4.0 * k2 * cin / c.groups as f64 * jl, out.h as f64)
            };
            compute(macs).max(memory(bytes)) + rereads
        }
        Some(w) => {
            let (nn, taps) = (w.positions() as f64, w.taps() as f64);
            let (tiles, v_tiles) = crate::plan::winograd_tiles(w, out);
            // As `kernels::winograd` blocks the products: (output vectors, tile blocks). A
            // conv is estimated whole: bands (`plan::winograd_band_rows`) split convs whose
            // weights fit the band budget, and strided ones whose scratch outweighs their
            // weights, and keep their transforms' scratch in cache, which the estimate does
            // not count (it errs towards direct convolution).
            let (j, blocks) = if w.row {
                let (tw, th) = w.grid(out.h, out.w);
                let (rows, cols) = crate::kernels::winograd_row_block(t, tw, th);
                (1, th.div_ceil(rows) * tw.div_ceil(cols))
            } else {
                let pt = crate::kernels::winograd_product_tile(t, c.cout.div_ceil(t.lanes), tiles, false);
                (pt.j, tiles.div_ceil(pt.tiles))
            };
            let jl = cout.min((j * t.lanes) as f64);
            // The transformed weights: stored, or with raw weights made by the products.
            let u_bytes = weight_bytes(c, Some(Winograd { raw: false, ..w })) as f64;
            let blocks = blocks as f64;
            let rereads = l2(u_bytes, 4.0 * taps * cin * jl, blocks - 1.0);
            let rereads = if w.row && t.vregs >= 32 { ROW_REREAD_SHARE * rereads } else { rereads };
            let macs = nn * tiles as f64 * taps * cin * cout;
            let products = if w.raw {
                // The transform's arithmetic on top of the FMAs (each operation counted as
                // a multiply-add), under which the raw weights stream; the transformed
                // ones go through the scratch in L2, uncounted.
                let ops = crate::kernels::winograd_raw_transform_ops(w) as f64;
                let raw = weight_bytes(c, Some(w)) as f64;
                let stores = if w.row { 0.0 } else { u_bytes / (RAW_SQUARE_STORE_GBYTES * 1e9) };
                compute(macs + ops * cin * cout).max(memory(raw)) + stores + rereads
            } else {
                compute(macs).max(memory(u_bytes)) + rereads
            };
            let scratch = 4.0 * nn * (v_tiles as f64 * cin + tiles as f64 * cout);
            products + scratch / (t.transform_gbytes as f64 * 1e9)
        }
    }
}

/// The algorithms a conv may run on `t` with their estimated seconds: direct
/// convolution (`None`) always, Winograd F(m x m, 3 x 3) and F(1 x m, 3 x 3) (stride 1) or
/// the strided F(2 x 2, 3 x 3) (stride 2) where the conv is eligible and the estimate
/// beats direct convolution's by [`WINOGRAD_MARGIN`]. (On the Cranelift JIT the strided
/// one measured 0.94x the direct conv's time on ResNet-50's 14x14 output, 0.84-0.92x on
/// 28x28, both chosen, and 1.18x on 7x7x512, not chosen.)
///
/// A stem (`stem`: the model input's only reader) of 7x7 with stride 2 and padding 3 may
/// run over its input's phases (`Winograd::phases`, `Conv::phase_stem`), estimated as the
/// 4x4 conv it computes; `RESNETC_NO_PHASES` turns that off, for measurements.
fn algorithms(t: Target, c: &Conv, out: Shape, stem: bool) -> Vec<(Option<Winograd>, f64)> {
    let direct = conv_seconds(t, c, out, None);
    let mut options = vec![(None, direct)];
    if stem && c.phase_stem() && !env_flag("RESNETC_NO_PHASES") {
        let w = Winograd::phases();
        let cost = conv_seconds(t, c, out, Some(w));
        if cost < WINOGRAD_MARGIN * direct {
            options.push((Some(w), cost));
        }
    }
    let eligible = c.kernel == 3 && c.pad == 1 && c.groups == 1 && c.cin >= 16 && c.cout >= 16;
    let candidates: Vec<Winograd> = match c.stride {
        1 => [2, 3, 4].into_iter().flat_map(|m| [Winograd::square(m), Winograd::row(m)]).collect(),
        2 => vec![Winograd::strided()],
        _ => vec![],
    };
    if eligible {
        for w in candidates {
            let raw = crate::kernels::winograd_raw_fits(t, c, w, out).then(|| w.with_raw_weights());
            for w in std::iter::once(w).chain(raw) {
                let cost = conv_seconds(t, c, out, Some(w));
                if cost < WINOGRAD_MARGIN * direct {
                    options.push((Some(w), cost));
                }
            }
        }
    }
    options
}

/// A conv of the allocation: its node, its algorithms with their estimated seconds (see
/// [`algorithms`]) and the index of the one chosen so far.
type Choice = (NodeIndex, Vec<(Option<Winograd>, f64)>, usize);

/// The move `(conv, algorithm)` with the lowest `score(node, chosen, candidate)` among
/// those it scores (`None`: not a move); the first such on ties.
fn best_move(
    convs: &[Choice],
    score: impl Fn(NodeIndex, (Option<Winograd>, f64), (Option<Winograd>, f64)) -> Option<f64>,
) -> Option<(usize, usize)> {
    let mut best: Option<(f64, usize, usize)> = None;
    for (k, (n, options, at)) in convs.iter().enumerate() {
        for (i, &option) in options.iter().enumerate() {
            if let Some(v) = score(*n, options[*at], option) {
                if best.is_none_or(|(b, _, _)| v < b) {
                    best = Some((v, k, i));
                }
            }
        }
    }
    best.map(|(_, k, i)| (k, i))
}

impl Pass for ChooseAlgorithm {
    fn name(&self) -> &'static str {
        "choose_algorithm"
    }

    /// Each conv starts at its fastest algorithm that spends no error budget (direct,
    /// F(2,3), along rows F(1x2), or the strided F(2 x 2, 3 x 3)); then, greedily, the
    /// upgrade to a larger tile that saves the most estimated time per error unit is
    /// taken while the budget lasts ([`MAX_F4_LAYERS`]). So the
    /// budget goes where larger tiles save most, not to the first convs met (on deep
    /// networks whose 3x3 convs would spend it several times over). Last, 1x1 convs take
    /// Strassen where the target has it (`kernels::strassen_fits`); `RESNETC_NO_STRASSEN`
    /// turns it off, for measurements.
    fn run(&self, graph: &mut Graph) -> usize {
        // An escape hatch for measurements and bit-level comparisons with direct convolution
        // (with `RESNETC_NO_STRASSEN` on targets that have Strassen).
        let disabled = env_flag("RESNETC_NO_WINOGRAD");
        let units = |w: Option<Winograd>| w.map_or(0, error_units);
        let is_raw = |w: Option<Winograd>| w.is_some_and(|w| w.raw);
        let mut convs: Vec<Choice> = vec![];
        for n in graph.schedule() {
            let Op::Conv(c) = &graph.node(n).op else { continue };
            let stem = graph.reads_only_the_input(n);
            let options =
                if disabled { vec![(None, 0.0)] } else { algorithms(self.target, c, graph.node(n).shape, stem) };
            // Speed picks among stored weights; raw ones come after (see below).
            let start = (0..options.len())
                .filter(|&i| units(options[i].0) == 0 && !is_raw(options[i].0))
                .min_by(|&a, &b| options[a].1.total_cmp(&options[b].1))
                .expect("direct convolution is always an option");
            convs.push((n, options, start));
        }
        let mut error_budget = 2 * MAX_F4_LAYERS;
        // Upgrades score minus the seconds they save per error unit.
        while let Some((k, i)) = best_move(&convs, |_, (m0, t0), (m, t)| {
            if is_raw(m) {
                return None;
            }
            let extra = units(m).checked_sub(units(m0)).filter(|&e| e > 0 && e <= error_budget)?;
            (t < t0).then(|| -(t0 - t) / extra as f64)
        }) {
            let (_, options, at) = &mut convs[k];
            error_budget -= units(options[i].0) - units(options[*at].0);
            *at = i;
        }
        // Raw weights, for at most [`RAW_TIME_SHARE`] more estimated time, where they
        // cost the least per byte saved (those estimated faster first).
        let bytes = |n: NodeIndex, w: Option<Winograd>| match &graph.node(n).op {
            Op::Conv(c) => weight_bytes(c, w),
            _ => 0,
        };
        let mut allowance = RAW_TIME_SHARE * convs.iter().map(|(_, o, at)| o[*at].1).sum::<f64>();
        while let Some((k, i)) = best_move(&convs, |n, (m0, t0), (m, t)| {
            let twin = m0.filter(|w| !w.raw).map(Winograd::with_raw_weights);
            (m.is_some() && m == twin && t - t0 <= allowance)
                .then(|| (t - t0).max(0.0) / bytes(n, m0).saturating_sub(bytes(n, m)).max(1) as f64)
        }) {
            let (_, options, at) = &mut convs[k];
            allowance -= (options[i].1 - options[*at].1).max(0.0);
            *at = i;
        }
        // A weight budget: give back the Winograd choices that cost the least time per
        // byte saved until the weights fit (or every conv holds the direct weights'
        // bytes, direct or raw). Sizes are estimated
        // without the padding to whole vectors; the classifier's weights count as they are.
        if let Some(budget) = self.target.weight_budget {
            let fixed: usize = graph
                .g
                .node_weights()
                .map(|node| match &node.op {
                    Op::Linear { cin, cout, .. } => 4 * cin * cout,
                    _ => 0,
                })
                .sum();
            let mut total: usize = fixed + convs.iter().map(|(n, o, at)| bytes(*n, o[*at].0)).sum::<usize>();
            while total > budget {
                // Downgrades score the seconds they add per byte they save. Fewer bytes
                // may still cost error units (a square F(2,3) to F(1x3) along rows): only
                // within what the error budget has left.
                let Some((k, i)) = best_move(&convs, |n, (m0, t0), (m, t)| {
                    let (now, b) = (bytes(n, m0), bytes(n, m));
                    let affordable = units(m) <= units(m0) + error_budget;
                    (b < now && affordable).then(|| (t - t0).max(0.0) / (now - b) as f64)
                }) else {
                    break;
                };
                let (n, options, at) = &mut convs[k];
                error_budget = error_budget + units(options[*at].0) - units(options[i].0);
                total -= bytes(*n, options[*at].0) - bytes(*n, options[i].0);
                *at = i;
            }
        }
        // 1x1 convs run as Strassen wherever the target and their shape allow; not under a
        // weight budget (its weight sums take 7/4 of the direct weights' bytes).
        let strassen = !env_flag("RESNETC_NO_STRASSEN") && self.target.weight_budget.is_none();
        let mut count = 0;
        for (n, options, at) in convs {
            let shape = graph.node(n).shape;
            let Op::Conv(c) = &mut graph.g[n].op else { unreachable!("collected as a conv") };
            c.winograd = options[at].0;
            c.strassen = strassen && crate::kernels::strassen_fits(self.target, c, shape);
            count += (c.winograd.is_some() || c.strassen) as usize;
        }
        count
    }
}

/// The middle-end's passes, in order.
pub fn standard() -> Vec<Box<dyn Pass>> {
    vec![Box::new(FoldBatchNorm), Box::new(FuseResidual), Box::new(FuseRelu)]
}

/// Runs the standard passes; returns the fused graph and per-pass rewrite counts.
pub fn fuse(graph: &Graph) -> (Graph, Vec<(&'static str, usize)>) {
    let mut g = graph.clone();
    let counts = standard().iter().map(|p| (p.name(), p.run(&mut g))).collect();
    (g, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{preset, PRESETS};

    #[test]
    fn no_batchnorm_relu_or_add_survives_in_any_preset() {
        for name in PRESETS {
            let graph = crate::from_spec::build(&preset(name).unwrap()).unwrap();
            let (fused, _) = fuse(&graph);
            for n in fused.schedule() {
                let op = &fused.node(n).op;
                assert!(!matches!(op, Op::BatchNorm { .. } | Op::Relu | Op::Add), "{name}: {op:?} left");
                if let Op::Conv(c) = op {
                    assert!(c.folded_bn.is_some(), "{name}: conv {} without folded BN", fused.node(n).name);
                }
            }
            let edges_forward = fused.g.edge_indices().all(|e| {
                let (a, b) = fused.g.edge_endpoints(e).unwrap();
                a < b
            });
            assert!(edges_forward, "{name}: schedule invariant broken");
        }
    }

    #[test]
    fn resnet50_has_53_convs() {
        let graph = crate::from_spec::build(&preset("resnet50").unwrap()).unwrap();
        let (fused, counts) = fuse(&graph);
        let convs = fused.schedule().into_iter().filter(|&n| matches!(fused.node(n).op, Op::Conv(_))).count();
        assert_eq!(convs, 53);
        assert_eq!(counts, vec![("fold_bn", 53), ("fuse_residual", 16), ("fuse_relu", 49)]);
    }

    /// Winograd error units a graph's chosen algorithms spend.
    fn error_units_spent(g: &Graph) -> usize {
        g.g.node_weights()
            .filter_map(|node| match &node.op {
                Op::Conv(c) => c.winograd.map(error_units),
                _ => None,
            })
            .sum()
    }

    /// No preset spends more than the error budget on either target, and a deep network
    /// spends all of it (the greedy allocation stops only when the budget is gone).
    #[test]
    fn winograd_error_budget_holds_on_every_preset() {
        for name in PRESETS {
            let (fused, _) = fuse(&crate::from_spec::build(&preset(name).unwrap()).unwrap());
            for target in [Target::AVX512, Target::CRANELIFT_X64] {
                let mut g = fused.clone();
                ChooseAlgorithm { target }.run(&mut g);
                let spent = error_units_spent(&g);
                assert!(spent <= 2 * MAX_F4_LAYERS, "{name} on {}: {spent} error units", target.name);
                if *name == "resnet152" {
                    assert_eq!(spent, 2 * MAX_F4_LAYERS, "{name} on {}", target.name);
                }
            }
        }
    }

    /// A weight budget never buys bytes with error the budget does not have (a square
    /// F(3,3) to F(1x4) along rows saves bytes but costs a unit): every preset, for weight
    /// budgets from generous to tight.
    #[test]
    fn weight_budget_keeps_the_error_budget() {
        for name in PRESETS {
            let (fused, _) = fuse(&crate::from_spec::build(&preset(name).unwrap()).unwrap());
            for mb in (10..=400).step_by(10) {
                let mut g = fused.clone();
                let target = Target::AVX512.with_weight_budget(Some(mb << 20));
                ChooseAlgorithm { target }.run(&mut g);
                let spent = error_units_spent(&g);
                assert!(spent <= 2 * MAX_F4_LAYERS, "{name} at {mb} MB: {spent} error units");
            }
        }
    }

    /// A weight budget bounds the packed weights (conv weights estimated unpadded, plus
    /// the classifier's): ResNet-50 fits 110 MiB by giving back some Winograd convs (not
    /// all), and a budget below its direct weights leaves every conv at the direct
    /// weights' bytes.
    #[test]
    fn weight_budget_bounds_the_conv_weights() {
        let (fused, _) = fuse(&crate::from_spec::build(&preset("resnet50").unwrap()).unwrap());
        let choose = |budget: Option<usize>| {
            let mut g = fused.clone();
            ChooseAlgorithm { target: Target::AVX512.with_weight_budget(budget) }.run(&mut g);
            g.schedule()
                .into_iter()
                .filter_map(|n| match &g.node(n).op {
                    Op::Conv(c) => Some((c.winograd, weight_bytes(c, c.winograd), weight_bytes(c, None))),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        type Chosen = [(Option<Winograd>, usize, usize)];
        let classifier = 4 * 2048 * 1000;
        let total = |v: &Chosen| classifier + v.iter().map(|x| x.1).sum::<usize>();
        let winograd = |v: &Chosen| v.iter().filter(|x| x.0.is_some()).count();
        let free = choose(None);
        let budget = 110 << 20;
        assert!(total(&free) > budget, "the test needs a budget that binds");
        let bound = choose(Some(budget));
        assert!(total(&bound) <= budget, "{} bytes", total(&bound));
        assert!(winograd(&bound) > 0 && winograd(&bound) <= winograd(&free));
        // Below the direct weights every conv holds as few bytes as direct convolution:
        // direct, or Winograd with raw weights.
        let none = choose(Some(1));
        assert!(none.iter().all(|x| x.1 == x.2 && x.0.is_none_or(|w| w.raw)), "{none:?}");
    }

    /// Raw weights add at most `RAW_TIME_SHARE` of a model's estimated conv time, in
    /// every preset, and only on targets that have them; ResNet-50 takes them for its
    /// 7x7x512 convs at F(1x3) (estimated the cheapest per byte) and some 14x14x256 ones.
    #[test]
    fn raw_weights_take_their_time_share() {
        for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] {
            let (fused, _) = fuse(&crate::from_spec::build(&preset(name).unwrap()).unwrap());
            for target in [Target::AVX512, Target::CRANELIFT_X64] {
                let mut g = fused.clone();
                ChooseAlgorithm { target }.run(&mut g);
                let (mut total, mut extra, mut raw) = (0.0, 0.0, vec![]);
                for n in g.schedule() {
                    let Op::Conv(c) = &g.node(n).op else { continue };
                    let shape = g.node(n).shape;
                    let t = conv_seconds(target, c, shape, c.winograd);
                    total += t;
                    if let Some(w) = c.winograd.filter(|w| w.raw) {
                        extra += t - conv_seconds(target, c, shape, Some(Winograd { raw: false, ..w }));
                        raw.push((shape.h, w));
                    }
                }
                assert!(extra <= RAW_TIME_SHARE * total, "{name} {}: {extra} of {total} s", target.name);
                assert!(target.raw_winograd || raw.is_empty(), "{name} {}: {raw:?}", target.name);
                if name == "resnet50" && target.raw_winograd {
                    assert_eq!(raw.iter().filter(|(h, w)| *h == 7 && w.row && w.m == 3).count(), 2, "{raw:?}");
                    assert!(raw.iter().any(|(h, w)| *h == 14 && !w.row), "{raw:?}");
                }
            }
        }
    }

    #[test]
    fn cost_model_picks_winograd_where_it_pays() {
        let graph = crate::from_spec::build(&preset("resnet18").unwrap()).unwrap();
        let (fused, _) = fuse(&graph);
        let chosen = |target: Target| {
            let mut g = fused.clone();
            ChooseAlgorithm { target }.run(&mut g);
            g.schedule()
                .into_iter()
                .filter_map(|n| match &g.node(n).op {
                    Op::Conv(c) if c.kernel == 3 && c.stride == 1 => Some((g.node(n).shape.h, c.winograd)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        // AVX-512: F(4,3) down to 28x28; at 14x14x256 F(4,3)'s products wait on its
        // 9.4 MB of transformed weights, F(3,3)'s 6.6 MB arrive as fast as 25 tiles in
        // registers use them; at 7x7x512 the 4x larger transformed weights (37.7 MB per
        // conv) cost more than the multiplies saved, F(2,3)'s 16.8 MB less, and F(1x3)
        // along rows streams 15.7 MB with all 21 tiles in registers.
        // (The weights may be stored raw: `raw_weights_take_their_time_share`.)
        for (h, w) in chosen(Target::AVX512) {
            let w = w.map(|w| Winograd { raw: false, ..w });
            let want = match h {
                28.. => Winograd::square(4),
                14 => Winograd::square(3),
                _ => Winograd::row(3),
            };
            assert_eq!(w, Some(want), "avx512, {h}x{h}");
        }
        // Cranelift computes 4.5x slower: F(4,3) everywhere, its multiplies outweighing
        // even the 37.7 MB of transformed weights per 7x7x512 conv.
        for (h, w) in chosen(Target::CRANELIFT_X64) {
            assert_eq!(w, Some(Winograd::square(4)), "cranelift, {h}x{h}");
        }
    }
}
