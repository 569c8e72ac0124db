//! The reference executor: plain f32 loops over the graph, one operator at a time, in
//! NCHW. It is the oracle every optimized backend is tested against, so it stays simple:
//! no layout tricks, no fusion of its own, nothing clever beyond splitting output
//! channels over threads.
//!
//! It runs both the graph as built from the spec and the graph after the middle-end's
//! passes: a conv with `folded_bn` reads its bias from `{weight}.bias` (which the
//! runtime's folding writes), applies the residual operand and ReLU when marked.

use crate::graph::{Conv, Graph, MaxPool, Op, Shape};
use anyhow::{Context, Result};
use petgraph::stable_graph::NodeIndex;
use resnetc_runtime::safetensors::Tensors;
use resnetc_runtime::tensor::Tensor;
use std::collections::HashMap;

const BN_EPS: f32 = 1e-5;

/// Runs `graph` on `input` (`[N, C, H, W]`), returning the logits `[N, classes]`.
pub fn run(graph: &Graph, weights: &Tensors, input: &Tensor) -> Result<Tensor> {
    let in_shape = graph.node(graph.input()).shape;
    let n = resnetc_runtime::check::check_input(input, [in_shape.c, in_shape.h, in_shape.w])?;
    let get = |name: &str| weights.get(name).map(|t| t.data()).with_context(|| format!("missing tensor `{name}`"));
    let mut uses: HashMap<NodeIndex, usize> = graph.schedule().into_iter().map(|v| (v, graph.users(v).len())).collect();
    let mut values: HashMap<NodeIndex, Vec<f32>> = HashMap::new();
    for v in graph.schedule() {
        let node = graph.node(v);
        let args = graph.inputs(v);
        let arg = |i: usize| &values[&args[i]];
        let in_shape = |i: usize| graph.node(args[i]).shape;
        let out = match &node.op {
            Op::Input => input.data().to_vec(),
            Op::Conv(c) => {
                let w = get(&format!("{}.weight", c.weight))?;
                let b = match c.folded_bn {
                    Some(_) => Some(get(&format!("{}.bias", c.weight))?),
                    None => None,
                };
                let residual = if c.residual { Some(arg(1).as_slice()) } else { None };
                conv(c, in_shape(0), node.shape, n, arg(0), w, b, residual)
            }
            Op::BatchNorm { param } => {
                let p = |s: &str| get(&format!("{param}.{s}"));
                batch_norm(node.shape, n, arg(0), p("weight")?, p("bias")?, p("running_mean")?, p("running_var")?)
            }
            Op::Relu => arg(0).iter().map(|&x| x.max(0.0)).collect(),
            Op::Add => arg(0).iter().zip(arg(1)).map(|(a, b)| a + b).collect(),
            Op::MaxPool(p) => max_pool(p, in_shape(0), node.shape, n, arg(0)),
            Op::GlobalAvgPool => global_avg_pool(in_shape(0), n, arg(0)),
            Op::Linear { param, cin, cout } => {
                linear(*cin, *cout, n, arg(0), get(&format!("{param}.weight"))?, get(&format!("{param}.bias"))?)
            }
        };
        for a in &args {
            let left = uses.get_mut(a).expect("operand is a node");
            *left -= 1;
            if *left == 0 {
                values.remove(a);
            }
        }
        values.insert(v, out);
    }
    let out = graph.output();
    let classes = graph.node(out).shape.c;
    Ok(Tensor::new(vec![n, classes], values.remove(&out).expect("output computed")))
}

/// Splits `out` into chunks of `chunk` floats and fills them on up to two threads.
fn par_chunks(out: &mut [f32], chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunks: Vec<(usize, &mut [f32])> = out.chunks_mut(chunk).enumerate().collect();
    if threads <= 1 || chunks.len() < 2 {
        chunks.into_iter().for_each(|(i, c)| fill(i, c));
        return;
    }
    let per = chunks.len().div_ceil(threads);
    let mut rest = chunks;
    std::thread::scope(|s| {
        while !rest.is_empty() {
            let tail = rest.split_off(per.min(rest.len()));
            let mine = std::mem::replace(&mut rest, tail);
            let fill = &fill;
            s.spawn(move || mine.into_iter().for_each(|(i, c)| fill(i, c)));
        }
    });
}

