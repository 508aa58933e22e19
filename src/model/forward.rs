//! The forward pass on the GPU, recorded into one [`Step`]: embedding, every block, and
//! the LM head with log-softmax statistics. Rows are tokens; each row carries its
//! (sequence, position), so one recording serves prefill, batched decode and training.
//!
//! Hook point `blocks.{l}.resid_post` is the residual stream `x` right after block `l`.

use super::config::ModelConfig;
use super::layout::Weights;
use super::load::LoadedModel;
use crate::gpu::{DType, Gpu, Step, Tensor};
use crate::ops::{act, attention, embed, matmul, norm, rope, stats};
use anyhow::{bail, Result};

/// A model whose weights live on the GPU.
pub struct GpuModel {
    pub config: ModelConfig,
    pub weights: Weights<Tensor>,
    /// (cos, sin) tables for rotary models, `[max_positions, head_dim / 2]`.
    rope: Option<(Tensor, Tensor)>,
}

/// Keys and values of every layer for `seqs` sequences of up to `len` positions.
#[derive(Clone)]
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
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
}

impl KvCache {
    pub fn into_tensors(self) -> Vec<Tensor> {
        self.k.into_iter().chain(self.v).collect()
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
    }
}

impl Head {
    pub fn into_tensors(self) -> Vec<Tensor> {
        vec![self.xn, self.norm_stats, self.logits, self.targets, self.stats]
    }
}

impl GpuModel {
    pub fn upload(gpu: &Gpu, model: &LoadedModel) -> Result<GpuModel> {
        let cfg = &model.config;
        let weights = model.weights.try_map(|name, t| gpu.upload_f32(name, &t.shape, &t.data))?;
        let rope = match cfg.rope_theta {
            Some(theta) => {
                let (cos, sin) = rope::rope_tables(theta, cfg.head_dim, cfg.max_positions);
                let shape = [cfg.max_positions, cfg.head_dim / 2];
                Some((gpu.upload_f32("rope cos", &shape, &cos)?, gpu.upload_f32("rope sin", &shape, &sin)?))
            }
            None => None,
        };
        Ok(GpuModel { config: cfg.clone(), weights, rope })
    }

    /// Bytes a KV cache of `seqs × len` positions takes.
    pub fn kv_bytes(&self, seqs: usize, len: usize) -> u64 {
        let c = &self.config;
        2 * c.layers as u64 * (seqs * len * c.kv_heads * c.head_dim) as u64 * 4
    }

    pub fn new_cache(&self, gpu: &Gpu, seqs: usize, len: usize) -> Result<KvCache> {
        let c = &self.config;
        if len > c.max_positions {
            bail!("{len} positions exceed the model's context of {} tokens", c.max_positions);
        }
        let shape = [seqs, len, c.kv_heads, c.head_dim];
        let mut k = Vec::new();
        let mut v = Vec::new();
        for l in 0..c.layers {
            k.push(gpu.scratch(&format!("kv cache k{l}"), &shape, DType::F32)?);
            v.push(gpu.scratch(&format!("kv cache v{l}"), &shape, DType::F32)?);
        }
        Ok(KvCache { k, v, seqs, len })
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
        })
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
        })
    }

    /// Records the embedding and every block for the first `n` rows of `s` (ids and row
    /// table already written), leaving the residual stream in `s.x` and writing keys and
    /// values into `cache`. `after_block(step, l, x)` runs at `blocks.{l}.resid_post`.
    pub fn record_blocks(
        &self,
        step: &mut Step,
        s: &Scratch,
        cache: &KvCache,
        n: usize,
        after_block: &mut dyn FnMut(&mut Step, usize, &Tensor),
    ) {
        assert!(n <= s.rows);
        let c = &self.config;
        let w = &self.weights;
        let positions = w.pos_embed.as_ref().map(|p| (&s.row_table, p));
        embed::embed(step, &s.ids, &w.embed, positions, &s.x, n);
        let heads = c.head_shape();
        let tables = self.rope.as_ref().map(|(cos, sin)| (cos, sin));
        for (l, b) in w.blocks.iter().enumerate() {
            norm::norm(
                step,
                c.norm(),
                &s.x,
                &b.attn_norm,
                b.attn_norm_b.as_ref(),
                c.norm_eps,
                &s.xn,
                &s.norm_stats,
                (0, n),
            );
            matmul::linear(step, &s.xn, &b.qkv, b.qkv_b.as_ref(), &s.qkv, n, false);
            rope::rope_kv(step, &s.qkv, &s.row_table, heads, tables, &s.q, (&cache.k[l], &cache.v[l]), n);
            attention::attention(
                step,
                &s.q,
                &s.row_table,
                heads,
                (&cache.k[l], &cache.v[l]),
                &s.att,
                &s.lse,
                n,
            );
            matmul::linear(step, &s.att, &b.o, b.o_b.as_ref(), &s.x, n, true);
            norm::norm(
                step,
                c.norm(),
                &s.x,
                &b.mlp_norm,
                b.mlp_norm_b.as_ref(),
                c.norm_eps,
                &s.xn,
                &s.norm_stats,
                (0, n),
            );
            matmul::linear(step, &s.xn, &b.up, b.up_b.as_ref(), &s.up, n, false);
            act::activation(step, c.activation(), &s.up, &s.act, n, c.ffn);
            matmul::linear(step, &s.act, &b.down, b.down_b.as_ref(), &s.x, n, true);
            after_block(step, l, &s.x);
        }
    }

    /// Records the final norm, LM head and logit statistics for rows
    /// `first .. first + n` of `x` into rows `0 .. n` of `head`.
    pub fn record_head(&self, step: &mut Step, x: &Tensor, head: &Head, first: usize, n: usize) {
        assert!(n <= head.rows);
        let c = &self.config;
        let w = &self.weights;
        norm::norm(
            step,
            c.norm(),
            x,
            &w.final_norm,
            w.final_norm_b.as_ref(),
            c.norm_eps,
            &head.xn,
            &head.norm_stats,
            (first, n),
        );
        matmul::linear(step, &head.xn, w.head(), None, &head.logits, n, false);
        stats::logit_stats(step, &head.logits, &head.targets, &head.stats, n);
    }
}
