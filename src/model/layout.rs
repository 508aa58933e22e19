//! Keel's own weight layout, shared by every architecture: per block a fused QKV
//! projection (`[q; k; v]` rows), an output projection, a fused up projection (`[gate; up]`
//! rows for gated MLPs) and a down projection, all `[out, in]`. Converting from and to
//! Hugging Face names happens here and nowhere else.

use super::config::{Arch, ModelConfig};
use super::weights::HostTensor;
use crate::gpu::WeightFormat;
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct Block<T> {
    pub attn_norm: T,
    pub attn_norm_b: Option<T>,
    pub qkv: T,
    pub qkv_b: Option<T>,
    /// Per-head RMSNorm scales of q and k (Qwen3), `[head_dim]` each.
    pub q_norm: Option<T>,
    pub k_norm: Option<T>,
    pub o: T,
    pub o_b: Option<T>,
    /// Gemma 3's norm of the attention's output, before the residual add.
    pub post_attn_norm: Option<T>,
    pub mlp_norm: T,
    pub mlp_norm_b: Option<T>,
    pub up: T,
    pub up_b: Option<T>,
    pub down: T,
    pub down_b: Option<T>,
    /// Gemma 3's norm of the MLP's output, before the residual add.
    pub post_mlp_norm: Option<T>,
}

#[derive(Clone, Debug)]
pub struct Weights<T> {
    pub embed: T,
    pub pos_embed: Option<T>,
    pub blocks: Vec<Block<T>>,
    pub final_norm: T,
    pub final_norm_b: Option<T>,
    /// None when tied to `embed`.
    pub lm_head: Option<T>,
}

/// The four linear layers of a block in Keel's fused layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Linear {
    /// `[q; k; v]` rows.
    Qkv,
    O,
    /// `[gate; up]` rows for gated MLPs.
    Up,
    Down,
}

impl<T> Block<T> {
    /// The weight of one linear layer.
    pub fn linear(&self, which: Linear) -> &T {
        match which {
            Linear::Qkv => &self.qkv,
            Linear::O => &self.o,
            Linear::Up => &self.up,
            Linear::Down => &self.down,
        }
    }

    /// The bias of one linear layer, if it has one.
    pub fn linear_bias(&self, which: Linear) -> Option<&T> {
        match which {
            Linear::Qkv => self.qkv_b.as_ref(),
            Linear::O => self.o_b.as_ref(),
            Linear::Up => self.up_b.as_ref(),
            Linear::Down => self.down_b.as_ref(),
        }
    }

    /// Every tensor with its name inside the block (`qkv`, `qkv_b`, ...).
    pub fn named(&self) -> Vec<(&'static str, &T)> {
        let mut v = vec![("attn_norm", &self.attn_norm)];
        v.extend(self.attn_norm_b.as_ref().map(|t| ("attn_norm_b", t)));
        v.push(("qkv", &self.qkv));
        v.extend(self.qkv_b.as_ref().map(|t| ("qkv_b", t)));
        v.extend(self.q_norm.as_ref().map(|t| ("q_norm", t)));
        v.extend(self.k_norm.as_ref().map(|t| ("k_norm", t)));
        v.push(("o", &self.o));
        v.extend(self.o_b.as_ref().map(|t| ("o_b", t)));
        v.extend(self.post_attn_norm.as_ref().map(|t| ("post_attn_norm", t)));
        v.push(("mlp_norm", &self.mlp_norm));
        v.extend(self.mlp_norm_b.as_ref().map(|t| ("mlp_norm_b", t)));
        v.push(("up", &self.up));
        v.extend(self.up_b.as_ref().map(|t| ("up_b", t)));
        v.push(("down", &self.down));
        v.extend(self.down_b.as_ref().map(|t| ("down_b", t)));
        v.extend(self.post_mlp_norm.as_ref().map(|t| ("post_mlp_norm", t)));
        v
    }

    pub fn try_map<U>(&self, mut f: impl FnMut(&str, &T) -> Result<U>) -> Result<Block<U>> {
        let mut opt = |name: &str, t: &Option<T>| t.as_ref().map(|t| f(name, t)).transpose();
        let (attn_norm_b, qkv_b, o_b) =
            (opt("attn_norm_b", &self.attn_norm_b)?, opt("qkv_b", &self.qkv_b)?, opt("o_b", &self.o_b)?);
        let (q_norm, k_norm) = (opt("q_norm", &self.q_norm)?, opt("k_norm", &self.k_norm)?);
        let (mlp_norm_b, up_b, down_b) =
            (opt("mlp_norm_b", &self.mlp_norm_b)?, opt("up_b", &self.up_b)?, opt("down_b", &self.down_b)?);
        let (post_attn_norm, post_mlp_norm) =
            (opt("post_attn_norm", &self.post_attn_norm)?, opt("post_mlp_norm", &self.post_mlp_norm)?);
        Ok(Block {
            attn_norm: f("attn_norm", &self.attn_norm)?,
            attn_norm_b,
            qkv: f("qkv", &self.qkv)?,
            qkv_b,
            q_norm,
            k_norm,
            o: f("o", &self.o)?,
            o_b,
            post_attn_norm,
            mlp_norm: f("mlp_norm", &self.mlp_norm)?,
            mlp_norm_b,
            up: f("up", &self.up)?,
            up_b,
            down: f("down", &self.down)?,
            down_b,
            post_mlp_norm,
        })
    }
}

