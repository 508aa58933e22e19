//! Generation state (KV cache, scratch buffers, position) and the decode loop.

// Batched generation and traces read back synchronously: host-only (the page generates one
// sequence at a time through `generate_async`).
#[cfg(not(target_arch = "wasm32"))]
pub mod batch;
pub mod decode;
pub mod sampler;
#[cfg(not(target_arch = "wasm32"))]
pub mod trace;

use crate::gpu::{Gpu, Step};
use crate::model::forward::{Head, Scratch};
use crate::model::{GpuModel, KvCache};
use crate::modulate::{LayerStats, LcmConfig, LcmState};
use crate::ops::stats::{Pick, RowStats, NO_TARGET};
use anyhow::{bail, Result};
pub use sampler::{Sampler, SamplerConfig};

/// Prompt tokens processed per submit during prefill: a 512-token prompt is one chunk, and its
/// products are tall enough to keep a GPU's tiled matrix engine busy.
const PREFILL_CHUNK: usize = 512;
/// Rows per LM-head pass when every position's statistics are wanted (scoring).
const SCORE_CHUNK: usize = 64;

/// One sequence being generated or scored: its KV cache and how far it has got.
pub struct Session<'m> {
    gpu: &'m Gpu,
    /// The model it runs.
    pub model: &'m GpuModel,
    /// Keys and values of the positions fed so far.
    pub cache: KvCache,
    scratch: Scratch,
    head: Head,
    /// LCM anchors, carried beside the KV cache; None when modulation is off.
    pub lcm: Option<LcmState>,
    /// Positions already in the cache.
    pub len: usize,
    /// Decode steps [`Session::decode`] puts in one submission, with one read-back of their
    /// picks ([`decode::STEPS_PER_SUBMIT`] unless set; the tokens are the same for any value).
    pub steps_per_submit: usize,
}

impl Drop for Session<'_> {
    /// The cache and working buffers go back to the pool for the next session.
    fn drop(&mut self) {
        // Handles are shared: the pool keeps the buffers alive once the session's copies go.
        self.gpu.recycle(self.cache.clone().into_tensors());
        self.gpu.recycle(self.scratch.clone().into_tensors());
        self.gpu.recycle(self.head.clone().into_tensors());
    }
}

/// What feeding tokens returns.
pub struct Fed {
    /// Statistics per fed row when targets were given, else for the last row only.
    pub stats: Vec<RowStats>,
    /// The logits of the last fed row.
    pub last_logits: Vec<f32>,
}

impl<'m> Session<'m> {
    /// A session able to hold `capacity` positions (prompt plus generated tokens).
    /// `lcm`: the modulation setting, if any.
    pub fn new(gpu: &'m Gpu, model: &'m GpuModel, capacity: usize, lcm: Option<&LcmConfig>) -> Result<Self> {
        let c = &model.config;
        let lcm = match lcm {
            Some(cfg) => LcmState::new(gpu, cfg, c.layers, c.hidden, 1)?,
            None => None,
        };
        let cache = model.new_cache(gpu, 1, capacity)?;
        let scratch = model.scratch(gpu, capacity.clamp(1, PREFILL_CHUNK))?;
        let head = model.head(gpu, capacity.clamp(1, SCORE_CHUNK))?;
        let steps_per_submit = decode::STEPS_PER_SUBMIT;
        Ok(Session { gpu, model, cache, scratch, head, lcm, len: 0, steps_per_submit })
    }

