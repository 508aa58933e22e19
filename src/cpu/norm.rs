/// RMSNorm of each `d`-wide row: `x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    x.chunks(d)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (ms + eps as f64).sqrt();
            row.iter().zip(w).map(move |(&v, &g)| (v as f64 * rstd * g as f64) as f32)
        })
        .collect()
}

/// Gemma's scales `1 + w`, computed in f32 as transformers does.
pub fn unit_offset(w: &[f32]) -> Vec<f32> {
    w.iter().map(|v| 1.0 + v).collect()
}

/// Gemma's RMSNorm: [`rms_norm`] scaled by `1 + w`. Its gradients are [`norm_backward`]'s
/// with the weights [`unit_offset`] (the weight gradient is the same for `w` and `1 + w`).
pub fn rms_norm_unit_offset(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    rms_norm(x, &unit_offset(w), eps)
}

/// LayerNorm of each `d`-wide row: `(x - mean) / sqrt(var + eps) * w + b`.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    x.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            (0..d).map(move |i| ((row[i] as f64 - mean) * rstd * w[i] as f64 + b[i] as f64) as f32)
        })
        .collect()
}

/// Gradients of [`rms_norm`] (no `b`) or [`layer_norm`] (with `b`) given `dy`:
/// returns (dx, dw, db), db empty for RMSNorm.
pub fn norm_backward(
    x: &[f32],
    w: &[f32],
    layer: bool,
    eps: f32,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0.0f32; x.len()];
    let mut dw = vec![0.0f64; d];
    let mut db = vec![0.0f64; d];
    for (r, row) in x.chunks(d).enumerate() {
        let mean = if layer { row.iter().map(|&v| v as f64).sum::<f64>() / d as f64 } else { 0.0 };
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        let xhat: Vec<f64> = row.iter().map(|&v| (v as f64 - mean) * rstd).collect();
        let dyr = &dy[r * d..(r + 1) * d];
        let g: Vec<f64> = (0..d).map(|i| dyr[i] as f64 * w[i] as f64).collect();
        let mean_g = if layer { g.iter().sum::<f64>() / d as f64 } else { 0.0 };
        let mean_gx = (0..d).map(|i| g[i] * xhat[i]).sum::<f64>() / d as f64;
        for i in 0..d {
            dx[r * d + i] = (rstd * (g[i] - mean_g - xhat[i] * mean_gx)) as f32;
            dw[i] += dyr[i] as f64 * xhat[i];
            db[i] += dyr[i] as f64;
        }
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    (dx, to32(dw), if layer { to32(db) } else { Vec::new() })
}

/// Columns `col + h * d .. col + (h + 1) * d` (h < `heads`) of each `width`-wide row of `x`,
/// as `[rows * heads, d]` (the layout of per-head norms inside the fused QKV row).
fn gather_heads(x: &[f32], width: usize, col: usize, heads: usize, d: usize) -> Vec<f32> {
    x.chunks(width).flat_map(|row| row[col..col + heads * d].iter().copied()).collect()
}

/// Per-head RMSNorm (Qwen3's q or k norm): the `heads` heads of width `w.len()` from column
/// `col` of each `width`-wide row normalised, the other columns copied.
pub fn head_rms_norm(x: &[f32], width: usize, col: usize, heads: usize, w: &[f32], eps: f32) -> Vec<f32> {
    let span = heads * w.len();
    let normed = rms_norm(&gather_heads(x, width, col, heads, w.len()), w, eps);
    let mut out = x.to_vec();
    for (row, n) in out.chunks_mut(width).zip(normed.chunks(span)) {
        row[col..col + span].copy_from_slice(n);
    }
    out
}

/// Gradients of [`head_rms_norm`] given `dy`: (dx, dw); dx is `dy` outside the heads.
pub fn head_rms_norm_backward(
    x: &[f32],
    (width, col, heads): (usize, usize, usize),
    w: &[f32],
    eps: f32,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (d, span) = (w.len(), heads * w.len());
    let gather = |v| gather_heads(v, width, col, heads, d);
    let (dxh, dw, _) = norm_backward(&gather(x), w, false, eps, &gather(dy));
    let mut dx = dy.to_vec();
    for (row, g) in dx.chunks_mut(width).zip(dxh.chunks(span)) {
        row[col..col + span].copy_from_slice(g);
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_data::{check_gradient, rand_vec};

    #[test]
    fn norm_backward_matches_finite_differences() {
        let (n, d) = (3, 12);
        let x: Vec<f32> = rand_vec(1, n * d, 2.0);
        let w = rand_vec(2, d, 1.0);
        let b = rand_vec(3, d, 1.0);
        let dy = rand_vec(4, n * d, 1.0);
        for layer in [false, true] {
            let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
                if layer {
                    layer_norm(x, w, b, 1e-5)
                } else {
                    rms_norm(x, w, 1e-5)
                }
            };
            let (dx, dw, db) = norm_backward(&x, &w, layer, 1e-5, &dy);
            check_gradient(&x, &dx, &dy, |x| fwd(x, &w, &b), "norm dx");
            check_gradient(&w, &dw, &dy, |w| fwd(&x, w, &b), "norm dw");
            if layer {
                check_gradient(&b, &db, &dy, |b| fwd(&x, &w, b), "norm db");
            }
        }
    }

    #[test]
    fn unit_offset_norm_backward_matches_finite_differences() {
        let (n, d) = (3, 12);
        let (x, w, dy) = (rand_vec(1, n * d, 2.0), rand_vec(2, d, 1.0), rand_vec(4, n * d, 1.0));
        let (dx, dw, _) = norm_backward(&x, &unit_offset(&w), false, 1e-6, &dy);
        check_gradient(&x, &dx, &dy, |x| rms_norm_unit_offset(x, &w, 1e-6), "(1 + w) norm dx");
        check_gradient(&w, &dw, &dy, |w| rms_norm_unit_offset(&x, w, 1e-6), "(1 + w) norm dw");
    }

    #[test]
    fn head_norm_backward_matches_finite_differences() {
        // Two rows of [q0 q1 | k0 | v0] with heads of 4: the q heads, then the k head.
        let (width, d) = (16, 4);
        let x = rand_vec(1, 2 * width, 2.0);
        let w = rand_vec(2, d, 1.0);
        let dy = rand_vec(3, 2 * width, 1.0);
        for (col, heads) in [(0, 2), (8, 1)] {
            let (dx, dw) = head_rms_norm_backward(&x, (width, col, heads), &w, 1e-6, &dy);
            check_gradient(&x, &dx, &dy, |x| head_rms_norm(x, width, col, heads, &w, 1e-6), "head norm dx");
            check_gradient(&w, &dw, &dy, |w| head_rms_norm(&x, width, col, heads, w, 1e-6), "head norm dw");
        }
    }
}
