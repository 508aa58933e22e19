//! Contextual gradient flow's kernels, `shaders/cgfm.wgsl`: a linear layer's weight gradient
//! re-weighted into local and global parts over each sequence, and the adaptive step size.
//! [`crate::train::trainer`] records them; the backward pass calls [`split_weight_grad`] in
//! place of the plain `dW += dyᵀ · x`.

use super::groups;
use super::matmul::{matmul_scaled, Mat};
use crate::gpu::{shader::Define, DType, Gpu, Step, Tensor};
use anyhow::Result;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    seq_len: u32,
    cols: u32,
    n_seqs: u32,
    scale: f32,
    lr: f32,
    lr_min: f32,
    lr_max: f32,
    first: u32,
    norm_at: u32,
    clip_at: u32,
    _p: [u32; 2],
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    ["SEQ_SUM", "ADAPTIVE_LR"].into_iter().map(|d| ("cgfm", vec![(d, 1)])).collect()
}

/// The re-weighting of Algorithm 1 (line 12) for a batch of `batch` sequences of `seq_len`
/// rows, with working space for the per-sequence sums of the widest layer.
pub struct Split {
    pub local: f32,
    pub global: f32,
    batch: usize,
    seq_len: usize,
    x_mean: Tensor,
    dy_sum: Tensor,
}

