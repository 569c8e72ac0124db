//! Per-layer parameter and multiply-add counts, and the seed's block comparison.

use crate::graph::{Graph, Op};
use serde_json::json;
use std::fmt::Write;

/// One row of the inspection table.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub op: &'static str,
    pub shape: [usize; 3],
    /// Trainable parameters (BN running statistics are buffers, not parameters).
    pub params: usize,
    /// Multiply-adds of one image (convolutions and the classifier).
    pub macs: usize,
}

/// The rows of every node but the input, in schedule order.
pub fn layers(graph: &Graph) -> Vec<Layer> {
    graph
        .schedule()
        .into_iter()
        .filter_map(|n| {
            let node = graph.node(n);
            let s = node.shape;
            let (params, macs) = match &node.op {
                Op::Input => return None,
                Op::Conv(c) => (c.weight_count(), c.weight_count() * s.h * s.w),
                Op::BatchNorm { .. } => (2 * s.c, 0),
                Op::Linear { cin, cout, .. } => (cin * cout + cout, cin * cout),
                _ => (0, 0),
            };
            Some(Layer { name: node.name.clone(), op: node.op.kind(), shape: [s.c, s.h, s.w], params, macs })
        })
        .collect()
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The per-layer table with totals.
pub fn table(model: &str, graph: &Graph) -> String {
    let rows = layers(graph);
    let mut out = format!("{:<28} {:<14} {:<18} {:>12} {:>16}\n", "layer", "op", "output", "params", "MACs");
    for r in &rows {
        let shape = format!("{:?}", r.shape);
        let _ = writeln!(
            out,
            "{:<28} {:<14} {:<18} {:>12} {:>16}",
            r.name,
            r.op,
            shape,
            thousands(r.params),
            thousands(r.macs)
        );
    }
    let params: usize = rows.iter().map(|r| r.params).sum();
    let macs: usize = rows.iter().map(|r| r.macs).sum();
    let _ = writeln!(
        out,
        "{model}: {} layers, {} params, {} MACs per image",
        rows.len(),
        thousands(params),
        thousands(macs)
    );
    out
}

/// `{"model", "params", "macs", "layers": [...]}`.
pub fn json(model: &str, graph: &Graph) -> serde_json::Value {
    let rows = layers(graph);
    json!({
        "model": model,
        "params": rows.iter().map(|r| r.params).sum::<usize>(),
        "macs": rows.iter().map(|r| r.macs).sum::<usize>(),
        "layers": rows.iter().map(|r| json!({
            "name": r.name, "op": r.op, "shape": r.shape, "params": r.params, "macs": r.macs,
        })).collect::<Vec<_>>(),
    })
}

/// The seed document's comparison: a residual block with `c` input and output channels
/// built from two 3x3 convs, against a bottleneck of width `c / 4`. Weights per conv, and
/// multiply-adds per output position (stride 1, so they are equal).
pub fn compare_blocks(c: usize) -> String {
    let w = c / 4;
    let basic = [("conv 3x3", c, c, 3), ("conv 3x3", c, c, 3)];
    let bottleneck = [("conv 1x1 (reduce)", c, w, 1), ("conv 3x3", w, w, 3), ("conv 1x1 (expand)", w, c, 1)];
    let mut out = String::new();
    let mut section = |title: String, convs: &[(&str, usize, usize, usize)]| -> usize {
        let _ = writeln!(out, "{title}");
        let mut total = 0;
        for &(name, i, o, k) in convs {
            let n = i * o * k * k;
            total += n;
            let _ = writeln!(out, "  {name:<18} {i:>6} x {o:>6} x {k} x {k} = {:>12}", thousands(n));
        }
        let _ = writeln!(
            out,
            "  {:<40} total {:>12} weights, {} MACs per output position",
            "",
            thousands(total),
            thousands(total)
        );
        total
    };
    let b = section(format!("basic block ({c} -> {c}, two 3x3 convs):"), &basic);
    let n = section(format!("bottleneck block ({c} -> {w} -> {w} -> {c}, 1x1-3x3-1x1):"), &bottleneck);
    let _ = writeln!(out, "the bottleneck needs {:.1}x fewer weights and multiply-adds", b as f64 / n.max(1) as f64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_comparison_for_256_channels() {
        let text = compare_blocks(256);
        assert!(text.contains("1,179,648 weights"), "{text}");
        assert!(text.contains("69,632 weights"), "{text}");
        assert!(text.contains("589,824") && text.contains("16,384") && text.contains("36,864"));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(11689512), "11,689,512");
    }
}
