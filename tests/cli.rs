//! The `resnetc` command line, end to end: working commands, and bad inputs that must exit
//! non-zero with exactly one line on stderr naming the culprit, never a panic, never a
//! partial output file.

mod support;

use resnetc_runtime::safetensors::{self, Tensors};
use resnetc_runtime::{npy, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn resnetc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnetc")).args(args).output().expect("resnetc runs")
}

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnetc-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a command that must fail with one stderr line containing every `needle`.
fn fails(args: &[&str], needles: &[&str]) {
    let out = resnetc(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: stderr is not one line: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr {err:?} does not mention {n:?}");
    }
}

fn ok(args: &[&str]) -> String {
    let out = resnetc(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const TINY: &str =
    "block = \"basic\"\nlayers = [1, 1]\nwidths = [4, 8]\nstem = \"cifar\"\nnum_classes = 3\ninput = [2, 9, 7]\n";

#[test]
fn inspect_reports_torchvision_counts() {
    let expected = [
        ("resnet18", 11_689_512u64, Some(1_814_073_344u64)),
        ("resnet34", 21_797_672, None),
        ("resnet50", 25_557_032, Some(4_089_184_256)),
        ("resnet101", 44_549_160, None),
        ("resnet152", 60_192_808, None),
        ("wide_resnet50_2", 68_883_240, None),
        ("resnext50_32x4d", 25_028_904, None),
    ];
    for (model, params, macs) in expected {
        let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", model, "--json"])).unwrap();
        assert_eq!(v["params"].as_u64(), Some(params), "{model} params");
        if let Some(m) = macs {
            assert_eq!(v["macs"].as_u64(), Some(m), "{model} MACs");
        }
        let layers = v["layers"].as_array().unwrap();
        assert_eq!(layers.iter().map(|l| l["params"].as_u64().unwrap()).sum::<u64>(), params);
    }
    let table = ok(&["inspect", "resnet50"]);
    assert!(table.contains("layer4.2.conv3") && table.contains("25,557,032 params"), "{table}");
}

#[test]
fn compare_blocks_reproduces_the_seed() {
    let text = ok(&["inspect", "--compare-blocks", "256"]);
    assert!(text.contains("1,179,648 weights") && text.contains("69,632 weights"), "{text}");
}

#[test]
fn emit_graph_and_dot() {
    let text = ok(&["emit", "resnet18", "graph"]);
    assert!(text.contains("layer4.1.conv2") && text.contains("-> [1000, 1, 1]"), "{text}");
    let dot = ok(&["emit", "resnet50", "dot"]);
    assert!(dot.starts_with("digraph") && dot.contains("layer1.0.downsample.0"), "{dot}");
}

#[test]
fn run_writes_logits_matching_the_library() {
    let dir = scratch("run");
    let spec = write_spec(&dir, "tiny.toml", TINY);
    let (w, x, y) = (dir.join("w.safetensors"), dir.join("x.npy"), dir.join("y.npy"));
    ok(&["seed", s(&spec), "weights", "-o", s(&w), "--seed", "3"]);
    ok(&["seed", s(&spec), "input", "-o", s(&x), "--batch", "2"]);
    ok(&["run", s(&spec), "--weights", s(&w), "--input", s(&x), "--output", s(&y), "--backend", "reference"]);
    let got = npy::read(&y).unwrap();
    let graph = resnetc::from_spec::build(&resnetc::spec::load(&spec).unwrap()).unwrap();
    let want = resnetc::reference::run(&graph, &safetensors::read(&w).unwrap(), &npy::read(&x).unwrap()).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.shape(), &[2, 3]);
}

#[test]
fn run_classifies_an_image() {
    let dir = scratch("image");
    let w = dir.join("w.safetensors");
    ok(&["seed", "resnet18", "weights", "-o", s(&w)]);
    let img = support::root().join("examples/images/chelsea.jpg");
    let text = ok(&["run", "resnet18", "--weights", s(&w), "--image", s(&img), "--backend", "reference"]);
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.contains('%'), "{text}");
}

