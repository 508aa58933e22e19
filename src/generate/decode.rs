//! Decoding with the pick made on the GPU: greedy ([`crate::ops::stats::greedy_pick`]) or sampled
//! ([`draw::draw`], at draws the host takes ahead from the [`Sampler`]'s stream). The pick
//! writes the next step's input id and position on the GPU, so every token is a replay of
//! the same recorded decode step (no re-recording, no CPU work between kernels), and only the
//! picks travel back. [`Session::steps_per_submit`] steps go in one submission whose picks come
//! back in one read-back; at least `IN_FLIGHT` tokens in at least two submissions are in flight.

use super::{Sampler, Session};
use crate::gpu::{DType, Recording, Step, Tensor};
use crate::ops::draw::{self, DrawState};
use crate::ops::stats::Pick;
use anyhow::{bail, Result};
use std::collections::VecDeque;

/// Tokens submitted but not yet read back, at least (in two submissions at least).
const IN_FLIGHT: usize = 4;

/// Decode steps per submission unless [`Session::steps_per_submit`] says otherwise: one
/// natively, where a submit is cheap; several in the page, where each submission and each
/// read-back is a round trip through the browser's GPU process (docs/web.md, "Speed: page vs
/// native").
pub const STEPS_PER_SUBMIT: usize = if cfg!(target_arch = "wasm32") { 4 } else { 1 };

/// The pick's buffers: one pick per position, and what the chosen kernel needs.
struct Picks {
    out: Tensor,
    how: How,
}

enum How {
    /// Argmax, with the head's working space for the logit statistics.
    Greedy,
    Draw(DrawState),
}

/// The statistics the CPU path gives `id` picked from `logits`, as [`Pick`] has them.
pub fn pick_from_logits(id: u32, logits: &[f32]) -> Pick {
    let (lse, entropy, _) = crate::cpu::stats::logit_stats(logits);
    let logprob = logits[id as usize] as f64 - lse;
    Pick { id, logprob: logprob as f32, entropy: entropy as f32, lse: lse as f32 }
}

impl<'m> Session<'m> {
    /// Greedy settings (temperature 0, no penalty) take the argmax kernel; any other the
    /// sampling one, with `history` as the tokens the repetition penalty counts.
    fn picks(&self, sampler: &Sampler, history: &[u32]) -> Result<Picks> {
        let gpu = self.gpu;
        let (cfg, vocab) = (sampler.config(), self.model.config.vocab);
        // Indexed by position; the last pick lands one past the cache.
        let positions = self.cache.len + 1;
        let how = if cfg.is_plain_greedy() {
            How::Greedy
        } else {
            How::Draw(DrawState::new(gpu, cfg, vocab, positions, history)?)
        };
        Ok(Picks { out: gpu.zeros("picks", &[positions, 4], DType::U32)?, how })
    }

    /// Records the LM head over scratch row `row` and the pick from its logits.
    fn record_pick(&self, step: &mut Step, row: usize, picks: &Picks) {
        let input = (&self.scratch.ids, &self.scratch.row_table, row);
        match &picks.how {
            How::Greedy => {
                self.model.record_greedy_pick(step, &self.scratch.x, &self.head, input, &picks.out)
            }
            How::Draw(state) => {
                self.model.record_logits(step, &self.scratch.x, &self.head, row, &[1]);
                draw::draw(step, &self.head.logits, state, input, &picks.out)
            }
        }
    }

