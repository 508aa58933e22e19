//! MLP activations, `shaders/act.wgsl`: SiLU-gated (Llama, Qwen), GELU-tanh (GPT-2), GELU
//! with erf (GPT-NeoX), GELU-tanh-gated (Gemma 3).

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `[gate | up]` (2F wide) to `silu(gate) * up` (F wide).
    SiluGate,
    /// F wide to F wide.
    GeluTanh,
    /// Exact GELU, `0.5 x (1 + erf(x / √2))`: F wide to F wide.
    Gelu,
    /// `[gate | up]` to `gelu_tanh(gate) * up`.
    GeluTanhGate,
}

impl Activation {
    /// Whether the input is a fused `[gate | up]` projection, twice the output's width.
    pub fn gated(self) -> bool {
        matches!(self, Activation::SiluGate | Activation::GeluTanhGate)
    }

    fn defines(self) -> [Define; 3] {
        let silu = self == Activation::SiluGate;
        [("GATED", self.gated() as u32), ("SILU", silu as u32), ("ERF", (self == Activation::Gelu) as u32)]
    }

    const ALL: [Activation; 4] =
        [Activation::SiluGate, Activation::GeluTanh, Activation::Gelu, Activation::GeluTanhGate];
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    f: u32,
    _p: [u32; 2],
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    let mut v = Vec::new();
    for kind in Activation::ALL {
        v.push(("act", kind.defines().to_vec()));
        v.push(("act_backward", kind.defines().to_vec()));
    }
    v
}

/// Applies the activation to `n_rows` rows; `f` is the output width.
pub fn activation(step: &mut Step, kind: Activation, x: &Tensor, out: &Tensor, n_rows: usize, f: usize) {
    let in_width = if kind.gated() { 2 * f } else { f };
    assert!(x.numel() >= n_rows * in_width && out.numel() >= n_rows * f);
    let params = Params { n_rows: n_rows as u32, f: f as u32, _p: [0; 2] };
    let pipeline = step.gpu.pipeline("act", &kind.defines());
    step.dispatch(pipeline, &params, &bind![x, out], groups(n_rows * f, 64));
}

/// Gradient of [`activation`]: `dx` (shaped like its input `x`) from `dout` (`f` wide).
pub fn activation_backward(
    step: &mut Step,
    kind: Activation,
    x: &Tensor,
    dout: &Tensor,
    dx: &Tensor,
    n_rows: usize,
    f: usize,
) {
    let in_width = if kind.gated() { 2 * f } else { f };
    assert!(x.numel() >= n_rows * in_width && dx.numel() >= n_rows * in_width && dout.numel() >= n_rows * f);
    let params = Params { n_rows: n_rows as u32, f: f as u32, _p: [0; 2] };
    let pipeline = step.gpu.pipeline("act_backward", &kind.defines());
    step.dispatch(pipeline, &params, &bind![x, dout, dx], groups(n_rows * f, 64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    #[test]
    fn activations_match_cpu() {
        let gpu = gpu();
        let (n, f) = (5, 172);
        // Beyond ±5 the f32 tails of φ' (about 1e-5 there) round away; the CPU keeps them.
        let x = rand_vec(1, n * 2 * f, 5.0);
        let dy = rand_vec(2, n * 2 * f, 1.0);
        let xt = gpu.upload_f32("x", &[n, 2 * f], &x).unwrap();
        let dyt = gpu.upload_f32("dy", &[n, 2 * f], &dy).unwrap();
        for kind in Activation::ALL {
            // Gated kinds read n rows of [gate | up]; the others 2n rows of f.
            let (rows, out_len) = if kind.gated() { (n, n * f) } else { (2 * n, 2 * n * f) };
            let out = gpu.zeros("out", &[out_len], DType::F32).unwrap();
            let dx = gpu.zeros("dx", &[n, 2 * f], DType::F32).unwrap();
            let mut step = Step::new(gpu);
            activation(&mut step, kind, &xt, &out, rows, f);
            activation_backward(&mut step, kind, &xt, &dyt, &dx, rows, f);
            step.submit().unwrap();
            let (want, want_dx) = cpu::act::activation(kind, &x, f, &dy[..out_len]);
            assert_close(&gpu.read_f32(&out).unwrap(), &want, 1e-5, &format!("{kind:?}"));
            assert_close(&gpu.read_f32(&dx).unwrap(), &want_dx, 1e-5, &format!("{kind:?} backward"));
        }
    }
}
