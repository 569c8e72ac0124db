//! The kernel IR, executed by its interpreter, against the reference executor: small
//! goldens and random specs, for both targets. This checks the kernel generators and the
//! weight packing independently of any native backend.

mod support;

use resnetc::graph::{Conv, Graph, Op, Winograd};
use resnetc::target::Target;
use resnetc::{from_spec, kernels, passes, plan, reference, weights};
use resnetc_runtime::exec::{band_slot, BAND_SLOTS};
use resnetc_runtime::pack;
use support::random_spec::{random_spec, Rng};

/// The graph of `spec` and its kernel IR program for `target`.
fn lower(spec: &resnetc::spec::Spec, target: Target) -> (Graph, kernels::Program) {
    let graph = from_spec::build(spec).unwrap();
    let p = plan::build(&passes::fuse(&graph).0, target).unwrap();
    let prog = kernels::lower(&p).unwrap();
    (graph, prog)
}

/// Runs `prog` (lowered from `graph`) with the interpreter on seeded weights.
fn interpret(graph: &Graph, prog: &kernels::Program, weight_seed: u64, x: &resnetc_runtime::Tensor) -> Vec<f32> {
    let blob = pack::build_blob(&prog.recipes, prog.weight_floats, &weights::seeded(graph, weight_seed)).unwrap();
    kernels::interpret(prog, blob.as_slice(), x.data(), x.shape()[0])
}

fn run_ir(spec: &resnetc::spec::Spec, target: Target, weight_seed: u64, x: &resnetc_runtime::Tensor) -> Vec<f32> {
    let (graph, prog) = lower(spec, target);
    interpret(&graph, &prog, weight_seed, x)
}

/// Two seeded images of `spec` through `prog` (lowered from `graph`) against the
/// reference executor on the same weights; returns the relative error (panics past the
/// tolerance, or past 1e-3 of the features: `support::agree_seeded`).
fn agrees_with_reference(
    spec: &resnetc::spec::Spec,
    graph: &Graph,
    prog: &kernels::Program,
    weight_seed: u64,
    input_seed: u64,
) -> f64 {
    let x = weights::seeded_input(spec.input, 2, input_seed);
    let w = weights::seeded(graph, weight_seed);
    let want = reference::run(graph, &w, &x).unwrap();
    let y = resnetc_runtime::Tensor::new(want.shape().to_vec(), interpret(graph, prog, weight_seed, &x));
    support::agree_seeded(&y, &want, &w).unwrap().0
}

#[test]
fn interpreted_kernels_match_small_goldens() {
    for g in support::goldens().iter().filter(|g| g.model.ends_with(".toml") || g.model == "resnet20") {
        for target in [Target::CRANELIFT_X64, Target::AVX512] {
            let y = run_ir(&g.spec(), target, g.weight_seed, &g.input());
            let y = resnetc_runtime::Tensor::new(g.logits().shape().to_vec(), y);
            let rel = support::agree(&y, &g.logits()).unwrap_or_else(|e| panic!("{} {}: {e}", g.name, target.name));
            eprintln!("{:<22} {:<14} rel err {rel:.2e}", g.name, target.name);
        }
    }
}

#[test]
fn interpreted_kernels_match_reference_on_random_specs() {
    let mut rng = Rng::new(0x1e);
    let mut strassen = 0;
    for i in 0..40 {
        let spec = random_spec(&mut rng, &format!("random{i}"));
        let graph = from_spec::build(&spec).unwrap();
        let batch = rng.range(1, 2);
        let x = weights::seeded_input(spec.input, batch, i);
        let w = weights::seeded(&graph, i);
        let want = reference::run(&graph, &w, &x).unwrap();
        for target in [Target::CRANELIFT_X64, Target::AVX512] {
            let y = resnetc_runtime::Tensor::new(want.shape().to_vec(), run_ir(&spec, target, i, &x));
            support::agree_seeded(&y, &want, &w)
                .unwrap_or_else(|e| panic!("random spec {i} {}: {e}\n{spec}", target.name));
        }
        // Every 1x1 conv the kernels can run as Strassen, whatever the cost model says
        // (it takes only long reductions, which specs this small rarely have).
        let (fused, n) = forced_strassen(&graph, Target::CRANELIFT_X64);
        if n > 0 {
            strassen += n;
            let prog = kernels::lower(&plan::build_chosen(&fused, Target::CRANELIFT_X64).unwrap()).unwrap();
            let y = resnetc_runtime::Tensor::new(want.shape().to_vec(), interpret(&graph, &prog, i, &x));
            support::agree_seeded(&y, &want, &w)
                .unwrap_or_else(|e| panic!("random spec {i} with Strassen: {e}\n{spec}"));
        }
    }
    eprintln!("1x1 convs forced to Strassen: {strassen}");
    assert!(strassen >= 10, "too few 1x1 convs Strassen can run in the random specs: {strassen}");
}

