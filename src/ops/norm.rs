//! RMSNorm and LayerNorm, `shaders/norm.wgsl`.

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    Rms,
    /// RMSNorm scaled by `1 + w` (Gemma), whose weights are stored as offsets from one.
    RmsUnitOffset,
    Layer,
}

impl NormKind {
    /// What the kernels add to each weight before scaling.
    fn w_offset(self) -> f32 {
        if self == NormKind::RmsUnitOffset {
            1.0
        } else {
            0.0
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    d: u32,
    eps: f32,
    row_offset: u32,
    heads: u32,
    stride: u32,
    col: u32,
    w_offset: f32,
}

/// Where the rows of width `d` lie: `heads` side by side from column `col` of token rows
/// `stride` floats wide. Dense rows are [`RowLayout::dense`]; Qwen3's per-head norms of q
/// or k read their heads inside the fused QKV row ([`RowLayout::heads`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RowLayout {
    heads: u32,
    stride: u32,
    col: u32,
    _p: u32,
}

impl RowLayout {
    pub fn dense(d: usize) -> RowLayout {
        RowLayout { heads: 1, stride: d as u32, col: 0, _p: 0 }
    }

    /// `heads` heads of `dim` from column `col` of each `width`-wide row.
    pub fn heads(heads: usize, dim: usize, col: usize, width: usize) -> RowLayout {
        assert!(col + heads * dim <= width);
        RowLayout { heads: heads as u32, stride: width as u32, col: col as u32, _p: 0 }
    }

