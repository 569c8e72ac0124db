//! Executes a [`Plan`] with the reference semantics, over the planned arena: every step
//! reads its operands from their buffers (layout, halo and offset as planned) and writes
//! its whole output buffer back, halo included. The arithmetic is the reference
//! executor's; what this checks is the middle-end: folding, fusion, layouts, halos, and
//! the memory plan (a wrong offset or an illegal in-place reuse corrupts the logits).

use crate::graph::Shape;
use crate::plan::{Buffer, Layout, Plan, StepOp};
use crate::reference;
use anyhow::{Context, Result};
use resnetc_runtime::safetensors::Tensors;
use resnetc_runtime::Tensor;

/// Reads `buf` as NCHW with a border of `pad` pixels taken from its halo.
fn read_padded(arena: &[f32], buf: &Buffer, pad: usize) -> Vec<f32> {
    let l = &buf.layout;
    assert!(pad <= l.halo, "{}: needs a halo of {pad}, has {}", buf.name, l.halo);
    let base = buf.offset / 4;
    let (h, w) = (l.h + 2 * pad, l.w + 2 * pad);
    let mut out = Vec::with_capacity(l.c * h * w);
    for c in 0..l.c {
        for y in 0..h {
            for x in 0..w {
                // Padded coordinates: the halo starts `halo - pad` pixels before our border.
                let (py, px) = (y + l.halo - pad, x + l.halo - pad);
                out.push(arena[base + ((c / l.cb * l.hp() + py) * l.wp() + px) * l.cb + c % l.cb]);
            }
        }
    }
    out
}

/// Writes NCHW `data` into `buf`: the interior from `data`, halo and padded channels zero.
fn write(arena: &mut [f32], buf: &Buffer, data: &[f32]) {
    let l = &buf.layout;
    let mut image = vec![0.0f32; l.numel()];
    for c in 0..l.c {
        for y in 0..l.h {
            for x in 0..l.w {
                image[l.index(c, y, x)] = data[(c * l.h + y) * l.w + x];
            }
        }
    }
    arena[buf.offset / 4..][..l.numel()].copy_from_slice(&image);
}

/// Every pixel of the phase layout `l` that holds an input pixel: its index in `l` and
/// its input channel, row and column. Pixel `(y, x)` of phase channel
/// `phase_channel(cin, c, a, b)` is input pixel `(phase_source(y, a), phase_source(x, b))`;
/// the others (outside the input, the halo, the padded channels) hold zeros.
fn phase_pixels(l: Layout, input: Shape) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    use resnetc_runtime::winograd::{phase_of, phase_source};
    let inside = |i: isize, size: usize| (0..size as isize).contains(&i).then_some(i as usize);
    (0..l.c).flat_map(move |pc| {
        let (c, a, b) = phase_of(input.c, pc);
        (0..l.h).flat_map(move |y| {
            (0..l.w).filter_map(move |x| {
                let (iy, ix) = (inside(phase_source(y, a), input.h)?, inside(phase_source(x, b), input.w)?);
                Some((l.index(pc, y, x), c, iy, ix))
            })
        })
    })
}

/// Writes NCHW `data` (`cin` channels of `h x w`) into `buf` as its four phases
/// (`plan::phase_layout`, [`phase_pixels`]).
fn write_phases(arena: &mut [f32], buf: &Buffer, data: &[f32], input: Shape) {
    let l = buf.layout;
    let mut image = vec![0.0f32; l.numel()];
    for (at, c, iy, ix) in phase_pixels(l, input) {
        image[at] = data[(c * input.h + iy) * input.w + ix];
    }
    arena[buf.offset / 4..][..l.numel()].copy_from_slice(&image);
}

/// The NCHW input (`cin` channels of `h x w`) back from its phases in `buf`, with a border
/// of `pad` zeros: what a conv over the plain input reads. Each input pixel is in one
/// phase pixel ([`phase_pixels`]).
fn read_phases(arena: &[f32], buf: &Buffer, input: Shape, pad: usize) -> Vec<f32> {
    let base = buf.offset / 4;
    let (h, w) = (input.h + 2 * pad, input.w + 2 * pad);
    let mut out = vec![0.0f32; input.c * h * w];
    for (at, c, iy, ix) in phase_pixels(buf.layout, input) {
        out[(c * h + iy + pad) * w + ix + pad] = arena[base + at];
    }
    out
}