/// The fused `graph` with the cost model's algorithms for `target`, then Strassen on every
/// 1x1 conv the kernels can run that way (`kernels::strassen_possible`), and how many.
fn forced_strassen(graph: &Graph, target: Target) -> (Graph, usize) {
    let mut fused = passes::fuse(graph).0;
    passes::Pass::run(&passes::ChooseAlgorithm { target }, &mut fused);
    let mut forced = 0;
    for n in fused.schedule() {
        let shape = fused.node(n).shape;
        if let Op::Conv(c) = &mut fused.g[n].op {
            c.strassen = kernels::strassen_possible(target, c, shape);
            forced += c.strassen as usize;
        }
    }
    (fused, forced)
}

/// 1x1 convs as Strassen (Cranelift target, forced on every 1x1 conv it can run),
/// against the reference, in a bottleneck stage 256 wide (the stride-2 downsample, the
/// expanding residual convs whose output may overwrite their residual, the reducing convs
/// whose output has the next 3x3 conv's halo), on outputs of: 22x14 (row halves of 11
/// rows, in tiles of two rows of 5, 5 and 4 pixels: the last task row has one row) and
/// 30x26 (one-row tiles of 9, 9 and 8 pixels), whose products gather their task row's
/// panel themselves (they read the input); 15x13 (flat tiles over the first 98 pixels,
/// the last one paired with nothing) and 7x7 (flat, 25 and 24 pixels), gathered by a
/// kernel of their own.
#[test]
fn strassen_convs_match_reference() {
    let cases = [
        ("[3, 44, 28]", ["strassen1x1s1_1024x22x14_to256x22x14_relu", "strassen1x1s2_256x44x28_to1024x22x14"], true),
        (
            "[3, 60, 52]",
            ["strassen1x1s1_256x30x26_to1024x30x26_res_relu", "strassen1x1s1_1024x30x26_to256x30x26_relu"],
            true,
        ),
        (
            "[3, 30, 26]",
            ["strassen1x1s1_1024x15x13_to256x15x13_flat_relu", "pack_strassen1x1s2_256x30x26_to1024x15x13_flat"],
            false,
        ),
        (
            "[3, 14, 13]",
            ["strassen1x1s1_256x7x7_to1024x7x7_flat_res_relu", "pack_strassen1x1s1_1024x7x7_to256x7x7_flat"],
            false,
        ),
    ];
    for (input, names, gathers) in cases {
        let (spec, graph, _) = two_stage_bottleneck(input, Target::CRANELIFT_X64);
        let (fused, forced) = forced_strassen(&graph, Target::CRANELIFT_X64);
        // Every 1x1 conv: three in stage 1 (64 -> 64, and 64 -> 256 twice), five in stage 2.
        assert_eq!(forced, 8, "{input}");
        let prog = kernels::lower(&plan::build_chosen(&fused, Target::CRANELIFT_X64).unwrap()).unwrap();
        assert_kernels(&prog, &names);
        let products = prog.kernels.iter().find(|k| k.name == names[0]).unwrap();
        assert_eq!(products.args.contains(&"in"), gathers, "{input}: {:?}", products.args);
        let rel = agrees_with_reference(&spec, &graph, &prog, 8, 5);
        eprintln!("strassen {input} rel err {rel:.2e}");
    }
}

