//! Builds the [`Graph`] of a [`Spec`], exactly as torchvision's `ResNet.forward` runs.
//!
//! Within a block the downsample branch is placed before the main branch, so the
//! shortcut already exists when the block's last conv runs: the middle-end relies on
//! this to fuse the residual add into that conv's epilogue.

use crate::graph::{Conv, Graph, MaxPool, Op, Shape};
use crate::spec::{BlockKind, Spec, Stem, StemPool, StrideIn};
use anyhow::{bail, Result};
use petgraph::stable_graph::NodeIndex;

/// Largest activation of one image, in bytes, that a model may have.
pub const MAX_ACTIVATION_BYTES: usize = 8 << 30;

/// Most weight bytes (float32) a model may have, in one tensor or in all. Loading, seeding
/// and packing hold them in memory at least once; torchvision's largest ResNet
/// (`wide_resnet101_2`) has 0.5 GB.
pub const MAX_WEIGHT_BYTES: u128 = 4 << 30;

/// Output size of a sliding window over `size` with PyTorch's formula (floor or ceil mode).
fn window_out(size: usize, kernel: usize, stride: usize, pad: usize, ceil_mode: bool) -> Option<usize> {
    let s = stride as i64;
    let span = (size + 2 * pad) as i64 - kernel as i64 + if ceil_mode { s - 1 } else { 0 };
    let mut out = span.div_euclid(s) + 1;
    // PyTorch: in ceil mode the last window must start inside the input or left padding.
    if ceil_mode && (out - 1) * s >= (size + pad) as i64 {
        out -= 1;
    }
    (out > 0).then_some(out as usize)
}

/// Which channels of a layer [`Builder::channel_keys`] names the keys of.
#[derive(Clone, Copy)]
enum Side {
    Output,
    /// Output and input: a weight's size.
    Both,
}

