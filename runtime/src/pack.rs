//! Weight recipes: how the compiler wants each layer's weights laid out, and the one
//! implementation that builds the packed weight blob from torchvision tensors (folding
//! BatchNorm on the way). The JIT, the AOT build and macro-generated models all call
//! [`build_blob`], so every backend reads weights packed by the same code.

use crate::exec::Aligned;
use crate::fold::{fold, BatchNorm};
use crate::safetensors::Tensors;
use anyhow::{bail, Context, Result};
use std::borrow::Cow;

type Name = Cow<'static, str>;

/// A conv's packed layout: output channels in tiles of `jl`; tile `t` reads input
/// channels `start(t) .. start(t) + icr`; weights `[tile][kh][kw][icr][jl]`, zero where an
/// (output, input) channel pair is padding or lies in different groups (with `strassen`,
/// the sums of [`ConvPacking::strassen`] instead).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvPacking {
    /// Tensor name prefix of the weight (`layer1.0.conv1`).
    pub weight: Name,
    /// Tensor name prefix of the BatchNorm folded into it, if any.
    pub bn: Option<Name>,
    pub cout: usize,
    pub cin: usize,
    pub kernel: usize,
    pub groups: usize,
    /// Output channels per tile.
    pub jl: usize,
    /// Number of tiles (covering the padded output channels).
    pub tiles: usize,
    /// Input channels read per tile.
    pub icr: usize,
    /// `start(t) = (t / per_group) * group_stride + (t % per_group) * tile_stride`.
    pub per_group: usize,
    pub group_stride: usize,
    pub tile_stride: usize,
    /// Float offsets of the packed weights and of the bias (`tiles * jl` floats).
    pub offset: usize,
    pub bias_offset: usize,
    /// A 1x1 conv run as one level of Strassen ([`crate::strassen`]): the weights are the
    /// seven half-size sums of [`crate::strassen::PRODUCTS`], `[tile][product][ic][jl]`
    /// with `tile` over the first half of the tiles and `ic` over the first half of the
    /// input channels (an ungrouped conv; `tiles` and `icr` even).
    pub strassen: bool,
}

impl ConvPacking {
    pub fn start(&self, tile: usize) -> usize {
        (tile / self.per_group) * self.group_stride + (tile % self.per_group) * self.tile_stride
    }
    pub fn weight_floats(&self) -> usize {
        if self.strassen {
            crate::strassen::PRODUCTS.len() * (self.tiles / 2) * (self.icr / 2) * self.jl
        } else {
            self.tiles * self.kernel * self.kernel * self.icr * self.jl
        }
    }
}

/// The classifier: weights `[coutp / block][cinp][block]` (transposed per block of
/// `block` outputs, padded with zeros), bias `[coutp]`. A block's weights are contiguous,
/// so the kernel task that reads them streams them in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinearPacking {
    pub param: Name,
    pub cin: usize,
    pub cout: usize,
    pub cinp: usize,
    pub coutp: usize,
    /// Outputs per block (the vector width); divides `coutp`.
    pub block: usize,
    pub offset: usize,
    pub bias_offset: usize,
}

/// A 3x3 conv run as Winograd F(m, 3) (stride 1 or 2): transformed weights
/// `U[slot][ktile][ic][tap][jl]` (`slot` over the `n x n` transformed positions, those
/// with equal weights sharing one (`Transform::weight_slots`), or the `n` positions along
/// a row with `row`, `ktile` over tiles of `jl` output channels, `ic` over
/// the padded input channels, `tap` over the kernel's 3 rows with `row`, else one), bias
/// `[ktiles * jl]`. With `raw` the folded 3x3 filters instead, `[ktile][r][ic][k][jl]`
/// along rows (a kernel row of every input channel together: the products transform one
/// kernel row per pass) and `[ktile][ic][r][k][jl]` for square tiles (kernel rows `r`,
/// columns `k`; [`WinogradPacking::raw_index`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WinogradPacking {
    pub weight: Name,
    pub bn: Option<Name>,
    pub cout: usize,
    pub cin: usize,
    /// Output tile size (2, 3 or 4).
    pub m: usize,
    /// F(1 x m, 3 x 3) along rows instead of F(m x m, 3 x 3).
    pub row: bool,
    /// The conv's stride (2: F(2 x 2, 3 x 3) with stride 2).
    pub stride: usize,
    /// The raw filters are stored, for products that transform them (`Winograd::raw`).
    pub raw: bool,
    /// The conv is the stem run over its input's phases (`Winograd::phases`): `cin`
    /// counts the phases' channels, four per input channel of the 7x7 filters.
    pub phases: bool,
    pub jl: usize,
    pub ktiles: usize,
    /// Input channels including padding.
    pub cin_pad: usize,
    pub offset: usize,
    pub bias_offset: usize,
}

