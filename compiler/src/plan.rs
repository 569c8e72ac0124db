//! The execution plan: the fused graph's nodes as an ordered list of steps over buffers
//! with concrete layouts, for one [`Target`]. The memory planner assigns arena offsets.
//!
//! **Layout:** every activation is stored NCHW[cb]c (`cb` = the target's lanes; `cb` = 1
//! for the model input) with a zero halo of `halo` pixels on every side, so that padded
//! convolutions and pools read their borders without branches. Channels are padded to a
//! multiple of `cb` with zeros, which stay zero through every kernel (zero weights, zero
//! bias, and `relu(0 + 0) = 0`).
//!
//! **Architecture Invariant:** the producer of a buffer writes all of it, halo included
//! (the halo with zeros), so a buffer never depends on what the arena held before.

use crate::graph::{Conv, Graph, MaxPool, Op, Shape, Winograd};
use crate::passes::Pass;
use crate::target::Target;
use anyhow::{bail, Result};
use petgraph::stable_graph::NodeIndex;
use resnetc_runtime::exec::BAND_SLOTS;
use std::collections::HashMap;

/// How one image's activation is laid out in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Real channels.
    pub c: usize,
    /// Channel block (innermost dimension).
    pub cb: usize,
    pub h: usize,
    pub w: usize,
    /// Zero border, in pixels, on each side.
    pub halo: usize,
}

impl Layout {
    pub fn cblocks(&self) -> usize {
        self.c.div_ceil(self.cb)
    }
    /// Channels including padding.
    pub fn cpad(&self) -> usize {
        self.cblocks() * self.cb
    }
    pub fn hp(&self) -> usize {
        self.h + 2 * self.halo
    }
    pub fn wp(&self) -> usize {
        self.w + 2 * self.halo
    }
    pub fn numel(&self) -> usize {
        self.cblocks() * self.hp() * self.wp() * self.cb
    }
    pub fn bytes(&self) -> usize {
        self.numel() * 4
    }
    /// Element index of channel `c`, row `y`, column `x` (unpadded coordinates).
    pub fn index(&self, c: usize, y: usize, x: usize) -> usize {
        (((c / self.cb) * self.hp() + y + self.halo) * self.wp() + x + self.halo) * self.cb + c % self.cb
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.cpad(), self.h, self.w)?;
        if self.cb > 1 {
            write!(f, " ({}c)", self.cb)?;
        }
        if self.halo > 0 {
            write!(f, " halo {}", self.halo)?;
        }
        Ok(())
    }
}

pub type BufId = usize;

/// A buffer of one image's activation.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub name: String,
    pub layout: Layout,
    /// Step that writes it.
    pub first: usize,
    /// Last step that reads it.
    pub last: usize,
    /// Byte offset in the arena (set by the memory planner).
    pub offset: usize,
    /// The buffer whose storage this one takes over in place (a residual operand that
    /// dies at the step that writes this buffer).
    pub reuses: Option<BufId>,
}

impl Buffer {
    pub fn bytes(&self) -> usize {
        self.layout.bytes()
    }

    /// Whether the two buffers' arena byte ranges share a byte.
    pub fn overlaps(&self, other: &Buffer) -> bool {
        self.offset < other.offset + other.bytes() && other.offset < self.offset + self.bytes()
    }
}

/// What one step computes.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOp {
    /// Copies the external NCHW input into its padded arena buffer, or with `phases` into
    /// its four phases, which the stem reads ([`phase_layout`]).
    PackInput {
        phases: bool,
    },
    Conv(Conv),
    MaxPool(MaxPool),
    GlobalAvgPool,
    /// The classifier, writing the logits into a padded buffer.
    Linear {
        param: String,
        cin: usize,
        cout: usize,
    },
    /// Copies the logits buffer to the external `[classes]` output of the image.
    UnpackOutput,
}

/// One kernel instance of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The fused node's name (`layer1.0.conv2`).
    pub name: String,
    pub op: StepOp,
    /// Buffer read (none for `PackInput`, which reads the external input).
    pub input: Option<BufId>,
    /// Residual operand read by the epilogue.
    pub residual: Option<BufId>,
    /// Buffer written (none for `UnpackOutput`, which writes the external output).
    pub output: Option<BufId>,
    /// Buffers written and read only inside this step: for a Winograd conv, the
    /// transformed input tiles `V` and the transformed output tiles `M` (see
    /// [`winograd_layouts`]); for a conv with scattered reads, its input panel (see
    /// [`panel_layout`]).
    pub scratch: Vec<BufId>,
    /// Shape of the input and output of one image.
    pub in_shape: Shape,
    pub out_shape: Shape,
}

