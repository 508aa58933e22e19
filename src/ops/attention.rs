//! Causal grouped-query attention against the KV cache, `shaders/attention.wgsl`.

use super::{groups, rope::HeadShape};
use crate::gpu::{shader::Define, Step, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    n_q_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    cache_len: u32,
    scale: f32,
    _p: [u32; 2],
}

/// The kernel keeps a query head in workgroup memory and up to 4 output dims per thread.
pub const MAX_HEAD_DIM: usize = 256;

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![
        ("attention", vec![]),
        ("attention_backward", vec![("KV", 0)]),
        ("attention_backward", vec![("KV", 1)]),
    ]
}

/// `out[r] = softmax(q[r] · Kᵀ / sqrt(hd)) · V` over cache positions `0..=pos(r)` of the
/// row's sequence; writes the log-sum-exp of the scores per (row, head) into `lse`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    step: &mut Step,
    q: &Tensor,
    rows: &Tensor,
    heads: HeadShape,
    (k_cache, v_cache): (&Tensor, &Tensor),
    out: &Tensor,
    lse: &Tensor,
    n_rows: usize,
) {
    assert!(heads.dim <= MAX_HEAD_DIM && heads.n_q.is_multiple_of(heads.n_kv));
    assert!(q.numel() >= n_rows * heads.n_q * heads.dim && out.numel() >= n_rows * heads.n_q * heads.dim);
    assert!(lse.numel() >= n_rows * heads.n_q);
    let params = Params {
        n_rows: n_rows as u32,
        n_q_heads: heads.n_q as u32,
        n_kv_heads: heads.n_kv as u32,
        head_dim: heads.dim as u32,
        cache_len: k_cache.shape[1] as u32,
        scale: 1.0 / (heads.dim as f32).sqrt(),
        _p: [0; 2],
    };
    let pipeline = step.gpu.pipeline("attention", &[]);
    let buffers = [q, rows, k_cache, v_cache, out, lse];
    step.dispatch(pipeline, &params, &buffers, groups(n_rows * heads.n_q, 1));
}

/// What [`attention`] saved, as its backward pass reads it.
#[derive(Clone, Copy)]
pub struct Saved<'a> {
    pub q: &'a Tensor,
    pub rows: &'a Tensor,
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub out: &'a Tensor,
    pub lse: &'a Tensor,
}

