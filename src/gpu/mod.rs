//! The thin GPU layer: device and limits ([`Gpu`]), WGSL preprocessing and the pipeline
//! cache ([`shader`]), GPU tensors and the buffer pool ([`tensor`]), and [`Step`], which
//! records a whole step of kernels into one command encoder and one compute pass.

mod context;
pub mod shader;
mod step;
mod tensor;

pub use context::{AdapterChoice, Gpu};
pub use step::{groups_for, Step};
pub use tensor::{DType, Tensor};
