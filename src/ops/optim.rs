//! The optimizer's kernels: gradient norms with the clip factor (`shaders/grad_norm.wgsl`)
//! and the AdamW update (`shaders/adamw.wgsl`). Gradients never leave the GPU; only the
//! per-tensor norms are read back, for the log.

use super::groups;
use crate::gpu::{shader::Define, DType, Gpu, Step, Tensor};
use anyhow::Result;

/// AdamW's hyper-parameters (torch.optim.AdamW's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// The base learning rate (the schedule scales it per step).
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the second moment's square root.
    pub eps: f64,
    /// Decoupled weight decay, times the learning rate.
    pub weight_decay: f64,
}

/// Elements per partial sum (the shader's CHUNK).
const CHUNK: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    n: u32,
    first: u32,
    n_tensors: u32,
    clip: f32,
    unscale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamParams {
    n: u32,
    scale_at: u32,
    decay: f32,
    step_size: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    bc2_sqrt: f32,
    wd: f32,
    inv_bc1: f32,
    lr_at: u32,
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    let mut v = vec![("grad_norm", vec![("FINISH", 0)]), ("grad_norm", vec![("FINISH", 1)])];
    v.push(("adamw", vec![("DIRECTION", 1)]));
    for lr_buf in [0, 1] {
        v.push(("adamw", vec![("LR_BUF", lr_buf)]));
        v.push(("adamw", vec![("APPLY", 1), ("LR_BUF", lr_buf)]));
    }
    v
}

/// Where AdamW's learning rate comes from: the host (`o.lr`), or element `.1` of a GPU
/// tensor (CGFM's adaptive step size, never read back before the update).
pub type LrOnGpu<'a> = Option<(&'a Tensor, usize)>;

/// The shader's parameters for `n` elements at step `t` (1-based).
fn adam_params(o: &AdamW, t: u32, weight_decay: f64, n: usize, scale_at: usize, lr_at: usize) -> AdamParams {
    let bc1 = 1.0 - o.beta1.powi(t as i32);
    AdamParams {
        n: n as u32,
        scale_at: scale_at as u32,
        decay: (1.0 - o.lr * weight_decay) as f32,
        step_size: (o.lr / bc1) as f32,
        beta2: o.beta2 as f32,
        one_minus_beta1: (1.0 - o.beta1) as f32,
        one_minus_beta2: (1.0 - o.beta2) as f32,
        eps: o.eps as f32,
        bc2_sqrt: (1.0 - o.beta2.powi(t as i32)).sqrt() as f32,
        wd: weight_decay as f32,
        inv_bc1: (1.0 / bc1) as f32,
        lr_at: lr_at as u32,
    }
}

/// Sums of squares of a fixed list of tensors (each given as its row shards, src/gpu/sharded.rs),
/// their global norm and the clip factor.
pub struct GradNorms {
    /// Elements of each shard of each tensor.
    sizes: Vec<Vec<usize>>,
    partials: Tensor,
    ranges: Tensor,
    /// `[n + 3]`: per-tensor sums of squares, the global norm, the clip factor, then the
    /// gradients' multiplier (the clip factor over the loss scale).
    pub out: Tensor,
}

impl GradNorms {
    /// Over tensors of these shards' sizes (one tensor's partial sums are its shards' in turn).
    pub fn new(gpu: &Gpu, sizes: &[Vec<usize>]) -> Result<GradNorms> {
        let mut ranges = Vec::new();
        let mut first = 0;
        for shards in sizes {
            let count: usize = shards.iter().map(|n| n.div_ceil(CHUNK).max(1)).sum();
            ranges.extend([first as u32, count as u32]);
            first += count;
        }
        Ok(GradNorms {
            sizes: sizes.to_vec(),
            partials: gpu.zeros("grad norm partials", &[first], DType::F32)?,
            ranges: gpu.upload_u32("grad norm ranges", &[ranges.len()], &ranges)?,
            out: gpu.zeros("grad norms", &[sizes.len() + 3], DType::F32)?,
        })
    }

    /// Where the clip factor lands in [`GradNorms::out`].
    pub fn scale_at(&self) -> usize {
        self.sizes.len() + 1
    }

    /// Where the gradients' multiplier for AdamW lands in [`GradNorms::out`].
    pub fn multiplier_at(&self) -> usize {
        self.sizes.len() + 2
    }