impl<T> Weights<T> {
    /// Applies `f` to every tensor; `f` gets Keel's name (`embed`, `blocks.3.qkv`, ...).
    pub fn try_map<U>(&self, mut f: impl FnMut(&str, &T) -> Result<U>) -> Result<Weights<U>> {
        let blocks = self
            .blocks
            .iter()
            .enumerate()
            .map(|(l, b)| b.try_map(|name, t| f(&format!("blocks.{l}.{name}"), t)))
            .collect::<Result<_>>()?;
        Ok(Weights {
            embed: f("embed", &self.embed)?,
            pos_embed: self.pos_embed.as_ref().map(|t| f("pos_embed", t)).transpose()?,
            blocks,
            final_norm: f("final_norm", &self.final_norm)?,
            final_norm_b: self.final_norm_b.as_ref().map(|t| f("final_norm_b", t)).transpose()?,
            lm_head: self.lm_head.as_ref().map(|t| f("lm_head", t)).transpose()?,
        })
    }

    /// The LM head matrix (the embedding when tied).
    pub fn head(&self) -> &T {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Every tensor with Keel's name (`embed`, `blocks.3.qkv`, ...), in a fixed order.
    pub fn named(&self) -> Vec<(String, &T)> {
        let mut v = vec![("embed".to_string(), &self.embed)];
        v.extend(self.pos_embed.as_ref().map(|t| ("pos_embed".to_string(), t)));
        for (l, b) in self.blocks.iter().enumerate() {
            v.extend(b.named().into_iter().map(|(name, t)| (format!("blocks.{l}.{name}"), t)));
        }
        v.push(("final_norm".to_string(), &self.final_norm));
        v.extend(self.final_norm_b.as_ref().map(|t| ("final_norm_b".to_string(), t)));
        v.extend(self.lm_head.as_ref().map(|t| ("lm_head".to_string(), t)));
        v
    }
}

/// Takes tensors out of a name → tensor map, checking shapes.
struct Source<'a> {
    tensors: HashMap<String, HostTensor>,
    file: &'a str,
}

impl Source<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.tensors.remove(name).ok_or_else(|| missing(self.file, name, shape))?;
        check_tensor(self.file, &t, shape)?;
        Ok(t)
    }
}

/// The error for a tensor the model needs and the files lack.
pub fn missing(file: &str, name: &str, shape: &[usize]) -> anyhow::Error {
    anyhow!("{file}: missing tensor '{name}' (expected shape {shape:?})")
}

/// Checks a Hugging Face tensor's shape and that its values are finite.
pub fn check_tensor(file: &str, t: &HostTensor, shape: &[usize]) -> Result<()> {
    let name = &t.name;
    if t.shape != shape {
        bail!("{file}: tensor '{name}' has shape {:?}, expected {shape:?}", t.shape);
    }
    if let Some((i, v)) = t.first_non_finite() {
        bail!("{file}: tensor '{name}' holds a non-finite value ({v}) at element {i}");
    }
    Ok(())
}

/// Row-wise concatenation of `[r_i, c]` tensors.
fn concat_rows(name: &str, parts: Vec<HostTensor>) -> HostTensor {
    let cols = parts[0].shape.get(1).copied();
    let rows: usize = parts.iter().map(|t| t.shape[0]).sum();
    let shape = cols.map_or(vec![rows], |c| vec![rows, c]);
    // Packed rows concatenate like f32 rows, when every part has the same format.
    let fmt = parts[0].format();
    if fmt != WeightFormat::F32 && parts.iter().all(|t| t.format() == fmt) {
        let words = parts.iter().flat_map(|t| t.packed_words().unwrap().1.iter().copied()).collect();
        return HostTensor::packed(name, shape, fmt, words);
    }
    HostTensor::new(name, shape, parts.into_iter().flat_map(HostTensor::into_values).collect())
}

/// Conv1D stores `[in, out]`; Keel wants `[out, in]`.
pub fn transpose(t: HostTensor) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let values = t.values();
    let mut data = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            data[j * r + i] = values[i * c + j];
        }
    }
    HostTensor::new(t.name, vec![c, r], data)
}