/// The AVX-512 register tiles for short rows: 14 pixels of one 14-wide row, and two
/// 7-wide rows per task with an odd height (the last task has one row), with stride 2, a
/// residual and a 1x1 downsample, against the reference.
#[test]
fn wide_register_tiles_match_reference() {
    let text = "block = \"basic\"\nlayers = [1, 1, 1]\nwidths = [32, 64, 128]\nstem = \"cifar\"\nnum_classes = 5\ninput = [3, 26, 28]\n";
    let spec = resnetc::spec::parse(text, "wide_tiles").unwrap();
    // The cost model's algorithms, but stride-2 convs direct (it takes the strided
    // Winograd for the 7x7 one).
    let graph = from_spec::build(&spec).unwrap();
    let mut fused = passes::fuse(&graph).0;
    passes::Pass::run(&passes::ChooseAlgorithm { target: Target::AVX512 }, &mut fused);
    set_algorithms(&mut fused, |c| (c.stride > 1).then_some(None));
    let prog = kernels::lower(&plan::build_chosen(&fused, Target::AVX512).unwrap()).unwrap();
    // 3x3 stride 2 to 7x7: 4 tiles of 2 output vectors by 4 row pairs (one row tiles
    // would make 4 x 7 or, at 4 vectors, 2 x 7 tasks).
    let k = prog.kernels.iter().find(|k| k.name.starts_with("conv3x3s2_64x13x14_to128x7x7")).expect("the 7x7 conv");
    assert_eq!(k.tasks(), 16, "two rows per task expected: {:?}", k.task_dims);
    let rel = agrees_with_reference(&spec, &graph, &prog, 4, 9);
    eprintln!("wide tiles rel err {rel:.2e}");
}

/// The Cranelift target with direct 1x1 convs only, for the tests of their panels.
const NO_STRASSEN: Target = Target { strassen: false, ..Target::CRANELIFT_X64 };

/// Convs that read a panel (Cranelift target without Strassen): a stride-2 1x1 downsample, a stride-2 3x3
/// conv (pad 1: its taps read the input's halo) and a 1x1 conv over 1024 channels of
/// 15x13 (rows over 32 KB), all with tiles of two rows of 5 + 4 + 4 pixels (rows split
/// evenly: two short tiles, a loop of them; with 15 rows the last task has one row), and
/// a 1x1 conv with one-row tiles of 9 + 9 + 8 pixels on 30x26, against the reference.
#[test]
fn panel_convs_match_reference() {
    let (spec, graph, prog) = two_stage_bottleneck("[3, 30, 26]", NO_STRASSEN);
    assert_kernels(
        &prog,
        &[
            "pack_panel1x1s2_256x30x26_to15x13_p5x2r_short2",
            "pack_panel3x3s2_256x30x26_to15x13_p5x2r_short2",
            "pack_panel1x1s1_1024x15x13_to15x13_p5x2r_short2",
            "pack_panel1x1s1_256x30x26_to30x26_p9_short1",
        ],
    );
    let rel = agrees_with_reference(&spec, &graph, &prog, 5, 3);
    eprintln!("panels rel err {rel:.2e}");
}

/// Flat register tiles (Cranelift target without Strassen): outputs of 7x7 covered by tiles of 10, 10, 10,
/// 10 and 9 consecutive pixels that continue on the next row, reading flat panels packed
/// from a stride-2 1x1 downsample, a stride-2 3x3 conv (pad 1), and 1x1 convs with a
/// residual and into an output with a halo (the next 3x3 conv's), against the reference.
#[test]
fn flat_tiles_match_reference() {
    let (spec, graph, prog) = two_stage_bottleneck("[3, 14, 13]", NO_STRASSEN);
    assert_kernels(
        &prog,
        &[
            "pack_panel1x1s2_256x14x13_to7x7_p10flat_short1",
            "pack_panel3x3s2_256x14x13_to7x7_p10flat_short1",
            "pack_panel1x1s1_256x7x7_to7x7_p10flat_short1",
            "pack_panel1x1s1_1024x7x7_to7x7_p10flat_short1",
        ],
    );
    let rel = agrees_with_reference(&spec, &graph, &prog, 3, 4);
    eprintln!("flat tiles rel err {rel:.2e}");
}

