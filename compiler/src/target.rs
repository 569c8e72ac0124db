//! What the code generator targets: the vector width (which is also the channel block of
//! the activation layout) and how many vector registers the register allocator has.

/// A code-generation target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub name: &'static str,
    /// f32 lanes of one vector; activations are blocked by this many channels (NCHW[lanes]c).
    pub lanes: usize,
    /// Vector registers available to a micro-kernel's tile.
    pub vregs: usize,
    /// Sustained single-thread convolution throughput, GFLOP/s (measured on the
    /// development machine; the cost model only compares algorithms with it, so what
    /// matters is its ratio to the bandwidths below).
    pub gflops: u32,
    /// Sustained single-thread memory bandwidth for streamed weights, GB/s.
    pub weight_gbytes: u32,
    /// Effective bandwidth of the Winograd transforms over their scratch buffers, GB/s.
    /// (Calibrated when the input transform passed its rows through `V`; it now stores
    /// only its results, so the cost model overestimates its time a little.)
    pub transform_gbytes: u32,
    /// Bandwidth of weights re-read from L2 by a kernel whose per-tile weights miss L1, GB/s.
    pub l2_gbytes: u32,
    /// The cache size, bytes, past which a call's weights count as not staying in cache
    /// from one image of a batch to the next. 2 MB, though the development machines have
    /// 1 MB of L2 per core: the thresholds built on it were each measured best at their
    /// multiple of it (batch order: twice; direct convs prefetch weights of half or more;
    /// `stays_in_l2`: half).
    pub l2_bytes: usize,
    /// Bytes a band of a Winograd conv may keep in cache between its three kernels: the
    /// transformed weights and the band's two scratch buffers (`plan::winograd_band_rows`).
    /// The L2 of one core (1 MB here), or a little more where measured.
    pub band_bytes: usize,
    /// L1 data cache bytes: an input larger than this does not stay in L1 across a conv;
    /// the cost model counts L2 re-reads of a register tile's weights past this.
    pub l1_bytes: usize,
    /// Weights of one register tile that stay in L1 (32 KB here) beside the input they meet;
    /// a tile whose weights exceed this re-reads them from L2 for every register tile.
    /// Long 1x1 reductions split into chunks only past four times this
    /// (`kernels::conv::reduction_chunks`, measured best with it); the cost model counts
    /// such re-reads only past `l1_bytes`.
    pub l1_tile_weight_bytes: usize,
    /// Whether the kernels prefetch streamed weights (`Stmt::Prefetch`): an instruction in
    /// Rust, a call to a helper on Cranelift's x86-64 (dropped where it has none).
    pub prefetch: bool,
    /// Whether a direct conv with a residual also prefetches each register tile's
    /// residual (one line per accumulator) before the tile's reduction, so the epilogue's
    /// loads find it in cache: the residual was written calls earlier (a block's input, or
    /// the downsample branch's output before the block's other convs) and has left L2,
    /// and its loads otherwise wait at the end of every tile. Takes effect only with
    /// `prefetch`; set on the Rust target only (on Cranelift each prefetch is a helper
    /// call per line; not measured there).
    pub prefetch_residual: bool,
    /// Whether convs with scattered reads (some 1x1 convs, strided k x k convs) first
    /// gather their input into a panel ([`crate::plan::panel_layout`]). In the
    /// channel-blocked layout the reduction over input channels jumps a whole plane per
    /// channel block, a new page each time, which the hardware prefetchers do not follow;
    /// a short register tile (128-bit vectors) then waits on L2.
    pub panels: bool,
    /// Whether Winograd convs may store raw weights and transform them in their matrix
    /// products (`Winograd::raw`, where `kernels::winograd_raw_fits` allows): where the
    /// products have the registers for the transform beside their tile and the FMA rate to
    /// hide most of it under the weight stream.
    pub raw_winograd: bool,
    /// Whether 1x1 convs may run as one level of Strassen (`Conv::strassen`, where
    /// `kernels::strassen_fits` allows): 7/8 of the multiply-adds, for sums of half-size
    /// blocks made in the panel gather and the epilogue. It pays where the FMAs are slow
    /// beside memory: 128-bit vectors (a C model of ResNet-50's 1x1 convs: the products
    /// 0.87-0.96x the time at 128 bits, 0.93-1.11x at 512).
    pub strassen: bool,
    /// Most bytes of weights the cost model may choose (Winograd weights are up to 4x
    /// larger than direct ones; estimated without the padding to whole vectors): a
    /// memory-for-speed trade a user asks for (`--max-weight-mb`); `None` chooses for
    /// speed alone. Below the direct weights, every conv holds the direct weights' bytes
    /// (direct, or Winograd with raw weights).
    pub weight_budget: Option<usize>,
}