/// How a Hugging Face tensor's values are rearranged into Keel's layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reorder {
    Keep,
    /// GPT-2's Conv1D stores `[in, out]`.
    Transpose,
    /// GPT-NeoX's `query_key_value` holds per head `[q_h; k_h; v_h]` rows of `dim`; Keel's
    /// QKV is `[q; k; v]`.
    HeadsInterleaved {
        heads: usize,
        dim: usize,
    },
}

impl Reorder {
    /// The Hugging Face tensor in Keel's layout.
    pub fn apply(self, t: HostTensor) -> HostTensor {
        match self {
            Reorder::Keep => t,
            Reorder::Transpose => transpose(t),
            Reorder::HeadsInterleaved { heads, dim } => permute_rows(t, |r| {
                let (head, part, i) = (r / (3 * dim), r / dim % 3, r % dim);
                (part * heads + head) * dim + i
            }),
        }
    }

    /// Keel's tensor back in the Hugging Face layout.
    pub fn undo(self, t: HostTensor) -> HostTensor {
        match self {
            Reorder::Keep => t,
            Reorder::Transpose => transpose(t),
            Reorder::HeadsInterleaved { heads, dim } => permute_rows(t, |r| {
                let (part, head, i) = (r / (heads * dim), r / dim % heads, r % dim);
                (head * 3 + part) * dim + i
            }),
        }
    }
}

/// Row `r` of `t` moved to row `to(r)` (a permutation) of a tensor of the same shape.
fn permute_rows(t: HostTensor, to: impl Fn(usize) -> usize) -> HostTensor {
    let cols: usize = t.shape[1..].iter().product();
    let values = t.values();
    let mut out = vec![0.0; values.len()];
    for (r, row) in values.chunks(cols).enumerate() {
        out[to(r) * cols..(to(r) + 1) * cols].copy_from_slice(row);
    }
    HostTensor::new(t.name.clone(), t.shape.clone(), out)
}

/// Where one Hugging Face tensor of shape `shape` goes in Keel's layout: at row `row` of
/// Keel's tensor `keel` (a name of [`Weights::named`]), rearranged first by `reorder`.
#[derive(Clone, Debug, PartialEq)]
pub struct HfPlace {
    pub hf: String,
    pub shape: Vec<usize>,
    pub keel: String,
    pub row: usize,
    pub reorder: Reorder,
}

/// Collects the places of one model while its Keel shapes are built.
#[derive(Default)]
struct Plan {
    places: Vec<HfPlace>,
}

impl Plan {
    /// Keel tensor `keel` made of the Hugging Face tensors `parts` stacked by rows; its shape.
    fn rows(&mut self, keel: &str, parts: &[(String, Vec<usize>)]) -> Vec<usize> {
        let mut row = 0;
        for (hf, shape) in parts {
            let place = HfPlace {
                hf: hf.clone(),
                shape: shape.clone(),
                keel: keel.into(),
                row,
                reorder: Reorder::Keep,
            };
            self.places.push(place);
            row += shape[0];
        }
        let mut shape = parts[0].1.clone();
        shape[0] = row;
        shape
    }
    fn one(&mut self, keel: &str, hf: String, shape: &[usize]) -> Vec<usize> {
        self.rows(keel, &[(hf, shape.to_vec())])
    }
    /// A Conv1D weight `[in, out]`, which Keel holds as `[out, in]`.
    fn conv1d(&mut self, keel: &str, hf: String, shape: [usize; 2]) -> Vec<usize> {
        let place =
            HfPlace { hf, shape: shape.to_vec(), keel: keel.into(), row: 0, reorder: Reorder::Transpose };
        self.places.push(place);
        vec![shape[1], shape[0]]
    }
}

