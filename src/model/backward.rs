//! The backward pass on the GPU, the mirror of [`forward`](super::forward): the LM head,
//! then every block in reverse, then the embedding. Each function takes the gradient of
//! the loss with respect to its output in `bw.dx` and leaves the gradient with respect to
//! its input there, adding parameter gradients into a [`Weights`] of gradient tensors.

use super::forward::{BlockIo, GpuModel};
use super::layout::{Block, Linear, Weights};
use super::ModelConfig;
use crate::gpu::{DType, Gpu, Sharded, Step, Tensor};
use crate::ops::embed::EmbedIndex;
use crate::ops::matmul::Mat;
use crate::ops::{act, attention, cgfm, embed, matmul, norm, rope};
use anyhow::Result;

/// Working buffers of the backward pass over `rows` rows (`batch` sequences).
pub struct BackwardBufs {
    /// Gradient of the residual stream.
    pub dx: Tensor,
    /// Gradient at a norm's output: the LM head's input gradient, then the blocks'.
    pub(crate) dxn: Tensor,
    d_act: Tensor,
    d_up: Tensor,
    d_att: Tensor,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    delta: Tensor,
    d_qkv: Tensor,
    /// The gradient at the output of Qwen3's q/k norms (their backward rewrites `d_qkv`).
    d_qkv_normed: Option<Tensor>,
    /// `rows` ones: bias gradients are products with it.
    ones: Tensor,
    /// The norms' weight gradients' per-group sums ([`norm::norm_weight_grad`]).
    norm_sums: Tensor,
    /// The embedding gradient's sorted rows and partial sums ([`embed::embed_backward`]).
    embed: embed::Scratch,
    /// CGFM's re-weighting of the blocks' linear weight gradients, when on.
    pub cgfm: Option<cgfm::Split>,
}

/// Elements of [`BackwardBufs`]'s norm sums over `rows` tokens: enough for the block and
/// final norms (`hidden` wide) and Qwen3's q/k norms (one row per head).
pub fn norm_sums_len(c: &ModelConfig, rows: usize) -> usize {
    let width = if c.qk_norm { c.hidden.max(c.heads * c.head_dim) } else { c.hidden };
    norm::weight_grad_scratch_bound(rows, width)
}

impl BackwardBufs {
    pub fn new(gpu: &Gpu, model: &GpuModel, batch: usize, seq_len: usize) -> Result<BackwardBufs> {
        let c = &model.config;
        let rows = batch * seq_len;
        let heads = c.head_shape();
        let f = |name: &str, cols: usize| gpu.zeros(name, &[rows, cols], DType::F32);
        let kv_shape = [batch, seq_len, c.kv_heads, c.head_dim];
        Ok(BackwardBufs {
            dx: f("dx", c.hidden)?,
            dxn: f("dxn", c.hidden)?,
            d_act: f("d act", c.ffn)?,
            d_up: f("d up", c.up_width())?,
            d_att: f("d att", c.heads * c.head_dim)?,
            dq: f("dq", c.heads * c.head_dim)?,
            dk: gpu.zeros("dk", &kv_shape, DType::F32)?,
            dv: gpu.zeros("dv", &kv_shape, DType::F32)?,
            delta: f("attention delta", c.heads)?,
            d_qkv: f("d qkv", heads.qkv_width())?,
            d_qkv_normed: c.qk_norm.then(|| f("d qkv normed", heads.qkv_width())).transpose()?,
            ones: gpu.upload_f32("ones", &[rows], &vec![1.0; rows])?,
            norm_sums: gpu.zeros("norm sums", &[norm_sums_len(c, rows)], DType::F32)?,
            embed: embed::Scratch::new(gpu, rows, c.hidden)?,
            cgfm: None,
        })
    }

    pub fn bytes(&self) -> u64 {
        [
            &self.dx,
            &self.dxn,
            &self.d_act,
            &self.d_up,
            &self.d_att,
            &self.dq,
            &self.dk,
            &self.dv,
            &self.delta,
            &self.d_qkv,
            &self.ones,
            &self.norm_sums,
        ]
        .into_iter()
        .chain(&self.d_qkv_normed)
        .map(|t| t.bytes())
        .sum::<u64>()
            + self.embed.bytes()
            + self.cgfm.as_ref().map_or(0, cgfm::Split::bytes)
    }
}

/// What the final norm's forward pass saved: its input `x` (the last residual stream) and
/// its statistics.
pub struct FinalNormSaved<'a> {
    pub x: &'a Tensor,
    pub stats: &'a Tensor,
}

