//! The forward pass on the GPU, recorded into one [`Step`]: embedding, every block, and
//! the LM head with log-softmax statistics. Rows are tokens; each row carries its
//! (sequence, position), so one recording serves prefill, batched decode and training.
//!
//! Hook point `blocks.{l}.resid_post` is the residual stream `x` right after block `l`.

use super::config::ModelConfig;
use super::layout::{Block, Linear, Weights};
use super::load::LoadedModel;
use super::lora::BlockLora;
use super::weights::HostTensor;
use crate::gpu::wfmt::{self, WeightFormat};
use crate::gpu::{DType, Gpu, Sharded, Step, Tensor};
use crate::modulate::LcmState;
use crate::ops::act::{self, Activation};
use crate::ops::dequant::dequantize;
use crate::ops::lcm::Modulation;
use crate::ops::matmul::Prologue;
use crate::ops::norm::{NormKind, RowLayout};
use crate::ops::{attention, embed, matmul, norm, rope, softcap, stats};
use anyhow::{bail, Result};

/// A model whose weights live on the GPU, with the device that holds them.
pub struct GpuModel {
    /// The device the weights live on (the process-wide one: [`Gpu::shared`] natively, the
    /// page's in the browser).
    gpu: &'static Gpu,
    /// The architecture and shapes.
    pub config: ModelConfig,
    /// The weights in Keel's fused layout (the embedding and the LM head in row shards where
    /// they pass the binding limit).
    pub weights: Weights<Sharded>,
    /// A packed copy of a tied embedding for the LM head: the embed gather reads `weights.embed`
    /// as f32, the head's matrix product this one.
    head: Option<Sharded>,
    /// (cos, sin) tables for rotary models, `[max_positions, head_dim / 2]`.
    rope: Option<(Tensor, Tensor)>,
    /// The tables of the sliding-window blocks where they have their own base (Gemma 3).
    local_rope: Option<(Tensor, Tensor)>,
    /// The attention kernels of prefill, scoring and training (`KEEL_ATTENTION`'s choice,
    /// else flash; tests set it to run one model through both).
    pub attention: attention::Kernels,
    /// The tables of the passes that reach past longrope's original context (Phi-3's long
    /// factors; see [`rope::RopeScaling::LongRope`]).
    long_rope: Option<(Tensor, Tensor)>,
    /// Whether the decode kernel that writes a modulated block's output applies LCM in its last
    /// workgroup (natively), rather than lcm.wgsl in a dispatch of its own (the page, where a
    /// workgroup is not promised to see the others' writes; tests set it to run both).
    pub lcm_in_last_workgroup: bool,
    /// Whether greedy decoding's pick is made by the LM head's last workgroups (natively),
    /// rather than by [`stats::greedy_pick`]'s dispatches (the page; tests set it to run both).
    pub pick_in_last_workgroup: bool,
    /// Whether a decode step's first QKV product gathers the embedding as it loads its input
    /// (where it can: see [`GpuModel::record_blocks`]) rather than after embed.wgsl's dispatch
    /// (tests set it to run both).
    pub embed_in_qkv: bool,
    /// Whether prefill and scoring chunks on the tiled tiers apply the RMSNorms and the SiLU
    /// gate as gemm.wgsl loads its input (see [`matmul::tiled_applies`]) rather than after
    /// norm.wgsl's and act.wgsl's dispatches, as the portable tier does (tests run both).
    pub prologues_in_tiled: bool,
}

/// Keys and values of every layer for `seqs` sequences of up to `len` positions.
#[derive(Clone)]
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Per-chunk results of the decode attention, shared by the layers
    /// (see [`attention::rope_kv_attention_decode`]).
    pub part: Tensor,
    /// Its merging workgroups' arrival counters (u32, zero between dispatches).
    pub arrived: Tensor,
    pub seqs: usize,
    pub len: usize,
}

/// Working buffers for up to `rows` rows at once.
#[derive(Clone)]
pub struct Scratch {
    pub rows: usize,
    pub ids: Tensor,
    /// (sequence, position) per row.
    pub row_table: Tensor,
    /// The residual stream.
    pub x: Tensor,
    xn: Tensor,
    norm_stats: Tensor,
    qkv: Tensor,
    q: Tensor,
    att: Tensor,
    lse: Tensor,
    up: Tensor,
    act: Tensor,
    qk_norm: Option<QkNormBufs>,
    post_norms: Option<PostNormBufs>,
}

/// What Gemma 3's post-attention and post-MLP norms keep: their inputs (the output
/// projections' results) and (mean, rstd) per row.
#[derive(Clone)]
pub struct PostNormBufs {
    pub attn_out: Tensor,
    pub attn_stats: Tensor,
    pub mlp_out: Tensor,
    pub mlp_stats: Tensor,
}

impl PostNormBufs {
    /// The buffers for `rows` rows, or None for a model without post-norms.
    pub fn new(gpu: &Gpu, c: &ModelConfig, rows: usize) -> Result<Option<PostNormBufs>> {
        if !c.post_norms {
            return Ok(None);
        }
        let f = |name: &str, cols: usize| gpu.scratch(name, &[rows, cols], DType::F32);
        Ok(Some(PostNormBufs {
            attn_out: f("attention output before its norm", c.hidden)?,
            attn_stats: f("post-attention norm stats", 2)?,
            mlp_out: f("MLP output before its norm", c.hidden)?,
            mlp_stats: f("post-MLP norm stats", 2)?,
        }))
    }

    pub fn tensors(&self) -> [&Tensor; 4] {
        [&self.attn_out, &self.attn_stats, &self.mlp_out, &self.mlp_stats]
    }

    /// Floats per row.
    fn width(c: &ModelConfig) -> usize {
        if c.post_norms {
            2 * c.hidden + 4
        } else {
            0
        }
    }
}

/// What Qwen3's per-head q and k norms keep: the QKV rows before them (the norms write
/// `qkv` in place of their input) and (mean, rstd) per q head and per k head.
#[derive(Clone)]
pub struct QkNormBufs {
    pub raw: Tensor,
    pub q_stats: Tensor,
    pub k_stats: Tensor,
}

impl QkNormBufs {
    /// The buffers for `rows` rows, or None for a model without q/k norms.
    pub fn new(gpu: &Gpu, c: &ModelConfig, rows: usize) -> Result<Option<QkNormBufs>> {
        if !c.qk_norm {
            return Ok(None);
        }
        Ok(Some(QkNormBufs {
            raw: gpu.scratch("qkv before q/k norms", &[rows, c.head_shape().qkv_width()], DType::F32)?,
            q_stats: gpu.scratch("q norm stats", &[rows * c.heads, 2], DType::F32)?,
            k_stats: gpu.scratch("k norm stats", &[rows * c.kv_heads, 2], DType::F32)?,
        }))
    }

    pub fn tensors(&self) -> [&Tensor; 3] {
        [&self.raw, &self.q_stats, &self.k_stats]
    }
}

/// Buffers for the LM head over up to `rows` rows.
#[derive(Clone)]
pub struct Head {
    pub rows: usize,
    xn: Tensor,
    norm_stats: Tensor,
    pub logits: Tensor,
    pub targets: Tensor,
    /// `[rows, 4]`: see [`stats::logit_stats`].
    pub stats: Tensor,
    /// Working space of [`stats::logit_stats`] (and of [`stats::greedy_pick`]).
    pub stats_partials: Tensor,
    /// The LM head's arrival counters for a pick in its last workgroups ([`stats::HeadPick`]).
    pick_arrived: Tensor,
}