/// Steps over buffers, with the arena laid out.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: Target,
    pub steps: Vec<Step>,
    pub buffers: Vec<Buffer>,
    /// Arena bytes for one image.
    pub arena_bytes: usize,
    /// The largest total of activation bytes live at any step plus the largest total of
    /// scratch bytes live at any step: no planner that keeps the two apart (as
    /// `memory::assign` does) can do better.
    pub lower_bound_bytes: usize,
    pub num_classes: usize,
    pub input: Shape,
}

/// Tiles of a Winograd conv's output `out` (in `M`) and of its transformed input (in
/// `V`): the same for square tiles; along rows, `V` also holds the input rows above and
/// below the output.
pub fn winograd_tiles(w: Winograd, out: Shape) -> (usize, usize) {
    let (tw, th) = w.grid(out.h, out.w);
    (th * tw, if w.row { (th + 2) * tw } else { th * tw })
}

/// Tile rows per band of a Winograd conv with output `out` (all of them: one band).
///
/// The three kernels of a conv pass its transformed input `V` and output `M` through
/// memory: on a large output (64x56x56 at F(4,3): 1.8 MB each) those go to L3 and back.
/// A conv over bands of tile rows, each band's three kernels run before the next band's,
/// keeps a band's `V` and `M` in L2 beside the transformed weights, which every band
/// reads again: the largest band for which weights and scratch fit
/// [`Target::band_bytes`], then evened out. Only square tiles, whose `U` fits with at least
/// one tile row (rows of 28x28x128 would re-read 2.4 MB of weights per band from L3,
/// which measured no faster than the whole conv). Measured on 64x8x56 and 64x4x56 against
/// 64x56x56 (Rust, 1 thread, per tile): the input transform 0.36x, the output transform
/// 0.32x, the products 1.02x the time. In ResNet-18 (four such convs, bands of one tile
/// row, per-kernel minima): transforms 0.55-0.75x and 0.42x, products 1.2x (each band
/// re-reads the weights from L2), 0.84-0.93x over the three kernels. Strided convs too
/// (ResNet-18/34's 64x56x56 one at F(2x2,3x3,s2), 512 KB of weights: bands of one tile
/// row in Rust, two on Cranelift): at 2 threads each thread runs its own bands, that conv
/// 0.84x the time with a shared cache and 0.72x without one, but the next conv's input
/// transform, split by channel blocks, then reads rows the other thread wrote
/// (1.16-1.2x); whole model 0.98-0.995x (ResNet-18 and ResNet-34, 1 and 2 threads, Rust,
/// Zen 4), and ResNet-18's arena 6.7 MB instead of 8.1 on AVX-512, 6.1 instead of 8.1 on
/// Cranelift (its scratch peak was that conv's whole `V` and `M`).
///
/// A strided conv whose weights alone fill the budget still runs in bands, of one tile
/// row, when its whole `V` and `M` outweigh its weights and those are at most an L2
/// (`Target::l2_bytes`, each band re-reads them): its 25 positions per 2x2 outputs make
/// `V` and `M` large (ResNet-50's 128x56x56 to 28x28: 2.6 MB each against 1 MB of
/// weights), and they were the arena's largest scratch. Per-call means, ResNet-50 at 2
/// threads (Rust, Zen 4, three profiled runs each): that conv 0.76 against 0.94 ms with a
/// shared cache, 0.90 against 1.22 without one; 1 thread neutral; the arena 9.1 MB
/// instead of 11.8 (Cranelift 10.0, its time not measured apart from the whole JIT's,
/// the same within the noise), peak RSS 126.3-126.4 MB instead of 129.2-129.6. One tile
/// row per band: an even count of them splits evenly between two threads' slots (bands
/// of two rows, seven of them, ran the conv at 0.80 and 0.92 ms). Its 256x28x28 sibling
/// (4.2 MB of weights, 2.6 MB of scratch) stays whole, and so do the wide ResNets'
/// 256x56x56 ones (4 MB of weights against 10 MB of scratch: not measured in bands).
pub fn winograd_band_rows(t: Target, c: &Conv, w: Winograd, out: Shape) -> usize {
    let (tw, th) = w.grid(out.h, out.w);
    // (Tiles along rows are not generated in bands.)
    if w.row {
        return th;
    }
    let (cin, cout) = (c.cin.div_ceil(t.lanes) * t.lanes, c.cout.div_ceil(t.lanes) * t.lanes);
    let u = 4 * w.weight_positions() * cin * cout;
    let row = 4 * w.positions() * tw * (cin + cout);
    let rows = t.band_bytes.saturating_sub(u) / row;
    if rows == 0 && w.stride > 1 && row * th > u && u <= t.l2_bytes {
        return 1;
    }
    if rows == 0 || rows >= th {
        return th;
    }
    th.div_ceil(th.div_ceil(rows))
}