/// 1x1 convs over 1024 channels whose reduction runs in chunks (AVX-512 target: partial
/// sums through the output, the epilogue and the output's halo after the last chunk),
/// beside the unchunked residual convs, against the reference: on 14x14 (14-pixel tiles
/// of two output vectors, 16 chunks), 15x7 (two-row tiles, the last task row has one row)
/// and 15x13 (13 pixels of four vectors, 32 chunks).
#[test]
fn reduction_chunks_match_reference() {
    // 512 wide: 4 MB of weights, which do not stay in L2 (where they do, the conv takes
    // rows outside tiles and no chunks).
    let cases = [
        ("[3, 28, 28]", "conv1x1s1_2048x14x14_to512x14x14_relu_kc16"),
        ("[3, 30, 14]", "conv1x1s1_2048x15x7_to512x15x7_relu_kc16"),
        ("[3, 30, 26]", "conv1x1s1_2048x15x13_to512x15x13_relu_kc32"),
    ];
    for (input, kernel) in cases {
        let (spec, graph, prog) = two_stage_bottleneck_of(512, input, Target::AVX512);
        assert_kernels(&prog, &[kernel]);
        let rel = agrees_with_reference(&spec, &graph, &prog, 7, 2);
        eprintln!("reduction chunks {input} rel err {rel:.2e}");
    }
}

/// Sets the algorithm of every conv of `fused` for which `pick` gives one (direct:
/// `Some(None)`); how many it set.
fn set_algorithms(fused: &mut Graph, pick: impl Fn(&Conv) -> Option<Option<Winograd>>) -> usize {
    let mut set = 0;
    for n in fused.schedule() {
        if let Op::Conv(c) = &mut fused.g[n].op {
            if let Some(w) = pick(c) {
                c.winograd = w;
                set += 1;
            }
        }
    }
    set
}

/// The fused `graph` with `w` forced on every stride-1 3x3 conv past the stem (at least
/// 16 input channels), and how many that is.
fn forced_winograd(graph: &Graph, w: Winograd) -> (Graph, usize) {
    let mut fused = passes::fuse(graph).0;
    let forced = set_algorithms(&mut fused, |c| (c.kernel == 3 && c.stride == 1 && c.cin >= 16).then_some(Some(w)));
    (fused, forced)
}

/// Winograd along rows, F(1 x m, 3 x 3) for m = 2, 3 and 4, forced on every stride-1 3x3
/// conv past the stem of a basic-block network on an odd-sized input (the last tile of
/// each row hangs over; register blocks of several rows with a shorter last block, rows
/// wider than a block (27 tiles at m = 2); channels padded to whole vectors (24 and 40
/// with 16 lanes); a residual, ReLU, and a conv whose output feeds another row Winograd
/// conv's halo), for both targets, against the reference.
#[test]
fn row_winograd_matches_reference() {
    let (spec, graph) = basic_24_40("[3, 9, 53]", "row_winograd");
    for m in [2, 3, 4] {
        let (fused, forced) = forced_winograd(&graph, Winograd::row(m));
        assert_eq!(forced, 5, "the stride-1 3x3 convs past the stem");
        for target in [Target::CRANELIFT_X64, Target::AVX512] {
            let prog = kernels::lower(&plan::build_chosen(&fused, target).unwrap()).unwrap();
            assert_kernels(&prog, &[&format!("wino1x{m}_gemm_24x9x53_to24x9x53")]);
            let rel = agrees_with_reference(&spec, &graph, &prog, 8, 5);
            eprintln!("F(1x{m},3x3) {} rel err {rel:.2e}", target.name);
        }
    }
}