/// The buffers one block reads and writes (see [`GpuModel::record_block`]): the residual
/// stream before the block, after attention and after the MLP, and every intermediate the
/// backward pass needs.
pub struct BlockIo<'a> {
    pub x_in: &'a Tensor,
    pub x_mid: &'a Tensor,
    pub x_out: &'a Tensor,
    pub xn1: &'a Tensor,
    pub stats1: &'a Tensor,
    pub xn2: &'a Tensor,
    pub stats2: &'a Tensor,
    pub qkv: &'a Tensor,
    pub q: &'a Tensor,
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub att: &'a Tensor,
    pub lse: &'a Tensor,
    /// Working space of [`attention::rope_kv_attention_decode`]. Some (inference) enables the decode
    /// fusions: that attention for single-query rows (spans of 1), and the RMSNorms and the
    /// SiLU gate applied by the matrix-vector products that read them. Training leaves it
    /// None: its backward pass reads `q`, `xn1`, `xn2` and `act`, which those skip.
    pub decode_part: Option<(&'a Tensor, &'a Tensor)>,
    pub up: &'a Tensor,
    pub act: &'a Tensor,
    /// Qwen3's q/k norms' saved input and statistics (None without them).
    pub qk_norm: Option<&'a QkNormBufs>,
    /// Gemma 3's post-norms' inputs and statistics (None without them).
    pub post_norms: Option<&'a PostNormBufs>,
    /// LoRA adapters on this block's linear layers (fine-tuning).
    pub lora: Option<&'a BlockLora>,
    /// The pass rotates with longrope's long factors ([`GpuModel::long_rope`]).
    pub long_rope: bool,
    /// LCM at the block's output (inference; training modulates outside the block).
    pub lcm: Option<Modulation<'a>>,
}

impl KvCache {
    pub fn into_tensors(self) -> Vec<Tensor> {
        self.k.into_iter().chain(self.v).chain([self.part, self.arrived]).collect()
    }
}

impl Scratch {
    pub fn into_tensors(self) -> Vec<Tensor> {
        vec![
            self.ids,
            self.row_table,
            self.x,
            self.xn,
            self.norm_stats,
            self.qkv,
            self.q,
            self.att,
            self.lse,
            self.up,
            self.act,
        ]
        .into_iter()
        .chain(self.qk_norm.into_iter().flat_map(|b| [b.raw, b.q_stats, b.k_stats]))
        .chain(self.post_norms.into_iter().flat_map(|b| [b.attn_out, b.attn_stats, b.mlp_out, b.mlp_stats]))
        .collect()
    }
}

impl Head {
    pub fn into_tensors(self) -> Vec<Tensor> {
        let stats = [self.stats, self.stats_partials, self.pick_arrived];
        [self.xn, self.norm_stats, self.logits, self.targets].into_iter().chain(stats).collect()
    }
}

/// The format each matrix-product weight gets on the GPU (`--weights`): `Auto` keeps a
/// GGUF weight in its file's packed format and everything else f32; a format converts every
/// block linear and the LM head whose rows fit it (rows of whole 32-blocks), others stay f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightChoice {
    /// f32, except a GGUF's own packed F16/Q8_0/Q4_0/Q4_1 weights, which stay packed.
    Auto,
    /// This format for every linear whose rows fit it.
    Format(WeightFormat),
}

impl WeightChoice {
    /// The format Keel's tensor `name` of `shape`, stored as `stored`, gets on the GPU under
    /// this choice (`lm_head` for a tied head's copy of the embedding), decided without
    /// packing anything.
    pub fn gpu_format(self, name: &str, shape: &[usize], stored: WeightFormat) -> WeightFormat {
        if !packable(name) {
            return WeightFormat::F32;
        }
        match self {
            WeightChoice::Auto => stored,
            WeightChoice::Format(f) if f == stored || f.fits(shape[1]) => f,
            WeightChoice::Format(_) => WeightFormat::F32,
        }
    }

    /// The weight's packed (format, words), or None to upload it as f32.
    fn pack(self, name: &str, t: &HostTensor) -> Option<(WeightFormat, Vec<u32>)> {
        match (self.gpu_format(name, &t.shape, t.format()), t.packed_words()) {
            (WeightFormat::F32, _) => None,
            (f, Some((g, words))) if f == g => Some((f, words.to_vec())),
            (f, _) => Some((f, wfmt::quantize(f, &t.values(), t.shape[1]))),
        }
    }
}

/// Whether Keel's tensor `name` (of [`Weights::named`]) may be stored in row shards: the
/// vocabulary's tables, whose users (the embed gather, the LM head) walk the shards. Any other
/// weight over the binding limit is refused.
pub fn shardable(name: &str) -> bool {
    name == "embed" || name == "lm_head"
}

/// Whether Keel's tensor `name` (of [`Weights::named`]) may be packed: only weights of matrix
/// products are; the embed gather reads f32.
pub fn packable(name: &str) -> bool {
    name == "lm_head"
        || (name.starts_with("blocks.")
            && ["qkv", "o", "up", "down"].contains(&name.rsplit('.').next().unwrap_or("")))
}

impl GpuModel {
    /// Uploads every weight as f32 (what training needs; safetensors models under `auto` too).
    pub fn upload(gpu: &'static Gpu, model: &LoadedModel) -> crate::Result<GpuModel> {
        Self::upload_with(gpu, model, WeightChoice::Format(WeightFormat::F32))
    }

    /// Uploads with block linears and the LM head in the format `choice` gives them. A tensor
    /// over the adapter's binding limit is [`crate::Error::DoesNotFit`], found before any upload.
    pub fn upload_with(
        gpu: &'static Gpu,
        model: &LoadedModel,
        choice: WeightChoice,
    ) -> crate::Result<GpuModel> {
        Self::upload_weights(gpu, &model.config, &model.weights, choice)
            .map_err(|e| crate::Error::on_device(gpu, e))
    }

    /// [`GpuModel::upload_with`] from a config and host weights.
    pub fn upload_weights(
        gpu: &'static Gpu,
        cfg: &ModelConfig,
        host: &Weights<HostTensor>,
        choice: WeightChoice,
    ) -> Result<GpuModel> {
        // Every tensor is checked against the binding limit before any is uploaded (the
        // vocabulary's tables: one row of them).
        host.try_map(|name, t| check_weight(gpu, name, &t.shape))?;
        let weights = host.try_map(|name, t| match choice.pack(name, t) {
            Some((fmt, words)) => gpu.upload_sharded(name, &t.shape, fmt, &words),
            None => gpu.upload_sharded(name, &t.shape, WeightFormat::F32, bytemuck::cast_slice(&t.values())),
        })?;
        let embed = &host.embed;
        let tied = if host.lm_head.is_none() { choice.pack("lm_head", embed) } else { None };
        let head = tied
            .map(|(f, words)| gpu.upload_sharded("lm_head (tied)", &embed.shape, f, &words))
            .transpose()?;
        Self::assemble(gpu, cfg, weights, head)
    }

