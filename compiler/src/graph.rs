//! The network as a petgraph IR: one node per operator, edges carry operand order.
//!
//! **Invariant:** node indices are a topological order (every edge goes from a lower to a
//! higher index). Builders add nodes in execution order and passes only remove nodes or
//! redirect edges forward, so iterating `node_indices()` is a valid schedule.

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;
use std::fmt::{self, Write};

/// Channels, height, width of one image's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}, {}]", self.c, self.h, self.w)
    }
}

pub use resnetc_runtime::winograd::Winograd;

/// A convolution without bias (torchvision's), plus the epilogue that fusion attaches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conv {
    /// Tensor name prefix of the weight, e.g. `layer1.0.conv1` for `layer1.0.conv1.weight`.
    pub weight: String,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    /// The BatchNorm (tensor name prefix) folded into this conv's weights and bias.
    pub folded_bn: Option<String>,
    /// The epilogue adds operand 1 (the block's identity or downsample output).
    pub residual: bool,
    /// The epilogue ends with ReLU.
    pub relu: bool,
    /// Run as this Winograd algorithm; `None` is direct convolution. Chosen by the
    /// `choose_algorithm` pass.
    pub winograd: Option<Winograd>,
    /// A 1x1 conv run as one level of Strassen (`resnetc_runtime::strassen`); chosen by
    /// the `choose_algorithm` pass.
    pub strassen: bool,
}

