//! Graph rewrites of the middle-end, one small pass each. Each pass keeps the graph's
//! invariant (node index order is a topological order) and the reference semantics.
//!
//! Rewrite rules, one per pass:
//! - `fold_bn`:        `bn(conv(x, W))         = conv(x, W * s) + (beta - mean * s)`,
//!                     with `s = gamma / sqrt(var + eps)` per output channel.
//! - `fuse_residual`:  `add(conv(x) + b, r)    = conv(x) with epilogue (+ b + r)`
//! - `fuse_relu`:      `relu(conv(x) + e)      = conv(x) with epilogue (+ e, max 0)`
//!
//! A producer is fused only when the consumer is its only user, so no intermediate value
//! that someone else reads disappears.
//!
//! The last pass, `choose_algorithm`, rewrites nothing: it is the cost model that marks
//! which stride-1 3x3 convs run as Winograd F(m x m, 3 x 3).

use crate::graph::{Conv, Graph, Op, Shape};
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

/// Largest number of convs run as F(4x4, 3x3) in one model; later ones fall back to
/// F(2x2, 3x3). F(4,3)'s float32 error grows with depth (DESIGN.md: <= 3.4e-5 on
/// ResNet-18/34/50, ~1e-4 with every 3x3 conv of ResNet-101/152), and the tolerance is 1e-4.
pub const MAX_F4_LAYERS: usize = 16;

/// Winograd must beat direct convolution by this factor in the cost model: the model is
/// coarse, and a wrong Winograd choice also costs accuracy.
const WINOGRAD_MARGIN: f64 = 0.8;

/// The cost model of the conv algorithm, per target: for stride-1, pad-1, ungrouped 3x3
/// convs with at least 16 input and output channels, Winograd F(m, 3) (m = 4 or 2) when
/// its estimated time beats direct convolution's by [`WINOGRAD_MARGIN`]. What decides:
/// Winograd cuts multiplies 4x (m = 4) or 2.25x (m = 2), but its transformed weights are
/// 4x (1.8x) larger, streamed from memory once per image and re-read from L2 once per
/// block of tiles; direct convolution re-reads all its weights from L2 once per output
/// row. So on 7x7x512 outputs F(4,3) loses to direct convolution on a fast target while
/// F(2,3) wins, and on a slow target F(4,3) wins everywhere. Sizes that do not tile evenly
/// compute whole tiles and store the valid part. The constants in [`Target`] were
/// calibrated on the per-kernel times of ResNet-18 and ResNet-50 (`RESNETC_PROFILE`).
pub struct ChooseAlgorithm {
    pub target: Target,
}

/// Estimated seconds of one image's conv, direct (`m = None`) or Winograd F(m, 3).
pub fn conv_seconds(t: Target, c: &Conv, out: Shape, m: Option<usize>) -> f64 {
    let (cin, cout) = (c.cin as f64, c.cout as f64);
    let compute = |macs: f64| 2.0 * macs / (t.gflops as f64 * 1e9);
    let memory = |bytes: f64| bytes / (t.weight_gbytes as f64 * 1e9);
    // Re-reads of `bytes` of weights, `times` over, when a tile's share misses L1.
    let l2 = |bytes: f64, tile_bytes: f64, times: f64| {
        if tile_bytes > t.l1_tile_weight_bytes as f64 {
            bytes * times / (t.l2_gbytes as f64 * 1e9)
        } else {
            0.0
        }
    };
    // Output channels of one register tile (J vectors).
    let jl = cout.min(if t.vregs >= 32 { 4 * t.lanes } else { t.lanes } as f64);
    match m {
        None => {
            let k2 = (c.kernel * c.kernel) as f64;
            let bytes = 4.0 * c.weight_count() as f64;
            let macs = (out.h * out.w) as f64 * cout * k2 * cin / c.groups as f64;
            compute(macs).max(memory(bytes)) + l2(bytes, 4.0 * k2 * cin / c.groups as f64 * jl, out.h as f64)
        }
        Some(m) => {
            let nn = ((m + 2) * (m + 2)) as f64;
            let tiles = out.h.div_ceil(m) * out.w.div_ceil(m);
            // As `kernels::winograd` blocks the products.
            let per_block = if tiles <= t.winograd_tiles_in_registers() {
                tiles
            } else if t.vregs >= 32 {
                6
            } else {
                12
            };
            let bytes = 4.0 * nn * cin * cout;
            let blocks = tiles.div_ceil(per_block) as f64;
            let products =
                compute(nn * tiles as f64 * cin * cout).max(memory(bytes)) + l2(bytes, 4.0 * cin * jl, blocks - 1.0);
            let scratch = 4.0 * nn * tiles as f64 * (cin + cout);
            products + scratch / (t.transform_gbytes as f64 * 1e9)
        }
    }
}

/// The output tile `m` the cost model picks for a conv on `t` (ignoring the F(4,3)
/// budget), or `None` for direct convolution.
pub fn winograd_tile(t: Target, c: &Conv, out: Shape) -> Option<usize> {
    let eligible = c.kernel == 3 && c.stride == 1 && c.pad == 1 && c.groups == 1 && c.cin >= 16 && c.cout >= 16;
    if !eligible {
        return None;
    }
    let cost = |m| conv_seconds(t, c, out, m);
    let best = [4, 2].into_iter().min_by(|&a, &b| cost(Some(a)).total_cmp(&cost(Some(b))))?;
    (cost(Some(best)) < WINOGRAD_MARGIN * cost(None)).then_some(best)
}

impl Pass for ChooseAlgorithm {
    fn name(&self) -> &'static str {
        "choose_algorithm"
    }

    fn run(&self, graph: &mut Graph) -> usize {
        // An escape hatch for measurements and bit-level comparisons with direct convolution.
        let disabled = std::env::var_os("RESNETC_NO_WINOGRAD").is_some_and(|v| v != "0");
        let mut count = 0;
        let mut f4 = 0;
        for n in graph.schedule() {
            let shape = graph.node(n).shape;
            let Op::Conv(c) = &mut graph.g[n].op else { continue };
            let mut m = if disabled { None } else { winograd_tile(self.target, c, shape) };
            if m == Some(4) {
                f4 += 1;
                if f4 > MAX_F4_LAYERS {
                    let cost = |m| conv_seconds(self.target, c, shape, m);
                    m = (cost(Some(2)) < WINOGRAD_MARGIN * cost(None)).then_some(2);
                }
            }
            c.winograd = m;
            count += m.is_some() as usize;
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
        // AVX-512: F(4,3) down to 14x14; at 7x7x512 the 4x larger transformed weights
        // (37.7 MB per conv) cost more than the multiplies saved, F(2,3)'s 16.8 MB less.
        for (h, m) in chosen(Target::AVX512) {
            assert_eq!(m, if h >= 14 { Some(4) } else { Some(2) }, "avx512, {h}x{h}");
        }
        // Cranelift computes 4.6x slower, so Winograd pays everywhere.
        assert!(chosen(Target::CRANELIFT_X64).iter().all(|&(_, m)| m == Some(4)));
    }
}
