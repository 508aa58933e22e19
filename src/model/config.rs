//! The model as data: one config shape for every supported architecture, read from a
//! Hugging Face config.json (GGUF metadata is first turned into one).

use crate::ops::{
    act::Activation,
    norm::NormKind,
    rope::{HeadShape, RopeScaling},
};
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

/// The architecture family (Hugging Face's `architectures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// LlamaForCausalLM: SmolLM2, TinyLlama, llama2.c models.
    Llama,
    /// Qwen2ForCausalLM: Llama with q/k/v biases.
    Qwen2,
    /// Qwen3ForCausalLM: Llama with a per-head RMSNorm on q and k before RoPE.
    Qwen3,
    /// SmolLM3ForCausalLM: Llama with some blocks left without RoPE (`no_rope_layers`).
    SmolLm3,
    /// GPT2LMHeadModel: LayerNorm, GELU, learned positions, Conv1D weights.
    Gpt2,
    /// Phi3ForCausalLM (Phi-3, Phi-4-mini): Llama with fused `qkv_proj` and `gate_up_proj`
    /// in the file and partial rotary.
    Phi3,
    /// GPTNeoXForCausalLM (Pythia): LayerNorm, GELU, biases everywhere, partial rotary,
    /// parallel residual, q/k/v interleaved per head in the file.
    GptNeoX,
    /// Gemma3ForCausalLM (text): `(1 + w)` RMSNorms, four per block, q/k norms, a scaled
    /// embedding, GELU-tanh-gated MLP, sliding-window blocks with their own RoPE base.
    Gemma3,
    /// BertModel (sentence encoders such as all-MiniLM-L6-v2): an encoder, not an LM:
    /// bidirectional attention, post-norm blocks (LayerNorm after each residual add, and after
    /// the embedding), learned positions, exact GELU, biases everywhere, no LM head.
    Bert,
}

/// A model's architecture and shapes, from config.json or a GGUF's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The architecture family.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the MLP's inner layer.
    pub ffn: usize,
    /// Epsilon of the norms.
    pub norm_eps: f32,
    /// None: learned absolute positions (GPT-2).
    pub rope_theta: Option<f32>,
    /// How the rotary frequencies are rescaled (`rope_scaling` / `rope_parameters`).
    pub rope_scaling: RopeScaling,
    /// Blocks that apply no rotary embedding (SmolLM3's zeros in `no_rope_layers`).
    pub nope_layers: Vec<usize>,
    /// A per-head RMSNorm on q and k before RoPE (Qwen3's and Gemma 3's `q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Norms of the attention's and the MLP's outputs before they join the residual stream
    /// (Gemma 3's `post_attention_layernorm` and `post_feedforward_layernorm`).
    pub post_norms: bool,
    /// What the token embedding is multiplied by (Gemma: sqrt(hidden_size), in f32).
    pub embed_scale: f32,
    /// What q·k is multiplied by: 1/sqrt(head_dim), Gemma's 1/sqrt(query_pre_attn_scalar).
    pub attn_scale: f32,
    /// Keys a block of `sliding_layers` attends to, its query's own included (`sliding_window`).
    pub sliding_window: Option<usize>,
    /// Blocks whose attention is limited to `sliding_window` keys (`layer_types`
    /// "sliding_attention").
    pub sliding_layers: Vec<usize>,
    /// The RoPE base of `sliding_layers`, unscaled (Gemma 3's `rope_local_base_freq`); None:
    /// they use `rope_theta` and `rope_scaling` like the others.
    pub local_rope_theta: Option<f32>,
    /// Leading dimensions of each head that RoPE rotates (`head_dim`, or less with a
    /// `partial_rotary_factor` / `rotary_pct`).
    pub rotary_dim: usize,
    /// The MLP's activation (`hidden_act`).
    pub act: Activation,
    /// Biases on the MLP's up and down projections (GPT-2, GPT-NeoX).
    pub mlp_bias: bool,
    /// `x + attn(norm1(x)) + mlp(norm2(x))` instead of the sequential residual (GPT-NeoX).
    pub parallel_residual: bool,
    /// The residual stream itself is normalized after each sublayer's add (BERT's post-LN),
    /// instead of each sublayer's input (pre-norm; Gemma's `post_norms` are another thing).
    pub residual_norm: bool,
    /// Each position attends to the earlier ones only (LMs); false: to every position of its
    /// sequence (encoders).
    pub causal: bool,
    /// Context length.
    pub max_positions: usize,
    /// Final-logit soft-capping: the LM head's logits become `cap · tanh(z / cap)` (Gemma's
    /// `final_logit_softcapping`).
    pub logit_softcap: Option<f32>,
    /// The LM head reads the embedding matrix.
    pub tied_embeddings: bool,
    /// Bias on the q, k, v projections (Qwen2; Llama with attention_bias).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with attention_bias; GPT-2 always).
    pub o_bias: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<u32>,
    /// End-of-sequence tokens: generation stops after one.
    pub eos: Vec<u32>,
}

fn get<'a>(v: &'a Value, key: &str, file: &str) -> Result<&'a Value> {
    v.get(key).filter(|x| !x.is_null()).ok_or_else(|| anyhow!("{file}: missing key '{key}'"))
}

fn usize_of(v: &Value, key: &str, file: &str) -> Result<usize> {
    let x = get(v, key, file)?;
    x.as_u64()
        .filter(|&n| n > 0 && n < (1 << 31))
        .map(|n| n as usize)
        .ok_or_else(|| anyhow!("{file}: '{key}' must be a positive integer below 2^31, got {x}"))
}