impl GpuModel {
    /// Backward of the LM head over the `rows` rows from `first`, given their logits'
    /// gradient `d_logits` (`[rows, vocab]`, from row 0): `bw.dxn` for those rows, and the
    /// head weight's gradient added into `d_head` (None: frozen). The training graph calls it
    /// once per chunk of rows, beside that chunk's forward pass, so no logits of the whole
    /// batch are ever kept. Each row shard of the head takes its columns of `d_logits`.
    pub fn record_lm_head_backward(
        &self,
        step: &mut Step,
        (xn, d_logits): (&Tensor, &Tensor),
        d_head: Option<&Sharded>,
        bw: &BackwardBufs,
        (first, rows): (usize, usize),
    ) {
        // The head as the forward pass read it (a packed copy of a tied embedding under LoRA).
        let head = self.head_weight();
        let (vocab, hidden) = (head.shape[0], head.shape[1]);
        let dxn = Mat::rows(&bw.dxn, first * hidden, hidden);
        for (i, (col, w)) in head.rows().enumerate() {
            let n = w.shape[0];
            let dy = Mat { t: d_logits, off: col, rs: vocab, cs: 1 };
            matmul::matmul(step, dy, Mat::rows(w, 0, hidden), dxn, (rows, hidden, n), None, i > 0);
        }
        for (col, dw) in d_head.iter().flat_map(|d| d.rows()) {
            let n = dw.shape[0];
            let (dy_t, xn) = (Mat::transposed(d_logits, col, vocab), Mat::rows(xn, first * hidden, hidden));
            matmul::matmul(step, dy_t, xn, Mat::rows(dw, 0, hidden), (n, hidden, rows), None, true);
        }
    }

    /// Backward of the final norm, from `bw.dxn` (the LM head's input gradient) to `bw.dx`.
    /// `grads` None: frozen weights.
    pub fn record_final_norm_backward(
        &self,
        step: &mut Step,
        saved: &FinalNormSaved,
        grads: Option<&Weights<Sharded>>,
        bw: &BackwardBufs,
        n: usize,
    ) {
        let (c, w) = (&self.config, &self.weights);
        let x = norm::Saved { x: saved.x, offset: 0, stats: saved.stats };
        norm::norm_backward(step, c.norm(), x, &w.final_norm, &bw.dxn, &bw.dx, n, false);
        if let Some(g) = grads {
            norm::norm_weight_grad(
                step,
                x,
                &bw.dxn,
                &g.final_norm,
                g.final_norm_b.as_deref(),
                n,
                &bw.norm_sums,
            );
        }
    }