impl WinogradPacking {
    /// The Winograd algorithm packed for.
    pub fn algorithm(&self) -> crate::winograd::Winograd {
        crate::winograd::Winograd { m: self.m, row: self.row, stride: self.stride, raw: self.raw, phases: self.phases }
    }

    pub fn weight_floats(&self) -> usize {
        self.algorithm().stored_weights() * self.ktiles * self.cin_pad * self.jl
    }

    /// With `raw`, the float index of lane 0 of tap `(r, k)` of input channel `ic` in
    /// output tile `ktile`, from the weights' start.
    pub fn raw_index(&self, ktile: usize, ic: usize, r: usize, k: usize) -> usize {
        let c = self.cin_pad;
        let i = if self.row { ((ktile * 3 + r) * c + ic) * 3 + k } else { ((ktile * c + ic) * 3 + r) * 3 + k };
        i * self.jl
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Recipe {
    Conv(ConvPacking),
    Winograd(WinogradPacking),
    Linear(LinearPacking),
}

fn get<'a>(t: &'a Tensors, name: &str) -> Result<&'a [f32]> {
    t.get(name).map(|t| t.data()).with_context(|| format!("missing tensor `{name}`"))
}

/// A conv's weight with its BatchNorm folded in, and its bias.
fn folded(weight: &str, bn: &Option<Name>, cout: usize, tensors: &Tensors) -> Result<(Vec<f32>, Vec<f32>)> {
    let raw = get(tensors, &format!("{weight}.weight"))?;
    Ok(match bn {
        Some(bn) => {
            let q = |s: &str| get(tensors, &format!("{bn}.{s}"));
            let params =
                BatchNorm { gamma: q("weight")?, beta: q("bias")?, mean: q("running_mean")?, var: q("running_var")? };
            fold(raw, cout, &params)
        }
        None => (raw.to_vec(), vec![0.0; cout]),
    })
}

/// Packs one conv into `blob`.
pub fn pack_conv(p: &ConvPacking, tensors: &Tensors, blob: &mut [f32]) -> Result<()> {
    let (w, bias) = folded(&p.weight, &p.bn, p.cout, tensors)?;
    let out = &mut blob[p.offset..p.offset + p.weight_floats()];
    out.fill(0.0);
    if p.strassen {
        pack_strassen(p, &w, out);
    } else {
        pack_direct(p, &w, out);
    }
    let b = &mut blob[p.bias_offset..p.bias_offset + p.tiles * p.jl];
    b.fill(0.0);
    b[..p.cout].copy_from_slice(&bias);
    Ok(())
}

/// The weights of a direct conv, `[tile][kh][kw][ic][jl]` (see [`ConvPacking`]), into
/// `out` (zeroed).
fn pack_direct(p: &ConvPacking, w: &[f32], out: &mut [f32]) {
    let (cin_g, cout_g, k) = (p.cin / p.groups, p.cout / p.groups, p.kernel);
    for t in 0..p.tiles {
        let start = p.start(t);
        for kh in 0..k {
            for kw in 0..k {
                for i in 0..p.icr {
                    let ic = start + i;
                    for lane in 0..p.jl {
                        let oc = t * p.jl + lane;
                        if oc >= p.cout || ic >= p.cin || ic / cin_g != oc / cout_g {
                            continue;
                        }
                        let src = ((oc * cin_g + ic % cin_g) * k + kh) * k + kw;
                        out[(((t * k + kh) * k + kw) * p.icr + i) * p.jl + lane] = w[src];
                    }
                }
            }
        }
    }
}

/// The weights of a 1x1 conv run as Strassen ([`ConvPacking::strassen`]): block `q` of
/// the folded `[cout][cin]` matrix is its output half `q / 2` and input half `q % 2`; each
/// product's sum of blocks is made in f64 and rounded once.
fn pack_strassen(p: &ConvPacking, w: &[f32], out: &mut [f32]) {
    assert!(p.kernel == 1 && p.groups == 1 && p.cout == p.tiles * p.jl && p.cin == p.icr, "an unpadded 1x1 conv");
    assert!(p.tiles.is_multiple_of(2) && p.icr.is_multiple_of(2), "channels in halves");
    let (half_tiles, half_in, jl) = (p.tiles / 2, p.icr / 2, p.jl);
    let half_out = half_tiles * jl;
    for t in 0..half_tiles {
        for (i, product) in crate::strassen::PRODUCTS.iter().enumerate() {
            for ic in 0..half_in {
                for lane in 0..jl {
                    let oc = t * jl + lane;
                    let sum: f64 = (0..4)
                        .filter(|&q| product.weights[q] != 0)
                        .map(|q| {
                            let (o, c) = (oc + (q / 2) * half_out, ic + (q % 2) * half_in);
                            f64::from(product.weights[q]) * f64::from(w[o * p.cin + c])
                        })
                        .sum();
                    out[((t * crate::strassen::PRODUCTS.len() + i) * half_in + ic) * jl + lane] = sum as f32;
                }
            }
        }
    }
}