/// The scratch layouts of a Winograd conv with output `out`: `V` holds the input
/// channels and `M` the output channels, each as `w.positions()` transformed positions
/// (the layout's rows) times the tiles of one band ([`winograd_tiles`],
/// [`winograd_band_rows`]; its columns). Only the sizes matter to the planner; the kernels
/// index them `[xi][channel block][tile][lane]` with positions [`winograd_plane_floats`]
/// apart, so the layout's rows are rounded up to cover the padded planes (a few more rows).
pub fn winograd_layouts(t: Target, c: &Conv, w: Winograd, out: Shape) -> (Layout, Layout) {
    let lanes = t.lanes;
    let (m_tiles, v_tiles) = winograd_slot_tiles(t, c, w, out);
    // Bands that may run at once each have a slot (`exec::Order::BandGroup`).
    let slots = if winograd_band_rows(t, c, w, out) < w.grid(out.h, out.w).1 { BAND_SLOTS } else { 1 };
    let l = |ch: usize, tiles: usize| {
        let cblocks = ch.div_ceil(lanes);
        let need = slots * winograd_slot_floats(w, cblocks, tiles, lanes);
        let plane = cblocks * tiles * lanes;
        Layout { c: ch, cb: lanes, h: need.div_ceil(plane), w: tiles, halo: 0 }
    };
    (l(c.cin, v_tiles), l(c.cout, m_tiles))
}

/// The third scratch buffer of a Winograd conv with raw weights (`Winograd::raw`): the
/// weights its products transform, two units per share (`kernels::winograd`'s
/// `raw_scratch_floats`). Only its size matters to the planner.
pub fn winograd_raw_layout(t: Target, c: &Conv, w: Winograd) -> Layout {
    let floats = crate::kernels::winograd_raw_scratch_floats(w, c.cin, t.lanes);
    Layout { c: t.lanes, cb: t.lanes, h: floats.div_ceil(t.lanes), w: 1, halo: 0 }
}

/// Tiles of `M` and of `V` in one slot of a Winograd conv's scratch buffers: those of its
/// whole output ([`winograd_tiles`]), or in bands those of one full band.
pub fn winograd_slot_tiles(t: Target, c: &Conv, w: Winograd, out: Shape) -> (usize, usize) {
    if w.row {
        return winograd_tiles(w, out);
    }
    let tiles = w.grid(out.h, out.w).0 * winograd_band_rows(t, c, w, out);
    (tiles, tiles)
}

/// Floats of one band's slot in a Winograd scratch buffer of `cblocks` channel blocks
/// and `tiles` tiles per position: every position's plane.
pub fn winograd_slot_floats(w: Winograd, cblocks: usize, tiles: usize, lanes: usize) -> usize {
    w.positions() * winograd_plane_floats(cblocks, tiles, lanes)
}

/// Floats of a cache line ([`crate::memory::ALIGN`] bytes).
const LINE_FLOATS: usize = crate::memory::ALIGN / 4;

/// Floats from one position's plane of a Winograd scratch buffer to the next: the
/// plane's `cblocks x tiles` vectors rounded up to an odd number of cache lines. A
/// transform touches one tile's `n x n` positions (`n` along rows), a plane apart;
/// planes a power-of-two multiple of lines apart put those vectors in a few L1 sets,
/// which evict each other within a tile (512x7x7 at F(2,3): 512 lines apart, one set for
/// all 16). With odd strides they fall in distinct sets. Measured when both transforms
/// passed their rows through the scratch (the output transform still does), 1 thread: Rust
/// ResNet-18 input transforms 0.50x (512x7x7), 0.84x (64x56x56), 0.95x (128x28x28) the
/// time; JIT ResNet-50 input and output transforms 0.33-0.96x, 38.90 -> 37.07 ms over all
/// Winograd kernels (products unchanged).
pub fn winograd_plane_floats(cblocks: usize, tiles: usize, lanes: usize) -> usize {
    let lines = (cblocks * tiles * lanes).div_ceil(LINE_FLOATS);
    (lines + 1 - lines % 2) * LINE_FLOATS
}