/// Winograd with raw weights (`Winograd::raw`: the products transform the raw filters,
/// pipelined through a scratch in two shares), forced along rows (m = 2, 3, 4) and on
/// square tiles (m = 2, 3, 4) on every stride-1 3x3 conv where the products allow it
/// (`kernels::winograd_raw_fits`) of a basic-block network: 48 -> 64 channels (three
/// channel blocks of 16: square tiles without halves; in halves with 4 lanes), 64 -> 64
/// (halves), a 9x10 output (tiles hang over) and a 5x5 one after a stride-2 stage, a
/// residual and ReLU; for AVX-512 and for 4 lanes (with 32 registers), against the
/// reference. The interpreter runs each pipelined call's shares last first, or both in
/// one call (`kernels::interpret`; two images).
#[test]
fn raw_winograd_matches_reference() {
    let text = "block = \"basic\"\nlayers = [2, 1]\nwidths = [64, 64]\nstem = \"cifar\"\nstem_width = 48\nnum_classes = 5\ninput = [3, 9, 10]\n";
    let spec = resnetc::spec::parse(text, "raw_winograd").unwrap();
    let graph = from_spec::build(&spec).unwrap();
    let four_lanes = Target { raw_winograd: true, vregs: 32, ..Target::CRANELIFT_X64 };
    for w in [2, 3, 4].into_iter().flat_map(|m| [Winograd::row(m), Winograd::square(m)]) {
        let w = w.with_raw_weights();
        for target in [Target::AVX512, four_lanes] {
            let mut fused = passes::fuse(&graph).0;
            let mut forced = 0;
            for n in fused.schedule() {
                let shape = fused.node(n).shape;
                if let Op::Conv(c) = &mut fused.g[n].op {
                    if c.kernel == 3 && c.stride == 1 && c.cin >= 16 && kernels::winograd_raw_fits(target, c, w, shape)
                    {
                        c.winograd = Some(w);
                        forced += 1;
                    }
                }
            }
            assert_eq!(forced, 5, "{w} on {}: the stride-1 3x3 convs past the stem", target.name);
            let prog = kernels::lower(&plan::build_chosen(&fused, target).unwrap()).unwrap();
            let pipelined = prog.calls.iter().filter(|c| c.order == kernels::Order::Pipelined).count();
            assert_eq!(pipelined, forced, "{w} on {}: one pipelined products call per conv", target.name);
            assert!(prog.kernels.iter().any(|k| k.name.contains("raw_gemm")), "{w}: raw products");
            let rel = agrees_with_reference(&spec, &graph, &prog, 8, 5);
            eprintln!("{w} {} rel err {rel:.2e}", target.name);
        }
    }
}

/// The MACs of all of a program's calls.
fn total_macs(p: &kernels::Program) -> usize {
    p.calls.iter().map(|c| c.macs).sum()
}

/// Winograd convs in bands of tile rows (`plan::winograd_band_rows`), forced by small
/// band budgets: F(2,3), F(3,3) and F(4,3) on every stride-1 3x3 conv of a 24/40-wide
/// network on a 19x21 input (tiles hang over the bottom and right borders, so the last
/// band is shorter and stores part of its last tile row; one-row and multi-row bands;
/// first and last bands write the halo rows; residual and ReLU), for both targets,
/// against the reference. The interpreter runs the calls in order, one band after the
/// other, as one thread does.
#[test]
fn banded_winograd_matches_reference() {
    let (spec, graph) = basic_24_40("[3, 19, 21]", "banded_winograd");
    for m in [2, 3, 4] {
        let (fused, forced) = forced_winograd(&graph, Winograd::square(m));
        assert_eq!(forced, 5, "the stride-1 3x3 convs past the stem");
        for target in [Target::CRANELIFT_X64, Target::AVX512] {
            let mut band_counts = std::collections::BTreeSet::new();
            for band_kb in [40, 80, 120, 160, 240, 400, 600, 1000] {
                let banded = Target { band_bytes: band_kb << 10, ..target };
                let prog = kernels::lower(&plan::build_chosen(&fused, banded).unwrap()).unwrap();
                let groups = prog.calls.iter().filter(|c| c.order == kernels::Order::BandGroup).count();
                let bands = groups + prog.calls.iter().filter(|c| c.order == kernels::Order::BandStart).count();
                if groups == 0 {
                    continue;
                }
                band_counts.insert(bands / groups);
                let last = prog.kernels.iter().filter(|k| k.name.contains("_last")).count();
                assert!(last > 0, "no last band's output transform at {band_kb} KB");
                let whole = kernels::lower(&plan::build_chosen(&fused, target).unwrap()).unwrap();
                assert_eq!(total_macs(&prog), total_macs(&whole), "the bands' MACs add up to the conv's");
                for interleave in [false, true] {
                    let rel = agrees_with_reference(&spec, &graph, &reordered_bands(&prog, interleave), 8, 5);
                    eprintln!(
                        "F({m},3) {} {band_kb} KB: {bands} bands in {groups} groups, interleaved {interleave}, rel err {rel:.2e}",
                        target.name
                    );
                }
            }
            assert!(band_counts.len() >= 2, "F({m},3) {}: too few band layouts {band_counts:?}", target.name);
        }
    }
}

