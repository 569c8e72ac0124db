//! Shared by the integration tests: the golden manifest, the contract's tolerance, paths.
#![allow(dead_code)]

pub mod random_spec;

use resnetc::graph::Graph;
use resnetc::spec::Spec;
use resnetc_runtime::safetensors::Tensors;
use resnetc_runtime::{npy, Tensor};
use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// One entry of `tests/goldens/manifest.toml`.
pub struct Golden {
    pub name: String,
    pub model: String,
    pub batch: usize,
    pub weight_seed: u64,
    pub input_seed: u64,
}

impl Golden {
    /// The model spec, resolving spec paths against the repository root.
    pub fn spec(&self) -> Spec {
        let m = if self.model.ends_with(".toml") {
            root().join(&self.model).display().to_string()
        } else {
            self.model.clone()
        };
        resnetc::spec::resolve(&m).unwrap()
    }

    pub fn graph(&self) -> Graph {
        resnetc::from_spec::build(&self.spec()).unwrap()
    }

    pub fn input(&self) -> Tensor {
        resnetc::weights::seeded_input(self.spec().input, self.batch, self.input_seed)
    }

    /// PyTorch's logits. Panics (failing the test) if the file is missing.
    pub fn logits(&self) -> Tensor {
        let path = root().join("tests/goldens").join(format!("{}.npy", self.name));
        npy::read(&path).unwrap_or_else(|e| panic!("golden {} is missing or unreadable: {e:#}", self.name))
    }
}

pub fn goldens() -> Vec<Golden> {
    let text = std::fs::read_to_string(root().join("tests/goldens/manifest.toml")).unwrap();
    let table: toml::Table = text.parse().unwrap();
    let entries = table["golden"].as_array().unwrap();
    entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            let n = |k: &str| e[k].as_integer().unwrap() as u64;
            Golden {
                name: s("name"),
                model: s("model"),
                batch: n("batch") as usize,
                weight_seed: n("weight_seed"),
                input_seed: n("input_seed"),
            }
        })
        .collect()
}

/// An unsigned integer from the environment variable `name` (decimal, or hex with `0x`;
/// `_` separators allowed), or `default` where it is unset; a value that does not parse
/// is an error, not the default (a stress run asked for must not silently shrink).
pub fn env_usize(name: &str, default: usize) -> usize {
    let v = match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => return default,
        Err(e) => panic!("{name}: {e}"),
        Ok(v) => v.replace('_', ""),
    };
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => usize::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}"))
}

/// The largest `|y - y_ref|` over the elements of two tensors of one shape.
fn max_abs_diff(y: &Tensor, y_ref: &Tensor) -> f64 {
    y.data().iter().zip(y_ref.data()).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()))
}

/// The contract: `max|y - y_ref| / max(1, max|y_ref|) <= 1e-4` and the same argmax per row.
/// Returns the relative error, or a description of the failure.
pub fn agree(y: &Tensor, y_ref: &Tensor) -> Result<f64, String> {
    if y.shape() != y_ref.shape() {
        return Err(format!("shape {:?} vs reference {:?}", y.shape(), y_ref.shape()));
    }
    let scale = y_ref.data().iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
    let diff = max_abs_diff(y, y_ref);
    let rel = if diff.is_nan() || y.data().iter().any(|v| !v.is_finite()) { f64::INFINITY } else { diff / scale };
    if rel > 1e-4 {
        return Err(format!("relative error {rel:.3e} > 1e-4"));
    }
    let classes = *y.shape().last().unwrap();
    let argmax = |row: &[f32]| row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
    for (r, (a, b)) in y.data().chunks(classes).zip(y_ref.data().chunks(classes)).enumerate() {
        if argmax(a) != argmax(b) {
            return Err(format!("row {r}: argmax {} vs reference {}", argmax(a), argmax(b)));
        }
    }
    Ok(rel)
}

/// [`agree`], then a check stricter than the contract's, for differential tests on seeded
/// weights: the error against the size of the logits less the classifier's bias
/// `fc.bias` (which the convs do not touch), at most 1e-3, plus a few float32 roundings
/// of the logits themselves. Where the features are small beside the bias, the
/// contract's bound alone would pass wrong convs. Returns the contract's relative error
/// and the error relative to the features' size (infinite where they are zero and the
/// error is not, within the float32 allowance).
pub fn agree_seeded(y: &Tensor, y_ref: &Tensor, weights: &Tensors) -> Result<(f64, f64), String> {
    let contract = agree(y, y_ref)?;
    let bias = weights.get("fc.bias").ok_or("no tensor fc.bias")?.data();
    let classes = *y_ref.shape().last().ok_or("logits without a shape")?;
    if bias.len() != classes {
        return Err(format!("fc.bias has {} values for {classes} classes", bias.len()));
    }
    if y_ref.data().iter().any(|v| !v.is_finite()) {
        return Err("reference logits that are not finite".into());
    }
    let features = y_ref.data().chunks(classes).flat_map(|row| row.iter().zip(bias).map(|(v, b)| (v - b).abs()));
    let size = features.fold(0.0f64, |m, v| m.max(v as f64));
    let scale = y_ref.data().iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let diff = max_abs_diff(y, y_ref);
    let bound = 1e-3 * size + 4.0 * f32::EPSILON as f64 * scale;
    let rel = if diff == 0.0 { 0.0 } else { diff / size };
    if diff > bound {
        return Err(format!("error {diff:.3e} ({rel:.3e} of the features' size {size:.3e}) > {bound:.3e}"));
    }
    Ok((contract, rel))
}
