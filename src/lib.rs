//! Keel: a portable WebGPU runtime that runs transformer language models forward and
//! backward in hand-written WGSL compute shaders.
//!
//! Layers, bottom up: [`gpu`] (device, pipelines, steps), [`ops`] (one file per kernel and
//! its backward, with [`cpu`] references), [`model`] (configs, loaders and savers, the forward
//! and backward passes, LoRA), [`modulate`] (LCM), [`generate`] (sessions, sampling, scoring),
//! [`train`] (fine-tuning: the step, AdamW, runs with checkpoints), [`metrics`] (long-generation
//! metrics and MSMA), [`report`] (charts and comparison reports).

pub mod atomic;
pub mod chat;
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod cpu;
pub mod generate;
pub mod gpu;
pub mod metrics;
pub mod model;
pub mod modulate;
pub mod ops;
#[cfg(not(target_arch = "wasm32"))]
pub mod pull;
pub mod report;
pub mod rng;
#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod tokenize;
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;