    /// A model from weights already on the GPU (`head`: a packed copy of a tied embedding).
    pub fn assemble(
        gpu: &'static Gpu,
        cfg: &ModelConfig,
        weights: Weights<Sharded>,
        head: Option<Sharded>,
    ) -> Result<GpuModel> {
        let tables = |inv_freq: &[f32], scaling: &rope::RopeScaling| -> Result<(Tensor, Tensor)> {
            let (mut cos, mut sin) = rope::rope_tables(inv_freq, cfg.max_positions);
            let scale = scaling.attention_factor();
            if scale != 1.0 {
                cos.iter_mut().chain(&mut sin).for_each(|v| *v *= scale);
            }
            let shape = [cfg.max_positions, cfg.rotary_dim / 2];
            Ok((gpu.upload_f32("rope cos", &shape, &cos)?, gpu.upload_f32("rope sin", &shape, &sin)?))
        };
        let scaling = &cfg.rope_scaling;
        let rope = cfg.rope_theta.map(|theta| tables(&scaling.inv_freq(theta, cfg.rotary_dim), scaling));
        let long = cfg.rope_theta.and_then(|theta| scaling.long_inv_freq(theta, cfg.rotary_dim));
        let local_rope = match cfg.local_rope_theta {
            Some(theta) if !cfg.sliding_layers.is_empty() => {
                let plain = rope::RopeScaling::None;
                Some(tables(&plain.inv_freq(theta, cfg.rotary_dim), &plain)?)
            }
            _ => None,
        };
        let attention = attention::Kernels::configured()?;
        Ok(GpuModel {
            gpu,
            config: cfg.clone(),
            weights,
            head,
            rope: rope.transpose()?,
            local_rope,
            long_rope: long.map(|inv_freq| tables(&inv_freq, scaling)).transpose()?,
            attention,
            lcm_in_last_workgroup: !cfg!(target_arch = "wasm32"),
            pick_in_last_workgroup: !cfg!(target_arch = "wasm32"),
            embed_in_qkv: true,
            prologues_in_tiled: true,
        })
    }

    /// Every GPU tensor the model holds: its weights, the head's packed copy and the RoPE
    /// tables (the page destroys them when it frees a model).
    pub fn tensors(&self) -> Vec<&Tensor> {
        let named = self.weights.named().into_iter().map(|(_, t)| t);
        let mut all: Vec<&Tensor> = named.chain(&self.head).flat_map(|t| &t.shards).collect();
        for (cos, sin) in [&self.rope, &self.long_rope].into_iter().flatten() {
            all.extend([cos, sin]);
        }
        all
    }

    /// A copy of the weights in new buffers, made on the GPU, with every packed weight
    /// dequantized to f32 (and a tied head reading the f32 embedding again): what a fine-tune
    /// trains. The rotary tables are never written, so they are shared.
    pub fn duplicate_f32(&self, gpu: &Gpu) -> Result<GpuModel> {
        let mut step = Step::new(gpu);
        let weights = self.weights.try_map(|name, t| match t.dtype {
            DType::Packed(_) => dequantize(gpu, &mut step, name, t),
            _ => {
                let out = gpu.zeros_sharded(name, &t.shape, t.dtype)?;
                for (from, to) in t.shards.iter().zip(&out.shards) {
                    step.copy(from, 0, to, 0, from.numel());
                }
                Ok(out)
            }
        })?;
        step.submit()?;
        Ok(GpuModel {
            gpu: self.gpu,
            config: self.config.clone(),
            weights,
            head: None,
            rope: self.rope.clone(),
            local_rope: self.local_rope.clone(),
            attention: self.attention,
            long_rope: self.long_rope.clone(),
            lcm_in_last_workgroup: self.lcm_in_last_workgroup,
            pick_in_last_workgroup: self.pick_in_last_workgroup,
            embed_in_qkv: self.embed_in_qkv,
            prologues_in_tiled: self.prologues_in_tiled,
        })
    }

