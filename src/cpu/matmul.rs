/// `y[m×n] = x[m×k] · w[n×k]ᵀ + bias`.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|l| x[i * k + l] as f64 * w[j * k + l] as f64).sum();
            y[i * n + j] = dot as f32 + bias.map_or(0.0, |b| b[j]);
        }
    }
    y
}

/// Each value rounded to f16 (to nearest, ties to even; past f16's range an infinity):
/// the operands of a mixed-precision product.
pub fn round_f16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}
