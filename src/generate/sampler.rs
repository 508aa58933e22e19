//! Next-token sampling on the CPU.
//!
//! Processing follows Hugging Face transformers' order so flags behave the way users expect:
//! the penalties on the logits (repetition penalty, then OpenAI's presence and frequency
//! penalties on the generated tokens, DRY, no-repeat n-grams), then temperature, top-k, top-p
//! and min-p. The RNG is
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
    /// Keep tokens at least this fraction as likely as the most likely one (after top-p, as
    /// transformers' MinPLogitsWarper); 0 turns it off.
    pub min_p: f32,
    /// OpenAI's penalty subtracted once from the logit of every token generated so far.
    pub presence_penalty: f32,
    /// OpenAI's penalty subtracted per occurrence among the tokens generated so far.
    pub frequency_penalty: f32,
    /// Never repeat an n-gram of this size (prompt included, as transformers'
    /// NoRepeatNGramLogitsProcessor); 0 turns it off.
    pub no_repeat_ngram_size: usize,
    /// "Don't repeat yourself": penalises tokens that would extend a repeated sequence.
    pub dry: Dry,
    /// Seed of the random draws: the same seed gives the same tokens.
    pub seed: u64,
}

/// DRY's settings (text-generation-webui's DRY): a token that would extend a sequence already
/// seen `n >= allowed_length` tokens long loses `multiplier * base^(n - allowed_length)`
/// from its logit. No sequence breakers: every token may be part of a repeat.
#[derive(Clone, Debug, PartialEq)]
pub struct Dry {
    /// 0 turns DRY off.
    pub multiplier: f32,
    pub base: f32,
    pub allowed_length: usize,
    /// The last this-many tokens are searched for repeats; 0 means all of them.
    pub penalty_last_n: usize,
}

