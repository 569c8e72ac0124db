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

use crate::graph::{Graph, Op};
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
/// ResNet-18/34/50 where at most 13 layers qualify, ~1e-4 when the 14x14 layers of
/// ResNet-101/152 are included), and the tolerance is 1e-4.
pub const MAX_F4_LAYERS: usize = 16;

/// The cost model: Winograd for stride-1, pad-1, ungrouped 3x3 convs with at least 16
/// input and output channels, with the output tile `m` (4 or 2) that needs the fewest
/// transformed-domain multiplies per output, when that is at most half of direct
/// convolution's 9. Sizes that do not tile evenly (7x7, 14x14 at m = 4) compute whole
/// tiles and store the valid part. Below 16 channels the transforms, a few flops per
/// element each, no longer amortize over the channel sums.
pub struct ChooseAlgorithm;

/// Multiplies per output and input channel of F(m, 3) on an `h x w` output: `(m+2)^2` per
/// tile over the tiles that cover it (direct convolution: 9).
pub fn winograd_cost(m: usize, h: usize, w: usize) -> f64 {
    ((m + 2) * (m + 2) * h.div_ceil(m) * w.div_ceil(m)) as f64 / (h * w) as f64
}

/// The output tile `m` a conv would run with (ignoring the F(4,3) budget), or `None`.
pub fn winograd_tile(c: &crate::graph::Conv, out: crate::graph::Shape) -> Option<usize> {
    let eligible = c.kernel == 3 && c.stride == 1 && c.pad == 1 && c.groups == 1 && c.cin >= 16 && c.cout >= 16;
    if !eligible {
        return None;
    }
    let best = [4, 2]
        .into_iter()
        .min_by(|&a, &b| winograd_cost(a, out.h, out.w).total_cmp(&winograd_cost(b, out.h, out.w)))?;
    (winograd_cost(best, out.h, out.w) <= 4.5).then_some(best)
}

impl Pass for ChooseAlgorithm {
    fn name(&self) -> &'static str {
        "choose_algorithm"
    }

    fn run(&self, graph: &mut Graph) -> usize {
        let mut count = 0;
        let mut f4 = 0;
        for n in graph.schedule() {
            let shape = graph.node(n).shape;
            let Op::Conv(c) = &mut graph.g[n].op else { continue };
            let mut m = winograd_tile(c, shape);
            if m == Some(4) {
                f4 += 1;
                if f4 > MAX_F4_LAYERS {
                    m = (winograd_cost(2, shape.h, shape.w) <= 4.5).then_some(2);
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
    vec![Box::new(FoldBatchNorm), Box::new(FuseResidual), Box::new(FuseRelu), Box::new(ChooseAlgorithm)]
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
        // Winograd: every stride-1 3x3 conv (3 + 3 + 5 + 2); the strided ones stay direct.
        assert_eq!(counts, vec![("fold_bn", 53), ("fuse_residual", 16), ("fuse_relu", 49), ("choose_algorithm", 13)]);
    }
}
