//! RMSNorm and LayerNorm, `shaders/norm.wgsl`.

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    Rms,
    Layer,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    d: u32,
    eps: f32,
    row_offset: u32,
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    let mut v = Vec::new();
    for layer in [0, 1] {
        v.push(("norm", vec![("LAYER", layer)]));
        v.push(("norm_backward", vec![("LAYER", layer), ("WEIGHTS", 1)]));
        for acc in [0, 1] {
            v.push(("norm_backward", vec![("LAYER", layer), ("WEIGHTS", 0), ("ACC", acc)]));
        }
    }
    v
}

/// Normalises rows `row_offset .. row_offset + n_rows` of `x` (width = `w.len()`) into rows
/// `0 .. n_rows` of `out`, writing (mean, rstd) per row into `stats`.
#[allow(clippy::too_many_arguments)]
pub fn norm(
    step: &mut Step,
    kind: NormKind,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    eps: f32,
    out: &Tensor,
    stats: &Tensor,
    (row_offset, n_rows): (usize, usize),
) {
    let d = w.numel();
    assert!((row_offset + n_rows) * d <= x.numel() && n_rows * d <= out.numel());
    assert!(stats.numel() >= 2 * n_rows);
    let layer = kind == NormKind::Layer;
    assert_eq!(layer, b.is_some(), "LayerNorm needs a bias, RMSNorm has none");
    let params = Params { n_rows: n_rows as u32, d: d as u32, eps, row_offset: row_offset as u32 };
    let pipeline = step.gpu.pipeline("norm", &[("LAYER", layer as u32)]);
    let mut buffers = bind![x, w, out, stats].to_vec();
    buffers.extend(b.map(|b| ("b", b)));
    step.dispatch(pipeline, &params, &buffers, groups(n_rows, 1));
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BackwardParams {
    n_rows: u32,
    d: u32,
    x_offset: u32,
    _p: u32,
}

/// The forward input of a norm as the backward pass needs it: rows `offset .. offset + n`
/// of `x`, and the (mean, rstd) per row the forward pass saved.
#[derive(Clone, Copy)]
pub struct Saved<'a> {
    pub x: &'a Tensor,
    pub offset: usize,
    pub stats: &'a Tensor,
}

fn backward_params(saved: Saved, d: usize, dy: &Tensor, n_rows: usize) -> BackwardParams {
    assert!((saved.offset + n_rows) * d <= saved.x.numel() && n_rows * d <= dy.numel());
    assert!(saved.stats.numel() >= 2 * n_rows);
    BackwardParams { n_rows: n_rows as u32, d: d as u32, x_offset: saved.offset as u32, _p: 0 }
}

/// Input gradient of [`norm`] for `n_rows` rows: `dx (+)= ∂norm/∂x · dy`.
#[allow(clippy::too_many_arguments)]
pub fn norm_backward(
    step: &mut Step,
    kind: NormKind,
    saved: Saved,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    n_rows: usize,
    accumulate: bool,
) {
    let params = backward_params(saved, w.numel(), dy, n_rows);
    assert!(dx.numel() >= n_rows * w.numel());
    let defines = [("LAYER", (kind == NormKind::Layer) as u32), ("WEIGHTS", 0), ("ACC", accumulate as u32)];
    let pipeline = step.gpu.pipeline("norm_backward", &defines);
    step.dispatch(pipeline, &params, &bind![x = saved.x, stats = saved.stats, dy, w, dx], groups(n_rows, 1));
}

