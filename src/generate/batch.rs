//! Batched generation: many requests (prompts × sampler seeds) decoded together on the GPU,
//! each with its own KV cache rows, LCM anchors and sampler, giving the tokens that
//! [`super::generate`] gives for each request alone, bit for bit: every row goes through the
//! same kernels as in a one-sequence run (see [`crate::ops::matmul::linear_spans`]), and the
//! other kernels compute each row on its own. Each generated token comes with what the model
//! thought of it (a [`TokenRecord`]).

use super::{Sampler, SamplerConfig, PREFILL_CHUNK};
use crate::gpu::{DType, Gpu, Step, Tensor};
use crate::model::forward::{Head, Scratch};
use crate::model::{GpuModel, KvCache};
use crate::modulate::{LcmConfig, LcmState};
use crate::ops::stats::{RowStats, NO_TARGET};
use anyhow::{bail, Result};

/// Rows per prefill submit: whole prompt chunks of several sequences share one.
const PREFILL_ROWS: usize = 4 * PREFILL_CHUNK;
/// GPU memory a batch may take (KV caches and working buffers) beyond the weights: wgpu does
/// not report an adapter's free memory, so this is a fixed budget that integrated GPUs,
/// browsers and lavapipe all meet.
const BATCH_MEMORY: u64 = 2 << 30;

pub struct SeqRequest {
    pub prompt: Vec<u32>,
    pub sampler: SamplerConfig,
    pub max_tokens: usize,
}

/// One generated token and what the model thought of it (the distribution it was drawn from,
/// at temperature 1, before any sampling filter).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    pub id: u32,
    /// log p(id) under the softmax of the raw logits.
    pub logprob: f32,
    /// Entropy of that softmax, in nats.
    pub entropy: f32,
    /// Probability of the most likely token.
    pub top1_prob: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SeqOutput {
    /// Includes the EOS token if one ended the sequence.
    pub tokens: Vec<TokenRecord>,
}

impl SeqOutput {
    pub fn ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }
}

/// How many sequences of `len` positions fit the adapter's memory and binding limits at once:
/// each layer's KV cache `[seqs, len, kv_heads, head_dim]` and the logits `[seqs, vocab]` must
/// fit one binding, and the caches with the working buffers must fit `BATCH_MEMORY`.
pub fn max_batch(gpu: &Gpu, model: &GpuModel, len: usize) -> usize {
    let c = &model.config;
    let binding = gpu.limits.max_storage_buffer_binding_size;
    let kv_per_seq = (len.max(1) * c.kv_heads * c.head_dim * 4) as u64;
    let by_binding = (binding / kv_per_seq).min(binding / (c.vocab as u64 * 4));
    let prefill = model.working_bytes(PREFILL_ROWS);
    let per_seq = model.kv_bytes(1, len.max(1)) + model.working_bytes(1) + (c.hidden * 4) as u64;
    let by_memory = BATCH_MEMORY.saturating_sub(prefill) / per_seq;
    by_binding.min(by_memory) as usize
}

