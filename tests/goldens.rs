//! The reference executor against PyTorch: every committed golden must agree within the
//! contract's tolerance, and the seeded generator must match its Python twin bit for bit.

mod support;

use resnetc::{reference, weights};
use resnetc_runtime::seeded::{self, Role};

#[test]
fn generator_matches_python() {
    let text = std::fs::read_to_string(support::root().join("tests/goldens/generator_check.json")).unwrap();
    let check: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tensors = check["tensors"].as_array().unwrap();
    assert!(tensors.len() >= 4);
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let fan_in = t["fan_in"].as_u64().unwrap_or(0) as usize;
        let role = match t["role"].as_str().unwrap() {
            "conv_weight" => Role::ConvWeight { fan_in },
            "bn_weight" => Role::BnWeight,
            "bn_bias" => Role::BnBias,
            "bn_mean" => Role::BnMean,
            "bn_var" => Role::BnVar,
            "fc_weight" => Role::FcWeight { fan_in },
            "fc_bias" => Role::FcBias { fan_in },
            "input" => Role::Input,
            other => panic!("unknown role {other}"),
        };
        let count = t["count"].as_u64().unwrap() as usize;
        let values = seeded::values(name, t["seed"].as_u64().unwrap(), role, count);
        let first: Vec<f32> = t["first8"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(&values[..first.len()], &first[..], "{name}: first values differ from Python");
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let want = t["sum"].as_f64().unwrap();
        assert!((sum - want).abs() <= 1e-9 * want.abs().max(1.0), "{name}: sum {sum} vs Python {want}");
    }
}

#[test]
fn reference_matches_every_golden() {
    let goldens = support::goldens();
    assert!(goldens.len() >= 13, "expected the five presets and at least eight custom specs");
    let mut failures = Vec::new();
    for g in &goldens {
        let graph = g.graph();
        let w = weights::seeded(&graph, g.weight_seed);
        let y = reference::run(&graph, &w, &g.input()).unwrap();
        match support::agree(&y, &g.logits()) {
            Ok(rel) => eprintln!("{:<22} rel err {rel:.2e}", g.name),
            Err(e) => failures.push(format!("{}: {e}", g.name)),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