impl Split {
    pub fn new(
        gpu: &Gpu,
        (local, global): (f32, f32),
        (batch, seq_len): (usize, usize),
        widest: usize,
    ) -> Result<Split> {
        let f = |name: &str| gpu.zeros(name, &[batch, widest], DType::F32);
        Ok(Split {
            local,
            global,
            batch,
            seq_len,
            x_mean: f("cgfm input means")?,
            dy_sum: f("cgfm gradient sums")?,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.x_mean.bytes() + self.dy_sum.bytes()
    }
}

/// `out[b, j] = scale · Σ_t x[b · seq_len + t, j]` over `cols` columns.
fn seq_sum(
    step: &mut Step,
    x: &Tensor,
    out: &Tensor,
    (n_seqs, seq_len, cols): (usize, usize, usize),
    scale: f32,
) {
    assert!(x.numel() >= n_seqs * seq_len * cols && out.numel() >= n_seqs * cols);
    let params = Params {
        seq_len: seq_len as u32,
        cols: cols as u32,
        n_seqs: n_seqs as u32,
        scale,
        ..Params::default()
    };
    let pipeline = step.gpu.pipeline("cgfm", &[("SEQ_SUM", 1)]);
    step.dispatch(pipeline, &params, &bind![x, out], groups(n_seqs * cols, 256));
}

/// The re-weighted weight gradient of `y = x · Wᵀ` (`dw` `[out, in]`), accumulated:
/// `dW += λ_local · dyᵀ x + (λ_global − λ_local) · Σ_b (Σ_t dy_bt)(mean_t x_bt)ᵀ`, which is
/// `λ_local · G_local + λ_global · G_global` since `G_global = Σ_b T · δ̄_b x̄_bᵀ`.
pub fn split_weight_grad(step: &mut Step, split: &Split, (x, dy): (&Tensor, &Tensor), dw: &Tensor) {
    let (out, inp) = (dw.shape[0], dw.shape[1]);
    let rows = split.batch * split.seq_len;
    let d_w = Mat::rows(dw, 0, inp);
    matmul_scaled(
        step,
        Mat::transposed(dy, 0, out),
        Mat::rows(x, 0, inp),
        d_w,
        (out, inp, rows),
        split.local,
        true,
    );
    let shape = |cols| (split.batch, split.seq_len, cols);
    seq_sum(step, x, &split.x_mean, shape(inp), 1.0 / split.seq_len as f32);
    seq_sum(step, dy, &split.dy_sum, shape(out), 1.0);
    let (sums, means) = (Mat::transposed(&split.dy_sum, 0, out), Mat::rows(&split.x_mean, 0, inp));
    matmul_scaled(step, sums, means, d_w, (out, inp, split.batch), split.global - split.local, true);
}

/// The adaptive step size (Algorithm 1, line 14) into `state[1]` from the global norm at
/// `norms[norm_at]` times the clip factor at `norms[clip_at]`; `first` records that norm as
/// the reference `state[0]`.
pub fn adaptive_lr(
    step: &mut Step,
    (norms, norm_at, clip_at): (&Tensor, usize, usize),
    state: &Tensor,
    lr: f64,
    (lr_min, lr_max): (f64, f64),
    first: bool,
) {
    assert!(state.numel() >= 2 && norm_at.max(clip_at) < norms.numel());
    let params = Params {
        lr: lr as f32,
        lr_min: lr_min as f32,
        lr_max: lr_max as f32,
        first: first as u32,
        norm_at: norm_at as u32,
        clip_at: clip_at as u32,
        ..Params::default()
    };
    let pipeline = step.gpu.pipeline("cgfm", &[("ADAPTIVE_LR", 1)]);
    step.dispatch(pipeline, &params, &bind![norms, state], [1, 1, 1]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::ops::test_util::*;

    /// The re-weighted gradient of a [3 sequences × 5 rows] batch, added onto a nonzero
    /// gradient, against the CPU split; and local + global = the full gradient.
    #[test]
    fn split_weight_grad_matches_cpu() {
        let gpu = gpu();
        let (batch, seq_len, inp, out) = (3, 5, 7, 6);
        let rows = batch * seq_len;
        // An offset per column makes the global part large.
        let x: Vec<f32> = rand_vec(1, rows * inp, 1.0)
            .iter()
            .enumerate()
            .map(|(i, v)| v + (i % inp) as f32 * 0.3)
            .collect();
        let dy = rand_vec(2, rows * out, 1.0);
        let dw0 = rand_vec(3, out * inp, 1.0);
        let (local, global) = cpu::cgfm::split(&x, &dy, (batch, seq_len), (inp, out));
        for (i, (l, g)) in local.iter().zip(&global).enumerate() {
            let (o, j) = (i / inp, i % inp);
            let full: f64 = (0..rows).map(|r| dy[r * out + o] as f64 * x[r * inp + j] as f64).sum();
            assert!((l + g - full).abs() < 1e-9, "local + global = full at {i}");
        }
        assert!(global.iter().any(|g| g.abs() > 1.0), "the test needs a global part");
        for weights in [(0.5f32, 2.0f32), (0.0, 1.0), (1.0, 1.0)] {
            let xt = gpu.upload_f32("x", &[rows, inp], &x).unwrap();
            let dyt = gpu.upload_f32("dy", &[rows, out], &dy).unwrap();
            let dwt = gpu.upload_f32("dw", &[out, inp], &dw0).unwrap();
            let split = Split::new(gpu, weights, (batch, seq_len), 8).unwrap();
            let mut step = Step::new(gpu);
            split_weight_grad(&mut step, &split, (&xt, &dyt), &dwt);
            step.submit().unwrap();
            let adj = cpu::cgfm::reweight(&local, &global, (weights.0 as f64, weights.1 as f64));
            let want: Vec<f32> = adj.iter().zip(&dw0).map(|(a, d)| (a + *d as f64) as f32).collect();
            assert_close(&gpu.read_f32(&dwt).unwrap(), &want, 1e-5, &format!("{weights:?}"));
        }
    }

    /// The step size: reference norm at the first call, clamps, and the clip factor.
    #[test]
    fn adaptive_lr_matches_cpu() {
        let gpu = gpu();
        let state = gpu.zeros("state", &[2], DType::F32).unwrap();
        let clamp = (1e-4, 3e-3);
        // (global norm, clip factor, first?, lr)
        let cases = [
            (4.0f32, 1.0f32, true, 1e-3),
            (2.0, 0.5, false, 1e-3),
            (9.0, 1.0, false, 1.2e-3),
            (0.1, 1.0, false, 1e-5),
        ];
        for (norm, clip, first, lr) in cases {
            let norms = gpu.upload_f32("norms", &[3], &[7.0, norm, clip]).unwrap();
            let mut step = Step::new(gpu);
            adaptive_lr(&mut step, (&norms, 1, 2), &state, lr, clamp, first);
            step.submit().unwrap();
            let want = cpu::cgfm::adaptive_lr(lr, (norm * clip) as f64, 4.0, clamp);
            let got = gpu.read_f32(&state).unwrap();
            assert_close(&got, &[4.0, want as f32], 1e-6, &format!("norm {norm} clip {clip} lr {lr}"));
        }
    }
}
