//! Winograd minimal filtering F(m x m, 3 x 3) (Lavin & Gray, 2016): an `m x m` output tile
//! of a stride-1 3x3 convolution is `A^T [ (G g G^T) .* (B^T d B) ] A` for the
//! `n x n` input tile `d` (`n = m + 2`) and the 3x3 filter `g`. The weight side `G g G^T`
//! is computed once here, at load; the compiler's kernels apply `B^T` and `A^T`.
//!
//! The transforms for m = 2, 3 and 4 (interpolation points 0, +-1 and infinity, plus 2
//! for m = 3 and +-2 for m = 4) live only here: the compiler reads them to generate the
//! data transforms, the packer applies `G` to the weights, so the two sides cannot
//! disagree.
//!
//! A stride-2 3x3 conv has one too, F(2 x 2, 3 x 3) with stride 2 over `5 x 5` input
//! tiles: split by parity, the even kernel taps (0 and 2) over the even inputs are a
//! 2-tap conv, which F(2, 2) computes with 3 multiplies instead of 4, and the odd tap
//! over the odd inputs takes 2; so 5 multiplies per 2 outputs along each axis, 25 per
//! 2 x 2 tile instead of 36 (0.69x). Its matrices hold only 0 and +-1 (`G` only 0 and 1):
//! its rounding error is of F(2, 3)'s order (the rounded `x0 - x2` and `w0 + w2` cancel
//! against `x2 w0`), so it spends no error budget.
//!
//! The 7x7 stride-2 stem has F(3 x 3, 4 x 4) over its input's four phases
//! ([`Winograd::phases`]): a 4x4 stride-1 conv, whose `G` here is `6 x 4`.

use std::fmt;

/// A 3x3 conv run as Winograd with output tiles of `m` pixels: F(m x m, 3 x 3) over
/// square tiles, or with `row` F(1 x m, 3 x 3), a 1-D F(m, 3) along each row for each of
/// the kernel's three rows, summed in the products (`3 * (m + 2)` transformed weights per
/// channel pair instead of `(m + 2)^2`: fewer bytes to stream, more multiplies). Stride 1,
/// or 2 for the square F(2 x 2, 3 x 3) with stride 2 ([`Winograd::strided`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Winograd {
    pub m: usize,
    pub row: bool,
    /// The conv's stride: input tiles start `m * stride` pixels apart.
    pub stride: usize,
    /// The weights are stored raw (the folded 3x3 filters, 9 floats per channel pair) and
    /// the matrix products transform them as they go, through a scratch of their own
    /// ([`Winograd::with_raw_weights`]); otherwise `G g G^T` is stored.
    pub raw: bool,
    /// The conv is a 7x7 stride-2 pad-3 one over the model's input, run as the stride-1
    /// 4x4 conv over its input's four phases (even and odd rows by even and odd columns,
    /// `4 cin` channels) with F(3 x 3, 4 x 4) ([`Winograd::phases`]); `stride` is then 1,
    /// the phases' stride.
    pub phases: bool,
}

impl Winograd {
    pub const fn square(m: usize) -> Winograd {
        Winograd { m, row: false, stride: 1, raw: false, phases: false }
    }

    pub const fn row(m: usize) -> Winograd {
        Winograd { m, row: true, stride: 1, raw: false, phases: false }
    }

    /// F(2 x 2, 3 x 3) with stride 2, the one strided transform.
    pub const fn strided() -> Winograd {
        Winograd { m: 2, row: false, stride: 2, raw: false, phases: false }
    }

    /// A ResNet stem, the 7x7 conv with stride 2 and padding 3 over the model's input, as
    /// a stride-1 conv over the input's four phases: with
    /// `P[a, b][y][x] = x[2 y + a - 1][2 x + b - 1]` (`a`, `b` the row's and the column's
    /// parity, [`phase_source`]; zero outside the input), the stem's output pixel `(y, x)`
    /// is the sum over the phases of a 4x4 conv with padding 1 of `P[a, b]`, whose tap
    /// `(u, v)` is the stem's tap `(2 u + a, 2 v + b)` (zero past 6: 49 of the four
    /// filters' 64 taps are real). So one 4x4 conv of
    /// `4 cin` channels, which F(3 x 3, 4 x 4) computes with 36 multiplies per 3x3 outputs
    /// and phase channel: 4 per output and phase channel, 16 per output and input channel
    /// against the stem's 49 direct, 3.1x fewer. Its points are F(4,3)'s, and so is its error
    /// (the cost model counts it as an F(4,3)).
    pub const fn phases() -> Winograd {
        Winograd { m: 3, row: false, stride: 1, raw: false, phases: true }
    }