/// Keel's tensors of `cfg` (their shapes) and where each Hugging Face tensor goes in them,
/// in Keel's order. A tied model's `lm_head.weight`, which some checkpoints still carry, has
/// no place: the embedding wins.
pub fn hf_layout(cfg: &ModelConfig) -> (Weights<Vec<usize>>, Vec<HfPlace>) {
    let mut plan = Plan::default();
    let (h, f) = (cfg.hidden, cfg.ffn);
    let qd = cfg.heads * cfg.head_dim;
    let kvd = cfg.kv_heads * cfg.head_dim;
    let weights = if cfg.arch == Arch::GptNeoX {
        neox_layout(cfg, &mut plan)
    } else if cfg.arch == Arch::Bert {
        bert_layout(cfg, &mut plan)
    } else if cfg.arch == Arch::Gpt2 {
        let embed = plan.one("embed", "transformer.wte.weight".into(), &[cfg.vocab, h]);
        let pos_embed = Some(plan.one("pos_embed", "transformer.wpe.weight".into(), &[cfg.max_positions, h]));
        let blocks = (0..cfg.layers)
            .map(|l| {
                let (p, k) = (format!("transformer.h.{l}"), format!("blocks.{l}"));
                let mut one = |name: &str, hf: &str, shape: &[usize]| {
                    plan.one(&format!("{k}.{name}"), format!("{p}.{hf}"), shape)
                };
                let attn_norm = one("attn_norm", "ln_1.weight", &[h]);
                let attn_norm_b = Some(one("attn_norm_b", "ln_1.bias", &[h]));
                let qkv_b = Some(one("qkv_b", "attn.c_attn.bias", &[3 * h]));
                let o_b = Some(one("o_b", "attn.c_proj.bias", &[h]));
                let mlp_norm = one("mlp_norm", "ln_2.weight", &[h]);
                let mlp_norm_b = Some(one("mlp_norm_b", "ln_2.bias", &[h]));
                let up_b = Some(one("up_b", "mlp.c_fc.bias", &[f]));
                let down_b = Some(one("down_b", "mlp.c_proj.bias", &[h]));
                let mut conv1d = |name: &str, hf: &str, shape| {
                    plan.conv1d(&format!("{k}.{name}"), format!("{p}.{hf}"), shape)
                };
                Block {
                    attn_norm,
                    attn_norm_b,
                    qkv: conv1d("qkv", "attn.c_attn.weight", [h, 3 * h]),
                    qkv_b,
                    q_norm: None,
                    k_norm: None,
                    o: conv1d("o", "attn.c_proj.weight", [h, h]),
                    o_b,
                    post_attn_norm: None,
                    mlp_norm,
                    mlp_norm_b,
                    up: conv1d("up", "mlp.c_fc.weight", [h, f]),
                    up_b,
                    down: conv1d("down", "mlp.c_proj.weight", [f, h]),
                    down_b,
                    post_mlp_norm: None,
                }
            })
            .collect();
        Weights {
            embed,
            pos_embed,
            blocks,
            final_norm: plan.one("final_norm", "transformer.ln_f.weight".into(), &[h]),
            final_norm_b: Some(plan.one("final_norm_b", "transformer.ln_f.bias".into(), &[h])),
            lm_head: (!cfg.tied_embeddings)
                .then(|| plan.one("lm_head", "lm_head.weight".into(), &[cfg.vocab, h])),
        }
    } else {
        let embed = plan.one("embed", "model.embed_tokens.weight".into(), &[cfg.vocab, h]);
        // Phi-3 stores Keel's fused layout as it is: `qkv_proj` is [q; k; v], `gate_up_proj` [gate; up].
        let fused = cfg.arch == Arch::Phi3;
        let blocks = (0..cfg.layers)
            .map(|l| {
                let (p, k) = (format!("model.layers.{l}"), format!("blocks.{l}"));
                let a = format!("{p}.self_attn");
                let qkv = |kind: &str, cols: &[usize]| {
                    [("q", qd), ("k", kvd), ("v", kvd)]
                        .map(|(x, n)| (format!("{a}.{x}_proj.{kind}"), [&[n], cols].concat()))
                };
                Block {
                    attn_norm: plan.one(
                        &format!("{k}.attn_norm"),
                        format!("{p}.input_layernorm.weight"),
                        &[h],
                    ),
                    attn_norm_b: None,
                    qkv: if fused {
                        plan.one(&format!("{k}.qkv"), format!("{a}.qkv_proj.weight"), &[qd + 2 * kvd, h])
                    } else {
                        plan.rows(&format!("{k}.qkv"), &qkv("weight", &[h]))
                    },
                    qkv_b: cfg.qkv_bias.then(|| plan.rows(&format!("{k}.qkv_b"), &qkv("bias", &[]))),
                    q_norm: cfg.qk_norm.then(|| {
                        plan.one(&format!("{k}.q_norm"), format!("{a}.q_norm.weight"), &[cfg.head_dim])
                    }),
                    k_norm: cfg.qk_norm.then(|| {
                        plan.one(&format!("{k}.k_norm"), format!("{a}.k_norm.weight"), &[cfg.head_dim])
                    }),
                    o: plan.one(&format!("{k}.o"), format!("{a}.o_proj.weight"), &[h, qd]),
                    o_b: cfg.o_bias.then(|| plan.one(&format!("{k}.o_b"), format!("{a}.o_proj.bias"), &[h])),
                    // Gemma 3's `post_attention_layernorm` is the attention's post-norm; its
                    // MLP's input norm is `pre_feedforward_layernorm`.
                    post_attn_norm: cfg.post_norms.then(|| {
                        plan.one(
                            &format!("{k}.post_attn_norm"),
                            format!("{p}.post_attention_layernorm.weight"),
                            &[h],
                        )
                    }),
                    mlp_norm: plan.one(
                        &format!("{k}.mlp_norm"),
                        if cfg.post_norms {
                            format!("{p}.pre_feedforward_layernorm.weight")
                        } else {
                            format!("{p}.post_attention_layernorm.weight")
                        },
                        &[h],
                    ),
                    mlp_norm_b: None,
                    up: if fused {
                        plan.one(&format!("{k}.up"), format!("{p}.mlp.gate_up_proj.weight"), &[2 * f, h])
                    } else {
                        plan.rows(
                            &format!("{k}.up"),
                            &[
                                (format!("{p}.mlp.gate_proj.weight"), vec![f, h]),
                                (format!("{p}.mlp.up_proj.weight"), vec![f, h]),
                            ],
                        )
                    },
                    up_b: None,
                    down: plan.one(&format!("{k}.down"), format!("{p}.mlp.down_proj.weight"), &[h, f]),
                    down_b: None,
                    post_mlp_norm: cfg.post_norms.then(|| {
                        plan.one(
                            &format!("{k}.post_mlp_norm"),
                            format!("{p}.post_feedforward_layernorm.weight"),
                            &[h],
                        )
                    }),
                }
            })
            .collect();
        Weights {
            embed,
            pos_embed: None,
            blocks,
            final_norm: plan.one("final_norm", "model.norm.weight".into(), &[h]),
            final_norm_b: None,
            lm_head: (!cfg.tied_embeddings)
                .then(|| plan.one("lm_head", "lm_head.weight".into(), &[cfg.vocab, h])),
        }
    };
    (weights, plan.places)
}

