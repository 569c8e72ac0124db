//! The Fashion-MNIST workflows: `resnetc eval` over the test set, and `resnetc demo`, which
//! classifies the bundled images with the bundled trained model.

use crate::bench;
use crate::jit_model::JitModel;
use crate::spec::{self, Spec};
use crate::weights;
use anyhow::{bail, Context, Result};
use resnetc_runtime::{idx, image, preprocess, Tensor};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where Debian's `dataset-fashion-mnist` package installs the data.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

pub const CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The bundled model's directory: `examples/fashion` under the current directory, or
/// under the source tree this binary was built from.
pub fn bundled_dir() -> Result<PathBuf> {
    let here = PathBuf::from("examples/fashion");
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fashion");
    [here, built]
        .into_iter()
        .find(|d| d.join("model.toml").is_file())
        .context("cannot find the bundled model (examples/fashion/model.toml); run from the repository root")
}

/// The test images (N, 1, 28, 28) scaled to [0, 1], and their labels.
pub fn test_set(dir: &Path) -> Result<(Tensor, Vec<u8>)> {
    let find = |stem: &str| -> Result<PathBuf> {
        [format!("{stem}.gz"), stem.to_string()].iter().map(|n| dir.join(n)).find(|p| p.is_file()).with_context(|| {
            format!("{}: no {stem}[.gz] (install Debian's dataset-fashion-mnist, or give its directory)", dir.display())
        })
    };
    let images = idx::read(&find("t10k-images-idx3-ubyte")?)?;
    let labels = idx::read(&find("t10k-labels-idx1-ubyte")?)?;
    match (&images.dims[..], &labels.dims[..]) {
        ([n, 28, 28], [m]) if n == m => {}
        (a, b) => bail!("{}: unexpected image dimensions {a:?} / label dimensions {b:?}", dir.display()),
    }
    let n = labels.dims[0];
    if n == 0 {
        bail!("{}: the test set has no images", dir.display());
    }
    if let Some(i) = labels.data.iter().position(|&l| l as usize >= CLASSES.len()) {
        bail!("{}: label {} of image {i} is not a class (0-9)", dir.display(), labels.data[i]);
    }
    let x = images.data.iter().map(|&b| b as f32 / 255.0).collect();
    Ok((Tensor::new(vec![n, 1, 28, 28], x), labels.data))
}

fn check_model(spec: &Spec) -> Result<()> {
    if spec.input != [1, 28, 28] || spec.num_classes != 10 {
        bail!(
            "model `{}` takes {:?} with {} classes; Fashion-MNIST needs [1, 28, 28] and 10",
            spec.name,
            spec.input,
            spec.num_classes
        );
    }
    Ok(())
}

/// Where a report's text goes: `stdout::write` from the CLI, anything from tests.
pub type Say<'a> = &'a dyn Fn(&str) -> Result<()>;

