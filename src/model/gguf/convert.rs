//! A parsed GGUF in Keel's terms: the Hugging Face config.json from its metadata, and each
//! tensor with its Hugging Face name and shape, kept packed in a GPU weight format where the
//! matrix kernels read its ggml type, else decoded to f32 (llama's q/k rows un-permuted).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, ensure, Result};
use half::f16;
use serde_json::{json, Value};

use super::parse::{
    parse, tensor_data, GgufFile, GgufTensorInfo, GgufValue, GGML_BF16, GGML_F16, GGML_F32, GGML_Q4_0,
    GGML_Q4_1, GGML_Q4_K, GGML_Q5_K, GGML_Q6_K, GGML_Q8_0,
};
use crate::gpu::wfmt::{self, WeightFormat};
use crate::model::layout::Reorder;
use crate::model::weights::HostTensor;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes a tensor's bytes `data` (as [`tensor_data`] checked them) to f32, in row-major
/// order of its Hugging Face shape (`dims` reversed), which is the order they are stored in.
pub(super) fn decode(info: &GgufTensorInfo, data: &[u8]) -> Result<Vec<f32>> {
    let out = match info.ggml_type {
        GGML_F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        GGML_F16 => data.chunks_exact(2).map(|c| f16_at(c, 0)).collect(),
        // bf16 is the top half of an f32.
        GGML_BF16 => data
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        // The block formats, through the GPU layout the matrix kernels read.
        t => match packed_format(t) {
            Some(fmt) => wfmt::dequantize(fmt, &wfmt::from_ggml(fmt, data)),
            // tensor_data has already rejected every other type.
            None => bail!("GGUF tensor '{}': ggml type {t} is not supported", info.name),
        },
    };
    Ok(out)
}

/// The supported architectures: (GGUF name, HF class, whether llama.cpp's converter permuted
/// the q/k rows: it does for the models it ropes in pairs of adjacent elements).
const ARCHITECTURES: [(&str, &str, bool); 7] = [
    ("llama", "LlamaForCausalLM", true),
    ("qwen2", "Qwen2ForCausalLM", false),
    ("qwen3", "Qwen3ForCausalLM", false),
    ("smollm3", "SmolLM3ForCausalLM", true),
    ("phi3", "Phi3ForCausalLM", false),
    ("gptneox", "GPTNeoXForCausalLM", false),
    ("gemma3", "Gemma3ForCausalLM", false),
];

/// llama.cpp's name of the per-frequency RoPE divisors its converter bakes Llama 3's
/// `rope_scaling` into.
pub const ROPE_FREQS: &str = "rope_freqs.weight";
/// llama.cpp's names of Phi-3's longrope factors (`short_factor`, `long_factor`).
const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";
const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";

/// The tensors of per-frequency RoPE factors, which go into the config (so they need the
/// file's data), not into the weights.
pub fn is_rope_factors(name: &str) -> bool {
    [ROPE_FREQS, ROPE_FACTORS_SHORT, ROPE_FACTORS_LONG].contains(&name)
}

/// The values of a GGUF's RoPE factor tensors, where it has them.
#[derive(Default)]
struct RopeFactors {
    /// Llama 3's divisors (`rope_freqs.weight`).
    freqs: Option<Vec<f32>>,
    /// Phi-3's longrope (short, long) factors.
    longrope: Option<(Vec<f32>, Vec<f32>)>,
}

/// Converts a GGUF of a supported architecture into a Hugging Face config.json and tensors
/// with HF names and shapes (see [`hf_tensor`]); a Llama 3 `rope_freqs.weight` goes into the
/// config.
pub fn to_hf(bytes: &[u8]) -> Result<(Value, Vec<HostTensor>)> {
    let file = parse(bytes)?;
    let config = whole_file_config(&file, bytes)?;
    let tensors = file
        .tensors
        .iter()
        .filter(|info| !is_rope_factors(&info.name))
        .map(|info| hf_tensor(&file, info, tensor_data(&file, bytes, info)?))
        .collect::<Result<_>>()?;
    Ok((config, tensors))
}

/// The architecture's (GGUF name, HF class, whether llama.cpp permuted the q/k rows).
fn architecture(file: &GgufFile) -> Result<(&'static str, &'static str, bool)> {
    let arch = file
        .str("general.architecture")?
        .ok_or_else(|| anyhow!("GGUF metadata 'general.architecture' is missing"))?;
    let names: Vec<&str> = ARCHITECTURES.iter().map(|a| a.0).collect();
    ARCHITECTURES
        .iter()
        .copied()
        .find(|(name, _, _)| *name == arch)
        .ok_or_else(|| anyhow!("GGUF architecture '{arch}' is not supported ({} are)", names.join(", ")))
}

/// (layers, heads, kv heads) from the metadata.
fn layer_and_head_counts(file: &GgufFile) -> Result<(u64, u64, u64)> {
    let arch = file.str("general.architecture")?.unwrap_or_default();
    let key = |k: &str| format!("{arch}.{k}");
    let layers = file.required_uint(&key("block_count"))?;
    let heads = file.required_uint(&key("attention.head_count"))?;
    let kv_heads = file.uint(&key("attention.head_count_kv"))?.unwrap_or(heads);
    ensure!(
        heads > 0 && kv_heads > 0,
        "GGUF metadata: head counts must be positive ({heads} heads, {kv_heads} kv heads)"
    );
    Ok((layers, heads, kv_heads))
}