/// GPT-NeoX's names: LayerNorms and linears with biases, q/k/v interleaved per head.
fn neox_layout(cfg: &ModelConfig, plan: &mut Plan) -> Weights<Vec<usize>> {
    let (h, f) = (cfg.hidden, cfg.ffn);
    let interleaved = Reorder::HeadsInterleaved { heads: cfg.heads, dim: cfg.head_dim };
    let blocks = (0..cfg.layers)
        .map(|l| {
            let (p, k) = (format!("gpt_neox.layers.{l}"), format!("blocks.{l}"));
            let mut one = |name: &str, hf: &str, shape: &[usize]| {
                plan.one(&format!("{k}.{name}"), format!("{p}.{hf}"), shape)
            };
            let block = Block {
                attn_norm: one("attn_norm", "input_layernorm.weight", &[h]),
                attn_norm_b: Some(one("attn_norm_b", "input_layernorm.bias", &[h])),
                qkv: one("qkv", "attention.query_key_value.weight", &[3 * h, h]),
                qkv_b: cfg.qkv_bias.then(|| one("qkv_b", "attention.query_key_value.bias", &[3 * h])),
                q_norm: None,
                k_norm: None,
                o: one("o", "attention.dense.weight", &[h, h]),
                o_b: cfg.o_bias.then(|| one("o_b", "attention.dense.bias", &[h])),
                mlp_norm: one("mlp_norm", "post_attention_layernorm.weight", &[h]),
                mlp_norm_b: Some(one("mlp_norm_b", "post_attention_layernorm.bias", &[h])),
                up: one("up", "mlp.dense_h_to_4h.weight", &[f, h]),
                up_b: Some(one("up_b", "mlp.dense_h_to_4h.bias", &[f])),
                down: one("down", "mlp.dense_4h_to_h.weight", &[h, f]),
                down_b: Some(one("down_b", "mlp.dense_4h_to_h.bias", &[h])),
                post_attn_norm: None,
                post_mlp_norm: None,
            };
            let qkv = [
                format!("{p}.attention.query_key_value.weight"),
                format!("{p}.attention.query_key_value.bias"),
            ];
            for place in plan.places.iter_mut().filter(|place| qkv.contains(&place.hf)) {
                place.reorder = interleaved;
            }
            block
        })
        .collect();
    Weights {
        embed: plan.one("embed", "gpt_neox.embed_in.weight".into(), &[cfg.vocab, h]),
        pos_embed: None,
        blocks,
        final_norm: plan.one("final_norm", "gpt_neox.final_layer_norm.weight".into(), &[h]),
        final_norm_b: Some(plan.one("final_norm_b", "gpt_neox.final_layer_norm.bias".into(), &[h])),
        lm_head: (!cfg.tied_embeddings)
            .then(|| plan.one("lm_head", "embed_out.weight".into(), &[cfg.vocab, h])),
    }
}

