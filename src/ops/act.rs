//! MLP activations, `shaders/act.wgsl`: SiLU-gated (Llama, Qwen2) and GELU-tanh (GPT-2).

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `[gate | up]` (2F wide) to `silu(gate) * up` (F wide).
    SiluGate,
    /// F wide to F wide.
    GeluTanh,
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
    for gated in [0, 1] {
        v.push(("act", vec![("SILU_GATE", gated)]));
        v.push(("act_backward", vec![("SILU_GATE", gated)]));
    }
    v
}

/// Applies the activation to `n_rows` rows; `f` is the output width.
pub fn activation(step: &mut Step, kind: Activation, x: &Tensor, out: &Tensor, n_rows: usize, f: usize) {
    let in_width = if kind == Activation::SiluGate { 2 * f } else { f };
    assert!(x.numel() >= n_rows * in_width && out.numel() >= n_rows * f);
    let params = Params { n_rows: n_rows as u32, f: f as u32, _p: [0; 2] };
    let pipeline = step.gpu.pipeline("act", &[("SILU_GATE", (kind == Activation::SiluGate) as u32)]);
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
    let in_width = if kind == Activation::SiluGate { 2 * f } else { f };
    assert!(x.numel() >= n_rows * in_width && dx.numel() >= n_rows * in_width && dout.numel() >= n_rows * f);
    let params = Params { n_rows: n_rows as u32, f: f as u32, _p: [0; 2] };
    let pipeline = step.gpu.pipeline("act_backward", &[("SILU_GATE", (kind == Activation::SiluGate) as u32)]);
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
        let x = rand_vec(1, n * 2 * f, 8.0);
        let xt = gpu.upload_f32("x", &[n, 2 * f], &x).unwrap();
        let gated = gpu.zeros("g", &[n, f], DType::F32).unwrap();
        let gelu = gpu.zeros("h", &[n, 2 * f], DType::F32).unwrap();
        let mut step = Step::new(gpu);
        activation(&mut step, Activation::SiluGate, &xt, &gated, n, f);
        activation(&mut step, Activation::GeluTanh, &xt, &gelu, n * 2, f);
        step.submit().unwrap();
        assert_close(&gpu.read_f32(&gated).unwrap(), &cpu::act::silu_gate(&x, f), 1e-5, "silu");
        assert_close(&gpu.read_f32(&gelu).unwrap(), &cpu::act::gelu_tanh(&x), 1e-5, "gelu");
    }

    #[test]
    fn activation_backward_matches_cpu() {
        let gpu = gpu();
        let (n, f) = (5, 172);
        let x = rand_vec(1, n * 2 * f, 8.0);
        let dy = rand_vec(2, n * 2 * f, 1.0);
        let xt = gpu.upload_f32("x", &[n, 2 * f], &x).unwrap();
        let dyt = gpu.upload_f32("dy", &[n, 2 * f], &dy).unwrap();
        let gated = gpu.zeros("g", &[n, 2 * f], DType::F32).unwrap();
        let gelu = gpu.zeros("h", &[n, 2 * f], DType::F32).unwrap();
        let mut step = Step::new(gpu);
        activation_backward(&mut step, Activation::SiluGate, &xt, &dyt, &gated, n, f);
        activation_backward(&mut step, Activation::GeluTanh, &xt, &dyt, &gelu, n * 2, f);
        step.submit().unwrap();
        let want = cpu::act::silu_gate_backward(&x, &dy[..n * f], f);
        assert_close(&gpu.read_f32(&gated).unwrap(), &want, 1e-5, "silu backward");
        assert_close(
            &gpu.read_f32(&gelu).unwrap(),
            &cpu::act::gelu_tanh_backward(&x, &dy),
            1e-5,
            "gelu backward",
        );
    }
}