/// Generates every request together as one batch on the GPU (ragged prompts), each with its
/// own sampler (seeded from its SamplerConfig), KV cache rows and LCM anchors; the tokens equal
/// those of generating each request alone with [`super::generate`]. `on_step(done, total)`
/// reports progress once per decode step. Sequences that hit EOS stop; the batch goes on.
///
/// More requests than [`max_batch`] allows for the longest one run as consecutive sub-batches
/// (in the given order); `total` counts the decode steps of all of them.
pub fn generate_batch(
    gpu: &Gpu,
    model: &GpuModel,
    reqs: &[SeqRequest],
    eos: &[u32],
    lcm: Option<&LcmConfig>,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Vec<SeqOutput>> {
    generate_batch_arms(gpu, model, reqs, eos, &vec![lcm; reqs.len()], on_step)
}

/// [`generate_batch`] with an LCM setting per request (`lcm_of[i]` for request i; None: the
/// plain model), so that several arms (baseline and modulated, or a sweep's settings) share
/// one batch. Each request's tokens equal those of generating it alone with its setting.
pub fn generate_batch_arms(
    gpu: &Gpu,
    model: &GpuModel,
    reqs: &[SeqRequest],
    eos: &[u32],
    lcm_of: &[Option<&LcmConfig>],
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Vec<SeqOutput>> {
    let c = &model.config;
    if lcm_of.len() != reqs.len() {
        bail!("{} LCM settings given for {} requests", lcm_of.len(), reqs.len());
    }
    for (i, r) in reqs.iter().enumerate() {
        if r.prompt.is_empty() {
            bail!("request {i}: the prompt encodes to no tokens");
        }
        if let Some(bad) = r.prompt.iter().find(|&&id| id as usize >= c.vocab) {
            bail!("request {i}: token id {bad} is outside the model's vocabulary of {}", c.vocab);
        }
        if r.prompt.len() + r.max_tokens > c.max_positions {
            bail!(
                "request {i}: the prompt ({} tokens) plus {} new tokens exceeds the model's context of {} tokens",
                r.prompt.len(),
                r.max_tokens,
                c.max_positions
            );
        }
        r.sampler.validate()?;
        if let Some(cfg) = lcm_of[i] {
            cfg.validate(c.layers)?;
        }
    }
    let len = reqs.iter().map(|r| r.prompt.len() + r.max_tokens).max().unwrap_or(0);
    let fit = max_batch(gpu, model, len);
    if fit == 0 {
        bail!("one sequence of {len} positions does not fit this adapter's memory and binding limits");
    }
    // Longrope picks its factors per pass of one sequence; sequences that reach past its
    // original context would need both in one pass, so they run one at a time.
    let fit = if model.long_rope(len) { 1 } else { fit };
    generate_in_batches(gpu, model, reqs, eos, lcm_of, on_step, fit)
}

/// [`generate_batch`] (requests already checked) in sub-batches of at most `fit` sequences.
fn generate_in_batches(
    gpu: &Gpu,
    model: &GpuModel,
    reqs: &[SeqRequest],
    eos: &[u32],
    lcm_of: &[Option<&LcmConfig>],
    on_step: &mut dyn FnMut(usize, usize),
    fit: usize,
) -> Result<Vec<SeqOutput>> {
    let steps = |part: &[SeqRequest]| part.iter().map(|r| r.max_tokens).max().unwrap_or(0);
    let total = reqs.chunks(fit).map(steps).sum();
    let mut done = 0;
    let mut out = Vec::with_capacity(reqs.len());
    for (part, part_lcm) in reqs.chunks(fit).zip(lcm_of.chunks(fit)) {
        if steps(part) == 0 {
            out.extend(part.iter().map(|_| SeqOutput { tokens: Vec::new() }));
            continue;
        }
        let batch = Batch::new(gpu, model, part, part_lcm)?;
        let mut reached = 0;
        out.extend(batch.run(part, eos, &mut |i| {
            reached = i;
            on_step(done + i, total)
        })?);
        done += steps(part);
        if reached < steps(part) {
            // Every sequence stopped at EOS early: the sub-batch's remaining steps are done.
            on_step(done, total);
        }
    }
    Ok(out)
}

/// The GPU state of one (sub-)batch; its buffers go back to the pool when it is dropped.
struct Batch<'m> {
    gpu: &'m Gpu,
    model: &'m GpuModel,
    cache: KvCache,
    scratch: Scratch,
    head: Head,
    /// Each sequence's last prompt row of the residual stream, for the LM head after prefill.
    last_rows: Tensor,
    /// One LCM state (anchors for every sequence) per distinct setting, with the row table its
    /// kernel reads: the batch's, with the rows of other settings' sequences marked as nobody's.
    arms: Vec<Arm>,
}

struct Arm {
    lcm: LcmState,
    /// Which sequences (by index) this setting modulates.
    members: Vec<bool>,
    row_table: Tensor,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.gpu.recycle(self.cache.clone().into_tensors());
        self.gpu.recycle(self.scratch.clone().into_tensors());
        self.gpu.recycle(self.head.clone().into_tensors());
        self.gpu.recycle([self.last_rows.clone()]);
        self.gpu.recycle(self.arms.iter().map(|a| a.row_table.clone()));
    }
}

/// One sequence's progress.
struct Seq {
    sampler: Sampler,
    /// Prompt and generated tokens (the repetition penalty reads them).
    history: Vec<u32>,
    tokens: Vec<TokenRecord>,
    max_tokens: usize,
    finished: bool,
}