fn opt_usize(v: &Value, key: &str, file: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => usize_of(v, key, file).map(Some),
    }
}

fn f32_of(v: &Value, key: &str, default: f32, file: &str) -> Result<f32> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_f64()
            .filter(|f| f.is_finite() && *f > 0.0)
            .map(|f| f as f32)
            .ok_or_else(|| anyhow!("{file}: '{key}' must be a positive number, got {x}")),
    }
}

fn bool_of(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// Token ids from an int or a list of ints ("a list counts whole").
pub fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => Vec::new(),
    }
}

/// The rotary rescaling of a config: `rope_parameters` (transformers 5) or `rope_scaling`.
fn rope_scaling(v: &Value, file: &str) -> Result<RopeScaling> {
    match ["rope_parameters", "rope_scaling"]
        .into_iter()
        .find_map(|k| v.get(k).filter(|p| p.is_object()).map(|p| (k, p)))
    {
        Some((field, p)) => rope_scaling_of(v, (field, p), file),
        None => Ok(RopeScaling::None),
    }
}

/// The rotary rescaling that the object `p` at `field` of config `v` describes.
fn rope_scaling_of(v: &Value, (field, p): (&str, &Value), file: &str) -> Result<RopeScaling> {
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let number = |key: &str| {
        p.get(key)
            .and_then(Value::as_f64)
            .filter(|f| f.is_finite() && *f > 0.0)
            .map(|f| f as f32)
            .ok_or_else(|| anyhow!("{file}: {field}.{key} must be a positive number for rope_type '{kind}'"))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "longrope" => {
            let original = match v.get("original_max_position_embeddings").filter(|x| !x.is_null()) {
                Some(_) => usize_of(v, "original_max_position_embeddings", file)?,
                None => usize_of(p, "original_max_position_embeddings", file)?,
            };
            let max = opt_usize(v, "max_position_embeddings", file)?.unwrap_or(original);
            let factor = max as f32 / original as f32;
            let attention_factor = match p.get("attention_factor").filter(|x| !x.is_null()) {
                Some(_) => number("attention_factor")?,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f32).ln()).sqrt(),
            };
            let factors = |key: &str| {
                p.get(key)
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(|x| x.as_f64().filter(|f| *f > 0.0).map(|f| f as f32)).collect())
                    .ok_or_else(|| anyhow!("{file}: {field}.{key} must be a list of positive numbers"))
            };
            RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                attention_factor,
                original_max_positions: original,
            }
        }
        "linear" => RopeScaling::Linear { factor: number("factor")? },
        "llama3" => {
            let (low_freq_factor, high_freq_factor) =
                (number("low_freq_factor")?, number("high_freq_factor")?);
            if high_freq_factor <= low_freq_factor {
                bail!("{file}: {field}.high_freq_factor must exceed low_freq_factor");
            }
            RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor,
                high_freq_factor,
                original_max_positions: usize_of(p, "original_max_position_embeddings", file)?,
            }
        }
        other => bail!(
            "{file}: {field}.rope_type '{other}' is not supported (Keel has default, linear, llama3 and longrope)"
        ),
    })
}

/// The blocks of `layer_types` that are "sliding_attention" (allowed where `sliding`, Gemma 3);
/// any other entry than that and "full_attention" is refused.
fn sliding_layers(v: &Value, layers: usize, sliding: bool, file: &str) -> Result<Vec<usize>> {
    let Some(types) = v.get("layer_types").filter(|t| !t.is_null()) else { return Ok(Vec::new()) };
    let types = types.as_array().ok_or_else(|| anyhow!("{file}: layer_types must be a list"))?;
    if types.len() != layers {
        bail!("{file}: layer_types has {} entries for {layers} layers", types.len());
    }
    let mut found = Vec::new();
    for (l, t) in types.iter().enumerate() {
        match t.as_str() {
            Some("full_attention") => {}
            Some("sliding_attention") if sliding => found.push(l),
            _ if sliding => bail!(
                "{file}: layer_types[{l}] is {t}; Keel knows 'full_attention' and 'sliding_attention'"
            ),
            _ => bail!("{file}: layer_types[{l}] is {t}; Keel runs 'full_attention' layers only for this architecture"),
        }
    }
    Ok(found)
}

/// Gemma 3's rotary settings: (base and scaling of the full-attention blocks, base of the
/// sliding ones), from transformers 5's `rope_parameters` per layer type or from the older
/// `rope_theta`, `rope_scaling` and `rope_local_base_freq`.
fn gemma3_rope(v: &Value, file: &str) -> Result<(f32, RopeScaling, f32)> {
    let nested = v.get("rope_parameters").filter(|p| p.get("full_attention").is_some());
    let Some(p) = nested else {
        let scaling = match v.get("rope_scaling").filter(|p| p.is_object()) {
            Some(p) => rope_scaling_of(v, ("rope_scaling", p), file)?,
            None => RopeScaling::None,
        };
        let (theta, local) =
            (f32_of(v, "rope_theta", 1e6, file)?, f32_of(v, "rope_local_base_freq", 1e4, file)?);
        return Ok((theta, scaling, local));
    };
    let full = get(p, "full_attention", file)?;
    let scaling = rope_scaling_of(v, ("rope_parameters.full_attention", full), file)?;
    let sliding = get(p, "sliding_attention", file)?;
    let kind = sliding.get("rope_type").and_then(Value::as_str).unwrap_or("default");
    if kind != "default" {
        bail!("{file}: rope_parameters.sliding_attention.rope_type '{kind}' is not supported (Keel has default there)");
    }
    Ok((f32_of(full, "rope_theta", 1e6, file)?, scaling, f32_of(sliding, "rope_theta", 1e4, file)?))
}