    /// Backward of block `l` (whose forward pass left `io`): `bw.dx` goes from the
    /// gradient at `x_out` to the gradient at `x_in`. Parameter gradients go into `grads`
    /// (None: frozen) and into the block's LoRA adapters, if it has any.
    #[allow(clippy::too_many_arguments)]
    pub fn record_block_backward(
        &self,
        step: &mut Step,
        l: usize,
        io: &BlockIo,
        rows: &Tensor,
        grads: Option<&Block<Sharded>>,
        bw: &BackwardBufs,
        n: usize,
    ) {
        let c = &self.config;
        let b = &self.weights.blocks[l];
        // One linear layer: base gradients (the weight's re-weighted by CGFM when on), then
        // the adapters' share of dx and their own.
        let linear = |step: &mut Step, which: Linear, x: &Tensor, dy: &Tensor, dx: &Tensor| {
            let dw = grads.map(|g| &**g.linear(which));
            let split = bw.cgfm.as_ref().zip(dw);
            let d_params =
                (dw.filter(|_| split.is_none()), grads.and_then(|g| g.linear_bias(which)).map(|t| &**t));
            matmul::linear_backward(step, (x, b.linear(which)), dy, Some((dx, false)), d_params, &bw.ones, n);
            if let Some((split, dw)) = split {
                cgfm::split_weight_grad(step, split, (x, dy), dw);
            }
            if let Some(lora) = io.lora {
                lora.record_backward(step, which, x, dy, dx, n);
            }
        };
        let norm_backward =
            |step: &mut Step, saved: norm::Saved, w: &Tensor, dw: Option<(&Tensor, Option<&Tensor>)>| {
                norm::norm_backward(step, c.norm(), saved, w, &bw.dxn, &bw.dx, n, true);
                if let Some((dw, db)) = dw {
                    norm::norm_weight_grad(step, saved, &bw.dxn, dw, db, n, &bw.norm_sums);
                }
            };
        // Gemma 3's post-norms (x += norm(y), y an output projection's result): the gradient
        // at y, into `bw.dxn`, from the stream's in `bw.dx`, which passes through unchanged.
        let post = io.post_norms.map(|p| (p, (&b.post_attn_norm, &b.post_mlp_norm)));
        let post_grads = grads.map(|g| (&g.post_attn_norm, &g.post_mlp_norm));
        let post_norm_backward = |step: &mut Step,
                                  (x, stats): (&Tensor, &Tensor),
                                  w: &Option<Sharded>,
                                  dw: Option<&Option<Sharded>>| {
            let saved = norm::Saved { x, offset: 0, stats };
            let w = w.as_ref().expect("post-norm weights of a post-norm model");
            norm::norm_backward(step, c.norm(), saved, w, &bw.dx, &bw.dxn, n, false);
            if let Some(dw) = dw.map(|d| d.as_ref().expect("post-norm gradient")) {
                norm::norm_weight_grad(step, saved, &bw.dx, dw, None, n, &bw.norm_sums);
            }
        };
        // MLP: x_out = x_mid + down(act(up(norm(m)))), m = x_mid, or x_in with a parallel
        // residual; then dx is the gradient at x_mid (which is dx at x_out when parallel).
        let mlp_dy = match post {
            Some((p, (_, w))) => {
                post_norm_backward(step, (&p.mlp_out, &p.mlp_stats), w, post_grads.map(|(_, dw)| dw));
                &bw.dxn
            }
            None => &bw.dx,
        };
        linear(step, Linear::Down, io.act, mlp_dy, &bw.d_act);
        act::activation_backward(step, c.activation(), io.up, &bw.d_act, &bw.d_up, n, c.ffn);
        linear(step, Linear::Up, io.xn2, &bw.d_up, &bw.dxn);
        let mlp_in = if c.parallel_residual { io.x_in } else { io.x_mid };
        let mlp_norm = norm::Saved { x: mlp_in, offset: 0, stats: io.stats2 };
        let mlp_norm_grads = grads.map(|g| (&*g.mlp_norm, g.mlp_norm_b.as_deref()));
        if c.parallel_residual {
            // The attention's output projection sees dx at x_out before the MLP's norm adds
            // its share for x_in.
            linear(step, Linear::O, io.att, &bw.dx, &bw.d_att);
            norm_backward(step, mlp_norm, &b.mlp_norm, mlp_norm_grads);
        } else {
            norm_backward(step, mlp_norm, &b.mlp_norm, mlp_norm_grads);
            let attn_dy = match post {
                Some((p, (w, _))) => {
                    post_norm_backward(step, (&p.attn_out, &p.attn_stats), w, post_grads.map(|(dw, _)| dw));
                    &bw.dxn
                }
                None => &bw.dx,
            };
            linear(step, Linear::O, io.att, attn_dy, &bw.d_att);
        }
        // Attention: x_mid = x_in + o(attention(rope(qkv(norm(x_in))))).
        let saved = attention::Saved {
            q: io.q,
            rows,
            k_cache: io.k_cache,
            v_cache: io.v_cache,
            out: io.att,
            lse: io.lse,
        };
        let heads = c.head_shape();
        let scores = (heads, self.scores(l));
        let d_qkv = (&bw.dq, &bw.dk, &bw.dv);
        attention::attention_backward(step, self.attention, saved, scores, &bw.d_att, d_qkv, &bw.delta);
        let tables = self.rope_tables(l, io.long_rope);
        rope::rope_kv_backward(step, rows, heads, tables, &bw.dq, (&bw.dk, &bw.dv), &bw.d_qkv, n);
        if let (Some(saved), Some(dy)) = (io.qk_norm, &bw.d_qkv_normed) {
            step.copy(&bw.d_qkv, 0, dy, 0, n * heads.qkv_width());
            let norms = self.qk_norms(b, saved);
            let d_norms =
                grads.map(|g| [&g.q_norm, &g.k_norm].map(|t| t.as_ref().expect("q/k norm gradient")));
            for (i, (w, stats, layout)) in norms.into_iter().enumerate() {
                let x = norm::Saved { x: &saved.raw, offset: 0, stats };
                norm::head_norm_backward(step, c.norm(), x, layout, w, dy, &bw.d_qkv, n);
                if let Some(dw) = d_norms {
                    norm::head_norm_weight_grad(step, x, layout, dy, dw[i], n, &bw.norm_sums);
                }
            }
        }
        linear(step, Linear::Qkv, io.xn1, &bw.d_qkv, &bw.dxn);
        let input = norm::Saved { x: io.x_in, offset: 0, stats: io.stats1 };
        norm_backward(step, input, &b.attn_norm, grads.map(|g| (&*g.attn_norm, g.attn_norm_b.as_deref())));
    }

    /// Backward of the embedding: adds `bw.dx` into the token (and position) tables' gradients.
    pub fn record_embed_backward(
        &self,
        step: &mut Step,
        (ids, rows): (&Tensor, &Tensor),
        grads: &Weights<Sharded>,
        bw: &BackwardBufs,
        n: usize,
    ) {
        let ids = EmbedIndex::Ids(ids, self.config.embed_scale);
        embed::embed_backward(step, ids, &bw.dx, &grads.embed, n, &bw.embed);
        if let Some(d_pos) = &grads.pos_embed {
            embed::embed_backward(step, EmbedIndex::Positions(rows), &bw.dx, d_pos, n, &bw.embed);
        }
    }
}