impl<'m> Batch<'m> {
    fn new(
        gpu: &'m Gpu,
        model: &'m GpuModel,
        reqs: &[SeqRequest],
        lcm_of: &[Option<&LcmConfig>],
    ) -> Result<Self> {
        let c = &model.config;
        let n = reqs.len();
        let len = reqs.iter().map(|r| r.prompt.len() + r.max_tokens).max().unwrap_or(1);
        let longest_prompt = reqs.iter().map(|r| r.prompt.len()).max().unwrap_or(1);
        let rows = PREFILL_ROWS.min(n * longest_prompt.min(PREFILL_CHUNK)).max(n);
        let mut settings: Vec<&LcmConfig> = Vec::new();
        for cfg in lcm_of.iter().flatten() {
            if !settings.contains(cfg) {
                settings.push(cfg);
            }
        }
        let mut arms = Vec::new();
        for cfg in settings {
            // An off setting (gamma 0) runs the plain model, as it does alone.
            if let Some(lcm) = LcmState::new(gpu, cfg, c.layers, c.hidden, n)? {
                let members = lcm_of.iter().map(|s| *s == Some(cfg)).collect();
                let row_table = gpu.scratch("lcm arm row table", &[rows, 2], DType::U32)?;
                arms.push(Arm { lcm, members, row_table });
            }
        }
        Ok(Batch {
            gpu,
            model,
            cache: model.new_cache(gpu, n, len)?,
            scratch: model.scratch(gpu, rows)?,
            head: model.head(gpu, n)?,
            last_rows: gpu.scratch("batch last prompt rows", &[n, c.hidden], DType::F32)?,
            arms,
        })
    }

