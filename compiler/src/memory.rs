//! The memory planner: liveness intervals over the plan's schedule, in-place reuse of a
//! residual operand that dies where its block's output is written, and best-fit offsets
//! in one arena, placing the largest buffers first.
//!
//! **Architecture Invariant:** two buffers whose intervals `[first, last]` intersect never
//! share bytes, except a buffer and the residual operand it `reuses` in place: each output
//! element is written by the same thread right after reading its residual element.
//! [`verify`] checks this independently of the planner.

use crate::plan::{Plan, StepOp};

/// Arena offsets are aligned to a cache line.
pub const ALIGN: usize = 64;

/// One contiguous storage region: a buffer, or a chain of buffers reusing one another.
struct Storage {
    members: Vec<usize>,
    bytes: usize,
    first: usize,
    last: usize,
}

fn round_up(v: usize) -> usize {
    v.div_ceil(ALIGN) * ALIGN
}

/// Sets `reuses`, every buffer's `offset`, `arena_bytes` and `lower_bound_bytes`.
pub fn assign(plan: &mut Plan) {
    // In place: a conv's output may take over its residual operand's storage when that
    // operand dies at this step and has the same layout.
    for step in &plan.steps {
        if let (StepOp::Conv(_), Some(out), Some(res)) = (&step.op, step.output, step.residual) {
            let (r, o) = (&plan.buffers[res], &plan.buffers[out]);
            if r.last == o.first && r.layout == o.layout && Some(res) != step.input {
                plan.buffers[out].reuses = Some(res);
            }
        }
    }
    // Group buffers into storages along `reuses` chains.
    let mut storage_of = vec![usize::MAX; plan.buffers.len()];
    let mut storages: Vec<Storage> = Vec::new();
    for (b, buf) in plan.buffers.iter().enumerate() {
        let s = match buf.reuses {
            Some(r) => storage_of[r],
            None => {
                storages.push(Storage { members: vec![], bytes: 0, first: buf.first, last: buf.last });
                storages.len() - 1
            }
        };
        storage_of[b] = s;
        let st = &mut storages[s];
        st.members.push(b);
        st.bytes = st.bytes.max(round_up(buf.bytes()));
        st.first = st.first.min(buf.first);
        st.last = st.last.max(buf.last);
    }
    let steps = plan.steps.len();
    plan.lower_bound_bytes = (0..steps)
        .map(|t| storages.iter().filter(|s| s.first <= t && t <= s.last).map(|s| s.bytes).sum::<usize>())
        .max()
        .unwrap_or(0);
    // Best fit, largest first: each storage goes into the smallest gap between storages
    // it overlaps in time, or above them all.
    let mut order: Vec<usize> = (0..storages.len()).collect();
    order.sort_by_key(|&s| (std::cmp::Reverse(storages[s].bytes), storages[s].first));
    let mut offset = vec![0usize; storages.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0;
    for s in order {
        let me = &storages[s];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&p| storages[p].first <= me.last && me.first <= storages[p].last)
            .map(|&p| (offset[p], offset[p] + storages[p].bytes))
            .collect();
        busy.sort();
        let mut best: Option<(usize, usize)> = None; // (gap size, offset)
        let mut cursor = 0;
        for &(lo, hi) in &busy {
            if lo >= cursor + me.bytes && best.is_none_or(|(g, _)| lo - cursor < g) {
                best = Some((lo - cursor, cursor));
            }
            cursor = cursor.max(hi);
        }
        offset[s] = best.map_or(cursor, |(_, o)| o);
        arena = arena.max(offset[s] + me.bytes);
        placed.push(s);
    }
    for (b, buf) in plan.buffers.iter_mut().enumerate() {
        buf.offset = offset[storage_of[b]];
    }
    plan.arena_bytes = arena;
}

/// Checks a plan's arena without trusting the planner: liveness is recomputed from the
/// steps' operands, and every pair of buffers live at the same step must be disjoint in
/// the arena, unless one reuses the other in place at the step that writes it.
pub fn verify(plan: &Plan) -> Result<(), String> {
    let n = plan.buffers.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    for (t, step) in plan.steps.iter().enumerate() {
        for b in [step.input, step.residual, step.output].into_iter().flatten().chain(step.scratch.iter().copied()) {
            first[b] = first[b].min(t);
            last[b] = last[b].max(t);
        }
    }
    for (b, buf) in plan.buffers.iter().enumerate() {
        if buf.offset + buf.bytes() > plan.arena_bytes {
            return Err(format!("{} ends past the arena", buf.name));
        }
        if first[b] == usize::MAX {
            return Err(format!("{} is never used", buf.name));
        }
    }
    for a in 0..n {
        for b in a + 1..n {
            let (x, y) = (&plan.buffers[a], &plan.buffers[b]);
            let live_together = first[a] <= last[b] && first[b] <= last[a];
            let overlap = x.offset < y.offset + y.bytes() && y.offset < x.offset + x.bytes();
            if !live_together || !overlap {
                continue;
            }
            // In place is legal only where the residual dies at the step writing the output.
            let in_place = plan.steps.iter().enumerate().any(|(t, s)| {
                matches!(s.op, StepOp::Conv(_))
                    && ((s.output == Some(b) && s.residual == Some(a))
                        || (s.output == Some(a) && s.residual == Some(b)))
                    && s.input != Some(a)
                    && s.input != Some(b)
                    && last[a.min(b)] == t
                    && first[a.max(b)] == t
                    && x.offset == y.offset
                    && x.layout == y.layout
            });
            if !in_place {
                return Err(format!(
                    "{} [{}..{}] and {} [{}..{}] are live together and overlap at offsets {} and {}",
                    x.name, first[a], last[a], y.name, first[b], last[b], x.offset, y.offset
                ));
            }
        }
    }
    Ok(())
}
