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

/// Gradient of [`silu_gate`] with respect to its `[gate | up]` input.
pub fn silu_gate_backward(x: &[f32], dout: &[f32], f: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; x.len()];
    for (r, row) in x.chunks(2 * f).enumerate() {
        for c in 0..f {
            let (g, u, d) = (row[c] as f64, row[f + c] as f64, dout[r * f + c] as f64);
            let s = 1.0 / (1.0 + (-g).exp());
            dx[r * 2 * f + c] = (d * u * s * (1.0 + g * (1.0 - s))) as f32;
            dx[r * 2 * f + f + c] = (d * g * s) as f32;
        }
    }
    dx
}

/// Gradient of [`gelu_tanh`].
pub fn gelu_tanh_backward(x: &[f32], dout: &[f32]) -> Vec<f32> {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    x.iter()
        .zip(dout)
        .map(|(&v, &d)| {
            let v = v as f64;
            let t = (k * (v + 0.044715 * v.powi(3))).tanh();
            let dv = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * v * v);
            (d as f64 * dv) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_data::{check_gradient, rand_vec};

    #[test]
    fn activation_backward_matches_finite_differences() {
        let (n, f) = (2, 9);
        let x = rand_vec(1, n * 2 * f, 4.0);
        let dy = rand_vec(2, n * 2 * f, 1.0);
        check_gradient(
            &x,
            &silu_gate_backward(&x, &dy[..n * f], f),
            &dy[..n * f],
            |x| silu_gate(x, f),
            "silu",
        );
        check_gradient(&x, &gelu_tanh_backward(&x, &dy), &dy, gelu_tanh, "gelu");
    }
}
