//! Hierarchical gradient constriction's kernels, `shaders/hgc.wgsl`: distances between
//! adjacent blocks' gradients of one weight kind, the λ per (kind, block), and the mixing.
//! [`crate::train::constrict`] drives them over a model's gradients.

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    offset: u32,
    len: u32,
    slot: u32,
    n_layers: u32,
    n_slots: u32,
    alpha: f32,
    slope: f32,
    mu: f32,
    normalized: u32,
    _p: [u32; 3],
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    ["DIST", "LAMBDA", "MIX"].into_iter().map(|d| ("hgc", vec![(d, 1)])).collect()
}

/// A weight kind's gradient in block `l`: `len` elements from `offset` of `t`.
#[derive(Clone, Copy)]
pub struct GradRange<'a> {
    pub t: &'a Tensor,
    pub offset: usize,
    pub len: usize,
}

/// `dist[3 slot ..]` = (‖hi - lo‖², ‖hi‖², ‖lo‖²).
pub fn distance(step: &mut Step, hi: GradRange, lo: GradRange, dist: &Tensor, slot: usize) {
    assert!(hi.len == lo.len && hi.offset == lo.offset && dist.numel() >= 3 * (slot + 1));
    let params =
        Params { offset: hi.offset as u32, len: hi.len as u32, slot: slot as u32, ..Params::default() };
    let pipeline = step.gpu.pipeline("hgc", &[("DIST", 1)]);
    step.dispatch(pipeline, &params, &bind![g_hi = hi.t, g_lo = lo.t, dist], [1, 1, 1]);
}

/// λ for every (kind, block) slot `kind * n_layers + l` from the distances.
pub fn lambdas(
    step: &mut Step,
    dist: &Tensor,
    lambda: &Tensor,
    n_layers: usize,
    (alpha, slope, normalized): (f32, f32, bool),
) {
    let n_slots = lambda.numel();
    let params = Params {
        n_layers: n_layers as u32,
        n_slots: n_slots as u32,
        alpha,
        slope,
        normalized: normalized as u32,
        ..Params::default()
    };
    let pipeline = step.gpu.pipeline("hgc", &[("LAMBDA", 1)]);
    step.dispatch(pipeline, &params, &bind![dist, lambda], groups(n_slots, 256));
}

/// `hi := λ[slot] ((1 - μ) hi + μ lo)`.
pub fn mix(step: &mut Step, hi: GradRange, lo: GradRange, lambda: &Tensor, slot: usize, mu: f32) {
    assert!(hi.len == lo.len && hi.offset == lo.offset);
    let params =
        Params { offset: hi.offset as u32, len: hi.len as u32, slot: slot as u32, mu, ..Params::default() };
    let pipeline = step.gpu.pipeline("hgc", &[("MIX", 1)]);
    step.dispatch(pipeline, &params, &bind![g_hi = hi.t, g_lo = lo.t, lambda], groups(hi.len, 256));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    /// Three blocks' gradients of one kind living at an offset inside bigger tensors.
    #[test]
    fn constriction_matches_cpu() {
        let gpu = gpu();
        let (n, offset, layers) = (5000, 40, 3);
        let grads: Vec<Vec<f32>> = (0..layers).map(|l| rand_vec(l as u64 + 1, n, 1.0 + l as f32)).collect();
        let tensors: Vec<Tensor> = grads
            .iter()
            .map(|g| {
                let mut padded = vec![7.0; offset];
                padded.extend(g);
                gpu.upload_f32("g", &[padded.len()], &padded).unwrap()
            })
            .collect();
        for (normalized, alpha, slope, mu) in [(false, 1e-3f32, 1.0f32, 0.2f32), (true, 2.0, 0.0, 0.0)] {
            for (t, g) in tensors.iter().zip(&grads) {
                let mut padded = vec![7.0; offset];
                padded.extend(g);
                gpu.write_f32(t, &padded);
            }
            let dist = gpu.zeros("dist", &[layers * 3], DType::F32).unwrap();
            let lambda = gpu.zeros("lambda", &[layers], DType::F32).unwrap();
            let range = |l: usize| GradRange { t: &tensors[l], offset, len: n };
            let mut step = Step::new(gpu);
            for l in 1..layers {
                distance(&mut step, range(l), range(l - 1), &dist, l);
            }
            lambdas(&mut step, &dist, &lambda, layers, (alpha, slope, normalized));
            for l in (1..layers).rev() {
                mix(&mut step, range(l), range(l - 1), &lambda, l, mu);
            }
            step.submit().unwrap();
            let want_lambda = cpu::hgc::lambdas(&grads, alpha as f64, slope as f64, normalized);
            let got: Vec<f32> = gpu.read_f32(&lambda).unwrap();
            let what = format!("normalized={normalized}");
            assert_close(&got, &want_lambda.iter().map(|&x| x as f32).collect::<Vec<_>>(), 1e-5, &what);
            assert!(want_lambda[1] < 0.99, "{what}: the test must constrict");
            let want = cpu::hgc::constrict(&grads, &want_lambda, mu as f64);
            for l in 0..layers {
                let got = gpu.read_f32(&tensors[l]).unwrap();
                assert!(got[..offset].iter().all(|&x| x == 7.0), "{what}: outside the range untouched");
                assert_close(&got[offset..], &want[l], 1e-5, &format!("{what} block {l}"));
            }
        }
    }
}
