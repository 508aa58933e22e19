//! Writing models Hugging Face transformers loads: `model.safetensors` (f32, names as
//! [`Weights::to_hf`] gives them), `config.json` and `tokenizer.json`.

use super::config::ModelConfig;
use super::layout::Weights;
use super::weights::HostTensor;
use crate::atomic;
use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Serializes f32 tensors as safetensors, sorted by name (the same tensors give the same
/// bytes), with the `format: pt` metadata transformers expects.
pub fn safetensors_bytes(tensors: &[HostTensor]) -> Result<Vec<u8>> {
    let bytes: Vec<(&str, Vec<u8>, &[usize])> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.values().iter().flat_map(|v| v.to_le_bytes()).collect(), &t.shape[..]))
        .collect();
    let mut views = Vec::new();
    for (name, data, shape) in &bytes {
        let view =
            TensorView::new(Dtype::F32, shape.to_vec(), data).with_context(|| format!("tensor '{name}'"))?;
        views.push((name.to_string(), view));
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// Writes `model.safetensors`, `config.json` and `tokenizer.json` into the existing folder
/// `dir` (callers stage it; see [`save_hf_model`]).
pub fn write_hf_files(
    dir: &Path,
    cfg: &ModelConfig,
    weights: &Weights<HostTensor>,
    tokenizer_json: &str,
) -> Result<()> {
    std::fs::write(dir.join("model.safetensors"), safetensors_bytes(&weights.to_hf(cfg))?)?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg.to_hf_json())?)?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json)?;
    Ok(())
}

/// Saves a whole model folder atomically: `dir` holds the old version or the new one.
pub fn save_hf_model(
    dir: &Path,
    cfg: &ModelConfig,
    weights: &Weights<HostTensor>,
    tokenizer_json: &str,
) -> Result<()> {
    atomic::write_dir(dir, |tmp| write_hf_files(tmp, cfg, weights, tokenizer_json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load;

    /// Saving and loading back gives the same config and bit-identical weights, for every
    /// architecture; saving twice gives the same bytes.
    #[test]
    fn saved_models_load_back_identically() {
        for name in ["stories260k", "tiny-gpt2", "tiny-qwen2", "tiny-gemma3"] {
            let Some(path) = crate::testing::model(name) else { continue };
            let model = load(&path).unwrap();
            let dir = std::env::temp_dir().join(format!("keel-save-{name}-{}", std::process::id()));
            save_hf_model(&dir, &model.config, &model.weights, model.tokenizer.json()).unwrap();
            let back = load(&dir).unwrap();
            assert_eq!(back.config, model.config, "{name}: config");
            let (a, b) = (model.weights.named(), back.weights.named());
            assert_eq!(a.len(), b.len());
            for ((name_a, ta), (_, tb)) in a.iter().zip(&b) {
                assert_eq!(ta.shape, tb.shape, "{name}: {name_a}");
                assert!(
                    ta.values().iter().zip(tb.values().iter()).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{name}: {name_a}"
                );
            }
            let first = std::fs::read(dir.join("model.safetensors")).unwrap();
            save_hf_model(&dir, &back.config, &back.weights, back.tokenizer.json()).unwrap();
            assert_eq!(
                first,
                std::fs::read(dir.join("model.safetensors")).unwrap(),
                "{name}: deterministic bytes"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
