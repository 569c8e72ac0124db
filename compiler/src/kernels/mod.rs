//! Lowers a [`Plan`] to kernel IR: one [`Kernel`] per distinct kernel shape, one [`Call`]
//! per step with the pointers it runs on, and the weight recipes that pack the blob
//! those pointers index.

mod conv;
mod simple;
mod strassen;
mod winograd;

use crate::graph::Conv;
use crate::kir::Kernel;
use crate::plan::{Plan, StepOp};
use anyhow::Result;
use resnetc_runtime::pack::Recipe;
use std::collections::HashMap;

pub(crate) use conv::panel_tile;
pub use resnetc_runtime::exec::Arg as ArgRef;
pub use resnetc_runtime::exec::Order;
use resnetc_runtime::exec::{band_slot, BAND_SLOTS};
pub(crate) use strassen::panel_layout as strassen_panel_layout;
pub use strassen::{fits as strassen_fits, possible as strassen_possible};
pub(crate) use winograd::product_tile as winograd_product_tile;
pub use winograd::raw_fits as winograd_raw_fits;
pub(crate) use winograd::raw_scratch_floats as winograd_raw_scratch_floats;
pub(crate) use winograd::raw_transform_ops as winograd_raw_transform_ops;
pub(crate) use winograd::row_block as winograd_row_block;

/// The part of a conv kernel's name that tells its fused epilogue: `_res` when it adds a
/// residual, then `_relu` when it applies ReLU.
fn epilogue_suffix(c: &Conv) -> &'static str {
    match (c.residual, c.relu) {
        (false, false) => "",
        (true, false) => "_res",
        (false, true) => "_relu",
        (true, true) => "_res_relu",
    }
}

/// A call's batch order from the bytes of weights it reads. Weights well past L2 (over
/// twice its size) are read once per batch, task-major (ResNet-50 batch 8, per image vs
/// batch 1: the 7x7 Winograd products 0.85x, the classifier 0.73x); everything else runs
/// depth-first, so activations stay in cache between calls: run batch-wide, the Winograd
/// transforms took 1.2-2.9x and 2 MB convs 1.3-1.7x their batch-1 time per image, and
/// depth-first they re-read their weights from L3 instead. Threshold measured at 1, 2 and
/// 4 times L2 (batch 8, 1 and 2 threads): 2 was best. (Since then, a batch on one thread,
/// and threads with their own shares of the images, run these image by image
/// too: `exec::run_images`; the order matters for images left over, split across the
/// pool.)
fn order(t: crate::target::Target, weight_bytes: usize) -> Order {
    if weight_bytes > 2 * t.l2_bytes {
        Order::TaskMajor
    } else {
        Order::DepthFirst
    }
}

/// One kernel invocation of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The step's name (`layer1.0.conv2`).
    pub name: String,
    pub kernel: usize,
    pub args: Vec<ArgRef>,
    /// Multiply-adds of one image.
    pub macs: usize,
    /// How the call runs a batch.
    pub order: Order,
}

/// A lowered model: kernels, the calls of one image, and the weight blob's recipe.
#[derive(Clone, Debug)]
pub struct Program {
    pub kernels: Vec<Kernel>,
    pub calls: Vec<Call>,
    pub recipes: Vec<Recipe>,
    pub weight_floats: usize,
    pub arena_floats: usize,
    pub input_floats: usize,
    pub num_classes: usize,
}

impl Program {
    pub fn tasks(&self, call: &Call) -> usize {
        self.kernels[call.kernel].tasks()
    }
}

/// Allocates float ranges in the weight blob, 16-float (64-byte) aligned.
pub(crate) struct WeightAlloc(pub usize);

impl WeightAlloc {
    pub fn take(&mut self, floats: usize) -> usize {
        let at = self.0;
        self.0 = (self.0 + floats).div_ceil(16) * 16;
        at
    }
}

