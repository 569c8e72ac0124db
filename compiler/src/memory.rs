//! The memory planner: liveness intervals over the plan's schedule, in-place reuse of a
//! residual operand that dies where its block's output is written, and best-fit offsets
//! in one arena (the best of a few fixed placement orders and some seeded shuffles), in
//! which the steps' scratch buffers (Winograd `V`, `M` and raw-weight scratch, input
//! panels) have a region of their own above the activations.
//!
//! Why two regions: on a Zen 4 VM whose two vCPUs shared no cache, a store to a line that
//! the other core has read since its last write waited for that copy to go (tens of ns a
//! line, barely overlapped; `bench/cross_write.c`), and a store to a line only the other
//! core has written did not. The Winograd kernels leave `V` and `M` written last (outside
//! bands the products store zeros over the `V` they read, the output transform over the
//! part of `M` it does not reuse; in bands, at two threads, each band's scratch stays on
//! one thread; panels and raw-weight scratch are written and read within one step), while
//! activations are read across threads wherever one call's split differs from the next
//! one's: ResNet-18's layer2.0.conv1 (then not in bands), whose `V` landed on the stem's
//! activations, took 0.25 ms for its input transform at 2 threads against 0.05 with `V`
//! elsewhere. ResNet-18 (Rust, AVX-512) at 2 threads without a shared cache: 0.963x the
//! time (9.77 against 10.15 ms, eight alternating runs each), the same with one (8.35
//! against 8.37); ResNet-50 unchanged. The cost, in the AVX-512 plans: ResNet-18's arena
//! 8.1 MB instead of 5.7 (6.7 since its strided conv runs in bands), ResNet-50's 11.8
//! instead of 8.9 (its peak RSS 128.6 MB instead of 126.6; 9.1 since its strided conv
//! runs in bands).
//!
//! **Architecture Invariant:** two buffers whose intervals `[first, last]` intersect never
//! share bytes, except a buffer and the residual operand it `reuses` in place: each output
//! element is written by the same thread right after reading its residual element. No
//! scratch buffer shares bytes with a buffer that is not scratch. [`verify`] checks both
//! independently of the planner.

use crate::plan::{Plan, StepOp};

/// Arena offsets are aligned to a cache line.
pub const ALIGN: usize = 64;

/// Random placement orders tried besides the three fixed ones (see [`assign`]).
const SHUFFLED_ORDERS: usize = 32;

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
    // Scratch storages (a step's scratch buffers, which never reuse another buffer) get
    // the region above the activations.
    let scratch: Vec<bool> = {
        let is_scratch = scratch_buffers(plan);
        storages.iter().map(|s| s.members.iter().any(|&b| is_scratch[b])).collect()
    };
    let steps = plan.steps.len();
    let peak = |region: bool| {
        (0..steps)
            .map(|t| {
                storages
                    .iter()
                    .zip(&scratch)
                    .filter(|&(s, &k)| k == region && s.first <= t && t <= s.last)
                    .map(|(s, _)| s.bytes)
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0)
    };
    plan.lower_bound_bytes = peak(false) + peak(true);
    // Best fit in several orders, keeping the smallest arena: largest first, longest-lived
    // first, earliest first, and seeded shuffles of the first (deterministic). Largest
    // first alone leaves a big short-lived scratch (a strided 3x3 conv's panel, 9/4 of its
    // input) above a gap nothing else fills: wide_resnet50_2 on Cranelift needed 1.16x its
    // lower bound, the first 8 shuffles already reach it (measured while scratch and
    // activations shared one region).
    let by_size = |s: &usize| (std::cmp::Reverse(storages[*s].bytes), storages[*s].first);
    let by_life =
        |s: &usize| (std::cmp::Reverse(storages[*s].last - storages[*s].first), std::cmp::Reverse(storages[*s].bytes));
    let by_first = |s: &usize| (storages[*s].first, std::cmp::Reverse(storages[*s].bytes));
    let mut orders: Vec<Vec<usize>> = vec![(0..storages.len()).collect(); 3];
    orders[0].sort_by_key(by_size);
    orders[1].sort_by_key(by_life);
    orders[2].sort_by_key(by_first);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64; // xorshift64
    for _ in 0..SHUFFLED_ORDERS {
        let mut o = orders[0].clone();
        for i in (1..o.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            o.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        orders.push(o);
    }
    // Each region on its own, in the same orders.
    let place = |region: bool| {
        orders
            .iter()
            .map(|order| {
                let order: Vec<usize> = order.iter().copied().filter(|&s| scratch[s] == region).collect();
                best_fit(&storages, &order)
            })
            .min_by_key(|(arena, _)| *arena)
            .expect("some orders")
    };
    let ((below, act_offset), (above, scratch_offset)) = (place(false), place(true));
    for (b, buf) in plan.buffers.iter_mut().enumerate() {
        let s = storage_of[b];
        buf.offset = if scratch[s] { below + scratch_offset[s] } else { act_offset[s] };
    }
    plan.arena_bytes = below + above;
}

/// Whether each buffer is some step's scratch.
fn scratch_buffers(plan: &Plan) -> Vec<bool> {
    let mut is_scratch = vec![false; plan.buffers.len()];
    for &b in plan.steps.iter().flat_map(|s| &s.scratch) {
        is_scratch[b] = true;
    }
    is_scratch
}

/// Places the storages in `order`, each into the smallest gap between the storages placed
/// before it that it overlaps in time, or above them all. Returns the arena size and the
/// offsets (those of storages not in `order` are left at 0).
fn best_fit(storages: &[Storage], order: &[usize]) -> (usize, Vec<usize>) {
    let mut offset = vec![0usize; storages.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0;
    for &s in order {
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
    (arena, offset)
}

/// Checks a plan's arena without trusting the planner: liveness is recomputed from the
/// steps' operands, and every pair of buffers live at the same step must be disjoint in
/// the arena, unless one reuses the other in place at the step that writes it; scratch
/// and other buffers never share bytes.
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
    let is_scratch = scratch_buffers(plan);
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
            if is_scratch[a] != is_scratch[b] && x.overlaps(y) {
                return Err(format!("{} and {} overlap, and only one of them is scratch", x.name, y.name));
            }
            let live_together = first[a] <= last[b] && first[b] <= last[a];
            if !live_together || !x.overlaps(y) {
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