/// Transforms one 3x3 conv's folded weights into the Winograd domain (or with `raw` lays
/// them out for products that transform them; with `phases` the stem's 7x7 filters, each
/// phase's 4x4 taps), into `blob`.
pub fn pack_winograd(p: &WinogradPacking, tensors: &Tensors, blob: &mut [f32]) -> Result<()> {
    let (w, bias) = folded(&p.weight, &p.bn, p.cout, tensors)?;
    let tr = p.algorithm().transform().with_context(|| format!("{}: no Winograd {}", p.weight, p.algorithm()))?;
    let (positions, taps) = (p.algorithm().positions(), p.algorithm().taps());
    // Positions that share weights share their slot (`Transform::weight_slots`); along
    // rows every position has its own.
    let (slots, distinct) = tr.weight_slots();
    let slot = |xi: usize| if p.row { xi } else { slots[xi / tr.n] * distinct + slots[xi % tr.n] };
    let out = &mut blob[p.offset..p.offset + p.weight_floats()];
    out.fill(0.0);
    // The stem's input channels, and its filter of phase channel `ic` (`phase_channel`).
    let cin0 = p.cin / 4;
    let phase_filter = |oc: usize, ic: usize| {
        let (c, a, b) = crate::winograd::phase_of(cin0, ic);
        let k = crate::winograd::PHASE_STEM.0;
        crate::winograd::phase_filter(&w[(oc * cin0 + c) * k * k..][..k * k], a, b)
    };
    for oc in 0..p.cout {
        let (kt, lane) = (oc / p.jl, oc % p.jl);
        for ic in 0..p.cin {
            let phased;
            let g = if p.phases {
                phased = phase_filter(oc, ic);
                &phased[..]
            } else {
                &w[(oc * p.cin + ic) * 9..][..9]
            };
            if p.raw {
                for (tap, &v) in g.iter().enumerate() {
                    out[p.raw_index(kt, ic, tap / 3, tap % 3) + lane] = v;
                }
                continue;
            }
            // `[xi][tap]`: `G g G^T`, or `G g_r` for each kernel row `r` along rows.
            let u = if p.row { tr.filter_rows(g) } else { tr.filter(g) };
            for xi in 0..positions {
                for tap in 0..taps {
                    out[(((slot(xi) * p.ktiles + kt) * p.cin_pad + ic) * taps + tap) * p.jl + lane] =
                        u[xi * taps + tap] as f32;
                }
            }
        }
    }
    let b = &mut blob[p.bias_offset..p.bias_offset + p.ktiles * p.jl];
    b.fill(0.0);
    b[..p.cout].copy_from_slice(&bias);
    Ok(())
}

/// Packs the classifier into `blob`.
pub fn pack_linear(p: &LinearPacking, tensors: &Tensors, blob: &mut [f32]) -> Result<()> {
    let w = get(tensors, &format!("{}.weight", p.param))?;
    let b = get(tensors, &format!("{}.bias", p.param))?;
    if p.block == 0 || !p.coutp.is_multiple_of(p.block) {
        bail!("{}: classifier recipe with {} outputs in blocks of {}", p.param, p.coutp, p.block);
    }
    let out = &mut blob[p.offset..p.offset + p.cinp * p.coutp];
    out.fill(0.0);
    for o in 0..p.cout {
        let (blk, lane) = (o / p.block, o % p.block);
        for i in 0..p.cin {
            out[(blk * p.cinp + i) * p.block + lane] = w[o * p.cin + i];
        }
    }
    let bias = &mut blob[p.bias_offset..p.bias_offset + p.coutp];
    bias.fill(0.0);
    bias[..p.cout].copy_from_slice(b);
    Ok(())
}

fn pack(r: &Recipe, tensors: &Tensors, blob: &mut [f32]) -> Result<()> {
    match r {
        Recipe::Conv(p) => pack_conv(p, tensors, blob),
        Recipe::Winograd(p) => pack_winograd(p, tensors, blob),
        Recipe::Linear(p) => pack_linear(p, tensors, blob),
    }
}