    fn run(
        &self,
        reqs: &[SeqRequest],
        eos: &[u32],
        on_step: &mut dyn FnMut(usize),
    ) -> Result<Vec<SeqOutput>> {
        let mut seqs = reqs
            .iter()
            .map(|r| {
                Ok(Seq {
                    sampler: Sampler::new(r.sampler.clone())?,
                    history: r.prompt.clone(),
                    tokens: Vec::new(),
                    max_tokens: r.max_tokens,
                    finished: r.max_tokens == 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.prefill(reqs)?;
        // The sequences whose rows the head holds, in row order.
        let mut fed: Vec<usize> = (0..seqs.len()).collect();
        for step in 1.. {
            let heads = self.read_heads(fed.len())?;
            for (&s, (stats, logits)) in fed.iter().zip(heads) {
                let seq = &mut seqs[s];
                if seq.finished {
                    continue;
                }
                let id = seq.sampler.sample(&logits, &seq.history, seq.history.len() - seq.tokens.len());
                seq.history.push(id);
                seq.tokens.push(token_record(id, &logits, stats));
                seq.finished = eos.contains(&id) || seq.tokens.len() == seq.max_tokens;
            }
            on_step(step);
            fed = (0..seqs.len()).filter(|&s| !seqs[s].finished).collect();
            if fed.is_empty() {
                break;
            }
            self.decode(&seqs, &fed)?;
        }
        Ok(seqs.into_iter().map(|s| SeqOutput { tokens: s.tokens }).collect())
    }

    /// Runs every prompt through the model: chunk k of each prompt (the chunks a one-sequence
    /// prefill makes), several sequences per submit; then the LM head over each last row.
    /// A sequence with the same prompt and LCM setting as an earlier one (another seed) takes a
    /// copy of that one's KV rows, anchors and last row: bit for bit what its own prefill makes.
    fn prefill(&self, reqs: &[SeqRequest]) -> Result<()> {
        let hidden = self.model.config.hidden;
        let arm_of = |s: usize| self.arms.iter().position(|a| a.members[s]);
        let source_of: Vec<usize> = (0..reqs.len())
            .map(|s| {
                (0..s).find(|&o| reqs[o].prompt == reqs[s].prompt && arm_of(o) == arm_of(s)).unwrap_or(s)
            })
            .collect();
        let chunks = reqs.iter().map(|r| r.prompt.len().div_ceil(PREFILL_CHUNK)).max().unwrap_or(0);
        // (sequence, first position, rows) of every submit, in order.
        let mut submits: Vec<Vec<(usize, usize, usize)>> = Vec::new();
        for k in 0..chunks {
            let mut current: Vec<(usize, usize, usize)> = Vec::new();
            for (s, r) in reqs.iter().enumerate() {
                let start = k * PREFILL_CHUNK;
                if start >= r.prompt.len() || source_of[s] != s {
                    continue;
                }
                let rows = PREFILL_CHUNK.min(r.prompt.len() - start);
                let used: usize = current.iter().map(|p| p.2).sum();
                if used + rows > self.scratch.rows && !current.is_empty() {
                    submits.push(std::mem::take(&mut current));
                }
                current.push((s, start, rows));
            }
            submits.push(current);
        }
        let last = submits.len() - 1;
        for (i, parts) in submits.iter().enumerate() {
            let ids: Vec<u32> =
                parts.iter().flat_map(|&(s, at, n)| reqs[s].prompt[at..at + n].to_vec()).collect();
            let table: Vec<u32> = parts
                .iter()
                .flat_map(|&(s, at, n)| (at..at + n).flat_map(move |p| [s as u32, p as u32]))
                .collect();
            let spans: Vec<usize> = parts.iter().map(|p| p.2).collect();
            // Each prompt is one pass, whose end picks longrope's factors.
            let long_rope = parts.iter().any(|&(s, _, _)| self.model.long_rope(reqs[s].prompt.len()));
            let mut step = Step::new(self.gpu);
            self.record_rows(&mut step, &ids, &table, (&spans, long_rope));
            let mut row = 0;
            for &(s, at, n) in parts {
                row += n;
                if at + n == reqs[s].prompt.len() {
                    step.copy(&self.scratch.x, (row - 1) * hidden, &self.last_rows, s * hidden, hidden);
                }
            }
            if i == last {
                self.record_shared_prefills(&mut step, reqs, &source_of)?;
                let n = reqs.len();
                self.gpu.write_u32(&self.head.targets, &vec![NO_TARGET; n]);
                self.model.record_head(&mut step, &self.last_rows, &self.head, 0, &vec![1; n]);
            }
            step.submit()?;
        }
        Ok(())
    }

    /// Records copying each sequence's prefill state from `source_of` it (where that is another).
    fn record_shared_prefills(
        &self,
        step: &mut Step,
        reqs: &[SeqRequest],
        source_of: &[usize],
    ) -> Result<()> {
        let c = &self.model.config;
        let kv_row = c.kv_heads * c.head_dim;
        let longest = reqs.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let anchors =
            self.arms.iter().flat_map(|a| a.lcm.per_sequence()).map(|(a, _)| a.numel() / reqs.len());
        let most = anchors.chain([longest * kv_row, c.hidden, 4]).max().unwrap_or(0);
        // A copy within one buffer is not allowed: each goes through `via` (element offsets).
        let via = self.gpu.scratch("batch prefill copy", &[most], DType::F32)?;
        let mut copy_within = |t: &Tensor, from_at: usize, to_at: usize, elems: usize| {
            step.copy(t, from_at, &via, 0, elems);
            step.copy(&via, 0, t, to_at, elems);
        };
        let seq_stride = self.cache.len * kv_row;
        for (to, &from) in source_of.iter().enumerate().filter(|(to, from)| to != *from) {
            for layer in self.cache.k.iter().chain(&self.cache.v) {
                copy_within(layer, from * seq_stride, to * seq_stride, reqs[from].prompt.len() * kv_row);
            }
            copy_within(&self.last_rows, from * c.hidden, to * c.hidden, c.hidden);
            for (anchors, stats) in self.arms.iter().flat_map(|a| a.lcm.per_sequence()) {
                let per = anchors.numel() / reqs.len();
                copy_within(anchors, from * per, to * per, per);
                copy_within(stats, 4 * from, 4 * to, 4);
            }
        }
        Ok(())
    }

    /// Feeds each active sequence's last token (one row each) and records the LM head.
    fn decode(&self, seqs: &[Seq], active: &[usize]) -> Result<()> {
        let ids: Vec<u32> = active.iter().map(|&s| *seqs[s].history.last().unwrap()).collect();
        let table: Vec<u32> =
            active.iter().flat_map(|&s| [s as u32, (seqs[s].history.len() - 1) as u32]).collect();
        let spans = vec![1; active.len()];
        let long_rope = active.iter().any(|&s| self.model.long_rope(seqs[s].history.len()));
        let mut step = Step::new(self.gpu);
        self.record_rows(&mut step, &ids, &table, (&spans, long_rope));
        self.gpu.write_u32(&self.head.targets, &vec![NO_TARGET; active.len()]);
        self.model.record_head(&mut step, &self.scratch.x, &self.head, 0, &spans);
        step.submit()
    }

    /// Records the blocks (and LCM) over rows with these ids and (sequence, position) pairs,
    /// in `spans`, rotated with longrope's long factors where `long_rope`.
    fn record_rows(&self, step: &mut Step, ids: &[u32], table: &[u32], (spans, long_rope): (&[usize], bool)) {
        self.gpu.write_u32(&self.scratch.ids, ids);
        self.gpu.write_u32(&self.scratch.row_table, table);
        for arm in &self.arms {
            // The LCM kernel skips rows of sequences it has no workgroup for.
            let masked: Vec<u32> = table
                .chunks(2)
                .flat_map(|r| [if arm.members[r[0] as usize] { r[0] } else { u32::MAX }, r[1]])
                .collect();
            self.gpu.write_u32(&arm.row_table, &masked);
        }
        let n = ids.len();
        // The first setting's LCM runs inside the blocks (natively, decode's in the down
        // projection); the others, on other sequences' rows, after each block.
        let first = self.arms.first().map(|arm| (&arm.lcm, &arm.row_table));
        self.model.record_blocks(
            step,
            &self.scratch,
            &self.cache,
            (spans, long_rope),
            first,
            &mut |step, l, x| {
                for arm in self.arms.iter().skip(1) {
                    arm.lcm.record(step, l, x, &arm.row_table, n);
                }
            },
        );
    }

    /// The statistics and logits of the head's first `n` rows.
    fn read_heads(&self, n: usize) -> Result<Vec<(RowStats, Vec<f32>)>> {
        let vocab = self.model.config.vocab;
        let stats = RowStats::parse(&self.gpu.read_f32_range(&self.head.stats, 0, 4 * n)?);
        let logits = self.gpu.read_f32_range(&self.head.logits, 0, n * vocab)?;
        Ok(stats.into_iter().zip(logits.chunks(vocab).map(<[f32]>::to_vec)).collect())
    }
}

/// The record of token `id` drawn from `logits`, whose log-sum-exp, entropy and argmax the GPU
/// computed (`stats`).
fn token_record(id: u32, logits: &[f32], stats: RowStats) -> TokenRecord {
    TokenRecord {
        id,
        logprob: logits[id as usize] - stats.lse,
        entropy: stats.entropy,
        top1_prob: (logits[stats.argmax as usize] - stats.lse).exp(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::gpu;

    /// Five requests in sub-batches of two give what one batch of five gives, and progress
    /// counts the steps of all three sub-batches.
    #[test]
    fn sub_batches_equal_one_batch() {
        let Some((host, m)) = super::super::test_stories() else { return };
        let gpu = gpu();
        let prompt = host.tokenizer.encode("Once upon a time there was a little dog").unwrap();
        let reqs: Vec<SeqRequest> = (0..5)
            .map(|i| SeqRequest {
                prompt: prompt[..3 + i].to_vec(),
                sampler: SamplerConfig { seed: i as u64, ..SamplerConfig::default() },
                max_tokens: 6 + i,
            })
            .collect();
        let plain = vec![None; reqs.len()];
        let whole = generate_in_batches(gpu, &m, &reqs, &[], &plain, &mut |_, _| {}, 5).unwrap();
        let mut progress = Vec::new();
        let split =
            generate_in_batches(gpu, &m, &reqs, &[], &plain, &mut |d, t| progress.push((d, t)), 2).unwrap();
        assert_eq!(whole, split);
        assert_eq!(whole.iter().map(|o| o.tokens.len()).collect::<Vec<_>>(), [6, 7, 8, 9, 10]);
        // Sub-batches of at most 7, 9 and 10 steps.
        assert_eq!(progress.last(), Some(&(26, 26)));
        assert_eq!(progress.len(), 26);
    }
}
