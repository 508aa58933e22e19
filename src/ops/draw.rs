//! Sampling on the GPU, `shaders/draw.wgsl`: the pick [`Sampler`] makes (repetition, presence
//! and frequency penalties, temperature, top-k, top-p, min-p, inverse CDF in id order) from one logit row, at a uniform draw
//! the host took from the sampler's stream. Like [`super::stats::greedy_pick`] it feeds the pick
//! to the next decode step and writes it with its statistics, so only the pick is read back.
//!
//! The host sampler computes its weights in f64 and the GPU in f32: the two pick differently
//! only when a draw lands within f32 rounding of a bucket boundary (about 1e-7 of the mass).

use crate::generate::sampler::{Sampler, SamplerConfig};
use crate::gpu::{shader::Define, DType, Gpu, Step, Tensor};
use anyhow::{ensure, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    row: u32,
    top_k: u32,
    _p: u32,
    temperature: f32,
    top_p: f32,
    penalty: f32,
    min_p: f32,
    presence: f32,
    frequency: f32,
    _q: [f32; 2],
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![("draw", vec![])]
}

/// What the sampling kernel reads besides the logits: one draw per position and, per token,
/// whether it was seen (the repetition penalty) and how often generated (the presence and
/// frequency penalties), which the kernel updates with each pick.
pub struct DrawState {
    config: SamplerConfig,
    /// `[positions]` f32: the draw for the token picked at that position.
    uniforms: Tensor,
    /// `[vocab]` u32: bit 0 = seen, the bits above = times generated.
    counts: Tensor,
}

impl DrawState {
    /// For a sequence of up to `positions` positions whose tokens so far are `history` (the
    /// prompt: seen, not generated). Settings that need the sequence itself
    /// ([`SamplerConfig::needs_sequence`]) are the host's.
    pub fn new(
        gpu: &Gpu,
        config: &SamplerConfig,
        vocab: usize,
        positions: usize,
        history: &[u32],
    ) -> Result<Self> {
        // The kernel counts tokens in f32, exact below 2^24.
        ensure!(
            vocab < 1 << 24,
            "a vocabulary of {vocab} tokens is too large for GPU sampling (at most 2^24)"
        );
        ensure!(!config.needs_sequence(), "no-repeat n-grams and DRY are sampled on the host");
        let mut counts = vec![0u32; vocab];
        for &id in history {
            counts[id as usize] = 1;
        }
        Ok(DrawState {
            config: config.clone(),
            uniforms: gpu.zeros("sampling draws", &[positions], DType::F32)?,
            counts: gpu.upload_u32("token counts", &[vocab], &counts)?,
        })
    }

    /// Takes the draws for the tokens picked at positions `first..first + count` from
    /// `sampler`'s stream (none at temperature 0, as [`Sampler::sample`] takes none).
    pub fn draw_ahead(&self, gpu: &Gpu, sampler: &mut Sampler, first: usize, count: usize) {
        if self.config.temperature == 0.0 {
            return;
        }
        let count = count.min(self.uniforms.numel().saturating_sub(first));
        let draws: Vec<u32> = (0..count).map(|_| (sampler.next_draw() as f32).to_bits()).collect();
        gpu.queue.write_buffer(&self.uniforms.buf, 4 * first as u64, bytemuck::cast_slice(&draws));
    }

    pub fn into_tensors(self) -> [Tensor; 2] {
        [self.uniforms, self.counts]
    }
}