/// BertModel's names. Post-norm: a block's `attn_norm` is the LayerNorm after the attention's
/// residual add, `mlp_norm` the one after the MLP's, and `final_norm` the embedding's
/// LayerNorm (the one norm outside the blocks, which a post-norm model applies first). The
/// token-type embedding is folded into the positions by [`Weights::from_hf`].
fn bert_layout(cfg: &ModelConfig, plan: &mut Plan) -> Weights<Vec<usize>> {
    let (h, f) = (cfg.hidden, cfg.ffn);
    let blocks = (0..cfg.layers)
        .map(|l| {
            let (p, k) = (format!("encoder.layer.{l}"), format!("blocks.{l}"));
            let qkv = |kind: &str| {
                let cols: &[usize] = if kind == "weight" { &[h] } else { &[] };
                ["query", "key", "value"]
                    .map(|x| (format!("{p}.attention.self.{x}.{kind}"), [&[h], cols].concat()))
            };
            let qkv_w = plan.rows(&format!("{k}.qkv"), &qkv("weight"));
            let qkv_b = plan.rows(&format!("{k}.qkv_b"), &qkv("bias"));
            let mut one = |name: &str, hf: &str, shape: &[usize]| {
                plan.one(&format!("{k}.{name}"), format!("{p}.{hf}"), shape)
            };
            Block {
                attn_norm: one("attn_norm", "attention.output.LayerNorm.weight", &[h]),
                attn_norm_b: Some(one("attn_norm_b", "attention.output.LayerNorm.bias", &[h])),
                qkv: qkv_w,
                qkv_b: Some(qkv_b),
                q_norm: None,
                k_norm: None,
                post_attn_norm: None,
                post_mlp_norm: None,
                o: one("o", "attention.output.dense.weight", &[h, h]),
                o_b: Some(one("o_b", "attention.output.dense.bias", &[h])),
                mlp_norm: one("mlp_norm", "output.LayerNorm.weight", &[h]),
                mlp_norm_b: Some(one("mlp_norm_b", "output.LayerNorm.bias", &[h])),
                up: one("up", "intermediate.dense.weight", &[f, h]),
                up_b: Some(one("up_b", "intermediate.dense.bias", &[f])),
                down: one("down", "output.dense.weight", &[h, f]),
                down_b: Some(one("down_b", "output.dense.bias", &[h])),
            }
        })
        .collect();
    Weights {
        embed: plan.one("embed", BERT_WORDS.into(), &[cfg.vocab, h]),
        pos_embed: Some(plan.one("pos_embed", BERT_POSITIONS.into(), &[cfg.max_positions, h])),
        blocks,
        final_norm: plan.one("final_norm", "embeddings.LayerNorm.weight".into(), &[h]),
        final_norm_b: Some(plan.one("final_norm_b", "embeddings.LayerNorm.bias".into(), &[h])),
        lm_head: None,
    }
}

const BERT_WORDS: &str = "embeddings.word_embeddings.weight";
const BERT_POSITIONS: &str = "embeddings.position_embeddings.weight";
const BERT_TYPES: &str = "embeddings.token_type_embeddings.weight";

/// Adds BERT's token-type-0 embedding to every position's: Keel encodes single texts, whose
/// tokens are all of type 0, so the two sums are one table.
fn fold_token_type(cfg: &ModelConfig, src: &mut Source) -> Result<()> {
    let h = cfg.hidden;
    let types = src.tensors.remove(BERT_TYPES).ok_or_else(|| missing(src.file, BERT_TYPES, &[2, h]))?;
    if types.shape.len() != 2 || types.shape[1] != h {
        bail!(
            "{}: tensor '{BERT_TYPES}' has shape {:?}, expected [type_vocab_size, {h}]",
            src.file,
            types.shape
        );
    }
    let Some(pos) = src.tensors.remove(BERT_POSITIONS) else { return Ok(()) };
    let type0 = types.values()[..h].to_vec();
    let mut values = pos.values().into_owned();
    values.iter_mut().enumerate().for_each(|(i, v)| *v += type0[i % h]);
    src.tensors.insert(BERT_POSITIONS.into(), HostTensor::new(pos.name.clone(), pos.shape.clone(), values));
    Ok(())
}

impl Weights<HostTensor> {
    /// Builds Keel's layout from Hugging Face-named tensors ([`hf_layout`]'s places); `file`
    /// names the source in errors.
    pub fn from_hf(cfg: &ModelConfig, tensors: HashMap<String, HostTensor>, file: &str) -> Result<Self> {
        let mut src = Source { tensors, file };
        if cfg.arch == Arch::Bert {
            fold_token_type(cfg, &mut src)?;
        }
        let (shapes, places) = hf_layout(cfg);
        let mut by_keel: HashMap<&str, Vec<&HfPlace>> = HashMap::new();
        for p in &places {
            by_keel.entry(p.keel.as_str()).or_default().push(p);
        }
        shapes.try_map(|keel, _| {
            let mut parts = by_keel[keel]
                .iter()
                .map(|p| src.take(&p.hf, &p.shape).map(|t| p.reorder.apply(t)))
                .collect::<Result<Vec<_>>>()?;
            Ok(match parts.len() {
                1 => parts.pop().unwrap(),
                _ => concat_rows(keel.rsplit('.').next().unwrap_or(keel), parts),
            })
        })
    }
}

/// Splits a `[rows, cols]` (or `[rows]`) tensor into consecutive row blocks of the given
/// sizes, named `names`: the inverse of [`concat_rows`].
fn split_rows(t: &HostTensor, parts: &[(String, usize)]) -> Vec<HostTensor> {
    let cols: usize = t.shape[1..].iter().product();
    let values = t.values();
    let mut at = 0;
    parts
        .iter()
        .map(|(name, rows)| {
            let data = values[at * cols..(at + rows) * cols].to_vec();
            at += rows;
            let mut shape = t.shape.clone();
            shape[0] = *rows;
            HostTensor::new(name.clone(), shape, data)
        })
        .collect()
}

