//! The thin GPU layer: device and limits ([`Gpu`]), WGSL preprocessing and the pipeline
//! cache ([`shader`]), GPU tensors and the buffer pool (`tensor`), the weight formats the
//! matrix kernels read ([`wfmt`]), and [`Step`], which records a whole step of kernels into one
//! command encoder and one compute pass.

mod context;
pub mod shader;
mod sharded;
mod step;
mod tensor;
pub mod wfmt;

pub use context::{adapter_label, env_flag, AdapterChoice, Gpu, KernelOptions, Pipeline, Tier};
pub use sharded::{shard_spans, Sharded};
pub use step::{groups_for, KernelTime, Recording, Step, Timing};
pub use tensor::{DType, PendingRead, Tensor};
pub use wfmt::WeightFormat;
