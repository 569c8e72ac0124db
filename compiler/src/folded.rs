//! The weights a fused graph reads: each conv with a folded BatchNorm gets its scaled
//! weight and a bias (`{conv}.weight`, `{conv}.bias`), folded by the runtime's code.

use crate::graph::{Graph, Op};
use anyhow::{Context, Result};
use resnetc_runtime::fold::{fold, BatchNorm};
use resnetc_runtime::safetensors::Tensors;
use resnetc_runtime::Tensor;

/// Folds the BatchNorms of `fused` into its convs; other tensors are copied unchanged.
pub fn fold_weights(fused: &Graph, tensors: &Tensors) -> Result<Tensors> {
    let mut out = Tensors::new();
    let get = |name: String| tensors.get(&name).map(Tensor::data).with_context(|| format!("missing tensor `{name}`"));
    for n in fused.schedule() {
        match &fused.node(n).op {
            Op::Conv(c) => {
                let wname = format!("{}.weight", c.weight);
                let w = get(wname.clone())?;
                let Some(bn) = &c.folded_bn else {
                    out.insert(wname, Tensor::new(c.weight_shape().to_vec(), w.to_vec()));
                    continue;
                };
                let p = |s: &str| get(format!("{bn}.{s}"));
                let params = BatchNorm {
                    gamma: p("weight")?,
                    beta: p("bias")?,
                    mean: p("running_mean")?,
                    var: p("running_var")?,
                };
                let (wf, b) = fold(w, c.cout, &params);
                out.insert(wname, Tensor::new(c.weight_shape().to_vec(), wf));
                out.insert(format!("{}.bias", c.weight), Tensor::new(vec![c.cout], b));
            }
            Op::Linear { param, .. } => {
                for s in ["weight", "bias"] {
                    let name = format!("{param}.{s}");
                    out.insert(
                        name.clone(),
                        tensors.get(&name).with_context(|| format!("missing tensor `{name}`"))?.clone(),
                    );
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