/// The Hugging Face config.json of a parsed GGUF (from its metadata and tensor table),
/// after checking every tensor has a Hugging Face name: a file with a stray tensor is
/// refused before any tensor is converted. A file with RoPE factors (Llama 3's
/// `rope_freqs.weight`, Phi-3's `rope_factors_*`) needs their data: such files are read whole
/// ([`to_hf`]).
pub fn hf_config(file: &GgufFile) -> Result<Value> {
    if let Some(info) = file.tensors.iter().find(|t| is_rope_factors(&t.name)) {
        bail!(
            "GGUF tensor '{}' (rope scaling) is read with the whole file, not from the header alone",
            info.name
        );
    }
    config_of(file, RopeFactors::default())
}

/// The Hugging Face config.json of a GGUF whose bytes are all at hand (`bytes`): [`hf_config`],
/// with its RoPE factor tensors read.
pub fn whole_file_config(file: &GgufFile, bytes: &[u8]) -> Result<Value> {
    let read = |name: &str| match file.tensor(name) {
        Some(info) => decode(info, tensor_data(file, bytes, info)?).map(Some),
        None => Ok(None),
    };
    let longrope = match (read(ROPE_FACTORS_SHORT)?, read(ROPE_FACTORS_LONG)?) {
        (Some(short), Some(long)) => Some((short, long)),
        (None, None) => None,
        _ => bail!("GGUF: '{ROPE_FACTORS_SHORT}' and '{ROPE_FACTORS_LONG}' (longrope) come together, this file has one"),
    };
    config_of(file, RopeFactors { freqs: read(ROPE_FREQS)?, longrope })
}

