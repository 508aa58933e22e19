//! Finding and reading a model: a folder with config.json + safetensors (single or
//! sharded), a folder holding one `.gguf`, or a `.gguf` file; plus tokenizer.json and
//! generation_config.json.

use super::config::{token_ids, ModelConfig};
use super::gguf;
use super::layout::Weights;
use super::weights::HostTensor;
use crate::tokenize::Tokenizer;
use anyhow::{anyhow, bail, ensure, Context, Result};
use safetensors::tensor::TensorInfo;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Sampling defaults a model ships in generation_config.json.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Top-k.
    pub top_k: Option<usize>,
    /// Nucleus threshold.
    pub top_p: Option<f32>,
    /// Repetition penalty.
    pub repetition_penalty: Option<f32>,
}

/// A model besides its weights: config, tokenizer, generation defaults and where it is.
pub struct ModelInfo {
    /// Architecture and shapes.
    pub config: ModelConfig,
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// Sampling defaults from generation_config.json.
    pub generation: GenerationDefaults,
    /// Where it was loaded from.
    pub path: PathBuf,
}

/// A model on the host: its [`ModelInfo`] (read through `Deref`) and its weights.
pub struct LoadedModel {
    pub info: ModelInfo,
    /// Weights in Keel's fused layout.
    pub weights: Weights<HostTensor>,
}

impl std::ops::Deref for LoadedModel {
    type Target = ModelInfo;
    fn deref(&self) -> &ModelInfo {
        &self.info
    }
}

impl std::ops::DerefMut for LoadedModel {
    fn deref_mut(&mut self) -> &mut ModelInfo {
        &mut self.info
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn parse_json(bytes: &[u8], file: &str) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| anyhow!("{file}: not valid JSON ({e})"))
}

/// Reads config.json bytes; `file` names it in errors.
pub fn parse_config(bytes: &[u8], file: &str) -> Result<ModelConfig> {
    ModelConfig::from_hf(&parse_json(bytes, file)?, file)
}

/// Reads generation_config.json bytes: its eos ids (empty when it names none) and the
/// sampling defaults.
pub fn parse_generation_config(bytes: &[u8], file: &str) -> Result<(Vec<u32>, GenerationDefaults)> {
    let v = parse_json(bytes, file)?;
    Ok((token_ids(v.get("eos_token_id")), generation_defaults(&v)))
}

/// Reads model.safetensors.index.json bytes: the shard file names, each once, in order of
/// first mention. A shard is a file beside the index, never a path elsewhere.
pub fn parse_shard_index(bytes: &[u8], file: &str) -> Result<Vec<String>> {
    let map = parse_json(bytes, file)?;
    let weight_map = map
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{file}: no 'weight_map' object"))?;
    let (mut shards, mut seen) = (Vec::new(), std::collections::HashSet::new());
    for (name, shard) in weight_map {
        let shard = shard.as_str().ok_or_else(|| anyhow!("{file}: shard of '{name}' is not a string"))?;
        if shard.is_empty() || shard.contains(['/', '\\', ':']) || shard.starts_with('.') {
            bail!("{file}: shard name '{shard}' must be a plain file name");
        }
        if seen.insert(shard) {
            shards.push(shard.to_string());
        }
    }
    Ok(shards)
}

