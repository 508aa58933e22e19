//! Paired bootstrap: both arms measured on the same units (prompt × seed); the difference
//! of means gets a 95 % percentile confidence interval from resampling the units.

use super::{mean, sample_sd};
use crate::rng::Rng;
use serde::Serialize;

/// Resamples the reports use.
pub const RESAMPLES: usize = 2000;
/// The reports' bootstrap seed: the same runs give the same intervals.
pub const SEED: u64 = 7;

/// Both arms' mean and spread over the units, and their paired difference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Paired {
    /// Units where both arms are finite; the others are left out.
    pub n: usize,
    pub base_mean: f64,
    /// Sample standard deviation over the units.
    pub base_sd: f64,
    pub arm_mean: f64,
    pub arm_sd: f64,
    /// Mean of (arm - base) over the units.
    pub diff: f64,
    /// 95 % bootstrap interval of `diff` (2.5th and 97.5th percentiles); NaN with fewer than
    /// two units (one pair says nothing of the noise, and would give a zero-width interval).
    pub ci_low: f64,
    pub ci_high: f64,
}

impl Paired {
    /// Whether the interval excludes zero.
    pub fn significant(&self) -> bool {
        self.ci_low > 0.0 || self.ci_high < 0.0
    }
}

/// The paired comparison of `arm` against `base` (same length, unit by unit).
pub fn paired(base: &[f64], arm: &[f64], resamples: usize, seed: u64) -> Paired {
    assert_eq!(base.len(), arm.len(), "paired: arms of different lengths");
    let (b, a): (Vec<f64>, Vec<f64>) =
        base.iter().zip(arm).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| (*x, *y)).unzip();
    let diffs: Vec<f64> = a.iter().zip(&b).map(|(y, x)| y - x).collect();
    let n = diffs.len();
    let (ci_low, ci_high) = if n < 2 {
        (f64::NAN, f64::NAN)
    } else {
        let mut rng = Rng::seed_from_u64(seed);
        let mut means: Vec<f64> = (0..resamples)
            .map(|_| (0..n).map(|_| diffs[(rng.next_f64() * n as f64) as usize]).sum::<f64>() / n as f64)
            .collect();
        means.sort_by(f64::total_cmp);
        (percentile(&means, 0.025), percentile(&means, 0.975))
    };
    Paired {
        n,
        base_mean: mean(&b),
        base_sd: sample_sd(&b),
        arm_mean: mean(&a),
        arm_sd: sample_sd(&a),
        diff: mean(&diffs),
        ci_low,
        ci_high,
    }
}

/// Linear interpolation between the order statistics of sorted `xs`.
fn percentile(xs: &[f64], q: f64) -> f64 {
    let pos = q * (xs.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match xs.get(i + 1) {
        Some(next) => xs[i] + frac * (next - xs[i]),
        None => xs[i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_difference_gives_a_zero_width_interval() {
        let base = [1.0, 5.0, 2.0, 8.0, 3.0];
        let arm: Vec<f64> = base.iter().map(|x| x + 0.25).collect();
        let p = paired(&base, &arm, RESAMPLES, SEED);
        assert_eq!(p.n, 5);
        assert!((p.diff - 0.25).abs() < 1e-12);
        assert!((p.ci_low - 0.25).abs() < 1e-12 && (p.ci_high - 0.25).abs() < 1e-12);
        assert!(p.significant());
        assert!((p.base_mean - 3.8).abs() < 1e-12 && (p.arm_mean - 4.05).abs() < 1e-12);
        // Deviations -2.8 1.2 -1.8 4.2 -0.8: squares sum to 30.8, / 4 = 7.7.
        assert!((p.base_sd - 7.7f64.sqrt()).abs() < 1e-12 && (p.arm_sd - p.base_sd).abs() < 1e-12);
    }

    #[test]
    fn symmetric_differences_cover_zero_with_the_normal_width() {
        // 100 units, differences +1 and -1 half each: the mean difference is 0 and its
        // bootstrap standard error is 1/√100, so the interval is about ±1.96 × 0.1.
        let base = vec![0.0; 100];
        let arm: Vec<f64> = (0..100).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let p = paired(&base, &arm, 4000, SEED);
        assert_eq!(p.diff, 0.0);
        assert!(!p.significant());
        assert!((p.ci_high - 0.196).abs() < 0.02 && (p.ci_low + 0.196).abs() < 0.02, "{p:?}");
        // Seeded: the same call gives the same interval; another seed a slightly different one.
        assert_eq!(paired(&base, &arm, 4000, SEED), p);
        assert_ne!(paired(&base, &arm, 4000, SEED + 1).ci_low, p.ci_low);
    }

    #[test]
    fn non_finite_units_are_left_out() {
        let p = paired(&[1.0, f64::NAN, 2.0], &[2.0, 5.0, 3.0], 100, SEED);
        assert_eq!((p.n, p.diff, p.ci_low, p.ci_high), (2, 1.0, 1.0, 1.0));
        assert!(paired(&[f64::NAN], &[1.0], 100, SEED).ci_low.is_nan());
        // One pair: its difference, but no interval, so never significant.
        let one = paired(&[1.0], &[3.0], 100, SEED);
        assert_eq!((one.n, one.diff), (1, 2.0));
        assert!(one.ci_low.is_nan() && one.ci_high.is_nan() && !one.significant());
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.25), 1.5);
    }
}
