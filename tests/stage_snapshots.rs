//! Snapshots of the back half of compilation: kernel IR, Cranelift IR and generated Rust.
//! A change in code generation shows up here in review (`UPDATE_EXPECT=1` to accept).

mod support;

use resnetc::target::Target;
use resnetc::{cranelift, from_spec, kernels, passes, plan, rustgen, spec};

fn program(s: &spec::Spec, t: Target) -> kernels::Program {
    let graph = from_spec::build(s).unwrap();
    kernels::lower(&plan::build(&passes::fuse(&graph).0, t).unwrap()).unwrap()
}

#[test]
fn kernel_ir_and_clif_of_resnet20() {
    let s = spec::preset("resnet20").unwrap();
    let p = program(&s, Target::CRANELIFT_X64);
    expect_test::expect_file!["snapshots/resnet20.kernels.txt"].assert_eq(&kernels::to_text(&p));
    let first_conv = p.kernels.iter().find(|k| k.name.starts_with("conv3x3s1")).unwrap();
    let clif = cranelift::clif_text(&p.kernels, Some(&first_conv.name)).unwrap();
    expect_test::expect_file!["snapshots/resnet20.clif.txt"].assert_eq(&clif);
}

/// The Rust backend's Winograd kernels along rows: ResNet-18's 7x7x512 convs at
/// F(1x3,3x3) (input transform, products, output transforms).
#[test]
fn row_winograd_kernels_of_resnet18() {
    let p = program(&spec::preset("resnet18").unwrap(), Target::AVX512);
    let text: String = p.kernels.iter().filter(|k| k.name.starts_with("wino1x")).map(|k| format!("{k}\n")).collect();
    assert!(text.contains("wino1x3_gemm_512x7x7_to512x7x7"), "the cost model's choice changed:\n{text}");
    expect_test::expect_file!["snapshots/resnet18.row_winograd.kernels.txt"].assert_eq(&text);
}

/// The Rust backend's banded Winograd convs: ResNet-18's 64x56x56 convs at F(4,3) and its
/// strided one at F(2x2,3x3,s2) (whose bands read the input from twice their first output
/// row), in bands of one tile row (the band kernels, then the first conv's calls with
/// their pointers advanced band by band and alternating scratch slots).
#[test]
fn banded_winograd_of_resnet18() {
    let p = program(&spec::preset("resnet18").unwrap(), Target::AVX512);
    let mut text: String = p.kernels.iter().filter(|k| k.name.contains("_band")).map(|k| format!("{k}\n")).collect();
    for band in ["wino4_gemm_64x56x56_to64x56x56_band1", "wino2s2_in_64x56x56_to128x28x28_band1"] {
        assert!(text.contains(band), "the bands changed:\n{text}");
    }
    let listing = kernels::to_text(&p);
    let calls = listing
        .lines()
        .skip_while(|l| *l != "calls:")
        .filter(|l| l.contains("layer1.0.conv1 ") || l.contains("layer2.0.conv1 "));
    text.extend(calls.map(|l| format!("{l}\n")));
    expect_test::expect_file!["snapshots/resnet18.banded_winograd.kernels.txt"].assert_eq(&text);
}

#[test]
fn generated_rust_of_a_tiny_model() {
    let s = spec::load(&support::root().join("tests/specs/tiny_input.toml")).unwrap();
    let code = rustgen::generate(&s, "TinyInput", "pub", "::resnetc_runtime").unwrap();
    expect_test::expect_file!["snapshots/tiny_input.rs.txt"].assert_eq(&code);
}
