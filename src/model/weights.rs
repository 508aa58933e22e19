//! Host-side tensors as loaded from files, before upload to the GPU.

use crate::cpu::quant::WeightFormat;

/// One tensor in host memory, row-major, with its Hugging Face name. `data` is always f32
/// (f16/bf16/quantized data is converted at load), so training, saving and the CPU references
/// read it as they always did. A GGUF weight also keeps its file's packed blocks in `packed`
/// (repacked to the GPU layout, src/cpu/quant.rs), so the GPU can hold exactly the file's
/// quantized values; the host then holds both (f32 plus the packed copy).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The same values in a packed format; whoever changes `data` drops it.
    pub packed: Option<(WeightFormat, Vec<u32>)>,
}

impl HostTensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { name: name.into(), shape, data, packed: None }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The format the weight comes in: its packed one, else f32.
    pub fn format(&self) -> WeightFormat {
        self.packed.as_ref().map_or(WeightFormat::F32, |(f, _)| *f)
    }
}