/// The tensors a recipe reads.
fn tensor_names(r: &Recipe) -> Vec<String> {
    let conv = |weight: &str, bn: &Option<Name>| {
        let mut names = vec![format!("{weight}.weight")];
        if let Some(bn) = bn {
            names.extend(["weight", "bias", "running_mean", "running_var"].map(|s| format!("{bn}.{s}")));
        }
        names
    };
    match r {
        Recipe::Conv(p) => conv(&p.weight, &p.bn),
        Recipe::Winograd(p) => conv(&p.weight, &p.bn),
        Recipe::Linear(p) => vec![format!("{}.weight", p.param), format!("{}.bias", p.param)],
    }
}

/// Builds the weight blob of `floats` floats from torchvision tensors, straight into the
/// 64-byte aligned buffer the model runs on (no further copy), on huge pages where the
/// system offers them ([`crate::hugepages`]).
pub fn build_blob(recipes: &[Recipe], floats: usize, tensors: &Tensors) -> Result<Aligned> {
    let mut blob = Aligned::zeroed_huge(floats)?;
    for r in recipes {
        pack(r, tensors, blob.as_mut_slice())?;
    }
    Ok(blob)
}

/// [`build_blob`], freeing each tensor once packed: memory then peaks at about the larger
/// of the tensors and the blob instead of their sum (the blob's pages are untouched zeros
/// until packed).
pub fn build_blob_consuming(recipes: &[Recipe], floats: usize, mut tensors: Tensors) -> Result<Aligned> {
    let mut blob = Aligned::zeroed_huge(floats)?;
    for r in recipes {
        pack(r, &tensors, blob.as_mut_slice())?;
        for name in tensor_names(r) {
            tensors.remove(&name);
        }
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::winograd::Winograd;
    use crate::Tensor;

    /// Raw weights (`WinogradPacking::raw`) are the folded filters at `raw_index`, from
    /// which the transform gives back what the stored packing holds: along rows and for
    /// square tiles, with padded channels (20 of 32 inputs, 24 of 32 outputs).
    #[test]
    fn raw_weights_transform_to_the_stored_ones() {
        let (cout, cin, jl) = (24, 20, 16);
        let data = (0..cout * cin * 9).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
        let tensors: Tensors = [("c.weight".to_string(), Tensor::new(vec![cout, cin, 3, 3], data))].into();
        for w in [Winograd::row(3), Winograd::row(2), Winograd::square(3), Winograd::square(4)] {
            let recipe = |raw: bool| WinogradPacking {
                weight: "c".into(),
                bn: None,
                cout,
                cin,
                m: w.m,
                row: w.row,
                stride: 1,
                raw,
                phases: false,
                jl,
                ktiles: 2,
                cin_pad: 32,
                offset: 0,
                bias_offset: 0,
            };
            let (raw, stored) = (recipe(true), recipe(false));
            assert_eq!(raw.weight_floats(), 9 * 2 * 32 * jl);
            // The weights, then the bias.
            let pack = |p: &WinogradPacking| {
                let mut blob = vec![0.0; p.weight_floats() + 2 * jl];
                pack_winograd(&WinogradPacking { bias_offset: p.weight_floats(), ..p.clone() }, &tensors, &mut blob)
                    .unwrap();
                blob
            };
            let (rb, sb) = (pack(&raw), pack(&stored));
            let tr = w.transform().unwrap();
            let (positions, taps) = (w.positions(), w.taps());
            for oc in 0..32 {
                let (kt, lane) = (oc / jl, oc % jl);
                for ic in 0..32 {
                    let g: Vec<f32> = (0..9).map(|q| rb[raw.raw_index(kt, ic, q / 3, q % 3) + lane]).collect();
                    if oc >= cout || ic >= cin {
                        assert!(g.iter().all(|&v| v == 0.0), "padding ({oc}, {ic}) is zero");
                        continue;
                    }
                    assert_eq!(g[4], tensors["c.weight"].data()[(oc * cin + ic) * 9 + 4]);
                    let u = if w.row { tr.filter_rows(&g) } else { tr.filter(&g) };
                    for xi in 0..positions {
                        for tap in 0..taps {
                            let at = (((xi * 2 + kt) * 32 + ic) * taps + tap) * jl + lane;
                            assert_eq!(sb[at], u[xi * taps + tap] as f32, "{w} ({oc}, {ic}) position {xi} tap {tap}");
                        }
                    }
                }
            }
        }
    }
}