    /// The device the weights live on.
    pub fn gpu(&self) -> &'static Gpu {
        self.gpu
    }

    /// The LM head's weight as the forward pass reads it.
    pub fn head_weight(&self) -> &Sharded {
        self.head.as_ref().unwrap_or(self.weights.head())
    }

    /// The format of the block linears (the first block's QKV) and of the LM head.
    pub fn formats(&self) -> (WeightFormat, WeightFormat) {
        let linear = self.weights.blocks.first().map_or(WeightFormat::F32, |b| b.qkv.format());
        (linear, self.head_weight().format())
    }

    /// Bytes the weights take on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        let named = self.weights.named();
        named.iter().map(|(_, t)| t.bytes()).sum::<u64>() + self.head.as_ref().map_or(0, Sharded::bytes)
    }

    /// The rotary (cos, sin) tables of block `l` in a pass whose rows are `long_rope` (see
    /// [`GpuModel::long_rope`]); None for learned positions and for blocks without RoPE
    /// (SmolLM3's NoPE layers). Gemma 3's sliding-window blocks have their own.
    pub fn rope_tables(&self, l: usize, long_rope: bool) -> Option<(&Tensor, &Tensor)> {
        if self.config.nope_layers.contains(&l) {
            return None;
        }
        let local = self.local_rope.as_ref().filter(|_| self.config.sliding_layers.contains(&l));
        let long = self.long_rope.as_ref().filter(|_| long_rope);
        local.or(long).or(self.rope.as_ref()).map(|(cos, sin)| (cos, sin))
    }

    /// Whether a forward pass whose last position is `end - 1` rotates with longrope's long
    /// factors, as transformers decides it per pass: when `end` exceeds the original context.
    pub fn long_rope(&self, end: usize) -> bool {
        self.config.rope_scaling.long_past().is_some_and(|original| end > original)
    }

    /// How block `l`'s attention scores are formed: the model's scale, its window if the
    /// block slides.
    pub fn scores(&self, l: usize) -> attention::Scores {
        let c = &self.config;
        attention::Scores { scale: c.attn_scale, window: c.window(l), causal: c.causal }
    }

    /// Bytes a KV cache of `seqs × len` positions takes.
    pub fn kv_bytes(&self, seqs: usize, len: usize) -> u64 {
        let c = &self.config;
        let part = attention::decode_part_len(c.head_shape(), seqs, len) as u64;
        let arrived = attention::decode_arrivals_len(c.head_shape(), seqs) as u64;
        (2 * c.layers as u64 * (seqs * len * c.kv_heads * c.head_dim) as u64 + part + arrived) * 4
    }

    pub fn new_cache(&self, gpu: &Gpu, seqs: usize, len: usize) -> Result<KvCache> {
        let c = &self.config;
        if len > c.max_positions {
            bail!("{len} positions exceed the model's context of {} tokens", c.max_positions);
        }
        // One layer's keys (or values) are one binding.
        let limit = gpu.limits.max_storage_buffer_binding_size;
        let position_bytes = (seqs * c.kv_heads * c.head_dim * 4).max(1) as u64;
        let layer_bytes = position_bytes * len as u64;
        if layer_bytes > limit {
            let fits = limit / position_bytes;
            bail!(
                "a KV cache of {seqs} x {len} positions needs {layer_bytes} bytes per layer, over this adapter's max_storage_buffer_binding_size of {limit} bytes: at most {fits} positions fit"
            );
        }
        let shape = [seqs, len, c.kv_heads, c.head_dim];
        let mut k = Vec::new();
        let mut v = Vec::new();
        for l in 0..c.layers {
            k.push(gpu.scratch(&format!("kv cache k{l}"), &shape, DType::F32)?);
            v.push(gpu.scratch(&format!("kv cache v{l}"), &shape, DType::F32)?);
        }
        let part_len = attention::decode_part_len(c.head_shape(), seqs, len).max(1);
        let part = gpu.scratch("decode attention chunks", &[part_len], DType::F32)?;
        let arrivals = attention::decode_arrivals_len(c.head_shape(), seqs).max(1);
        let arrived = gpu.zeros("decode attention arrivals", &[arrivals], DType::U32)?;
        Ok(KvCache { k, v, part, arrived, seqs, len })
    }

    pub fn scratch(&self, gpu: &Gpu, rows: usize) -> Result<Scratch> {
        let c = &self.config;
        let f = |name: &str, cols: usize| gpu.scratch(name, &[rows, cols], DType::F32);
        Ok(Scratch {
            rows,
            ids: gpu.scratch("ids", &[rows], DType::U32)?,
            row_table: gpu.scratch("row table", &[rows, 2], DType::U32)?,
            x: f("x", c.hidden)?,
            xn: f("xn", c.hidden)?,
            norm_stats: f("norm stats", 2)?,
            qkv: f("qkv", c.head_shape().qkv_width())?,
            q: f("q", c.heads * c.head_dim)?,
            att: f("att", c.heads * c.head_dim)?,
            lse: f("lse", c.heads)?,
            up: f("up", c.up_width())?,
            act: f("act", c.ffn)?,
            qk_norm: QkNormBufs::new(gpu, c, rows)?,
            post_norms: PostNormBufs::new(gpu, c, rows)?,
        })
    }

    /// Bytes of [`GpuModel::scratch`] plus [`GpuModel::head`] for `rows` rows each.
    pub fn working_bytes(&self, rows: usize) -> u64 {
        let c = &self.config;
        let att = c.heads * c.head_dim;
        let qk_norm = if c.qk_norm { c.head_shape().qkv_width() + 2 * (c.heads + c.kv_heads) } else { 0 };
        let scratch = 3
            + 2 * c.hidden
            + 2
            + c.head_shape().qkv_width()
            + 2 * att
            + c.heads
            + c.up_width()
            + c.ffn
            + qk_norm
            + PostNormBufs::width(c);
        let head = c.hidden + 2 + c.vocab + 1 + 4 + stats::partials_len(1, c.vocab);
        ((scratch + head) * rows * 4) as u64
    }

    pub fn head(&self, gpu: &Gpu, rows: usize) -> Result<Head> {
        let c = &self.config;
        Ok(Head {
            rows,
            xn: gpu.scratch("head xn", &[rows, c.hidden], DType::F32)?,
            norm_stats: gpu.scratch("head norm stats", &[rows, 2], DType::F32)?,
            logits: gpu.scratch("logits", &[rows, c.vocab], DType::F32)?,
            targets: gpu.scratch("targets", &[rows], DType::U32)?,
            stats: gpu.scratch("logit stats", &[rows, 4], DType::F32)?,
            stats_partials: gpu.scratch(
                "logit stats partials",
                &[stats::partials_len(rows, c.vocab)],
                DType::F32,
            )?,
            // Zeros: a pooled buffer could hold anything.
            pick_arrived: gpu.zeros("pick arrivals", &[stats::PICK_ARRIVALS], DType::U32)?,
        })
    }

    /// Records the embedding and every block for the first rows of `s` (ids and row table
    /// already written), leaving the residual stream in `s.x` and writing keys and values
    /// into `cache`. The rows form consecutive `spans`, each computed as a pass over that
    /// span alone would (see [`matmul::linear_spans`]). `lcm`: the modulation and its row
    /// table, applied inside each modulated block (natively, decode's without a dispatch of its
    /// own). `after_block(step, l, x)` then runs at `blocks.{l}.resid_post`. `long_rope`: the
    /// pass rotates with longrope's long factors ([`GpuModel::long_rope`] of the pass's end).
    pub fn record_blocks(
        &self,
        step: &mut Step,
        s: &Scratch,
        cache: &KvCache,
        (spans, long_rope): (&[usize], bool),
        lcm: Option<(&LcmState, &Tensor)>,
        after_block: &mut dyn FnMut(&mut Step, usize, &Tensor),
    ) {
        let n: usize = spans.iter().sum();
        assert!(n <= s.rows);
        // Decode: the first QKV product gathers the embedding as it loads its input, where its
        // RMSNorm is fused and the embedding is a plain table (one shard, no scale, no learned
        // positions).
        let (c, w) = (&self.config, &self.weights);
        let plain_table = w.embed.shards.len() == 1 && c.embed_scale == 1.0 && w.pos_embed.is_none();
        let fused_norm = c.norm() == NormKind::Rms && !c.residual_norm;
        let gather = self.embed_in_qkv && plain_table && fused_norm && matmul::matvec_only(spans);
        if !gather {
            self.record_embed(step, &s.ids, &s.row_table, &s.x, n);
        }
        if self.config.residual_norm {
            let w = &self.weights;
            self.normalize_stream(
                step,
                (&w.final_norm, w.final_norm_b.as_deref()),
                &s.x,
                (&s.xn, &s.norm_stats),
                n,
            );
        }
        for l in 0..self.config.layers {
            let io = BlockIo {
                x_in: &s.x,
                x_mid: &s.x,
                x_out: &s.x,
                xn1: &s.xn,
                stats1: &s.norm_stats,
                xn2: &s.xn,
                stats2: &s.norm_stats,
                qkv: &s.qkv,
                q: &s.q,
                k_cache: &cache.k[l],
                v_cache: &cache.v[l],
                att: &s.att,
                lse: &s.lse,
                decode_part: Some((&cache.part, &cache.arrived)),
                up: &s.up,
                act: &s.act,
                qk_norm: s.qk_norm.as_ref(),
                post_norms: s.post_norms.as_ref(),
                lora: None,
                long_rope,
                lcm: lcm.and_then(|(state, rows)| state.at(l, rows)),
            };
            let gather = (gather && l == 0).then_some(&s.ids);
            self.record_block_from(step, l, &io, &s.row_table, spans, gather);
            after_block(step, l, &s.x);
        }
    }

    /// Records the token (and learned position) embedding of `n` rows into `x`.
    pub fn record_embed(&self, step: &mut Step, ids: &Tensor, row_table: &Tensor, x: &Tensor, n: usize) {
        let w = &self.weights;
        let positions = w.pos_embed.as_ref().map(|p| (row_table, &**p));
        embed::embed(step, ids, (&w.embed, self.config.embed_scale), positions, x, n);
    }

    /// Post-norm models: `x = norm(x)` over `n` rows, through `tmp` (the norm writes elsewhere).
    fn normalize_stream(
        &self,
        step: &mut Step,
        (w, bias): (&Tensor, Option<&Tensor>),
        x: &Tensor,
        (tmp, stats): (&Tensor, &Tensor),
        n: usize,
    ) {
        let c = &self.config;
        norm::norm(step, c.norm(), x, w, bias, c.norm_eps, tmp, stats, (0, n));
        step.copy(tmp, 0, x, 0, n * c.hidden);
    }

    /// Records block `l` over `n` rows: `x_out = x_mid + mlp(norm(x_mid))` (with a parallel
    /// residual `mlp(norm(x_in))`) and `x_mid = x_in + attn(norm(x_in))`. Where the three are one buffer the residual
    /// stream is updated in place; training keeps them apart for the backward pass.
    pub fn record_block(&self, step: &mut Step, l: usize, io: &BlockIo, rows: &Tensor, n: usize) {
        self.record_block_spans(step, l, io, rows, &[n]);
    }

    /// [`GpuModel::record_block`] over rows that form consecutive `spans` (see
    /// [`GpuModel::record_blocks`]).
    pub fn record_block_spans(
        &self,
        step: &mut Step,
        l: usize,
        io: &BlockIo,
        rows: &Tensor,
        spans: &[usize],
    ) {
        self.record_block_from(step, l, io, rows, spans, None);
    }

    /// [`GpuModel::record_block_spans`]; with `gather` (the token ids), the QKV product reads
    /// its input from the embedding table and writes it into `io.x_in` (decode's first block).
    fn record_block_from(
        &self,
        step: &mut Step,
        l: usize,
        io: &BlockIo,
        rows: &Tensor,
        spans: &[usize],
        gather: Option<&Tensor>,
    ) {
        let n: usize = spans.iter().sum();
        let c = &self.config;
        let b = &self.weights.blocks[l];
        let heads = c.head_shape();
        let tables = self.rope_tables(l, io.long_rope);
        let scores = self.scores(l);
        let hidden = n * c.hidden;
        // Inference fusions (without adapters): the matrix-vector kernel (decode) and the tiled
        // tiers' (prefill, scoring) apply the RMSNorm and the SiLU gate as they load their input.
        let fuse = io.decode_part.is_some() && io.lora.is_none();
        let rms = |w| (fuse && c.norm() == NormKind::Rms).then_some(Prologue::RmsNorm(w, c.norm_eps));
        let gate = (fuse && c.activation() == Activation::SiluGate).then_some(Prologue::SiluGate);
        let norm1 = |step: &mut Step| {
            let (w, bias) = (&*b.attn_norm, b.attn_norm_b.as_deref());
            norm::norm(step, c.norm(), io.x_in, w, bias, c.norm_eps, io.xn1, io.stats1, (0, n));
        };
        let lora = |step: &mut Step, which: Linear, x: &Tensor, y: &Tensor| {
            if let Some(lora) = io.lora {
                lora.record_forward(step, which, x, y, n);
            }
        };
        let qkv = (&*b.qkv, b.qkv_b.as_deref(), io.qkv);
        if c.residual_norm {
            matmul::linear_spans(step, io.x_in, qkv.0, qkv.1, qkv.2, spans, false);
        } else if let Some(ids) = gather {
            let (norm, eps, stream) = (&*b.attn_norm, c.norm_eps, io.x_in);
            let gathered = Prologue::EmbedRmsNorm { norm, eps, ids, stream };
            let table = &self.weights.embed.shards[0];
            self.linear_after(step, (norm1, Some(gathered)), (table, io.xn1), qkv, spans, (false, None));
        } else {
            let prologue = rms(&*b.attn_norm);
            self.linear_after(step, (norm1, prologue), (io.x_in, io.xn1), qkv, spans, (false, None));
        }
        lora(step, Linear::Qkv, io.xn1, io.qkv);
        if let Some(saved) = io.qk_norm {
            step.copy(io.qkv, 0, &saved.raw, 0, n * heads.qkv_width());
            for (w, stats, layout) in self.qk_norms(b, saved) {
                norm::head_norm(step, c.norm(), &saved.raw, layout, w, c.norm_eps, io.qkv, stats, n);
            }
        }
        let kv = (io.k_cache, io.v_cache);
        // The decode kernel is causal (a sequence's last row); encoders run the general one.
        let decode = io.decode_part.filter(|_| c.causal && attention::decode_chunk(heads).is_some());
        let decode_rows = |step: &mut Step, part: (&Tensor, &Tensor), (first, len): (usize, usize)| {
            attention::rope_kv_attention_decode(
                step,
                io.qkv,
                rows,
                (heads, scores),
                tables,
                kv,
                part,
                (io.att, io.lse),
                (first, len),
            );
        };
        match decode {
            Some(part) if spans.iter().all(|&len| len == 1) => decode_rows(step, part, (0, n)),
            _ => {
                rope::rope_kv(step, io.qkv, rows, heads, tables, io.q, kv, n);
                attention::attention(
                    step,
                    self.attention,
                    io.q,
                    rows,
                    (heads, scores),
                    kv,
                    io.att,
                    io.lse,
                    n,
                );
                // Single-query rows among longer spans are redone as they would run alone,
                // so that a batched step reproduces each sequence's own run bit for bit.
                if let Some(part) = decode {
                    for run in single_row_runs(spans) {
                        decode_rows(step, part, run);
                    }
                }
            }
        }
        // The MLP reads the block's input with a parallel residual, else the attention's output.
        let mlp_in = if c.parallel_residual { io.x_in } else { io.x_mid };
        let norm2 = |step: &mut Step| {
            let (w, bias) = (&*b.mlp_norm, b.mlp_norm_b.as_deref());
            norm::norm(step, c.norm(), mlp_in, w, bias, c.norm_eps, io.xn2, io.stats2, (0, n));
        };
        if c.parallel_residual {
            // Before the attention's output is added to x_in, which inference updates in place.
            norm2(step);
        }
        if !std::ptr::eq(io.x_in, io.x_mid) {
            step.copy(io.x_in, 0, io.x_mid, 0, hidden);
        }
        // Gemma 3 normalises each output projection's result before adding it to the stream.
        let post = io.post_norms.map(|p| (p, (&b.post_attn_norm, &b.post_mlp_norm)));
        let post_add = |step: &mut Step, x: &Tensor, w: &Option<Sharded>, stats: &Tensor, out: &Tensor| {
            let w = w.as_ref().expect("post-norm weights of a post-norm model");
            norm::norm_add(step, c.norm(), x, w, c.norm_eps, out, stats, n);
        };
        let attn_out = post.map_or(io.x_mid, |(p, _)| &p.attn_out);
        matmul::linear_spans(step, io.att, &b.o, b.o_b.as_deref(), attn_out, spans, post.is_none());
        lora(step, Linear::O, io.att, attn_out);
        if let Some((p, (w, _))) = post {
            post_add(step, &p.attn_out, w, &p.attn_stats, io.x_mid);
        }
        let up = (&*b.up, b.up_b.as_deref(), io.up);
        if c.residual_norm {
            let norm = (&*b.attn_norm, b.attn_norm_b.as_deref());
            self.normalize_stream(step, norm, io.x_mid, (io.xn2, io.stats2), n);
            matmul::linear_spans(step, io.x_mid, up.0, up.1, up.2, spans, false);
        } else if c.parallel_residual {
            matmul::linear_spans(step, io.xn2, up.0, up.1, up.2, spans, false);
        } else {
            let prologue = rms(&*b.mlp_norm);
            self.linear_after(step, (norm2, prologue), (io.x_mid, io.xn2), up, spans, (false, None));
        }
        lora(step, Linear::Up, io.xn2, io.up);
        if !std::ptr::eq(io.x_mid, io.x_out) {
            step.copy(io.x_mid, 0, io.x_out, 0, hidden);
        }
        let act = |step: &mut Step| act::activation(step, c.activation(), io.up, io.act, n, c.ffn);
        let mlp_out = post.map_or(io.x_out, |(p, _)| &p.mlp_out);
        let down = (&*b.down, b.down_b.as_deref(), mlp_out);
        // LCM at the block's output: natively inside the decode kernel that writes it, where
        // that is the down projection (the matrix-vector kernel, no norm after it).
        let writes_output = fuse && post.is_none() && !c.residual_norm && matmul::matvec_only(spans);
        let fused_lcm = io.lcm.filter(|_| self.lcm_in_last_workgroup && writes_output);
        self.linear_after(step, (act, gate), (io.up, io.act), down, spans, (post.is_none(), fused_lcm));
        lora(step, Linear::Down, io.act, mlp_out);
        if let Some((p, (_, w))) = post {
            post_add(step, &p.mlp_out, w, &p.mlp_stats, io.x_out);
        }
        if c.residual_norm {
            let norm = (&*b.mlp_norm, b.mlp_norm_b.as_deref());
            self.normalize_stream(step, norm, io.x_out, (io.xn2, io.stats2), n);
        }
        if let (Some(modulation), None) = (io.lcm, fused_lcm) {
            modulation.record(step, io.x_out, n);
        }
    }

    /// Qwen3's (Gemma 3's) q and k norms of block `b`: (weight, statistics, where its heads lie).
    pub fn qk_norms<'a>(
        &self,
        b: &'a Block<Sharded>,
        saved: &'a QkNormBufs,
    ) -> [(&'a Tensor, &'a Tensor, RowLayout); 2] {
        let h = self.config.head_shape();
        let (width, q_width) = (h.qkv_width(), h.n_q * h.dim);
        let (q, k) = (b.q_norm.as_ref(), b.k_norm.as_ref());
        let (q, k) = (q.expect("q_norm of a q/k-norm model"), k.expect("k_norm of a q/k-norm model"));
        [
            (q, &saved.q_stats, RowLayout::heads(h.n_q, h.dim, 0, width)),
            (k, &saved.k_stats, RowLayout::heads(h.n_kv, h.dim, q_width, width)),
        ]
    }

    /// Records the final norm, LM head and logit statistics for the rows from `first` on of
    /// `x` (consecutive `spans`, as in [`GpuModel::record_blocks`]) into rows `0 ..` of `head`.
    pub fn record_head(&self, step: &mut Step, x: &Tensor, head: &Head, first: usize, spans: &[usize]) {
        self.record_logits(step, x, head, first, spans);
        let n: usize = spans.iter().sum();
        stats::logit_stats(step, &head.logits, &head.targets, (&head.stats_partials, &head.stats), n);
    }

    /// [`GpuModel::record_head`] without the statistics: the final norm and LM head (and its
    /// soft-capping) only.
    pub fn record_logits(&self, step: &mut Step, x: &Tensor, head: &Head, first: usize, spans: &[usize]) {
        self.record_head_product(step, x, head, first, spans, None);
    }

    /// Greedy decoding's pick from the logits of row `input.2` of `x`, fed to the next step
    /// (`input` and `out` as [`stats::greedy_pick`] takes them): the final norm, the LM head and
    /// the pick, which natively the head's last workgroups make where the head is one shard
    /// and its logits are not soft-capped; else greedy_pick's dispatches.
    pub fn record_greedy_pick(
        &self,
        step: &mut Step,
        x: &Tensor,
        head: &Head,
        input: (&Tensor, &Tensor, usize),
        out: &Tensor,
    ) {
        let pick =
            stats::HeadPick { partials: &head.stats_partials, arrived: &head.pick_arrived, input, out };
        let fused = self.pick_in_last_workgroup.then_some(pick);
        if !self.record_head_product(step, x, head, input.2, &[1], fused) {
            stats::greedy_pick(step, &head.logits, &head.stats_partials, input, out);
        }
    }

    /// The final norm, LM head and soft-capping of [`GpuModel::record_logits`], and with
    /// `pick` (one row) the pick in the head's last workgroups where it can be made there:
    /// returns whether it was. The kernels apply an RMSNorm without bias as they load `x`
    /// (the prologue, as for the blocks' products); other norms, and rows the portable kernel
    /// takes, are normalised by a dispatch first.
    fn record_head_product(
        &self,
        step: &mut Step,
        x: &Tensor,
        head: &Head,
        first: usize,
        spans: &[usize],
        pick: Option<stats::HeadPick>,
    ) -> bool {
        let n: usize = spans.iter().sum();
        assert!(n <= head.rows);
        let c = &self.config;
        let w = &self.weights;
        let fused_norm = c.norm() == NormKind::Rms && w.final_norm_b.is_none();
        let prologue = Prologue::RmsNorm(&w.final_norm, c.norm_eps);
        let needs_done = !fused_norm || self.prologue_needs_done(step.gpu, prologue, spans);
        if needs_done {
            let bias = w.final_norm_b.as_deref();
            norm::norm(
                step,
                c.norm(),
                x,
                &w.final_norm,
                bias,
                c.norm_eps,
                &head.xn,
                &head.norm_stats,
                (first, n),
            );
        }
        let (prologue, src) = match fused_norm {
            true => (prologue, (x, first, needs_done.then_some(&head.xn))),
            false => (Prologue::None, (&head.xn, 0, None)),
        };
        let shards = &self.head_weight().shards;
        if let (Some(pick), [w], None) = (pick, &shards[..], c.logit_softcap) {
            matmul::linear_picked(step, prologue, (src.0, src.1), w, &head.logits, pick);
            return true;
        }
        // Each shard of the head writes its columns of the logits.
        for (first, w) in self.head_weight().rows() {
            let logits = matmul::Mat { t: &head.logits, off: first, rs: c.vocab, cs: 1 };
            matmul::linear_spans_into(step, prologue, src, w, logits, spans);
        }
        if let Some(cap) = c.logit_softcap {
            softcap::softcap(step, &head.logits, n * c.vocab, cap);
        }
        false
    }

    /// [`matmul::prologue_needs_done`], and without [`GpuModel::prologues_in_tiled`] wherever
    /// a span goes past the matrix-vector kernel.
    fn prologue_needs_done(&self, gpu: &Gpu, prologue: Prologue, spans: &[usize]) -> bool {
        let long = !matmul::matvec_only(spans);
        matmul::prologue_needs_done(gpu, prologue, spans) || (long && !self.prologues_in_tiled)
    }

    /// `y (+)= f(src) · Wᵀ + bias` over `spans`, where `op` writes f(src) into `done`. With a
    /// prologue computing f, the kernels apply it as they load `src`, and `op` runs only if
    /// some span's kernel does not (and then reads `done`). With `lcm` the product
    /// (accumulating) then modulates `y`'s rows ([`matmul::linear_spans_modulated`]).
    fn linear_after(
        &self,
        step: &mut Step,
        (op, prologue): (impl FnOnce(&mut Step), Option<Prologue>),
        (src, done): (&Tensor, &Tensor),
        (w, bias, y): (&Tensor, Option<&Tensor>, &Tensor),
        spans: &[usize],
        (accumulate, lcm): (bool, Option<Modulation>),
    ) {
        let (prologue, src, done) = match prologue {
            Some(prologue) => {
                let needs_done = self.prologue_needs_done(step.gpu, prologue, spans);
                if needs_done {
                    op(step);
                }
                (prologue, src, needs_done.then_some(done))
            }
            None => {
                op(step);
                (Prologue::None, done, None)
            }
        };
        match lcm {
            Some(lcm) => matmul::linear_spans_modulated(step, prologue, src, (w, bias), y, spans, lcm),
            None => matmul::linear_spans_prologue(step, prologue, (src, done), w, bias, y, spans, accumulate),
        }
    }
}

