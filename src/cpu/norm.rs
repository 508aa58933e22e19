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