/// [`hf_config`], with the values of the file's RoPE factor tensors.
fn config_of(file: &GgufFile, rope_factors: RopeFactors) -> Result<Value> {
    let (arch, hf_class, _) = architecture(file)?;
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = file.required_uint(&key("embedding_length"))?;
    let (layers, heads, kv_heads) = layer_and_head_counts(file)?;
    let head_dim = match file.uint(&key("attention.key_length"))? {
        Some(d) => d,
        None => {
            ensure!(
                hidden.is_multiple_of(heads),
                "GGUF metadata: hidden size {hidden} is not a multiple of {heads} heads"
            );
            hidden / heads
        }
    };
    let eps_key =
        if arch == "gptneox" { "attention.layer_norm_epsilon" } else { "attention.layer_norm_rms_epsilon" };
    let eps =
        file.float(&key(eps_key))?.ok_or_else(|| anyhow!("GGUF metadata '{arch}.{eps_key}' is missing"))?;
    let vocab_size = match file.tensor("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => t.dims[1],
        _ => file
            .str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("GGUF: no 2-D token_embd.weight nor tokenizer.ggml.tokens"))?
            .len() as u64,
    };
    let context = file.required_uint(&key("context_length"))?;
    let theta = file.float(&key("rope.freq_base"))?;
    let mut config = json!({
        "architectures": [hf_class],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": file.required_uint(&key("feed_forward_length"))?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": eps,
        "rope_theta": theta.unwrap_or(10000.0),
        "max_position_embeddings": context,
        "vocab_size": vocab_size,
        "tie_word_embeddings": file.tensor("output.weight").is_none(),
        "bos_token_id": file.uint("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": file.uint("tokenizer.ggml.eos_token_id")?,
        "hidden_act": "silu",
    });
    // Partial rotary (Phi-3, GPT-NeoX): the rotated dimensions of a head.
    if let Some(dims) = file.uint(&key("rope.dimension_count"))?.filter(|&d| d != head_dim) {
        config["partial_rotary_factor"] = json!(dims as f64 / head_dim as f64);
    }
    match file.str(&key("rope.scaling.type"))? {
        None | Some("none") => {}
        Some("linear") => {
            let factor = file.float(&key("rope.scaling.factor"))?.unwrap_or(1.0);
            config["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
        }
        Some(other) => {
            bail!("GGUF metadata '{arch}.rope.scaling.type' is '{other}': Keel reads none and linear")
        }
    }
    if let Some((short, long)) = rope_factors.longrope {
        // Phi-3's longrope as llama.cpp's converter writes it: the factors as tensors, the
        // original context and the attention factor as metadata.
        let original = file.required_uint(&key("rope.scaling.original_context_length"))?;
        let mut scaling = json!({"rope_type": "longrope", "short_factor": short, "long_factor": long});
        if let Some(factor) = file.float(&key("rope.scaling.attn_factor"))? {
            scaling["attention_factor"] = json!(factor);
        }
        config["rope_scaling"] = scaling;
        config["original_max_position_embeddings"] = json!(original);
    }
    if let Some(divisors) = rope_factors.freqs {
        // Llama 3's scaling as llama.cpp applies it: each inverse frequency divided by its
        // factor, which transformers' longrope does within its original context.
        config["rope_scaling"] = json!({"rope_type": "longrope", "short_factor": divisors, "long_factor": divisors,
            "attention_factor": 1.0});
        config["original_max_position_embeddings"] = json!(context);
    }
    match arch {
        "gptneox" => {
            config["layer_norm_eps"] = json!(eps);
            config["hidden_act"] = json!("gelu");
            config["use_parallel_residual"] =
                json!(file.bool(&key("use_parallel_residual"))?.unwrap_or(true));
            config["attention_bias"] = json!(file.tensor("blk.0.attn_qkv.bias").is_some());
        }
        // llama.cpp runs every fourth block of SmolLM3 without RoPE (no metadata says so).
        "smollm3" => {
            config["no_rope_layers"] =
                json!((0..layers).map(|l| u64::from((l + 1) % 4 != 0)).collect::<Vec<_>>())
        }
        "gemma3" => gemma3_config(file, &mut config, (layers, hidden / heads, head_dim))?,
        _ => {}
    }
    for info in file.tensors.iter().filter(|t| !is_rope_factors(&t.name)) {
        hf_tensor_name(arch, &info.name, layers, heads, kv_heads)?;
    }
    Ok(config)
}

/// Gemma 3's settings as llama.cpp reads them: sliding windows on every block but each sixth
/// (or `attention.sliding_window_pattern`: a period, or per block whether it slides), their
/// RoPE base 10000 (or `rope.freq_base_swa`), the attention scaled by the head size (the
/// 62-block 27B: by hidden size / heads).
fn gemma3_config(
    file: &GgufFile,
    config: &mut Value,
    (layers, width, head_dim): (u64, u64, u64),
) -> Result<()> {
    let sliding: Vec<bool> = match file.metadata.get("gemma3.attention.sliding_window_pattern") {
        Some(GgufValue::Array(flags)) => {
            ensure!(
                flags.len() as u64 == layers,
                "GGUF metadata 'gemma3.attention.sliding_window_pattern' has {} entries for {layers} blocks",
                flags.len()
            );
            flags.iter().map(|f| match f {
                GgufValue::Bool(b) => Ok(*b),
                other => bail!("GGUF metadata 'gemma3.attention.sliding_window_pattern': expected booleans, found {other:?}"),
            }).collect::<Result<_>>()?
        }
        _ => {
            let period = file.uint("gemma3.attention.sliding_window_pattern")?.unwrap_or(6).max(1);
            (0..layers).map(|l| (l + 1) % period != 0).collect()
        }
    };
    let types: Vec<&str> =
        sliding.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect();
    config["layer_types"] = json!(types);
    config["sliding_window"] = json!(file.required_uint("gemma3.attention.sliding_window")?);
    config["rope_theta"] = json!(file.float("gemma3.rope.freq_base")?.unwrap_or(1e6));
    config["rope_local_base_freq"] = json!(file.float("gemma3.rope.freq_base_swa")?.unwrap_or(1e4));
    config["query_pre_attn_scalar"] = json!(if layers == 62 { width } else { head_dim });
    config["hidden_activation"] = json!("gelu_pytorch_tanh");
    for (key, hf) in [
        ("gemma3.final_logit_softcapping", "final_logit_softcapping"),
        ("gemma3.attn_logit_softcapping", "attn_logit_softcapping"),
    ] {
        config[hf] = json!(file.float(key)?);
    }
    Ok(())
}

/// One tensor of `file`, from its bytes `data`, with its Hugging Face name and shape: a 2-D
/// F16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K or Q6_K tensor stays packed (GPU layout: the GPU reads it without
/// dequantizing, and the host dequantizes only when f32 values are asked for), any other is
/// decoded to f32. What llama.cpp's converter did to the values is undone (`Undo`; q/k
/// rows are whole blocks: ggml blocks run along rows, so un-permuting works on packed rows too).
pub fn hf_tensor(file: &GgufFile, info: &GgufTensorInfo, data: &[u8]) -> Result<HostTensor> {
    let (arch, _, permuted) = architecture(file)?;
    let (layers, heads, kv_heads) = layer_and_head_counts(file)?;
    let (hf, undo) = hf_tensor_name(arch, &info.name, layers, heads, kv_heads)?;
    let shape = hf_shape(info)?;
    let rows = shape.first().copied().unwrap_or(1);
    let fail = |e: anyhow::Error| anyhow!("GGUF tensor '{}': {e}", info.name);
    // The head count of llama's q/k rows to un-permute.
    let unpermute = match undo {
        Undo::Permutation(n) if permuted => Some(usize::try_from(n).map_err(|e| fail(e.into()))?),
        _ => None,
    };
    let packed = packed_format(info.ggml_type).filter(|f| shape.len() == 2 && f.fits(shape[1]));
    let t = match packed.filter(|_| matches!(undo, Undo::Nothing | Undo::Permutation(_))) {
        Some(fmt) => {
            let mut words = wfmt::from_ggml(fmt, data);
            if let Some(n) = unpermute {
                words = unpermute_rows(&words, rows, n).map_err(fail)?;
            }
            HostTensor::packed(hf, shape, fmt, words)
        }
        None => {
            let mut values = decode(info, data)?;
            if let Some(n) = unpermute {
                values = unpermute_rows(&values, rows, n).map_err(fail)?;
            }
            match undo {
                Undo::UnitOffset => values.iter_mut().for_each(|v| *v -= 1.0),
                Undo::HeadsInterleaved => {
                    let heads = usize::try_from(heads).unwrap_or(0);
                    ensure!(
                        heads > 0 && rows.is_multiple_of(3 * heads),
                        fail(anyhow!("{rows} rows are not q, k and v of {heads} heads"))
                    );
                    let t = HostTensor::new(hf.clone(), shape.clone(), values);
                    values =
                        Reorder::HeadsInterleaved { heads, dim: rows / (3 * heads) }.undo(t).into_values();
                }
                Undo::Nothing | Undo::Permutation(_) => {}
            }
            HostTensor::new(hf, shape, values)
        }
    };
    Ok(t)
}

/// The tensor's Hugging Face shape (ggml's dimensions reversed).
fn hf_shape(info: &GgufTensorInfo) -> Result<Vec<usize>> {
    info.dims
        .iter()
        .rev()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow!("GGUF tensor '{}': a dimension does not fit in memory", info.name))
}

/// The Hugging Face name and shape [`hf_tensor`] gives a tensor, from the header alone.
pub fn hf_name_and_shape(file: &GgufFile, info: &GgufTensorInfo) -> Result<(String, Vec<usize>)> {
    let (arch, _, _) = architecture(file)?;
    let (layers, heads, kv_heads) = layer_and_head_counts(file)?;
    Ok((hf_tensor_name(arch, &info.name, layers, heads, kv_heads)?.0, hf_shape(info)?))
}

