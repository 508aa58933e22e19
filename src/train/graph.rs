//! The buffers and recording of one training micro-batch on the GPU: embedding, every
//! block with its activations kept for the backward pass (or recomputed), the LM head
//! with the fused cross-entropy, and the whole backward pass, all in one [`Step`].
//!
//! Rows are `batch × seq_len` tokens, row `b · seq_len + t` being position `t` of sequence
//! `b`; each layer's "KV cache" is simply its keys and values for the batch.

use super::data::Row;
use crate::gpu::{DType, Gpu, Sharded, Step, Tensor};
use crate::model::backward::{BackwardBufs, FinalNormSaved};
use crate::model::forward::{BlockIo, GpuModel, PostNormBufs, QkNormBufs};
use crate::model::layout::Weights;
use crate::model::lora::BlockLora;
use crate::modulate::{LcmConfig, LcmTraining};
use crate::ops::matmul::Mat;
use crate::ops::norm::NormKind;
use crate::ops::stats::NO_TARGET;
use crate::ops::{align, cgfm, matmul, norm, xent};
use anyhow::{bail, Result};

/// Whether each block's activations stay in memory from the forward to the backward pass
/// (fast), or only its input does and the block's forward pass is run again just before
/// its backward pass (about a third more compute, a fraction of the memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationMemory {
    Keep,
    Recompute,
}

/// What one block's forward pass leaves for its backward pass (besides its input).
struct BlockActs {
    x_mid: Tensor,
    xn1: Tensor,
    stats1: Tensor,
    xn2: Tensor,
    stats2: Tensor,
    qkv: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    att: Tensor,
    lse: Tensor,
    up: Tensor,
    act: Tensor,
    qk_norm: Option<QkNormBufs>,
    post_norms: Option<PostNormBufs>,
}

impl BlockActs {
    fn new(gpu: &Gpu, model: &GpuModel, batch: usize, seq_len: usize) -> Result<BlockActs> {
        let c = &model.config;
        let rows = batch * seq_len;
        let f = |name: &str, cols: usize| gpu.zeros(name, &[rows, cols], DType::F32);
        let kv_shape = [batch, seq_len, c.kv_heads, c.head_dim];
        Ok(BlockActs {
            x_mid: f("x mid", c.hidden)?,
            xn1: f("xn1", c.hidden)?,
            stats1: f("norm1 stats", 2)?,
            xn2: f("xn2", c.hidden)?,
            stats2: f("norm2 stats", 2)?,
            qkv: f("qkv", c.head_shape().qkv_width())?,
            q: f("q", c.heads * c.head_dim)?,
            k: gpu.zeros("k", &kv_shape, DType::F32)?,
            v: gpu.zeros("v", &kv_shape, DType::F32)?,
            att: f("att", c.heads * c.head_dim)?,
            lse: f("lse", c.heads)?,
            up: f("up", c.up_width())?,
            act: f("act", c.ffn)?,
            qk_norm: QkNormBufs::new(gpu, c, rows)?,
            post_norms: PostNormBufs::new(gpu, c, rows)?,
        })
    }

    /// The block's buffers; `long_rope`: the rows rotate with longrope's long factors.
    fn io<'a>(
        &'a self,
        (x_in, x_out): (&'a Tensor, &'a Tensor),
        lora: Option<&'a BlockLora>,
        long_rope: bool,
    ) -> BlockIo<'a> {
        BlockIo {
            x_in,
            x_mid: &self.x_mid,
            x_out,
            xn1: &self.xn1,
            stats1: &self.stats1,
            xn2: &self.xn2,
            stats2: &self.stats2,
            qkv: &self.qkv,
            q: &self.q,
            k_cache: &self.k,
            v_cache: &self.v,
            att: &self.att,
            lse: &self.lse,
            decode_part: None,
            up: &self.up,
            act: &self.act,
            qk_norm: self.qk_norm.as_ref(),
            post_norms: self.post_norms.as_ref(),
            lora,
            long_rope,
            lcm: None,
        }
    }

    fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        [
            &self.x_mid,
            &self.xn1,
            &self.stats1,
            &self.xn2,
            &self.stats2,
            &self.qkv,
            &self.q,
            &self.k,
            &self.v,
            &self.att,
            &self.lse,
            &self.up,
            &self.act,
        ]
        .into_iter()
        .chain(self.qk_norm.iter().flat_map(QkNormBufs::tensors))
        .chain(self.post_norms.iter().flat_map(PostNormBufs::tensors))
    }
}

