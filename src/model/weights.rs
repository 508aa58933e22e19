//! Host-side tensors as loaded from files, before upload to the GPU.

/// One tensor in host memory, always f32 after loading (f16/bf16/quantized data is
/// converted at load), row-major, with its Hugging Face name.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { name: name.into(), shape, data }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}
