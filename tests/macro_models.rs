//! Models declared with `resnet!` (rustc-compiled SIMD kernels) against the PyTorch goldens.

mod support;

use resnetc::weights;
use resnetc_macros::resnet;

resnet! { pub struct Resnet18 = resnet18; }
resnet! { pub struct Resnet50 = resnet50; }

// The custom specs of tests/specs/, written as macro input.
resnet! {
    pub struct CifarTiny { block: basic, layers: [1, 1, 1], widths: [16, 32, 64], stem: cifar, num_classes: 10, input: [3, 32, 32] }
}
resnet! {
    pub struct GroupedBottleneck {
        block: bottleneck, layers: [1, 2], widths: [16, 32], stem: imagenet, stem_width: 16,
        groups: 4, width_per_group: 32, num_classes: 20, input: [3, 64, 64],
    }
}
resnet! {
    pub struct CaffeStrideIn1x1 {
        block: bottleneck, layers: [1, 2, 1], widths: [8, 16, 24], stem: imagenet, stem_width: 12,
        stem_pool: caffe, stride_in: "1x1", num_classes: 1000, input: [3, 63, 63],
    }
}
resnet! {
    pub struct GrayOdd { block: basic, layers: [2, 2], widths: [12, 24], stem: cifar, num_classes: 10, input: [1, 29, 35] }
}
resnet! {
    pub struct WideBottleneck {
        block: bottleneck, layers: [2, 1], widths: [6, 10], stem: imagenet, stem_width: 7,
        width_per_group: 128, num_classes: 3, input: [3, 37, 45],
    }
}

fn golden(name: &str) -> support::Golden {
    support::goldens().into_iter().find(|g| g.name == name).unwrap_or_else(|| panic!("no golden {name}"))
}

macro_rules! check {
    ($ty:ty, $name:expr) => {{
        let g = golden($name);
        let w = weights::seeded(&g.graph(), g.weight_seed);
        let bytes = resnetc_runtime::safetensors::to_bytes(&w);
        for threads in [1, 2] {
            let m = <$ty>::from_safetensors(&bytes).unwrap().with_threads(threads);
            let y = m.forward(&g.input()).unwrap();
            let rel = support::agree(&y, &g.logits()).unwrap_or_else(|e| panic!("{} ({}): {e}", $name, m.isa()));
            eprintln!("{:<22} {} {threads}T rel err {rel:.2e}", $name, m.isa());
        }
    }};
}

#[test]
fn macro_models_match_goldens() {
    check!(Resnet18, "resnet18");
    check!(Resnet50, "resnet50");
    check!(CifarTiny, "cifar_tiny");
    check!(GroupedBottleneck, "grouped_bottleneck");
    check!(CaffeStrideIn1x1, "caffe_stride_in_1x1");
    check!(GrayOdd, "gray_odd");
    check!(WideBottleneck, "wide_bottleneck");
}

#[test]
fn model_types_are_send_and_sync() {
    fn assert<T: Send + Sync>() {}
    assert::<Resnet50>();
    assert::<GrayOdd>();
}
