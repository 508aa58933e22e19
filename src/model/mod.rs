//! Models as data: config ([`config`]), file formats (`load`, [`gguf`]), Keel's weight
//! layout ([`layout`]) and the forward and backward passes on the GPU ([`forward`],
//! [`backward`]).

pub mod adapter;
pub mod backward;
pub mod config;
pub mod forward;
pub mod gguf;
pub mod layout;
pub mod load;
pub mod lora;
#[cfg(not(target_arch = "wasm32"))]
pub mod open;
pub mod save;
pub mod stream;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use forward::{GpuModel, KvCache, WeightChoice};
pub use load::{load, LoadedModel, ModelInfo};
#[cfg(not(target_arch = "wasm32"))]
pub use open::{open, OpenModel};