    /// Taps along each axis of the conv the transform computes: 4 for the stem's phases
    /// ([`Winograd::phases`]), otherwise 3.
    pub fn kernel(&self) -> usize {
        if self.phases {
            PHASE_TAPS
        } else {
            3
        }
    }

    /// The same algorithm with its weights stored raw and transformed by the matrix
    /// products as they stream them: 9 floats per channel pair in memory instead of
    /// [`Winograd::stored_weights`] (2.8x fewer bytes at F(3,3), 1.7x along rows at F(1x3)),
    /// for some more work in the products.
    pub const fn with_raw_weights(self) -> Winograd {
        Winograd { raw: true, ..self }
    }

    /// Weights stored per channel pair: the transformed ones (`weight_positions * taps`),
    /// or 9 when they are stored raw.
    pub fn stored_weights(&self) -> usize {
        if self.raw {
            9
        } else {
            self.weight_positions() * self.taps()
        }
    }

    /// Input pixels of a tile along each transformed axis: `(m - 1) * stride + 3` (`m + 3`
    /// over the stem's phases).
    pub fn input_size(&self) -> usize {
        (self.m - 1) * self.stride + self.kernel()
    }

    /// Its transform matrices, if there is one for `m` and the stride.
    pub fn transform(&self) -> Option<Transform> {
        match self.stride {
            1 if self.phases => {
                (self.m == 3 && !self.row).then_some(Transform { m: 3, n: 6, r: 4, bt: &F4_BT, g: &F34_G, at: &F34_AT })
            }
            1 => transform(self.m),
            2 if self.m == 2 && !self.row => Some(Transform { m: 2, n: 5, r: 3, bt: &S2_BT, g: &S2_G, at: &S2_AT }),
            _ => None,
        }
    }

    /// Output rows of one tile (its columns: `m`).
    pub fn tile_rows(&self) -> usize {
        if self.row {
            1
        } else {
            self.m
        }
    }

    /// Tiles per row and per column of an `h x w` output (the last ones may hang over).
    pub fn grid(&self, h: usize, w: usize) -> (usize, usize) {
        (w.div_ceil(self.m), h.div_ceil(self.tile_rows()))
    }

    /// Transformed positions of one tile (`n x n`, or `n` along a row), `n` the
    /// [`Winograd::input_size`].
    pub fn positions(&self) -> usize {
        let n = self.input_size();
        if self.row {
            n
        } else {
            n * n
        }
    }

    /// Distinct transformed weights per channel pair and tap: the positions, less those
    /// whose weights repeat another's ([`Transform::weight_slots`]; the strided
    /// transform's 25 positions hold 16 distinct weights).
    pub fn weight_positions(&self) -> usize {
        match self.transform() {
            Some(tr) if !self.row => tr.weight_slots().1.pow(2),
            _ => self.positions(),
        }
    }

    /// Transformed weights per position and channel pair: one per kernel row along rows.
    pub fn taps(&self) -> usize {
        if self.row {
            3
        } else {
            1
        }
    }
}

impl fmt::Display for Winograd {
    /// `F(4x4,3x3)`, `F(1x2,3x3)`, `F(2x2,3x3,s2)`, with raw weights `F(1x3,3x3,raw)`, over
    /// the stem's phases `F(3x3,4x4,phases)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stride = if self.stride > 1 { format!(",s{}", self.stride) } else { String::new() };
        let raw = if self.raw { ",raw" } else { "" };
        let phases = if self.phases { ",phases" } else { "" };
        let r = self.kernel();
        write!(f, "F({}x{},{r}x{r}{stride}{raw}{phases})", self.tile_rows(), self.m)
    }
}