/// Runs the whole test set; reports (`say`) accuracy, the confusion matrix and, given
/// PyTorch's predictions (one class per line), how many predictions agree, failing when
/// any differs (the contract's same argmax for every row). Returns (accuracy,
/// agreements) for tests.
pub fn eval(
    model: &JitModel,
    dir: &Path,
    compare: Option<&Path>,
    batch: usize,
    say: Say,
) -> Result<(f64, Option<usize>)> {
    check_model(&model.spec)?;
    let (x, labels) = test_set(dir)?;
    let n = labels.len();
    let per = 28 * 28;
    let mut preds = Vec::with_capacity(n);
    let mut logits = vec![0.0f32; batch * 10];
    let start = Instant::now();
    for (b, chunk) in x.data().chunks(batch * per).enumerate() {
        let m = chunk.len() / per;
        model.forward_into(chunk, &mut logits[..m * 10], m)?;
        preds.extend(logits[..m * 10].chunks(10).map(argmax));
        let done = b * batch + m;
        let width = 40 * done / n;
        if width != 40 * (done - m) / n || done == n {
            eprint!("\r[{}{}] {done}/{n}", "=".repeat(width), " ".repeat(40 - width));
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!(" in {:.2} s", start.elapsed().as_secs_f64());
    let correct = preds.iter().zip(&labels).filter(|(p, l)| **p == **l as usize).count();
    let accuracy = correct as f64 / n as f64;
    // (Writing to a String cannot fail.)
    let mut report = format!("accuracy {:.2}% ({correct}/{n})\n", 100.0 * accuracy);
    report += "confusion matrix (rows: true class, columns: predicted):\n";
    let _ = write!(report, "{:>12}", "");
    for j in 0..10 {
        let _ = write!(report, "{j:>6}");
    }
    report += "\n";
    for (i, name) in CLASSES.iter().enumerate() {
        let _ = write!(report, "{:>9} {i:>2}", &name[..name.len().min(9)]);
        for j in 0..10 {
            let count = preds.iter().zip(&labels).filter(|(p, l)| **l as usize == i && **p == j).count();
            let _ = write!(report, "{count:>6}");
        }
        report += "\n";
    }
    say(&report)?;
    let agree = match compare {
        None => None,
        Some(path) => {
            let (same, first) = agreements(&preds, path)?;
            say(&format!("agrees with PyTorch on {same}/{n} predictions\n"))?;
            if let Some((i, theirs)) = first {
                bail!(
                    "{}: {} of {n} predictions differ from PyTorch's (the first: image {i}, class {} here, {theirs} there)",
                    path.display(),
                    n - same,
                    preds[i]
                );
            }
            Some(same)
        }
    };
    Ok((accuracy, agree))
}

/// PyTorch's predictions: one class index (0-9) per line.
fn compared(path: &Path) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let bad = || format!("{}: line {}: not a class index (0-9)", path.display(), i + 1);
            let class: usize = l.trim().parse().with_context(bad)?;
            if class >= CLASSES.len() {
                bail!(bad());
            }
            Ok(class)
        })
        .collect()
}

/// How many of `preds` equal PyTorch's predictions in `path`, which must hold one per
/// image, and the first that differs (image, PyTorch's class).
fn agreements(preds: &[usize], path: &Path) -> Result<(usize, Option<(usize, usize)>)> {
    let theirs = compared(path)?;
    if theirs.len() != preds.len() {
        bail!("{}: {} predictions for {} test images", path.display(), theirs.len(), preds.len());
    }
    let same = preds.iter().zip(&theirs).filter(|(a, b)| a == b).count();
    let first = preds.iter().zip(&theirs).position(|(a, b)| a != b).map(|i| (i, theirs[i]));
    Ok((same, first))
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b })
}

/// One bundled image's result.
pub struct Classified {
    pub file: String,
    pub label: usize,
    pub predicted: usize,
    pub confidence: f64,
    pub pytorch: Option<usize>,
}