/// The scratch layout of a conv's input panel: for a Strassen conv its activation sums
/// (`kernels::strassen_panel_layout`); otherwise, on targets that pack one
/// ([`Target::panels`]), the input pixels each register tile reads, gathered per task
/// row (the one or two output rows a register tile spans, or the whole output with flat
/// tiles) and tile so the reduction walks memory contiguously. The kernels index it
/// `[task row][tile][tap][channel block][slot][lane]` (a tile's pixels, row by row); the
/// layout's channels are the taps' padded channels (`k * k * cin_pad`), its rows the task
/// rows and its columns `tiles * slots` (`TileShape` in `kernels/conv.rs`).
pub fn panel_layout(t: Target, c: &Conv, input: &Layout, out: &Layout) -> Option<Layout> {
    if c.strassen {
        return Some(crate::kernels::strassen_panel_layout(t, c, out));
    }
    let tile = crate::kernels::panel_tile(t, c, input, out)?;
    let w = tile.tiles(out.w, out.h) * tile.slots();
    Some(Layout { c: c.kernel * c.kernel * input.cpad(), cb: t.lanes, h: out.h.div_ceil(tile.rows), w, halo: 0 })
}

/// Halo a consumer needs on its input.
fn halo_needed(op: &Op, input: Shape, output: Shape) -> usize {
    match op {
        // Whole Winograd tiles read past the end: `T` tiles of `m` outputs read input up to
        // index `(T m - 1) stride + k - 1 - pad` for `k` taps (stride 1, pad 1, 3 taps: `pad
        // + (T m - size)` past the last row or column).
        Op::Conv(Conv { winograd: Some(w), pad, .. }) => {
            let past = |out: usize, input: usize, m: usize| {
                ((out.div_ceil(m) * m - 1) * w.stride + w.kernel()).saturating_sub(pad + input)
            };
            (*pad).max(past(output.h, input.h, w.tile_rows())).max(past(output.w, input.w, w.m))
        }
        Op::Conv(c) => c.pad,
        Op::MaxPool(p) => {
            // Ceil mode may let the last window run past the border (Caffe's pool).
            let over = |i: usize, o: usize| ((o - 1) * p.stride + p.kernel).saturating_sub(i + p.pad);
            p.pad.max(over(input.h, output.h)).max(over(input.w, output.w))
        }
        _ => 0,
    }
}

/// The layout of the model input's four phases, which the stem reads when it runs over
/// them (`Winograd::phases`, `c` the stem, `out` its output): phase channel
/// `resnetc_runtime::winograd::phase_channel(cin, ch, a, b)` holds input channel `ch` at
/// row parity `a` and column parity `b`, and pixel `(y, x)` input pixel
/// `(phase_source(y, a), phase_source(x, b))`, zero outside the input. One more row and
/// column than the output, so that its 4x4 conv with padding 1 has the output's size;
/// output row `y` reads rows `y - 1 ..= y + 2`, and row `oh + 1` (past the layout's rows)
/// would hold only input rows at or past the input's end: the zero halo stands for it.
/// Channel-blocked (the input is otherwise not), with the halo the phases' Winograd tiles
/// read.
pub fn phase_layout(t: Target, c: &Conv, out: Shape) -> Layout {
    let computed = c.computed_by(c.winograd);
    let input = Shape { c: computed.cin, h: out.h + 1, w: out.w + 1 };
    let halo = halo_needed(&Op::Conv(computed), input, out);
    Layout { c: input.c, cb: t.lanes, h: input.h, w: input.w, halo }
}

/// Builds the plan of a fused graph for `target` and lays out its arena.
pub fn build(fused: &Graph, target: Target) -> Result<Plan> {
    // The algorithm of each conv depends on the target's speed: decided here, per plan.
    let mut chosen = fused.clone();
    crate::passes::ChooseAlgorithm { target }.run(&mut chosen);
    build_chosen(&chosen, target)
}