/// The three matrices of one F(m, r), row-major (`r` = 3 but for the stem's phases).
pub struct Transform {
    /// Output tile size.
    pub m: usize,
    /// Input tile size, `(m - 1) * stride + r`.
    pub n: usize,
    /// Filter taps.
    pub r: usize,
    /// `B^T`, `n x n`: input tile -> transformed domain.
    pub bt: &'static [f64],
    /// `G`, `n x r`: filter -> transformed domain.
    pub g: &'static [f64],
    /// `A^T`, `m x n`: transformed domain -> output tile.
    pub at: &'static [f64],
}

const F2_BT: [f64; 16] = [
    1.0, 0.0, -1.0, 0.0, //
    0.0, 1.0, 1.0, 0.0, //
    0.0, -1.0, 1.0, 0.0, //
    0.0, 1.0, 0.0, -1.0,
];
const F2_G: [f64; 12] = [
    1.0, 0.0, 0.0, //
    0.5, 0.5, 0.5, //
    0.5, -0.5, 0.5, //
    0.0, 0.0, 1.0,
];
const F2_AT: [f64; 8] = [
    1.0, 1.0, 1.0, 0.0, //
    0.0, 1.0, -1.0, -1.0,
];

// Points 0, 1, -1, 2 and infinity; of the candidates 2, -2, 1/2 and -1/2 for the fourth
// point the float32 error over a 256-channel sum differed by under 30% (all about half of
// F(4,3)'s), and 2 keeps `B^T` in small integers.
const F3_BT: [f64; 25] = [
    2.0, -1.0, -2.0, 1.0, 0.0, //
    0.0, -2.0, -1.0, 1.0, 0.0, //
    0.0, 2.0, -3.0, 1.0, 0.0, //
    0.0, -1.0, 0.0, 1.0, 0.0, //
    0.0, 2.0, -1.0, -2.0, 1.0,
];
const F3_G: [f64; 15] = [
    1.0 / 2.0,
    0.0,
    0.0,
    -1.0 / 2.0,
    -1.0 / 2.0,
    -1.0 / 2.0,
    -1.0 / 6.0,
    1.0 / 6.0,
    -1.0 / 6.0,
    1.0 / 6.0,
    1.0 / 3.0,
    2.0 / 3.0,
    0.0,
    0.0,
    1.0,
];
const F3_AT: [f64; 15] = [
    1.0, 1.0, 1.0, 1.0, 0.0, //
    0.0, 1.0, -1.0, 2.0, 0.0, //
    0.0, 1.0, 1.0, 4.0, 1.0,
];

const F4_BT: [f64; 36] = [
    4.0, 0.0, -5.0, 0.0, 1.0, 0.0, //
    0.0, -4.0, -4.0, 1.0, 1.0, 0.0, //
    0.0, 4.0, -4.0, -1.0, 1.0, 0.0, //
    0.0, -2.0, -1.0, 2.0, 1.0, 0.0, //
    0.0, 2.0, -1.0, -2.0, 1.0, 0.0, //
    0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
];
const F4_G: [f64; 18] = [
    1.0 / 4.0,
    0.0,
    0.0,
    -1.0 / 6.0,
    -1.0 / 6.0,
    -1.0 / 6.0,
    -1.0 / 6.0,
    1.0 / 6.0,
    -1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 12.0,
    1.0 / 6.0,
    1.0 / 24.0,
    -1.0 / 12.0,
    1.0 / 6.0,
    0.0,
    0.0,
    1.0,
];
const F4_AT: [f64; 24] = [
    1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
    0.0, 1.0, -1.0, 2.0, -2.0, 0.0, //
    0.0, 1.0, 1.0, 4.0, 4.0, 0.0, //
    0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
];

// F(3, 4) over F(4,3)'s points (0, +-1, +-2, infinity): the same `B^T`; `A^T` is F(4,3)'s
// first three rows with the point at infinity in the last; `G` (6 x 4) holds the points'
// powers over the products of their differences, as F(4,3)'s does for 3 taps.
#[rustfmt::skip]
const F34_G: [f64; 24] = [
    1.0 / 4.0, 0.0, 0.0, 0.0,
    -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
    -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0,
    1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0, 1.0 / 3.0,
    1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0, -1.0 / 3.0,
    0.0, 0.0, 0.0, 1.0,
];
const F34_AT: [f64; 18] = [
    1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
    0.0, 1.0, -1.0, 2.0, -2.0, 0.0, //
    0.0, 1.0, 1.0, 4.0, 4.0, 1.0,
];