/// Picks a token from `logits` row 0 as [`Sampler::sample`] does with `state`'s settings and
/// the draw of the position after row `row`'s; then, as [`super::stats::greedy_pick`]: `ids[0]`,
/// row-table entry 0 = `(seq, pos + 1)`, `out[pos + 1] = [id, log-prob, entropy, lse]` of the
/// raw logits. Counts the pick.
pub fn draw(
    step: &mut Step,
    logits: &Tensor,
    state: &DrawState,
    (ids, rows, row): (&Tensor, &Tensor, usize),
    out: &Tensor,
) {
    let vocab = *logits.shape.last().unwrap();
    assert!(state.counts.numel() >= vocab && rows.numel() >= 2 * (row + 1) && out.shape[1] == 4);
    let c = &state.config;
    let params = Params {
        vocab: vocab as u32,
        row: row as u32,
        top_k: c.top_k.min(u32::MAX as usize) as u32,
        _p: 0,
        temperature: c.temperature,
        top_p: c.top_p,
        penalty: c.repetition_penalty,
        min_p: c.min_p,
        presence: c.presence_penalty,
        frequency: c.frequency_penalty,
        _q: [0.0; 2],
    };
    let pipeline = step.gpu.pipeline("draw", &[]);
    step.dispatch(
        pipeline,
        &params,
        &bind![logits, uniforms = &state.uniforms, counts = &state.counts, ids, rows, out],
        [1, 1, 1],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::stats::Pick;
    use crate::ops::test_util::*;

    /// Draws `n` tokens from `z` on the GPU and on the CPU with the same stream, each pick
    /// joining the history (the penalty sees it). Returns the GPU's picks and, per draw, the
    /// CPU's picks at the draw and at the draw moved by 1e-6 either way: a GPU pick between the
    /// last two other than the first is one its f32 sums may make (the draw is that close to a
    /// bucket's edge).
    fn both(z: &[f32], cfg: &SamplerConfig, history: &[u32], n: usize) -> (Vec<Pick>, Vec<[u32; 3]>) {
        let gpu = gpu();
        let v = z.len();
        let zt = gpu.upload_f32("z", &[1, v], z).unwrap();
        let state = DrawState::new(gpu, cfg, v, n + 1, history).unwrap();
        let mut cpu = Sampler::new(cfg.clone()).unwrap();
        state.draw_ahead(gpu, &mut cpu.clone(), 1, n);
        let ids = gpu.upload_u32("ids", &[1], &[0]).unwrap();
        let rows = gpu.upload_u32("rows", &[2], &[0, 0]).unwrap();
        let out = gpu.zeros("out", &[n + 1, 4], DType::U32).unwrap();
        let mut step = Step::new(gpu);
        for _ in 0..n {
            draw(&mut step, &zt, &state, (&ids, &rows, 0), &out);
        }
        step.submit().unwrap();
        let words = gpu.read_u32(&out).unwrap();
        let got: Vec<Pick> = words[4..].chunks(4).map(Pick::parse).collect();
        let (mut history, prompt_len) = (history.to_vec(), history.len());
        let want = got
            .iter()
            .map(|p| {
                let u = if cfg.temperature == 0.0 { 0.0 } else { cpu.next_draw() };
                let at = |u: f64| cpu.sample_at(z, &history, prompt_len, u.clamp(0.0, 1.0 - f64::EPSILON));
                let picks = [at(u), at(u - 1e-6), at(u + 1e-6)];
                // The next draw sees the GPU's pick, so one near-edge draw does not shift the rest.
                history.push(p.id);
                picks
            })
            .collect();
        (got, want)
    }

    /// Every GPU pick is one of the CPU's near its draw, and almost all are exactly the CPU's.
    fn assert_same_draws(got: &[Pick], want: &[[u32; 3]], what: &str) -> usize {
        let mut exact = 0;
        for (t, (g, w)) in got.iter().zip(want).enumerate() {
            // The walk is in id order, so picks grow with the draw.
            assert!((w[1]..=w[2]).contains(&g.id), "{what}, token {t}: GPU {} vs CPU {w:?}", g.id);
            exact += usize::from(g.id == w[0]);
        }
        exact
    }

    #[test]
    fn draws_what_the_host_sampler_draws() {
        let base = SamplerConfig { temperature: 1.0, seed: 5, ..SamplerConfig::default() };
        let configs = [
            base.clone(),
            SamplerConfig { temperature: 0.7, top_k: 40, ..base.clone() },
            SamplerConfig { temperature: 1.3, top_p: 0.9, ..base.clone() },
            SamplerConfig { top_k: 50, top_p: 0.8, seed: 9, ..base.clone() },
            SamplerConfig { top_k: 1, ..base.clone() },
            SamplerConfig { top_p: 1e-6, ..base.clone() },
            SamplerConfig { temperature: 0.8, repetition_penalty: 1.5, top_p: 0.95, ..base.clone() },
            SamplerConfig { temperature: 0.0, repetition_penalty: 1.3, ..base.clone() },
            SamplerConfig { min_p: 0.05, ..base.clone() },
            SamplerConfig { temperature: 0.7, top_k: 40, min_p: 0.2, seed: 3, ..base.clone() },
            SamplerConfig { presence_penalty: 1.5, frequency_penalty: 0.5, temperature: 0.6, ..base.clone() },
            SamplerConfig { temperature: 0.0, presence_penalty: 0.8, frequency_penalty: 0.7, ..base.clone() },
            SamplerConfig {
                repetition_penalty: 1.2,
                frequency_penalty: -0.5,
                top_p: 0.9,
                min_p: 0.1,
                ..base.clone()
            },
        ];
        let (mut exact, mut draws) = (0, 0);
        // Flat rows send top-p's search over the whole vocabulary, peaked ones (and small
        // ones) over the largest 1024 candidates.
        for (v, seed, spread) in [(3000usize, 1u64, 3.0), (49152, 2, 3.0), (300, 3, 3.0), (49152, 4, 12.0)] {
            let mut z = rand_vec(seed, v, spread);
            // NaN never picked; ties at a top-k / top-p threshold taken in id order.
            z[v / 2] = f32::NAN;
            for i in [7, v / 3, v - 2] {
                z[i] = spread + 0.5;
            }
            for cfg in &configs {
                let (got, want) = both(&z, cfg, &[7, 11, 11, (v - 1) as u32], 12);
                exact += assert_same_draws(&got, &want, &format!("vocab {v}, {cfg:?}"));
                draws += got.len();
                let numbers: Vec<f32> = z.iter().copied().filter(|x| !x.is_nan()).collect();
                let (lse, entropy, _) = crate::cpu::stats::logit_stats(&numbers);
                for p in &got {
                    assert!((p.lse as f64 - lse).abs() < 1e-4 && (p.entropy as f64 - entropy).abs() < 1e-4);
                    assert!((p.logprob as f64 - (z[p.id as usize] as f64 - lse)).abs() < 1e-4);
                }
            }
        }
        assert!(exact + 2 >= draws, "{exact} of {draws} draws exactly the CPU's");
    }

    #[test]
    fn draws_follow_the_softmax() {
        let z = [1.0f32, 2.0, 0.5, 3.0];
        let cfg = SamplerConfig { seed: 77, ..SamplerConfig::default() };
        let n = 2000;
        let (got, _) = both(&z, &cfg, &[], n);
        let total: f64 = z.iter().map(|&l| f64::from(l).exp()).sum();
        for (id, &l) in z.iter().enumerate() {
            let freq = got.iter().filter(|p| p.id as usize == id).count() as f64 / n as f64;
            let p = f64::from(l).exp() / total;
            assert!((freq - p).abs() < 0.03, "token {id}: {freq} vs {p}");
        }
    }

    #[test]
    fn infinite_or_missing_logits_pick_the_argmax() {
        let cfg = SamplerConfig { top_k: 2, top_p: 0.5, ..SamplerConfig::default() };
        for z in [
            vec![0.0, f32::INFINITY, 1.0],
            vec![f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY],
            vec![f32::NAN; 5],
        ] {
            let (got, want) = both(&z, &cfg, &[], 3);
            assert_eq!(assert_same_draws(&got, &want, &format!("{z:?}")), 3);
        }
    }
}