/// Lowers every step of `plan`; identical kernels are generated once.
pub fn lower(plan: &Plan) -> Result<Program> {
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut index: HashMap<Kernel, usize> = HashMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut calls = Vec::new();
    let mut recipes = Vec::new();
    let mut weights = WeightAlloc(0);
    let t = plan.target;
    for step in &plan.steps {
        let buf = |b: Option<usize>| &plan.buffers[b.expect("step operand")];
        let arena = |b: Option<usize>| ArgRef::Arena(buf(b).offset / 4);
        let macs = crate::emit::macs(step);
        // (kernel, arguments, multiply-adds, batch order) of each call this step makes.
        let mut step_calls: Vec<(Kernel, Vec<ArgRef>, usize, Order)> = vec![];
        // The order of a Winograd conv's last call (otherwise from its weights).
        let mut last_order = None;
        let (kernel, args, recipe) = match &step.op {
            StepOp::Conv(conv @ Conv { winograd: Some(wino), .. }) => {
                let res = step.residual.map(|r| buf(Some(r)));
                // The stem over its phases computes their 4x4 conv (`Winograd::phases`).
                let c = &conv.computed_by(Some(*wino));
                let g = winograd::generate(t, c, *wino, buf(step.input), buf(step.output), res, &mut weights);
                let u_bytes = g.packing.weight_floats() * 4;
                // A band's kernels write from its first output row on and read the input
                // from that row times the stride, and band `b` uses slot
                // `band_slot(b, bands)` of the scratch buffers.
                let from_row = |b: Option<usize>, row: usize| {
                    let l = buf(b).layout;
                    ArgRef::Arena(buf(b).offset / 4 + row * l.wp() * l.cb)
                };
                let (m_tiles, v_tiles) = crate::plan::winograd_slot_tiles(t, c, *wino, step.out_shape);
                let bands = g.bands.len();
                let slot = |scratch: usize, ch: usize, tiles: usize, band: usize| {
                    let floats = crate::plan::winograd_slot_floats(*wino, ch.div_ceil(t.lanes), tiles, t.lanes);
                    let b = buf(Some(step.scratch[scratch]));
                    let at = band_slot(band, bands) * floats;
                    anyhow::ensure!((at + floats) * 4 <= b.bytes(), "{}: band {band} past its scratch", step.name);
                    Ok(ArgRef::Arena(b.offset / 4 + at))
                };
                let tile_rows: usize = g.bands.iter().map(|b| b.tile_rows).sum();
                let banded = g.bands.len() > 1;
                // A band reads the input rows next to it, which other bands' outputs must
                // not overwrite (the planner only lets an output reuse its residual).
                let (i, o) = (buf(step.input), buf(step.output));
                anyhow::ensure!(
                    !banded || !i.overlaps(o),
                    "{}: a conv in bands would write over its own input",
                    step.name
                );
                let mut rows_done = 0;
                for (b, band) in g.bands.into_iter().enumerate() {
                    let [k_in, k_gemm, k_out] = band.kernels;
                    let (v, mm) = (slot(0, c.cin, v_tiles, b)?, slot(1, c.cout, m_tiles, b)?);
                    let orders = match b {
                        _ if wino.raw => [Order::DepthFirst, Order::Pipelined, Order::DepthFirst],
                        _ if !banded => [Order::DepthFirst, order(t, u_bytes), Order::DepthFirst],
                        0 => [Order::BandGroup, Order::Band, Order::Band],
                        _ => [Order::BandStart, Order::Band, Order::Band],
                    };
                    // The conv's MACs, shared by tile rows (summing to the whole exactly).
                    let band_macs = macs * (rows_done + band.tile_rows) / tile_rows - macs * rows_done / tile_rows;
                    rows_done += band.tile_rows;
                    // The band's first input row: its first output row times the stride.
                    step_calls.push((k_in, vec![v, from_row(step.input, band.row0 * wino.stride)], 0, orders[0]));
                    let mut gemm_args = vec![mm, v, ArgRef::Weights(g.packing.offset)];
                    if wino.raw {
                        // The products' own scratch (`plan::winograd_raw_layout`).
                        gemm_args.push(arena(step.scratch.get(2).copied()));
                    }
                    step_calls.push((k_gemm, gemm_args, band_macs, orders[1]));
                    let mut args = vec![from_row(step.output, band.row0), mm, ArgRef::Weights(g.packing.bias_offset)];
                    if step.residual.is_some() {
                        args.push(from_row(step.residual, band.row0));
                    }
                    step_calls.push((k_out, args, 0, orders[2]));
                }
                // The last output transform is the step's own call, below.
                let (k_out, args, _, last) = step_calls.pop().expect("a Winograd conv has a band");
                last_order = Some(last);
                (k_out, args, Some(Recipe::Winograd(g.packing)))
            }
            StepOp::PackInput { phases } => {
                let out = buf(step.output);
                let k =
                    if *phases { simple::pack_input_phases(t, step, out) } else { simple::pack_input(t, step, out) };
                (k, vec![arena(step.output), ArgRef::Input], None)
            }
            StepOp::Conv(c) => {
                let res = step.residual.map(|r| buf(Some(r)));
                // A conv with a panel gathers its input into it first, then reads it; a
                // Strassen conv over row halves gathers each task row in its products' task.
                let panel = step.scratch.first().map(|&p| &plan.buffers[p]);
                let mut conv_input = arena(step.input);
                let mut gathered_input = None;
                if let Some(p) = panel {
                    let pack = if c.strassen {
                        strassen::pack(t, c, buf(step.input), p, buf(step.output))
                    } else {
                        Some(conv::pack_panel(t, c, buf(step.input), p, buf(step.output)))
                    };
                    let panel_arg = arena(Some(step.scratch[0]));
                    match pack {
                        Some(pack) => step_calls.push((pack, vec![panel_arg, conv_input], 0, Order::DepthFirst)),
                        None => {
                            // Tasks read input rows while others write output rows.
                            anyhow::ensure!(
                                !buf(step.input).overlaps(buf(step.output)),
                                "{}: a Strassen conv would write over its own input",
                                step.name
                            );
                            gathered_input = Some(conv_input);
                        }
                    }
                    conv_input = panel_arg;
                }
                let g = match panel {
                    Some(p) if c.strassen => {
                        strassen::generate(t, c, buf(step.input), p, buf(step.output), res, &mut weights)
                    }
                    _ => conv::generate(t, c, buf(step.input), panel, buf(step.output), res, &mut weights)?,
                };
                let mut args = vec![
                    arena(step.output),
                    conv_input,
                    ArgRef::Weights(g.packing.offset),
                    ArgRef::Weights(g.packing.bias_offset),
                ];
                if step.residual.is_some() {
                    args.push(arena(step.residual));
                }
                args.extend(gathered_input);
                (g.kernel, args, Some(Recipe::Conv(g.packing)))
            }
            StepOp::MaxPool(p) => (
                simple::max_pool(t, p, step, buf(step.input), buf(step.output)),
                vec![arena(step.output), arena(step.input)],
                None,
            ),
            StepOp::GlobalAvgPool => (
                simple::global_avg_pool(t, step, buf(step.input), buf(step.output)),
                vec![arena(step.output), arena(step.input)],
                None,
            ),
            StepOp::Linear { param, cin, cout } => {
                let (k, p) = simple::linear(t, param, *cin, *cout, buf(step.input), &mut weights);
                let args = vec![
                    arena(step.output),
                    arena(step.input),
                    ArgRef::Weights(p.offset),
                    ArgRef::Weights(p.bias_offset),
                ];
                (k, args, Some(Recipe::Linear(p)))
            }
            StepOp::UnpackOutput => {
                (simple::unpack_output(t, buf(step.input)), vec![ArgRef::Output, arena(step.input)], None)
            }
        };
        let weight_bytes = match &recipe {
            Some(Recipe::Conv(p)) => p.weight_floats() * 4,
            Some(Recipe::Linear(p)) => p.cinp * p.coutp * 4,
            _ => 0, // a Winograd output transform reads only the bias
        };
        recipes.extend(recipe);
        // A Winograd conv's MACs are counted at its matrix products, as direct MACs; a
        // panel-packing call counts none.
        let last_macs = if step_calls.iter().any(|c| c.2 > 0) { 0 } else { macs };
        step_calls.push((kernel, args, last_macs, last_order.unwrap_or_else(|| order(t, weight_bytes))));
        for (kernel, args, macs, order) in step_calls {
            // Every backend passes a call's arguments by position, the AOT call table at
            // most `MAX_ARGS` of them.
            anyhow::ensure!(
                args.len() == kernel.args.len() && args.len() <= resnetc_runtime::runner::MAX_ARGS,
                "{}: kernel {} takes {} arguments, its call passes {} (at most {})",
                step.name,
                kernel.name,
                kernel.args.len(),
                args.len(),
                resnetc_runtime::runner::MAX_ARGS
            );
            let id = match index.get(&kernel) {
                Some(&id) => id,
                None => {
                    let mut k = kernel.clone();
                    // Distinct shapes that print alike (e.g. another halo) get a suffix.
                    let n = names.entry(k.name.clone()).or_insert(0);
                    *n += 1;
                    if *n > 1 {
                        k.name = format!("{}_v{}", k.name, n);
                    }
                    kernels.push(k);
                    index.insert(kernel, kernels.len() - 1);
                    kernels.len() - 1
                }
            };
            calls.push(Call { name: step.name.clone(), kernel: id, args, macs, order });
        }
    }
    Ok(Program {
        kernels,
        calls,
        recipes,
        weight_floats: weights.0,
        arena_floats: plan.arena_bytes / 4,
        input_floats: plan.input.numel(),
        num_classes: plan.num_classes,
    })
}