impl Target {
    /// Winograd products keep every tile of a position in registers (one output vector
    /// wide) when there are at most this many tiles; otherwise blocks of a few tiles.
    /// 25 = the 5x5 tiles of a 14x14 output at F(3,3); 25 accumulators and a weight
    /// vector leave room in 32 registers (the broadcasts fold into the FMAs).
    pub fn winograd_tiles_in_registers(&self) -> usize {
        if self.vregs >= 32 {
            25
        } else {
            0
        }
    }

    /// Whether `bytes` (a call's weights or input) stay in L2 from task to task: half of
    /// `l2_bytes`, leaving room for what the call streams beside them.
    pub fn stays_in_l2(&self, bytes: usize) -> bool {
        bytes <= self.l2_bytes / 2
    }

    /// This target with at most `bytes` of packed conv weights (see `weight_budget`).
    pub fn with_weight_budget(self, bytes: Option<usize>) -> Target {
        Target { weight_budget: bytes, ..self }
    }

    /// Cranelift on x86-64: 128-bit xmm registers only, 16 of them.
    pub const CRANELIFT_X64: Target = Target {
        name: "cranelift-x64",
        lanes: 4,
        vregs: 16,
        // Calibrated on the Zen 5 with ResNet-50's per-layer runs: direct convs at 51-57
        // GFLOP/s (80% of the 128-bit peak), the transforms through their scratch at about
        // 20 GB/s. With these, ResNet-50's 7x7x512 convs take F(4,3) (2.36-2.40 ms each
        // against 2.86 at F(3,3)) and its stride-2 28x28 conv the strided Winograd (3.74
        // against 4.44 ms with its panel); whole model 0.985-0.995x the time, ResNet-18
        // 0.96-0.98x, ResNet-34 1.00x. (The previous figures, 33 GFLOP/s, 10 GB/s of
        // weights, 5 of transforms, 20 of L2, were from the Xeon, where F(4,3) on
        // 7x7x512 took 5.1 ms against 4.5 at F(3,3).)
        gflops: 55,
        weight_gbytes: 25,
        transform_gbytes: 20,
        l2_gbytes: 40,
        l2_bytes: 2 << 20,
        // A quarter over the L2: ResNet-50's 64x56x56 Winograd convs then run in bands of
        // two tile rows, whose products take blocks of 10, 10 and 8 tiles instead of 7
        // and 7 (1.1 MB per band; 0.94x the products' time, 3.22-3.24 against 3.42-3.47
        // ms, the transforms the same).
        band_bytes: 5 << 18,
        l1_bytes: 32 << 10,
        l1_tile_weight_bytes: 32 << 10,
        prefetch: true,
        prefetch_residual: false,
        panels: true,
        raw_winograd: false,
        strassen: true,
        weight_budget: None,
    };
    /// rustc with AVX-512F: 512-bit zmm registers, 32 of them. Calibrated on the AMD
    /// EPYC (Zen 5, full-width 512-bit FMAs, 48 KB L1d, 1 MB L2 per core) with
    /// ResNet-50's per-kernel minima at 1 thread (`RESNETC_PROFILE`): direct and 1x1 convs
    /// at 235-260 GFLOP/s, Winograd products 225-255; weights streamed by the products of
    /// its 7x7x512 convs at about 22 GB/s (a 256 MB read: 35 GB/s); the Winograd
    /// transforms through their scratch at 43-57 GB/s. (The previous calibration, on an
    /// Intel Xeon and a Zen 4 with half-rate 512-bit FMAs, was 115 GFLOP/s, 10 GB/s of
    /// weights and 7 of transforms: with it the strided Winograd of 28x28 and 14x14
    /// outputs, measured 0.80x and 0.84x the direct conv's time here, did not pay.) Tiles
    /// keep the 32 KB of weights per register tile they were measured best with here too
    /// (48 KB moved 1x1 convs to other tiles, 1.03x their time).
    pub const AVX512: Target = Target {
        name: "avx512",
        lanes: 16,
        vregs: 32,
        gflops: 245,
        weight_gbytes: 25,
        transform_gbytes: 50,
        l2_gbytes: 100,
        l2_bytes: 2 << 20,
        band_bytes: 1 << 20,
        l1_bytes: 48 << 10,
        l1_tile_weight_bytes: 32 << 10,
        prefetch: true,
        // ResNet-50 on an AMD EPYC (Zen 4), 1 thread: its 1x1 convs with a residual 0.94-1.00x
        // the time (per-call minima), the whole model 0.995x (six interleaved A/B rounds).
        // Not measured on other machines, at 2 threads, or on 3x3 direct convs with a
        // residual (ResNet-18/34 add theirs in Winograd output transforms).
        prefetch_residual: true,
        panels: false,
        raw_winograd: true,
        strassen: false,
        weight_budget: None,
    };
}
