//! Multi-scale manifold alignment analysis (methods.md section 4): a layer's projected
//! states read at three scales (local: each token; intermediate: the trailing mean over a
//! window; global: the mean over the context so far), with each scale's mean successive
//! cosine and the Gaussian KL divergence of the local states from the other two scales.

use super::{cosine, mean};
use serde::Serialize;

/// Default intermediate window, in tokens.
pub const DEFAULT_WINDOW: usize = 16;

/// Trailing means of `states` (`[rows, dim]`): row t is the mean of rows
/// `t + 1 - window ..= t` (fewer at the start); `window = usize::MAX` gives the running mean.
pub fn trailing_means(states: &[f64], dim: usize, window: usize) -> Vec<f64> {
    let rows = states.len() / dim;
    let mut out = vec![0.0; states.len()];
    let mut sum = vec![0.0; dim];
    for t in 0..rows {
        for j in 0..dim {
            sum[j] += states[t * dim + j];
        }
        if t >= window {
            for j in 0..dim {
                sum[j] -= states[(t - window) * dim + j];
            }
        }
        let n = (t + 1).min(window) as f64;
        for j in 0..dim {
            out[t * dim + j] = sum[j] / n;
        }
    }
    out
}

/// Mean cosine of successive rows.
pub fn successive_cosine(states: &[f64], dim: usize) -> f64 {
    let rows: Vec<&[f64]> = states.chunks(dim).collect();
    mean(&rows.windows(2).map(|p| cosine(p[0], p[1])).collect::<Vec<_>>())
}

/// Per-dimension mean and population variance of the rows.
fn moments(states: &[f64], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = (states.len() / dim) as f64;
    let mut mu = vec![0.0; dim];
    let mut var = vec![0.0; dim];
    for r in states.chunks(dim) {
        for j in 0..dim {
            mu[j] += r[j] / rows;
        }
    }
    for r in states.chunks(dim) {
        for j in 0..dim {
            var[j] += (r[j] - mu[j]) * (r[j] - mu[j]) / rows;
        }
    }
    (mu, var)
}

/// KL(P ‖ Q) of diagonal Gaussians fitted to the rows of `p` and `q` (`[rows, dim]` each):
/// ½ Σ_j [σp²/σq² + (μq - μp)²/σq² - 1 + ln(σq²/σp²)]. A variance floor of 1e-12 keeps a
/// constant dimension finite.
pub fn gaussian_kl(p: &[f64], q: &[f64], dim: usize) -> f64 {
    if p.is_empty() || q.is_empty() {
        return f64::NAN;
    }
    let ((mp, vp), (mq, vq)) = (moments(p, dim), moments(q, dim));
    (0..dim)
        .map(|j| {
            let (vp, vq) = (vp[j].max(1e-12), vq[j].max(1e-12));
            0.5 * (vp / vq + (mq[j] - mp[j]).powi(2) / vq - 1.0 + (vq / vp).ln())
        })
        .sum()
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerMsma {
    pub layer: usize,
    pub local_successive_cosine: f64,
    pub intermediate_successive_cosine: f64,
    pub global_successive_cosine: f64,
    /// KL(local ‖ intermediate) of the projected states.
    pub kl_local_intermediate: f64,
    /// KL(local ‖ global) of the projected states.
    pub kl_local_global: f64,
}

/// The analysis of one layer's projected states (`[tokens, dim]`).
pub fn analyze_layer(layer: usize, projected: &[f64], dim: usize, window: usize) -> LayerMsma {
    let intermediate = trailing_means(projected, dim, window);
    let global = trailing_means(projected, dim, usize::MAX);
    LayerMsma {
        layer,
        local_successive_cosine: successive_cosine(projected, dim),
        intermediate_successive_cosine: successive_cosine(&intermediate, dim),
        global_successive_cosine: successive_cosine(&global, dim),
        kl_local_intermediate: gaussian_kl(projected, &intermediate, dim),
        kl_local_global: gaussian_kl(projected, &global, dim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_by_hand() {
        // One dimension, states 2, -1, 2, -1. Window 2: 2, 0.5, 0.5, 0.5; running mean:
        // 2, 0.5, 1, 0.5. Successive local states flip sign (cosine -1), the means never do.
        let x = [2.0, -1.0, 2.0, -1.0];
        assert_eq!(trailing_means(&x, 1, 2), vec![2.0, 0.5, 0.5, 0.5]);
        assert_eq!(trailing_means(&x, 1, usize::MAX), vec![2.0, 0.5, 1.0, 0.5]);
        let m = analyze_layer(3, &x, 1, 2);
        assert_eq!(m.layer, 3);
        assert_eq!(m.local_successive_cosine, -1.0);
        assert_eq!(m.intermediate_successive_cosine, 1.0);
        assert_eq!(m.global_successive_cosine, 1.0);
        // Local N(0.5, 2.25) against intermediate N(0.875, 0.421875):
        // ½ (2.25/0.421875 + 0.140625/0.421875 - 1 + ln(0.421875/2.25)).
        let kl = 0.5 * (2.25 / 0.421875 + 0.140625 / 0.421875 - 1.0 + (0.421875f64 / 2.25).ln());
        assert!((m.kl_local_intermediate - kl).abs() < 1e-12);
        assert!((kl - 1.4963451165).abs() < 1e-9);
        // Against global N(1, 0.375): ½ (6 + 0.25/0.375 - 1 + ln(1/6)).
        let kl_g = 0.5 * (6.0 + 0.25 / 0.375 - 1.0 + (1.0f64 / 6.0).ln());
        assert!((m.kl_local_global - kl_g).abs() < 1e-12);
        // Identical distributions: zero.
        assert!(gaussian_kl(&[1.0, 2.0, 3.0, 5.0], &[3.0, 5.0, 1.0, 2.0], 2).abs() < 1e-12);
    }

    #[test]
    fn two_dimensional_cosines() {
        // (1,0) -> (1,1) -> (0,1): 1/√2 twice.
        let c = successive_cosine(&[1.0, 0.0, 1.0, 1.0, 0.0, 1.0], 2);
        assert!((c - 0.5f64.sqrt()).abs() < 1e-15);
    }
}
