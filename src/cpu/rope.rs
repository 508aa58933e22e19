//! Reference for `rope_kv`: split QKV rows into heads, rotate q and k, scatter k and v
//! into a `[seqs, cache_len, Hkv, hd]` cache.

pub struct Heads {
    pub n_q: usize,
    pub n_kv: usize,
    pub dim: usize,
    /// Dimensions rotated at the start of each q and k head (`dim`, or a partial rotary's).
    pub rot: usize,
}

/// Rotates one head vector in place (rotate_half convention) at table row `pos`.
pub fn rotate(v: &mut [f32], cos: &[f32], sin: &[f32], pos: usize) {
    let half = v.len() / 2;
    let orig = v.to_vec();
    for i in 0..v.len() {
        let j = i % half;
        let (c, s) = (cos[pos * half + j] as f64, sin[pos * half + j] as f64);
        let partner = if i < half { -(orig[i + half] as f64) } else { orig[i - half] as f64 };
        v[i] = (orig[i] as f64 * c + partner * s) as f32;
    }
}

/// Returns q `[rows, Hq * hd]` and fills the caches.
pub fn rope_kv(
    qkv: &[f32],
    rows: &[(usize, usize)],
    heads: &Heads,
    tables: Option<(&[f32], &[f32])>,
    cache_len: usize,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) -> Vec<f32> {
    let hd = heads.dim;
    let width = (heads.n_q + 2 * heads.n_kv) * hd;
    let mut q = Vec::new();
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        for head in 0..heads.n_q + 2 * heads.n_kv {
            let mut v = qkv[r * width + head * hd..r * width + (head + 1) * hd].to_vec();
            if let (Some((cos, sin)), true) = (tables, head < heads.n_q + heads.n_kv) {
                rotate(&mut v[..heads.rot], cos, sin, pos);
            }
            if head < heads.n_q {
                q.extend(v);
            } else {
                let kv_head = (head - heads.n_q) % heads.n_kv;
                let at = ((seq * cache_len + pos) * heads.n_kv + kv_head) * hd;
                let cache = if head < heads.n_q + heads.n_kv { &mut *k_cache } else { &mut *v_cache };
                cache[at..at + hd].copy_from_slice(&v);
            }
        }
    }
    q
}

/// Gradient of [`rope_kv`]: from dq `[rows, Hq * hd]` and the caches' gradients back to
/// the fused QKV rows (q and k rotated back by the negative angle).
pub fn rope_kv_backward(
    dq: &[f32],
    dk_cache: &[f32],
    dv_cache: &[f32],
    rows: &[(usize, usize)],
    heads: &Heads,
    tables: Option<(&[f32], &[f32])>,
    cache_len: usize,
) -> Vec<f32> {
    let hd = heads.dim;
    let mut dqkv = Vec::new();
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        for head in 0..heads.n_q + 2 * heads.n_kv {
            let mut g = if head < heads.n_q {
                dq[(r * heads.n_q + head) * hd..(r * heads.n_q + head + 1) * hd].to_vec()
            } else {
                let kv_head = (head - heads.n_q) % heads.n_kv;
                let at = ((seq * cache_len + pos) * heads.n_kv + kv_head) * hd;
                let cache = if head < heads.n_q + heads.n_kv { dk_cache } else { dv_cache };
                cache[at..at + hd].to_vec()
            };
            if let (Some((cos, sin)), true) = (tables, head < heads.n_q + heads.n_kv) {
                // The transpose of a rotation is the rotation by minus the angle.
                let neg_sin: Vec<f32> = sin.iter().map(|s| -s).collect();
                rotate(&mut g[..heads.rot], cos, &neg_sin, pos);
            }
            dqkv.extend(g);
        }
    }
    dqkv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_data::{check_gradient, rand_vec};

    #[test]
    fn rope_backward_matches_finite_differences() {
        let heads = Heads { n_q: 2, n_kv: 1, dim: 6, rot: 4 };
        let (cache_len, positions) = (3, 8);
        let rows = [(0, 0), (0, 2), (1, 1)];
        let width = (heads.n_q + 2 * heads.n_kv) * heads.dim;
        let cache = 2 * cache_len * heads.n_kv * heads.dim;
        let qkv = rand_vec(1, rows.len() * width, 1.0);
        let cos = rand_vec(2, positions * heads.rot / 2, 1.0);
        let sin = rand_vec(3, cos.len(), 1.0);
        let dy = rand_vec(4, rows.len() * heads.n_q * heads.dim + 2 * cache, 1.0);
        let (dq, rest) = dy.split_at(rows.len() * heads.n_q * heads.dim);
        let (dk, dv) = rest.split_at(cache);
        for tables in [None, Some((&cos[..], &sin[..]))] {
            let forward = |qkv: &[f32]| {
                let (mut k, mut v) = (vec![0.0; cache], vec![0.0; cache]);
                let mut out = rope_kv(qkv, &rows, &heads, tables, cache_len, &mut k, &mut v);
                out.extend(k);
                out.extend(v);
                out
            };
            let grad = rope_kv_backward(dq, dk, dv, &rows, &heads, tables, cache_len);
            check_gradient(&qkv, &grad, &dy, forward, "rope");
        }
    }
}
