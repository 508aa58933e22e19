//! Latent stability (methods.md section 5, after table 1 of the HGC paper), from the
//! per-layer statistics a trace reduces on the GPU: successive cosines, norms, projected
//! states and per-sentence mean states.

use super::{cosine, mean, variance, widen, windows};
use serde::Serialize;

/// Mean cosine of successive hidden states (entry 0, which has no predecessor, is NaN and
/// skipped).
pub fn mean_successive_cosine(successive_cos: &[f64]) -> f64 {
    mean(successive_cos)
}

/// Variance-based stability index: the variance (population) of the per-window mean norms;
/// NaN below two windows, where there is nothing to vary.
pub fn stability_index(norms: &[f64], window: usize) -> f64 {
    let means: Vec<f64> = windows(norms.len(), window).into_iter().map(|r| mean(&norms[r])).collect();
    if means.len() < 2 {
        return f64::NAN;
    }
    variance(&means)
}

/// Residual fraction of the least-squares linear map from `from` to `to` (both `[rows, dim]`
/// row-major): `‖to - from·W‖² / ‖to‖²` with `W` minimising the numerator. A tiny ridge
/// (1e-10 of the mean diagonal) keeps a rank-deficient `from` solvable.
pub fn projection_error(from: &[f64], to: &[f64], dim: usize) -> f64 {
    let rows = from.len() / dim;
    assert_eq!(to.len(), rows * dim, "projection_error: shapes differ");
    // Normal equations: (XᵀX + εI) W = XᵀY.
    let mut xtx = vec![0.0; dim * dim];
    let mut xty = vec![0.0; dim * dim];
    for r in 0..rows {
        let (x, y) = (&from[r * dim..(r + 1) * dim], &to[r * dim..(r + 1) * dim]);
        for i in 0..dim {
            for j in 0..dim {
                xtx[i * dim + j] += x[i] * x[j];
                xty[i * dim + j] += x[i] * y[j];
            }
        }
    }
    let ridge = 1e-10 * (0..dim).map(|i| xtx[i * dim + i]).sum::<f64>() / dim as f64;
    for i in 0..dim {
        xtx[i * dim + i] += ridge.max(f64::MIN_POSITIVE);
    }
    let Some(l) = cholesky(&xtx, dim) else { return f64::NAN };
    let w = cholesky_solve(&l, &xty, dim);
    let (mut resid, mut total) = (0.0, 0.0);
    for r in 0..rows {
        let (x, y) = (&from[r * dim..(r + 1) * dim], &to[r * dim..(r + 1) * dim]);
        for j in 0..dim {
            let fit: f64 = (0..dim).map(|i| x[i] * w[i * dim + j]).sum();
            resid += (y[j] - fit) * (y[j] - fit);
            total += y[j] * y[j];
        }
    }
    resid / total
}

/// Lower-triangular L with L·Lᵀ = a (symmetric positive definite, `n × n`).
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves L·Lᵀ·X = B for every column of `b` (`n × n`).
fn cholesky_solve(l: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut x = b.to_vec();
    for c in 0..n {
        for i in 0..n {
            let s = x[i * n + c] - (0..i).map(|k| l[i * n + k] * x[k * n + c]).sum::<f64>();
            x[i * n + c] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s = x[i * n + c] - (i + 1..n).map(|k| l[k * n + i] * x[k * n + c]).sum::<f64>();
            x[i * n + c] = s / l[i * n + i];
        }
    }
    x
}

/// Mean cosine of the mean-pooled states of consecutive segments (`[segments, dim]`);
/// a segment without tokens (a zero row) is skipped as NaN.
pub fn coherence(segment_means: &[f64], dim: usize) -> f64 {
    let rows: Vec<&[f64]> = segment_means.chunks(dim).collect();
    mean(&rows.windows(2).map(|p| cosine(p[0], p[1])).collect::<Vec<_>>())
}

