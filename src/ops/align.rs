//! The alignment loss between adjacent blocks' normalised outputs and its gradient,
//! `shaders/align.wgsl` (the normalisation's own backward is [`super::norm::norm_backward`]).

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    d: u32,
    coef: f32,
    flags: u32,
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![("align", vec![])]
}

/// At block output `l` with normalised outputs `(n[l-1], n[l], n[l+1])` (None at the ends):
/// adds `coef · |n[l] - n[l-1]|²` per row into `loss` and writes the gradient at `n[l]` into `g`.
pub fn align(
    step: &mut Step,
    (lo, mid, hi): (Option<&Tensor>, &Tensor, Option<&Tensor>),
    g: &Tensor,
    loss: &Tensor,
    coef: f32,
    n_rows: usize,
) {
    let d = mid.numel() / mid.shape[0];
    assert!(g.numel() >= n_rows * d && loss.numel() >= n_rows);
    let flags = lo.is_some() as u32 | (hi.is_some() as u32) << 1;
    let params = Params { n_rows: n_rows as u32, d: d as u32, coef, flags };
    let pipeline = step.gpu.pipeline("align", &[]);
    step.dispatch(
        pipeline,
        &params,
        &bind![n_lo = lo.unwrap_or(mid), n_mid = mid, n_hi = hi.unwrap_or(mid), g, loss],
        groups(n_rows, 1),
    );
}
