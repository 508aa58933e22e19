//! Metrics over a generation's per-token records: windowed perplexity and entropy,
//! perplexity fluctuation, entropy drift and variance (methods.md section 5).

use super::{mean, slope, variance, windows};
use serde::Serialize;

/// Default window of the windowed metrics, in tokens.
pub const DEFAULT_WINDOW: usize = 64;

/// Perplexity of each window: exp of the mean negative log-probability of its tokens.
pub fn windowed_perplexity(logprobs: &[f64], window: usize) -> Vec<f64> {
    windows(logprobs.len(), window).into_iter().map(|r| (-mean(&logprobs[r])).exp()).collect()
}

/// Mean entropy of each window.
pub fn windowed_entropy(entropies: &[f64], window: usize) -> Vec<f64> {
    windows(entropies.len(), window).into_iter().map(|r| mean(&entropies[r])).collect()
}

/// Standard deviation (population) of the windows' log-perplexity; NaN below two windows.
pub fn perplexity_fluctuation(logprobs: &[f64], window: usize) -> f64 {
    let log_ppl: Vec<f64> = windowed_perplexity(logprobs, window).iter().map(|p| p.ln()).collect();
    if log_ppl.len() < 2 {
        return f64::NAN;
    }
    variance(&log_ppl).sqrt()
}

/// Least-squares slope of the entropy against the position, in nats per 1,000 tokens.
pub fn entropy_drift(entropies: &[f64]) -> f64 {
    slope(entropies) * 1000.0
}

/// Trailing moving mean: entry t is the mean of `xs[t+1-w ..= t]` (fewer at the start).
/// Used for the per-position plots.
pub fn trailing_mean(xs: &[f64], w: usize) -> Vec<f64> {
    (0..xs.len()).map(|t| mean(&xs[(t + 1).saturating_sub(w)..=t])).collect()
}

/// The per-token metrics of one generated sequence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SequenceMetrics {
    pub tokens: usize,
    /// exp of the mean negative log-probability over the whole sequence.
    pub perplexity: f64,
    pub mean_logprob: f64,
    pub mean_entropy: f64,
    pub mean_top1_prob: f64,
    pub perplexity_fluctuation: f64,
    pub entropy_drift_per_1k: f64,
    pub entropy_variance: f64,
    pub windowed_perplexity: Vec<f64>,
    pub windowed_entropy: Vec<f64>,
}

impl SequenceMetrics {
    pub fn new(logprobs: &[f64], entropies: &[f64], top1: &[f64], window: usize) -> SequenceMetrics {
        let mean_logprob = mean(logprobs);
        SequenceMetrics {
            tokens: logprobs.len(),
            perplexity: (-mean_logprob).exp(),
            mean_logprob,
            mean_entropy: mean(entropies),
            mean_top1_prob: mean(top1),
            perplexity_fluctuation: perplexity_fluctuation(logprobs, window),
            entropy_drift_per_1k: entropy_drift(entropies),
            entropy_variance: variance(entropies),
            windowed_perplexity: windowed_perplexity(logprobs, window),
            windowed_entropy: windowed_entropy(entropies, window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_metrics_by_hand() {
        // Two windows of 2 (the fifth token is a partial window and is dropped):
        // mean log-probs -1 and -3, so perplexities e^1 and e^3 and log-perplexities 1 and 3,
        // whose population sd is 1.
        let lp = [-0.5, -1.5, -2.0, -4.0, -9.0];
        let ppl = windowed_perplexity(&lp, 2);
        assert_eq!(ppl.len(), 2);
        assert!((ppl[0] - 1f64.exp()).abs() < 1e-12 && (ppl[1] - 3f64.exp()).abs() < 1e-12);
        assert!((perplexity_fluctuation(&lp, 2) - 1.0).abs() < 1e-12);
        // One window only: no fluctuation to speak of.
        assert!(perplexity_fluctuation(&lp, 64).is_nan());
        assert_eq!(windowed_entropy(&[1.0, 3.0, 2.0, 2.0], 2), vec![2.0, 2.0]);
    }

    #[test]
    fn entropy_drift_and_variance_by_hand() {
        // H_t = 3 - 0.002 t: a drift of -2 nats per 1,000 tokens.
        let h: Vec<f64> = (0..100).map(|t| 3.0 - 0.002 * t as f64).collect();
        assert!((entropy_drift(&h) + 2.0).abs() < 1e-9);
        let m = SequenceMetrics::new(&[-1.0, -3.0], &[1.0, 3.0], &[0.5, 0.25], 64);
        assert_eq!(m.entropy_variance, 1.0);
        assert!((m.perplexity - 2f64.exp()).abs() < 1e-12);
        assert_eq!((m.mean_logprob, m.mean_entropy, m.mean_top1_prob), (-2.0, 2.0, 0.375));
        assert!((m.entropy_drift_per_1k - 2000.0).abs() < 1e-9);
        assert_eq!(trailing_mean(&[1.0, 3.0, 5.0, 7.0], 2), vec![1.0, 2.0, 4.0, 6.0]);
    }
}
