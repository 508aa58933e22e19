//! Latent convergence modulation at a block's residual output, `shaders/lcm.wgsl`.
//! Host-side settings live in [`crate::modulate`].

use crate::gpu::{shader::Define, Step, Tensor};

/// Most anchors (scales) per layer the kernel keeps.
pub const MAX_SCALES: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LcmParams {
    n_rows: u32,
    d: u32,
    n_scales: u32,
    sink: u32,
    tau: f32,
    kappa: f32,
    keep_norm: u32,
    normalized: u32,
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![("lcm", vec![("SAVE", 0)]), ("lcm", vec![("SAVE", 1)]), ("lcm_backward", vec![])]
}

/// The per-layer operator settings the kernel needs.
#[derive(Clone, Copy, Debug)]
pub struct LcmShape {
    pub tau: f32,
    pub kappa: f32,
    pub keep_norm: bool,
    pub normalized: bool,
    pub sink: usize,
}

impl LcmShape {
    fn params(&self, n_rows: usize, d: usize, n_scales: usize) -> LcmParams {
        LcmParams {
            n_rows: n_rows as u32,
            d: d as u32,
            n_scales: n_scales as u32,
            sink: self.sink as u32,
            tau: self.tau,
            kappa: self.kappa,
            keep_norm: self.keep_norm as u32,
            normalized: self.normalized as u32,
        }
    }
}

/// One modulated layer's state as the kernels that apply LCM bind it: the (sequence, position)
/// row table, the anchors `[seqs, n_scales, d]`, the (rho, gamma) pairs, the statistics
/// `[seqs, 4]`, and the arrival counter (one zeroed u32) of the matrix-vector kernel that
/// applies LCM in its last workgroup (see [`crate::ops::matmul::linear_spans_modulated`]).
#[derive(Clone, Copy)]
pub struct Modulation<'a> {
    pub rows: &'a Tensor,
    pub anchor: &'a Tensor,
    pub scales: &'a Tensor,
    pub stats: &'a Tensor,
    pub arrived: &'a Tensor,
    pub shape: LcmShape,
}

/// The settings matvec.wgsl's LCM epilogue reads after the product's own (its `Params` from
/// `first_row` on).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EpilogueParams {
    first_row: u32,
    n_seqs: u32,
    n_scales: u32,
    sink: u32,
    tau: f32,
    kappa: f32,
    keep_norm: u32,
    normalized: u32,
}

impl<'a> Modulation<'a> {
    /// Records lcm.wgsl over rows `0..n_rows` of `x` (see [`lcm`]).
    pub fn record(&self, step: &mut Step, x: &Tensor, n_rows: usize) {
        lcm(step, x, self.rows, self.anchor, self.scales, self.stats, self.shape, n_rows);
    }

    /// The epilogue's settings for rows `first_row ..` of the row table, each `d` wide, and
    /// its buffers in binding order.
    pub fn epilogue(&self, first_row: usize, d: usize) -> (EpilogueParams, [(&'static str, &'a Tensor); 5]) {
        let (seqs, n_scales) = (self.anchor.shape[0], self.anchor.shape[1]);
        assert!(self.anchor.shape[2] == d && (1..=MAX_SCALES).contains(&n_scales));
        assert!(self.scales.numel() >= 2 * n_scales && self.stats.numel() >= 4 * seqs);
        assert!(self.arrived.dtype == crate::gpu::DType::U32 && self.arrived.numel() >= 1);
        let p = self.shape.params(0, d, n_scales);
        let params = EpilogueParams {
            first_row: first_row as u32,
            n_seqs: seqs as u32,
            n_scales: p.n_scales,
            sink: p.sink,
            tau: p.tau,
            kappa: p.kappa,
            keep_norm: p.keep_norm,
            normalized: p.normalized,
        };
        let m = self;
        (
            params,
            bind![rows = m.rows, anchor = m.anchor, scales = m.scales, stats = m.stats, arrived = m.arrived],
        )
    }
}

