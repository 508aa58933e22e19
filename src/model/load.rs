//! Finding and reading a model: a folder with config.json + safetensors (single or
//! sharded), a folder holding one `.gguf`, or a `.gguf` file; plus tokenizer.json and
//! generation_config.json.

use super::config::{token_ids, ModelConfig};
use super::gguf;
use super::layout::Weights;
use super::weights::HostTensor;
use crate::tokenize::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Sampling defaults a model ships in generation_config.json.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: Weights<HostTensor>,
    pub tokenizer: Tokenizer,
    pub generation: GenerationDefaults,
    pub path: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: not valid JSON ({e})", path.display()))
}

/// Reads every tensor of a safetensors file as f32 with its name.
pub fn read_safetensors(bytes: &[u8], file: &str) -> Result<Vec<HostTensor>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("{file}: not a valid safetensors file ({e})"))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let data = view.data();
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => {
                data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            safetensors::Dtype::F16 => {
                data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            safetensors::Dtype::BF16 => {
                data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => bail!("{file}: tensor '{name}' has dtype {other:?}; Keel reads F32, F16 and BF16"),
        };
        if n != Some(data.len()) {
            bail!("{file}: tensor '{name}' has {} values for shape {shape:?}", data.len());
        }
        out.push(HostTensor::new(name, shape, data));
    }
    Ok(out)
}

/// Where the model's files are.
enum Layout {
    Gguf(PathBuf),
    Safetensors(PathBuf),
}

fn find(path: &Path) -> Result<Layout> {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(Layout::Gguf(path.to_path_buf()));
        }
        bail!("{}: expected a model folder or a .gguf file", path.display());
    }
    if !path.is_dir() {
        bail!("{}: no such model file or folder", path.display());
    }
    if path.join("config.json").is_file() {
        return Ok(Layout::Safetensors(path.to_path_buf()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(Layout::Gguf(one.clone())),
        [] => bail!("{}: no config.json and no .gguf file in this folder", path.display()),
        _ => bail!("{}: several .gguf files; name one of them", path.display()),
    }
}

fn safetensors_tensors(dir: &Path) -> Result<Vec<HostTensor>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
        return read_safetensors(&read(&single)?, &single.display().to_string());
    }
    if !index.is_file() {
        bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
    }
    let map = read_json(&index)?;
    let weight_map = map
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{}: no 'weight_map' object", index.display()))?;
    let mut shards: Vec<&str> = Vec::new();
    for (name, shard) in weight_map {
        let shard = shard
            .as_str()
            .ok_or_else(|| anyhow!("{}: shard of '{name}' is not a string", index.display()))?;
        // A shard is a file beside the index, never a path elsewhere.
        if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
            bail!("{}: shard name '{shard}' must be a plain file name", index.display());
        }
        if !shards.contains(&shard) {
            shards.push(shard);
        }
    }
    let mut out = Vec::new();
    for shard in shards {
        let p = dir.join(shard);
        out.extend(read_safetensors(&read(&p)?, &p.display().to_string())?);
    }
    Ok(out)
}

fn generation_defaults(v: &Value) -> GenerationDefaults {
    let f = |k: &str| v.get(k).and_then(Value::as_f64).map(|x| x as f32);
    // transformers samples only when do_sample is true; otherwise the defaults mean greedy.
    let sampling = v.get("do_sample").and_then(Value::as_bool).unwrap_or(false);
    GenerationDefaults {
        temperature: if sampling { f("temperature") } else { v.get("do_sample").map(|_| 0.0) },
        top_k: if sampling { v.get("top_k").and_then(Value::as_u64).map(|x| x as usize) } else { None },
        top_p: if sampling { f("top_p") } else { None },
        repetition_penalty: f("repetition_penalty"),
    }
}

/// Loads config, weights (f32, Keel's layout), tokenizer and generation defaults.
pub fn load(path: &Path) -> Result<LoadedModel> {
    let (dir, hf_config, tensors, gguf_tokenizer) = match find(path)? {
        Layout::Safetensors(dir) => {
            let cfg = read_json(&dir.join("config.json"))?;
            (dir.clone(), cfg, safetensors_tensors(&dir)?, None)
        }
        Layout::Gguf(file) => {
            let bytes = read(&file)?;
            let name = file.display().to_string();
            let (cfg, tensors) = gguf::to_hf(&bytes).map_err(|e| anyhow!("{name}: {e:#}"))?;
            let parsed = gguf::parse(&bytes).map_err(|e| anyhow!("{name}: {e:#}"))?;
            let tok = gguf::tokenizer_json(&parsed).map_err(|e| anyhow!("{name}: {e:#}"))?;
            (file.parent().unwrap_or(Path::new(".")).to_path_buf(), cfg, tensors, tok)
        }
    };
    let config_name = dir.join("config.json").display().to_string();
    let mut config = ModelConfig::from_hf(&hf_config, &config_name)?;
    let gen_path = dir.join("generation_config.json");
    let mut generation = GenerationDefaults::default();
    if gen_path.is_file() {
        let g = read_json(&gen_path)?;
        let eos = token_ids(g.get("eos_token_id"));
        if !eos.is_empty() {
            config.eos = eos;
        }
        generation = generation_defaults(&g);
    }
    let mut by_name = HashMap::new();
    for t in tensors {
        by_name.insert(t.name.clone(), t);
    }
    let weights = Weights::from_hf(&config, by_name, &dir.display().to_string())?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() {
        let text =
            String::from_utf8(read(&tok_path)?).map_err(|_| anyhow!("{}: not UTF-8", tok_path.display()))?;
        Tokenizer::from_json(&text, &tok_path.display().to_string())?
    } else if let Some(json) = gguf_tokenizer {
        Tokenizer::from_json(&json, &format!("{} (GGUF vocabulary)", path.display()))?
    } else {
        bail!("{}: missing tokenizer.json", tok_path.display());
    };
    if tokenizer.id_bound() > config.vocab {
        bail!(
            "{}: the tokenizer has ids up to {} but the embedding has only {} rows",
            tok_path.display(),
            tokenizer.id_bound() - 1,
            config.vocab
        );
    }
    Ok(LoadedModel { config, weights, tokenizer, generation, path: path.to_path_buf() })
}