    /// Records the norms of `tensors`' shards (in the order of `sizes`), each element times
    /// `unscale` (1 / the loss scale; 1 without one); `clip` 0 means no clipping.
    pub fn record(&self, step: &mut Step, tensors: &[&[Tensor]], clip: f32, unscale: f32) {
        let shards: Vec<&Tensor> = tensors.iter().flat_map(|t| t.iter()).collect();
        let sizes: Vec<usize> = self.sizes.iter().flatten().copied().collect();
        assert_eq!(tensors.len(), self.sizes.len());
        assert_eq!(shards.len(), sizes.len());
        let mut first = 0;
        let pipeline = step.gpu.pipeline("grad_norm", &[("FINISH", 0)]);
        for (t, &n) in shards.into_iter().zip(&sizes) {
            assert_eq!(t.numel(), n);
            let count = n.div_ceil(CHUNK).max(1);
            let params = NormParams { n: n as u32, first: first as u32, n_tensors: 0, clip, unscale };
            step.dispatch(
                pipeline.clone(),
                &params,
                &bind![x = t, partials = &self.partials],
                [count as u32, 1, 1],
            );
            first += count;
        }
        let params = NormParams { n: 0, first: 0, n_tensors: self.sizes.len() as u32, clip, unscale };
        let pipeline = step.gpu.pipeline("grad_norm", &[("FINISH", 1)]);
        step.dispatch(
            pipeline,
            &params,
            &bind![partials = &self.partials, ranges = &self.ranges, out = &self.out],
            [1, 1, 1],
        );
    }
}

/// One AdamW update (step `t`, 1-based) of `param` from `grad` times the clip factor at
/// `scale.1` of `scale.0`; `weight_decay` overrides the optimizer's for this tensor.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    step: &mut Step,
    o: &AdamW,
    t: u32,
    weight_decay: f64,
    (param, grad): (&Tensor, &Tensor),
    (m, v): (&Tensor, &Tensor),
    scale: (&Tensor, usize),
    lr: LrOnGpu,
) {
    let n = param.numel();
    assert!(grad.numel() == n && m.numel() == n && v.numel() == n && scale.1 < scale.0.numel());
    let params = adam_params(o, t, weight_decay, n, scale.1, lr.map_or(0, |l| l.1));
    let pipeline = step.gpu.pipeline("adamw", &[("LR_BUF", lr.is_some() as u32)]);
    let mut buffers = bind![param, grad, m, v, scale = scale.0].to_vec();
    buffers.extend(lr.map(|l| ("lr_buf", l.0)));
    step.dispatch(pipeline, &params, &buffers, groups(n, 256));
}

/// The first half of [`adamw`]: the moments, and the Adam direction
/// `m̂ / (sqrt(v̂) + eps)` (without the learning rate) written over `grad`.
pub fn adamw_direction(
    step: &mut Step,
    o: &AdamW,
    t: u32,
    grad: &Tensor,
    (m, v): (&Tensor, &Tensor),
    scale: (&Tensor, usize),
) {
    let n = grad.numel();
    assert!(m.numel() == n && v.numel() == n && scale.1 < scale.0.numel());
    // The direction leaves out lr / bc1; bc1 is applied by `adamw_apply`'s step size.
    let params = adam_params(o, t, 0.0, n, scale.1, 0);
    let pipeline = step.gpu.pipeline("adamw", &[("DIRECTION", 1)]);
    step.dispatch(pipeline, &params, &bind![grad, m, v, scale = scale.0], groups(n, 256));
}

