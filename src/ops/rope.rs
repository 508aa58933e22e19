//! Rotary embeddings fused with the KV-cache write, `shaders/rope.wgsl`.

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

/// How a model rescales its rotary frequencies (config.json's `rope_scaling` or
/// `rope_parameters`), as transformers' `ROPE_INIT_FUNCTIONS` compute them.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every inverse frequency divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_positions: usize,
    },
    /// Phi-3's longrope: each frequency divided by its short factor, or by its long factor in
    /// a pass that reaches past `original_max_positions`; cos and sin multiplied by
    /// `attention_factor` either way. transformers (`longrope_frequency_update`) picks the
    /// factors per forward pass by its last position: a prefill or scoring pass of more than
    /// `original_max_positions` tokens rotates every one of them with the long factors, a
    /// decode step at position p with the long ones when p + 1 exceeds it; keys already in
    /// the cache keep the rotation of the pass that wrote them. Keel does the same
    /// ([`RopeScaling::long_past`]).
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        attention_factor: f32,
        original_max_positions: usize,
    },
}

impl RopeScaling {
    /// The passes that end past this many positions rotate with [`RopeScaling::long_inv_freq`]
    /// (longrope's original context); None: every pass rotates alike.
    pub fn long_past(&self) -> Option<usize> {
        match self {
            RopeScaling::LongRope { original_max_positions, .. } => Some(*original_max_positions),
            _ => None,
        }
    }

    /// Longrope's inverse frequencies for passes past its original context: each one divided
    /// by its long factor. None for the other kinds.
    pub fn long_inv_freq(&self, theta: f32, dim: usize) -> Option<Vec<f32>> {
        let RopeScaling::LongRope { long_factor, .. } = self else { return None };
        Some(RopeScaling::None.inv_freq(theta, dim).iter().zip(long_factor).map(|(f, l)| f / l).collect())
    }

