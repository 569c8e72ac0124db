//! Text and JSON renderings of the middle-end's results: the fused kernel list and the
//! memory plan. These are snapshot-tested, so keep them deterministic.

use crate::graph::Conv;
use crate::plan::{Plan, Step, StepOp};
use serde_json::{json, Value};
use std::fmt::Write;

/// The operator of a step as printed (`conv3x3/2`, `maxpool3x3/2`, ...); a Winograd conv
/// whose products transform raw weights (`Winograd::raw`) ends in `raw`, a 1x1 conv run as
/// Strassen (`Conv::strassen`) in `strassen`.
pub fn op_name(step: &Step) -> String {
    let name = match &step.op {
        StepOp::PackInput { phases: false } => "pack_input".into(),
        StepOp::PackInput { phases: true } => "pack_input phases".into(),
        StepOp::Conv(c) if c.groups > 1 => format!("conv{k}x{k}/{} g{}", c.stride, c.groups, k = c.kernel),
        StepOp::Conv(Conv { winograd: Some(w), .. }) if w.row => format!("conv3x3/1 F(1x{},3)", w.m),
        StepOp::Conv(c @ Conv { winograd: Some(w), .. }) if w.phases => {
            format!("conv{k}x{k}/{} F({},4)ph", c.stride, w.m, k = c.kernel)
        }
        StepOp::Conv(Conv { winograd: Some(w), .. }) if w.stride > 1 => {
            format!("conv3x3/{} F({},3)s{0}", w.stride, w.m)
        }
        StepOp::Conv(Conv { winograd: Some(w), .. }) => format!("conv3x3/1 F({},3)", w.m),
        StepOp::Conv(c) if c.strassen => format!("conv1x1/{} strassen", c.stride),
        StepOp::Conv(c) => format!("conv{k}x{k}/{}", c.stride, k = c.kernel),
        StepOp::MaxPool(p) => {
            format!("maxpool{k}x{k}/{}{}", p.stride, if p.ceil_mode { " ceil" } else { "" }, k = p.kernel)
        }
        StepOp::GlobalAvgPool => "global_avg_pool".into(),
        StepOp::Linear { .. } => "linear".into(),
        StepOp::UnpackOutput => "unpack_output".into(),
    };
    match &step.op {
        StepOp::Conv(Conv { winograd: Some(w), .. }) if w.raw => name + "raw",
        _ => name,
    }
}

/// What the step's epilogue does after the main computation, `+`-separated.
pub fn epilogue(step: &Step) -> String {
    match &step.op {
        StepOp::Conv(c) => {
            let mut parts = vec![];
            if c.folded_bn.is_some() {
                parts.push("bias");
            }
            if c.residual {
                parts.push("residual");
            }
            if c.relu {
                parts.push("relu");
            }
            parts.join("+")
        }
        StepOp::Linear { .. } => "bias".into(),
        _ => String::new(),
    }
}

/// Multiply-adds of one image in this step.
pub fn macs(step: &Step) -> usize {
    match &step.op {
        StepOp::Conv(c) => c.weight_count() * step.out_shape.h * step.out_shape.w,
        StepOp::Linear { cin, cout, .. } => cin * cout,
        _ => 0,
    }
}

pub fn fused_text(plan: &Plan) -> String {
    let mut out = format!(
        "{:<4} {:<24} {:<21} {:<20} {:<16} {:<16} {:>12}\n",
        "#", "kernel", "op", "epilogue", "input", "output", "MACs"
    );
    for (i, s) in plan.steps.iter().enumerate() {
        let _ = writeln!(
            out,
            "{i:<4} {:<24} {:<21} {:<20} {:<16} {:<16} {:>12}",
            s.name,
            op_name(s),
            epilogue(s),
            s.in_shape.to_string(),
            s.out_shape.to_string(),
            macs(s)
        );
    }
    let convs = plan.steps.iter().filter(|s| matches!(s.op, StepOp::Conv(_))).count();
    let _ = writeln!(
        out,
        "{} kernels ({convs} conv), {} MACs per image",
        plan.steps.len(),
        plan.steps.iter().map(macs).sum::<usize>()
    );
    out
}

pub fn fused_json(plan: &Plan) -> Value {
    json!({
        "target": plan.target.name,
        "kernels": plan.steps.iter().map(|s| json!({
            "name": s.name,
            "op": op_name(s),
            "epilogue": epilogue(s),
            "input": [s.in_shape.c, s.in_shape.h, s.in_shape.w],
            "output": [s.out_shape.c, s.out_shape.h, s.out_shape.w],
            "residual": s.residual.map(|b| plan.buffers[b].name.clone()),
            "algorithm": match &s.op {
                StepOp::Conv(Conv { winograd: Some(w), .. }) => format!("winograd {w}"),
                StepOp::Conv(c) if c.strassen => "strassen".to_string(),
                StepOp::Conv(_) => "direct".to_string(),
                _ => String::new(),
            },
            "macs": macs(s),
        })).collect::<Vec<_>>(),
    })
}

pub fn memory_text(plan: &Plan) -> String {
    let mut out = format!(
        "{:<24} {:<26} {:>10} {:>6} {:>6} {:>10}  {}\n",
        "buffer", "layout", "bytes", "first", "last", "offset", "reuses"
    );
    for b in &plan.buffers {
        let reuses = b.reuses.map(|r| plan.buffers[r].name.as_str()).unwrap_or("");
        let _ = writeln!(
            out,
            "{:<24} {:<26} {:>10} {:>6} {:>6} {:>10}  {reuses}",
            b.name,
            b.layout.to_string(),
            b.bytes(),
            b.first,
            b.last,
            b.offset
        );
    }
    let _ = writeln!(
        out,
        "arena {} bytes per image, lower bound {} bytes ({:.3}x), target {}",
        plan.arena_bytes,
        plan.lower_bound_bytes,
        plan.arena_bytes as f64 / plan.lower_bound_bytes.max(1) as f64,
        plan.target.name
    );
    out
}

pub fn memory_json(plan: &Plan) -> Value {
    json!({
        "target": plan.target.name,
        "arena_bytes": plan.arena_bytes,
        "lower_bound_bytes": plan.lower_bound_bytes,
        "buffers": plan.buffers.iter().map(|b| json!({
            "name": b.name,
            "bytes": b.bytes(),
            "first": b.first,
            "last": b.last,
            "offset": b.offset,
            "layout": b.layout.to_string(),
            "reuses": b.reuses.map(|r| plan.buffers[r].name.clone()),
        })).collect::<Vec<_>>(),
    })
}