#[test]
fn bad_specs_name_the_key() {
    let dir = scratch("specs");
    let cases: &[(&str, &[&str])] = &[
        ("block = \"basic\"\nlayers = [1]\ndepth = 3\n", &["unknown key `depth`"]),
        ("block = \"basic\"\nlayers = \"1\"\n", &["key `layers`", "expected an array"]),
        ("block = \"basic\"\nlayers = []\n", &["key `layers`", "empty"]),
        ("block = \"basic\"\nlayers = [1]\ngroups = 32\n", &["key `groups`", "basic"]),
        (
            "block = \"bottleneck\"\nlayers = [1]\nwidths = [8]\nwidth_per_group = 4\n",
            &["width_per_group", "inner width"],
        ),
        ("block = \"tiny\"\nlayers = [1]\n", &["key `block`", "\"tiny\""]),
        ("block = \"basic\"\nlayers = [1, 1]\nwidths = [8]\n", &["key `widths`"]),
        ("block = \"basic\"\nlayers = [1]\ninput = [3, -4, 4]\n", &["key `input`", "negative"]),
        ("block = \"basic\"\nlayers = [1\n", &["invalid TOML", "line"]),
        (
            "block = \"basic\"\nlayers = [1]\nstem_pool = \"caffe\"\ninput = [3, 1, 1]\n",
            &["too small", "stem (maxpool)"],
        ),
        ("block = \"basic\"\nlayers = [1]\ninput = [3, 100000, 100000]\n", &["too large", "GiB"]),
        // The key that makes a layer too large is named, not only `input`.
        ("block = \"bottleneck\"\nlayers = [1]\nwidths = [64]\ngroups = 100000\n", &["`groups`", "GiB"]),
        ("block = \"basic\"\nlayers = [1]\nwidths = [32768]\ninput = [3, 8, 8]\n", &["key `widths`", "weight"]),
        ("block = \"basic\"\nlayers = [16777216]\n", &["key `layers`", "blocks"]),
        // A weight names the keys of both its channel counts.
        ("block = \"basic\"\nlayers = [1]\nstem_width = 2000000\ninput = [3, 8, 8]\n", &["`widths` and `stem_width`"]),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let p = write_spec(&dir, &format!("bad{i}.toml"), text);
        let mut all = vec![p.file_name().unwrap().to_str().unwrap()];
        all.extend_from_slice(needles);
        fails(&["inspect", s(&p)], &all);
    }
    fails(&["inspect", s(&dir.join("absent.toml"))], &["absent.toml", "cannot read"]);
    fails(&["inspect", "resnet9000"], &["unknown model `resnet9000`"]);
}

