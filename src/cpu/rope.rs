//! Reference for `rope_kv`: split QKV rows into heads, rotate q and k, scatter k and v
//! into a `[seqs, cache_len, Hkv, hd]` cache.

pub struct Heads {
    pub n_q: usize,
    pub n_kv: usize,
    pub dim: usize,
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
                rotate(&mut v, cos, sin, pos);
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
