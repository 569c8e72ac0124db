//! Checks a set of loaded tensors against the ones a model expects.

use crate::safetensors::Tensors;
use crate::tensor::shape_str;
use anyhow::{bail, Result};

/// Exactly the `expected` (name, shape) tensors, all values finite. Errors name the tensor
/// and both shapes. Non-finite weights are refused: they can only produce NaN logits.
pub fn check_tensors<S: AsRef<str>, D: AsRef<[usize]>>(expected: &[(S, D)], tensors: &Tensors) -> Result<()> {
    for (name, shape) in expected {
        let (name, shape) = (name.as_ref(), shape.as_ref());
        let Some(t) = tensors.get(name) else {
            bail!("missing tensor `{name}` (expected shape {})", shape_str(shape));
        };
        if t.shape() != shape {
            bail!("tensor `{name}` has shape {} but the model expects {}", shape_str(t.shape()), shape_str(shape));
        }
        if let Some(i) = t.data().iter().position(|v| !v.is_finite()) {
            bail!("tensor `{name}` holds a non-finite value ({}) at index {i}", t.data()[i]);
        }
    }
    if tensors.len() > expected.len() {
        if let Some((name, t)) = tensors.iter().find(|(n, _)| !expected.iter().any(|(e, _)| e.as_ref() == n.as_str())) {
            bail!("unexpected tensor `{name}` with shape {}: the model has no such parameter", shape_str(t.shape()));
        }
    }
    Ok(())
}