    /// A second session with this one's state: the KV cache up to `len` and the LCM anchors
    /// (and statistics), so that both continue as this one would (e.g. a second sample from
    /// the same prompt without a second prefill).
    pub fn fork(&self) -> Result<Session<'m>> {
        let mut other = Session::new(self.gpu, self.model, self.cache.len, None)?;
        other.lcm = self.lcm.as_ref().map(|s| s.duplicate(self.gpu)).transpose()?;
        let c = &self.model.config;
        let filled = self.len * c.kv_heads * c.head_dim;
        let mut step = Step::new(self.gpu);
        let pairs = self.cache.k.iter().zip(&other.cache.k).chain(self.cache.v.iter().zip(&other.cache.v));
        for (src, dst) in pairs {
            step.copy(src, 0, dst, 0, filled);
        }
        if let (Some(from), Some(to)) = (&self.lcm, &other.lcm) {
            from.record_copy(&mut step, to);
        }
        step.submit()?;
        other.len = self.len;
        other.steps_per_submit = self.steps_per_submit;
        Ok(other)
    }

    /// Rows fed per submit (a prefill chunk).
    pub fn chunk_rows(&self) -> usize {
        self.scratch.rows
    }

    /// Writes `ids` as the next rows (positions from `len` on) and records the embedding
    /// and every block (LCM included) over them, as part of a pass that ends at position
    /// `pass_end - 1` (which picks longrope's factors, [`GpuModel::long_rope`]).
    fn record_rows(&self, step: &mut Step, ids: &[u32], pass_end: usize) {
        let n = ids.len();
        let rows: Vec<u32> = (0..n).flat_map(|i| [0, (self.len + i) as u32]).collect();
        self.gpu.write_u32(&self.scratch.ids, ids);
        self.gpu.write_u32(&self.scratch.row_table, &rows);
        self.record_step(step, n, self.model.long_rope(pass_end));
    }

    /// Records the embedding and every block (LCM included) over the first `n` rows of the
    /// scratch, whose ids and row table are already on the GPU; `long_rope`: with longrope's
    /// long factors.
    fn record_step(&self, step: &mut Step, n: usize, long_rope: bool) {
        let (lcm, rows) = (&self.lcm, &self.scratch.row_table);
        let pass = (&[n][..], long_rope);
        let lcm = lcm.as_ref().map(|state| (state, rows));
        self.model.record_blocks(step, &self.scratch, &self.cache, pass, lcm, &mut |_, _, _| {});
    }

    /// Appends `ids` to the sequence. With `targets` (one per id, [`NO_TARGET`] allowed),
    /// returns statistics for every row; otherwise only for the last.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn feed(&mut self, ids: &[u32], targets: Option<&[u32]>) -> Result<Fed> {
        pollster::block_on(self.feed_async(ids, targets))
    }

    /// [`Session::feed`], awaiting the read-backs (the browser cannot block).
    pub async fn feed_async(&mut self, ids: &[u32], targets: Option<&[u32]>) -> Result<Fed> {
        let vocab = self.model.config.vocab;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary of {vocab}");
        }
        if self.len + ids.len() > self.cache.len {
            bail!("{} tokens do not fit: {} already in a context of {}", ids.len(), self.len, self.cache.len);
        }
        assert!(targets.is_none_or(|t| t.len() == ids.len()));
        let chunk = if targets.is_some() { self.scratch.rows.min(self.head.rows) } else { self.scratch.rows };
        let mut stats = Vec::new();
        let mut last_logits = Vec::new();
        // transformers feeds `ids` in one pass, whose end picks longrope's factors.
        let pass_end = self.len + ids.len();
        for (c, part) in ids.chunks(chunk).enumerate() {
            let n = part.len();
            let last_chunk = (c + 1) * chunk >= ids.len();
            let mut step = Step::new(self.gpu);
            self.record_rows(&mut step, part, pass_end);
            let head_rows = match targets {
                Some(t) => {
                    self.gpu.write_u32(&self.head.targets, &t[c * chunk..c * chunk + n]);
                    Some((0, n))
                }
                None if last_chunk => {
                    self.gpu.write_u32(&self.head.targets, &[NO_TARGET]);
                    Some((n - 1, 1))
                }
                None => None,
            };
            if let Some((first, count)) = head_rows {
                self.model.record_head(&mut step, &self.scratch.x, &self.head, first, &[count]);
            }
            step.submit()?;
            self.len += n;
            if let Some((_, count)) = head_rows {
                stats.extend(RowStats::parse(
                    &self.gpu.read_f32_range_async(&self.head.stats, 0, 4 * count).await?,
                ));
                if last_chunk {
                    let v = vocab;
                    last_logits =
                        self.gpu.read_f32_range_async(&self.head.logits, (count - 1) * v, v).await?;
                }
            }
        }
        Ok(Fed { stats, last_logits })
    }
}