/// Strided Winograd, F(2 x 2, 3 x 3) with stride 2, forced on every stride-2 3x3 conv of
/// a basic-block network (24, 40 and 48 wide: channels padded to whole vectors) on odd
/// and even inputs (19x21: the 10x11 output's last tile column hangs over and reads three
/// columns of halo; 20x20; 9x13: 5x7 then 3x4 outputs), and of bottleneck networks (the
/// 3x3 conv of their second stage; 128 wide, the Cranelift products keep blocks of tiles
/// outside output tiles), for both targets, against the reference; and in bands of tile
/// rows forced by small band budgets (each band's input from twice its first output row),
/// run in order and interleaved.
#[test]
fn strided_winograd_matches_reference() {
    let basic = |input: &str| {
        format!(
            "block = \"basic\"\nlayers = [1, 1, 1]\nwidths = [24, 40, 48]\nstem = \"cifar\"\nnum_classes = 5\ninput = {input}\n"
        )
    };
    let bottleneck = |widths: &str, input: &str| {
        format!(
            "block = \"bottleneck\"\nlayers = [1, 1]\nwidths = {widths}\nstem = \"cifar\"\nnum_classes = 5\ninput = {input}\n"
        )
    };
    let cases = [
        (basic("[3, 19, 21]"), 2, "wino2s2_gemm_24x19x21_to40x10x11"),
        (basic("[3, 20, 20]"), 2, "wino2s2_gemm_40x10x10_to48x5x5"),
        (basic("[3, 9, 13]"), 2, "wino2s2_gemm_40x5x7_to48x3x4"),
        (bottleneck("[16, 32]", "[3, 15, 18]"), 1, "wino2s2_gemm_32x15x18_to32x8x9"),
        // 7 x 11 tiles of 128 channels: 39 KB of `V` per position, which misses L1 on
        // Cranelift (blocks of tiles outside output tiles: 7 of 10, then one of 7).
        (bottleneck("[16, 128]", "[3, 26, 43]"), 1, "wino2s2_gemm_128x26x43_to128x13x22"),
    ];
    let mut strided_bands = 0;
    for (text, strided, kernel) in cases {
        let spec = resnetc::spec::parse(&text, "strided_winograd").unwrap();
        let graph = from_spec::build(&spec).unwrap();
        let mut fused = passes::fuse(&graph).0;
        let forced =
            set_algorithms(&mut fused, |c| (c.kernel == 3 && c.stride == 2).then_some(Some(Winograd::strided())));
        assert_eq!(forced, strided, "the stride-2 3x3 convs of {text}");
        for target in [Target::CRANELIFT_X64, Target::AVX512] {
            // Whole first: a budget no conv fills (the 128-wide one, whose `V` and `M`
            // outweigh its weights, would otherwise run in one-row bands, which the small
            // budgets below give it).
            let unbanded = Target { band_bytes: usize::MAX, ..target };
            let prog = kernels::lower(&plan::build_chosen(&fused, unbanded).unwrap()).unwrap();
            let whole = &prog;
            assert_kernels(&prog, &[kernel]);
            if kernel.starts_with("wino2s2_gemm_128") && target == Target::CRANELIFT_X64 {
                // Tasks (weight slot of the row, of the column, block of tiles): 4 x 4
                // slots for the 25 positions, 8 blocks, not 32 output tiles.
                let k = prog.kernels.iter().find(|k| k.name == kernel).unwrap();
                assert_eq!(k.task_dims, [4, 4, 8], "{kernel}");
            }
            let rel = agrees_with_reference(&spec, &graph, &prog, 8, 5);
            eprintln!("strided F(2x2,3x3) {kernel} {} rel err {rel:.2e}", target.name);
            // In bands of tile rows too (each band's input starts twice its first output
            // row down), forced by small band budgets.
            for band_kb in [40, 100, 200, 1100, 1300, 1800] {
                let banded = Target { band_bytes: band_kb << 10, ..target };
                let prog = kernels::lower(&plan::build_chosen(&fused, banded).unwrap()).unwrap();
                let groups = prog.calls.iter().filter(|c| c.order == kernels::Order::BandGroup).count();
                let starts = prog.calls.iter().filter(|c| c.order == kernels::Order::BandStart).count();
                if !prog.kernels.iter().any(|k| k.name.starts_with("wino2s2_gemm") && k.name.contains("_band")) {
                    continue;
                }
                strided_bands += 1;
                let last = prog.kernels.iter().any(|k| k.name.starts_with("wino2s2_out") && k.name.contains("_last"));
                assert!(last, "{kernel} {band_kb} KB: no last band's output transform");
                assert_eq!(
                    total_macs(&prog),
                    total_macs(whole),
                    "{kernel} {band_kb} KB: the bands' MACs add up to the conv's"
                );
                for interleave in [false, true] {
                    let rel = agrees_with_reference(&spec, &graph, &reordered_bands(&prog, interleave), 8, 5);
                    eprintln!(
                        "strided {kernel} {} {band_kb} KB: {} bands in {groups} groups, interleaved {interleave}, rel err {rel:.2e}",
                        target.name,
                        groups + starts
                    );
                }
            }
        }
    }
    assert!(strided_bands >= 8, "too few strided convs in bands: {strided_bands}");
}

