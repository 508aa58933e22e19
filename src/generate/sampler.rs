//! Next-token sampling on the CPU.
//!
//! Processing follows Hugging Face transformers' order (repetition penalty,
//! temperature, top-k, top-p) so flags behave the way users expect. The RNG is
//! [`crate::rng::Rng`], so that a seed gives the same tokens on every platform,
//! wasm32 included. Probabilities are computed
//! in f64; only the platform's `exp` may differ in the last bit, which can change
//! a pick only if a draw lands within ~1e-16 of a bucket boundary.

use std::cmp::Ordering;

use crate::rng::Rng;
use anyhow::Result;

/// How each next token is picked.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 turns it off.
    pub top_k: usize,
    /// Nucleus sampling threshold; 1 turns it off.
    pub top_p: f32,
    /// Hugging Face's (CTRL-style) penalty on tokens already seen; 1 turns it off.
    pub repetition_penalty: f32,
    /// Seed of the random draws: the same seed gives the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplerConfig {
    /// Checks the values; an error names the field ([`crate::Error::InvalidArgument`]).
    pub fn validate(&self) -> Result<(), crate::Error> {
        use crate::Error;
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(Error::invalid("temperature", format!("must be finite and >= 0, got {t}")));
        }
        // Written so that NaN fails too.
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::invalid("top_p", format!("must be in (0, 1], got {p}")));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(Error::invalid("repetition_penalty", format!("must be finite and > 0, got {r}")));
        }
        Ok(())
    }
}