/// Modulates rows `0..n_rows` of `x` in place, scanning each sequence's rows in order.
/// `anchor` is `[seqs, n_scales, d]` (carried between calls), `scales` holds (rho, gamma)
/// pairs, `stats` `[seqs, 4]` accumulates (gate, divergence, count).
#[allow(clippy::too_many_arguments)]
pub fn lcm(
    step: &mut Step,
    x: &Tensor,
    rows: &Tensor,
    anchor: &Tensor,
    scales: &Tensor,
    stats: &Tensor,
    shape: LcmShape,
    n_rows: usize,
) {
    lcm_saving(step, x, rows, anchor, scales, stats, shape, n_rows, None);
}

/// [`lcm`] that also writes the anchors each row saw into `history` `[rows, n_scales, d]`
/// (training keeps them for [`lcm_backward`]).
#[allow(clippy::too_many_arguments)]
pub fn lcm_saving(
    step: &mut Step,
    x: &Tensor,
    rows: &Tensor,
    anchor: &Tensor,
    scales: &Tensor,
    stats: &Tensor,
    shape: LcmShape,
    n_rows: usize,
    history: Option<&Tensor>,
) {
    let (seqs, n_scales, d) = (anchor.shape[0], anchor.shape[1], anchor.shape[2]);
    assert!((1..=MAX_SCALES).contains(&n_scales) && scales.numel() >= 2 * n_scales);
    assert!(x.numel() >= n_rows * d && stats.numel() >= 4 * seqs);
    let params = shape.params(n_rows, d, n_scales);
    let pipeline = step.gpu.pipeline("lcm", &[("SAVE", history.is_some() as u32)]);
    let mut buffers = bind![x, rows, anchor, scales, stats].to_vec();
    if let Some(h) = history {
        assert!(h.numel() >= n_rows * n_scales * d);
        buffers.push(("history", h));
    }
    step.dispatch(pipeline, &params, &buffers, [seqs as u32, 1, 1]);
}