/// The LM head and its loss run over chunks of rows whose logits take at most this many
/// bytes: no `[rows, vocab]` tensor is kept (8 × 512 rows of a 128k vocabulary would be 2 GiB,
/// past what one binding may hold), and the chunk stays under WebGPU's default binding limit.
const HEAD_CHUNK_BYTES: usize = 64 << 20;

/// The rows of one chunk of the LM head over a micro-batch of `rows` rows.
pub fn head_chunk_rows(rows: usize, vocab: usize) -> usize {
    (HEAD_CHUNK_BYTES / (4 * vocab.max(1))).clamp(1, rows.max(1))
}

/// What a training step updates: every weight (their gradients), or LoRA adapters per
/// block over a frozen model.
#[derive(Clone, Copy)]
pub enum Trained<'a> {
    Full(&'a Weights<Sharded>),
    Lora(&'a [BlockLora]),
}

/// The GPU buffers of a training micro-batch of fixed shape.
pub struct TrainGraph {
    pub batch: usize,
    pub seq_len: usize,
    pub memory: ActivationMemory,
    ids: Tensor,
    targets: Tensor,
    row_table: Tensor,
    /// The residual stream before each block and after the last: `layers + 1` tensors.
    xs: Vec<Tensor>,
    /// One set per block (Keep) or one shared set (Recompute).
    acts: Vec<BlockActs>,
    xn_final: Tensor,
    stats_final: Tensor,
    /// One chunk of rows' logits ([`head_chunk_rows`]), then their gradient.
    logits: Tensor,
    loss: Tensor,
    bw: BackwardBufs,
    /// LCM at the modulated blocks' outputs, when on.
    lcm: Option<LcmTraining>,
    /// The alignment loss between adjacent block outputs, when on.
    align: Option<Align>,
}

/// The alignment loss's buffers: RMS-normalised block outputs and their statistics (one per
/// block), the gradient at one of them, the per-row loss, and the unit weight the norm uses.
struct Align {
    beta: f32,
    ones: Tensor,
    n: Vec<Tensor>,
    stats: Vec<Tensor>,
    g: Tensor,
    loss: Tensor,
}

impl Align {
    fn bytes(&self) -> u64 {
        let own = [&self.ones, &self.g, &self.loss].map(Tensor::bytes).iter().sum::<u64>();
        own + self.n.iter().chain(&self.stats).map(Tensor::bytes).sum::<u64>()
    }
}

/// methods.md's `n(x) = x / sqrt(mean(x²) + 1e-6)`.
const ALIGN_EPS: f32 = 1e-6;

impl TrainGraph {
    pub fn new(
        gpu: &Gpu,
        model: &GpuModel,
        batch: usize,
        seq_len: usize,
        memory: ActivationMemory,
    ) -> Result<TrainGraph> {
        let c = &model.config;
        if batch == 0 || seq_len == 0 {
            bail!("batch and sequence length must be at least 1 (got --batch {batch}, --seq-len {seq_len})");
        }
        if seq_len > c.max_positions {
            bail!("--seq-len {seq_len} exceeds the model's context of {} tokens", c.max_positions);
        }
        let rows = batch * seq_len;
        let table: Vec<u32> = (0..rows).flat_map(|r| [(r / seq_len) as u32, (r % seq_len) as u32]).collect();
        let n_acts = if memory == ActivationMemory::Keep { c.layers } else { 1 };
        // Fewer rows where the adapter's binding is under the chunk's budget (the memory plan
        // counts the budget's).
        let chunk = head_chunk_rows(rows, c.vocab).min((gpu.max_binding_elems() as usize / c.vocab).max(1));
        Ok(TrainGraph {
            batch,
            seq_len,
            memory,
            ids: gpu.zeros("train ids", &[rows], DType::U32)?,
            targets: gpu.zeros("train targets", &[rows], DType::U32)?,
            row_table: gpu.upload_u32("train row table", &[rows, 2], &table)?,
            xs: (0..=c.layers)
                .map(|_| gpu.zeros("x", &[rows, c.hidden], DType::F32))
                .collect::<Result<_>>()?,
            acts: (0..n_acts).map(|_| BlockActs::new(gpu, model, batch, seq_len)).collect::<Result<_>>()?,
            xn_final: gpu.zeros("xn final", &[rows, c.hidden], DType::F32)?,
            stats_final: gpu.zeros("final norm stats", &[rows, 2], DType::F32)?,
            logits: gpu.zeros("logits", &[chunk, c.vocab], DType::F32)?,
            loss: gpu.zeros("loss", &[rows], DType::F32)?,
            bw: BackwardBufs::new(gpu, model, batch, seq_len)?,
            lcm: None,
            align: None,
        })
    }

    /// Trains with LCM on (methods.md section 1): forward at every modulated block's output,
    /// its reverse scan in the backward pass. A config that is off leaves the plain step.
    pub fn set_lcm(&mut self, gpu: &Gpu, model: &GpuModel, cfg: &LcmConfig) -> Result<()> {
        let c = &model.config;
        self.lcm = LcmTraining::new(gpu, cfg, c.layers, c.hidden, (self.batch, self.rows()))?;
        Ok(())
    }

    /// Adds the alignment loss `beta · Σ_l |n(h[l]) - n(h[l-1])|² / (tokens · d)` over
    /// adjacent block outputs (methods.md section 2, eq. 3); beta 0 removes it.
    pub fn set_align(&mut self, gpu: &Gpu, model: &GpuModel, beta: f32) -> Result<()> {
        if !(beta.is_finite() && beta >= 0.0) {
            bail!("--align-beta must be 0 or more, got {beta}");
        }
        if beta == 0.0 {
            self.align = None;
            return Ok(());
        }
        let (rows, d, layers) = (self.rows(), model.config.hidden, model.config.layers);
        let f = |name: &str, cols: usize| gpu.zeros(name, &[rows, cols], DType::F32);
        self.align = Some(Align {
            beta,
            ones: gpu.upload_f32("ones", &[d], &vec![1.0; d])?,
            n: (0..layers).map(|_| f("align n", d)).collect::<Result<_>>()?,
            stats: (0..layers).map(|_| f("align stats", 2)).collect::<Result<_>>()?,
            g: f("align gradient", d)?,
            loss: gpu.zeros("align loss", &[rows], DType::F32)?,
        });
        Ok(())
    }

    /// Re-weights the blocks' linear weight gradients into `local · G_local + global ·
    /// G_global` over each sequence (methods.md section 3); (1, 1) is the plain gradient.
    pub fn set_cgfm(&mut self, gpu: &Gpu, model: &GpuModel, (local, global): (f32, f32)) -> Result<()> {
        let c = &model.config;
        self.bw.cgfm = if local == 1.0 && global == 1.0 {
            None
        } else {
            let widest = [c.hidden, c.ffn, c.up_width(), c.head_shape().qkv_width(), c.heads * c.head_dim];
            let widest = widest.into_iter().max().unwrap_or(0);
            Some(cgfm::Split::new(gpu, (local, global), (self.batch, self.seq_len), widest)?)
        };
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.batch * self.seq_len
    }

    /// Runs the LM head and its loss over chunks of `rows` rows (at most the micro-batch)
    /// instead of [`head_chunk_rows`]'s: the whole micro-batch is the head unchunked, as it
    /// was before chunking; the tests compare the two.
    pub fn set_head_chunk_rows(&mut self, gpu: &Gpu, rows: usize) -> Result<()> {
        let vocab = self.logits.shape[1];
        self.logits = gpu.zeros("logits", &[rows.clamp(1, self.rows()), vocab], DType::F32)?;
        Ok(())
    }

    /// GPU memory the micro-batch's buffers take (activations and backward scratch).
    pub fn bytes(&self) -> u64 {
        let acts: u64 = self.acts.iter().flat_map(|a| a.tensors()).map(Tensor::bytes).sum::<u64>()
            + self.lcm.as_ref().map_or(0, LcmTraining::bytes)
            + self.align.as_ref().map_or(0, Align::bytes);
        let own = [
            &self.ids,
            &self.targets,
            &self.row_table,
            &self.xn_final,
            &self.stats_final,
            &self.logits,
            &self.loss,
        ];
        acts + self.xs.iter().map(Tensor::bytes).sum::<u64>()
            + own.iter().map(|t| t.bytes()).sum::<u64>()
            + self.bw.bytes()
    }

    /// Writes a micro-batch: up to `batch` rows of `seq_len + 1` ids (inputs, then the last
    /// target), each target left out of the loss where its row says so. Missing rows (a last,
    /// short validation batch) have no targets.
    pub fn write_batch(&self, gpu: &Gpu, rows: &[Row], vocab: usize) -> Result<()> {
        if rows.is_empty() || rows.len() > self.batch {
            bail!("a micro-batch takes 1 to {} rows, got {}", self.batch, rows.len());
        }
        let mut ids = Vec::with_capacity(self.rows());
        let mut targets = Vec::with_capacity(self.rows());
        for (i, row) in rows.iter().enumerate() {
            let len = row.ids.len();
            if len != self.seq_len + 1 || row.trained.is_some_and(|t| t.len() != self.seq_len) {
                bail!("row {i} has {len} ids, expected --seq-len + 1 = {}", self.seq_len + 1);
            }
            if let Some(&bad) = row.ids.iter().find(|&&id| id as usize >= vocab) {
                bail!("row {i} holds token id {bad}, beyond the model's vocabulary of {vocab}");
            }
            ids.extend_from_slice(&row.ids[..self.seq_len]);
            match row.trained {
                None => targets.extend_from_slice(&row.ids[1..]),
                Some(trained) => {
                    targets.extend(
                        row.ids[1..].iter().zip(trained).map(|(&id, &t)| if t { id } else { NO_TARGET }),
                    )
                }
            }
        }
        ids.resize(self.rows(), 0);
        targets.resize(self.rows(), NO_TARGET);
        gpu.write_u32(&self.ids, &ids);
        gpu.write_u32(&self.targets, &targets);
        Ok(())
    }

    fn acts_for(&self, l: usize) -> &BlockActs {
        &self.acts[if self.memory == ActivationMemory::Keep { l } else { 0 }]
    }

    /// Records forward, loss and backward of the written micro-batch, adding gradients
    /// into what is trained. `loss_scale` is 1 / (targets over all micro-batches of the
    /// step), so the gradients are those of the mean loss.
    pub fn record(&self, step: &mut Step, model: &GpuModel, trained: Trained, loss_scale: f32) {
        let lora = match trained {
            Trained::Full(_) => None,
            Trained::Lora(l) => Some(l),
        };
        let d_head = match trained {
            Trained::Full(g) => Some(g.head()),
            Trained::Lora(_) => None,
        };
        self.record_forward(step, model, lora, loss_scale, Some(d_head));
        self.record_backward(step, model, trained, loss_scale);
    }

    /// Records the forward pass and the loss. With `head_backward` (training), each chunk of
    /// the LM head's rows is followed by its backward pass, from the logits' gradient that
    /// the loss leaves in their place: into `bw.dxn`, and into the head's gradient where it
    /// is trained (`Some(Some(gradient))`). Without it (validation), only the loss.
    pub fn record_forward(
        &self,
        step: &mut Step,
        model: &GpuModel,
        lora: Option<&[BlockLora]>,
        loss_scale: f32,
        head_backward: Option<Option<&Sharded>>,
    ) {
        let lora_of = |l: usize| lora.map(|blocks| &blocks[l]);
        // Every row of a training pass is one of `seq_len` positions: transformers' pass over
        // the batch takes the long factors when seq_len exceeds the original context.
        let long_rope = model.long_rope(self.seq_len);
        let c = &model.config;
        let w = &model.weights;
        let n = self.rows();
        let layers = c.layers;
        model.record_embed(step, &self.ids, &self.row_table, &self.xs[0], n);
        for l in 0..layers {
            let io = self.acts_for(l).io((&self.xs[l], &self.xs[l + 1]), lora_of(l), long_rope);
            model.record_block(step, l, &io, &self.row_table, n);
            if let Some(lcm) = &self.lcm {
                lcm.record_forward(step, l, &self.xs[l + 1], &self.row_table, n);
            }
            if let Some(a) = &self.align {
                let out = (&a.n[l], &a.stats[l]);
                norm::norm(
                    step,
                    NormKind::Rms,
                    &self.xs[l + 1],
                    &a.ones,
                    None,
                    ALIGN_EPS,
                    out.0,
                    out.1,
                    (0, n),
                );
            }
        }
        let x_last = &self.xs[layers];
        let final_b = w.final_norm_b.as_deref();
        norm::norm(
            step,
            c.norm(),
            x_last,
            &w.final_norm,
            final_b,
            c.norm_eps,
            &self.xn_final,
            &self.stats_final,
            (0, n),
        );
        let chunk = self.logits.shape[0];
        for first in (0..n).step_by(chunk) {
            let rows = chunk.min(n - first);
            let xn = Mat::rows(&self.xn_final, first * c.hidden, c.hidden);
            // Each row shard of the head writes its columns of the logits.
            for (col, w) in model.head_weight().rows() {
                let (head, n_cols) = (Mat::transposed(w, 0, c.hidden), w.shape[0]);
                let logits = Mat { t: &self.logits, off: col, rs: c.vocab, cs: 1 };
                matmul::matmul(step, xn, head, logits, (rows, n_cols, c.hidden), None, false);
            }
            // The loss caps the logits itself (Gemma), then leaves their gradient in place.
            let loss = (&self.targets, &self.loss, first);
            xent::cross_entropy(step, &self.logits, loss, rows, loss_scale, c.logit_softcap);
            if let Some(d_head) = head_backward {
                let saved = (&self.xn_final, &self.logits);
                model.record_lm_head_backward(step, saved, d_head, &self.bw, (first, rows));
            }
        }
    }

    /// Records the backward pass after [`TrainGraph::record_forward`].
    pub fn record_backward(&self, step: &mut Step, model: &GpuModel, trained: Trained, loss_scale: f32) {
        let (grads, lora) = match trained {
            Trained::Full(g) => (Some(g), None),
            Trained::Lora(l) => (None, Some(l)),
        };
        let lora_of = |l: usize| lora.map(|blocks| &blocks[l]);
        let long_rope = model.long_rope(self.seq_len);
        let n = self.rows();
        let layers = model.config.layers;
        let saved = FinalNormSaved { x: &self.xs[layers], stats: &self.stats_final };
        model.record_final_norm_backward(step, &saved, grads, &self.bw, n);
        if let Some(a) = &self.align {
            step.clear(&a.loss);
        }
        for l in (0..layers).rev() {
            if let Some(a) = &self.align {
                // beta · |..|² / (tokens · d): loss_scale is 1 / tokens.
                let coef = a.beta * loss_scale / model.config.hidden as f32;
                let around = (l.checked_sub(1).map(|i| &a.n[i]), &a.n[l], a.n.get(l + 1));
                align::align(step, around, &a.g, &a.loss, coef, n);
                let h = norm::Saved { x: &self.xs[l + 1], offset: 0, stats: &a.stats[l] };
                norm::norm_backward(step, NormKind::Rms, h, &a.ones, &a.g, &self.bw.dx, n, true);
            }
            if let Some(lcm) = &self.lcm {
                lcm.record_backward(step, l, &self.bw.dx, &self.row_table, n);
            }
            let io = self.acts_for(l).io((&self.xs[l], &self.xs[l + 1]), lora_of(l), long_rope);
            if self.memory == ActivationMemory::Recompute {
                model.record_block(step, l, &io, &self.row_table, n);
            }
            let block_grads = grads.map(|g| &g.blocks[l]);
            model.record_block_backward(step, l, &io, &self.row_table, block_grads, &self.bw, n);
        }
        if let Some(grads) = grads {
            model.record_embed_backward(step, (&self.ids, &self.row_table), grads, &self.bw, n);
        }
    }

    /// The summed alignment loss of the last recorded micro-batch (0 when off).
    pub async fn read_align_loss(&self, gpu: &Gpu) -> Result<f64> {
        match &self.align {
            Some(a) => Ok(gpu.read_f32_async(&a.loss).await?.iter().map(|&l| l as f64).sum()),
            None => Ok(0.0),
        }
    }

    /// The summed loss of the last recorded micro-batch (read back).
    pub async fn read_loss_sum(&self, gpu: &Gpu) -> Result<f64> {
        Ok(gpu.read_f32_async(&self.loss).await?.iter().map(|&l| l as f64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::model::WeightChoice;
    use crate::ops::test_util::{gpu, gpu_with_binding, small_llama};

    /// A small Llama with a vocabulary of 1000. Tied, its [1000, 64] embedding (250 KiB) is
    /// the head, in 4 row shards under a 66,000-byte binding.
    fn config(tied: bool) -> crate::model::ModelConfig {
        small_llama(1000, 64, 96, tied)
    }

    /// Largest |got - want| within `tol` of the largest |want| (which must not be 0).
    fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let largest = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        let worst = got.iter().zip(want).map(|(&g, w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        eprintln!("{what}: largest difference {:.1e} of the largest value {largest:.3e}", worst);
        assert!(largest > 0.0 && worst <= tol * largest, "{what}: differs by {worst} (largest {largest})");
    }

    /// The LM head and its loss over chunks of 7 of the micro-batch's 2 × 11 rows (the last
    /// chunk one row), one row out of the loss, equal the CPU's over the whole batch from the
    /// same final-norm output: per-row losses, their gradient at that output and the head
    /// weight's. Tied with the head in row shards (each writes its columns of a chunk's
    /// logits); untied and soft-capped (the loss caps the logits itself); tied and capped on the
    /// tiled matrix engine (the GPUs' default).
    #[test]
    fn chunked_head_matches_cpu() {
        let tiled = Gpu::shared_on_tier(crate::gpu::Tier::Tiled).unwrap();
        let cases = [
            ("sharded", true, None, gpu_with_binding(66_000), 4),
            ("default tier", false, Some(0.5), gpu(), 1),
            ("tiled tier", true, Some(0.5), tiled, 1),
        ];
        for (label, tied, cap, gpu, shards) in cases {
            let mut cfg = config(tied);
            cfg.logit_softcap = cap;
            let host = Weights::random(&cfg, 5);
            let model = GpuModel::upload_weights(
                gpu,
                &cfg,
                &host,
                WeightChoice::Format(crate::gpu::WeightFormat::F32),
            )
            .unwrap();
            assert_eq!(model.head_weight().shards.len(), shards);
            let (batch, seq_len, vocab, hidden) = (2, 11, cfg.vocab, cfg.hidden);
            let mut graph = TrainGraph::new(gpu, &model, batch, seq_len, ActivationMemory::Keep).unwrap();
            graph.set_head_chunk_rows(gpu, 7).unwrap();
            let ids: Vec<Vec<u32>> = (0..batch)
                .map(|b| (0..=seq_len).map(|t| ((b * 389 + t * 613) % vocab) as u32).collect())
                .collect();
            let trained: Vec<bool> = (0..seq_len).map(|t| t != 4).collect();
            let rows = [Row { ids: &ids[0], trained: None }, Row { ids: &ids[1], trained: Some(&trained) }];
            graph.write_batch(gpu, &rows, vocab).unwrap();
            let targets: Vec<Option<u32>> = rows
                .iter()
                .flat_map(|r| {
                    (0..seq_len).map(move |t| r.trained.is_none_or(|m| m[t]).then_some(r.ids[t + 1]))
                })
                .collect();
            let scale = 1.0 / targets.iter().flatten().count() as f32;
            let d_head = gpu.zeros_sharded("d head", &[vocab, hidden], DType::F32).unwrap();
            let mut step = Step::new(gpu);
            graph.record_forward(&mut step, &model, None, scale, Some(Some(&d_head)));
            step.submit().unwrap();

            let n = graph.rows();
            let xn = gpu.read_f32(&graph.xn_final).unwrap();
            let w = gpu.read_sharded_f32(model.head_weight()).unwrap();
            let raw = cpu::matmul::linear(&xn, &w, None, n, vocab, hidden);
            let (loss, d_logits) = cpu::stats::cross_entropy(&raw, &targets, cap);
            let mut dxn = vec![0.0f64; n * hidden];
            let mut dw = vec![0.0f64; vocab * hidden];
            for (r, d_row) in d_logits.chunks(vocab).enumerate() {
                for (j, &d) in d_row.iter().enumerate() {
                    for k in 0..hidden {
                        dxn[r * hidden + k] += d as f64 * w[j * hidden + k] as f64;
                        dw[j * hidden + k] += d as f64 * xn[r * hidden + k] as f64;
                    }
                }
            }
            let what = format!("{label}, tied {tied}, cap {cap:?}");
            let loss: Vec<f64> = loss.iter().map(|&l| l as f64).collect();
            close(&gpu.read_f32(&graph.loss).unwrap(), &loss, 1e-5, &format!("{what}: losses"));
            close(&gpu.read_f32(&graph.bw.dxn).unwrap(), &dxn, 1e-5, &format!("{what}: d xn"));
            close(&gpu.read_sharded_f32(&d_head).unwrap(), &dw, 1e-5, &format!("{what}: d head"));
            if let Some(cap) = cap {
                let uncapped = cpu::stats::cross_entropy(&raw, &targets, None).0;
                let bent = uncapped.iter().zip(&loss).map(|(&u, c)| (u as f64 - c).abs()).fold(0.0, f64::max);
                assert!(bent > 0.1, "the cap {cap} changed the losses by only {bent}");
            }
        }
    }
}
