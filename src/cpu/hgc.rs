//! Reference HGC (methods.md section 2) over one weight kind's per-block gradients.

/// λ per block: 1 for block 0, else `1 / (1 + α (1 + slope l / L) D)` with D the squared
/// distance to the block below (divided by the product of the two norms when `normalized`).
pub fn lambdas(grads: &[Vec<f32>], alpha: f64, slope: f64, normalized: bool) -> Vec<f64> {
    let n = grads.len();
    let sq = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
    (0..n)
        .map(|l| {
            if l == 0 {
                return 1.0;
            }
            let mut d: f64 =
                grads[l].iter().zip(&grads[l - 1]).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
            if normalized {
                d /= sq(&grads[l]).sqrt() * sq(&grads[l - 1]).sqrt() + 1e-12;
            }
            1.0 / (1.0 + alpha * (1.0 + slope * l as f64 / n as f64) * d)
        })
        .collect()
}

/// The constricted gradients: `λ[l] ((1 - μ) G[l] + μ G[l-1])` from the raw ones; block 0 as is.
pub fn constrict(grads: &[Vec<f32>], lambda: &[f64], mu: f64) -> Vec<Vec<f32>> {
    (0..grads.len())
        .map(|l| {
            if l == 0 {
                return grads[0].clone();
            }
            let mix = |(a, b): (&f32, &f32)| (lambda[l] * ((1.0 - mu) * *a as f64 + mu * *b as f64)) as f32;
            grads[l].iter().zip(&grads[l - 1]).map(mix).collect()
        })
        .collect()
}