/// The ImageNet stem (7x7, stride 2, padding 3) over its input's four phases
/// (`Winograd::phases`, F(3x3,4x4)), forced, for both targets, against the reference: one
/// to four input channels (12 phase channels fill no vector on 16 lanes; 3 of them fill
/// three blocks on 4), stem widths that do fill whole vectors and that do not, odd and
/// even input sides down to 5 (a 3x3 output, one tile), either max-pool after it
/// (torchvision's, Caffe's); and in bands of tile rows forced by small band budgets, run in order and
/// interleaved.
#[test]
fn phased_stem_matches_reference() {
    let cases = [
        ("[3, 40, 38]", 64, "torchvision"),
        ("[1, 5, 5]", 5, "torchvision"),
        ("[4, 23, 17]", 24, "caffe"),
        ("[2, 9, 30]", 16, "torchvision"),
    ];
    let mut phased_bands = 0;
    for (input, stem_width, pool) in cases {
        let text = format!(
            "block = \"basic\"\nlayers = [1]\nwidths = [8]\nstem = \"imagenet\"\nstem_width = {stem_width}\nstem_pool = \"{pool}\"\nnum_classes = 5\ninput = {input}\n"
        );
        let spec = resnetc::spec::parse(&text, "phased_stem").unwrap();
        let graph = from_spec::build(&spec).unwrap();
        let mut fused = passes::fuse(&graph).0;
        let forced = set_algorithms(&mut fused, |c| (c.kernel == 7).then_some(Some(Winograd::phases())));
        assert_eq!(forced, 1, "the stem of {text}");
        for target in [Target::CRANELIFT_X64, Target::AVX512] {
            let prog = kernels::lower(&plan::build_chosen(&fused, target).unwrap()).unwrap();
            for prefix in ["pack_input_phases_", "wino3ph_in_", "wino3ph_gemm_", "wino3ph_out_"] {
                assert!(
                    prog.kernels.iter().any(|k| k.name.starts_with(prefix)),
                    "{input} {}: no {prefix}",
                    target.name
                );
            }
            let rel = agrees_with_reference(&spec, &graph, &prog, 11, 3);
            eprintln!("phased stem {input} x{stem_width} {} rel err {rel:.2e}", target.name);
            let whole = &prog;
            for band_kb in [30, 60, 150, 200, 300] {
                let banded = Target { band_bytes: band_kb << 10, ..target };
                let prog = kernels::lower(&plan::build_chosen(&fused, banded).unwrap()).unwrap();
                if !prog.kernels.iter().any(|k| k.name.starts_with("wino3ph_gemm") && k.name.contains("_band")) {
                    continue;
                }
                phased_bands += 1;
                assert_eq!(total_macs(&prog), total_macs(whole), "{input} {band_kb} KB: the bands' MACs add up");
                for interleave in [false, true] {
                    let rel = agrees_with_reference(&spec, &graph, &reordered_bands(&prog, interleave), 11, 3);
                    eprintln!(
                        "phased stem {input} {} {band_kb} KB, interleaved {interleave}: rel err {rel:.2e}",
                        target.name
                    );
                }
            }
        }
    }
    assert!(phased_bands >= 4, "too few phased stems in bands: {phased_bands}");
}

