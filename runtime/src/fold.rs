//! Folding an inference BatchNorm into the convolution before it.
//!
//! `bn(conv(x, W)) = conv(x, W * s) + (beta - mean * s)` with `s = gamma / sqrt(var + eps)`
//! per output channel. Computed in f64 and rounded once to f32, so the folded model is as
//! close to the unfolded one as float32 storage allows.

/// BatchNorm epsilon of torchvision's ResNets.
pub const BN_EPS: f64 = 1e-5;

/// The parameters of one BatchNorm, each of length `channels`.
pub struct BatchNorm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
}

/// Folds `bn` into a conv weight laid out `[cout, ...]` (any number of trailing dims);
/// returns the scaled weight (same layout) and the bias.
pub fn fold(weight: &[f32], cout: usize, bn: &BatchNorm) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(weight.len() % cout, 0, "weight length is a multiple of cout");
    let per = weight.len() / cout;
    let mut w = Vec::with_capacity(weight.len());
    let mut bias = Vec::with_capacity(cout);
    for oc in 0..cout {
        let s = bn.gamma[oc] as f64 / (bn.var[oc] as f64 + BN_EPS).sqrt();
        w.extend(weight[oc * per..(oc + 1) * per].iter().map(|&v| (v as f64 * s) as f32));
        bias.push((bn.beta[oc] as f64 - bn.mean[oc] as f64 * s) as f32);
    }
    (w, bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_conv_equals_conv_then_bn() {
        // A 1x1 conv with 2 inputs and 2 outputs on one pixel.
        let w = [0.5f32, -1.0, 2.0, 0.25];
        let x = [3.0f32, -2.0];
        let bn = BatchNorm { gamma: &[1.5, 0.5], beta: &[0.1, -0.2], mean: &[0.3, 1.0], var: &[4.0, 0.25] };
        let (wf, b) = fold(&w, 2, &bn);
        for oc in 0..2 {
            let conv = w[oc * 2] * x[0] + w[oc * 2 + 1] * x[1];
            let want = (conv as f64 - bn.mean[oc] as f64) / (bn.var[oc] as f64 + BN_EPS).sqrt() * bn.gamma[oc] as f64
                + bn.beta[oc] as f64;
            let got = wf[oc * 2] * x[0] + wf[oc * 2 + 1] * x[1] + b[oc];
            assert!((got as f64 - want).abs() < 1e-5, "oc {oc}: {got} vs {want}");
        }
    }
}