// F(2, 3) with stride 2 over inputs x0..x4 (outputs y0 = w0 x0 + w1 x1 + w2 x2 and
// y1 = w0 x2 + w1 x3 + w2 x4): m1 = (x0 - x2) w0, m2 = x2 (w0 + w2), m3 = (x4 - x2) w2
// (F(2, 2) of the even taps over the even inputs), m4 = x1 w1, m5 = x3 w1 (the odd tap);
// y0 = m1 + m2 + m4, y1 = m2 + m3 + m5.
const S2_BT: [f64; 25] = [
    1.0, 0.0, -1.0, 0.0, 0.0, //
    0.0, 0.0, 1.0, 0.0, 0.0, //
    0.0, 0.0, -1.0, 0.0, 1.0, //
    0.0, 1.0, 0.0, 0.0, 0.0, //
    0.0, 0.0, 0.0, 1.0, 0.0,
];
const S2_G: [f64; 15] = [
    1.0, 0.0, 0.0, //
    1.0, 0.0, 1.0, //
    0.0, 0.0, 1.0, //
    0.0, 1.0, 0.0, //
    0.0, 1.0, 0.0,
];
const S2_AT: [f64; 10] = [
    1.0, 1.0, 0.0, 1.0, 0.0, //
    0.0, 1.0, 1.0, 0.0, 1.0,
];

/// The stride-1 transform producing `m x m` output tiles; `m` is 2, 3 or 4 (callers ask
/// [`Winograd::transform`]).
fn transform(m: usize) -> Option<Transform> {
    match m {
        2 => Some(Transform { m: 2, n: 4, r: 3, bt: &F2_BT, g: &F2_G, at: &F2_AT }),
        3 => Some(Transform { m: 3, n: 5, r: 3, bt: &F3_BT, g: &F3_G, at: &F3_AT }),
        4 => Some(Transform { m: 4, n: 6, r: 3, bt: &F4_BT, g: &F4_G, at: &F4_AT }),
        _ => None,
    }
}

impl Transform {
    /// The slot of each row of `G` among its distinct rows (equal rows share one, in
    /// order of first appearance), and how many there are. Positions `(a, b)` whose rows
    /// share slots share their weights `G g G^T`: those are stored once, at slot
    /// `slot[a] * distinct + slot[b]`. (Only the strided transform repeats rows: its odd
    /// tap reaches both odd inputs, rows 3 and 4.)
    pub fn weight_slots(&self) -> (Vec<usize>, usize) {
        let r = self.r;
        let row = |i: usize| &self.g[i * r..(i + 1) * r];
        let mut slots: Vec<usize> = Vec::with_capacity(self.n);
        let mut distinct = 0;
        for i in 0..self.n {
            match (0..i).find(|&j| row(j) == row(i)) {
                Some(j) => slots.push(slots[j]),
                None => {
                    slots.push(distinct);
                    distinct += 1;
                }
            }
        }
        (slots, distinct)
    }

    /// `G g G^T` (`n x n`, row-major) of one `r x r` filter `g` (row-major), in f64.
    pub fn filter(&self, g: &[f32]) -> Vec<f64> {
        let (n, r) = (self.n, self.r);
        assert_eq!(g.len(), r * r, "a filter of the transform's taps");
        // t = G g: n x r.
        let mut t = vec![0.0f64; n * r];
        for i in 0..n {
            for j in 0..r {
                t[i * r + j] = (0..r).map(|k| self.g[i * r + k] * g[k * r + j] as f64).sum();
            }
        }
        // u = t G^T: n x n.
        let mut u = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                u[i * n + j] = (0..r).map(|k| t[i * r + k] * self.g[j * r + k]).sum();
            }
        }
        u
    }

    /// `u[xi][r] = (G g_r)[xi]` for each row `g_r` of a 3x3 filter (row-major): the
    /// weights of F(1 x m, 3 x 3), `n x 3`.
    pub fn filter_rows(&self, g: &[f32]) -> Vec<f64> {
        assert_eq!(self.r, 3, "tiles along rows are of 3x3 filters");
        let n = self.n;
        let mut u = vec![0.0f64; n * 3];
        for xi in 0..n {
            for r in 0..3 {
                u[xi * 3 + r] = (0..3).map(|k| self.g[xi * 3 + k] * g[r * 3 + k] as f64).sum();
            }
        }
        u
    }
}