impl Conv {
    /// Shape of the weight tensor: `[cout, cin / groups, k, k]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.cout, self.cin / self.groups, self.kernel, self.kernel]
    }

    pub fn weight_count(&self) -> usize {
        self.weight_shape().iter().product()
    }

    /// Whether this conv has the stem's shape that may run over its input's phases
    /// (`Winograd::phases`): 7x7, stride 2, padding 3, ungrouped.
    pub fn phase_stem(&self) -> bool {
        let (k, stride, pad) = resnetc_runtime::winograd::PHASE_STEM;
        (self.kernel, self.stride, self.pad, self.groups) == (k, stride, pad, 1)
    }

    /// The conv that algorithm `w` computes: this one, or over the stem's phases
    /// (`Winograd::phases`) the stride-1 4x4 conv with padding 1 over its input's four
    /// phases, `4 cin` channels.
    pub fn computed_by(&self, w: Option<Winograd>) -> Conv {
        match w {
            Some(w) if w.phases => {
                assert!(self.phase_stem(), "{}: phases of a conv other than a 7x7 stride-2 stem", self.weight);
                let (_, _, pad) = resnetc_runtime::winograd::PHASE_STEM;
                let kernel = resnetc_runtime::winograd::PHASE_TAPS;
                Conv { cin: 4 * self.cin, kernel, stride: 1, pad: pad / 2, ..self.clone() }
            }
            _ => self.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaxPool {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    /// PyTorch's ceil_mode: the last window may be clipped at the bottom/right border.
    pub ceil_mode: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// The model input (one image; the batch comes from the input tensor).
    Input,
    Conv(Conv),
    /// Inference BatchNorm with eps 1e-5; `param` is the tensor name prefix (`bn1`).
    BatchNorm {
        param: String,
    },
    Relu,
    /// Elementwise sum of operand 0 (the residual branch) and operand 1 (the shortcut).
    Add,
    MaxPool(MaxPool),
    GlobalAvgPool,
    /// Fully connected layer with bias; `param` is the tensor name prefix (`fc`).
    Linear {
        param: String,
        cin: usize,
        cout: usize,
    },
}

impl Op {
    /// A short lowercase name of the operator kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv(_) => "conv",
            Op::BatchNorm { .. } => "batchnorm",
            Op::Relu => "relu",
            Op::Add => "add",
            Op::MaxPool(_) => "maxpool",
            Op::GlobalAvgPool => "globalavgpool",
            Op::Linear { .. } => "linear",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique, torchvision-style name (`layer2.0.conv1`, `layer2.0.relu2`, ...).
    pub name: String,
    pub op: Op,
    /// Output shape of one image.
    pub shape: Shape,
}

/// Edges carry the operand position at the consumer (0, or 1 for the second operand).
pub type Operand = u8;

/// The network graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub g: StableDiGraph<Node, Operand>,
}

impl Graph {
    pub fn add(&mut self, name: impl Into<String>, op: Op, shape: Shape, inputs: &[NodeIndex]) -> NodeIndex {
        let n = self.g.add_node(Node { name: name.into(), op, shape });
        for (i, &src) in inputs.iter().enumerate() {
            debug_assert!(src < n, "graph invariant: inputs precede their consumer");
            self.g.add_edge(src, n, i as Operand);
        }
        n
    }

    pub fn node(&self, n: NodeIndex) -> &Node {
        &self.g[n]
    }

    /// The nodes in schedule (topological) order.
    pub fn schedule(&self) -> Vec<NodeIndex> {
        self.g.node_indices().collect()
    }

    /// The operands of `n`, in operand order.
    pub fn inputs(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut e: Vec<_> = self.g.edges_directed(n, Direction::Incoming).map(|e| (*e.weight(), e.source())).collect();
        e.sort();
        e.into_iter().map(|(_, s)| s).collect()
    }

    /// The consumers of `n`.
    pub fn users(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut u: Vec<_> = self.g.neighbors_directed(n, Direction::Outgoing).collect();
        u.sort();
        u.dedup();
        u
    }

    /// Whether `n` reads the model input and is its only reader (the stem, which may then
    /// read the input in a layout of its own: `Winograd::phases`).
    pub fn reads_only_the_input(&self, n: NodeIndex) -> bool {
        self.inputs(n).first().is_some_and(|&i| self.node(i).op == Op::Input && self.users(i) == [n])
    }

    /// The node that produces the model's logits (the one without users).
    pub fn output(&self) -> NodeIndex {
        self.g.externals(Direction::Outgoing).max().expect("graph has nodes")
    }

    /// The input node.
    pub fn input(&self) -> NodeIndex {
        self.g.externals(Direction::Incoming).min().expect("graph has nodes")
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// One line per node: `%id = op name(operands) attributes -> shape`.
    pub fn to_text(&self) -> String {
        let ids: std::collections::HashMap<NodeIndex, usize> =
            self.schedule().into_iter().enumerate().map(|(i, n)| (n, i)).collect();
        let mut out = String::new();
        for n in self.schedule() {
            let node = &self.g[n];
            let args: Vec<String> = self.inputs(n).iter().map(|i| format!("%{}", ids[i])).collect();
            let _ = writeln!(
                out,
                "%{:<3} = {:<13} {:<24} ({}){} -> {}",
                ids[&n],
                node.op.kind(),
                node.name,
                args.join(", "),
                attributes(&node.op),
                node.shape
            );
        }
        out
    }

    /// Graphviz DOT, one box per node labelled with its op, name and shape.
    pub fn to_dot(&self, title: &str) -> String {
        let mut out = format!("digraph \"{title}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
        for n in self.schedule() {
            let node = &self.g[n];
            let fill = match node.op {
                Op::Conv(_) => "lightblue",
                Op::BatchNorm { .. } => "lightyellow",
                Op::Add => "lightpink",
                _ => "white",
            };
            let _ = writeln!(
                out,
                "  n{} [label=\"{}\\n{}{}\\n{}\", style=filled, fillcolor={fill}];",
                n.index(),
                node.name,
                node.op.kind(),
                attributes(&node.op),
                node.shape
            );
        }
        for e in (&self.g).edge_references() {
            let _ = writeln!(out, "  n{} -> n{} [label=\"{}\"];", e.source().index(), e.target().index(), e.weight());
        }
        out.push_str("}\n");
        out
    }
}

/// The operator's attributes as printed after its operands.
pub fn attributes(op: &Op) -> String {
    match op {
        Op::Conv(c) => {
            let mut s = format!(" {k}x{k}/{} pad {} {}->{}", c.stride, c.pad, c.cin, c.cout, k = c.kernel);
            if c.groups > 1 {
                let _ = write!(s, " groups {}", c.groups);
            }
            if let Some(bn) = &c.folded_bn {
                let _ = write!(s, " +bias({bn})");
            }
            if c.residual {
                s.push_str(" +residual");
            }
            if c.relu {
                s.push_str(" +relu");
            }
            if let Some(w) = c.winograd {
                let _ = write!(s, " winograd {w}");
            }
            if c.strassen {
                s.push_str(" strassen");
            }
            s
        }
        Op::MaxPool(p) => {
            format!(" {k}x{k}/{} pad {}{}", p.stride, p.pad, if p.ceil_mode { " ceil" } else { "" }, k = p.kernel)
        }
        Op::Linear { cin, cout, .. } => format!(" {cin}->{cout}"),
        _ => String::new(),
    }
}
