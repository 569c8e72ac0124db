//! The bundled Fashion-MNIST model: the JIT predicts exactly what PyTorch predicted, on the
//! 20 bundled images always, and on all 10,000 test images when Debian's
//! dataset-fashion-mnist package is installed.

mod support;

use resnetc::fashion;
use resnetc::jit_model::JitModel;
use resnetc::{from_spec, spec, weights};
use std::path::Path;

fn model() -> JitModel {
    let dir = support::root().join("examples/fashion");
    let s = spec::load(&dir.join("model.toml")).unwrap();
    let w = weights::load(&from_spec::build(&s).unwrap(), &dir.join("model.safetensors")).unwrap();
    JitModel::new(&s, &w, 2).unwrap()
}

#[test]
fn bundled_images_get_pytorchs_predictions() {
    let results = fashion::demo(1, &|_| Ok(())).unwrap();
    assert_eq!(results.len(), 20);
    for r in &results {
        assert_eq!(Some(r.predicted), r.pytorch, "{}: resnetc {} vs PyTorch {:?}", r.file, r.predicted, r.pytorch);
    }
}

#[test]
fn whole_test_set_agrees_with_pytorch_when_installed() {
    let dir = Path::new(fashion::DEFAULT_DIR);
    if !dir.join("t10k-images-idx3-ubyte.gz").is_file() {
        eprintln!("skipped: {} is not installed", dir.display());
        return;
    }
    let preds = support::root().join("examples/fashion/test_predictions.txt");
    let (accuracy, agree) = fashion::eval(&model(), dir, Some(&preds), 250, &|_| Ok(())).unwrap();
    assert_eq!(agree, Some(10_000), "every prediction must match PyTorch's");
    assert!(accuracy >= 0.91, "accuracy {accuracy}");
}