/// The stem that may run over its input's phases ([`Winograd::phases`]): its kernel,
/// stride and padding.
pub const PHASE_STEM: (usize, usize, usize) = (7, 2, 3);

/// Taps along each axis of a phase's filter: half the stem's kernel, rounded up.
pub const PHASE_TAPS: usize = PHASE_STEM.0.div_ceil(2);

/// The channel of the stem's phases ([`Winograd::phases`]) that holds input channel `c`
/// (of `cin`) at row parity `a` and column parity `b`: phase-major.
pub fn phase_channel(cin: usize, c: usize, a: usize, b: usize) -> usize {
    (2 * a + b) * cin + c
}

/// The input channel, row parity and column parity of phase channel `pc`: the inverse
/// of [`phase_channel`].
pub fn phase_of(cin: usize, pc: usize) -> (usize, usize, usize) {
    let phase = pc / cin;
    (pc % cin, phase / 2, phase % 2)
}

/// The input row (column) of the phases' row (column) `i` at parity `a`: `2 i + a - 1`,
/// which the stem's padding of 3 makes `2 (i - 1) + a + 1` (out of the input below 0).
pub fn phase_source(i: usize, a: usize) -> isize {
    2 * i as isize + a as isize - 1
}

/// The 4x4 filter (row-major) of the phase `(a, b)` of a 7x7 filter `g` (row-major): tap
/// `(u, v)` is `g`'s `(2 u + a, 2 v + b)`, zero past the filter's edge.
pub fn phase_filter(g: &[f32], a: usize, b: usize) -> [f32; PHASE_TAPS * PHASE_TAPS] {
    let (k, r) = (PHASE_STEM.0, PHASE_TAPS);
    assert_eq!(g.len(), k * k, "a 7x7 filter");
    let mut out = [0.0; PHASE_TAPS * PHASE_TAPS];
    for u in 0..r {
        for v in 0..r {
            let (ky, kx) = (2 * u + a, 2 * v + b);
            if ky < k && kx < k {
                out[u * r + v] = g[ky * k + kx];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One output tile through the three transforms equals the direct correlation (with
    /// the stride's input step).
    #[test]
    fn tile_equals_direct_correlation() {
        let all =
            [Winograd::square(2), Winograd::square(3), Winograd::square(4), Winograd::strided(), Winograd::phases()];
        for w in all {
            let tr = w.transform().unwrap();
            let (n, m, s, r) = (tr.n, tr.m, w.stride, tr.r);
            assert_eq!((n, r), (w.input_size(), w.kernel()));
            let d: Vec<f64> = (0..n * n).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
            let g: Vec<f32> = (0..r * r).map(|i| ((i * 5 % 7) as f32 - 3.0) / 2.0).collect();
            let u = tr.filter(&g);
            // v = B^T d B
            let mut v = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    v[i * n + j] = (0..n)
                        .flat_map(|a| (0..n).map(move |b| (a, b)))
                        .map(|(a, b)| tr.bt[i * n + a] * d[a * n + b] * tr.bt[j * n + b])
                        .sum();
                }
            }
            for row in 0..m {
                for c in 0..m {
                    let y: f64 = (0..n)
                        .flat_map(|a| (0..n).map(move |b| (a, b)))
                        .map(|(a, b)| tr.at[row * n + a] * u[a * n + b] * v[a * n + b] * tr.at[c * n + b])
                        .sum();
                    let want: f64 = (0..tr.r)
                        .flat_map(|a| (0..tr.r).map(move |b| (a, b)))
                        .map(|(a, b)| d[(s * row + a) * n + s * c + b] * g[a * tr.r + b] as f64)
                        .sum();
                    assert!((y - want).abs() < 1e-9, "{w} tile ({row},{c}): {y} vs {want}");
                }
            }
        }
    }

    /// Positions that share a weight slot have equal weights for any filter, and only the
    /// strided transform has such positions (16 distinct of 25).
    #[test]
    fn shared_weight_slots_hold_equal_weights() {
        for w in
            [Winograd::square(2), Winograd::square(3), Winograd::square(4), Winograd::strided(), Winograd::phases()]
        {
            let tr = w.transform().unwrap();
            let g: Vec<f32> = (0..tr.r * tr.r).map(|i| ((i * 5 % 7) as f32 - 3.0) / 2.0).collect();
            let (slots, distinct) = tr.weight_slots();
            let u = tr.filter(&g);
            let n = tr.n;
            for (a, b) in (0..n * n).flat_map(|x| (0..n * n).map(move |y| (x, y))) {
                let same_slot = slots[a / n] == slots[b / n] && slots[a % n] == slots[b % n];
                if same_slot {
                    assert_eq!(u[a], u[b], "{w}: positions {a} and {b} share a slot");
                }
            }
            let want = if w.stride == 2 { 16 } else { n * n };
            assert_eq!((distinct * distinct, w.weight_positions()), (want, want), "{w}");
        }
    }

    /// One row tile of F(1 x m, 3 x 3): the kernel rows' 1-D transforms, summed, equal
    /// the direct correlation of a 3 x n input patch.
    #[test]
    fn row_tile_equals_direct_correlation() {
        for m in [2, 3, 4] {
            let tr = transform(m).unwrap();
            let n = tr.n;
            let d: Vec<f64> = (0..3 * n).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
            let g: Vec<f32> = (0..9).map(|i| ((i * 5 % 7) as f32 - 3.0) / 2.0).collect();
            let u = tr.filter_rows(&g);
            for c in 0..m {
                let mut y = 0.0;
                for r in 0..3 {
                    // v = B^T d_r, the r-th input row's transform.
                    let v: Vec<f64> = (0..n).map(|xi| (0..n).map(|a| tr.bt[xi * n + a] * d[r * n + a]).sum()).collect();
                    y += (0..n).map(|xi| tr.at[c * n + xi] * u[xi * 3 + r] * v[xi]).sum::<f64>();
                }
                let want: f64 = (0..3)
                    .flat_map(|a| (0..3).map(move |b| (a, b)))
                    .map(|(a, b)| d[a * n + c + b] * g[a * 3 + b] as f64)
                    .sum();
                assert!((y - want).abs() < 1e-9, "F(1x{m},3x3) column {c}: {y} vs {want}");
            }
        }
    }

    /// The stem (7x7, stride 2, padding 3) equals the sum over its input's four phases of
    /// 4x4 convs with padding 1 of the phase filters ([`Winograd::phases`]), on odd and even
    /// sizes.
    #[test]
    fn stem_equals_its_phases() {
        let (k, stride, pad) = PHASE_STEM;
        for (h, w) in [(9, 10), (12, 7)] {
            let x: Vec<f32> = (0..h * w).map(|i| ((i * 29 % 13) as f32 - 6.0) / 4.0).collect();
            let g: Vec<f32> = (0..k * k).map(|i| ((i * 11 % 9) as f32 - 4.0) / 3.0).collect();
            let at = |y: i64, x_: i64| {
                if (0..h as i64).contains(&y) && (0..w as i64).contains(&x_) {
                    x[y as usize * w + x_ as usize]
                } else {
                    0.0
                }
            };
            let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
            for oy in 0..oh as i64 {
                for ox in 0..ow as i64 {
                    let mut want = 0.0f64;
                    for ky in 0..k as i64 {
                        for kx in 0..k as i64 {
                            let tap = g[ky as usize * k + kx as usize] as f64;
                            want += tap * at(2 * oy + ky - pad as i64, 2 * ox + kx - pad as i64) as f64;
                        }
                    }
                    let mut got = 0.0f64;
                    for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let f = phase_filter(&g, a, b);
                        for u in 0..4i64 {
                            for v in 0..4i64 {
                                // P[a, b][i][j] = x[2 i + a - 1][2 j + b - 1], read at (oy + u - 1, ox + v - 1).
                                let (i, j) = (oy + u - 1, ox + v - 1);
                                let p = at(2 * i + a as i64 - 1, 2 * j + b as i64 - 1);
                                got += f[(u * 4 + v) as usize] as f64 * p as f64;
                            }
                        }
                    }
                    assert!((got - want).abs() < 1e-9, "{h}x{w} ({oy},{ox}): {got} vs {want}");
                }
            }
        }
    }
}