/// The GPU format that holds a ggml type as it is stored.
fn packed_format(ggml_type: u32) -> Option<WeightFormat> {
    match ggml_type {
        GGML_F16 => Some(WeightFormat::F16),
        GGML_Q8_0 => Some(WeightFormat::Q8_0),
        GGML_Q4_0 => Some(WeightFormat::Q4_0),
        GGML_Q4_1 => Some(WeightFormat::Q4_1),
        GGML_Q4_K => Some(WeightFormat::Q4_K),
        GGML_Q5_K => Some(WeightFormat::Q5_K),
        GGML_Q6_K => Some(WeightFormat::Q6_K),
        _ => None,
    }
}

/// The format [`hf_tensor`] gives each tensor, by Hugging Face name (known from the header
/// alone, before any tensor data).
pub fn hf_formats(file: &GgufFile) -> Result<BTreeMap<String, WeightFormat>> {
    let (arch, _, _) = architecture(file)?;
    let (layers, heads, kv_heads) = layer_and_head_counts(file)?;
    let mut out = BTreeMap::new();
    for info in &file.tensors {
        let (hf, undo) = hf_tensor_name(arch, &info.name, layers, heads, kv_heads)?;
        let cols = (info.dims.len() == 2).then(|| info.dims[0] as usize);
        let fmt = packed_format(info.ggml_type).filter(|f| cols.is_some_and(|c| f.fits(c)));
        let fmt = fmt.filter(|_| matches!(undo, Undo::Nothing | Undo::Permutation(_)));
        out.insert(hf, fmt.unwrap_or(WeightFormat::F32));
    }
    Ok(out)
}

/// What llama.cpp's converter did to a tensor's values, undone on the way to its Hugging Face form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Undo {
    Nothing,
    /// The q/k row permutation over this many heads (of the architectures it permutes).
    Permutation(u64),
    /// Gemma's norm weights, stored as `1 + w`.
    UnitOffset,
    /// GPT-NeoX's fused QKV, stored as `[q; k; v]` rows: back to q, k, v interleaved per head.
    HeadsInterleaved,
}

/// Maps a GGUF tensor name of architecture `arch` to its HF name, and what to undo.
pub(super) fn hf_tensor_name(
    arch: &str,
    name: &str,
    layers: u64,
    heads: u64,
    kv_heads: u64,
) -> Result<(String, Undo)> {
    let (neox, gemma) = (arch == "gptneox", arch == "gemma3");
    let norm = if gemma { Undo::UnitOffset } else { Undo::Nothing };
    let fixed = match (name, neox) {
        ("token_embd.weight", false) => Some(("model.embed_tokens.weight", Undo::Nothing)),
        ("output_norm.weight", false) => Some(("model.norm.weight", norm)),
        ("output.weight", false) => Some(("lm_head.weight", Undo::Nothing)),
        ("token_embd.weight", true) => Some(("gpt_neox.embed_in.weight", Undo::Nothing)),
        ("output_norm.weight", true) => Some(("gpt_neox.final_layer_norm.weight", Undo::Nothing)),
        ("output_norm.bias", true) => Some(("gpt_neox.final_layer_norm.bias", Undo::Nothing)),
        ("output.weight", true) => Some(("embed_out.weight", Undo::Nothing)),
        _ => None,
    };
    if let Some((hf, undo)) = fixed {
        return Ok((hf.to_string(), undo));
    }
    let unknown = || anyhow!("GGUF tensor '{name}' has no Hugging Face equivalent for architecture {arch}");
    let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: u64 = layer.parse().map_err(|_| unknown())?;
    ensure!(layer < layers, "GGUF tensor '{name}': layer {layer} but the model has {layers} layers");
    let (part, suffix) = rest.split_once('.').ok_or_else(unknown)?;
    if neox {
        let hf_part = match part {
            "attn_norm" => "input_layernorm",
            "attn_qkv" => "attention.query_key_value",
            "attn_output" => "attention.dense",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_up" => "mlp.dense_h_to_4h",
            "ffn_down" => "mlp.dense_4h_to_h",
            _ => return Err(unknown()),
        };
        ensure!(matches!(suffix, "weight" | "bias"), unknown());
        let undo = if part == "attn_qkv" { Undo::HeadsInterleaved } else { Undo::Nothing };
        return Ok((format!("gpt_neox.layers.{layer}.{hf_part}.{suffix}"), undo));
    }
    let (hf_part, undo) = match (arch, part, suffix) {
        (_, "attn_norm", "weight") => ("input_layernorm", norm),
        ("gemma3", "ffn_norm", "weight") => ("pre_feedforward_layernorm", norm),
        ("gemma3", "post_attention_norm", "weight") => ("post_attention_layernorm", norm),
        ("gemma3", "post_ffw_norm", "weight") => ("post_feedforward_layernorm", norm),
        (_, "ffn_norm", "weight") => ("post_attention_layernorm", Undo::Nothing),
        ("qwen3" | "gemma3", "attn_q_norm", "weight") => ("self_attn.q_norm", norm),
        ("qwen3" | "gemma3", "attn_k_norm", "weight") => ("self_attn.k_norm", norm),
        ("phi3", "attn_qkv", "weight") => ("self_attn.qkv_proj", Undo::Nothing),
        ("phi3", "ffn_up", "weight") => ("mlp.gate_up_proj", Undo::Nothing),
        (_, "attn_q", "weight" | "bias") => ("self_attn.q_proj", Undo::Permutation(heads)),
        (_, "attn_k", "weight" | "bias") => ("self_attn.k_proj", Undo::Permutation(kv_heads)),
        (_, "attn_v", "weight" | "bias") => ("self_attn.v_proj", Undo::Nothing),
        (_, "attn_output", "weight") => ("self_attn.o_proj", Undo::Nothing),
        (_, "ffn_gate", "weight") => ("mlp.gate_proj", Undo::Nothing),
        (_, "ffn_up", "weight") => ("mlp.up_proj", Undo::Nothing),
        (_, "ffn_down", "weight") => ("mlp.down_proj", Undo::Nothing),
        _ => return Err(unknown()),
    };
    Ok((format!("model.layers.{layer}.{hf_part}.{suffix}"), undo))
}