/// A sampler owns its RNG state, so cloning it forks a generation
/// that then continues with the same random stream as the original.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = Rng::seed_from_u64(cfg.seed);
        Ok(Self { cfg, rng })
    }

    /// The next uniform draw in [0, 1) of this sampler's stream: what [`Sampler::sample`]
    /// uses for one token when the temperature is above 0.
    pub fn next_draw(&mut self) -> f64 {
        self.rng.next_f64()
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits` (one per vocabulary entry) given the
    /// tokens generated or prompted so far. NaN logits are never picked.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        // Exactly one draw per sampled token, whatever follows, so that the GPU sampler
        // (which is handed its draws ahead) follows the same stream.
        let draw = if self.cfg.temperature == 0.0 { 0.0 } else { self.next_draw() };
        self.sample_at(logits, history, draw)
    }

    /// [`Sampler::sample`]'s pick at the uniform `draw` in [0, 1) (unused at temperature 0),
    /// leaving the stream alone.
    pub fn sample_at(&self, logits: &[f32], history: &[u32], draw: f64) -> u32 {
        let mut logits = logits.to_vec();
        apply_repetition_penalty(&mut logits, history, self.cfg.repetition_penalty);
        if self.cfg.temperature == 0.0 {
            return argmax(&logits);
        }

        let temperature = f64::from(self.cfg.temperature);
        let mut candidates: Vec<(u32, f64)> = (0u32..)
            .zip(&logits)
            .filter(|(_, l)| !l.is_nan())
            .map(|(id, &l)| (id, f64::from(l) / temperature))
            .collect();

        let k = self.cfg.top_k;
        if k > 0 && k < candidates.len() {
            // Partial selection: O(V) instead of sorting the whole vocabulary.
            candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            candidates.truncate(k);
        }

        // Turn logits into unnormalised probabilities in place.
        let max = candidates.iter().map(|&(_, l)| l).fold(f64::NEG_INFINITY, f64::max);
        if max.is_infinite() {
            // All -inf (nothing is possible) or some +inf (it takes all the
            // mass): either way the best raw logit is the only sensible pick.
            return argmax(&logits);
        }
        for c in &mut candidates {
            c.1 = (c.1 - max).exp();
        }
        let mut total: f64 = candidates.iter().map(|&(_, w)| w).sum();

        if self.cfg.top_p < 1.0 {
            candidates.sort_unstable_by(by_logit_desc);
            let threshold = f64::from(self.cfg.top_p) * total;
            let mut cumulative = 0.0;
            // Keep the shortest prefix reaching top_p, and at least one token.
            let keep = candidates
                .iter()
                .position(|&(_, w)| {
                    cumulative += w;
                    cumulative >= threshold
                })
                .map_or(candidates.len(), |i| i + 1);
            candidates.truncate(keep);
            total = cumulative;
        }

        // Inverse CDF over the surviving weights in id order (the order the GPU walks them);
        // dividing by `total` renormalises.
        if k > 0 || self.cfg.top_p < 1.0 {
            candidates.sort_unstable_by_key(|&(id, _)| id);
        }
        let target = draw * total;
        let mut cumulative = 0.0;
        for &(id, w) in &candidates {
            cumulative += w;
            if target < cumulative {
                return id;
            }
        }
        // Rounding can leave `target` just past the last bucket.
        candidates.last().map_or(0, |&(id, _)| id)
    }
}

/// Index of the largest logit; ties go to the lowest index and NaN is never
/// chosen. Returns 0 if no logit is a number (or the slice is empty).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(u32, f32)> = None;
    for (id, &l) in (0u32..).zip(logits) {
        if !l.is_nan() && best.is_none_or(|(_, b)| l > b) {
            best = Some((id, l));
        }
    }
    best.map_or(0, |(id, _)| id)
}

/// Descending by value, then ascending by id, so equal values are
/// kept or dropped in a reproducible order.
fn by_logit_desc(a: &(u32, f64), b: &(u32, f64)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Hugging Face's rule: each distinct seen token becomes less likely whichever
/// sign its logit has (positive logits are divided, negative ones multiplied).
fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = history.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(cfg: SamplerConfig) -> Sampler {
        Sampler::new(cfg).unwrap()
    }

    /// Deterministic pseudo-random logits for tests.
    fn test_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::seed_from_u64(seed);
        (0..n).map(|_| (rng.next_f64() * 8.0 - 4.0) as f32).collect()
    }

    fn draws(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<u32> {
        (0..n).map(|_| s.sample(logits, &[])).collect()
    }

    #[test]
    fn xoshiro_matches_reference_outputs() {
        // Computed with an independent Python port of the reference C code.
        let expected = [0x1578_0b2e_0c2e_c716, 0x6104_d986_6d11_3a7e, 0xae17_5332_39e4_99a1];
        let mut rng = Rng::seed_from_u64(42);
        assert_eq!(expected.map(|_| rng.next_u64()), expected);
    }

    #[test]
    fn argmax_prefers_first_max_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, f32::NAN, -0.5]), 3);
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY]), 1);
        assert_eq!(argmax(&[f32::NAN]), 0);
    }

    #[test]
    fn infinite_logits_fall_back_to_argmax() {
        let mut s = sampler(SamplerConfig::default());
        assert_eq!(s.sample(&[0.0, f32::INFINITY, 1.0], &[]), 1);
        let none = [f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY];
        assert_eq!(s.sample(&none, &[]), 0);
    }

    #[test]
    fn zero_temperature_is_argmax() {
        let mut s = sampler(SamplerConfig { temperature: 0.0, ..Default::default() });
        for seed in 0..20 {
            let logits = test_logits(1000, seed);
            assert_eq!(s.sample(&logits, &[]), argmax(&logits));
        }
    }

    #[test]
    fn same_seed_repeats_and_different_seeds_differ() {
        let logits = vec![0.0; 100];
        let run = |seed| {
            let cfg = SamplerConfig { seed, ..Default::default() };
            draws(&mut sampler(cfg), &logits, 50)
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn cloned_sampler_continues_the_same_stream() {
        let logits = vec![0.0; 100];
        let mut a = sampler(SamplerConfig::default());
        draws(&mut a, &logits, 5);
        let mut b = a.clone();
        assert_eq!(draws(&mut a, &logits, 20), draws(&mut b, &logits, 20));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = sampler(SamplerConfig { top_k: 1, ..Default::default() });
        for seed in 0..20 {
            let logits = test_logits(1000, seed);
            assert_eq!(s.sample(&logits, &[]), argmax(&logits));
        }
    }

    #[test]
    fn top_k_only_picks_the_k_best() {
        let logits = [0.0, 2.0, 1.9, -1.0, 1.95];
        let mut s = sampler(SamplerConfig { top_k: 2, temperature: 5.0, ..Default::default() });
        let picks = draws(&mut s, &logits, 500);
        assert!(picks.iter().all(|&t| t == 1 || t == 4));
        assert!(picks.contains(&1) && picks.contains(&4));
    }

    #[test]
    fn tiny_top_p_keeps_only_the_top_token() {
        let mut s = sampler(SamplerConfig { top_p: 1e-6, ..Default::default() });
        for seed in 0..20 {
            let logits = test_logits(1000, seed);
            assert_eq!(s.sample(&logits, &[]), argmax(&logits));
        }
    }

    #[test]
    fn top_p_keeps_the_shortest_prefix_reaching_it() {
        // Probabilities 0.5, 0.3, 0.2: top_p 0.75 needs the first two.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut s = sampler(SamplerConfig { top_p: 0.75, ..Default::default() });
        let picks = draws(&mut s, &logits, 2000);
        assert!(!picks.contains(&2));
        let share0 = picks.iter().filter(|&&t| t == 0).count() as f64 / 2000.0;
        assert!((share0 - 0.625).abs() < 0.03, "share of token 0: {share0}");
    }

    #[test]
    fn frequencies_match_softmax() {
        let logits = [1.0f32, 2.0, 0.5, 3.0];
        let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let n = 20_000;
        let mut counts = [0usize; 4];
        let mut s = sampler(SamplerConfig { seed: 1234, ..Default::default() });
        for t in draws(&mut s, &logits, n) {
            counts[t as usize] += 1;
        }
        for (count, e) in counts.iter().zip(&exps) {
            let (freq, p) = (*count as f64 / n as f64, e / sum);
            assert!((freq - p).abs() < 0.01, "freq {freq} vs p {p}");
        }
    }

    #[test]
    fn repetition_penalty_changes_the_choice() {
        let cfg =
            |repetition_penalty| SamplerConfig { temperature: 0.0, repetition_penalty, ..Default::default() };
        // Positive logit divided: 2.0 / 1.3 < 1.9.
        let logits = [2.0, 1.9, -1.0];
        assert_eq!(sampler(cfg(1.0)).sample(&logits, &[0, 0]), 0);
        assert_eq!(sampler(cfg(1.3)).sample(&logits, &[0, 0]), 1);
        // Negative logit multiplied: -0.5 * 1.5 < -0.6.
        let logits = [-0.5, -0.6];
        assert_eq!(sampler(cfg(1.5)).sample(&logits, &[0, 99]), 1);
    }

    #[test]
    fn validate_rejects_bad_values() {
        // The library names the field; the command line renders it as its flag.
        let bad = |cfg: SamplerConfig| cfg.validate().unwrap_err().render(crate::cli::flag);
        let d = SamplerConfig::default();
        assert!(d.validate().is_ok());
        let top_p = SamplerConfig { top_p: 2.0, ..d.clone() }.validate().unwrap_err();
        assert_eq!(top_p.to_string(), "top_p must be in (0, 1], got 2");
        assert_eq!(top_p.render(crate::cli::flag), "--top-p must be in (0, 1], got 2");
        assert!(bad(SamplerConfig { top_p: 0.0, ..d.clone() }).starts_with("--top-p"));
        assert!(bad(SamplerConfig { temperature: f32::NAN, ..d.clone() }).starts_with("--temperature"));
        assert!(bad(SamplerConfig { temperature: -0.1, ..d.clone() }).starts_with("--temperature"));
        assert!(
            bad(SamplerConfig { repetition_penalty: 0.0, ..d.clone() }).starts_with("--repetition-penalty")
        );
        assert!(Sampler::new(SamplerConfig { top_p: 2.0, ..d }).is_err());
    }
}