/// Runs the plan on `input` (`[N, C, H, W]`) with folded weights (see `folded`).
pub fn run(plan: &Plan, folded: &Tensors, input: &Tensor) -> Result<Tensor> {
    let s = plan.input;
    let n = resnetc_runtime::check::check_input(input, [s.c, s.h, s.w])?;
    let get = |name: String| folded.get(&name).map(Tensor::data).with_context(|| format!("missing tensor `{name}`"));
    let mut logits = Vec::with_capacity(n * plan.num_classes);
    // Garbage, not zeros: nothing may depend on what the arena held before.
    let mut arena = vec![f32::NAN; plan.arena_bytes / 4];
    for x in input.data().chunks(s.numel()) {
        for step in &plan.steps {
            let buf = |b: Option<usize>| &plan.buffers[b.expect("operand")];
            match &step.op {
                StepOp::PackInput { phases: true } => write_phases(&mut arena, buf(step.output), x, step.out_shape),
                StepOp::PackInput { phases: false } => write(&mut arena, buf(step.output), x),
                StepOp::Conv(c) => {
                    let xin = if c.winograd.is_some_and(|w| w.phases) {
                        read_phases(&arena, buf(step.input), step.in_shape, c.pad)
                    } else {
                        read_padded(&arena, buf(step.input), c.pad)
                    };
                    let padded = Shape { c: c.cin, h: step.in_shape.h + 2 * c.pad, w: step.in_shape.w + 2 * c.pad };
                    let unpadded = crate::graph::Conv { pad: 0, ..c.clone() };
                    let w = get(format!("{}.weight", c.weight))?;
                    let b = match c.folded_bn {
                        Some(_) => Some(get(format!("{}.bias", c.weight))?),
                        None => None,
                    };
                    let r = step.residual.map(|r| read_padded(&arena, buf(Some(r)), 0));
                    let y = reference::conv(&unpadded, padded, step.out_shape, 1, &xin, w, b, r.as_deref());
                    write(&mut arena, buf(step.output), &y);
                }
                StepOp::MaxPool(p) => {
                    let src = buf(step.input);
                    let l = src.layout;
                    let (so, base) = (step.out_shape, src.offset / 4);
                    let mut y = Vec::with_capacity(so.numel());
                    for c in 0..so.c {
                        for oy in 0..so.h {
                            for ox in 0..so.w {
                                let mut m = f32::NEG_INFINITY;
                                for ky in 0..p.kernel {
                                    for kx in 0..p.kernel {
                                        let py = oy * p.stride + ky + l.halo - p.pad;
                                        let px = ox * p.stride + kx + l.halo - p.pad;
                                        m = m.max(
                                            arena[base + ((c / l.cb * l.hp() + py) * l.wp() + px) * l.cb + c % l.cb],
                                        );
                                    }
                                }
                                y.push(m);
                            }
                        }
                    }
                    write(&mut arena, buf(step.output), &y);
                }
                StepOp::GlobalAvgPool => {
                    let xin = read_padded(&arena, buf(step.input), 0);
                    let y = reference::global_avg_pool(step.in_shape, 1, &xin);
                    write(&mut arena, buf(step.output), &y);
                }
                StepOp::Linear { param, cin, cout } => {
                    let xin = read_padded(&arena, buf(step.input), 0);
                    let y = reference::linear(
                        *cin,
                        *cout,
                        1,
                        &xin,
                        get(format!("{param}.weight"))?,
                        get(format!("{param}.bias"))?,
                    );
                    write(&mut arena, buf(step.output), &y);
                }
                StepOp::UnpackOutput => {
                    let src = buf(step.input);
                    logits.extend_from_slice(&read_padded(&arena, src, 0)[..src.layout.c]);
                }
            }
        }
    }
    Ok(Tensor::new(vec![n, plan.num_classes], logits))
}
