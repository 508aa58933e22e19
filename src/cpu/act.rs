/// silu(gate) * up from rows of `[gate | up]` (2F wide).
pub fn silu_gate(x: &[f32], f: usize) -> Vec<f32> {
    x.chunks(2 * f)
        .flat_map(|row| {
            (0..f).map(move |c| {
                let g = row[c] as f64;
                (g / (1.0 + (-g).exp()) * row[f + c] as f64) as f32
            })
        })
        .collect()
}

/// GPT-2's GELU, tanh approximation ("gelu_new").
pub fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| {
            let v = v as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3));
            (0.5 * v * (1.0 + inner.tanh())) as f32
        })
        .collect()
}