/// `key `a``, `keys `a` and `b``, `keys `a`, `b` and `c``.
fn keys_text(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => format!("key {last}"),
        Some((last, rest)) => format!("keys {} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

struct Builder<'a> {
    spec: &'a Spec,
    graph: Graph,
    /// Weight bytes of the layers added so far, and the largest layer's bytes and name.
    weight_bytes: u128,
    largest: (u128, String),
}

impl Builder<'_> {
    fn shape(&self, n: NodeIndex) -> Shape {
        self.graph.node(n).shape
    }

    /// Adds a conv (no bias) named `name` reading `x`; `at` names the stage for errors.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        at: &str,
        name: &str,
        x: NodeIndex,
        cout: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Result<NodeIndex> {
        let s = self.shape(x);
        let (Some(h), Some(w)) =
            (window_out(s.h, kernel, stride, pad, false), window_out(s.w, kernel, stride, pad, false))
        else {
            bail!("input {:?} is too small: {at} ({name}) would get an empty output from {s}", self.spec.input);
        };
        let shape = Shape { c: cout, h, w };
        self.check_size(at, name, shape)?;
        let weights = [cout, s.c / groups, kernel, kernel];
        self.add_weights(name, &weights)?;
        let op = Op::Conv(Conv {
            weight: name.to_string(),
            cin: s.c,
            cout,
            kernel,
            stride,
            pad,
            groups,
            folded_bn: None,
            residual: false,
            relu: false,
            winograd: None,
            strassen: false,
        });
        Ok(self.graph.add(name, op, shape, &[x]))
    }

    fn check_size(&self, at: &str, name: &str, shape: Shape) -> Result<()> {
        // In u128: channels and sizes up to 2^26 and 2^24 would overflow `numel`.
        let bytes = 4 * shape.c as u128 * shape.h as u128 * shape.w as u128;
        if bytes <= MAX_ACTIVATION_BYTES as u128 {
            return Ok(());
        }
        let limit = MAX_ACTIVATION_BYTES >> 30;
        if name == "input" {
            bail!(
                "key `input`: {:?} is too large: the input itself ({shape}) needs more than {limit} GiB per image",
                self.spec.input
            );
        }
        // The spatial size comes from `input`, the channels from the layer's width keys.
        let mut keys = vec!["input"];
        keys.extend(self.channel_keys(name, Side::Output));
        bail!("{}: the output {shape} of {name} ({at}) needs more than {limit} GiB per image", keys_text(&keys));
    }

    /// The spec keys that set the output or input channels of layer `name` (a conv's or
    /// the classifier's torchvision name), for errors.
    fn channel_keys(&self, name: &str, side: Side) -> Vec<&'static str> {
        let spec = self.spec;
        // The bottleneck's inner width: int(planes * width_per_group / 64) * groups.
        let inner = match (spec.groups != 1, spec.width_per_group != 64) {
            (true, true) => vec!["groups", "width_per_group"],
            (true, false) => vec!["groups"],
            (false, true) => vec!["width_per_group"],
            (false, false) => vec!["widths"],
        };
        // The cifar stem's width defaults to the first stage's.
        let stem = if spec.stem == Stem::Cifar && spec.stem_width == spec.widths[0] { "widths" } else { "stem_width" };
        let (out, input) = match name {
            "conv1" => (vec![stem], vec!["input"]),
            "fc" => (vec!["num_classes"], vec!["widths"]),
            _ => {
                // `layer{S}.{B}.{conv}`: a block's first convs read the block's input, the
                // stem's output in the first block of all.
                let block_input = if name.starts_with("layer1.0.") { vec![stem] } else { vec!["widths"] };
                let bottleneck = spec.block == BlockKind::Bottleneck;
                match name.rsplit_once('.').map_or("", |(_, conv)| conv) {
                    "conv1" if bottleneck => (inner, block_input),
                    "conv2" if bottleneck => (inner.clone(), inner),
                    "conv3" => (vec!["widths"], inner),
                    "conv2" => (vec!["widths"], vec!["widths"]),
                    _ => (vec!["widths"], block_input),
                }
            }
        };
        match side {
            Side::Output => out,
            Side::Both => {
                let mut keys = out;
                keys.extend(input.into_iter().filter(|k| !keys.contains(k)).collect::<Vec<_>>());
                keys
            }
        }
    }

    /// Counts the float32 weight tensor `shape` of layer `name` against
    /// [`MAX_WEIGHT_BYTES`], alone and with the layers before it.
    fn add_weights(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        let bytes = shape.iter().fold(4u128, |a, &d| a * d as u128);
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        let limit = MAX_WEIGHT_BYTES >> 30;
        if bytes > MAX_WEIGHT_BYTES {
            bail!(
                "{}: {name}'s weight {shape:?} needs {:.2} GiB, more than the {limit} GiB of weights resnetc compiles",
                keys_text(&self.channel_keys(name, Side::Both)),
                gib(bytes)
            );
        }
        self.weight_bytes += bytes;
        if bytes > self.largest.0 {
            self.largest = (bytes, name.to_string());
        }
        if self.weight_bytes > MAX_WEIGHT_BYTES {
            let (big, big_name) = &self.largest;
            let mut keys = vec!["layers"];
            keys.extend(self.channel_keys(big_name, Side::Both));
            bail!(
                "{}: the weights up to {name} need {:.2} GiB, more than the {limit} GiB resnetc compiles \
                 (the largest, {big_name}'s, {:.2} GiB)",
                keys_text(&keys),
                gib(self.weight_bytes),
                gib(*big)
            );
        }
        Ok(())
    }

    fn bn(&mut self, name: &str, x: NodeIndex) -> NodeIndex {
        let shape = self.shape(x);
        self.graph.add(name, Op::BatchNorm { param: name.to_string() }, shape, &[x])
    }

    fn relu(&mut self, name: &str, x: NodeIndex) -> NodeIndex {
        let shape = self.shape(x);
        self.graph.add(name, Op::Relu, shape, &[x])
    }

    /// conv -> BN (-> ReLU), torchvision names `{prefix}conv{k}` / `{prefix}bn{k}`.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        at: &str,
        prefix: &str,
        k: usize,
        x: NodeIndex,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        relu: bool,
    ) -> Result<NodeIndex> {
        let c = self.conv(at, &format!("{prefix}conv{k}"), x, cout, kernel, stride, kernel / 2, groups)?;
        let b = self.bn(&format!("{prefix}bn{k}"), c);
        Ok(if relu { self.relu(&format!("{prefix}relu{k}"), b) } else { b })
    }

    fn stem(&mut self, x: NodeIndex) -> Result<NodeIndex> {
        let spec = self.spec;
        let (kernel, stride) = match spec.stem {
            Stem::Imagenet => (7, 2),
            Stem::Cifar => (3, 1),
        };
        let c = self.conv("the stem", "conv1", x, spec.stem_width, kernel, stride, kernel / 2, 1)?;
        let b = self.bn("bn1", c);
        let r = self.relu("relu", b);
        if spec.stem == Stem::Cifar {
            return Ok(r);
        }
        let pool = match spec.stem_pool {
            StemPool::Torchvision => MaxPool { kernel: 3, stride: 2, pad: 1, ceil_mode: false },
            StemPool::Caffe => MaxPool { kernel: 3, stride: 2, pad: 0, ceil_mode: true },
        };
        let s = self.shape(r);
        let (Some(h), Some(w)) = (
            window_out(s.h, pool.kernel, pool.stride, pool.pad, pool.ceil_mode),
            window_out(s.w, pool.kernel, pool.stride, pool.pad, pool.ceil_mode),
        ) else {
            bail!("input {:?} is too small: the stem (maxpool) would get an empty output from {s}", spec.input);
        };
        Ok(self.graph.add("maxpool", Op::MaxPool(pool), Shape { c: s.c, h, w }, &[r]))
    }

    fn block(&mut self, stage: usize, index: usize, x: NodeIndex, planes: usize, stride: usize) -> Result<NodeIndex> {
        let spec = self.spec;
        let at = format!("stage {stage} (layer{})", stage + 1);
        let prefix = format!("layer{}.{index}.", stage + 1);
        let cout = planes * spec.block.expansion();
        let shortcut = if stride != 1 || self.shape(x).c != cout {
            let c = self.conv(&at, &format!("{prefix}downsample.0"), x, cout, 1, stride, 0, 1)?;
            self.bn(&format!("{prefix}downsample.1"), c)
        } else {
            x
        };
        let main = match spec.block {
            BlockKind::Basic => {
                let a = self.conv_bn(&at, &prefix, 1, x, planes, 3, stride, 1, true)?;
                self.conv_bn(&at, &prefix, 2, a, planes, 3, 1, 1, false)?
            }
            BlockKind::Bottleneck => {
                let inner = spec.inner_width(planes);
                let (s1, s3) = match spec.stride_in {
                    StrideIn::Conv3x3 => (1, stride),
                    StrideIn::Conv1x1 => (stride, 1),
                };
                let a = self.conv_bn(&at, &prefix, 1, x, inner, 1, s1, 1, true)?;
                let b = self.conv_bn(&at, &prefix, 2, a, inner, 3, s3, spec.groups, true)?;
                self.conv_bn(&at, &prefix, 3, b, cout, 1, 1, 1, false)?
            }
        };
        let shape = self.shape(main);
        let last = match spec.block {
            BlockKind::Basic => 2,
            BlockKind::Bottleneck => 3,
        };
        let sum = self.graph.add(format!("{prefix}add"), Op::Add, shape, &[main, shortcut]);
        Ok(self.relu(&format!("{prefix}relu{}", last + 1), sum))
    }
}

