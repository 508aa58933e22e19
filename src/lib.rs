//! Keel: a portable WebGPU runtime that runs transformer language models forward and
//! backward in hand-written WGSL compute shaders.
//!
//! The items at the crate root are the library's door: open the device ([`Gpu::shared`]),
//! [`load`] a model folder or `.gguf` file on the host, upload it ([`GpuModel::upload`]),
//! then [`generate`], [`score`], or hold a [`Session`] to feed tokens yourself; [`finetune`]
//! trains it. [`LcmConfig`] switches latent convergence modulation on for any of them.
//!
//! ```no_run
//! let gpu = keel::Gpu::shared()?;
//! let host = keel::load("models/stories260k")?;
//! let model = keel::GpuModel::upload(gpu, &host)?;
//! let opts = keel::GenerateOptions::for_model(&host);
//! let prompt = host.tokenizer.encode("Once upon a time")?;
//! let ids = keel::generate(&model, &prompt, &opts, |_| Ok(()))?;
//! println!("{}", host.tokenizer.decode(&ids)?);
//! # Ok::<(), keel::Error>(())
//! ```
//!
//! The modules are the engine's inside, public for Keel's own tests, tools and benchmarks
//! but hidden from these docs and not a stable interface. Layers, bottom up: `gpu` (device,
//! pipelines, steps), `ops` (one file per kernel and its backward, with `cpu` references),
//! `model` (configs, loaders and savers, the forward and backward passes, LoRA), `modulate`
//! (LCM), `generate` (sessions, sampling, scoring), `train` (fine-tuning), `metrics` and
//! `report` (long-generation metrics, MSMA, comparison reports), `study` (the comparison study
//! behind `compare` and `sweep`). The `cli` feature (on by
//! default) adds the `keel` command and model pulling.

#![warn(missing_docs)]

#[doc(hidden)]
pub mod atomic;
#[doc(hidden)]
pub mod chat;
#[doc(hidden)]
#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod cli;
#[doc(hidden)]
pub mod cpu;
mod error;
mod facade;
#[doc(hidden)]
pub mod generate;
#[doc(hidden)]
pub mod gpu;
#[doc(hidden)]
pub mod metrics;
#[doc(hidden)]
pub mod model;
#[doc(hidden)]
pub mod modulate;
#[doc(hidden)]
pub mod ops;
#[doc(hidden)]
#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod pull;
#[doc(hidden)]
pub mod report;
#[doc(hidden)]
pub mod rng;
#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod sentence;
#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod study;
#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
#[doc(hidden)]
pub mod tokenize;
#[doc(hidden)]
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
pub use facade::*;