/// Weights through a pipe (`--weights <(...)`, `/dev/stdin`) load like the file they
/// come from, though a pipe has no length to read tensor by tensor.
#[test]
fn weights_from_a_pipe() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = scratch("pipe");
    let spec = write_spec(&dir, "tiny.toml", TINY);
    let (w, x, y_file, y_pipe) = (dir.join("w.safetensors"), dir.join("x.npy"), dir.join("a.npy"), dir.join("b.npy"));
    ok(&["seed", s(&spec), "weights", "-o", s(&w)]);
    ok(&["seed", s(&spec), "input", "-o", s(&x)]);
    ok(&["run", s(&spec), "--weights", s(&w), "--input", s(&x), "--output", s(&y_file), "--backend", "reference"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(["run", s(&spec), "--weights", "/dev/stdin", "--input", s(&x), "--output", s(&y_pipe)])
        .args(["--backend", "reference"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = std::fs::read(&w).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&y_pipe).unwrap(), std::fs::read(&y_file).unwrap());
}

#[test]
fn bad_weights_name_the_tensor() {
    let dir = scratch("weights");
    let spec = write_spec(&dir, "tiny.toml", TINY);
    let x = dir.join("x.npy");
    ok(&["seed", s(&spec), "input", "-o", s(&x)]);
    let good = {
        let w = dir.join("good.safetensors");
        ok(&["seed", s(&spec), "weights", "-o", s(&w)]);
        safetensors::read(&w).unwrap()
    };
    let variant = |name: &str, edit: &dyn Fn(&mut Tensors)| {
        let mut t = good.clone();
        edit(&mut t);
        let p = dir.join(name);
        safetensors::write(&p, &t).unwrap();
        p
    };
    let missing = variant("missing.safetensors", &|t| {
        t.remove("layer2.0.bn1.running_var");
    });
    let extra = variant("extra.safetensors", &|t| {
        t.insert("layer3.0.conv1.weight".into(), Tensor::zeros(vec![8, 8, 3, 3]));
    });
    let transposed = variant("transposed.safetensors", &|t| {
        t.insert("fc.weight".into(), Tensor::zeros(vec![8, 3]));
    });
    let nan = variant("nan.safetensors", &|t| {
        t.get_mut("conv1.weight").unwrap().data_mut()[5] = f32::NAN;
    });
    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(&missing).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let y = dir.join("y.npy");
    let run = |w: &Path, needles: &[&str]| {
        fails(
            &["run", s(&spec), "--weights", s(w), "--input", s(&x), "--output", s(&y), "--backend", "reference"],
            needles,
        );
        assert!(!y.exists(), "a failed run left {}", y.display());
    };
    run(&missing, &["missing.safetensors", "missing tensor `layer2.0.bn1.running_var`", "[8]"]);
    run(&extra, &["unexpected tensor `layer3.0.conv1.weight`", "[8, 8, 3, 3]"]);
    run(&transposed, &["tensor `fc.weight`", "[8, 3]", "[3, 8]"]);
    run(&nan, &["tensor `conv1.weight`", "non-finite"]);
    run(&truncated, &["truncated.safetensors", "outside"]);
    run(&dir, &["is a directory"]);
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    run(&empty, &["empty.safetensors", "not a safetensors file"]);
}

#[test]
fn bad_tensors_and_images_name_the_file() {
    let dir = scratch("inputs");
    let spec = write_spec(&dir, "tiny.toml", TINY);
    let w = dir.join("w.safetensors");
    ok(&["seed", s(&spec), "weights", "-o", s(&w)]);
    let y = dir.join("y.npy");
    let run_input = |x: &Path, needles: &[&str]| {
        fails(
            &["run", s(&spec), "--weights", s(&w), "--input", s(x), "--output", s(&y), "--backend", "reference"],
            needles,
        );
        assert!(!y.exists(), "a failed run left {}", y.display());
    };
    let wrong_shape = dir.join("wrong_shape.npy");
    npy::write(&wrong_shape, &Tensor::zeros(vec![1, 3, 9, 7])).unwrap();
    run_input(&wrong_shape, &["wrong_shape.npy", "[1, 3, 9, 7]", "[N, 2, 9, 7]"]);
    let rank3 = dir.join("rank3.npy");
    npy::write(&rank3, &Tensor::zeros(vec![2, 9, 7])).unwrap();
    run_input(&rank3, &["rank3.npy", "[2, 9, 7]"]);
    let f64_file = dir.join("f64.npy");
    let mut bytes = npy::to_bytes(&Tensor::zeros(vec![1, 2, 9, 7]));
    let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
    bytes[at + 2] = b'8';
    std::fs::write(&f64_file, &bytes).unwrap();
    run_input(&f64_file, &["f64.npy", "'<f8' is not float32"]);
    let zero = dir.join("zero.npy");
    std::fs::write(&zero, b"").unwrap();
    run_input(&zero, &["zero.npy", "empty"]);
    let bad_png = dir.join("broken.png");
    std::fs::write(&bad_png, b"\x89PNG\r\n\x1a\n garbage").unwrap();
    fails(&["run", "resnet18", "--weights", s(&w), "--image", s(&bad_png)], &[]);
    let r18 = dir.join("r18.safetensors");
    ok(&["seed", "resnet18", "weights", "-o", s(&r18)]);
    fails(
        &["run", "resnet18", "--weights", s(&r18), "--image", s(&bad_png), "--backend", "reference"],
        &["broken.png", "PNG"],
    );
    let text = dir.join("photo.jpg");
    std::fs::write(&text, b"just text").unwrap();
    fails(
        &["run", "resnet18", "--weights", s(&r18), "--image", s(&text), "--backend", "reference"],
        &["photo.jpg", "not a PNG or JPEG"],
    );
}

#[test]
fn cli_misuse_is_one_line() {
    fails(&["frobnicate"], &["frobnicate"]);
    fails(&["run", "resnet18", "--input", "x.npy", "--output", "y.npy"], &["--weights"]);
    fails(&["run", "resnet18", "--weights", "w.safetensors", "--input", "x.npy"], &["--output"]);
    fails(
        &["run", "resnet18", "--weights", "w", "--input", "x.npy", "--output", "y.npy", "--threads", "0"],
        &["--threads"],
    );
    fails(&["run", "resnet18", "--weights", "w", "--image", "a.jpg", "--input", "x.npy"], &["--image"]);
    fails(&["inspect"], &["MODEL"]);
    fails(&["emit", "resnet18", "bytecode"], &["bytecode"]);
    fails(&["inspect", "--compare-blocks", "2"], &["--compare-blocks"]);
    fails(&["emit", "resnet18", "fused", "--max-weight-mb", "50"], &["--max-weight-mb", "--backend rust"]);
    fails(&["emit", "resnet18", "fused", "--backend", "rust", "--max-weight-mb", "0"], &["--max-weight-mb 0"]);
    fails(&["emit", "resnet18", "fused", "--kernel", "linear_512x1000"], &["--kernel", "kernels, clif and asm"]);
    fails(&["emit", "resnet18", "kernels", "--backend", "reference"], &["reference backend", "graph and dot"]);
    fails(&["bench", "resnet18", "--runs", "0"], &["--runs"]);
    let big = write_spec(&scratch("misuse"), "big.toml", "block = \"basic\"\nlayers = [1]\ninput = [3, 2048, 2048]\n");
    fails(&["seed", s(&big), "input", "--batch", "4096", "-o", "x.npy"], &["--batch 4096", "GiB"]);
    let help = ok(&["run", "--help"]);
    assert!(help.contains("--weights") && help.contains("--backend"), "{help}");
    // Output cut short (`resnetc inspect resnet152 | head -c 0`) ends quietly, not with a panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let cut =
        Command::new(env!("CARGO_BIN_EXE_resnetc")).args(["inspect", "resnet152"]).stdout(writer).output().unwrap();
    let err = String::from_utf8_lossy(&cut.stderr);
    assert!(cut.status.success() && err.is_empty(), "{:?}: {err}", cut.status);
}
