//! Latent-trace reductions of the residual stream, `shaders/trace.wgsl`: per-position norms
//! and successive cosines, and per-segment sums, over a chunk of one sequence's positions.

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    d: u32,
    t0: u32,
    out_off: u32,
    prev_off: u32,
    _p: [u32; 3],
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![("trace", vec![("ROWS", 1)]), ("trace", vec![("ROWS", 0)])]
}

/// Rows `0..n_rows` of `x` `[rows, d]` are positions `t0 ..`. Writes `|h_t|` into
/// `norms[out_off + t]` and `cos(h_t, h_{t-1})` into `cosines[out_off + t]` (0 at t = 0),
/// where the row before the chunk is `prev[prev_off .. prev_off + d]`.
#[allow(clippy::too_many_arguments)]
pub fn norms_and_cosines(
    step: &mut Step,
    x: &Tensor,
    (n_rows, t0): (usize, usize),
    (prev, prev_off): (&Tensor, usize),
    norms: &Tensor,
    cosines: &Tensor,
    out_off: usize,
) {
    let d = *x.shape.last().unwrap();
    assert!(x.numel() >= n_rows * d && prev.numel() >= prev_off + d);
    assert!(norms.numel() >= out_off + t0 + n_rows && cosines.numel() >= out_off + t0 + n_rows);
    let params = Params {
        n_rows: n_rows as u32,
        d: d as u32,
        t0: t0 as u32,
        out_off: out_off as u32,
        prev_off: prev_off as u32,
        _p: [0; 3],
    };
    let pipeline = step.gpu.pipeline("trace", &[("ROWS", 1)]);
    step.dispatch(pipeline, &params, &bind![x, prev, norms, cosines], groups(n_rows, 1));
}

/// Adds each row `r < n_rows` of `x` (position `t0 + r`) into
/// `sums[out_off + segment_of[t0 + r] * d ..]` (`[segments, d]`).
pub fn segment_sums(
    step: &mut Step,
    x: &Tensor,
    (n_rows, t0): (usize, usize),
    segment_of: &Tensor,
    sums: &Tensor,
    out_off: usize,
) {
    let d = *x.shape.last().unwrap();
    assert!(x.numel() >= n_rows * d && segment_of.numel() >= t0 + n_rows && sums.numel() >= out_off + d);
    let params = Params {
        n_rows: n_rows as u32,
        d: d as u32,
        t0: t0 as u32,
        out_off: out_off as u32,
        prev_off: 0,
        _p: [0; 3],
    };
    let pipeline = step.gpu.pipeline("trace", &[("ROWS", 0)]);
    step.dispatch(pipeline, &params, &bind![x, segment_of, sums], groups(d, 64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    /// Seven positions in two chunks (5 then 2 rows, the second reading the first's last row
    /// as `prev`), written at an offset, against the CPU over all seven.
    #[test]
    fn trace_reductions_match_cpu() {
        let gpu = gpu();
        let (t, d, off) = (7, 70, 3);
        let h = rand_vec(1, t * d, 1.0);
        let segment_of = [0u32, 0, 1, 1, 1, 2, 2];
        let seg = gpu.upload_u32("segments", &[t], &segment_of).unwrap();
        let norms = gpu.zeros("norms", &[off + t], DType::F32).unwrap();
        let cosines = gpu.zeros("cosines", &[off + t], DType::F32).unwrap();
        let sums = gpu.zeros("sums", &[off * d + 3 * d], DType::F32).unwrap();
        let prev = gpu.zeros("prev", &[2 * d], DType::F32).unwrap();
        for (t0, n) in [(0, 5), (5, 2)] {
            let x = gpu.upload_f32("x", &[n, d], &h[t0 * d..(t0 + n) * d]).unwrap();
            let mut step = Step::new(gpu);
            norms_and_cosines(&mut step, &x, (n, t0), (&prev, d), &norms, &cosines, off);
            segment_sums(&mut step, &x, (n, t0), &seg, &sums, off * d);
            step.copy(&x, (n - 1) * d, &prev, d, d);
            step.submit().unwrap();
        }
        let f32s = |v: Vec<f64>| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        assert_close(&gpu.read_f32(&norms).unwrap()[off..], &f32s(cpu::trace::norms(&h, d)), 1e-5, "norms");
        let mut want_cos = f32s(cpu::trace::successive_cos(&h, d));
        want_cos[0] = 0.0;
        assert_close(&gpu.read_f32(&cosines).unwrap()[off..], &want_cos, 1e-5, "cosines");
        let means = cpu::trace::segment_means(&h, d, &segment_of, 3);
        let counts = [2.0, 3.0, 2.0];
        let want_sums: Vec<f32> = means.iter().enumerate().map(|(i, m)| (m * counts[i / d]) as f32).collect();
        assert_close(&gpu.read_f32(&sums).unwrap()[off * d..], &want_sums, 1e-5, "segment sums");
    }
}