impl Default for Dry {
    fn default() -> Self {
        Self { multiplier: 0.0, base: 1.75, allowed_length: 2, penalty_last_n: 0 }
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            no_repeat_ngram_size: 0,
            dry: Dry::default(),
            seed: 0,
        }
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
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(Error::invalid("min_p", format!("must be in [0, 1], got {m}")));
        }
        for (field, v) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !v.is_finite() {
                return Err(Error::invalid(field, format!("must be finite, got {v}")));
            }
        }
        let d = &self.dry;
        if !(d.multiplier.is_finite() && d.multiplier >= 0.0) {
            return Err(Error::invalid(
                "dry_multiplier",
                format!("must be finite and >= 0, got {}", d.multiplier),
            ));
        }
        if !(d.base.is_finite() && d.base >= 1.0) {
            return Err(Error::invalid("dry_base", format!("must be finite and >= 1, got {}", d.base)));
        }
        if d.allowed_length < 1 {
            return Err(Error::invalid("dry_allowed_length", "must be at least 1"));
        }
        Ok(())
    }

    /// Whether a penalty needs the token sequence itself (not only which tokens occur), which
    /// the GPU kernel does not have: such settings are sampled on the host.
    pub fn needs_sequence(&self) -> bool {
        self.no_repeat_ngram_size > 0 || self.dry.multiplier > 0.0
    }

    /// Whether the pick is the argmax of the raw logits (no penalty changes it).
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && !self.needs_sequence()
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
    /// tokens prompted and generated so far, `history`, whose first `prompt_len` are the
    /// prompt. NaN logits are never picked.
    pub fn sample(&mut self, logits: &[f32], history: &[u32], prompt_len: usize) -> u32 {
        // Exactly one draw per sampled token, whatever follows, so that the GPU sampler
        // (which is handed its draws ahead) follows the same stream.
        let draw = if self.cfg.temperature == 0.0 { 0.0 } else { self.next_draw() };
        self.sample_at(logits, history, prompt_len, draw)
    }

    /// The logits after every penalty: what temperature and the filters see.
    pub fn penalised(&self, logits: &[f32], history: &[u32], prompt_len: usize) -> Vec<f32> {
        let c = &self.cfg;
        let mut logits = logits.to_vec();
        apply_repetition_penalty(&mut logits, history, c.repetition_penalty);
        let generated = &history[prompt_len.min(history.len())..];
        apply_openai_penalties(&mut logits, generated, c.presence_penalty, c.frequency_penalty);
        apply_dry(&mut logits, history, &c.dry);
        ban_repeated_ngrams(&mut logits, history, c.no_repeat_ngram_size);
        logits
    }

    /// [`Sampler::sample`]'s pick at the uniform `draw` in [0, 1) (unused at temperature 0),
    /// leaving the stream alone.
    pub fn sample_at(&self, logits: &[f32], history: &[u32], prompt_len: usize, draw: f64) -> u32 {
        let logits = self.penalised(logits, history, prompt_len);
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

        // Min-p: the best candidate's weight is 1 (weights are relative to the maximum).
        let min_p = f64::from(self.cfg.min_p);
        if min_p > 0.0 {
            candidates.retain(|&(_, w)| w >= min_p);
            total = candidates.iter().map(|&(_, w)| w).sum();
        }

        // Inverse CDF over the surviving weights in id order (the order the GPU walks them);
        // dividing by `total` renormalises.
        if k > 0 || self.cfg.top_p < 1.0 || min_p > 0.0 {
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

/// OpenAI's presence and frequency penalties: `logit -= count * frequency + (count > 0) *
/// presence` over the generated tokens' counts.
fn apply_openai_penalties(logits: &mut [f32], generated: &[u32], presence: f32, frequency: f32) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    let mut counts = std::collections::BTreeMap::<u32, u32>::new();
    for &id in generated {
        *counts.entry(id).or_default() += 1;
    }
    for (id, n) in counts {
        if let Some(l) = logits.get_mut(id as usize) {
            *l -= n as f32 * frequency + presence;
        }
    }
}

/// DRY: for each earlier occurrence of the last token, the length of the match between the
/// tokens ending there and the tokens ending now; the token that followed it would extend a
/// repeat of that length. Each such token loses `multiplier * base^(longest - allowed_length)`
/// when its longest match reaches `allowed_length`.
fn apply_dry(logits: &mut [f32], history: &[u32], dry: &Dry) {
    if dry.multiplier == 0.0 || history.len() < 2 {
        return;
    }
    let window = match dry.penalty_last_n {
        0 => history,
        n => &history[history.len().saturating_sub(n)..],
    };
    let n = window.len();
    let mut longest = std::collections::BTreeMap::<u32, usize>::new();
    for i in 0..n - 1 {
        // The match ends at i (where window[i] is the last token), grown backwards up to the
        // window's start.
        let len = (0..=i).take_while(|&k| window[i - k] == window[n - 1 - k]).count();
        if len > 0 {
            let e = longest.entry(window[i + 1]).or_default();
            *e = (*e).max(len);
        }
    }
    for (id, len) in longest {
        if len >= dry.allowed_length {
            if let Some(l) = logits.get_mut(id as usize) {
                let exponent = (len - dry.allowed_length) as f64;
                *l -= (f64::from(dry.multiplier) * f64::from(dry.base).powf(exponent)) as f32;
            }
        }
    }
}

/// Transformers' no-repeat n-gram rule: a token that would complete an n-gram already in the
/// history gets -inf.
fn ban_repeated_ngrams(logits: &mut [f32], history: &[u32], n: usize) {
    if n == 0 || history.len() + 1 < n {
        return;
    }
    let prefix = &history[history.len() + 1 - n..];
    for gram in history.windows(n) {
        if &gram[..n - 1] == prefix {
            if let Some(l) = logits.get_mut(gram[n - 1] as usize) {
                *l = f32::NEG_INFINITY;
            }
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
        (0..n).map(|_| s.sample(logits, &[], 0)).collect()
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
        assert_eq!(s.sample(&[0.0, f32::INFINITY, 1.0], &[], 0), 1);
        let none = [f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY];
        assert_eq!(s.sample(&none, &[], 0), 0);
    }

    #[test]
    fn zero_temperature_is_argmax() {
        let mut s = sampler(SamplerConfig { temperature: 0.0, ..Default::default() });
        for seed in 0..20 {
            let logits = test_logits(1000, seed);
            assert_eq!(s.sample(&logits, &[], 0), argmax(&logits));
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
            assert_eq!(s.sample(&logits, &[], 0), argmax(&logits));
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
            assert_eq!(s.sample(&logits, &[], 0), argmax(&logits));
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
        assert_eq!(sampler(cfg(1.0)).sample(&logits, &[0, 0], 0), 0);
        assert_eq!(sampler(cfg(1.3)).sample(&logits, &[0, 0], 0), 1);
        // Negative logit multiplied: -0.5 * 1.5 < -0.6.
        let logits = [-0.5, -0.6];
        assert_eq!(sampler(cfg(1.5)).sample(&logits, &[0, 99], 0), 1);
    }

    /// The penalised logits of `history` (its first `prompt_len` the prompt) under `cfg`.
    fn penalised(cfg: SamplerConfig, logits: &[f32], history: &[u32], prompt_len: usize) -> Vec<f32> {
        sampler(cfg).penalised(logits, history, prompt_len)
    }

    #[test]
    fn min_p_keeps_tokens_near_the_best() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: min-p 0.2 keeps those >= 0.1.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let mut s = sampler(SamplerConfig { min_p: 0.2, seed: 4, ..Default::default() });
        let picks = draws(&mut s, &logits, 4000);
        assert!(!picks.contains(&3));
        let share = |id| picks.iter().filter(|&&t| t == id).count() as f64 / 4000.0;
        for (id, p) in [(0, 0.5 / 0.95), (1, 0.3 / 0.95), (2, 0.15 / 0.95)] {
            assert!((share(id) - p).abs() < 0.03, "token {id}: {} vs {p}", share(id));
        }
        // Min-p 1 keeps only the best.
        let mut s = sampler(SamplerConfig { min_p: 1.0, ..Default::default() });
        assert!(draws(&mut s, &logits, 50).iter().all(|&t| t == 0));
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens() {
        let cfg = SamplerConfig { presence_penalty: 0.5, frequency_penalty: 0.25, ..Default::default() };
        // Prompt [0, 1]; generated [1, 2, 2]: token 0 untouched (prompt only), token 1 once,
        // token 2 twice.
        let got = penalised(cfg, &[1.0, 1.0, 1.0, 1.0], &[0, 1, 1, 2, 2], 2);
        assert_eq!(got, [1.0, 1.0 - 0.75, 1.0 - 1.0, 1.0]);
    }

    #[test]
    fn no_repeat_ngram_bans_the_completions() {
        let cfg = SamplerConfig { no_repeat_ngram_size: 3, ..Default::default() };
        // Last two tokens (5, 6) were followed by 7 and by 9: both banned.
        let got = penalised(cfg.clone(), &[0.0; 10], &[5, 6, 7, 1, 5, 6, 9, 2, 5, 6], 1);
        let banned: Vec<usize> = (0..10).filter(|&i| got[i] == f32::NEG_INFINITY).collect();
        assert_eq!(banned, [7, 9]);
        // Shorter than the n-gram: nothing to ban.
        assert!(penalised(cfg, &[0.0; 10], &[5], 1).iter().all(|&l| l == 0.0));
    }

    #[test]
    fn dry_penalises_extending_a_repeat() {
        let dry = Dry { multiplier: 0.8, base: 2.0, allowed_length: 2, penalty_last_n: 0 };
        let cfg = SamplerConfig { dry: dry.clone(), ..Default::default() };
        // History 1 2 3 4 | 9 | 1 2 3: the tail "1 2 3" matched at positions 0..=2 (length 3)
        // would be extended by 4; "3" alone has no other match. 4 loses 0.8 * 2^(3-2).
        let history = [1, 2, 3, 4, 9, 1, 2, 3];
        let got = penalised(cfg.clone(), &[0.0; 10], &history, 0);
        let want: Vec<f32> = (0..10).map(|i| if i == 4 { -1.6 } else { 0.0 }).collect();
        assert_eq!(got, want);
        // A repeat shorter than allowed_length is free: tail "9 3" matches only "3" (length 1).
        let got = penalised(cfg.clone(), &[0.0; 10], &[3, 5, 9, 3], 0);
        assert!(got.iter().all(|&l| l == 0.0), "{got:?}");
        // The window: the last 4 tokens "9 1 2 3" hold no earlier 3.
        let windowed = SamplerConfig { dry: Dry { penalty_last_n: 4, ..dry }, ..Default::default() };
        assert!(penalised(windowed, &[0.0; 10], &history, 0).iter().all(|&l| l == 0.0));
        // Overlapping repeats ("7 7 7 7"): the match before the last 7 has length 3, so 7
        // loses 0.8 * 2^(3-2).
        let got = penalised(cfg, &[0.0; 10], &[7, 7, 7, 7], 0);
        assert_eq!(got[7], -1.6);
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
        assert!(bad(SamplerConfig { min_p: 1.5, ..d.clone() }).starts_with("--min-p"));
        assert!(
            bad(SamplerConfig { presence_penalty: f32::NAN, ..d.clone() }).starts_with("--presence-penalty")
        );
        let dry = |dry: Dry| SamplerConfig { dry, ..d.clone() };
        assert!(bad(dry(Dry { base: 0.5, ..Dry::default() })).starts_with("--dry-base"));
        assert!(bad(dry(Dry { allowed_length: 0, ..Dry::default() })).starts_with("--dry-allowed-length"));
        assert!(Sampler::new(SamplerConfig { top_p: 2.0, ..d }).is_err());
    }
}
