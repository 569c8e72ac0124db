//! One level of Strassen's algorithm (Strassen, 1969) for a 1x1 convolution, a matrix
//! product `C = W X` of the weights `W` (output x input channels) and the activations `X`
//! (input channels x pixels). Each of the three dimensions splits in halves: the output
//! and input channels at their middle, the pixels into two sets paired one to one (the
//! compiler pairs each pixel of the output's top half with the one `h / 2` rows below, or
//! on small outputs each of the first half of the pixels with the one half the pixels
//! further).
//! Seven products of the half-size blocks replace the eight of the plain block product:
//! 7/8 of the multiply-adds, for sums of blocks before and after them.
//!
//! The weight-side sums are made once, at load (`pack::pack_conv`); the compiler's
//! kernels make the activation-side sums when they gather their input and combine the
//! products into the output quadrants. Both read the table below, so the two sides
//! cannot disagree.
//!
//! Blocks are indexed `0 = 11, 1 = 12, 2 = 21, 3 = 22`: for the weights (output half,
//! input half), for the activations (input half, pixel half), for the output (output
//! half, pixel half).

/// One of the seven products `M = (sum of weight blocks) (sum of activation blocks)`, and
/// how it enters the output quadrants. Coefficients are -1, 0 or 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Product {
    pub weights: [i8; 4],
    pub activations: [i8; 4],
    pub output: [i8; 4],
}

const fn product(weights: [i8; 4], activations: [i8; 4], output: [i8; 4]) -> Product {
    Product { weights, activations, output }
}

/// Strassen's seven products, in the order the kernels run them:
/// `M1 = (W11 + W22)(X11 + X22)`, `M2 = (W21 + W22) X11`, `M3 = W11 (X12 - X22)`,
/// `M4 = W22 (X21 - X11)`, `M5 = (W11 + W12) X22`, `M6 = (W21 - W11)(X11 + X12)`,
/// `M7 = (W12 - W22)(X21 + X22)`; then `C11 = M1 + M4 - M5 + M7`, `C12 = M3 + M5`,
/// `C21 = M2 + M4`, `C22 = M1 - M2 + M3 + M6`. The kernels start a quadrant at its first
/// product (from the bias and the residual) and apply ReLU at its last
/// ([`quadrant_span`]).
pub const PRODUCTS: [Product; 7] = [
    product([1, 0, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1]),
    product([0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 1, -1]),
    product([1, 0, 0, 0], [0, 1, 0, -1], [0, 1, 0, 1]),
    product([0, 0, 0, 1], [-1, 0, 1, 0], [1, 0, 1, 0]),
    product([1, 1, 0, 0], [0, 0, 0, 1], [-1, 1, 0, 0]),
    product([-1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]),
    product([0, 1, 0, -1], [0, 0, 1, 1], [1, 0, 0, 0]),
];

/// The first and the last product that enter output quadrant `q`.
pub fn quadrant_span(q: usize) -> (usize, usize) {
    let uses: Vec<usize> = (0..PRODUCTS.len()).filter(|&i| PRODUCTS[i].output[q] != 0).collect();
    (uses[0], uses[uses.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seven products give the block product of 2x2 block matrices (scalar blocks
    /// suffice: the identity holds in any ring), for a few hundred integer matrices; every
    /// activation sum has a plus term (the kernels' gather starts each sum from one) and
    /// every quadrant gets two products or more.
    #[test]
    fn seven_products_make_the_block_product() {
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) % 19) as i64 - 9
        };
        for _ in 0..300 {
            let w: [i64; 4] = std::array::from_fn(|_| next());
            let x: [i64; 4] = std::array::from_fn(|_| next());
            let want = [
                w[0] * x[0] + w[1] * x[2],
                w[0] * x[1] + w[1] * x[3],
                w[2] * x[0] + w[3] * x[2],
                w[2] * x[1] + w[3] * x[3],
            ];
            let mut got = [0i64; 4];
            for p in PRODUCTS {
                let dot = |c: [i8; 4], v: [i64; 4]| (0..4).map(|i| c[i] as i64 * v[i]).sum::<i64>();
                let m = dot(p.weights, w) * dot(p.activations, x);
                for (g, &sign) in got.iter_mut().zip(&p.output) {
                    *g += sign as i64 * m;
                }
            }
            assert_eq!(got, want, "W {w:?} X {x:?}");
        }
        for (i, p) in PRODUCTS.iter().enumerate() {
            assert!(p.activations.contains(&1), "product {i}'s activation sum has a plus term");
        }
        for q in 0..4 {
            let (first, last) = quadrant_span(q);
            assert!(first < last, "quadrant {q} has two products or more");
        }
    }
}