    /// The inverse frequencies of a head of `dim` rotated dimensions, in float32 as
    /// transformers computes them (`1 / theta^(2j/dim)`, then rescaled; longrope's short
    /// factors).
    pub fn inv_freq(&self, theta: f32, dim: usize) -> Vec<f32> {
        let base = (0..dim / 2).map(|j| 1.0 / theta.powf((2 * j) as f32 / dim as f32));
        match *self {
            RopeScaling::None => base.collect(),
            RopeScaling::Linear { factor } => base.map(|f| f / factor).collect(),
            RopeScaling::LongRope { ref short_factor, .. } => {
                base.zip(short_factor).map(|(f, s)| f / s).collect()
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => {
                let old = original_max_positions as f32;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                base.map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
            }
        }
    }
}

impl RopeScaling {
    /// What cos and sin are multiplied by (transformers' `attention_scaling`).
    pub fn attention_factor(&self) -> f32 {
        match self {
            RopeScaling::LongRope { attention_factor, .. } => *attention_factor,
            _ => 1.0,
        }
    }
}

/// cos and sin tables `[positions, inv_freq.len()]`, computed as Hugging Face does in
/// float32 (angle = position × inverse frequency, rounded to f32 before the cosine), so long
/// positions match the reference exactly.
pub fn rope_tables(inv_freq: &[f32], positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for pos in 0..positions {
        for f in inv_freq {
            let angle = (pos as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// The words the uniform block of every kernel that moves heads into or out of the KV cache
/// opens with (RoPE's, attention's): `n_rows` rows of `heads`, a cache of `cache_len` positions.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CacheRows {
    n_rows: u32,
    n_q_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    cache_len: u32,
}

impl CacheRows {
    pub(crate) fn new(n_rows: usize, heads: HeadShape, cache_len: usize) -> CacheRows {
        CacheRows {
            n_rows: n_rows as u32,
            n_q_heads: heads.n_q as u32,
            n_kv_heads: heads.n_kv as u32,
            head_dim: heads.dim as u32,
            cache_len: cache_len as u32,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: CacheRows,
    rot_dim: u32,
    _p: [u32; 2],
}

impl Params {
    /// What rope.wgsl and rope_backward.wgsl read: `n_rows` rows of `heads` into a KV cache of
    /// `cache_len` positions, rotated by `tables` (None: not rotated).
    fn new(n_rows: usize, heads: HeadShape, cache_len: usize, tables: Option<(&Tensor, &Tensor)>) -> Params {
        Params {
            rows: CacheRows::new(n_rows, heads, cache_len),
            rot_dim: rotated_dims(tables) as u32,
            _p: [0; 2],
        }
    }
}

/// Dimensions of each head the (cos, sin) tables `[positions, rot_dim / 2]` rotate.
pub fn rotated_dims(tables: Option<(&Tensor, &Tensor)>) -> usize {
    tables.map_or(0, |(cos, _)| 2 * cos.shape[cos.shape.len() - 1])
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    let mut v = Vec::new();
    for rope in [0, 1] {
        v.push(("rope", vec![("ROPE", rope)]));
        v.push(("rope_backward", vec![("ROPE", rope)]));
    }
    v
}

/// The head layout of the fused QKV projection.
#[derive(Clone, Copy, Debug)]
pub struct HeadShape {
    pub n_q: usize,
    pub n_kv: usize,
    pub dim: usize,
}

impl HeadShape {
    pub fn qkv_width(&self) -> usize {
        (self.n_q + 2 * self.n_kv) * self.dim
    }
}

/// Splits `qkv` rows into `q` (rotated) and the KV cache `[seqs, cache_len, Hkv, hd]` at
/// each row's (sequence, position) from `rows`. `tables` = (cos, sin) or None (GPT-2).
#[allow(clippy::too_many_arguments)]
pub fn rope_kv(
    step: &mut Step,
    qkv: &Tensor,
    rows: &Tensor,
    heads: HeadShape,
    tables: Option<(&Tensor, &Tensor)>,
    q: &Tensor,
    (k_cache, v_cache): (&Tensor, &Tensor),
    n_rows: usize,
) {
    let cache_len = k_cache.shape[1];
    assert!(qkv.numel() >= n_rows * heads.qkv_width() && rows.numel() >= 2 * n_rows);
    assert_eq!(k_cache.shape[2..], [heads.n_kv, heads.dim]);
    let params = Params::new(n_rows, heads, cache_len, tables);
    let pipeline = step.gpu.pipeline("rope", &[("ROPE", tables.is_some() as u32)]);
    let mut buffers = bind![qkv, rows, q_out = q, k_cache, v_cache].to_vec();
    if let Some((cos, sin)) = tables {
        buffers.extend(bind![cos_table = cos, sin_table = sin]);
    }
    step.dispatch(pipeline, &params, &buffers, groups(n_rows, 1));
}

/// Gradient of [`rope_kv`]: `dqkv` rows from `dq` and the KV-cache-shaped `dk`, `dv`.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_backward(
    step: &mut Step,
    rows: &Tensor,
    heads: HeadShape,
    tables: Option<(&Tensor, &Tensor)>,
    dq: &Tensor,
    (dk, dv): (&Tensor, &Tensor),
    dqkv: &Tensor,
    n_rows: usize,
) {
    assert!(dqkv.numel() >= n_rows * heads.qkv_width() && rows.numel() >= 2 * n_rows);
    assert!(dq.numel() >= n_rows * heads.n_q * heads.dim);
    assert_eq!(dk.shape[2..], [heads.n_kv, heads.dim]);
    let params = Params::new(n_rows, heads, dk.shape[1], tables);
    let pipeline = step.gpu.pipeline("rope_backward", &[("ROPE", tables.is_some() as u32)]);
    let mut buffers = bind![rows, dq, dk, dv, dqkv].to_vec();
    if let Some((cos, sin)) = tables {
        buffers.extend(bind![cos_table = cos, sin_table = sin]);
    }
    step.dispatch(pipeline, &params, &buffers, groups(n_rows, 1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    #[test]
    fn rope_kv_matches_cpu() {
        let gpu = gpu();
        let heads = HeadShape { n_q: 4, n_kv: 2, dim: 16 };
        let (seqs, cache_len) = (2, 40);
        let rows = [(0usize, 0usize), (0, 1), (1, 37), (1, 5), (0, 39)];
        let n = rows.len();
        let qkv = rand_vec(1, n * heads.qkv_width(), 1.0);
        let flat_rows: Vec<u32> = rows.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();
        // Rotated dimensions: all, a partial rotary's quarter, none.
        for rot in [heads.dim, heads.dim / 4, 0] {
            let rope = rot > 0;
            let (cos, sin) = rope_tables(&RopeScaling::None.inv_freq(10000.0, rot.max(2)), cache_len);
            let qkv_t = gpu.upload_f32("qkv", &[n, heads.qkv_width()], &qkv).unwrap();
            let rows_t = gpu.upload_u32("rows", &[n, 2], &flat_rows).unwrap();
            let cos_t = gpu.upload_f32("cos", &[cache_len, rot.max(2) / 2], &cos).unwrap();
            let sin_t = gpu.upload_f32("sin", &[cache_len, rot.max(2) / 2], &sin).unwrap();
            let q = gpu.zeros("q", &[n, heads.n_q * heads.dim], DType::F32).unwrap();
            let cache_shape = [seqs, cache_len, heads.n_kv, heads.dim];
            let kc = gpu.zeros("k", &cache_shape, DType::F32).unwrap();
            let vc = gpu.zeros("v", &cache_shape, DType::F32).unwrap();
            let mut step = Step::new(gpu);
            let tables = rope.then_some((&cos_t, &sin_t));
            rope_kv(&mut step, &qkv_t, &rows_t, heads, tables, &q, (&kc, &vc), n);
            step.submit().unwrap();
            let mut want_k = vec![0.0; kc.numel()];
            let mut want_v = vec![0.0; vc.numel()];
            let h = cpu::rope::Heads { n_q: heads.n_q, n_kv: heads.n_kv, dim: heads.dim, rot };
            let cpu_tables = rope.then_some((&cos[..], &sin[..]));
            let want_q = cpu::rope::rope_kv(&qkv, &rows, &h, cpu_tables, cache_len, &mut want_k, &mut want_v);
            assert_close(&gpu.read_f32(&q).unwrap(), &want_q, 1e-6, &format!("q, {rot} rotated"));
            assert_close(&gpu.read_f32(&kc).unwrap(), &want_k, 1e-6, &format!("k cache, {rot} rotated"));
            assert_close(&gpu.read_f32(&vc).unwrap(), &want_v, 0.0, "v cache");
        }
    }

    #[test]
    fn rope_kv_backward_matches_cpu() {
        let gpu = gpu();
        let heads = HeadShape { n_q: 4, n_kv: 2, dim: 16 };
        let (seqs, cache_len) = (2, 40);
        let rows = [(0usize, 0usize), (0, 1), (1, 37), (1, 5), (0, 39)];
        let n = rows.len();
        let cache_shape = [seqs, cache_len, heads.n_kv, heads.dim];
        let cache_elems: usize = cache_shape.iter().product();
        let dq = rand_vec(1, n * heads.n_q * heads.dim, 1.0);
        let dk = rand_vec(2, cache_elems, 1.0);
        let dv = rand_vec(3, cache_elems, 1.0);
        let flat_rows: Vec<u32> = rows.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();
        let up = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
        let (dqt, dkt, dvt) =
            (up("dq", &[dq.len()], &dq), up("dk", &cache_shape, &dk), up("dv", &cache_shape, &dv));
        let rows_t = gpu.upload_u32("rows", &[n, 2], &flat_rows).unwrap();
        for rot in [heads.dim, heads.dim / 4, 0] {
            let rope = rot > 0;
            let (cos, sin) = rope_tables(&RopeScaling::None.inv_freq(10000.0, rot.max(2)), cache_len);
            let table_shape = [cache_len, rot.max(2) / 2];
            let (cos_t, sin_t) = (up("cos", &table_shape, &cos), up("sin", &table_shape, &sin));
            let dqkv = gpu.zeros("dqkv", &[n, heads.qkv_width()], DType::F32).unwrap();
            let mut step = Step::new(gpu);
            let tables = rope.then_some((&cos_t, &sin_t));
            rope_kv_backward(&mut step, &rows_t, heads, tables, &dqt, (&dkt, &dvt), &dqkv, n);
            step.submit().unwrap();
            let h = cpu::rope::Heads { n_q: heads.n_q, n_kv: heads.n_kv, dim: heads.dim, rot };
            let cpu_tables = rope.then_some((&cos[..], &sin[..]));
            let want = cpu::rope::rope_kv_backward(&dq, &dk, &dv, &rows, &h, cpu_tables, cache_len);
            assert_close(&gpu.read_f32(&dqkv).unwrap(), &want, 1e-6, &format!("dqkv, {rot} rotated"));
        }
    }
}