/// Checks a safetensors file's framing before the safetensors crate reads it, so that
/// errors name the tensor and what was expected: a header inside the file, data ranges
/// that match each tensor's dtype and shape, and ranges that tile the data exactly.
pub(super) fn check_safetensors(bytes: &[u8]) -> Result<()> {
    let len = bytes.len();
    let n = bytes
        .first_chunk::<8>()
        .map(|b| u64::from_le_bytes(*b))
        .ok_or_else(|| anyhow!("{len} bytes is too short for a safetensors header"))?;
    let data_start = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= len)
        .ok_or_else(|| anyhow!("header length {n} runs past the end of the file ({len} bytes)"))?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| anyhow!("the header is not a JSON object ({e})"))?;
    let mut ranges = Vec::new();
    for (name, v) in header.into_iter().filter(|(k, _)| k != "__metadata__") {
        let info: TensorInfo = serde_json::from_value(v).map_err(|e| anyhow!("tensor '{name}': {e}"))?;
        let (dtype, shape, (start, end)) = (info.dtype, &info.shape, info.data_offsets);
        let size = shape
            .iter()
            .try_fold(dtype.bitsize(), |bits, &d| bits.checked_mul(d))
            .map(|bits| bits.div_ceil(8))
            .ok_or_else(|| anyhow!("tensor '{name}': shape {shape:?} has too many elements"))?;
        ensure!(
            end.checked_sub(start) == Some(size),
            "tensor '{name}' ({dtype:?}, shape {shape:?}) needs {size} bytes but its data_offsets are [{start}, {end}]"
        );
        ranges.push((start, end, name));
    }
    ranges.sort();
    let data_len = len - data_start;
    let (mut at, mut prev) = (0, String::new());
    for (start, end, name) in ranges {
        ensure!(start >= at, "the data of tensors '{prev}' and '{name}' overlap");
        ensure!(start == at, "{} bytes before tensor '{name}' belong to no tensor", start - at);
        ensure!(
            end <= data_len,
            "tensor '{name}' data [{start}, {end}) runs past the end of the data ({data_len} bytes): the file is truncated"
        );
        (at, prev) = (end, name);
    }
    ensure!(at == data_len, "{} bytes after the last tensor belong to no tensor", data_len - at);
    Ok(())
}

