//! Seeded weights and inputs, reproducible bit for bit in any language.
//!
//! This generator is a contract: `tests/goldens/make_goldens.py` implements it again in
//! Python (NumPy) so that PyTorch and resnetc see the same weights without shipping them.
//!
//! ## Definition
//! All arithmetic on keys is modulo 2^64.
//!
//! ```text
//! GAMMA            = 0x9E3779B97F4A7C15
//! fnv1a64(bytes)   : h = 0xCBF29CE484222325; for each byte b: h = (h XOR b) * 0x100000001B3
//! key(name, seed)  = fnv1a64(utf8(name)) XOR (seed * GAMMA)
//! mix(z)           : z = (z XOR z>>30) * 0xBF58476D1CE4E5B9
//!                    z = (z XOR z>>27) * 0x94D049BB133111EB
//!                    z =  z XOR z>>31
//! u_i              = (mix(key + (i+1) * GAMMA) >> 40) / 2^24      (exact, in [0, 1))
//! value_i          = f32_round_nearest(lo + (hi - lo) * u_i)      (computed in f64)
//! ```
//! `i` is the row-major element index. The range `[lo, hi)` depends on the tensor's role
//! (see [`Role`]): with `fan_in = in_channels / groups * kh * kw` for a conv weight and
//! `in_features` for the classifier,
//!
//! | role | lo | hi |
//! |---|---|---|
//! | conv weight | -sqrt(6 / fan_in) | +sqrt(6 / fan_in) |
//! | BN weight (gamma) | 0.25 | 0.75 |
//! | BN bias (beta) | -0.1 | 0.1 |
//! | BN running_mean | -0.1 | 0.1 |
//! | BN running_var | 0.5 | 1.5 |
//! | fc weight, fc bias | -1/sqrt(fan_in) | +1/sqrt(fan_in) |
//! | input (name `"input"`) | -1 | 1 |
//!
//! The bounds are computed in f64 (`sqrt(6.0 / fan_in)`, `1.0 / sqrt(fan_in)`).
//! Kaiming-uniform convs keep activations at unit scale, and gammas below one keep the
//! residual sums of 150-layer networks from growing without bound.

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// What a tensor is, which fixes the range its values are drawn from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role {
    ConvWeight { fan_in: usize },
    BnWeight,
    BnBias,
    BnMean,
    BnVar,
    FcWeight { fan_in: usize },
    FcBias { fan_in: usize },
    Input,
}

impl Role {
    /// The half-open range `[lo, hi)` of this role's values.
    pub fn range(self) -> (f64, f64) {
        match self {
            Role::ConvWeight { fan_in } => {
                let b = (6.0 / fan_in as f64).sqrt();
                (-b, b)
            }
            Role::BnWeight => (0.25, 0.75),
            Role::BnBias | Role::BnMean => (-0.1, 0.1),
            Role::BnVar => (0.5, 1.5),
            Role::FcWeight { fan_in } | Role::FcBias { fan_in } => {
                let b = 1.0 / (fan_in as f64).sqrt();
                (-b, b)
            }
            Role::Input => (-1.0, 1.0),
        }
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream key of tensor `name` under `seed`.
pub fn key(name: &str, seed: u64) -> u64 {
    fnv1a64(name.as_bytes()) ^ seed.wrapping_mul(GAMMA)
}

/// `len` values of tensor `name` drawn for `role` under `seed`.
pub fn values(name: &str, seed: u64, role: Role, len: usize) -> Vec<f32> {
    let k = key(name, seed);
    let (lo, hi) = role.range();
    (0..len as u64)
        .map(|i| {
            let z = mix(k.wrapping_add((i + 1).wrapping_mul(GAMMA)));
            let u = (z >> 40) as f64 / (1u64 << 24) as f64;
            (lo + (hi - lo) * u) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn values_stay_in_range_and_differ_by_seed() {
        let a = values("conv1.weight", 0, Role::BnVar, 1000);
        let b = values("conv1.weight", 1, Role::BnVar, 1000);
        assert!(a.iter().all(|&v| (0.5..=1.5).contains(&v)));
        assert_ne!(a, b);
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / 1000.0;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
    }
}
