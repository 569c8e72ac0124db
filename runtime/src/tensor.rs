//! A dense, row-major float32 tensor: the currency of I/O and of the reference executor.

/// Row-major f32 data with its shape. `data.len()` always equals the product of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` holding `data`; panics if the lengths disagree (a programming
    /// error, never a user-input error: loaders check sizes before building tensors).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data length does not match shape {shape:?}");
        Tensor { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Formats a shape the way PyTorch prints it: `[64, 3, 7, 7]`.
pub fn shape_str(shape: &[usize]) -> String {
    format!("{shape:?}")
}