/// Builds the graph of `spec`; fails, naming the stage and the spec key, when the input
/// is too small or an activation or the weights too large.
pub fn build(spec: &Spec) -> Result<Graph> {
    let mut b = Builder { spec, graph: Graph::default(), weight_bytes: 0, largest: (0, String::new()) };
    let [c, h, w] = spec.input;
    let input = Shape { c, h, w };
    b.check_size("the input", "input", input)?;
    let mut x = b.graph.add("input", Op::Input, input, &[]);
    x = b.stem(x)?;
    for (stage, (&blocks, &planes)) in spec.layers.iter().zip(&spec.widths).enumerate() {
        for index in 0..blocks {
            let stride = if stage > 0 && index == 0 { 2 } else { 1 };
            x = b.block(stage, index, x, planes, stride)?;
        }
    }
    let s = b.shape(x);
    let pooled = b.graph.add("avgpool", Op::GlobalAvgPool, Shape { c: s.c, h: 1, w: 1 }, &[x]);
    let classes = spec.num_classes;
    b.add_weights("fc", &[classes, s.c])?;
    let linear = Op::Linear { param: "fc".into(), cin: s.c, cout: classes };
    b.graph.add("fc", linear, Shape { c: classes, h: 1, w: 1 }, &[pooled]);
    Ok(b.graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_sizes_follow_pytorch() {
        // torchvision stem pool on 112 -> 56; Caffe ceil mode on 112 -> 56 and on 113 -> 56.
        assert_eq!(window_out(112, 3, 2, 1, false), Some(56));
        assert_eq!(window_out(112, 3, 2, 0, true), Some(56));
        assert_eq!(window_out(113, 3, 2, 0, true), Some(56));
        assert_eq!(window_out(114, 3, 2, 0, true), Some(57));
        assert_eq!(window_out(2, 3, 2, 0, true), Some(1));
        assert_eq!(window_out(1, 3, 2, 0, true), None);
    }
}
