//! Checks loaded tensors (weights, an input batch) against what a model expects.

use crate::safetensors::Tensors;
use crate::tensor::{shape_str, Tensor};
use anyhow::{bail, Result};

/// An input batch `[N, C, H, W]` for a model of input `[C, H, W]`: returns `N`. Errors
/// name the shape, or the first non-finite value (see [`check_finite_input`]).
pub fn check_input(input: &Tensor, shape: [usize; 3]) -> Result<usize> {
    let n = batch_size(input, shape)?;
    check_finite_input(input.data(), shape)?;
    Ok(n)
}

/// [`check_input`] without the values: the shape `[N >= 1, C, H, W]`, returning `N`.
pub fn batch_size(input: &Tensor, [c, h, w]: [usize; 3]) -> Result<usize> {
    Ok(match input.shape() {
        [0, ic, ih, iw] if [*ic, *ih, *iw] == [c, h, w] => {
            bail!("input has shape {}: an empty batch (N must be at least 1)", shape_str(input.shape()))
        }
        [n, ic, ih, iw] if [*ic, *ih, *iw] == [c, h, w] => *n,
        other => bail!("input has shape {} but the model expects [N, {c}, {h}, {w}]", shape_str(other)),
    })
}

/// Images of `[C, H, W]` one after another, all values finite: the error names the first
/// other value's image and position. A NaN would otherwise vanish in a ReLU's max and
/// leave ordinary-looking logits.
pub fn check_finite_input(data: &[f32], [c, h, w]: [usize; 3]) -> Result<()> {
    // Every inference runs this: a fold without early exit, which vectorizes, and the
    // position only on failure.
    if !data.iter().fold(false, |bad, v| bad | !v.is_finite()) {
        return Ok(());
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        let (img, ch, y, x) = (i / (c * h * w), i / (h * w) % c, i / w % h, i % w);
        bail!("input holds a non-finite value ({}) at image {img}, channel {ch}, row {y}, column {x}", data[i]);
    }
    Ok(())
}

/// Exactly the `expected` (name, shape) tensors, all values finite, BatchNorm variances
/// (`*running_var`, torchvision's name) not negative. Errors name the tensor and both
/// shapes. Such weights are refused: they can only produce NaN logits.
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
        // BatchNorm divides by sqrt(var + eps): a negative variance is no BatchNorm.
        if name.ends_with("running_var") {
            if let Some(i) = t.data().iter().position(|&v| v < 0.0) {
                bail!("tensor `{name}` holds a negative variance ({}) at index {i}", t.data()[i]);
            }
        }
    }
    if tensors.len() > expected.len() {
        if let Some((name, t)) = tensors.iter().find(|(n, _)| !expected.iter().any(|(e, _)| e.as_ref() == n.as_str())) {
            bail!("unexpected tensor `{name}` with shape {}: the model has no such parameter", shape_str(t.shape()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_batches_are_checked() {
        let ok = Tensor::new(vec![2, 1, 2, 3], vec![0.5; 12]);
        assert_eq!(check_input(&ok, [1, 2, 3]).unwrap(), 2);
        let wrong = check_input(&ok, [3, 2, 3]).unwrap_err().to_string();
        assert_eq!(wrong, "input has shape [2, 1, 2, 3] but the model expects [N, 3, 2, 3]");
        let empty = check_input(&Tensor::new(vec![0, 1, 2, 3], vec![]), [1, 2, 3]).unwrap_err().to_string();
        assert!(empty.contains("N must be at least 1"), "{empty}");
        let mut data = vec![0.5; 12];
        data[11] = f32::NAN; // image 1, channel 0, row 1, column 2
        let nan = check_input(&Tensor::new(vec![2, 1, 2, 3], data), [1, 2, 3]).unwrap_err().to_string();
        assert_eq!(nan, "input holds a non-finite value (NaN) at image 1, channel 0, row 1, column 2");
    }

    #[test]
    fn negative_variances_are_refused() {
        let mut tensors = Tensors::new();
        tensors.insert("bn1.running_var".to_string(), Tensor::new(vec![2], vec![1.0, -0.5]));
        let e = check_tensors(&[("bn1.running_var", [2])], &tensors).unwrap_err().to_string();
        assert_eq!(e, "tensor `bn1.running_var` holds a negative variance (-0.5) at index 1");
    }
}