/// BertModel's config: every token of type 0 (sentence encoders), absolute positions, exact GELU.
fn bert_config(v: &Value, file: &str, bos: Option<u32>, eos: Vec<u32>) -> Result<ModelConfig> {
    let hidden = usize_of(v, "hidden_size", file)?;
    let heads = usize_of(v, "num_attention_heads", file)?;
    if !hidden.is_multiple_of(heads) {
        bail!("{file}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
    }
    let act = v.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
    if act != "gelu" {
        bail!("{file}: hidden_act '{act}' is not supported for BertModel (Keel has exact GELU, 'gelu')");
    }
    let positions = v.get("position_embedding_type").and_then(Value::as_str).unwrap_or("absolute");
    if positions != "absolute" {
        bail!("{file}: position_embedding_type '{positions}' is not supported (Keel has 'absolute')");
    }
    Ok(ModelConfig {
        vocab: usize_of(v, "vocab_size", file)?,
        layers: usize_of(v, "num_hidden_layers", file)?,
        ffn: usize_of(v, "intermediate_size", file)?,
        norm_eps: f32_of(v, "layer_norm_eps", 1e-12, file)?,
        max_positions: usize_of(v, "max_position_embeddings", file)?,
        residual_norm: true,
        causal: false,
        // An encoder has no LM head: nothing reads it, and no lm_head tensor is expected.
        tied_embeddings: true,
        ..learned_positions(Arch::Bert, (hidden, heads), Activation::Gelu, bos, eos)
    })
}

/// What BERT and GPT-2 share: multi-head attention over learned absolute positions, biases on
/// every linear, LayerNorm; the fields each reads from its config are left zero here.
fn learned_positions(
    arch: Arch,
    (hidden, heads): (usize, usize),
    act: Activation,
    bos: Option<u32>,
    eos: Vec<u32>,
) -> ModelConfig {
    ModelConfig {
        arch,
        vocab: 0,
        hidden,
        layers: 0,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads,
        ffn: 0,
        norm_eps: 0.0,
        rope_theta: None,
        rope_scaling: RopeScaling::None,
        nope_layers: Vec::new(),
        qk_norm: false,
        post_norms: false,
        embed_scale: 1.0,
        attn_scale: 1.0 / ((hidden / heads) as f32).sqrt(),
        sliding_window: None,
        sliding_layers: Vec::new(),
        local_rope_theta: None,
        rotary_dim: hidden / heads,
        act,
        mlp_bias: true,
        parallel_residual: false,
        residual_norm: false,
        causal: true,
        max_positions: 0,
        logit_softcap: None,
        tied_embeddings: false,
        qkv_bias: true,
        o_bias: true,
        bos,
        eos,
    }
}

/// SmolLM3's `no_rope_layers` (one 0 or 1 per layer; 0: no RoPE) as the blocks without RoPE.
fn nope_layers(v: &Value, layers: usize, file: &str) -> Result<Vec<usize>> {
    let Some(flags) = v.get("no_rope_layers").filter(|t| !t.is_null()) else { return Ok(Vec::new()) };
    let flags = flags.as_array().filter(|a| a.len() == layers).ok_or_else(|| {
        anyhow!("{file}: no_rope_layers must be a list of {layers} zeros and ones, got {flags}")
    })?;
    let mut nope = Vec::new();
    for (l, f) in flags.iter().enumerate() {
        match f.as_u64() {
            Some(0) => nope.push(l),
            Some(1) => {}
            _ => bail!("{file}: no_rope_layers[{l}] is {f}, expected 0 or 1"),
        }
    }
    Ok(nope)
}

impl ModelConfig {
    /// Reads a Hugging Face config.json value; `file` names it in errors.
    pub fn from_hf(v: &Value, file: &str) -> Result<ModelConfig> {
        if !v.is_object() {
            bail!("{file}: expected a JSON object");
        }
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| v.get("model_type").and_then(Value::as_str))
            .ok_or_else(|| anyhow!("{file}: no 'architectures' or 'model_type'"))?;
        let arch = match arch_name {
            "LlamaForCausalLM" | "llama" | "MistralForCausalLM" => Arch::Llama,
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            "Qwen3ForCausalLM" | "qwen3" => Arch::Qwen3,
            "SmolLM3ForCausalLM" | "smollm3" => Arch::SmolLm3,
            "GPT2LMHeadModel" | "gpt2" => Arch::Gpt2,
            "GPTNeoXForCausalLM" | "gpt_neox" => Arch::GptNeoX,
            "Phi3ForCausalLM" | "phi3" => Arch::Phi3,
            "Gemma3ForCausalLM" | "gemma3_text" => Arch::Gemma3,
            "BertModel" | "bert" => Arch::Bert,
            other => bail!(
                "{file}: unsupported architecture '{other}' (Keel runs LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, SmolLM3ForCausalLM, Phi3ForCausalLM, Gemma3ForCausalLM, GPTNeoXForCausalLM, GPT2LMHeadModel and the encoder BertModel)"
            ),
        };
        let bos = token_ids(v.get("bos_token_id")).first().copied();
        let eos = token_ids(v.get("eos_token_id"));
        let cfg = if arch == Arch::Bert {
            bert_config(v, file, bos, eos)?
        } else if arch == Arch::Gpt2 {
            let hidden = usize_of(v, "n_embd", file)?;
            let heads = usize_of(v, "n_head", file)?;
            let act = v.get("activation_function").and_then(Value::as_str).unwrap_or("gelu_new");
            if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
                bail!("{file}: activation_function '{act}' is not supported (Keel has GELU-tanh)");
            }
            ModelConfig {
                vocab: usize_of(v, "vocab_size", file)?,
                layers: usize_of(v, "n_layer", file)?,
                ffn: opt_usize(v, "n_inner", file)?.unwrap_or(4 * hidden),
                norm_eps: f32_of(v, "layer_norm_epsilon", 1e-5, file)?,
                max_positions: usize_of(v, "n_positions", file)?,
                tied_embeddings: bool_of(v, "tie_word_embeddings", true),
                ..learned_positions(arch, (hidden, heads), Activation::GeluTanh, bos, eos)
            }
        } else {
            let hidden = usize_of(v, "hidden_size", file)?;
            let heads = usize_of(v, "num_attention_heads", file)?;
            let (neox, gemma) = (arch == Arch::GptNeoX, arch == Arch::Gemma3);
            if !neox && bool_of(v, "mlp_bias", false) {
                bail!("{file}: mlp_bias = true is not supported");
            }
            // Gemma names it `hidden_activation`.
            let act_key = if gemma && v.get("hidden_activation").is_some() {
                "hidden_activation"
            } else {
                "hidden_act"
            };
            let act_name = v.get(act_key).and_then(Value::as_str).unwrap_or(if gemma {
                "gelu_pytorch_tanh"
            } else {
                "silu"
            });
            let act = match (arch, act_name) {
                (Arch::GptNeoX, "gelu") => Activation::Gelu,
                (Arch::GptNeoX, "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh") => Activation::GeluTanh,
                (Arch::Gemma3, "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") => Activation::GeluTanhGate,
                (Arch::GptNeoX | Arch::Gemma3, _) => bail!(
                    "{file}: {act_key} '{act_name}' is not supported (Keel has GELU or GELU-tanh for GPT-NeoX, GELU-tanh-gated MLPs for Gemma 3)"
                ),
                (_, "silu") => Activation::SiluGate,
                _ => bail!(
                    "{file}: {act_key} '{act_name}' is not supported (Keel has SiLU-gated MLPs for Llama/Qwen/SmolLM3/Phi-3)"
                ),
            };
            // Soft-capping of the attention scores is Gemma 2's; no Gemma 3 sets it.
            if let Some(cap) = v.get("attn_logit_softcapping").filter(|x| !x.is_null()) {
                bail!("{file}: attn_logit_softcapping {cap} is not supported (Keel runs attention without soft-capping)");
            }
            let logit_softcap = match v.get("final_logit_softcapping").filter(|x| !x.is_null()) {
                Some(_) if gemma => Some(f32_of(v, "final_logit_softcapping", 1.0, file)?),
                Some(cap) => bail!(
                    "{file}: final_logit_softcapping {cap} is not supported for {arch_name} (Keel applies it to Gemma 3 only)"
                ),
                None => None,
            };
            let head_dim = match opt_usize(v, "head_dim", file)? {
                Some(d) => d,
                None if hidden.is_multiple_of(heads) => hidden / heads,
                None => bail!(
                    "{file}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} (and no head_dim is given)"
                ),
            };
            let theta_holder = v.get("rope_parameters").filter(|p| p.is_object()).unwrap_or(v);
            let attention_bias = bool_of(v, "attention_bias", neox);
            let fraction_key = |holder: &Value, key: &str| holder.get(key).filter(|x| !x.is_null()).is_some();
            let rotary_fraction = if fraction_key(v, "rotary_pct") {
                f32_of(v, "rotary_pct", 1.0, file)?
            } else if fraction_key(theta_holder, "partial_rotary_factor") {
                f32_of(theta_holder, "partial_rotary_factor", 1.0, file)?
            } else {
                f32_of(v, "partial_rotary_factor", 1.0, file)?
            };
            let rotary_dim = (head_dim as f32 * rotary_fraction) as usize;
            let (rope_theta, rope_scaling, local_rope_theta) = if gemma {
                let (theta, scaling, local) = gemma3_rope(v, file)?;
                (theta, scaling, Some(local))
            } else {
                (f32_of(theta_holder, "rope_theta", 10000.0, file)?, rope_scaling(v, file)?, None)
            };
            let mut max_positions = opt_usize(v, "max_position_embeddings", file)?.unwrap_or(2048);
            // Mistral's sliding window (Qwen's and SmolLM3's only with use_sliding_window): within
            // the window it is full attention, so Keel's context stops there. Gemma 3 runs it.
            if let Some(window) = opt_usize(v, "sliding_window", file)?
                .filter(|_| !gemma && bool_of(v, "use_sliding_window", true))
            {
                max_positions = max_positions.min(window);
            }
            if let RopeScaling::LongRope { short_factor, long_factor, .. } = &rope_scaling {
                for (key, factors) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if factors.len() != rotary_dim / 2 {
                        bail!(
                            "{file}: {key} has {} entries, expected {} (half the rotated dimensions)",
                            factors.len(),
                            rotary_dim / 2
                        );
                    }
                }
            }
            if rotary_fraction > 1.0 || rotary_dim < 2 || !rotary_dim.is_multiple_of(2) {
                bail!(
                    "{file}: a rotary fraction of {rotary_fraction} of head_dim {head_dim} rotates {rotary_dim} dimensions; expected an even number from 2 to head_dim"
                );
            }
            let layers = usize_of(v, "num_hidden_layers", file)?;
            let mut sliding = sliding_layers(v, layers, gemma, file)?;
            if gemma && v.get("layer_types").is_none_or(Value::is_null) {
                // Gemma 3's default pattern: every `sliding_window_pattern`-th block is global.
                let pattern = match v.get("sliding_window_pattern").filter(|x| !x.is_null()) {
                    Some(_) => usize_of(v, "sliding_window_pattern", file)?,
                    None => opt_usize(v, "_sliding_window_pattern", file)?.unwrap_or(6),
                };
                sliding = (0..layers).filter(|l| (l + 1) % pattern != 0).collect();
            }
            let sliding_window = if sliding.is_empty() {
                None
            } else {
                Some(opt_usize(v, "sliding_window", file)?.unwrap_or(4096))
            };
            let attn_scale = if gemma {
                let scalar = f32_of(v, "query_pre_attn_scalar", 256.0, file)?;
                (scalar as f64).powf(-0.5) as f32
            } else {
                1.0 / (head_dim as f32).sqrt()
            };
            ModelConfig {
                arch,
                vocab: usize_of(v, "vocab_size", file)?,
                hidden,
                layers,
                heads,
                kv_heads: opt_usize(v, "num_key_value_heads", file)?.unwrap_or(heads),
                head_dim,
                ffn: usize_of(v, "intermediate_size", file)?,
                norm_eps: if neox {
                    f32_of(v, "layer_norm_eps", 1e-5, file)?
                } else {
                    f32_of(v, "rms_norm_eps", 1e-6, file)?
                },
                rope_theta: Some(rope_theta),
                rope_scaling,
                nope_layers: if arch == Arch::SmolLm3 { nope_layers(v, layers, file)? } else { Vec::new() },
                qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
                post_norms: gemma,
                embed_scale: if gemma { (hidden as f64).sqrt() as f32 } else { 1.0 },
                attn_scale,
                sliding_window,
                sliding_layers: sliding,
                local_rope_theta,
                rotary_dim,
                act,
                mlp_bias: neox,
                parallel_residual: neox && bool_of(v, "use_parallel_residual", true),
                residual_norm: false,
                causal: true,
                max_positions,
                logit_softcap,
                tied_embeddings: bool_of(v, "tie_word_embeddings", gemma),
                qkv_bias: arch == Arch::Qwen2 || attention_bias,
                o_bias: attention_bias,
                bos,
                eos,
            }
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// [`ModelConfig::to_hf_json`] of a Gemma 3 model, in transformers 5's layout.
    fn gemma3_json(&self, bos: Value, eos: Value) -> Value {
        let types: Vec<&str> = (0..self.layers)
            .map(|l| if self.sliding_layers.contains(&l) { "sliding_attention" } else { "full_attention" })
            .collect();
        let full = match self.rope_scaling {
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            _ => json!({"rope_type": "default"}),
        };
        let mut rope = json!({"full_attention": full, "sliding_attention": {"rope_type": "default"}});
        rope["full_attention"]["rope_theta"] = json!(self.rope_theta.unwrap_or(1e6));
        rope["sliding_attention"]["rope_theta"] = json!(self.local_rope_theta.unwrap_or(1e4));
        let scalar = (1.0 / (self.attn_scale as f64).powi(2)).round();
        json!({
            "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "vocab_size": self.vocab, "hidden_size": self.hidden, "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim,
            "rms_norm_eps": self.norm_eps, "query_pre_attn_scalar": scalar,
            "hidden_activation": "gelu_pytorch_tanh", "layer_types": types,
            "sliding_window": self.sliding_window.unwrap_or(self.max_positions),
            "rope_parameters": rope, "max_position_embeddings": self.max_positions,
            "final_logit_softcapping": self.logit_softcap, "attn_logit_softcapping": null,
            "tie_word_embeddings": self.tied_embeddings, "bos_token_id": bos, "eos_token_id": eos,
            "torch_dtype": "float32",
        })
    }

    /// A config.json for this model that transformers loads and [`ModelConfig::from_hf`]
    /// reads back to an equal config (checkpoints of GGUF models have no other).
    pub fn to_hf_json(&self) -> Value {
        let ids = |v: &[u32]| match v {
            [one] => json!(one),
            many => json!(many),
        };
        let eos = ids(&self.eos);
        let bos = self.bos.map_or(Value::Null, |b| json!(b));
        if self.arch == Arch::Gpt2 {
            return json!({
                "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": self.vocab, "n_embd": self.hidden, "n_layer": self.layers,
                "n_head": self.heads, "n_inner": self.ffn, "n_positions": self.max_positions,
                "layer_norm_epsilon": self.norm_eps, "activation_function": "gelu_new",
                "tie_word_embeddings": self.tied_embeddings, "bos_token_id": bos, "eos_token_id": eos,
                "torch_dtype": "float32",
            });
        }
        if self.arch == Arch::Bert {
            return json!({
                "architectures": ["BertModel"], "model_type": "bert",
                "vocab_size": self.vocab, "hidden_size": self.hidden, "intermediate_size": self.ffn,
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "layer_norm_eps": self.norm_eps, "hidden_act": "gelu", "type_vocab_size": 2,
                "max_position_embeddings": self.max_positions, "position_embedding_type": "absolute",
                "torch_dtype": "float32",
            });
        }
        let theta = self.rope_theta.unwrap_or(10000.0);
        if self.arch == Arch::GptNeoX {
            let act = if self.act == Activation::Gelu { "gelu" } else { "gelu_new" };
            return json!({
                "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
                "vocab_size": self.vocab, "hidden_size": self.hidden, "intermediate_size": self.ffn,
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "layer_norm_eps": self.norm_eps, "hidden_act": act, "attention_bias": self.qkv_bias,
                "use_parallel_residual": self.parallel_residual, "max_position_embeddings": self.max_positions,
                "rope_parameters": {"rope_type": "default", "rope_theta": theta,
                    "partial_rotary_factor": self.rotary_dim as f64 / self.head_dim as f64},
                "tie_word_embeddings": self.tied_embeddings, "bos_token_id": bos, "eos_token_id": eos,
                "torch_dtype": "float32",
            });
        }
        if self.arch == Arch::Gemma3 {
            return self.gemma3_json(bos, eos);
        }
        let (architecture, model_type) = match self.arch {
            Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
            Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
            Arch::SmolLm3 => ("SmolLM3ForCausalLM", "smollm3"),
            Arch::Phi3 => ("Phi3ForCausalLM", "phi3"),
            Arch::Llama | Arch::Gpt2 | Arch::GptNeoX | Arch::Gemma3 | Arch::Bert => {
                ("LlamaForCausalLM", "llama")
            }
        };
        let mut v = json!({
            "architectures": [architecture], "model_type": model_type,
            "vocab_size": self.vocab, "hidden_size": self.hidden, "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim,
            "rms_norm_eps": self.norm_eps, "rope_theta": self.rope_theta.unwrap_or(10000.0),
            "max_position_embeddings": self.max_positions, "hidden_act": "silu",
            "tie_word_embeddings": self.tied_embeddings, "bos_token_id": bos, "eos_token_id": eos,
            "torch_dtype": "float32",
        });
        if matches!(self.arch, Arch::Llama | Arch::Qwen3 | Arch::SmolLm3) {
            v["attention_bias"] = json!(self.qkv_bias);
        }
        v["rope_parameters"] = match &self.rope_scaling {
            RopeScaling::None => json!({"rope_type": "default", "rope_theta": theta}),
            &RopeScaling::Linear { factor } => {
                json!({"rope_type": "linear", "rope_theta": theta, "factor": factor})
            }
            &RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => {
                json!({
                    "rope_type": "llama3", "rope_theta": theta, "factor": factor,
                    "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_positions,
                })
            }
            RopeScaling::LongRope { short_factor, long_factor, attention_factor, original_max_positions } => {
                json!({
                    "rope_type": "longrope", "rope_theta": theta, "short_factor": short_factor,
                    "long_factor": long_factor, "attention_factor": attention_factor,
                    "original_max_position_embeddings": original_max_positions,
                })
            }
        };
        if self.rotary_dim != self.head_dim {
            v["rope_parameters"]["partial_rotary_factor"] =
                json!(self.rotary_dim as f64 / self.head_dim as f64);
        }
        if self.arch == Arch::SmolLm3 {
            let flags: Vec<u32> = (0..self.layers).map(|l| !self.nope_layers.contains(&l) as u32).collect();
            v["no_rope_layers"] = json!(flags);
        }
        v
    }

    fn validate(&self, file: &str) -> Result<()> {
        if !self.heads.is_multiple_of(self.kv_heads) {
            bail!(
                "{file}: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.heads,
                self.kv_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim > crate::ops::attention::MAX_HEAD_DIM {
            bail!(
                "{file}: head_dim {} must be even and at most {}",
                self.head_dim,
                crate::ops::attention::MAX_HEAD_DIM
            );
        }
        if self.arch == Arch::Gpt2 && !self.hidden.is_multiple_of(self.heads) {
            bail!("{file}: n_embd {} is not a multiple of n_head {}", self.hidden, self.heads);
        }
        Ok(())
    }

    pub fn norm(&self) -> NormKind {
        match self.arch {
            Arch::Gpt2 | Arch::GptNeoX | Arch::Bert => NormKind::Layer,
            Arch::Gemma3 => NormKind::RmsUnitOffset,
            _ => NormKind::Rms,
        }
    }

    /// The attention window of block `l`: Some(keys) for a sliding-window block.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.sliding_layers.contains(&l))
    }

    pub fn activation(&self) -> Activation {
        self.act
    }

    pub fn head_shape(&self) -> HeadShape {
        HeadShape { n_q: self.heads, n_kv: self.kv_heads, dim: self.head_dim }
    }

    /// Width of the fused up projection: `[gate | up]` for gated MLPs.
    pub fn up_width(&self) -> usize {
        match self.activation() {
            kind if kind.gated() => 2 * self.ffn,
            _ => self.ffn,
        }
    }

    pub fn param_count(&self) -> usize {
        let h = self.hidden;
        let attn = h * self.head_shape().qkv_width() + self.heads * self.head_dim * h;
        let mlp = h * self.up_width() + self.ffn * h;
        let pos = if self.rope_theta.is_none() { self.max_positions * h } else { 0 };
        let head = if self.tied_embeddings { 0 } else { self.vocab * h };
        // Two norms per block (four with post-norms) and a final one; LayerNorm has a bias too.
        let norm_params = if self.norm() == NormKind::Layer { 2 * h } else { h };
        let post_norms = if self.post_norms { 2 * h } else { 0 };
        let qk_norm = if self.qk_norm { 2 * self.head_dim } else { 0 };
        let biases = qk_norm
            + if self.qkv_bias { self.head_shape().qkv_width() } else { 0 }
            + if self.o_bias { h } else { 0 }
            + if self.mlp_bias { self.ffn + h } else { 0 };
        let block = attn + mlp + biases + 2 * norm_params + post_norms;
        self.vocab * h + pos + self.layers * block + norm_params + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_each_architecture() {
        let llama = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
            "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "eos_token_id": [2, 7]});
        let c = ModelConfig::from_hf(&llama, "config.json").unwrap();
        assert_eq!((c.arch, c.head_dim, c.kv_heads, c.eos.clone()), (Arch::Llama, 8, 4, vec![2, 7]));
        assert_eq!(c.rope_theta, Some(10000.0));
        let qwen = json!({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
            "rope_parameters": {"rope_theta": 1e6}});
        let c = ModelConfig::from_hf(&qwen, "config.json").unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.rope_theta, Some(1e6));
        let gpt2 = json!({"architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_layer": 3, "n_head": 4,
            "n_positions": 256, "vocab_size": 50257});
        let c = ModelConfig::from_hf(&gpt2, "config.json").unwrap();
        assert_eq!((c.ffn, c.rope_theta, c.tied_embeddings), (256, None, true));
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let err = |v: Value| format!("{:#}", ModelConfig::from_hf(&v, "m/config.json").unwrap_err());
        assert!(err(json!({"architectures": ["BertForMaskedLM"]}))
            .contains("unsupported architecture 'BertForMaskedLM'"));
        let bert = json!({"architectures": ["BertModel"], "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 32,
            "hidden_act": "relu"});
        assert!(err(bert).contains("hidden_act 'relu' is not supported for BertModel"));
        assert!(err(json!({"architectures": ["LlamaForCausalLM"]})).contains("missing key 'hidden_size'"));
        assert!(err(json!([1, 2])).contains("expected a JSON object"));
        let bad_heads = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 6, "num_key_value_heads": 4, "vocab_size": 10});
        assert!(err(bad_heads).contains("not a multiple"));
        let uneven = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 6, "vocab_size": 10});
        assert!(err(uneven).contains("hidden_size 64 is not a multiple of num_attention_heads 6"));
        let neg = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": -3});
        assert!(err(neg).contains("'hidden_size' must be a positive integer"));
    }

    fn llama(extra: Value) -> Value {
        let mut v = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 512});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn reads_rope_scaling_and_the_new_families() {
        let parse = |v: Value| ModelConfig::from_hf(&v, "config.json").unwrap();
        let c =
            parse(llama(json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}})));
        let want = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 32,
        };
        assert_eq!((c.rope_theta, c.rope_scaling), (Some(5e5), want));
        let c = parse(llama(json!({"rope_scaling": {"type": "linear", "factor": 2.0}})));
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        let smol = llama(json!({"architectures": ["SmolLM3ForCausalLM"], "no_rope_layers": [1, 1, 1, 0]}));
        let c = parse(smol);
        let mistral = llama(json!({"architectures": ["MistralForCausalLM"], "sliding_window": 256}));
        assert_eq!(parse(mistral).max_positions, 256);
        let qwen = llama(
            json!({"architectures": ["Qwen2ForCausalLM"], "sliding_window": 256, "use_sliding_window": false}),
        );
        assert_eq!(parse(qwen).max_positions, 2048);
        assert_eq!((c.arch, c.nope_layers.clone()), (Arch::SmolLm3, vec![3]));
        let c = parse(llama(
            json!({"architectures": ["Qwen3ForCausalLM"], "layer_types": vec!["full_attention"; 4]}),
        ));
        assert!(c.qk_norm && !c.qkv_bias);
        // What a checkpoint writes reads back to the same config.
        for c in [c, parse(llama(json!({"rope_scaling": {"rope_type": "linear", "factor": 4.0}})))] {
            assert_eq!(ModelConfig::from_hf(&c.to_hf_json(), "saved").unwrap(), c);
        }
    }

    /// Llama 3.1's frequencies: short wavelengths kept, long ones divided by the factor,
    /// the ones between blended (transformers' `_compute_llama3_parameters`).
    #[test]
    fn llama3_scaling_keeps_short_and_divides_long_wavelengths() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 32,
        };
        let (plain, scaled) = (RopeScaling::None.inv_freq(5e5, 16), scaling.inv_freq(5e5, 16));
        let wavelen = |f: f32| 2.0 * std::f32::consts::PI / f;
        for (p, s) in plain.iter().zip(&scaled) {
            match wavelen(*p) {
                w if w < 8.0 => assert_eq!(s, p),
                w if w > 32.0 => assert_eq!(*s, p / 8.0),
                _ => assert!(*s < *p && *s > p / 8.0, "{s} between {p} / 8 and {p}"),
            }
        }
        assert!(plain.iter().any(|&p| wavelen(p) < 8.0) && plain.iter().any(|&p| wavelen(p) > 32.0));
    }

    /// Phi-3's longrope (128k context over an original 4k): the short factors, the long ones
    /// past the original context, the attention factor transformers derives, the whole
    /// context.
    #[test]
    fn longrope_reads_both_factors_and_the_whole_context() {
        let phi3 = llama(json!({"architectures": ["Phi3ForCausalLM"], "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096, "partial_rotary_factor": 0.5,
            "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0, 2.0, 4.0, 8.0],
                "long_factor": [9.0, 3.0, 5.0, 7.0]}}));
        let c = ModelConfig::from_hf(&phi3, "config.json").unwrap();
        let attention_factor = (1.0f32 + 32f32.ln() / 4096f32.ln()).sqrt();
        let want = RopeScaling::LongRope {
            short_factor: vec![1.0, 2.0, 4.0, 8.0],
            long_factor: vec![9.0, 3.0, 5.0, 7.0],
            attention_factor,
            original_max_positions: 4096,
        };
        assert_eq!((c.rotary_dim, c.max_positions, &c.rope_scaling), (8, 131072, &want));
        assert_eq!(want.long_past(), Some(4096));
        let plain = RopeScaling::None.inv_freq(1e4, 8);
        assert_eq!(want.inv_freq(1e4, 8), [plain[0], plain[1] / 2.0, plain[2] / 4.0, plain[3] / 8.0]);
        let long = [plain[0] / 9.0, plain[1] / 3.0, plain[2] / 5.0, plain[3] / 7.0];
        assert_eq!(want.long_inv_freq(1e4, 8).unwrap(), long);
        assert_eq!(ModelConfig::from_hf(&c.to_hf_json(), "saved").unwrap(), c);
        let mut short_long = phi3.clone();
        short_long["rope_parameters"]["long_factor"] = json!([1.0, 2.0]);
        let err = format!("{:#}", ModelConfig::from_hf(&short_long, "m/config.json").unwrap_err());
        assert_eq!(err, "m/config.json: long_factor has 2 entries, expected 4 (half the rotated dimensions)");
    }

    fn gemma3(extra: Value) -> Value {
        let mut v = json!({"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "vocab_size": 512, "query_pre_attn_scalar": 24, "sliding_window": 8,
            "hidden_activation": "gelu_pytorch_tanh"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    }

    /// transformers 5's per-layer-type `rope_parameters` and the older flat keys (with the
    /// default pattern of one global block in six) read to the same settings.
    #[test]
    fn reads_gemma3() {
        let parse = |v: Value| ModelConfig::from_hf(&v, "config.json").unwrap();
        let v5 = parse(gemma3(json!({
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}})));
        assert_eq!(
            (v5.arch, v5.norm(), v5.act),
            (Arch::Gemma3, NormKind::RmsUnitOffset, Activation::GeluTanhGate)
        );
        assert!(v5.qk_norm && v5.post_norms && v5.tied_embeddings);
        assert_eq!((v5.embed_scale, v5.attn_scale), (8.0, (24f64).powf(-0.5) as f32));
        assert_eq!((v5.window(1), v5.window(2), v5.max_positions), (Some(8), None, 2048));
        assert_eq!((v5.rope_theta, v5.local_rope_theta), (Some(1e6), Some(1e4)));
        assert_eq!(v5.rope_scaling, RopeScaling::Linear { factor: 8.0 });
        let flat =
            parse(gemma3(json!({"num_hidden_layers": 7, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}})));
        assert_eq!(flat.sliding_layers, [0, 1, 2, 3, 4, 6]);
        assert_eq!((flat.rope_scaling, flat.local_rope_theta), (v5.rope_scaling.clone(), Some(1e4)));
        assert_eq!(ModelConfig::from_hf(&v5.to_hf_json(), "saved").unwrap(), v5);
        let err = |v: Value| format!("{:#}", ModelConfig::from_hf(&v, "m/config.json").unwrap_err());
        let capped = parse(gemma3(json!({"final_logit_softcapping": 30.0})));
        assert_eq!((v5.logit_softcap, capped.logit_softcap), (None, Some(30.0)));
        assert_eq!(ModelConfig::from_hf(&capped.to_hf_json(), "saved").unwrap(), capped);
        assert_eq!(
            err(gemma3(json!({"attn_logit_softcapping": 50.0}))),
            "m/config.json: attn_logit_softcapping 50.0 is not supported (Keel runs attention without soft-capping)"
        );
        assert!(err(llama(json!({"final_logit_softcapping": 30.0}))).contains(
            "final_logit_softcapping 30.0 is not supported for LlamaForCausalLM (Keel applies it to Gemma 3 only)"
        ));
        assert!(err(gemma3(json!({"final_logit_softcapping": -1.0})))
            .contains("'final_logit_softcapping' must be a positive number"));
        let local_yarn = gemma3(json!({"rope_parameters": {"full_attention": {"rope_type": "default"},
            "sliding_attention": {"rope_type": "yarn"}}}));
        assert!(
            err(local_yarn).contains("rope_parameters.sliding_attention.rope_type 'yarn' is not supported")
        );
    }

    #[test]
    fn unknown_rope_and_layer_types_name_the_field() {
        let err = |v: Value| format!("{:#}", ModelConfig::from_hf(&v, "m/config.json").unwrap_err());
        let yarn = llama(json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}));
        assert_eq!(
            err(yarn),
            "m/config.json: rope_scaling.rope_type 'yarn' is not supported (Keel has default, linear, llama3 and longrope)"
        );
        let no_factor = llama(json!({"rope_parameters": {"rope_type": "linear"}}));
        assert!(err(no_factor).contains("rope_parameters.factor must be a positive number"));
        let sliding =
            llama(json!({"layer_types": ["full_attention", "chunked_attention", "full_attention", "x"]}));
        assert!(err(sliding).contains("m/config.json: layer_types[1] is \"chunked_attention\""));
        let flags = llama(json!({"architectures": ["SmolLM3ForCausalLM"], "no_rope_layers": [1, 2, 1, 0]}));
        assert!(err(flags).contains("no_rope_layers[1] is 2, expected 0 or 1"));
    }
}
