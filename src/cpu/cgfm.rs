//! Reference CGFM (methods.md section 3) for one linear layer `y = x · Wᵀ` over a batch of
//! `batch` sequences of `seq_len` rows, and the adaptive step size.

/// The split of the weight gradient `G = Σ_t δ_t x_tᵀ` (`[out, in]`, f64) into its local and
/// global parts: `G_global = Σ_b T · δ̄_b x̄_bᵀ` with per-sequence means, `G_local = G - G_global`.
pub fn split(
    x: &[f32],
    dy: &[f32],
    (batch, seq_len): (usize, usize),
    (inp, out): (usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    assert!(x.len() == batch * seq_len * inp && dy.len() == batch * seq_len * out);
    let mut full = vec![0.0; out * inp];
    let mut global = vec![0.0; out * inp];
    for b in 0..batch {
        let rows = b * seq_len..(b + 1) * seq_len;
        let mean = |v: &[f32], cols: usize, j: usize| {
            rows.clone().map(|r| v[r * cols + j] as f64).sum::<f64>() / seq_len as f64
        };
        let x_mean: Vec<f64> = (0..inp).map(|j| mean(x, inp, j)).collect();
        let dy_mean: Vec<f64> = (0..out).map(|i| mean(dy, out, i)).collect();
        for i in 0..out {
            for j in 0..inp {
                global[i * inp + j] += seq_len as f64 * dy_mean[i] * x_mean[j];
                full[i * inp + j] +=
                    rows.clone().map(|r| dy[r * out + i] as f64 * x[r * inp + j] as f64).sum::<f64>();
            }
        }
    }
    let local = full.iter().zip(&global).map(|(f, g)| f - g).collect();
    (local, global)
}

/// Algorithm 1, line 12: `λ_local · G_local + λ_global · G_global`.
pub fn reweight(local: &[f64], global: &[f64], (w_local, w_global): (f64, f64)) -> Vec<f64> {
    local.iter().zip(global).map(|(l, g)| w_local * l + w_global * g).collect()
}

/// Algorithm 1, line 14: `η (1 + ‖G‖ / ‖G_ref‖)` clamped to `[lr_min, lr_max]`.
pub fn adaptive_lr(lr: f64, norm: f64, reference: f64, (lr_min, lr_max): (f64, f64)) -> f64 {
    (lr * (1.0 + norm / reference)).clamp(lr_min, lr_max)
}