/// One layer's statistics over the positions being judged, as the trace gives them.
pub struct LayerInput<'a> {
    pub layer: usize,
    pub norms: &'a [f32],
    pub successive_cos: &'a [f32],
    /// `[positions, proj_dim]`.
    pub projected: &'a [f32],
    /// `[segments, hidden]`.
    pub segment_means: &'a [f32],
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerLatent {
    pub layer: usize,
    pub successive_cosine: f64,
    pub stability_index: f64,
    /// From the layer below; NaN for block 0, which has no block below.
    pub projection_error: f64,
    pub coherence: f64,
}

/// Every layer's latent stability, the layers in order 0, 1, ... .
pub fn layer_latents(
    layers: &[LayerInput],
    proj_dim: usize,
    hidden: usize,
    window: usize,
) -> Vec<LayerLatent> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerLatent {
            layer: l.layer,
            successive_cosine: mean_successive_cosine(&widen(l.successive_cos)),
            stability_index: stability_index(&widen(l.norms), window),
            projection_error: match i {
                0 => f64::NAN,
                _ => projection_error(&widen(layers[i - 1].projected), &widen(l.projected), proj_dim),
            },
            coherence: coherence(&widen(l.segment_means), hidden),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stability_index_by_hand() {
        // Windows of 2: mean norms 2, 4, 6 -> variance 8/3. The partial fourth window drops.
        let v = stability_index(&[1.0, 3.0, 4.0, 4.0, 5.0, 7.0, 100.0], 2);
        assert!((v - 8.0 / 3.0).abs() < 1e-12);
        assert!(stability_index(&[1.0, 3.0, 4.0], 4).is_nan());
        assert_eq!(mean_successive_cosine(&[f64::NAN, 0.5, 1.0]), 0.75);
    }

    #[test]
    fn projection_error_by_hand() {
        // One dimension: x = (1, 1, 0), y = (1, 3, 2). w = x·y / x·x = 2, residual
        // (-1, 1, 2) with squared norm 6 against ‖y‖² = 14.
        let e = projection_error(&[1.0, 1.0, 0.0], &[1.0, 3.0, 2.0], 1);
        assert!((e - 3.0 / 7.0).abs() < 1e-8, "{e}");
        // y = x·A for an invertible A: the map is exact.
        let x = [1.0, 2.0, -1.0, 0.5, 3.0, 1.0, 0.0, -2.0];
        let a = [2.0, 1.0, -1.0, 3.0];
        let y: Vec<f64> =
            x.chunks(2).flat_map(|r| [r[0] * a[0] + r[1] * a[2], r[0] * a[1] + r[1] * a[3]]).collect();
        assert!(projection_error(&x, &y, 2) < 1e-9);
        // y orthogonal to everything x spans: nothing is explained.
        assert!((projection_error(&[1.0, 0.0], &[0.0, 5.0], 1) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn coherence_by_hand() {
        // Segments (1,0), (1,1), (0,1): cosines 1/√2 and 1/√2; a zero row is skipped.
        let c = coherence(&[1.0, 0.0, 1.0, 1.0, 0.0, 1.0], 2);
        assert!((c - 0.5f64.sqrt()).abs() < 1e-15);
        assert!((coherence(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 2)).is_nan());
        let norms = [1.0f32, 3.0];
        let input = |layer, projected: &'static [f32]| LayerInput {
            layer,
            norms: &norms,
            successive_cos: &[f32::NAN, 0.5],
            projected,
            segment_means: &[1.0, 0.0, 1.0, 1.0],
        };
        let out = layer_latents(&[input(0, &[1.0, 1.0, 0.0]), input(1, &[1.0, 3.0, 2.0])], 1, 2, 1);
        assert!(out[0].projection_error.is_nan());
        assert!((out[1].projection_error - 3.0 / 7.0).abs() < 1e-8);
        assert_eq!((out[1].successive_cosine, out[1].stability_index), (0.5, 1.0));
    }
}