/// Backward of [`lcm_saving`] over rows `0..n_rows`: `dy` (the gradient at the modulated
/// states) becomes the gradient at `h`, the states before modulation, in place.
/// `d_anchor` `[seqs, n_scales, d]` must be zero; it is zero again afterwards.
#[allow(clippy::too_many_arguments)]
pub fn lcm_backward(
    step: &mut Step,
    (h, history): (&Tensor, &Tensor),
    rows: &Tensor,
    scales: &Tensor,
    dy: &Tensor,
    d_anchor: &Tensor,
    shape: LcmShape,
    n_rows: usize,
) {
    let (seqs, n_scales, d) = (d_anchor.shape[0], d_anchor.shape[1], d_anchor.shape[2]);
    assert!((1..=MAX_SCALES).contains(&n_scales) && scales.numel() >= 2 * n_scales);
    assert!(h.numel() >= n_rows * d && dy.numel() >= n_rows * d && history.numel() >= n_rows * n_scales * d);
    let params = shape.params(n_rows, d, n_scales);
    let pipeline = step.gpu.pipeline("lcm_backward", &[]);
    step.dispatch(pipeline, &params, &bind![h, rows, history, scales, dy, d_anchor], [seqs as u32, 1, 1]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    /// A prefill of 9 positions split into two calls (7 rows, then 2 single decode rows)
    /// equals one reference scan, for each variant.
    #[test]
    fn lcm_scan_matches_cpu_across_calls() {
        let gpu = gpu();
        let (t, d) = (9, 70);
        let h = rand_vec(1, t * d, 1.0);
        let cases = [
            (vec![(0.9f32, 0.6f32)], false, true, 0usize),
            (vec![(0.5, 0.3), (0.9, 0.2), (0.99, 0.1)], false, false, 0),
            (vec![(0.8, 0.5)], true, true, 2),
        ];
        for (scales, normalized, keep_norm, sink) in cases {
            let shape = LcmShape { tau: 0.05, kappa: 20.0, keep_norm, normalized, sink };
            let flat: Vec<f32> = scales.iter().flat_map(|&(r, g)| [r, g]).collect();
            let scales_t = gpu.upload_f32("scales", &[scales.len(), 2], &flat).unwrap();
            let anchor = gpu.zeros("anchor", &[1, scales.len(), d], DType::F32).unwrap();
            let stats = gpu.zeros("stats", &[1, 4], DType::F32).unwrap();
            let mut got = Vec::new();
            for (start, len) in [(0, 7), (7, 1), (8, 1)] {
                let x = gpu.upload_f32("x", &[len, d], &h[start * d..(start + len) * d]).unwrap();
                let rows: Vec<u32> = (start..start + len).flat_map(|p| [0, p as u32]).collect();
                let rows = gpu.upload_u32("rows", &[len, 2], &rows).unwrap();
                let mut step = Step::new(gpu);
                lcm(&mut step, &x, &rows, &anchor, &scales_t, &stats, shape, len);
                step.submit().unwrap();
                got.extend(gpu.read_f32(&x).unwrap());
            }
            let mut want = h.clone();
            let (g, s, n) =
                cpu::lcm::lcm_scan(&mut want, d, &scales, (0.05, 20.0), keep_norm, normalized, sink);
            let what = format!("lcm scales={scales:?} normalized={normalized} sink={sink}");
            assert_close(&got, &want, 1e-5, &what);
            let st = gpu.read_f32(&stats).unwrap();
            assert!((st[0] as f64 - g).abs() < 1e-4 && (st[1] as f64 - s).abs() < 1e-4, "{what}: stats");
            assert_eq!(st[2] as usize, n, "{what}: count");
        }
    }

    /// The reverse scan on two training sequences (rows seq × T + t) against the CPU
    /// reference, for each variant; the anchors' gradient buffer ends at zero.
    #[test]
    fn lcm_backward_matches_cpu() {
        let gpu = gpu();
        let (seqs, t, d) = (2, 9, 70);
        let h: Vec<f32> = rand_vec(1, seqs * t * d, 1.0).iter().map(|x| x + 0.2).collect();
        let dy = rand_vec(2, seqs * t * d, 1.0);
        let cases = [
            (vec![(0.9f32, 0.6f32)], false, true, 0usize),
            (vec![(0.5, 0.3), (0.9, 0.2), (0.99, 0.1)], false, false, 0),
            (vec![(0.8, 0.5)], true, true, 2),
            (vec![(0.7, 0.4), (0.95, 0.3)], false, true, 1),
        ];
        let rows: Vec<u32> = (0..seqs * t).flat_map(|r| [(r / t) as u32, (r % t) as u32]).collect();
        let rows = gpu.upload_u32("rows", &[seqs * t, 2], &rows).unwrap();
        for (scales, normalized, keep_norm, sink) in cases {
            let (tau, kappa) = (0.05, 4.0);
            let shape = LcmShape { tau, kappa, keep_norm, normalized, sink };
            let k = scales.len();
            let flat: Vec<f32> = scales.iter().flat_map(|&(r, g)| [r, g]).collect();
            let scales_t = gpu.upload_f32("scales", &[k, 2], &flat).unwrap();
            let anchor = gpu.zeros("anchor", &[seqs, k, d], DType::F32).unwrap();
            let d_anchor = gpu.zeros("d anchor", &[seqs, k, d], DType::F32).unwrap();
            let stats = gpu.zeros("stats", &[seqs, 4], DType::F32).unwrap();
            let history = gpu.zeros("history", &[seqs * t, k, d], DType::F32).unwrap();
            let x = gpu.upload_f32("x", &[seqs * t, d], &h).unwrap();
            let h_t = gpu.upload_f32("h", &[seqs * t, d], &h).unwrap();
            let dy_t = gpu.upload_f32("dy", &[seqs * t, d], &dy).unwrap();
            let mut step = Step::new(gpu);
            lcm_saving(&mut step, &x, &rows, &anchor, &scales_t, &stats, shape, seqs * t, Some(&history));
            lcm_backward(&mut step, (&h_t, &history), &rows, &scales_t, &dy_t, &d_anchor, shape, seqs * t);
            step.submit().unwrap();
            let mut want = dy.clone();
            for s in 0..seqs {
                let span = s * t * d..(s + 1) * t * d;
                let params = (tau, kappa);
                cpu::lcm::lcm_scan_backward(
                    &h[span.clone()],
                    &mut want[span],
                    d,
                    &scales,
                    params,
                    keep_norm,
                    normalized,
                    sink,
                );
            }
            let what = format!(
                "lcm backward scales={scales:?} normalized={normalized} keep_norm={keep_norm} sink={sink}"
            );
            assert_close(&gpu.read_f32(&dy_t).unwrap(), &want, 2e-4, &what);
            assert!(gpu.read_f32(&d_anchor).unwrap().iter().all(|&x| x == 0.0), "{what}: d_anchor reset");
        }
    }
}