impl Weights<HostTensor> {
    /// Hugging Face-named tensors of this model: the inverse of [`Weights::from_hf`] (fused
    /// matrices split, GPT-2's Conv1D weights transposed back; no `lm_head.weight` when tied).
    pub fn to_hf(&self, cfg: &ModelConfig) -> Vec<HostTensor> {
        let named =
            |name: String, t: &HostTensor| HostTensor::new(name, t.shape.clone(), t.values().into_owned());
        let mut out = Vec::new();
        if matches!(cfg.arch, Arch::GptNeoX | Arch::Phi3 | Arch::Bert) {
            // Undo each place's reordering; a Keel tensor of several places (BERT's QKV) is
            // split back into them.
            let (_, places) = hf_layout(cfg);
            let mut by_keel: HashMap<String, Vec<&HfPlace>> = HashMap::new();
            for p in &places {
                by_keel.entry(p.keel.clone()).or_default().push(p);
            }
            for (keel, t) in self.named() {
                match &by_keel[&keel][..] {
                    [place] => out.push(place.reorder.undo(named(place.hf.clone(), t))),
                    parts => out.extend(split_rows(
                        t,
                        &parts.iter().map(|p| (p.hf.clone(), p.shape[0])).collect::<Vec<_>>(),
                    )),
                }
            }
            if cfg.arch == Arch::Bert {
                // The type-0 embedding is inside the positions already.
                out.push(HostTensor::new(
                    BERT_TYPES.to_string(),
                    vec![2, cfg.hidden],
                    vec![0.0; 2 * cfg.hidden],
                ));
            }
            return out;
        }
        if cfg.arch == Arch::Gpt2 {
            let conv1d = |name: String, t: &HostTensor| {
                let mut t = transpose(t.clone());
                t.name = name;
                t
            };
            out.push(named("transformer.wte.weight".into(), &self.embed));
            if let Some(p) = &self.pos_embed {
                out.push(named("transformer.wpe.weight".into(), p));
            }
            for (l, b) in self.blocks.iter().enumerate() {
                let p = format!("transformer.h.{l}");
                out.push(named(format!("{p}.ln_1.weight"), &b.attn_norm));
                out.extend(b.attn_norm_b.as_ref().map(|t| named(format!("{p}.ln_1.bias"), t)));
                out.push(conv1d(format!("{p}.attn.c_attn.weight"), &b.qkv));
                out.extend(b.qkv_b.as_ref().map(|t| named(format!("{p}.attn.c_attn.bias"), t)));
                out.push(conv1d(format!("{p}.attn.c_proj.weight"), &b.o));
                out.extend(b.o_b.as_ref().map(|t| named(format!("{p}.attn.c_proj.bias"), t)));
                out.push(named(format!("{p}.ln_2.weight"), &b.mlp_norm));
                out.extend(b.mlp_norm_b.as_ref().map(|t| named(format!("{p}.ln_2.bias"), t)));
                out.push(conv1d(format!("{p}.mlp.c_fc.weight"), &b.up));
                out.extend(b.up_b.as_ref().map(|t| named(format!("{p}.mlp.c_fc.bias"), t)));
                out.push(conv1d(format!("{p}.mlp.c_proj.weight"), &b.down));
                out.extend(b.down_b.as_ref().map(|t| named(format!("{p}.mlp.c_proj.bias"), t)));
            }
            out.push(named("transformer.ln_f.weight".into(), &self.final_norm));
            out.extend(self.final_norm_b.as_ref().map(|t| named("transformer.ln_f.bias".into(), t)));
        } else {
            let (qd, kvd) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
            out.push(named("model.embed_tokens.weight".into(), &self.embed));
            for (l, b) in self.blocks.iter().enumerate() {
                let p = format!("model.layers.{l}");
                let a = format!("{p}.self_attn");
                out.push(named(format!("{p}.input_layernorm.weight"), &b.attn_norm));
                let qkv = |kind: &str| {
                    [("q", qd), ("k", kvd), ("v", kvd)].map(|(x, n)| (format!("{a}.{x}_proj.{kind}"), n))
                };
                out.extend(split_rows(&b.qkv, &qkv("weight")));
                out.extend(b.qkv_b.as_ref().map(|t| split_rows(t, &qkv("bias"))).unwrap_or_default());
                out.extend(b.q_norm.as_ref().map(|t| named(format!("{a}.q_norm.weight"), t)));
                out.extend(b.k_norm.as_ref().map(|t| named(format!("{a}.k_norm.weight"), t)));
                out.push(named(format!("{a}.o_proj.weight"), &b.o));
                out.extend(b.o_b.as_ref().map(|t| named(format!("{a}.o_proj.bias"), t)));
                match &b.post_attn_norm {
                    Some(post) => {
                        out.push(named(format!("{p}.post_attention_layernorm.weight"), post));
                        out.push(named(format!("{p}.pre_feedforward_layernorm.weight"), &b.mlp_norm));
                    }
                    None => out.push(named(format!("{p}.post_attention_layernorm.weight"), &b.mlp_norm)),
                }
                let up = [
                    (format!("{p}.mlp.gate_proj.weight"), cfg.ffn),
                    (format!("{p}.mlp.up_proj.weight"), cfg.ffn),
                ];
                out.extend(split_rows(&b.up, &up));
                out.push(named(format!("{p}.mlp.down_proj.weight"), &b.down));
                out.extend(
                    b.post_mlp_norm
                        .as_ref()
                        .map(|t| named(format!("{p}.post_feedforward_layernorm.weight"), t)),
                );
            }
            out.push(named("model.norm.weight".into(), &self.final_norm));
        }
        out.extend(self.lm_head.as_ref().map(|t| named("lm_head.weight".into(), t)));
        out
    }
}

