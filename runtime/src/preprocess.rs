//! Turns a decoded image into a model input of a given `[C, H, W]`.
//!
//! - `[3, 224, 224]` gets torchvision's ImageNet evaluation transform exactly: resize the
//!   shorter side to 256, centre-crop 224, scale to [0, 1], normalize with ImageNet's mean
//!   and std.
//! - Other square three-channel inputs get the same transform scaled to their size
//!   (shorter side to `round(H * 256 / 224)`, centre crop `H`).
//! - One-channel inputs (e.g. the bundled Fashion-MNIST model) take the image's grayscale
//!   (PIL's `L` formula), centre-cropped/resized the same way when the size differs,
//!   scaled to [0, 1] with no further normalization — the training script does the same.

use crate::image::{self, Rgb8, IMAGENET_MEAN, IMAGENET_STD};
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// The model input `[1, C, H, W]` for `img`.
pub fn image_to_input(img: &Rgb8, input: [usize; 3]) -> Result<Tensor> {
    let [c, h, w] = input;
    if [3, 224, 224] == input {
        return Ok(image::imagenet_tensor(img));
    }
    let (mean, std): (&[f32], &[f32]) = match c {
        3 => (&IMAGENET_MEAN, &IMAGENET_STD),
        1 => (&[0.0], &[1.0]),
        _ => bail!("images can feed models with 1 or 3 input channels, this one has {c}"),
    };
    let fitted;
    let img = if (img.width, img.height) == (w, h) {
        img
    } else if h == w {
        let resize = ((h * 256) as f64 / 224.0).round() as usize;
        fitted = image::resize_center_crop(img, resize, h);
        &fitted
    } else {
        bail!(
            "the model's input is {h}x{w} (not square) and the image is {}x{}: give a {h}x{w} image or an .npy input",
            img.height,
            img.width
        );
    };
    Ok(image::to_tensor(img, c, mean, std))
}