/// The kernel IR of a program, every distinct kernel once, then the call list (calls
/// that run task-major with a batch are marked, as are the bands of a band group and
/// pipelined calls).
pub fn to_text(p: &Program) -> String {
    let mut out = String::new();
    for k in &p.kernels {
        out.push_str(&k.to_string());
        out.push_str("\n\n");
    }
    out.push_str("calls:\n");
    for c in &p.calls {
        let args: Vec<String> = c.args.iter().map(|a| format!("{a:?}")).collect();
        let order = match c.order {
            Order::TaskMajor => "  [task-major]",
            Order::BandGroup => "  [bands]",
            Order::BandStart => "  [next band]",
            Order::Pipelined => "  [pipelined]",
            Order::DepthFirst | Order::Band => "",
        };
        out.push_str(&format!("  {:<24} {}({}){order}\n", c.name, p.kernels[c.kernel].name, args.join(", ")));
    }
    out
}

/// Runs a program with the kernel IR interpreter: the meaning of the IR, executed
/// directly. `blob` is the packed weight blob; returns `[N, classes]` logits. Pipelined
/// calls run their shares one call each, last first, on even images, and all in one call
/// on odd ones: both ways the runtime may run them.
pub fn interpret(p: &Program, blob: &[f32], input: &[f32], n: usize) -> Vec<f32> {
    let mut weights = blob.to_vec();
    let mut logits = vec![0.0f32; n * p.num_classes];
    let mut arena = vec![f32::NAN; p.arena_floats];
    for (image, (x, y)) in input.chunks(p.input_floats).zip(logits.chunks_mut(p.num_classes)).enumerate() {
        // Garbage, not zeros, and not the image before's: no kernel may read what it did
        // not write for this image (the scratch of raw Winograd weights would hold the
        // same values again).
        arena.fill(f32::NAN);
        let mut x = x.to_vec();
        for call in &p.calls {
            let args: Vec<(usize, usize)> = call
                .args
                .iter()
                .map(|a| match *a {
                    ArgRef::Arena(o) => (0, o),
                    ArgRef::Weights(o) => (1, o),
                    ArgRef::Input => (2, 0),
                    ArgRef::Output => (3, 0),
                })
                .collect();
            let k = &p.kernels[call.kernel];
            let mut mem: [&mut [f32]; 4] = [&mut arena, &mut weights, &mut x, y];
            if call.order == Order::Pipelined && image % 2 == 0 {
                // Its shares are independent (each with its own scratch): the last first,
                // as the runtime's threads may run them (odd images: all in one call, as
                // one thread does).
                let per = k.tasks() / BAND_SLOTS;
                for s in (0..BAND_SLOTS).rev() {
                    crate::kir::interpret(k, &mut mem, &args, s * per, (s + 1) * per);
                }
            } else {
                crate::kir::interpret(k, &mut mem, &args, 0, k.tasks());
            }
        }
    }
    logits
}