impl Weights<HostTensor> {
    /// Pseudo-random weights of `cfg`'s shapes (what `keel bench --shapes` runs: speed does
    /// not depend on the values). Matrices are uniform in ±1/√in, so activations stay of
    /// order one through the blocks; norm scales are one (Gemma's `1 + w`: w zero) and biases zero.
    pub fn random(cfg: &ModelConfig, seed: u64) -> Weights<HostTensor> {
        let mut rng = crate::rng::Rng::seed_from_u64(seed);
        let unit = if cfg.norm() == crate::ops::norm::NormKind::RmsUnitOffset { 0.0 } else { 1.0 };
        let (shapes, _) = hf_layout(cfg);
        let random = shapes.try_map(|name, shape| {
            let data = match shape[..] {
                [rows, cols] => {
                    let bound = 1.0 / (cols as f64).sqrt();
                    (0..rows * cols).map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32).collect()
                }
                // Biases are `…_b`; the other vectors are norm scales.
                _ => vec![if name.ends_with("_b") { 0.0 } else { unit }; shape.iter().product()],
            };
            Ok(HostTensor::new(name, shape.clone(), data))
        });
        random.expect("random weights cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shapes(w: &Weights<HostTensor>) -> Vec<(String, Vec<usize>)> {
        w.named().into_iter().map(|(name, t)| (name, t.shape.clone())).collect()
    }

    /// Random weights have exactly the tensors and shapes the loader gives each architecture.
    #[test]
    fn random_weights_have_the_loaded_shapes() {
        for name in ["stories260k", "tiny-qwen2", "tiny-gpt2"] {
            let Some(dir) = crate::testing::model(name) else { continue };
            let loaded = crate::model::load(&dir).unwrap();
            let random = Weights::random(&loaded.config, 7);
            assert_eq!(shapes(&random), shapes(&loaded.weights), "{name}");
            let embed = &random.embed.values();
            let bound = 1.0 / (loaded.config.hidden as f32).sqrt();
            assert!(embed.iter().all(|v| v.abs() <= bound) && embed.iter().any(|v| v.abs() > bound / 2.0));
        }
    }

    /// GPT-NeoX's per-head `[q_h; k_h; v_h]` rows become `[q; k; v]`, and back.
    #[test]
    fn interleaved_heads_reorder_and_back() {
        let reorder = Reorder::HeadsInterleaved { heads: 2, dim: 1 };
        // Rows q0 k0 v0 q1 k1 v1, two columns each.
        let hf = HostTensor::new("qkv", vec![6, 2], (0..12).map(|v| v as f32).collect());
        let keel = reorder.apply(hf.clone());
        assert_eq!(keel.values()[..], [0., 1., 6., 7., 2., 3., 8., 9., 4., 5., 10., 11.]);
        assert_eq!(reorder.undo(keel).values(), hf.values());
    }

    /// data/configs/smollm2-135m.json (what `keel bench --shapes` runs on machines the 98 MB
    /// model cannot reach) describes the same model as the SmolLM2 GGUF's metadata.
    #[test]
    fn smollm2_shapes_config_matches_the_gguf() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let Some(gguf) =
            crate::testing::fixture("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        else {
            return;
        };
        let text = std::fs::read(root.join("data/configs/smollm2-135m.json")).unwrap();
        let ours = crate::model::load::parse_config(&text, "smollm2-135m.json").unwrap();
        let theirs = crate::model::load(&gguf).unwrap().info.config;
        let ours_no_max = ModelConfig { max_positions: theirs.max_positions, ..ours.clone() };
        assert_eq!(ours_no_max, theirs);
        assert!(ours.max_positions >= 640, "the benchmark's 512 + 128 tokens must fit");
    }
}
