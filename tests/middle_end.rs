//! The middle-end: fused graphs and memory plans are snapshot-tested, the arena is checked
//! by an independent verifier on presets and random specs, and the planned model, run
//! with reference semantics over its arena, still matches every PyTorch golden.

mod support;

use resnetc::target::Target;
use resnetc::{emit, folded, from_spec, memory, passes, plan, plan_exec, spec, weights};
use support::random_spec::{random_spec, Rng};

const TARGETS: [Target; 2] = [Target::CRANELIFT_X64, Target::AVX512];

fn planned(spec: &spec::Spec, target: Target) -> plan::Plan {
    let graph = from_spec::build(spec).unwrap();
    plan::build(&passes::fuse(&graph).0, target).unwrap()
}

#[test]
fn snapshots_of_fused_graph_and_memory_plan() {
    for model in ["resnet18", "resnet50", "resnet20"] {
        let p = planned(&spec::preset(model).unwrap(), Target::CRANELIFT_X64);
        expect_test::expect_file![format!("snapshots/{model}.fused.txt")].assert_eq(&emit::fused_text(&p));
        expect_test::expect_file![format!("snapshots/{model}.memory.txt")].assert_eq(&emit::memory_text(&p));
    }
}

#[test]
fn arena_is_within_ten_percent_of_the_lower_bound_and_verified_for_every_preset() {
    for name in spec::PRESETS {
        for target in TARGETS {
            let p = planned(&spec::preset(name).unwrap(), target);
            memory::verify(&p).unwrap_or_else(|e| panic!("{name} {}: {e}", target.name));
            assert!(
                p.arena_bytes as f64 <= 1.10 * p.lower_bound_bytes as f64,
                "{name} {}: arena {} vs lower bound {}",
                target.name,
                p.arena_bytes,
                p.lower_bound_bytes
            );
        }
    }
}

#[test]
fn verifier_accepts_200_random_specs_and_rejects_broken_plans() {
    let mut rng = Rng::new(0x5eed);
    for i in 0..200 {
        let s = random_spec(&mut rng, &format!("random{i}"));
        for target in TARGETS {
            let p = planned(&s, target);
            memory::verify(&p).unwrap_or_else(|e| panic!("random spec {i} {}: {e}\n{s}", target.name));
        }
    }
    // The verifier must be able to fail: move a live buffer onto another.
    let mut p = planned(&spec::preset("resnet18").unwrap(), Target::CRANELIFT_X64);
    let a = p.buffers.iter().position(|b| b.name == "layer1.0.conv1").unwrap();
    let b = p.buffers.iter().position(|b| b.name == "maxpool").unwrap();
    p.buffers[a].offset = p.buffers[b].offset;
    assert!(memory::verify(&p).is_err());
    // And scratch onto an activation that is dead by then: legal for liveness, not for
    // the scratch region.
    let mut p = planned(&spec::preset("resnet18").unwrap(), Target::CRANELIFT_X64);
    let v = p.buffers.iter().position(|b| b.name == "layer2.0.conv1.wino_v").unwrap();
    let stem = p.buffers.iter().position(|b| b.name == "conv1").unwrap();
    assert!(p.buffers[stem].last < p.buffers[v].first);
    p.buffers[v].offset = p.buffers[stem].offset;
    let e = memory::verify(&p).unwrap_err();
    assert!(e.contains("only one of them is scratch"), "{e}");
}

#[test]
fn planned_model_matches_every_golden() {
    let mut failures = vec![];
    for g in support::goldens() {
        let graph = g.graph();
        let fused = passes::fuse(&graph).0;
        let w = folded::fold_weights(&fused, &weights::seeded(&graph, g.weight_seed)).unwrap();
        for target in TARGETS {
            let p = plan::build(&fused, target).unwrap();
            let y = plan_exec::run(&p, &w, &g.input()).unwrap();
            match support::agree(&y, &g.logits()) {
                Ok(rel) => eprintln!("{:<22} {:<14} rel err {rel:.2e}", g.name, target.name),
                Err(e) => failures.push(format!("{} {}: {e}", g.name, target.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