/// Gradients of [`attention`] from `d_out`: `dq` per row and `dk`, `dv` in the cache's
/// layout (written, not accumulated). `delta` `[rows, Hq]` is working space. Needs the
/// training row layout: row = sequence × cache_len + position, every position present.
pub fn attention_backward(
    step: &mut Step,
    saved: Saved,
    heads: HeadShape,
    d_out: &Tensor,
    dq: &Tensor,
    (dk, dv): (&Tensor, &Tensor),
    delta: &Tensor,
) {
    let cache_len = saved.k_cache.shape[1];
    let n_rows = saved.k_cache.shape[0] * cache_len;
    assert!(heads.dim <= MAX_HEAD_DIM && heads.n_q.is_multiple_of(heads.n_kv));
    assert!(dq.numel() >= n_rows * heads.n_q * heads.dim && d_out.numel() >= n_rows * heads.n_q * heads.dim);
    assert!(delta.numel() >= n_rows * heads.n_q && dk.shape == saved.k_cache.shape && dv.shape == dk.shape);
    let params = Params {
        n_rows: n_rows as u32,
        n_q_heads: heads.n_q as u32,
        n_kv_heads: heads.n_kv as u32,
        head_dim: heads.dim as u32,
        cache_len: cache_len as u32,
        scale: 1.0 / (heads.dim as f32).sqrt(),
        _p: [0; 2],
    };
    let s = saved;
    let common = [s.q, s.rows, s.k_cache, s.v_cache, s.lse, d_out];
    let pipeline = step.gpu.pipeline("attention_backward", &[("KV", 0)]);
    step.dispatch(
        pipeline,
        &params,
        &[&common[..], &[s.out, dq, delta]].concat(),
        groups(n_rows * heads.n_q, 1),
    );
    let pipeline = step.gpu.pipeline("attention_backward", &[("KV", 1)]);
    step.dispatch(
        pipeline,
        &params,
        &[&common[..], &[delta, dk, dv]].concat(),
        groups(n_rows * heads.n_kv, 1),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    #[test]
    fn attention_matches_cpu() {
        let gpu = gpu();
        for heads in [HeadShape { n_q: 4, n_kv: 2, dim: 16 }, HeadShape { n_q: 3, n_kv: 1, dim: 96 }] {
            let (seqs, cache_len) = (2, 150);
            // Positions past one 64-key chunk exercise the online softmax.
            let rows = [(0usize, 0usize), (0, 63), (1, 64), (1, 149), (0, 100)];
            let n = rows.len();
            let qd = heads.n_q * heads.dim;
            let q = rand_vec(1, n * qd, 2.0);
            let kc = rand_vec(2, seqs * cache_len * heads.n_kv * heads.dim, 2.0);
            let vc = rand_vec(3, kc.len(), 1.0);
            let flat: Vec<u32> = rows.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();
            let cache_shape = [seqs, cache_len, heads.n_kv, heads.dim];
            let qt = gpu.upload_f32("q", &[n, qd], &q).unwrap();
            let rt = gpu.upload_u32("rows", &[n, 2], &flat).unwrap();
            let kt = gpu.upload_f32("k", &cache_shape, &kc).unwrap();
            let vt = gpu.upload_f32("v", &cache_shape, &vc).unwrap();
            let out = gpu.zeros("out", &[n, qd], DType::F32).unwrap();
            let lse = gpu.zeros("lse", &[n, heads.n_q], DType::F32).unwrap();
            let mut step = Step::new(gpu);
            attention(&mut step, &qt, &rt, heads, (&kt, &vt), &out, &lse, n);
            step.submit().unwrap();
            let want =
                cpu::attention::attention(&q, &kc, &vc, &rows, (heads.n_q, heads.n_kv, heads.dim), cache_len);
            assert_close(&gpu.read_f32(&out).unwrap(), &want, 1e-5, &format!("attention {heads:?}"));
        }
    }

    #[test]
    fn attention_backward_matches_cpu() {
        let gpu = gpu();
        for heads in [HeadShape { n_q: 4, n_kv: 2, dim: 16 }, HeadShape { n_q: 3, n_kv: 1, dim: 96 }] {
            // Two sequences of 70 positions: past one 64-key chunk.
            let (seqs, len) = (2, 70);
            let rows: Vec<(usize, usize)> = (0..seqs).flat_map(|s| (0..len).map(move |p| (s, p))).collect();
            let n = rows.len();
            let qd = heads.n_q * heads.dim;
            let cache_shape = [seqs, len, heads.n_kv, heads.dim];
            let q = rand_vec(1, n * qd, 1.0);
            let kc = rand_vec(2, seqs * len * heads.n_kv * heads.dim, 1.0);
            let vc = rand_vec(3, kc.len(), 1.0);
            let d_out = rand_vec(4, n * qd, 1.0);
            let flat: Vec<u32> = rows.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();
            let up = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
            let (qt, kt, vt, dot) = (
                up("q", &[n, qd], &q),
                up("k", &cache_shape, &kc),
                up("v", &cache_shape, &vc),
                up("do", &[n, qd], &d_out),
            );
            let rt = gpu.upload_u32("rows", &[n, 2], &flat).unwrap();
            let zeros = |name, shape: &[usize]| gpu.zeros(name, shape, DType::F32).unwrap();
            let (out, lse, dq, delta) = (
                zeros("out", &[n, qd]),
                zeros("lse", &[n, heads.n_q]),
                zeros("dq", &[n, qd]),
                zeros("delta", &[n, heads.n_q]),
            );
            let (dk, dv) = (zeros("dk", &cache_shape), zeros("dv", &cache_shape));
            let mut step = Step::new(gpu);
            attention(&mut step, &qt, &rt, heads, (&kt, &vt), &out, &lse, n);
            let saved = Saved { q: &qt, rows: &rt, k_cache: &kt, v_cache: &vt, out: &out, lse: &lse };
            attention_backward(&mut step, saved, heads, &dot, &dq, (&dk, &dv), &delta);
            step.submit().unwrap();
            let shape = (heads.n_q, heads.n_kv, heads.dim);
            let (want_dq, want_dk, want_dv) =
                cpu::attention::attention_backward(&q, &kc, &vc, &rows, shape, len, &d_out);
            assert_close(&gpu.read_f32(&dq).unwrap(), &want_dq, 1e-5, &format!("dq {heads:?}"));
            assert_close(&gpu.read_f32(&dk).unwrap(), &want_dk, 1e-5, &format!("dk {heads:?}"));
            assert_close(&gpu.read_f32(&dv).unwrap(), &want_dv, 1e-5, &format!("dv {heads:?}"));
        }
    }
}