/// Per-token scores of a text: `next_logprobs[i] = log p(ids[i+1] | ids[..=i])` and the
/// entropy of that distribution.
pub struct Scores {
    /// Log-probability of each next token.
    pub next_logprobs: Vec<f32>,
    /// Entropy (nats) of each next-token distribution.
    pub entropies: Vec<f32>,
    /// Logits after the last token.
    pub last_logits: Vec<f32>,
    /// What LCM did per modulated layer (empty when off).
    pub lcm_stats: Vec<LayerStats>,
}

impl Scores {
    /// exp of the mean negative log-probability (NaN for a one-token text).
    pub fn perplexity(&self) -> f64 {
        if self.next_logprobs.is_empty() {
            return f64::NAN;
        }
        let nll: f64 = self.next_logprobs.iter().map(|&l| -(l as f64)).sum();
        (nll / self.next_logprobs.len() as f64).exp()
    }
}

/// Scores `ids` with the model (teacher forcing, all positions), modulated by `lcm` if given.
#[cfg(not(target_arch = "wasm32"))]
pub fn score(gpu: &Gpu, model: &GpuModel, ids: &[u32], lcm: Option<&LcmConfig>) -> Result<Scores> {
    if ids.is_empty() {
        bail!("nothing to score: the text encodes to no tokens");
    }
    let mut session = Session::new(gpu, model, ids.len(), lcm)?;
    let targets: Vec<u32> = ids[1..].iter().copied().chain([NO_TARGET]).collect();
    let fed = session.feed(ids, Some(&targets))?;
    let n = ids.len() - 1;
    Ok(Scores {
        next_logprobs: fed.stats[..n].iter().map(|s| s.target_logprob).collect(),
        entropies: fed.stats[..n].iter().map(|s| s.entropy).collect(),
        last_logits: fed.last_logits,
        lcm_stats: match &session.lcm {
            Some(state) => state.stats(gpu, 0)?,
            None => Vec::new(),
        },
    })
}

/// Scores `ids` as transformers' strided-perplexity recipe does when they exceed `window`:
/// windows of `window` tokens starting every `stride` tokens, each token after the first
/// scored once, in the first window that reaches it (so with at least `window - stride`
/// tokens of left context once past the first window). A text within one window is scored
/// whole, as [`score`] does. No LCM: its anchors would restart with every window.
#[cfg(not(target_arch = "wasm32"))]
pub fn score_windowed(
    gpu: &Gpu,
    model: &GpuModel,
    ids: &[u32],
    window: usize,
    stride: usize,
) -> Result<Scores> {
    let ctx = model.config.max_positions;
    if window < 2 || window > ctx {
        bail!("--window {window} must be in 2..={ctx} (the model's context)");
    }
    if stride == 0 || stride > window {
        bail!("--stride {stride} must be in 1..={window} (the window)");
    }
    if ids.len() <= window {
        return score(gpu, model, ids, None);
    }
    let (mut next_logprobs, mut entropies) = (Vec::new(), Vec::new());
    let (mut begin, mut scored_to) = (0, 0);
    loop {
        let end = (begin + window).min(ids.len());
        let s = score(gpu, model, &ids[begin..end], None)?;
        // Token t's score is at t - begin - 1 of the window's.
        let first = scored_to.max(begin + 1);
        next_logprobs.extend_from_slice(&s.next_logprobs[first - begin - 1..]);
        entropies.extend_from_slice(&s.entropies[first - begin - 1..]);
        scored_to = end;
        if end == ids.len() {
            return Ok(Scores {
                next_logprobs,
                entropies,
                last_logits: s.last_logits,
                lcm_stats: Vec::new(),
            });
        }
        begin += stride;
    }
}

/// Settings of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens.
    pub max_tokens: usize,
    /// How tokens are picked.
    pub sampler: SamplerConfig,
    /// Generation stops after any of these tokens.
    pub eos: Vec<u32>,
    /// Modulation, when on.
    pub lcm: Option<LcmConfig>,
}

/// Prefills `prompt`, then decodes up to `max_tokens` tokens, calling `on_token` with each.
/// Stops after an EOS token (which is included in the result).
#[cfg(not(target_arch = "wasm32"))]
pub fn generate(
    gpu: &Gpu,
    model: &GpuModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    pollster::block_on(generate_async(gpu, model, prompt, opts, &mut |pick| on_token(pick.id)))
}

