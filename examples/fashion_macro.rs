//! The bundled Fashion-MNIST model through the `resnet!` macro: kernels specialized for
//! this network at compile time by rustc (AVX-512, AVX2 or portable, picked at run time).
//!
//! Run from the repository root: `cargo run --release -p resnetc-macros --example fashion_macro`

use resnetc_macros::resnet;
use resnetc_runtime::{image, preprocess};

// The same network as examples/fashion/model.toml.
resnet! {
    pub struct FashionNet {
        block: basic,
        layers: [3, 3, 3],
        widths: [16, 32, 64],
        stem: cifar,
        num_classes: 10,
        input: [1, 28, 28],
    }
}

const CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

fn main() -> resnetc_runtime::anyhow::Result<()> {
    let dir = std::path::Path::new("examples/fashion");
    let model = FashionNet::load(dir.join("model.safetensors"))?.with_threads(2);
    println!("FashionNet with {} kernels", model.isa());
    let labels = std::fs::read_to_string(dir.join("images/labels.txt"))?;
    let mut right = 0;
    let mut total = 0;
    for line in labels.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let label: usize = f[1].parse()?;
        let x = preprocess::image_to_input(&image::decode(&dir.join("images").join(f[0]))?, FashionNet::INPUT)?;
        let y = model.forward(&x)?;
        let pred = y.data().iter().enumerate().fold(0, |b, (i, v)| if *v > y.data()[b] { i } else { b });
        right += usize::from(pred == label);
        total += 1;
        println!("{:<28} {:<12} -> {}", f[0], CLASSES[label], CLASSES[pred]);
    }
    println!("{right}/{total} right");
    Ok(())
}