/// Direct convolution, one output plane at a time, with the optional fused epilogue.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    c: &Conv,
    si: Shape,
    so: Shape,
    n: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (k, s, p) = (c.kernel, c.stride, c.pad);
    let cin_g = c.cin / c.groups;
    let cout_g = c.cout / c.groups;
    let plane = so.h * so.w;
    let mut out = vec![0.0f32; n * so.c * plane];
    par_chunks(&mut out, plane, |idx, y| {
        let (img, oc) = (idx / so.c, idx % so.c);
        y.fill(bias.map_or(0.0, |b| b[oc]));
        let g = oc / cout_g;
        for icg in 0..cin_g {
            let ic = g * cin_g + icg;
            let xp = &x[(img * si.c + ic) * si.h * si.w..][..si.h * si.w];
            for kh in 0..k {
                for kw in 0..k {
                    let wv = w[((oc * cin_g + icg) * k + kh) * k + kw];
                    // Output columns whose input column `ow * s + kw - p` lies inside the row.
                    let lo = p.saturating_sub(kw).div_ceil(s);
                    let hi = ((si.w + p).saturating_sub(kw + 1) / s + 1).min(so.w);
                    if si.w + p <= kw || lo >= hi {
                        continue;
                    }
                    for oh in 0..so.h {
                        let ih = (oh * s + kh) as isize - p as isize;
                        if ih < 0 || ih >= si.h as isize {
                            continue;
                        }
                        let xrow = &xp[ih as usize * si.w..][..si.w];
                        let yrow = &mut y[oh * so.w..][..so.w];
                        for ow in lo..hi {
                            yrow[ow] += wv * xrow[ow * s + kw - p];
                        }
                    }
                }
            }
        }
        if let Some(r) = residual {
            let rp = &r[idx * plane..][..plane];
            y.iter_mut().zip(rp).for_each(|(a, b)| *a += b);
        }
        if c.relu {
            y.iter_mut().for_each(|a| *a = a.max(0.0));
        }
    });
    out
}

fn batch_norm(s: Shape, n: usize, x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32]) -> Vec<f32> {
    let plane = s.h * s.w;
    x.chunks(plane)
        .enumerate()
        .flat_map(|(idx, xp)| {
            let c = idx % s.c;
            let scale = gamma[c] / (var[c] + BN_EPS).sqrt();
            xp.iter().map(move |&v| (v - mean[c]) * scale + beta[c])
        })
        .take(n * s.numel())
        .collect()
}

fn max_pool(p: &MaxPool, si: Shape, so: Shape, n: usize, x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * so.numel());
    for xp in x.chunks(si.h * si.w) {
        for oh in 0..so.h {
            for ow in 0..so.w {
                let mut m = f32::NEG_INFINITY;
                for kh in 0..p.kernel {
                    for kw in 0..p.kernel {
                        let ih = (oh * p.stride + kh) as isize - p.pad as isize;
                        let iw = (ow * p.stride + kw) as isize - p.pad as isize;
                        if (0..si.h as isize).contains(&ih) && (0..si.w as isize).contains(&iw) {
                            m = m.max(xp[ih as usize * si.w + iw as usize]);
                        }
                    }
                }
                out.push(m);
            }
        }
    }
    out
}

pub(crate) fn global_avg_pool(si: Shape, _n: usize, x: &[f32]) -> Vec<f32> {
    let plane = si.h * si.w;
    x.chunks(plane).map(|xp| (xp.iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32).collect()
}

pub(crate) fn linear(cin: usize, cout: usize, _n: usize, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    x.chunks(cin)
        .flat_map(|xi| {
            (0..cout).map(move |o| {
                let row = &w[o * cin..][..cin];
                (row.iter().zip(xi).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() + b[o] as f64) as f32
            })
        })
        .collect()
}
