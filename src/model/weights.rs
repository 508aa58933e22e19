//! Host-side tensors as loaded from files, before upload to the GPU.

use crate::gpu::wfmt::{self, WeightFormat};
use std::borrow::Cow;

/// One tensor in host memory, row-major, with its Hugging Face name: f32 values
/// (f16/bf16 data is converted at load), or a GGUF weight's packed blocks (repacked to the
/// GPU layout, src/gpu/wfmt.rs), which the GPU reads as they are. Packed blocks are
/// dequantized only when f32 values are asked for ([`HostTensor::values`]: training,
/// saving, CPU references, format conversions), so loading a quantized model for generation
/// never holds its f32 copy.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    storage: Storage,
}

#[derive(Clone, Debug, PartialEq)]
enum Storage {
    F32(Vec<f32>),
    Packed(WeightFormat, Vec<u32>),
}

impl HostTensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { name: name.into(), shape, storage: Storage::F32(data) }
    }

    /// A `[rows, cols]` weight held as `fmt`'s packed words.
    pub fn packed(name: impl Into<String>, shape: Vec<usize>, fmt: WeightFormat, words: Vec<u32>) -> Self {
        Self { name: name.into(), shape, storage: Storage::Packed(fmt, words) }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The format the weight comes in: its packed one, else f32.
    pub fn format(&self) -> WeightFormat {
        self.packed_words().map_or(WeightFormat::F32, |(f, _)| f)
    }

    /// The packed format and words, when the tensor is held packed.
    pub fn packed_words(&self) -> Option<(WeightFormat, &[u32])> {
        match &self.storage {
            Storage::F32(_) => None,
            Storage::Packed(f, words) => Some((*f, words)),
        }
    }

    /// The f32 values: borrowed, or dequantized from the packed words.
    pub fn values(&self) -> Cow<'_, [f32]> {
        match &self.storage {
            Storage::F32(data) => Cow::Borrowed(data),
            Storage::Packed(f, words) => Cow::Owned(wfmt::dequantize(*f, words)),
        }
    }

    pub fn into_values(self) -> Vec<f32> {
        match self.storage {
            Storage::F32(data) => data,
            Storage::Packed(f, words) => wfmt::dequantize(f, &words),
        }
    }

    /// The f32 values to change in place (a packed tensor becomes f32 for good).
    pub fn values_mut(&mut self) -> &mut Vec<f32> {
        if let Storage::Packed(f, words) = &self.storage {
            self.storage = Storage::F32(wfmt::dequantize(*f, words));
        }
        match &mut self.storage {
            Storage::F32(data) => data,
            Storage::Packed(..) => unreachable!("converted above"),
        }
    }

    /// Bytes the values take in host memory.
    #[cfg(test)]
    pub fn host_bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(data) => data.len() * 4,
            Storage::Packed(_, words) => words.len() * 4,
        }
    }

    /// The first value that is not finite, with its index; packed rows are checked one at a
    /// time, so no f32 copy of the whole tensor is made.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        let find = |values: &[f32], base: usize| {
            values.iter().position(|v| !v.is_finite()).map(|i| (base + i, values[i]))
        };
        match &self.storage {
            Storage::F32(data) => find(data, 0),
            Storage::Packed(f, words) => {
                let cols = self.shape.get(1).copied().unwrap_or(1);
                let row_words = f.words(1, cols);
                words
                    .chunks(row_words.max(1))
                    .enumerate()
                    .find_map(|(r, row)| find(&wfmt::dequantize(*f, row), r * cols))
            }
        }
    }
}