/// Compiles the bundled model with the JIT and classifies the bundled images; reports
/// (`say`) the compile time, a table of the results and the latency.
pub fn demo(threads: usize, say: Say) -> Result<Vec<Classified>> {
    let dir = bundled_dir()?;
    let spec = spec::load(&dir.join("model.toml"))?;
    check_model(&spec)?;
    let graph = crate::from_spec::build(&spec)?;
    let tensors = weights::load(&graph, &dir.join("model.safetensors"))?;
    let t = Instant::now();
    let model = JitModel::new(&spec, &tensors, threads)?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    say(&format!(
        "compiled {} ({} kernels, {} KiB of machine code) with Cranelift in {compile_ms:.1} ms\n",
        spec.name,
        model.program.kernels.len(),
        model.stats.code_bytes / 1024
    ))?;
    let labels_path = dir.join("images/labels.txt");
    let text =
        std::fs::read_to_string(&labels_path).with_context(|| format!("{}: cannot read", labels_path.display()))?;
    let mut results = vec![];
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad =
            || format!("{}: line {}: expected `<file> <label> <pytorch prediction>`", labels_path.display(), i + 1);
        let (file, label) = match fields[..] {
            [f, l, ..] => (f, l.parse::<usize>().with_context(bad)?),
            _ => bail!(bad()),
        };
        let pytorch = fields.get(2).and_then(|p| p.parse().ok());
        let img = image::decode(&dir.join("images").join(file))?;
        let x = preprocess::image_to_input(&img, spec.input).with_context(|| file.to_string())?;
        let y = model.forward(&x)?;
        let row = y.data();
        let predicted = argmax(row);
        let max = row[predicted];
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        results.push(Classified { file: file.to_string(), label, predicted, confidence: 1.0 / sum, pytorch });
    }
    let mut table = format!("{:<28} {:<12} {:<12} {:>10}  \n", "image", "label", "predicted", "confidence");
    for r in &results {
        let mark = if r.predicted == r.label { "right" } else { "WRONG" };
        let torch = match r.pytorch {
            Some(p) if p == r.predicted => "(same as PyTorch)".to_string(),
            Some(p) => format!("(PyTorch: {})", CLASSES[p]),
            None => String::new(),
        };
        let _ = writeln!(
            table,
            "{:<28} {:<12} {:<12} {:>9.1}%  {mark} {torch}",
            r.file,
            CLASSES[r.label],
            CLASSES[r.predicted],
            100.0 * r.confidence
        );
    }
    let right = results.iter().filter(|r| r.predicted == r.label).count();
    let share = 100.0 * right as f64 / results.len().max(1) as f64;
    let _ = writeln!(table, "accuracy {right}/{} ({share:.1}%)", results.len());
    say(&table)?;
    let x = weights::seeded_input(spec.input, 1, 0);
    let mut y = vec![0.0f32; 10];
    let stats = bench::measure(5, 50, 2000, 0.5, || model.forward_into(x.data(), &mut y, 1))?;
    say(&format!("latency per image: median {:.3} ms (min {:.3}) on {threads} thread(s)\n", stats.median, stats.min))?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IDX file of unsigned bytes with dimensions `dims` and bytes `data`.
    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    /// A test-set directory of `labels.len()` blank images with those labels.
    fn test_dir(name: &str, labels: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("resnetc-fashion-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = labels.len() as u32;
        let images = vec![0u8; labels.len() * 28 * 28];
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx_bytes(&[n, 28, 28], &images)).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_bytes(&[n], labels)).unwrap();
        dir
    }

    #[test]
    fn test_sets_without_images_or_with_labels_past_the_classes_are_refused() {
        let good = test_dir("good", &[0, 9, 3]);
        let (x, labels) = test_set(&good).unwrap();
        assert_eq!((x.shape(), labels), (&[3, 1, 28, 28][..], vec![0, 9, 3]));
        let empty = test_dir("empty", &[]);
        assert!(format!("{:#}", test_set(&empty).unwrap_err()).contains("no images"));
        let past = test_dir("past", &[1, 10]);
        assert!(format!("{:#}", test_set(&past).unwrap_err()).contains("label 10 of image 1 is not a class"));
        for d in [good, empty, past] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn predictions_to_compare_are_classes_one_per_image() {
        let dir = std::env::temp_dir().join(format!("resnetc-fashion-{}-preds", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let preds = [3, 9, 0];
        assert_eq!(agreements(&preds, &file("same.txt", "3\n9\n0\n")).unwrap(), (3, None));
        assert_eq!(agreements(&preds, &file("one_off.txt", "3\n8\n0\n")).unwrap(), (2, Some((1, 8))));
        let err = |name: &str, text: &str| format!("{:#}", agreements(&preds, &file(name, text)).unwrap_err());
        assert!(err("past.txt", "3\n10\n0\n").contains("line 2: not a class index (0-9)"));
        assert!(err("word.txt", "3\ncat\n0\n").contains("line 2: not a class index"));
        assert!(err("short.txt", "3\n9\n").contains("2 predictions for 3 test images"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
