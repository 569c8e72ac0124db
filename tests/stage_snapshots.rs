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

#[test]
fn generated_rust_of_a_tiny_model() {
    let s = spec::load(&support::root().join("tests/specs/tiny_input.toml")).unwrap();
    let code = rustgen::generate(&s, "TinyInput", "pub", "::resnetc_runtime").unwrap();
    expect_test::expect_file!["snapshots/tiny_input.rs.txt"].assert_eq(&code);
}