/// Parameter gradients of [`norm`]: `dw += Σ dy · xhat`, and for LayerNorm `db += Σ dy`.
pub fn norm_weight_grad(
    step: &mut Step,
    saved: Saved,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
    n_rows: usize,
) {
    let d = dw.numel();
    let params = backward_params(saved, d, dy, n_rows);
    let pipeline = step.gpu.pipeline("norm_backward", &[("LAYER", db.is_some() as u32), ("WEIGHTS", 1)]);
    let mut buffers = bind![x = saved.x, stats = saved.stats, dy, dw].to_vec();
    buffers.extend(db.map(|db| ("db", db)));
    step.dispatch(pipeline, &params, &buffers, groups(d, 64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    #[test]
    fn norms_match_cpu() {
        let gpu = gpu();
        for (kind, d) in [(NormKind::Rms, 64), (NormKind::Rms, 576), (NormKind::Layer, 100)] {
            let n = 7;
            let x: Vec<f32> = rand_vec(1, (n + 2) * d, 3.0).iter().map(|v| v + 0.5).collect();
            let w = rand_vec(2, d, 1.0);
            let b = rand_vec(3, d, 1.0);
            let (xt, wt, bt) = (
                gpu.upload_f32("x", &[n + 2, d], &x).unwrap(),
                gpu.upload_f32("w", &[d], &w).unwrap(),
                gpu.upload_f32("b", &[d], &b).unwrap(),
            );
            let out = gpu.zeros("out", &[n, d], DType::F32).unwrap();
            let stats = gpu.zeros("stats", &[n, 2], DType::F32).unwrap();
            let bias = (kind == NormKind::Layer).then_some(&bt);
            let mut step = Step::new(gpu);
            norm(&mut step, kind, &xt, &wt, bias, 1e-5, &out, &stats, (2, n));
            step.submit().unwrap();
            let rows = &x[2 * d..];
            let want = match kind {
                NormKind::Rms => cpu::norm::rms_norm(rows, &w, 1e-5),
                NormKind::Layer => cpu::norm::layer_norm(rows, &w, &b, 1e-5),
            };
            assert_close(&gpu.read_f32(&out).unwrap(), &want, 1e-5, &format!("{kind:?} d={d}"));
        }
    }

    #[test]
    fn norm_backward_matches_cpu() {
        let gpu = gpu();
        for (kind, d) in [(NormKind::Rms, 64), (NormKind::Rms, 576), (NormKind::Layer, 100)] {
            let n = 5;
            let layer = kind == NormKind::Layer;
            let x: Vec<f32> = rand_vec(1, (n + 1) * d, 3.0).iter().map(|v| v + 0.5).collect();
            let w = rand_vec(2, d, 1.0);
            let b = rand_vec(3, d, 1.0);
            let dy = rand_vec(4, n * d, 1.0);
            let dx0 = rand_vec(5, n * d, 1.0);
            let up = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
            let (xt, wt, bt, dyt) =
                (up("x", &[n + 1, d], &x), up("w", &[d], &w), up("b", &[d], &b), up("dy", &[n, d], &dy));
            let (dx, dw, db) = (up("dx", &[n, d], &dx0), up("dw", &[d], &w), up("db", &[d], &b));
            let out = gpu.zeros("out", &[n, d], DType::F32).unwrap();
            let stats = gpu.zeros("stats", &[n, 2], DType::F32).unwrap();
            let mut step = Step::new(gpu);
            norm(&mut step, kind, &xt, &wt, layer.then_some(&bt), 1e-5, &out, &stats, (1, n));
            let saved = Saved { x: &xt, offset: 1, stats: &stats };
            norm_backward(&mut step, kind, saved, &wt, &dyt, &dx, n, true);
            norm_weight_grad(&mut step, saved, &dyt, &dw, layer.then_some(&db), n);
            step.submit().unwrap();
            let (want_dx, want_dw, want_db) = cpu::norm::norm_backward(&x[d..], &w, layer, 1e-5, &dy);
            let plus = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<_>>();
            let what = format!("{kind:?} d={d}");
            assert_close(&gpu.read_f32(&dx).unwrap(), &plus(&want_dx, &dx0), 1e-5, &format!("dx {what}"));
            assert_close(&gpu.read_f32(&dw).unwrap(), &plus(&want_dw, &w), 1e-5, &format!("dw {what}"));
            if layer {
                assert_close(&gpu.read_f32(&db).unwrap(), &plus(&want_db, &b), 1e-5, &format!("db {what}"));
            }
        }
    }
}
