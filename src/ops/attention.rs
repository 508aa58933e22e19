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
    vec![("attention", vec![])]
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
}
