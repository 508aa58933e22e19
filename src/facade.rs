//! The library's door: what a program embedding Keel needs, re-exported at the crate root,
//! and the functions that work through a model's own device.

pub use crate::generate::{GenerateOptions, SamplerConfig, Scores, Session};
pub use crate::gpu::{AdapterChoice, Gpu};
pub use crate::model::load::GenerationDefaults;
pub use crate::model::{GpuModel, LoadedModel, ModelConfig, WeightChoice};
pub use crate::modulate::{LcmConfig, Space};
pub use crate::ops::optim::AdamW;
pub use crate::tokenize::{TextStream, Tokenizer};
pub use crate::train::precision::Precision;
#[cfg(not(target_arch = "wasm32"))]
pub use crate::train::run::{FinetuneConfig, LoraOptions, Progress, Summary};

#[cfg(not(target_arch = "wasm32"))]
use crate::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

/// Reads a model from disk: a folder with config.json and safetensors (single or sharded),
/// a folder holding one `.gguf` file, or a `.gguf` file; with its tokenizer and generation
/// defaults. Nothing touches the GPU yet ([`GpuModel::upload`] does).
#[cfg(not(target_arch = "wasm32"))]
pub fn load(path: impl AsRef<Path>) -> Result<LoadedModel> {
    crate::model::load(path.as_ref()).map_err(|e| match Error::from(e) {
        Error::Other(e) if is_unsupported(&e) => Error::Unsupported(format!("{e:#}")),
        Error::Other(e) => Error::Load(format!("{e:#}")),
        kind => kind,
    })
}

/// Whether a loader's error says the model is of a kind Keel does not implement (its
/// messages say "unsupported" or "not supported"), rather than broken.
#[cfg(not(target_arch = "wasm32"))]
fn is_unsupported(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}").to_lowercase();
    text.contains("unsupported") || text.contains("not supported")
}

/// Prefills `prompt` and decodes up to `opts.max_tokens` tokens on the model's device,
/// calling `on_token` with each (an error from it stops the generation and is returned).
/// Stops after an EOS token of `opts.eos`, which is included in the result.
#[cfg(not(target_arch = "wasm32"))]
pub fn generate(
    model: &GpuModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> std::result::Result<(), anyhow::Error>,
) -> Result<Vec<u32>> {
    opts.sampler.validate()?;
    crate::generate::generate(model.gpu(), model, prompt, opts, &mut on_token)
        .map_err(|e| Error::on_device(model.gpu(), e))
}

/// Scores `ids` (teacher forcing): the log-probability and entropy of each next token,
/// modulated by `lcm` when given.
#[cfg(not(target_arch = "wasm32"))]
pub fn score(model: &GpuModel, ids: &[u32], lcm: Option<&LcmConfig>) -> Result<Scores> {
    crate::generate::score(model.gpu(), model, ids, lcm).map_err(|e| Error::on_device(model.gpu(), e))
}

/// Fine-tunes (or resumes fine-tuning) `model` on the device `gpu` as `cfg` says, writing
/// checkpoints and the final weights or adapter under `cfg.out`; `base_name` names the base
/// model in adapter configs, and `progress` sees every step.
#[cfg(not(target_arch = "wasm32"))]
pub fn finetune(
    gpu: &'static Gpu,
    model: LoadedModel,
    base_name: &str,
    cfg: &FinetuneConfig,
    mut progress: impl FnMut(&Progress),
) -> Result<Summary> {
    crate::train::run::finetune(gpu, model, base_name, cfg, &mut progress)
        .map_err(|e| Error::on_device(gpu, e))
}

impl SamplerConfig {
    /// The model's own sampling defaults (its generation_config.json), Keel's where it has
    /// none: temperature 1, no top-k, top-p 1, no repetition penalty; seed 0.
    pub fn for_model(defaults: &GenerationDefaults) -> SamplerConfig {
        let keel = SamplerConfig::default();
        SamplerConfig {
            temperature: defaults.temperature.unwrap_or(keel.temperature),
            top_k: defaults.top_k.unwrap_or(keel.top_k),
            top_p: defaults.top_p.unwrap_or(keel.top_p),
            repetition_penalty: defaults.repetition_penalty.unwrap_or(keel.repetition_penalty),
            ..keel
        }
    }
}

impl GenerateOptions {
    /// Most new tokens [`GenerateOptions::for_model`] asks for (as `keel generate` does).
    pub const DEFAULT_MAX_TOKENS: usize = 128;

    /// Options for `model`: its EOS tokens and sampling defaults ([`SamplerConfig::for_model`]),
    /// [`Self::DEFAULT_MAX_TOKENS`] new tokens, no modulation.
    pub fn for_model(model: &LoadedModel) -> GenerateOptions {
        GenerateOptions {
            max_tokens: Self::DEFAULT_MAX_TOKENS,
            sampler: SamplerConfig::for_model(&model.generation),
            eos: model.config.eos.clone(),
            lcm: None,
        }
    }
}