/// [`generate`], awaiting the read-backs; `on_token` also sees the pick's log-probability
/// and the entropy it was picked from (the browser plots them). The picks are made on the GPU
/// ([`Session::decode`]), greedy or sampled, so only they are read back.
pub async fn generate_async(
    gpu: &Gpu,
    model: &GpuModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(Pick) -> Result<()>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let capacity = prompt.len() + opts.max_tokens;
    let ctx = model.config.max_positions;
    if capacity > ctx {
        let (prompt, max_tokens) = (prompt.len(), opts.max_tokens);
        return Err(crate::Error::ContextExceeded { prompt, max_tokens, context: ctx }.into());
    }
    let mut sampler = Sampler::new(opts.sampler.clone())?;
    let mut session = Session::new(gpu, model, capacity, opts.lcm.as_ref())?;
    if opts.max_tokens == 0 {
        // Nothing to pick; the prompt is still checked and run, as for any other length.
        session.feed_async(prompt, None).await?;
        return Ok(Vec::new());
    }
    session.decode(prompt, opts.max_tokens, &opts.eos, &mut sampler, on_token).await
}

/// stories260k loaded and uploaded for the unit tests of this module's files, or None (with a
/// visible note) when the fixture is absent.
#[cfg(test)]
pub(crate) fn test_stories() -> Option<(crate::model::LoadedModel, GpuModel)> {
    let dir = crate::testing::model("stories260k")?;
    let host = crate::model::load(&dir).unwrap();
    let gpu = crate::ops::test_util::gpu();
    let m = GpuModel::upload(gpu, &host).unwrap();
    Some((host, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_scores_follow_the_strided_recipe() {
        let Some((host, m)) = test_stories() else { return };
        let gpu = crate::ops::test_util::gpu();
        let ctx = m.config.max_positions;
        let text = "Once upon a time, there was a little girl named Lily. She liked to play in the park. ";
        let short = host.tokenizer.encode(text).unwrap();
        // Within one window: the unwindowed scores, exactly.
        let whole = score(gpu, &m, &short, None).unwrap();
        let windowed = score_windowed(gpu, &m, &short, ctx, ctx / 2).unwrap();
        assert_eq!(windowed.next_logprobs, whole.next_logprobs);
        assert_eq!(windowed.entropies, whole.entropies);
        // Longer than the context: each token t >= 1 scored in the first window that holds it
        // (windows start every `stride` tokens), at index t - begin - 1 of that window's scores.
        let long = host.tokenizer.encode(&text.repeat(24)).unwrap();
        assert!(long.len() > ctx, "{} tokens", long.len());
        for (window, stride) in [(ctx, ctx / 2), (160, 100), (100, 100)] {
            let got = score_windowed(gpu, &m, &long, window, stride).unwrap();
            let mut want = Vec::new();
            let mut cache: Vec<(usize, Scores)> = Vec::new();
            for t in 1..long.len() {
                let begin =
                    (0..).map(|k| k * stride).find(|&b| b + window > t || b + window >= long.len()).unwrap();
                if begin > 0 && t == begin {
                    continue; // a window's first token has no left context in it: never a target
                }
                if cache.last().is_none_or(|(b, _)| *b != begin) {
                    let end = (begin + window).min(long.len());
                    cache.push((begin, score(gpu, &m, &long[begin..end], None).unwrap()));
                }
                let (b, s) = cache.last().unwrap();
                if begin > 0 {
                    assert!(t - b >= window - stride, "token {t}: {} tokens of left context", t - b);
                }
                want.push(s.next_logprobs[t - b - 1]);
            }
            assert_eq!(got.next_logprobs, want, "window {window}, stride {stride}");
            let scored =
                if stride == window { long.len() - long.len().div_ceil(window) } else { long.len() - 1 };
            assert_eq!(got.next_logprobs.len(), scored);
        }
        let err = |w, s| score_windowed(gpu, &m, &long, w, s).err().unwrap().to_string();
        assert!(err(ctx + 1, 8).starts_with("--window"));
        assert!(err(64, 0).starts_with("--stride"));
        assert!(err(64, 65).starts_with("--stride"));
    }
}
