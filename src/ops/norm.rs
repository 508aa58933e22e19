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
    vec![("norm", vec![("LAYER", 0)]), ("norm", vec![("LAYER", 1)])]
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
    let mut buffers = vec![x, w, out, stats];
    buffers.extend(b);
    step.dispatch(pipeline, &params, &buffers, groups(n_rows, 1));
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
}