/// The second half of [`adamw`]: `param = param · (1 - lr · wd) - lr / bc1 · direction`.
pub fn adamw_apply(
    step: &mut Step,
    o: &AdamW,
    t: u32,
    weight_decay: f64,
    (param, direction): (&Tensor, &Tensor),
    lr: LrOnGpu,
) {
    let n = param.numel();
    assert_eq!(direction.numel(), n);
    let params = adam_params(o, t, weight_decay, n, 0, lr.map_or(0, |l| l.1));
    let pipeline = step.gpu.pipeline("adamw", &[("APPLY", 1), ("LR_BUF", lr.is_some() as u32)]);
    let mut buffers = bind![param, grad = direction].to_vec();
    buffers.extend(lr.map(|l| ("lr_buf", l.0)));
    step.dispatch(pipeline, &params, &buffers, groups(n, 256));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::ops::test_util::*;

    #[test]
    fn norms_clip_and_adamw_match_cpu() {
        let gpu = gpu();
        let sizes = [10_000, 3, 4096];
        let grads: Vec<Vec<f32>> =
            sizes.iter().enumerate().map(|(i, &n)| rand_vec(i as u64, n, 1.0)).collect();
        let grad_t: Vec<Tensor> = grads.iter().map(|g| gpu.upload_f32("g", &[g.len()], g).unwrap()).collect();
        let norms = GradNorms::new(gpu, &sizes.map(|n| vec![n])).unwrap();
        let clip = 10.0;
        let o = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let p0 = rand_vec(9, sizes[0], 1.0);
        let (mut p, mut m, mut v) = (p0.clone(), rand_vec(10, sizes[0], 0.1), rand_vec(11, sizes[0], 0.1));
        v.iter_mut().for_each(|x| *x = x.abs());
        let up = |d: &[f32]| gpu.upload_f32("t", &[d.len()], d).unwrap();
        let (pt, mt, vt) = (up(&p), up(&m), up(&v));
        let mut step = Step::new(gpu);
        norms.record(&mut step, &grad_t.iter().map(std::slice::from_ref).collect::<Vec<_>>(), clip, 1.0);
        adamw(
            &mut step,
            &o,
            3,
            o.weight_decay,
            (&pt, &grad_t[0]),
            (&mt, &vt),
            (&norms.out, norms.multiplier_at()),
            None,
        );
        step.submit().unwrap();
        let got = gpu.read_f32(&norms.out).unwrap();
        let sums: Vec<f64> = grads.iter().map(|g| g.iter().map(|x| (*x as f64).powi(2)).sum()).collect();
        let total = sums.iter().sum::<f64>().sqrt();
        let factor = (clip as f64 / (total + 1e-6)).min(1.0);
        let want: Vec<f32> = sums.iter().chain([&total, &factor, &factor]).map(|x| *x as f32).collect();
        assert!(factor < 1.0, "the test must clip");
        assert_close(&got, &want, 1e-5, "norms");
        cpu::optim::adamw_step(&o, 3, &mut p, &grads[0], &mut m, &mut v, factor);
        assert_close(&gpu.read_f32(&pt).unwrap(), &p, 1e-6, "param");
        assert_close(&gpu.read_f32(&mt).unwrap(), &m, 1e-6, "m");
        assert_close(&gpu.read_f32(&vt).unwrap(), &v, 1e-6, "v");

        // The learning rate from a GPU tensor, whole or split into direction and apply,
        // makes the same update from the same state.
        let m0 = rand_vec(10, sizes[0], 0.1);
        let v0: Vec<f32> = rand_vec(11, sizes[0], 0.1).iter().map(|x| x.abs()).collect();
        let lr = gpu.upload_f32("lr", &[2], &[0.5, o.lr as f32]).unwrap();
        for split in [false, true] {
            let (pt, mt, vt) = (up(&p0), up(&m0), up(&v0));
            let g = up(&grads[0]);
            let mut step = Step::new(gpu);
            let clip = (&norms.out, norms.multiplier_at());
            if split {
                adamw_direction(&mut step, &o, 3, &g, (&mt, &vt), clip);
                adamw_apply(&mut step, &o, 3, o.weight_decay, (&pt, &g), Some((&lr, 1)));
            } else {
                adamw(&mut step, &o, 3, o.weight_decay, (&pt, &g), (&mt, &vt), clip, Some((&lr, 1)));
            }
            step.submit().unwrap();
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            cpu::optim::adamw_step(&o, 3, &mut p, &grads[0], &mut m, &mut v, factor);
            assert_close(&gpu.read_f32(&pt).unwrap(), &p, 1e-6, &format!("split={split} param"));
            assert_close(&gpu.read_f32(&mt).unwrap(), &m, 1e-6, &format!("split={split} m"));
        }
    }

    /// Loss-scaled gradients (× 1024) with `unscale` 1/1024: the norms and clip factor of the
    /// true gradients, and AdamW's multiplier the clip factor / 1024; the same update.
    #[test]
    fn loss_scaled_norms_are_the_true_gradients() {
        let gpu = gpu();
        let g = rand_vec(5, 5000, 1.0);
        let scaled: Vec<f32> = g.iter().map(|x| x * 1024.0).collect();
        let norms = GradNorms::new(gpu, &[vec![g.len()]]).unwrap();
        let (o, clip) = (AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 }, 10.0);
        let up = |d: &[f32]| gpu.upload_f32("t", &[d.len()], d).unwrap();
        let (gt, p0, m0) = (up(&scaled), rand_vec(6, g.len(), 1.0), rand_vec(7, g.len(), 0.1));
        let v0: Vec<f32> = rand_vec(8, g.len(), 0.1).iter().map(|x| x.abs()).collect();
        let (pt, mt, vt) = (up(&p0), up(&m0), up(&v0));
        let mut step = Step::new(gpu);
        norms.record(&mut step, &[std::slice::from_ref(&gt)], clip, 1.0 / 1024.0);
        let multiplier = (&norms.out, norms.multiplier_at());
        adamw(&mut step, &o, 2, o.weight_decay, (&pt, &gt), (&mt, &vt), multiplier, None);
        step.submit().unwrap();
        let sum: f64 = g.iter().map(|x| (*x as f64).powi(2)).sum();
        let factor = (clip as f64 / (sum.sqrt() + 1e-6)).min(1.0);
        assert!(factor < 1.0, "the test must clip");
        let want = [sum, sum.sqrt(), factor, factor / 1024.0].map(|x| x as f32);
        assert_close(&gpu.read_f32(&norms.out).unwrap(), &want, 1e-5, "unscaled norms");
        let (mut p, mut m, mut v) = (p0, m0, v0);
        cpu::optim::adamw_step(&o, 2, &mut p, &g, &mut m, &mut v, factor);
        assert_close(&gpu.read_f32(&pt).unwrap(), &p, 1e-6, "param");
        assert_close(&gpu.read_f32(&vt).unwrap(), &v, 1e-6, "v");
    }
}