/// Reads every tensor of a safetensors file as f32 with its name.
pub fn read_safetensors(bytes: &[u8], file: &str) -> Result<Vec<HostTensor>> {
    check_safetensors(bytes).map_err(|e| anyhow!("{file}: {e}"))?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("{file}: not a valid safetensors file ({e})"))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        // Old transformers saved the integer buffer `position_ids` (0, 1, 2, ...) with the
        // weights; it is no weight.
        if name.ends_with("position_ids") && view.dtype() == safetensors::Dtype::I64 {
            continue;
        }
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
            anyhow!("{file}: tensor '{name}' has dtype {:?}; Keel reads F32, F16 and BF16", view.dtype())
        })?;
        out.push(HostTensor::new(name, view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Little-endian F32, F16 or BF16 bytes as f32; None for other dtypes.
pub(super) fn to_f32(dtype: safetensors::Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        safetensors::Dtype::F32 => {
            data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        safetensors::Dtype::F16 => {
            data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        safetensors::Dtype::BF16 => {
            data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        _ => return None,
    })
}

/// One tensor of a safetensors file that arrived on its own (the browser fetches or slices
/// the file tensor by tensor): its header entry's dtype and shape, and its bytes.
pub fn streamed_tensor(
    file: &str,
    name: &str,
    dtype: &str,
    shape: Vec<usize>,
    data: &[u8],
) -> Result<HostTensor> {
    let unsupported = || anyhow!("{file}: tensor '{name}' has dtype {dtype}; Keel reads F32, F16 and BF16");
    let dt: safetensors::Dtype =
        serde_json::from_value(Value::String(dtype.into())).map_err(|_| unsupported())?;
    let want = shape
        .iter()
        .try_fold(dt.bitsize(), |bits, &d| bits.checked_mul(d))
        .map(|bits| bits.div_ceil(8))
        .ok_or_else(|| anyhow!("{file}: tensor '{name}': shape {shape:?} has too many elements"))?;
    ensure!(
        want == data.len(),
        "{file}: tensor '{name}' ({dtype}, shape {shape:?}) needs {want} bytes, got {}",
        data.len()
    );
    Ok(HostTensor::new(name, shape, to_f32(dt, data).ok_or_else(unsupported)?))
}

/// Where the model's files are.
pub(super) enum Layout {
    Gguf(PathBuf),
    Safetensors(PathBuf),
}

pub(super) fn find(path: &Path) -> Result<Layout> {
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

/// A model folder's files by name: `Ok(None)` when absent. On disk it reads the folder; in
/// the browser it looks in the files the page fetched or was given.
pub type ReadFile<'a> = dyn Fn(&str) -> Result<Option<Vec<u8>>> + 'a;

/// The tensors of a safetensors model, with the file that lists them (for errors).
/// `shown` names a file in messages.
fn safetensors_tensors(read: &ReadFile, shown: &dyn Fn(&str) -> String) -> Result<(Vec<HostTensor>, String)> {
    let (single, index) = ("model.safetensors", "model.safetensors.index.json");
    if let Some(bytes) = read(single)? {
        return Ok((read_safetensors(&bytes, &shown(single))?, shown(single)));
    }
    let Some(index_bytes) = read(index)? else {
        bail!("{}: no model.safetensors or model.safetensors.index.json", shown(""));
    };
    let mut out = Vec::new();
    for shard in parse_shard_index(&index_bytes, &shown(index))? {
        let bytes =
            read(&shard)?.ok_or_else(|| anyhow!("{}: cannot read (listed in {index})", shown(&shard)))?;
        out.extend(read_safetensors(&bytes, &shown(&shard))?);
    }
    Ok((out, shown(index)))
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
    let (dir, gguf) = match find(path)? {
        Layout::Safetensors(dir) => (dir, None),
        Layout::Gguf(file) => {
            let name = file.file_name().and_then(|n| n.to_str()).map(str::to_string);
            (file.parent().unwrap_or(Path::new(".")).to_path_buf(), name)
        }
    };
    let read_in_dir = |name: &str| -> Result<Option<Vec<u8>>> {
        let p = dir.join(name);
        if p.is_file() {
            read(&p).map(Some)
        } else {
            Ok(None)
        }
    };
    let shown = |name: &str| dir.join(name).display().to_string();
    let mut model = load_from(&read_in_dir, &shown, gguf.as_deref())?;
    model.path = path.to_path_buf();
    Ok(model)
}

/// Loads a model from its files given by name (the browser's file picker or fetches):
/// config.json + safetensors, or one `.gguf`, with tokenizer.json and generation_config.json.
pub fn load_files(files: &HashMap<String, Vec<u8>>) -> Result<LoadedModel> {
    let ggufs: Vec<&String> = files.keys().filter(|n| n.ends_with(".gguf")).collect();
    let gguf = match (files.contains_key("config.json"), ggufs.as_slice()) {
        (true, _) => None,
        (false, [one]) => Some(one.as_str()),
        (false, []) => {
            bail!("no config.json and no .gguf file among {:?}: not a model", sorted(files.keys()))
        }
        (false, _) => bail!("several .gguf files ({:?}); give one", sorted(ggufs.into_iter())),
    };
    let read = |name: &str| Ok(files.get(name).cloned());
    load_from(&read, &|name: &str| name.to_string(), gguf)
}

/// The config (with generation_config.json's EOS) and tokenizer of a safetensors model whose
/// weights were streamed to the GPU instead (src/model/stream.rs), from its small files.
pub fn load_config_and_tokenizer(files: &HashMap<String, Vec<u8>>) -> Result<(ModelConfig, Tokenizer)> {
    let read = |name: &str| Ok(files.get(name).cloned());
    let shown = |name: &str| name.to_string();
    let bytes = read("config.json")?.ok_or_else(|| anyhow!("config.json: not given"))?;
    let hf_config = parse_json(&bytes, "config.json")?;
    let (config, _, tokenizer) = config_and_tokenizer(&read, &shown, &hf_config, "config.json", None, "")?;
    Ok((config, tokenizer))
}

/// The config (with generation_config.json's EOS) and tokenizer of a GGUF model whose
/// weights were streamed to the GPU instead: from its header `file`'s metadata, with a
/// tokenizer.json among `files` winning over the GGUF's vocabulary, as on disk.
pub fn gguf_config_and_tokenizer(
    files: &HashMap<String, Vec<u8>>,
    file: &gguf::GgufFile,
    name: &str,
) -> Result<(ModelConfig, Tokenizer)> {
    let read = |n: &str| Ok(files.get(n).cloned());
    let shown = |n: &str| n.to_string();
    let hf_config = gguf::hf_config(file).map_err(|e| anyhow!("{name}: {e:#}"))?;
    let tok = gguf::tokenizer_json(file).map_err(|e| anyhow!("{name}: {e:#}"))?;
    let (config, _, tokenizer) = config_and_tokenizer(&read, &shown, &hf_config, name, tok, name)?;
    Ok((config, tokenizer))
}

fn sorted<'a>(names: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut v: Vec<_> = names.collect();
    v.sort();
    v
}

/// The loader proper: `gguf` names the weights file of a GGUF model, else the folder holds
/// config.json and safetensors.
fn load_from(read: &ReadFile, shown: &dyn Fn(&str) -> String, gguf: Option<&str>) -> Result<LoadedModel> {
    let (hf_config, tensors, weights_file, gguf_tokenizer, config_name) = match gguf {
        None => {
            let bytes =
                read("config.json")?.ok_or_else(|| anyhow!("{}: cannot read", shown("config.json")))?;
            let cfg = parse_json(&bytes, &shown("config.json"))?;
            let (tensors, file) = safetensors_tensors(read, shown)?;
            (cfg, tensors, file, None, shown("config.json"))
        }
        Some(file) => {
            let name = shown(file);
            let bytes = read(file)?.ok_or_else(|| anyhow!("{name}: cannot read"))?;
            let (cfg, tensors) = gguf::to_hf(&bytes).map_err(|e| anyhow!("{name}: {e:#}"))?;
            let parsed = gguf::parse(&bytes).map_err(|e| anyhow!("{name}: {e:#}"))?;
            let tok = gguf::tokenizer_json(&parsed).map_err(|e| anyhow!("{name}: {e:#}"))?;
            // A GGUF's config comes from its metadata.
            (cfg, tensors, name.clone(), tok, name)
        }
    };
    let (config, generation, tokenizer) =
        config_and_tokenizer(read, shown, &hf_config, &config_name, gguf_tokenizer, &weights_file)?;
    let mut by_name = HashMap::new();
    for t in tensors {
        by_name.insert(t.name.clone(), t);
    }
    let weights = Weights::from_hf(&config, by_name, &weights_file)?;
    let info = ModelInfo { config, tokenizer, generation, path: PathBuf::from(shown("")) };
    Ok(LoadedModel { info, weights })
}

/// The config, sampling defaults and tokenizer (tokenizer.json, else a GGUF's vocabulary).
pub(super) fn config_and_tokenizer(
    read: &ReadFile,
    shown: &dyn Fn(&str) -> String,
    hf_config: &Value,
    config_name: &str,
    gguf_tokenizer: Option<String>,
    weights_file: &str,
) -> Result<(ModelConfig, GenerationDefaults, Tokenizer)> {
    let mut config = ModelConfig::from_hf(hf_config, config_name)?;
    let mut generation = GenerationDefaults::default();
    if let Some(bytes) = read("generation_config.json")? {
        let eos;
        (eos, generation) = parse_generation_config(&bytes, &shown("generation_config.json"))?;
        if !eos.is_empty() {
            config.eos = eos;
        }
    }
    let (tok_json, tok_name) = if let Some(bytes) = read("tokenizer.json")? {
        let text = String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8", shown("tokenizer.json")))?;
        (text, shown("tokenizer.json"))
    } else if let Some(json) = gguf_tokenizer {
        (json, format!("{weights_file} (GGUF vocabulary)"))
    } else {
        bail!("{}: not found (Keel needs the model's tokenizer.json)", shown("tokenizer.json"));
    };
    let tokenizer = Tokenizer::from_json(&tok_json, &tok_name)?;
    if tokenizer.id_bound() > config.vocab {
        bail!(
            "{tok_name}: the tokenizer has ids up to {} but the embedding has only {} rows",
            tokenizer.id_bound() - 1,
            config.vocab
        );
    }
    Ok((config, generation, tokenizer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{tensor::TensorView, Dtype};

    /// The browser's files by name load the same model as the folder.
    #[test]
    fn files_load_like_the_folder() {
        let Some(src) = crate::testing::model("stories260k") else { return };
        let folder = load(&src).unwrap();
        let mut files: HashMap<String, Vec<u8>> =
            ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors"]
                .iter()
                .map(|f| (f.to_string(), std::fs::read(src.join(f)).unwrap()))
                .collect();
        let from_files = load_files(&files).unwrap();
        assert_eq!(from_files.config.eos, folder.config.eos, "generation_config.json's EOS is read");
        let (config, _) = load_config_and_tokenizer(&files).unwrap();
        assert_eq!(config, folder.config);
        let (a, b) = (folder.weights.named(), from_files.weights.named());
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!((na, &ta.shape, ta.values()), (nb, &tb.shape, tb.values()));
        }
        files.remove("config.json");
        let err = load_files(&files).err().unwrap().to_string();
        assert!(err.contains("no config.json and no .gguf") && err.contains("not a model"), "{err}");
    }

    #[test]
    fn streamed_tensors_convert_and_check_their_bytes() {
        let halves: Vec<u8> =
            [1.5f32, -2.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        assert_eq!(*streamed_tensor("f", "t", "F16", vec![2], &halves).unwrap().values(), [1.5, -2.0]);
        let short = streamed_tensor("f", "t", "F16", vec![3], &halves).err().unwrap().to_string();
        assert!(short.contains("f: tensor 't' (F16, shape [3]) needs 6 bytes, got 4"), "{short}");
        let int = streamed_tensor("f", "t", "I64", vec![1], &[0; 8]).err().unwrap().to_string();
        assert!(int.contains("dtype I64; Keel reads F32, F16 and BF16"), "{int}");
    }

    /// stories260k split into two shards with an index, its weights stored as BF16, loads to
    /// the BF16-rounded weights of the single-file model.
    #[test]
    fn sharded_bf16_safetensors_load_like_the_single_file() {
        let Some(src) = crate::testing::model("stories260k") else { return };
        let single = load(&src).unwrap();
        let dir = std::env::temp_dir().join(format!("keel-sharded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "tokenizer.json", "generation_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let tensors =
            read_safetensors(&std::fs::read(src.join("model.safetensors")).unwrap(), "src").unwrap();
        let bf16 = |t: &HostTensor| -> Vec<u8> {
            t.values().iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()
        };
        let mut weight_map = serde_json::Map::new();
        let (first, second) = tensors.split_at(tensors.len() / 2);
        for (shard, part) in
            [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)]
        {
            let bytes: Vec<Vec<u8>> = part.iter().map(bf16).collect();
            let views: Vec<(String, TensorView)> = part
                .iter()
                .zip(&bytes)
                .map(|(t, b)| (t.name.clone(), TensorView::new(Dtype::BF16, t.shape.clone(), b).unwrap()))
                .collect();
            std::fs::write(dir.join(shard), safetensors::serialize(views, None).unwrap()).unwrap();
            for t in part {
                weight_map.insert(t.name.clone(), shard.into());
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let sharded = load(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let sharded = sharded.unwrap();
        let round =
            |t: &HostTensor| t.values().iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect::<Vec<_>>();
        let a = single.weights.try_map(|_, t| Ok(round(t))).unwrap();
        let b = sharded.weights.try_map(|_, t| Ok(t.values().into_owned())).unwrap();
        assert_eq!(a.embed, b.embed);
        for (x, y) in a.blocks.iter().zip(&b.blocks) {
            assert_eq!(x.qkv, y.qkv);
            assert_eq!(x.up, y.up);
            assert_eq!(x.down, y.down);
            assert_eq!(x.mlp_norm, y.mlp_norm);
        }
        assert_eq!(a.final_norm, b.final_norm);
    }
}