/// A CIFAR-stem basic-block network of two stages (24 and 40 wide, channels that do not
/// fill whole vectors) on `input`, and its graph.
fn basic_24_40(input: &str, name: &str) -> (resnetc::spec::Spec, Graph) {
    let text = format!(
        "block = \"basic\"\nlayers = [2, 1]\nwidths = [24, 40]\nstem = \"cifar\"\nnum_classes = 5\ninput = {input}\n"
    );
    let spec = resnetc::spec::parse(&text, name).unwrap();
    let graph = from_spec::build(&spec).unwrap();
    (spec, graph)
}

/// `prog` with the bands of each band group run as two threads might run them: in
/// reverse order, or (`interleave`) the threads' bands call by call, the k-th band of
/// each slot together (`in0 in1 gemm0 gemm1 out0 out1`, see `exec::band_slot`). The
/// interpreter runs calls in order, so a band that writes what another band reads, or
/// two bands running at once in one scratch slot, then goes wrong.
fn reordered_bands(prog: &kernels::Program, interleave: bool) -> kernels::Program {
    use kernels::Order;
    let mut calls = vec![];
    let mut i = 0;
    while i < prog.calls.len() {
        if prog.calls[i].order != Order::BandGroup {
            calls.push(prog.calls[i].clone());
            i += 1;
            continue;
        }
        let end = i
            + 1
            + prog.calls[i + 1..].iter().take_while(|c| matches!(c.order, Order::BandStart | Order::Band)).count();
        let mut bands: Vec<Vec<kernels::Call>> = vec![];
        for c in &prog.calls[i..end] {
            if c.order != Order::Band {
                bands.push(vec![]);
            }
            bands.last_mut().unwrap().push(c.clone());
        }
        if interleave {
            let n = bands.len();
            let mut slots: Vec<Vec<Vec<kernels::Call>>> = vec![vec![]; BAND_SLOTS];
            for (b, band) in bands.into_iter().enumerate() {
                slots[band_slot(b, n)].push(band);
            }
            for k in 0..slots.iter().map(Vec::len).max().unwrap_or(0) {
                let together: Vec<&Vec<kernels::Call>> = slots.iter().filter_map(|s| s.get(k)).collect();
                for c in 0..together[0].len() {
                    calls.extend(together.iter().map(|b| b[c].clone()));
                }
            }
        } else {
            calls.extend(bands.into_iter().rev().flatten());
        }
        i = end;
    }
    kernels::Program { calls, ..prog.clone() }
}

/// A CIFAR-stem bottleneck network of two stages (64 and 256 wide) on `input`, lowered
/// for `target`.
fn two_stage_bottleneck(input: &str, target: Target) -> (resnetc::spec::Spec, Graph, kernels::Program) {
    two_stage_bottleneck_of(256, input, target)
}

/// [`two_stage_bottleneck`] with its second stage `width` wide.
fn two_stage_bottleneck_of(
    width: usize,
    input: &str,
    target: Target,
) -> (resnetc::spec::Spec, Graph, kernels::Program) {
    let text = format!(
        "block = \"bottleneck\"\nlayers = [1, 2]\nwidths = [64, {width}]\nstem = \"cifar\"\nnum_classes = 5\ninput = {input}\n"
    );
    let spec = resnetc::spec::parse(&text, "two_stages").unwrap();
    let (graph, prog) = lower(&spec, target);
    (spec, graph, prog)
}

fn assert_kernels(prog: &kernels::Program, names: &[&str]) {
    let have: Vec<_> = prog.kernels.iter().map(|k| k.name.as_str()).collect();
    for name in names {
        assert!(have.contains(name), "no {name} in {have:?}");
    }
}

/// Packing that frees each tensor once packed gives the same blob, bit for bit.
#[test]
fn consuming_pack_gives_the_same_blob() {
    for target in [Target::CRANELIFT_X64, Target::AVX512] {
        let (graph, prog) = lower(&resnetc::spec::preset("resnet20").unwrap(), target);
        let w = weights::seeded(&graph, 6);
        let a = pack::build_blob(&prog.recipes, prog.weight_floats, &w).unwrap();
        let b = pack::build_blob_consuming(&prog.recipes, prog.weight_floats, w).unwrap();
        assert!(a.as_slice().iter().zip(b.as_slice()).all(|(x, y)| x.to_bits() == y.to_bits()), "{}", target.name);
    }
}
