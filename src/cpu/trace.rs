//! References for the latent-trace reductions (`shaders/trace.wgsl`, `generate::trace`), from
//! full hidden states `h` `[T, d]`, in f64.

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// |h_t| per position.
pub fn norms(h: &[f32], d: usize) -> Vec<f64> {
    h.chunks(d).map(|row| dot(row, row).sqrt()).collect()
}

/// cos(h_t, h_{t-1}) per position; NaN at t = 0.
pub fn successive_cos(h: &[f32], d: usize) -> Vec<f64> {
    let rows: Vec<&[f32]> = h.chunks(d).collect();
    (0..rows.len())
        .map(|t| match t {
            0 => f64::NAN,
            _ => dot(rows[t], rows[t - 1]) / (dot(rows[t], rows[t]) * dot(rows[t - 1], rows[t - 1])).sqrt(),
        })
        .collect()
}

/// `h · mᵀ` with `m` `[p, d]`: `[T, p]`.
pub fn project(h: &[f32], d: usize, m: &[f32]) -> Vec<f64> {
    h.chunks(d).flat_map(|row| m.chunks(d).map(move |col| dot(row, col))).collect()
}

/// Mean of the rows of each segment: `[segments, d]`.
pub fn segment_means(h: &[f32], d: usize, segment_of: &[u32], segments: usize) -> Vec<f64> {
    let mut sums = vec![0.0; segments * d];
    let mut counts = vec![0usize; segments];
    for (row, &s) in h.chunks(d).zip(segment_of) {
        counts[s as usize] += 1;
        for (acc, &v) in sums[s as usize * d..].iter_mut().zip(row) {
            *acc += v as f64;
        }
    }
    sums.iter().enumerate().map(|(i, s)| s / counts[i / d] as f64).collect()
}