/// Undoes the row permutation llama.cpp's converter applies to q and k projections
/// (weights [rows, cols] or biases [rows]):
///
/// ```text
/// w.reshape(n_head, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(w.shape)
/// ```
///
/// HF's rotate_half pairs element i of a head with element i + head_dim/2; llama.cpp's
/// RoPE pairs adjacent elements 2i and 2i+1. The forward permutation therefore moves HF
/// row (head h, half s, index i) = h*head_dim + s*head_dim/2 + i to GGUF row
/// h*head_dim + 2i + s. The inverse gathers, for each HF row, that GGUF row: within a
/// head, the even GGUF rows become the first half and the odd rows the second half.
fn unpermute_rows<T: Copy>(data: &[T], rows: usize, n_heads: usize) -> Result<Vec<T>> {
    ensure!(
        n_heads > 0 && rows.is_multiple_of(2 * n_heads),
        "{rows} rows do not split into {n_heads} heads of even size"
    );
    ensure!(
        !data.is_empty() && data.len().is_multiple_of(rows),
        "{} values do not form {rows} rows",
        data.len()
    );
    let cols = data.len() / rows;
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for hf_row in 0..rows {
        let (h, within) = (hf_row / head_dim, hf_row % head_dim);
        let (s, i) = (within / half, within % half);
        let src = h * head_dim + 2 * i + s;
        out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::test_files::{
        data_start, dequantize, f16_le, fixture, fixture_dir, info, k_quant_model, tiny_model,
        tiny_model_builder, Builder,
    };

    #[test]
    fn dequantizes_fixture_q8_0_q4_1_and_f32() {
        let Some(bytes) = fixture() else { return };
        let file = parse(bytes).unwrap();

        // Q8_0 token embedding [49152, 576]: 18 blocks of 34 bytes per row.
        let embd = dequantize(&file, bytes, info(&file, "token_embd.weight")).unwrap();
        assert_eq!(embd.len(), 49152 * 576);
        let start = data_start(&file, "token_embd.weight");
        for (row, col) in [(0, 0), (1, 31), (1234, 32), (1234, 575), (49151, 575)] {
            let block = start + (row * 18 + col / 32) * 34;
            let d = f16_le(&bytes[block..]);
            let q = bytes[block + 2 + col % 32] as i8;
            assert_eq!(embd[row * 576 + col], d * q as f32, "embd[{row}][{col}]");
        }
        assert!(embd.iter().any(|&x| x != 0.0));

        // Q4_1 q projection [576, 576]: 18 blocks of 20 bytes per row.
        let name = "blk.0.attn_q.weight";
        let q = dequantize(&file, bytes, info(&file, name)).unwrap();
        assert_eq!(q.len(), 576 * 576);
        let start = data_start(&file, name);
        for (row, col) in [(0, 0), (0, 15), (0, 16), (7, 31), (300, 47), (575, 575)] {
            let block = start + (row * 18 + col / 32) * 20;
            let (d, m) = (f16_le(&bytes[block..]), f16_le(&bytes[block + 2..]));
            let j = col % 32;
            let byte = bytes[block + 4 + j % 16];
            let nibble = if j < 16 { byte & 0xF } else { byte >> 4 };
            assert_eq!(q[row * 576 + col], d * nibble as f32 + m, "q[{row}][{col}]");
        }

        let norm = dequantize(&file, bytes, info(&file, "output_norm.weight")).unwrap();
        let start = data_start(&file, "output_norm.weight");
        let first = f32::from_le_bytes(bytes[start..start + 4].try_into().unwrap());
        assert_eq!((norm.len(), norm[0]), (576, first));
    }

    /// Loaded GGUF weights hold their packed blocks only, no f32 copy (the host holds less
    /// than the file); their values, dequantized on demand, are the file's, rows concatenated
    /// as in Keel's fused QKV and gate|up. Norms stay f32.
    #[test]
    fn fixture_weights_stay_packed_without_f32() {
        let Some(bytes) = fixture() else { return };
        let (_, tensors) = to_hf(bytes).unwrap();
        let by_name: BTreeMap<&str, &HostTensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        assert_eq!(by_name["model.layers.3.self_attn.q_proj.weight"].format(), WeightFormat::Q4_1);
        assert_eq!(by_name["model.embed_tokens.weight"].format(), WeightFormat::Q8_0);
        assert_eq!(by_name["model.norm.weight"].packed_words(), None);
        let model = crate::model::load(&fixture_dir().expect("the GGUF's folder")).unwrap();
        let host: usize = model.weights.named().iter().map(|(_, t)| t.host_bytes()).sum();
        assert!(host < bytes.len(), "the host holds {host} bytes of weights, the file has {}", bytes.len());
        let b0 = &model.weights.blocks[0];
        for t in [&b0.qkv, &b0.o, &b0.up, &b0.down] {
            assert_eq!(t.format(), WeightFormat::Q4_1, "{}", t.name);
        }
        let file = parse(bytes).unwrap();
        let raw = |name: &str| dequantize(&file, bytes, info(&file, name)).unwrap();
        assert_eq!(*b0.down.values(), raw("blk.0.ffn_down.weight"));
        assert_eq!(*b0.up.values(), [raw("blk.0.ffn_gate.weight"), raw("blk.0.ffn_up.weight")].concat());
        assert_eq!(*model.weights.embed.values(), raw("token_embd.weight"));
    }

    #[test]
    fn converts_fixture_to_hf() {
        let Some(bytes) = fixture() else { return };
        let (config, tensors) = to_hf(bytes).unwrap();
        let expected = json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "head_dim": 64, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "max_position_embeddings": 8192, "vocab_size": 49152,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
            "hidden_act": "silu",
        });
        assert_eq!(config, expected);

        assert_eq!(tensors.len(), 272);
        let by_name: BTreeMap<&str, &HostTensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        assert_eq!(by_name.len(), 272, "HF names are unique");
        assert_eq!(by_name["model.embed_tokens.weight"].shape, [49152, 576]);
        assert_eq!(by_name["model.norm.weight"].shape, [576]);
        assert!(!by_name.contains_key("lm_head.weight"));
        for l in 0..30 {
            let shape = |s: &str| by_name[format!("model.layers.{l}.{s}.weight").as_str()].shape.clone();
            assert_eq!(shape("input_layernorm"), [576]);
            assert_eq!(shape("post_attention_layernorm"), [576]);
            assert_eq!(shape("self_attn.q_proj"), [576, 576]);
            assert_eq!(shape("self_attn.k_proj"), [192, 576]);
            assert_eq!(shape("self_attn.v_proj"), [192, 576]);
            assert_eq!(shape("self_attn.o_proj"), [576, 576]);
            assert_eq!(shape("mlp.gate_proj"), [1536, 576]);
            assert_eq!(shape("mlp.up_proj"), [1536, 576]);
            assert_eq!(shape("mlp.down_proj"), [576, 1536]);
        }
        for t in &tensors {
            assert_eq!(t.values().len(), t.numel(), "{}", t.name);
        }

        // Within each 64-row head, HF row s*32 + i is GGUF row 2i + s; v is not permuted.
        let file = parse(bytes).unwrap();
        for (gguf, hf) in [("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")] {
            let raw = dequantize(&file, bytes, info(&file, &format!("blk.5.{gguf}.weight"))).unwrap();
            let conv = &by_name[format!("model.layers.5.self_attn.{hf}.weight").as_str()].values();
            let row = |d: &[f32], r: usize| d[r * 576..(r + 1) * 576].to_vec();
            for (hf_row, gguf_row) in
                [(0, 0), (1, 2), (31, 62), (32, 1), (33, 3), (63, 63), (64 + 40, 64 + 17)]
            {
                let src = if gguf == "attn_v" { hf_row } else { gguf_row };
                assert_eq!(row(conv, hf_row), row(&raw, src), "{hf} row {hf_row}");
            }
        }
    }

    #[test]
    fn dequantizes_each_supported_type() {
        let f16s: Vec<u8> =
            [1.5f32, -2.0, 65504.0].iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        let bf16s: Vec<u8> =
            [1.5f32, -3.0e38].iter().flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut q4_0 = f16::from_f32(2.0).to_le_bytes().to_vec();
        q4_0.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let mut q4_1 = [f16::from_f32(0.25).to_le_bytes(), f16::from_f32(-1.0).to_le_bytes()].concat();
        q4_1.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let b = Builder::default()
            .tensor("f16", &[3], GGML_F16, &f16s)
            .tensor("bf16", &[2], GGML_BF16, &bf16s)
            .tensor("q8", &[32], GGML_Q8_0, &q8)
            .tensor("q4_0", &[32], GGML_Q4_0, &q4_0)
            .tensor("q4_1", &[32], GGML_Q4_1, &q4_1)
            .tensor("q5_0", &[32], 6, &[0; 22])
            .build();
        let file = parse(&b).unwrap();
        let get = |name: &str| dequantize(&file, &b, info(&file, name));
        assert_eq!(get("f16").unwrap(), [1.5, -2.0, 65504.0]);
        assert_eq!(get("bf16").unwrap(), [1.5, f32::from_bits((-3.0e38f32).to_bits() & 0xFFFF_0000)]);
        assert_eq!(get("q8").unwrap(), (0..32).map(|i| 0.5 * (i - 16) as f32).collect::<Vec<_>>());
        // Element j < 16 is the low nibble j of byte j; element 16 + j the high nibble 15 - j.
        let nibbles: Vec<f32> = (0..16).chain((0..16).rev()).map(|q| q as f32).collect();
        let want: Vec<f32> = nibbles.iter().map(|q| 2.0 * (q - 8.0)).collect();
        assert_eq!(get("q4_0").unwrap(), want);
        let want: Vec<f32> = nibbles.iter().map(|q| 0.25 * q + -1.0).collect();
        assert_eq!(get("q4_1").unwrap(), want);
        let msg = get("q5_0").unwrap_err().to_string();
        assert!(msg.contains("'q5_0'") && msg.contains("ggml type 6 (Q5_0)"), "{msg}");
    }

    /// A model in Q4_K_M's mix of formats loads with every single-format weight kept packed in
    /// its file's blocks (a fused weight whose parts differ is dequantized to f32), and scores
    /// as the same file dequantized to f32 does: the same values summed in another order.
    /// `--weights q8_0` converts it like any other model.
    #[test]
    fn k_quant_model_kept_packed_matches_dequantized() {
        use crate::model::{GpuModel, WeightChoice};
        let dir = std::env::temp_dir().join(format!("keel-k-quants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.gguf"), k_quant_model()).unwrap();
        let host = crate::model::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let gpu = crate::ops::test_util::gpu();
        let dense = GpuModel::upload(gpu, &host).unwrap();
        let packed = GpuModel::upload_with(gpu, &host, WeightChoice::Auto).unwrap();
        let formats = |m: &GpuModel| {
            let [b0, b1] = [&m.weights.blocks[0], &m.weights.blocks[1]];
            [
                b0.qkv.format(),
                b0.o.format(),
                b0.up.format(),
                b0.down.format(),
                b1.qkv.format(),
                b1.down.format(),
            ]
        };
        use WeightFormat::{F32, Q4_K, Q5_K, Q6_K};
        assert_eq!(formats(&packed), [Q4_K, Q5_K, Q4_K, Q4_K, F32, Q6_K]);
        assert_eq!(packed.formats(), (Q4_K, Q6_K));
        assert!(packed.weight_bytes() < dense.weight_bytes() / 3);
        let ids = [1, 17, 42, 299, 5, 5, 123, 7, 250, 64];
        let want = crate::generate::score(gpu, &dense, &ids, None).unwrap().next_logprobs;
        let got = crate::generate::score(gpu, &packed, &ids, None).unwrap().next_logprobs;
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        eprintln!("K-quant model kept packed vs f32: max |Δ log-prob| {worst:.2e}");
        assert!(worst <= 1e-4, "log-probs differ by {worst}");
        let q8 = GpuModel::upload_with(gpu, &host, WeightChoice::Format(WeightFormat::Q8_0)).unwrap();
        assert!(formats(&q8).iter().all(|&f| f == WeightFormat::Q8_0));
    }

    /// GGUFs that llama.cpp's own quantizer wrote (tests/data/tiny-llama-{q4_k_m,q5_k_m}.gguf:
    /// random weights, `scripts/llama_quantized_gguf.py` regenerates them): every tensor
    /// dequantized by Keel equals gguf-py's dequantization bit for bit (skipped, or failed under
    /// KEEL_REQUIRE_FIXTURES=1, where python3 lacks the gguf and numpy packages), and the model
    /// kept packed on the GPU scores within 1e-4 of the dequantized f32 model and generates the
    /// same greedy tokens.
    #[test]
    fn llama_quantized_gguf_equals_gguf_py() {
        use crate::generate::{generate, GenerateOptions, SamplerConfig};
        use crate::model::{GpuModel, WeightChoice};
        let Some(gguf_py) = crate::gpu::wfmt::GgufPy::find("llama-quantized") else { return };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let files =
            [("tiny-llama-q4_k_m.gguf", ["Q4_K", "Q6_K"]), ("tiny-llama-q5_k_m.gguf", ["Q5_K", "Q6_K"])];
        for (file_name, kinds) in files {
            let path = root.join("tests/data").join(file_name);
            let bytes = std::fs::read(&path).unwrap();
            let file = parse(&bytes).unwrap();
            let mut by_type = BTreeMap::new();
            for info in &file.tensors {
                let keel: Vec<u32> =
                    dequantize(&file, &bytes, info).unwrap().iter().map(|v| v.to_bits()).collect();
                let name = crate::model::gguf::parse::ggml_type_name(info.ggml_type);
                let want = gguf_py.dequantize(name, tensor_data(&file, &bytes, info).unwrap());
                assert!(
                    keel == want,
                    "{file_name}: {} ({name}): Keel's values differ from gguf-py's",
                    info.name
                );
                *by_type.entry(name).or_insert(0) += 1;
            }
            eprintln!("{file_name}: tensors equal to gguf-py's bit for bit, by type: {by_type:?}");
            assert!(kinds.iter().all(|k| by_type.contains_key(k)), "{file_name}: {kinds:?} tensors");
            let host = crate::model::load(&path).unwrap();
            let gpu = crate::ops::test_util::gpu();
            let dense = GpuModel::upload(gpu, &host).unwrap();
            let packed = GpuModel::upload_with(gpu, &host, WeightChoice::Auto).unwrap();
            assert!(packed.formats().0 != WeightFormat::F32, "{file_name}: the blocks stay packed");
            let ids = [1, 17, 42, 99, 5, 5, 123, 7];
            let want = crate::generate::score(gpu, &dense, &ids, None).unwrap().next_logprobs;
            let got = crate::generate::score(gpu, &packed, &ids, None).unwrap().next_logprobs;
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            eprintln!(
                "{file_name}: formats {:?}; packed vs f32: max |Δ log-prob| {worst:.2e}",
                packed.formats()
            );
            assert!(worst <= 1e-4, "{file_name}: log-probs differ by {worst}");
            let greedy = SamplerConfig { temperature: 0.0, ..SamplerConfig::default() };
            let opts = GenerateOptions { max_tokens: 12, sampler: greedy, eos: vec![], lcm: None };
            let run = |m: &GpuModel| generate(gpu, m, &ids, &opts, &mut |_| Ok(())).unwrap();
            let tokens = run(&packed);
            assert_eq!(tokens.len(), 12, "{file_name}");
            assert_eq!(tokens, run(&dense), "{file_name}: greedy tokens, packed vs f32");
        }
    }

    /// llama.cpp's converter, transcribed index by index from
    /// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`:
    /// output element [h][i][s][c] is input element [h][s][i][c].
    fn llama_cpp_permute(w: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
        let cols = w.len() / rows;
        let half = rows / n_head / 2;
        let mut out = vec![0.0; w.len()];
        for h in 0..n_head {
            for i in 0..half {
                for s in 0..2 {
                    for c in 0..cols {
                        out[((h * half + i) * 2 + s) * cols + c] = w[((h * 2 + s) * half + i) * cols + c];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // One head of 4 rows: GGUF rows [a, b, c, d] hold rope pairs (a, b), (c, d); HF
        // wants pairs (x0, x2), (x1, x3), i.e. rows [a, c, b, d].
        assert_eq!(unpermute_rows(&[0.0, 1.0, 2.0, 3.0], 4, 1).unwrap(), [0.0, 2.0, 1.0, 3.0]);
        for (rows, n_head, cols) in [(24, 3, 5), (24, 3, 1), (12, 1, 2), (16, 4, 3)] {
            let w: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
            let permuted = llama_cpp_permute(&w, rows, n_head);
            assert_ne!(permuted, w);
            assert_eq!(unpermute_rows(&permuted, rows, n_head).unwrap(), w);
            assert_eq!(llama_cpp_permute(&unpermute_rows(&w, rows, n_head).unwrap(), rows, n_head), w);
        }
        assert!(unpermute_rows(&[0.0; 6], 6, 2).is_err(), "heads of odd size");
    }

    /// Phi-3's longrope as llama.cpp's converter writes it: the factor tensors and the
    /// metadata keys become the config's `rope_scaling`, over the whole context; the factors
    /// are no weights. Half of it, or the header alone, is refused in words.
    #[test]
    fn reads_longrope_factor_tensors() {
        use crate::model::config::ModelConfig;
        use crate::ops::rope::RopeScaling;
        let with = |b: Builder| b.u32("llama.rope.scaling.original_context_length", 16);
        let file = with(tiny_model_builder("llama"))
            .f32("llama.rope.scaling.attn_factor", 1.25)
            .f32_tensor("rope_factors_short.weight", &[2], &[1.0, 2.0])
            .f32_tensor("rope_factors_long.weight", &[2], &[3.0, 5.0])
            .build();
        let (config, tensors) = to_hf(&file).unwrap();
        let want = json!({"rope_type": "longrope", "short_factor": [1.0, 2.0], "long_factor": [3.0, 5.0],
            "attention_factor": 1.25});
        assert_eq!(
            (&config["rope_scaling"], &config["original_max_position_embeddings"]),
            (&want, &json!(16))
        );
        assert!(tensors.iter().all(|t| !t.name.contains("rope")), "the factors are no weights");
        let c = ModelConfig::from_hf(&config, "f.gguf").unwrap();
        let scaling = RopeScaling::LongRope {
            short_factor: vec![1.0, 2.0],
            long_factor: vec![3.0, 5.0],
            attention_factor: 1.25,
            original_max_positions: 16,
        };
        assert_eq!((c.rope_scaling, c.max_positions), (scaling, 64));
        let err = |bytes: &[u8]| format!("{:#}", to_hf(bytes).unwrap_err());
        let half =
            with(tiny_model_builder("llama")).f32_tensor("rope_factors_long.weight", &[2], &[3.0, 5.0]);
        assert!(err(&half.build())
            .contains("'rope_factors_short.weight' and 'rope_factors_long.weight' (longrope) come together"));
        let no_original = tiny_model_builder("llama")
            .f32_tensor("rope_factors_short.weight", &[2], &[1.0, 2.0])
            .f32_tensor("rope_factors_long.weight", &[2], &[3.0, 5.0]);
        assert!(err(&no_original.build()).contains("llama.rope.scaling.original_context_length"));
        let header = hf_config(&parse(&file).unwrap()).unwrap_err().to_string();
        assert!(
            header.contains("'rope_factors_short.weight' (rope scaling) is read with the whole file"),
            "{header}"
        );
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let err = format!("{:#}", to_hf(&tiny_model("mamba")).unwrap_err());
        assert!(err.starts_with("GGUF architecture 'mamba' is not supported (llama, "), "{err}");
    }

    #[test]
    fn converts_tiny_llama_and_qwen2() {
        let seq = |n: usize| (0..n).map(|x| x as f32).collect::<Vec<_>>();
        let (config, tensors) = to_hf(&tiny_model("llama")).unwrap();
        assert_eq!(config["head_dim"], 4);
        assert_eq!(config["rope_theta"], 10000.0);
        assert_eq!(config["tie_word_embeddings"], false);
        assert_eq!(config["bos_token_id"], Value::Null);
        assert_eq!(config["vocab_size"], 5);
        let get = |ts: &[HostTensor], n: &str| ts.iter().find(|t| t.name == n).unwrap().clone();
        let q = get(&tensors, "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(q.shape, [8, 8]);
        assert_eq!(llama_cpp_permute(&q.values(), 8, 2), seq(64));
        let k = get(&tensors, "model.layers.0.self_attn.k_proj.weight");
        assert_eq!((k.shape.as_slice(), llama_cpp_permute(&k.values(), 4, 1)), (&[4, 8][..], seq(32)));
        assert_eq!(get(&tensors, "lm_head.weight").shape, [5, 8]);
        assert_eq!(get(&tensors, "model.layers.0.mlp.down_proj.weight").shape, [8, 6]);

        let (config, tensors) = to_hf(&tiny_model("qwen2")).unwrap();
        assert_eq!(config["architectures"], json!(["Qwen2ForCausalLM"]));
        assert_eq!(config["model_type"], "qwen2");
        assert_eq!(tensors.len(), 15);
        assert_eq!(*get(&tensors, "model.layers.0.self_attn.q_proj.weight").values(), seq(64));
        assert_eq!(*get(&tensors, "model.layers.0.self_attn.k_proj.bias").values(), seq(4));

        let mut unknown = Builder::default().str("general.architecture", "gpt2").build();
        assert!(to_hf(&unknown).unwrap_err().to_string().contains("'gpt2' is not supported"));
        unknown = tiny_model("llama");
        // Rename a tensor in place: "output.weight" -> "outpux.weight".
        let name = [&13u64.to_le_bytes()[..], b"output.weight"].concat();
        let at = unknown.windows(21).position(|w| w == name).unwrap() + 8;
        unknown[at + 5] = b'x';
        let msg = to_hf(&unknown).unwrap_err().to_string();
        assert_eq!(msg, "GGUF tensor 'outpux.weight' has no Hugging Face equivalent for architecture llama");
    }
}