/// [`build`] with each conv's algorithm as `fused` has it (tests force algorithms).
pub fn build_chosen(fused: &Graph, target: Target) -> Result<Plan> {
    let order = fused.schedule();
    let mut buf_of: HashMap<NodeIndex, BufId> = HashMap::new();
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    for &n in &order {
        let node = fused.node(n);
        let args = fused.inputs(n);
        let halo = fused
            .users(n)
            .iter()
            .map(|&u| halo_needed(&fused.node(u).op, node.shape, fused.node(u).shape))
            .max()
            .unwrap_or(0);
        let cb = if node.op == Op::Input { 1 } else { target.lanes };
        let mut layout = Layout { c: node.shape.c, cb, h: node.shape.h, w: node.shape.w, halo };
        let mut phases = false;
        // The stem over the input's phases reads them instead (its only reader, as
        // `ChooseAlgorithm` picks it).
        for &u in &fused.users(n) {
            if let Op::Conv(c @ Conv { winograd: Some(w), .. }) = &fused.node(u).op {
                if w.phases {
                    anyhow::ensure!(
                        fused.reads_only_the_input(u) && c.phase_stem(),
                        "{}: phases are for a 7x7 stride-2 stem that is the model input's only reader",
                        fused.node(u).name
                    );
                    layout = phase_layout(target, c, fused.node(u).shape);
                    phases = true;
                }
            }
        }
        let step_index = steps.len();
        let input_layout = args.first().map(|a| buffers[buf_of[a]].layout);
        let mut add_buffer = |name: &str, layout: Layout| {
            buffers.push(Buffer {
                name: name.to_string(),
                layout,
                first: step_index,
                last: step_index,
                offset: 0,
                reuses: None,
            });
            buffers.len() - 1
        };
        let mut scratch = vec![];
        if let Op::Conv(c @ Conv { winograd: Some(w), .. }) = &node.op {
            let (v, mm) = winograd_layouts(target, &c.computed_by(Some(*w)), *w, node.shape);
            scratch.push(add_buffer(&format!("{}.wino_v", node.name), v));
            scratch.push(add_buffer(&format!("{}.wino_m", node.name), mm));
            if w.raw {
                scratch.push(add_buffer(&format!("{}.wino_u", node.name), winograd_raw_layout(target, c, *w)));
            }
        } else if let Op::Conv(c) = &node.op {
            if let Some(panel) = panel_layout(target, c, &input_layout.expect("a conv has an input"), &layout) {
                scratch.push(add_buffer(&format!("{}.panel", node.name), panel));
            }
        }
        let mut new_buffer = |name: &str| add_buffer(name, layout);
        let in_shape = args.first().map_or(node.shape, |&a| fused.node(a).shape);
        let (op, output) = match &node.op {
            Op::Input => (StepOp::PackInput { phases }, Some(new_buffer("input"))),
            Op::Conv(c) => (StepOp::Conv(c.clone()), Some(new_buffer(&node.name))),
            Op::MaxPool(p) => {
                let producer_relu = matches!(&fused.node(args[0]).op, Op::Conv(c) if c.relu);
                if !producer_relu {
                    bail!("{}: max-pool over values that may be negative is not supported (its zero halo assumes a ReLU before it)", node.name);
                }
                (StepOp::MaxPool(*p), Some(new_buffer(&node.name)))
            }
            Op::GlobalAvgPool => (StepOp::GlobalAvgPool, Some(new_buffer(&node.name))),
            Op::Linear { param, cin, cout } => {
                (StepOp::Linear { param: param.clone(), cin: *cin, cout: *cout }, Some(new_buffer(&node.name)))
            }
            other => bail!("{}: {} must be fused before planning", node.name, other.kind()),
        };
        if let Some(b) = output {
            buf_of.insert(n, b);
        }
        let input = args.first().map(|a| buf_of[a]);
        let residual = args.get(1).map(|a| buf_of[a]);
        for b in input.iter().chain(residual.iter()) {
            buffers[*b].last = step_index;
        }
        steps.push(Step {
            name: node.name.clone(),
            op,
            input,
            residual,
            output,
            scratch,
            in_shape,
            out_shape: node.shape,
        });
    }
    // The logits leave the arena through one conversion step, as the input enters it.
    let logits = steps.last().and_then(|s| s.output).expect("the graph ends in a classifier");
    let last = steps.last().unwrap().clone();
    buffers[logits].last = steps.len();
    steps.push(Step {
        name: "output".into(),
        op: StepOp::UnpackOutput,
        input: Some(logits),
        residual: None,
        output: None,
        scratch: vec![],
        in_shape: last.out_shape,
        out_shape: last.out_shape,
    });
    let input = fused.node(fused.input()).shape;
    let mut plan = Plan {
        target,
        steps,
        buffers,
        arena_bytes: 0,
        lower_bound_bytes: 0,
        num_classes: fused.node(fused.output()).shape.c,
        input,
    };
    crate::memory::assign(&mut plan);
    // An overlap the planner let through would be a wrong result on every backend, and a
    // data race between the tasks of a call: every plan is checked, not only in tests.
    crate::memory::verify(&plan).map_err(|e| anyhow::anyhow!("internal error: memory plan: {e}"))?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x3 conv with padding 1, `cin` to `cout` channels.
    fn conv3x3(cin: usize, cout: usize, stride: usize, winograd: Option<Winograd>) -> Conv {
        Conv {
            weight: "c".into(),
            cin,
            cout,
            kernel: 3,
            stride,
            pad: 1,
            groups: 1,
            folded_bn: None,
            residual: false,
            relu: false,
            winograd,
            strassen: false,
        }
    }

    /// Bands of a Winograd conv (`winograd_band_rows`): the largest that fits the budget;
    /// none when the weights alone fill it; but bands of one tile row for a strided conv
    /// whose `V` and `M` outweigh its weights (ResNet-50's 128x56x56 to 28x28), and still
    /// none for one whose weights outweigh them (its 256x28x28 to 14x14) or exceed an L2,
    /// or a stride-1 one.
    #[test]
    fn strided_convs_whose_scratch_outweighs_their_weights_run_in_one_row_bands() {
        let t = Target::AVX512;
        let rows = |cin: usize, cout: usize, w: Winograd, side: usize| {
            let out = Shape { c: cout, h: side, w: side };
            (winograd_band_rows(t, &conv3x3(cin, cout, w.stride, Some(w)), w, out), w.grid(side, side).1)
        };
        // 64x56x56 at F(4,3): 0.6 MB of weights, bands of tile rows that fit beside them.
        let (r, th) = rows(64, 64, Winograd::square(4), 56);
        assert!(r < th, "{r} of {th}");
        // 128x28x28 at F(4,3): 2.4 MB of weights against 1.9 MB of V and M: whole.
        assert_eq!(rows(128, 128, Winograd::square(4), 28), (7, 7));
        // Strided 128 -> 128 to 28x28: 1 MB of weights, 5.2 MB of V and M.
        assert_eq!(rows(128, 128, Winograd::strided(), 28), (1, 14));
        // Strided 256 -> 256 to 14x14: 4.2 MB of weights, 2.6 MB of V and M.
        assert_eq!(rows(256, 256, Winograd::strided(), 14), (7, 7));
        // Stride 1, 128x56x56 at F(4,3): 7.2 MB of V and M against 2.4 MB of weights, whole.
        assert_eq!(rows(128, 128, Winograd::square(4), 56), (14, 14));
        // Strided 256 -> 256 to 28x28 (the wide ResNets'): 10 MB of V and M, but 4 MB of
        // weights, more than an L2, for each band to read again: whole.
        assert_eq!(rows(256, 256, Winograd::strided(), 28), (14, 14));
        // Strided 64 -> 128 to 28x28 (ResNet-18): its weights fit beside bands.
        let (r, th) = rows(64, 128, Winograd::strided(), 28);
        assert!(r < th, "{r} of {th}");
    }

    /// The halo whole Winograd tiles need, against the last input index their tiles read
    /// counted by hand (a short halo is not caught by comparing outputs: those reads feed
    /// only discarded outputs).
    #[test]
    fn winograd_halo_covers_the_last_tile() {
        let conv = |stride: usize, w: Winograd| Op::Conv(conv3x3(16, 16, stride, Some(w)));
        let shape = |h: usize, w: usize| Shape { c: 16, h, w };
        // (stride, algorithm, input h x w, output h x w, halo): strided tiles of 2 outputs
        // read 5 inputs 4 apart from -1, so T tiles read up to 4 T - 1.
        let cases = [
            (2, Winograd::strided(), (19, 21), (10, 11), 3), // rows to 19 (1 past), columns to 23 (3)
            (2, Winograd::strided(), (20, 20), (10, 10), 1), // to 19: the padding only
            (2, Winograd::strided(), (10, 10), (5, 5), 2),   // to 11
            (1, Winograd::square(3), (14, 14), (14, 14), 2), // 5 tiles of 3 read to 15
            (1, Winograd::square(4), (7, 7), (7, 7), 2),     // 2 tiles of 4 read to 8
            (1, Winograd::row(3), (7, 7), (7, 7), 3),        // columns to 9; rows to 7
        ];
        for (stride, w, (ih, iw), (oh, ow), want) in cases {
            assert_eq!(halo_needed(&conv(stride, w), shape(ih, iw), shape(oh, ow)), want, "{w} {ih}x{iw}");
        }
    }
}