    /// Floats a buffer of `n_rows` rows of width `d` spans in this layout.
    fn span(&self, n_rows: usize, d: usize) -> usize {
        if n_rows == 0 {
            return 0;
        }
        let last = n_rows - 1;
        (last / self.heads as usize) * self.stride as usize
            + self.col as usize
            + (last % self.heads as usize) * d
            + d
    }
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    let mut v = Vec::new();
    for layer in [0, 1] {
        for acc in [0, 1] {
            v.push(("norm", vec![("LAYER", layer), ("ACC", acc)]));
        }
        v.push(("norm_backward", vec![("LAYER", layer), ("WEIGHTS", 1)]));
        v.push(("norm_backward", vec![("LAYER", layer), ("SUM", 1)]));
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
    let layout = RowLayout::dense(w.numel());
    norm_rows(step, kind, (x, layout), (w, b), eps, (out, stats), (row_offset, n_rows), false);
}

/// `out += norm(x)` over rows `0 .. n_rows` (Gemma's post-attention and post-MLP norms,
/// added to the residual stream), writing (mean, rstd) per row into `stats`.
#[allow(clippy::too_many_arguments)]
pub fn norm_add(
    step: &mut Step,
    kind: NormKind,
    x: &Tensor,
    w: &Tensor,
    eps: f32,
    out: &Tensor,
    stats: &Tensor,
    n_rows: usize,
) {
    let layout = RowLayout::dense(w.numel());
    norm_rows(step, kind, (x, layout), (w, None), eps, (out, stats), (0, n_rows), true);
}

/// RMSNorm (`kind`: plain or with `1 + w`) of `tokens × heads` rows of `x` laid out as
/// `layout` (Qwen3's and Gemma 3's q or k heads inside the fused QKV rows) into the same
/// places of `out`, with (mean, rstd) per head.
#[allow(clippy::too_many_arguments)]
pub fn head_norm(
    step: &mut Step,
    kind: NormKind,
    x: &Tensor,
    layout: RowLayout,
    w: &Tensor,
    eps: f32,
    out: &Tensor,
    stats: &Tensor,
    tokens: usize,
) {
    assert!(kind != NormKind::Layer, "per-head norms are RMSNorms");
    let n_rows = tokens * layout.heads as usize;
    norm_rows(step, kind, (x, layout), (w, None), eps, (out, stats), (0, n_rows), false);
}

#[allow(clippy::too_many_arguments)]
fn norm_rows(
    step: &mut Step,
    kind: NormKind,
    (x, layout): (&Tensor, RowLayout),
    (w, b): (&Tensor, Option<&Tensor>),
    eps: f32,
    (out, stats): (&Tensor, &Tensor),
    (row_offset, n_rows): (usize, usize),
    accumulate: bool,
) {
    let d = w.numel();
    assert!(layout.span(row_offset + n_rows, d) <= x.numel() && layout.span(n_rows, d) <= out.numel());
    assert!(stats.numel() >= 2 * n_rows);
    let layer = kind == NormKind::Layer;
    assert_eq!(layer, b.is_some(), "LayerNorm needs a bias, RMSNorm has none");
    let RowLayout { heads, stride, col, .. } = layout;
    let (rows, d, row_offset, w_offset) = (n_rows as u32, d as u32, row_offset as u32, kind.w_offset());
    let params = Params { n_rows: rows, d, eps, row_offset, heads, stride, col, w_offset };
    let pipeline = step.gpu.pipeline("norm", &[("LAYER", layer as u32), ("ACC", accumulate as u32)]);
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
    heads: u32,
    stride: u32,
    col: u32,
    w_offset: f32,
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

fn backward_params(
    saved: Saved,
    (layout, kind): (RowLayout, NormKind),
    d: usize,
    dy: &Tensor,
    n_rows: usize,
) -> BackwardParams {
    assert!(layout.span(saved.offset + n_rows, d) <= saved.x.numel() && layout.span(n_rows, d) <= dy.numel());
    assert!(saved.stats.numel() >= 2 * n_rows);
    let RowLayout { heads, stride, col, .. } = layout;
    BackwardParams {
        n_rows: n_rows as u32,
        d: d as u32,
        x_offset: saved.offset as u32,
        heads,
        stride,
        col,
        w_offset: kind.w_offset(),
        _p: 0,
    }
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
    let layout = RowLayout::dense(w.numel());
    norm_rows_backward(step, kind, (saved, layout), w, dy, dx, n_rows, accumulate);
}

/// Input gradient of [`head_norm`]: `dx = ∂norm/∂x · dy` at the heads' places (the other
/// columns of `dx` are left as they are).
#[allow(clippy::too_many_arguments)]
pub fn head_norm_backward(
    step: &mut Step,
    kind: NormKind,
    saved: Saved,
    layout: RowLayout,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    tokens: usize,
) {
    let n_rows = tokens * layout.heads as usize;
    norm_rows_backward(step, kind, (saved, layout), w, dy, dx, n_rows, false);
}

/// Weight gradient of [`head_norm`]: `dw += Σ dy · xhat` over every token and head;
/// `scratch` holds [`weight_grad_scratch_len`] of the rows and the head width.
pub fn head_norm_weight_grad(
    step: &mut Step,
    saved: Saved,
    layout: RowLayout,
    dy: &Tensor,
    dw: &Tensor,
    tokens: usize,
    scratch: &Tensor,
) {
    norm_rows_weight_grad(step, (saved, layout), dy, (dw, None), tokens * layout.heads as usize, scratch);
}

#[allow(clippy::too_many_arguments)]
fn norm_rows_backward(
    step: &mut Step,
    kind: NormKind,
    (saved, layout): (Saved, RowLayout),
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    n_rows: usize,
    accumulate: bool,
) {
    let params = backward_params(saved, (layout, kind), w.numel(), dy, n_rows);
    assert!(dx.numel() >= layout.span(n_rows, w.numel()));
    let defines = [("LAYER", (kind == NormKind::Layer) as u32), ("WEIGHTS", 0), ("ACC", accumulate as u32)];
    let pipeline = step.gpu.pipeline("norm_backward", &defines);
    step.dispatch(pipeline, &params, &bind![x = saved.x, stats = saved.stats, dy, w, dx], groups(n_rows, 1));
}

/// Rows the weight gradient's first pass sums per workgroup (`ROWS` in norm_backward.wgsl).
const WEIGHT_GRAD_ROWS: usize = 64;

/// Elements of the working buffer the weight gradient of `n_rows` rows of width `d` needs:
/// one sum per group of rows and column, for the weight and for the bias.
pub fn weight_grad_scratch_len(n_rows: usize, d: usize) -> usize {
    2 * n_rows.div_ceil(WEIGHT_GRAD_ROWS) * d
}

/// A bound on [`weight_grad_scratch_len`] over `rows` tokens for every norm whose rows per
/// token times width is at most `width` (a norm over each of `k` heads of `d` columns: k · d).
/// Linear in `rows`, so a memory plan can count it per token.
pub fn weight_grad_scratch_bound(rows: usize, width: usize) -> usize {
    rows * (2 * width).div_ceil(WEIGHT_GRAD_ROWS) + 2 * width
}

/// Parameter gradients of [`norm`]: `dw += Σ dy · xhat`, and for LayerNorm `db += Σ dy`;
/// `scratch` holds [`weight_grad_scratch_len`] elements.
pub fn norm_weight_grad(
    step: &mut Step,
    saved: Saved,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
    n_rows: usize,
    scratch: &Tensor,
) {
    norm_rows_weight_grad(step, (saved, RowLayout::dense(dw.numel())), dy, (dw, db), n_rows, scratch);
}

/// Two passes: per (64 columns, group of rows) sums into `scratch`, then per column their sum.
fn norm_rows_weight_grad(
    step: &mut Step,
    (saved, layout): (Saved, RowLayout),
    dy: &Tensor,
    (dw, db): (&Tensor, Option<&Tensor>),
    n_rows: usize,
    scratch: &Tensor,
) {
    let d = dw.numel();
    let row_groups = n_rows.div_ceil(WEIGHT_GRAD_ROWS);
    assert!(scratch.numel() >= weight_grad_scratch_len(n_rows, d) && row_groups <= 65_535);
    // The weight gradient is the same with Gemma's `1 + w`.
    let params = backward_params(saved, (layout, NormKind::Rms), d, dy, n_rows);
    let layer = db.is_some() as u32;
    let partials = step.gpu.pipeline("norm_backward", &[("LAYER", layer), ("WEIGHTS", 1)]);
    let grid = [d.div_ceil(64) as u32, row_groups as u32, 1];
    step.dispatch(partials, &params, &bind![x = saved.x, stats = saved.stats, dy, part = scratch], grid);
    let sum = step.gpu.pipeline("norm_backward", &[("LAYER", layer), ("SUM", 1)]);
    let mut buffers = bind![part = scratch, dw].to_vec();
    buffers.extend(db.map(|db| ("db", db)));
    step.dispatch(sum, &params, &buffers, groups(d, 64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    /// Every kind, from row 2 on; RMSNorm with `1 + w` also added into `out` (ACC) from row 0.
    #[test]
    fn norms_match_cpu() {
        let gpu = gpu();
        let cases = [
            (NormKind::Rms, 64, false),
            (NormKind::Rms, 576, false),
            (NormKind::Layer, 100, false),
            (NormKind::RmsUnitOffset, 64, false),
            (NormKind::RmsUnitOffset, 100, true),
        ];
        for (kind, d, add) in cases {
            let n = 7;
            let x: Vec<f32> = rand_vec(1, (n + 2) * d, 3.0).iter().map(|v| v + 0.5).collect();
            let w = rand_vec(2, d, 1.0);
            let b = rand_vec(3, d, 1.0);
            let out0 = rand_vec(4, n * d, 1.0);
            let (xt, wt, bt) = (
                gpu.upload_f32("x", &[n + 2, d], &x).unwrap(),
                gpu.upload_f32("w", &[d], &w).unwrap(),
                gpu.upload_f32("b", &[d], &b).unwrap(),
            );
            let out = gpu.upload_f32("out", &[n, d], &out0).unwrap();
            let stats = gpu.zeros("stats", &[n, 2], DType::F32).unwrap();
            let bias = (kind == NormKind::Layer).then_some(&bt);
            let mut step = Step::new(gpu);
            if add {
                norm_add(&mut step, kind, &xt, &wt, 1e-5, &out, &stats, n);
            } else {
                norm(&mut step, kind, &xt, &wt, bias, 1e-5, &out, &stats, (2, n));
            }
            step.submit().unwrap();
            // norm_add reads rows 0 .. n.
            let rows = if add { &x[..n * d] } else { &x[2 * d..] };
            let mut want = match kind {
                NormKind::Rms => cpu::norm::rms_norm(rows, &w, 1e-5),
                NormKind::RmsUnitOffset => cpu::norm::rms_norm_unit_offset(rows, &w, 1e-5),
                NormKind::Layer => cpu::norm::layer_norm(rows, &w, &b, 1e-5),
            };
            if add {
                want.iter_mut().zip(&out0).for_each(|(v, o)| *v += o);
            }
            assert_close(&gpu.read_f32(&out).unwrap(), &want, 1e-5, &format!("{kind:?} d={d} add={add}"));
        }
    }

    #[test]
    fn norm_backward_matches_cpu() {
        let gpu = gpu();
        // Rows: within one of the weight gradient's groups of 64, and across several.
        let cases = [
            (NormKind::Rms, 64, 5),
            (NormKind::Rms, 576, 150),
            (NormKind::Layer, 100, 130),
            (NormKind::RmsUnitOffset, 64, 5),
        ];
        for (kind, d, n) in cases {
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
            let sums = gpu.zeros("sums", &[weight_grad_scratch_len(n, d)], DType::F32).unwrap();
            norm_weight_grad(&mut step, saved, &dyt, &dw, layer.then_some(&db), n, &sums);
            step.submit().unwrap();
            // Gemma's `1 + w` is RMSNorm with those weights, and the same weight gradient.
            let scale = match kind {
                NormKind::RmsUnitOffset => cpu::norm::unit_offset(&w),
                _ => w.clone(),
            };
            let (want_dx, want_dw, want_db) = cpu::norm::norm_backward(&x[d..], &scale, layer, 1e-5, &dy);
            let plus = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<_>>();
            let what = format!("{kind:?} d={d} n={n}");
            assert_close(&gpu.read_f32(&dx).unwrap(), &plus(&want_dx, &dx0), 1e-5, &format!("dx {what}"));
            assert_close(&gpu.read_f32(&dw).unwrap(), &plus(&want_dw, &w), 1e-5, &format!("dw {what}"));
            if layer {
                assert_close(&gpu.read_f32(&db).unwrap(), &plus(&want_db, &b), 1e-5, &format!("db {what}"));
            }
        }
    }

    /// Qwen3's (and Gemma 3's, `1 + w`) q and k norms inside fused QKV rows (4 q heads, 2 k,
    /// 2 v of 16), forward and backward, against the CPU; the v columns pass through untouched.
    #[test]
    fn head_norms_match_cpu() {
        for kind in [NormKind::Rms, NormKind::RmsUnitOffset] {
            check_head_norms(kind);
        }
    }

    fn check_head_norms(kind: NormKind) {
        let gpu = gpu();
        // 40 tokens: 160 q-head rows, several of the weight gradient's groups.
        let (n, d, width) = (40, 16, 8 * 16);
        let heads = [(0, 4), (4 * d, 2)];
        let x = rand_vec(1, n * width, 2.0);
        let dy = rand_vec(2, n * width, 1.0);
        let ws = [rand_vec(3, d, 1.0), rand_vec(4, d, 1.0)];
        let scales = ws.each_ref().map(|w| match kind {
            NormKind::RmsUnitOffset => cpu::norm::unit_offset(w),
            _ => w.clone(),
        });
        let up = |name, data: &[f32]| gpu.upload_f32(name, &[data.len()], data).unwrap();
        let (xt, out, dyt, dx) = (up("x", &x), up("out", &x), up("dy", &dy), up("dx", &dy));
        let wt = ws.each_ref().map(|w| up("w", w));
        let dw = [
            gpu.zeros("dq_norm", &[d], DType::F32).unwrap(),
            gpu.zeros("dk_norm", &[d], DType::F32).unwrap(),
        ];
        let stats = [0, 1].map(|_| gpu.zeros("stats", &[n * 4, 2], DType::F32).unwrap());
        let sums = gpu.zeros("sums", &[weight_grad_scratch_bound(n, 4 * d)], DType::F32).unwrap();
        let mut step = Step::new(gpu);
        for (i, &(col, h)) in heads.iter().enumerate() {
            let layout = RowLayout::heads(h, d, col, width);
            head_norm(&mut step, kind, &xt, layout, &wt[i], 1e-6, &out, &stats[i], n);
            let saved = Saved { x: &xt, offset: 0, stats: &stats[i] };
            head_norm_backward(&mut step, kind, saved, layout, &wt[i], &dyt, &dx, n);
            head_norm_weight_grad(&mut step, saved, layout, &dyt, &dw[i], n, &sums);
        }
        step.submit().unwrap();
        let mut want = x.clone();
        let mut want_dx = dy.clone();
        for (i, &(col, h)) in heads.iter().enumerate() {
            want = cpu::norm::head_rms_norm(&want, width, col, h, &scales[i], 1e-6);
            let (dxi, dwi) = cpu::norm::head_rms_norm_backward(&x, (width, col, h), &scales[i], 1e-6, &dy);
            for row in 0..n {
                let at = row * width + col;
                want_dx[at..at + h * d].copy_from_slice(&dxi[at..at + h * d]);
            }
            assert_close(&gpu.read_f32(&dw[i]).unwrap(), &dwi, 1e-5, &format!("dw {i} {kind:?}"));
        }
        assert_close(&gpu.read_f32(&out).unwrap(), &want, 1e-5, &format!("head norm {kind:?}"));
        assert_close(&gpu.read_f32(&dx).unwrap(), &want_dx, 1e-5, &format!("head norm dx {kind:?}"));
    }
}