    /// The decode step: one row whose id and position the previous pick wrote; `long_rope`:
    /// a step at a position past longrope's original context.
    fn decode_recording(&self, picks: &Picks, long_rope: bool) -> Result<Recording<'m>> {
        let mut step = Step::new(self.gpu);
        self.record_step(&mut step, 1, long_rope);
        self.record_pick(&mut step, 0, picks);
        step.finish()
    }

    /// Appends `prompt`, then decodes up to `max_tokens` tokens as `sampler` picks them (with
    /// `prompt` as the history its repetition penalty counts), calling `on_token` with each
    /// pick and its statistics. Stops after an EOS token, which is included; tokens the GPU
    /// already computed past it are dropped, and `len` counts the prompt and the tokens fed
    /// back (all accepted ones but the last). The sampler's stream advances by `max_tokens`
    /// draws (none when greedy), however many tokens come out.
    pub async fn decode(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        eos: &[u32],
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(Pick) -> Result<()>,
    ) -> Result<Vec<u32>> {
        let gpu = self.gpu;
        let vocab = self.model.config.vocab;
        if let Some(bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary of {vocab}");
        }
        if prompt.is_empty() || max_tokens == 0 {
            bail!("decoding needs a prompt and at least one token to generate");
        }
        if self.len + prompt.len() + max_tokens - 1 > self.cache.len {
            bail!(
                "{} prompt tokens and {max_tokens} new ones do not fit: {} already in a context of {}",
                prompt.len(),
                self.len,
                self.cache.len
            );
        }
        if sampler.config().needs_sequence() {
            return self.decode_on_host(prompt, max_tokens, eos, sampler, on_token).await;
        }
        let picks = self.picks(sampler, prompt)?;
        let base = self.len + prompt.len();
        if let How::Draw(state) = &picks.how {
            state.draw_ahead(gpu, sampler, base, max_tokens);
        }
        let chunks: Vec<&[u32]> = prompt.chunks(self.scratch.rows).collect();
        let (last, first_chunks) = chunks.split_last().expect("a prompt");
        for part in first_chunks {
            let mut step = Step::new(gpu);
            self.record_rows(&mut step, part, base);
            step.submit()?;
            self.len += part.len();
        }
        let mut step = Step::new(gpu);
        self.record_rows(&mut step, last, base);
        self.record_pick(&mut step, last.len() - 1, &picks);
        self.len += last.len();
        // The step that picks token k feeds position base + k - 1, a pass ending at base + k:
        // past longrope's original context it takes the long factors (a second recording).
        let decode = self.decode_recording(&picks, false)?;
        let long_from = (1..max_tokens).find(|&k| self.model.long_rope(base + k));
        let decode_long = long_from.map(|_| self.decode_recording(&picks, true)).transpose()?;
        let per_submit = self.steps_per_submit;
        if per_submit == 0 {
            bail!("decoding needs at least one step per submission");
        }
        let submissions = IN_FLIGHT.div_ceil(per_submit).max(2);
        let mut spare: Vec<wgpu::Buffer> = (0..submissions).map(|_| gpu.staging(4 * per_submit)).collect();
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        step.finish()?.encode(&mut encoder);
        let first = gpu.submit_reading(encoder, &picks.out, 4 * base, 4, spare.pop().unwrap());
        let mut pending = VecDeque::from([first]);
        let mut submitted = 1;
        let mut out = Vec::new();
        'read: while let Some(read) = pending.pop_front() {
            // Queue the next tokens before waiting for these, so the GPU never idles.
            while submitted < max_tokens {
                let Some(staging) = spare.pop() else { break };
                let steps = per_submit.min(max_tokens - submitted);
                let mut encoder = gpu.device.create_command_encoder(&Default::default());
                for k in submitted..submitted + steps {
                    match &decode_long {
                        Some(long) if long_from.is_some_and(|from| k >= from) => long.encode(&mut encoder),
                        _ => decode.encode(&mut encoder),
                    }
                }
                // The steps' picks are consecutive rows of `picks.out`: one copy reads them all.
                let (at, words) = (4 * (base + submitted), 4 * steps);
                pending.push_back(gpu.submit_reading(encoder, &picks.out, at, words, staging));
                submitted += steps;
            }
            let (words, staging) = read.wait(gpu).await?;
            spare.push(staging);
            for pick in words.chunks(4).map(Pick::parse) {
                out.push(pick.id);
                on_token(pick)?;
                if eos.contains(&pick.id) || out.len() == max_tokens {
                    break 'read;
                }
            }
        }
        self.len += out.len() - 1;
        if let How::Draw(state) = picks.how {
            gpu.recycle(state.into_tensors());
        }
        Ok(out)
    }

    /// [`Session::decode`] with every logit row read back and the pick made by the host's
    /// sampler: the settings whose penalties read the token sequence (no-repeat n-grams, DRY).
    async fn decode_on_host(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        eos: &[u32],
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(Pick) -> Result<()>,
    ) -> Result<Vec<u32>> {
        let mut logits = self.feed_async(prompt, None).await?.last_logits;
        let mut history = prompt.to_vec();
        for _ in 0..max_tokens {
            let id = sampler.sample(&logits, &history, prompt.len());
            history.push(id);
            on_token(pick_from_logits(id, &logits))?;
            if eos.contains(&id) || history.len() - prompt.len() == max_tokens {
                break;
            }
            logits = self.feed_async(&[id], None).await?.last_logits;
        }
        let out = history.split_off(prompt.len());
        // The stream advances by `max_tokens` draws, as on the GPU path.
        if sampler.config().temperature != 0.0 {
            for _ in out.len()..max_tokens {
                sampler.next_draw();
            }
        }
        Ok(out)
    }

    /// For profiles: the prefill of `chunk` (at most one chunk of rows) with `sampler`'s
    /// pick, and the decode step after it, recorded (not submitted). Run them in that order.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_recordings(&mut self, chunk: &[u32], sampler: &mut Sampler) -> Result<[Recording<'m>; 2]> {
        assert!(
            !chunk.is_empty() && chunk.len() <= self.scratch.rows && self.len + chunk.len() < self.cache.len
        );
        let picks = self.picks(sampler, chunk)?;
        if let How::Draw(state) = &picks.how {
            state.draw_ahead(self.gpu, sampler, self.len + chunk.len(), self.cache.len);
        }
        let mut step = Step::new(self.gpu);
        let end = self.len + chunk.len();
        self.record_rows(&mut step, chunk, end);
        self.record_pick(&mut step, chunk.len() - 1, &picks);
        self.len += chunk.len();
        Ok([step.finish()?, self.decode_recording(&picks, self.model.long_rope(end + 1))?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{sampler::argmax, test_stories, SamplerConfig};

    /// The replayed recording computes what a freshly recorded step does.
    #[test]
    fn replay_matches_a_fresh_step() {
        let Some((_, m)) = test_stories() else { return };
        let gpu = crate::ops::test_util::gpu();
        let prompt = [1u32, 400, 36, 9];
        let mut a = Session::new(gpu, &m, 16, None).unwrap();
        let mut greedy = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() }).unwrap();
        let [prefill, decode] = a.decode_recordings(&prompt, &mut greedy).unwrap();
        prefill.submit().unwrap();
        let mut b = Session::new(gpu, &m, 16, None).unwrap();
        let mut logits = b.feed(&prompt, None).unwrap().last_logits;
        for _ in 0..3 {
            decode.submit().unwrap();
            logits = b.feed(&[argmax(&logits)], None).unwrap().last_logits;
            let replayed = gpu.read_f32_range(&a.head.logits, 0, logits.len()).unwrap();
            assert_eq!(replayed, logits);
        }
    }
}