/// Checks that weight `name` of `shape` can be uploaded: within one binding, or for the
/// vocabulary's tables ([`shardable`]) one row within it.
pub fn check_weight(gpu: &Gpu, name: &str, shape: &[usize]) -> Result<u64> {
    match shape {
        [_, row @ ..] if shardable(name) => gpu.check_binding(name, row),
        _ => gpu.check_binding(name, shape),
    }
}

/// (first row, rows) of each run of consecutive spans of one row.
fn single_row_runs(spans: &[usize]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut row = 0;
    for &len in spans {
        if len == 1 {
            match runs.last_mut() {
                Some((first, n)) if *first + *n == row => *n += 1,
                _ => runs.push((row, 1)),
            }
        }
        row += len;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_data::assert_close;
    use crate::ops::stats::Pick;

    /// A decode step of a Llama-style model records per block: qkv (norm fused), decode
    /// attention (its chunks merged by the last workgroups natively, by a second dispatch in
    /// the page), o, up (norm fused), down (SiLU gate fused); a prefill chunk keeps the two
    /// norms, rope_kv, attention and the activation on the portable tier (9), rope_kv and
    /// attention on the tiled ones (6). The first QKV product of a decode step gathers the
    /// embedding; a prefill chunk dispatches it.
    #[test]
    fn decode_records_five_dispatches_per_block() {
        let Some(path) = crate::testing::model("stories260k") else { return };
        let gpu = crate::ops::test_util::gpu();
        let m = GpuModel::upload(gpu, &crate::model::load(&path).unwrap()).unwrap();
        let (cache, s) = (m.new_cache(gpu, 1, 16).unwrap(), m.scratch(gpu, 8).unwrap());
        let layers = m.config.layers;
        let decode = if cfg!(target_arch = "wasm32") { 6 } else { 5 };
        for (spans, per_block, embed) in [(&[1][..], decode, 0), (&[8][..], prefill_per_block(gpu), 1)] {
            let mut step = Step::new(gpu);
            m.record_blocks(&mut step, &s, &cache, (spans, false), None, &mut |_, _, _| {});
            assert_eq!(step.len(), embed + per_block * layers, "spans {spans:?}");
        }
    }

    /// Dispatches per block of a Llama-style prefill chunk on `gpu`'s tier: the tiled tiers
    /// apply the norms and the SiLU gate in the products.
    fn prefill_per_block(gpu: &Gpu) -> usize {
        if gpu.tier == crate::gpu::Tier::Portable {
            9
        } else {
            6
        }
    }

    /// On the tiled tier a prefill chunk's QKV and gate|up products apply their RMSNorms and
    /// the down projection its SiLU gate as gemm.wgsl loads its input: three dispatches fewer
    /// per block than with the prologues off (the norm and activation dispatches, as on the
    /// portable tier), and the head's final norm too; the logits of every position (scoring
    /// a text longer than a chunk) within 1e-5 of that unfused path's.
    #[test]
    fn tiled_prefill_applies_norms_and_gate_in_the_products() {
        use crate::gpu::Tier;
        let Some(path) = crate::testing::model("stories260k") else { return };
        let gpu = Gpu::shared_on_tier(Tier::Tiled).unwrap();
        let host = crate::model::load(&path).unwrap();
        let mut m = GpuModel::upload(gpu, &host).unwrap();
        let (cache, s, head) =
            (m.new_cache(gpu, 1, 16).unwrap(), m.scratch(gpu, 8).unwrap(), m.head(gpu, 8).unwrap());
        let layers = m.config.layers;
        let ids = host
            .tokenizer
            .encode("Once upon a time there was a little girl who lived in a village near the forest")
            .unwrap();
        assert!(ids.len() > 8, "a text of several chunks");
        let mut runs = Vec::new();
        for (fused, per_block, head_dispatches) in [(true, 6, 1), (false, 9, 2)] {
            m.prologues_in_tiled = fused;
            let mut step = Step::new(gpu);
            m.record_blocks(&mut step, &s, &cache, (&[8], false), None, &mut |_, _, _| {});
            assert_eq!(step.len(), 1 + per_block * layers, "prologues in the tiled tier: {fused}");
            m.record_logits(&mut step, &s.x, &head, 0, &[8]);
            assert_eq!(step.len(), 1 + per_block * layers + head_dispatches, "the head, fused: {fused}");
            runs.push(crate::generate::score(gpu, &m, &ids, None).unwrap());
        }
        let (fused, unfused) = (&runs[0], &runs[1]);
        assert_close(&fused.last_logits, &unfused.last_logits, 1e-5, "last logits");
        assert_close(&fused.next_logprobs, &unfused.next_logprobs, 1e-5, "log-probs");
        assert!(fused.last_logits != unfused.last_logits, "the two paths round alike: is either fused?");
    }

    /// With LCM on, a decode step's modulated blocks record no dispatch more natively (the
    /// down projection's last workgroup modulates the row), one more (lcm.wgsl) in the page's
    /// path; a prefill chunk's modulated blocks one more either way.
    #[test]
    fn decode_with_lcm_records_no_extra_dispatch_natively() {
        let Some(path) = crate::testing::model("stories260k") else { return };
        let gpu = crate::ops::test_util::gpu();
        let mut m = GpuModel::upload(gpu, &crate::model::load(&path).unwrap()).unwrap();
        let (cache, s) = (m.new_cache(gpu, 1, 16).unwrap(), m.scratch(gpu, 8).unwrap());
        let (layers, hidden) = (m.config.layers, m.config.hidden);
        let cfg = crate::modulate::LcmConfig { gamma: 0.5, ..Default::default() };
        let state = LcmState::new(gpu, &cfg, layers, hidden, 1).unwrap().unwrap();
        let modulated = cfg.layers_for(layers).len();
        assert!(modulated > 0);
        let decode = if cfg!(target_arch = "wasm32") { 6 } else { 5 };
        let cases = [
            (true, 1, decode, 0),
            (false, 1, decode, modulated),
            (true, 8, prefill_per_block(gpu), modulated),
            (false, 8, prefill_per_block(gpu), modulated),
        ];
        for (in_last_workgroup, rows, per_block, extra) in cases {
            m.lcm_in_last_workgroup = in_last_workgroup;
            let mut step = Step::new(gpu);
            let lcm = Some((&state, &s.row_table));
            m.record_blocks(&mut step, &s, &cache, (&[rows], false), lcm, &mut |_, _, _| {});
            // One more for the embedding, which decode's first QKV product gathers.
            let what = format!("{rows} rows, LCM in the last workgroup: {in_last_workgroup}");
            assert_eq!(step.len(), (rows > 1) as usize + per_block * layers + extra, "{what}");
        }
    }

    /// stories260k (RMSNorm, a gated MLP) and tiny-gpt2 (LayerNorm with biases, learned
    /// positions), each on the GPU with a short prompt's ids; those whose fixture is present.
    fn rms_and_layer_norm_models(gpu: &'static Gpu) -> Vec<(&'static str, GpuModel, Vec<u32>)> {
        let loaded = ["stories260k", "tiny-gpt2"].into_iter().filter_map(|name| {
            let host = crate::model::load(&crate::testing::model(name)?).unwrap();
            let prompt = host.tokenizer.encode("Once upon a time, a girl").unwrap();
            Some((name, GpuModel::upload(gpu, &host).unwrap(), prompt))
        });
        loaded.collect()
    }

    /// Decode with LCM on, in each setting (one scale; three without keeping the norm; sink 1
    /// in normalized space on chosen blocks; raw without keeping the norm), on a gated model and
    /// on GPT-2 (a biased down projection without a gate): LCM in the down projection's last
    /// workgroup (native) and in lcm.wgsl's dispatch (the page) give the same tokens and logits
    /// bit for bit, and both give the log-probs of scoring the whole text at once (the
    /// prefill's scan, which the golden tests check against transformers) within 1e-4.
    #[test]
    fn decode_with_lcm_in_the_last_workgroup_equals_its_dispatch_and_the_scan() {
        use crate::generate::{score, Session};
        use crate::modulate::{LcmConfig, Space};
        let gpu = crate::ops::test_util::gpu();
        for (name, mut m, prompt) in rms_and_layer_norm_models(gpu) {
            let last = m.config.layers - 1;
            assert!(prompt.len() > 4, "{name}: a prompt the prefill kernels take");
            let three = vec![(0.5, 0.3), (0.9, 0.2), (0.99, 0.1)];
            let settings = [
                LcmConfig { gamma: 0.5, ..LcmConfig::default() },
                LcmConfig { scales: three, keep_norm: false, ..LcmConfig::default() },
                LcmConfig {
                    gamma: 0.4,
                    sink: 1,
                    space: Space::Normalized,
                    layers: Some(vec![0, last]),
                    ..LcmConfig::default()
                },
                LcmConfig { gamma: 0.3, rho: 0.7, keep_norm: false, ..LcmConfig::default() },
            ];
            for cfg in &settings {
                let mut runs = Vec::new();
                for in_last_workgroup in [true, false] {
                    m.lcm_in_last_workgroup = in_last_workgroup;
                    let mut session = Session::new(gpu, &m, prompt.len() + 12, Some(cfg)).unwrap();
                    let mut ids = prompt.clone();
                    let mut logits = vec![session.feed(&prompt, None).unwrap().last_logits];
                    for _ in 0..12 {
                        let row = logits.last().unwrap();
                        let id = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
                        ids.push(id as u32);
                        if ids.len() < prompt.len() + 12 {
                            logits.push(session.feed(&[id as u32], None).unwrap().last_logits);
                        }
                    }
                    let bits: Vec<Vec<u32>> =
                        logits.iter().map(|row| row.iter().map(|x| x.to_bits()).collect()).collect();
                    runs.push((ids, logits, bits));
                }
                assert_eq!(runs[0].0, runs[1].0, "{name} {cfg:?}: tokens");
                assert!(runs[0].2 == runs[1].2, "{name} {cfg:?}: logits differ between the two paths");
                let (ids, logits, _) = &runs[0];
                let scores = score(gpu, &m, ids, Some(cfg)).unwrap();
                for (t, row) in logits.iter().enumerate() {
                    let at = prompt.len() - 1 + t;
                    let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
                    let lse = max + row.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
                    let got = row[ids[at + 1] as usize] as f64 - lse;
                    let want = scores.next_logprobs[at] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{name} {cfg:?} position {at}: decode {got}, scan {want}"
                    );
                }
            }
        }
    }

    /// A greedy decode step's head records one dispatch natively where the final norm is an
    /// RMSNorm (fused into the LM head's product, whose last workgroups pick), one more for a
    /// LayerNorm (GPT-2, with its bias); the page's path (the pick in stats.wgsl's two
    /// dispatches) two more, and so do soft-capped logits (the cap's dispatch too).
    #[test]
    fn greedy_head_records_one_dispatch_natively() {
        let gpu = crate::ops::test_util::gpu();
        for (name, norm) in [("stories260k", 0), ("tiny-gpt2", 1)] {
            let Some(path) = crate::testing::model(name) else { continue };
            let mut m = GpuModel::upload(gpu, &crate::model::load(&path).unwrap()).unwrap();
            let (s, head) = (m.scratch(gpu, 8).unwrap(), m.head(gpu, 1).unwrap());
            let out = gpu.zeros("picks", &[16, 4], DType::U32).unwrap();
            for (in_last_workgroup, softcap, want) in
                [(true, None, 1), (false, None, 3), (true, Some(30.0), 4), (false, Some(30.0), 4)]
            {
                m.pick_in_last_workgroup = in_last_workgroup;
                m.config.logit_softcap = softcap;
                let mut step = Step::new(gpu);
                m.record_greedy_pick(&mut step, &s.x, &head, (&s.ids, &s.row_table, 0), &out);
                let what = format!("{name}: in the last workgroup {in_last_workgroup}, softcap {softcap:?}");
                assert_eq!(step.len(), norm + want, "{what}");
            }
        }
    }

    /// Greedy decoding with the pick in the LM head's last workgroups (native) and in
    /// stats.wgsl's dispatches (the page), and with the embedding gathered by the first QKV
    /// product and by embed.wgsl's dispatch, gives the same picks to the bit (ids, log-probs,
    /// entropies, log-sum-exps), on a model whose final RMSNorm the head fuses and on GPT-2
    /// (a LayerNorm with a bias, dispatched; learned positions, so no gather); both are the CPU
    /// path's picks (feed, read the logits, argmax on the host) with statistics within 1e-5.
    #[test]
    fn greedy_pick_in_the_last_workgroup_equals_its_dispatches_and_the_cpu() {
        use crate::generate::{decode::pick_from_logits, sampler::argmax, Sampler, SamplerConfig, Session};
        let gpu = crate::ops::test_util::gpu();
        for (name, mut m, prompt) in rms_and_layer_norm_models(gpu) {
            let n = 12;
            let bits = |p: &Pick| [p.id, p.logprob.to_bits(), p.entropy.to_bits(), p.lse.to_bits()];
            let mut runs = Vec::new();
            for (in_last_workgroup, embed_in_qkv) in [(true, true), (false, true), (true, false)] {
                m.pick_in_last_workgroup = in_last_workgroup;
                m.embed_in_qkv = embed_in_qkv;
                let mut session = Session::new(gpu, &m, prompt.len() + n, None).unwrap();
                let mut greedy =
                    Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() }).unwrap();
                let mut picks = Vec::new();
                let mut keep = |p: Pick| {
                    picks.push(p);
                    Ok(())
                };
                pollster::block_on(session.decode(&prompt, n, &[], &mut greedy, &mut keep)).unwrap();
                runs.push(picks);
            }
            let as_bits = |run: &[Pick]| run.iter().map(bits).collect::<Vec<_>>();
            assert_eq!(as_bits(&runs[0]), as_bits(&runs[1]), "{name}: the pick's two paths differ");
            assert_eq!(as_bits(&runs[0]), as_bits(&runs[2]), "{name}: the embedding's two paths differ");
            let mut session = Session::new(gpu, &m, prompt.len() + n, None).unwrap();
            let mut logits = session.feed(&prompt, None).unwrap().last_logits;
            for (t, got) in runs[0].iter().enumerate() {
                let want = pick_from_logits(argmax(&logits), &logits);
                assert_eq!(got.id, want.id, "{name} token {t}");
                for (what, a, b) in
                    [("logprob", got.logprob, want.logprob), ("entropy", got.entropy, want.entropy)]
                {
                    assert!((a - b).abs() < 1e-5, "{name} token {t} {what}: GPU {a} vs CPU {b}");
                }
                logits = session.feed(&[got.id], None).unwrap().last_logits;
            }
        }
    }

    #[test]
    fn single_row_runs_group_consecutive_one_row_spans() {
        assert_eq!(single_row_runs(&[1, 1, 3, 1, 0, 1, 2, 1]), [(0, 2), (5, 2), (9, 1)]);
        assert_eq!(single_row_runs(&[4, 2]), []);
    }
}
