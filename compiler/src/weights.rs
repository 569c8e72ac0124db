//! The tensors a graph expects, with torchvision names: the contract between a model and
//! its safetensors file. Loading checks names and shapes; seeding fills them reproducibly.

use crate::graph::{Graph, Op};
use anyhow::Result;
use resnetc_runtime::check::check_tensors;
use resnetc_runtime::safetensors::{self, Tensors};
use resnetc_runtime::seeded::{self, Role};
use resnetc_runtime::tensor::Tensor;
use std::path::Path;

/// One expected tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

/// Every tensor the graph reads, in schedule order.
pub fn manifest(graph: &Graph) -> Vec<Expected> {
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, role| out.push(Expected { name, shape, role });
    for n in graph.schedule() {
        match &graph.node(n).op {
            Op::Conv(c) => {
                let fan_in = c.weight_shape()[1..].iter().product();
                push(format!("{}.weight", c.weight), c.weight_shape().to_vec(), Role::ConvWeight { fan_in });
            }
            Op::BatchNorm { param } => {
                let c = graph.node(n).shape.c;
                push(format!("{param}.weight"), vec![c], Role::BnWeight);
                push(format!("{param}.bias"), vec![c], Role::BnBias);
                push(format!("{param}.running_mean"), vec![c], Role::BnMean);
                push(format!("{param}.running_var"), vec![c], Role::BnVar);
            }
            Op::Linear { param, cin, cout } => {
                push(format!("{param}.weight"), vec![*cout, *cin], Role::FcWeight { fan_in: *cin });
                push(format!("{param}.bias"), vec![*cout], Role::FcBias { fan_in: *cin });
            }
            _ => {}
        }
    }
    out
}

/// Seeded weights for `graph` (see `resnetc_runtime::seeded` for the definition).
pub fn seeded(graph: &Graph, seed: u64) -> Tensors {
    manifest(graph)
        .into_iter()
        .map(|e| {
            let len = e.shape.iter().product();
            let data = seeded::values(&e.name, seed, e.role, len);
            (e.name, Tensor::new(e.shape, data))
        })
        .collect()
}

/// A seeded input batch of `n` images of the spec's input shape.
pub fn seeded_input(shape: [usize; 3], n: usize, seed: u64) -> Tensor {
    let dims = vec![n, shape[0], shape[1], shape[2]];
    let len = dims.iter().product();
    Tensor::new(dims, seeded::values("input", seed, Role::Input, len))
}

/// Checks that `tensors` holds exactly the graph's tensors with the expected shapes, all
/// finite, no negative BatchNorm variance ([`check_tensors`]). Errors name the tensor and
/// both shapes.
pub fn check(graph: &Graph, tensors: &Tensors) -> Result<()> {
    let expected: Vec<(String, Vec<usize>)> = manifest(graph).into_iter().map(|e| (e.name, e.shape)).collect();
    check_tensors(&expected, tensors)
}

/// Loads a safetensors file and checks it against the graph; errors name the file.
pub fn load(graph: &Graph, path: &Path) -> Result<Tensors> {
    let tensors = safetensors::read(path)?;
    check(graph, &tensors).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(tensors)
}
