use crate::ops::act::Activation;

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

fn silu_grad(v: f64) -> f64 {
    let s = 1.0 / (1.0 + (-v).exp());
    s * (1.0 + v * (1.0 - s))
}

/// GPT-2's GELU, tanh approximation ("gelu_new").
fn gelu_tanh(v: f64) -> f64 {
    let inner = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3));
    0.5 * v * (1.0 + inner.tanh())
}

fn gelu_tanh_grad(v: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let t = (k * (v + 0.044715 * v.powi(3))).tanh();
    0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * v * v)
}

/// erf to about 1e-13: its Maclaurin series below 3, else the continued fraction of erfc.
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let value = if a < 3.0 {
        let (mut term, mut sum) = (a, a);
        for n in 1..100 {
            term *= -a * a / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + ...)))).
        let mut frac = a;
        for k in (1..80).rev() {
            frac = a + (k as f64 / 2.0) / frac;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / frac
    };
    value.copysign(x)
}

/// Exact GELU (GPT-NeoX's "gelu").
fn gelu(v: f64) -> f64 {
    0.5 * v * (1.0 + erf(v / 2f64.sqrt()))
}

fn gelu_grad(v: f64) -> f64 {
    0.5 * (1.0 + erf(v / 2f64.sqrt())) + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// A scalar function in f64.
type Scalar = fn(f64) -> f64;

/// The activation function φ of `kind` and its derivative.
fn phi(kind: Activation) -> (Scalar, Scalar) {
    match kind {
        Activation::SiluGate => (silu, silu_grad),
        Activation::GeluTanh | Activation::GeluTanhGate => (gelu_tanh, gelu_tanh_grad),
        Activation::Gelu => (gelu, gelu_grad),
    }
}

/// φ(gate) * up from rows of `[gate | up]` (2F wide) for gated kinds, else φ(x); and the
/// gradient with respect to `x` given `dout` (shaped like the output).
pub fn activation(kind: Activation, x: &[f32], f: usize, dout: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (phi, grad) = phi(kind);
    if !kind.gated() {
        let out = x.iter().map(|&v| phi(v as f64) as f32).collect();
        let dx = x.iter().zip(dout).map(|(&v, &d)| (d as f64 * grad(v as f64)) as f32).collect();
        return (out, dx);
    }
    let mut out = Vec::new();
    let mut dx = vec![0.0f32; x.len()];
    for (r, row) in x.chunks(2 * f).enumerate() {
        for c in 0..f {
            let (g, u, d) = (row[c] as f64, row[f + c] as f64, dout[r * f + c] as f64);
            out.push((phi(g) * u) as f32);
            dx[r * 2 * f + c] = (d * u * grad(g)) as f32;
            dx[r * 2 * f + f + c] = (d * phi(g)) as f32;
        }
    }
    (out, dx)
}

/// silu(gate) * up from rows of `[gate | up]` (2F wide).
pub fn silu_gate(x: &[f32], f: usize) -> Vec<f32> {
    let rows = x.len() / (2 * f);
    activation(Activation::SiluGate, x, f, &vec![0.0; rows * f]).0
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
        for kind in [Activation::SiluGate, Activation::GeluTanh, Activation::Gelu, Activation::GeluTanhGate] {
            let dout = if kind.gated() { &dy[..n * f] } else { &dy[..] };
            let (_, dx) = activation(kind, &x, f, dout);
            check_gradient(&x, &dx, dout, |x| activation(kind, x, f, dout).0, &format!("{kind:?}"));
        }
    }

    /// erf against tabulated values (Abramowitz & Stegun table 7.1).
    #[test]
    fn erf_matches_the_table() {
        for (x, want) in
            [(0.5, 0.520_499_877_8), (1.0, 0.842_700_792_9), (2.0, 0.995_322_265_0), (3.5, 0.999_999_256_9)]
        {
            assert!((erf(x) - want).abs() < 1e-9 && (erf(-x) + want).abs() < 1e-9, "erf({x}) = {}", erf(x));
        }
    }
}
