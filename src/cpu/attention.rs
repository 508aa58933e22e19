/// Causal GQA attention over a `[seqs, cache_len, Hkv, hd]` cache: row r (sequence s,
/// position p) attends to positions 0..=p of s. Returns `[rows, Hq * hd]`.
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    rows: &[(usize, usize)],
    (n_q, n_kv, hd): (usize, usize, usize),
    cache_len: usize,
) -> Vec<f32> {
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0f32; rows.len() * n_q * hd];
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        for h in 0..n_q {
            let kvh = h / (n_q / n_kv);
            let qv = &q[(r * n_q + h) * hd..(r * n_q + h + 1) * hd];
            let at = |t: usize| ((seq * cache_len + t) * n_kv + kvh) * hd;
            let scores: Vec<f64> = (0..=pos)
                .map(|t| {
                    let k = &k_cache[at(t)..at(t) + hd];
                    qv.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = w.iter().sum();
            for i in 0..hd {
                let v: f64 = (0..=pos).map(|t| w[t] * v_cache[at(t) + i] as f64).sum();
                out[(r * n_q + h) * hd + i] = (v / total) as f32;
            }
        }
    }
    out
}

/// Gradients of [`attention`] given `dout`: (dq, dk_cache, dv_cache).
pub fn attention_backward(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    rows: &[(usize, usize)],
    (n_q, n_kv, hd): (usize, usize, usize),
    cache_len: usize,
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let scale = 1.0 / (hd as f64).sqrt();
    let mut dq = vec![0.0f64; q.len()];
    let mut dk = vec![0.0f64; k_cache.len()];
    let mut dv = vec![0.0f64; v_cache.len()];
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        for h in 0..n_q {
            let kvh = h / (n_q / n_kv);
            let qb = (r * n_q + h) * hd;
            let at = |t: usize| ((seq * cache_len + t) * n_kv + kvh) * hd;
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
            let scores: Vec<f64> =
                (0..=pos).map(|t| dot(&q[qb..qb + hd], &k_cache[at(t)..at(t) + hd]) * scale).collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = scores.iter().map(|s| (s - m).exp()).sum();
            let probs: Vec<f64> = scores.iter().map(|s| (s - m).exp() / total).collect();
            let dp: Vec<f64> =
                (0..=pos).map(|t| dot(&dout[qb..qb + hd], &v_cache[at(t)..at(t) + hd])).collect();
            let delta: f64 = (0..=pos).map(|t| probs[t] * dp[t]).sum();
            for t in 0..=pos {
                let ds = probs[t] * (dp[t] - delta);
                for i in 0..hd {
                    dq[qb + i] += ds * k_cache[at(t) + i] as f64 * scale;
                    dk[at(t) + i] += ds * q[qb + i] as f64 * scale;
                    dv[at(t) + i] += probs[t] * dout[qb + i] as f64;
                }
            }
        }
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    (to32(dq), to32(dk), to32(dv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_data::{check_gradient, rand_vec};

    #[test]
    fn attention_backward_matches_finite_differences() {
        let (n_q, n_kv, hd, cache_len) = (4, 2, 3, 4);
        let rows: Vec<(usize, usize)> = (0..cache_len).map(|p| (0, p)).chain([(1, 0), (1, 1)]).collect();
        let q = rand_vec(1, rows.len() * n_q * hd, 1.0);
        let k = rand_vec(2, 2 * cache_len * n_kv * hd, 1.0);
        let v = rand_vec(3, k.len(), 1.0);
        let dy = rand_vec(4, q.len(), 1.0);
        let shape = (n_q, n_kv, hd);
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &rows, shape, cache_len, &dy);
        check_gradient(&q, &dq, &dy, |q| attention(q, &k, &v, &rows, shape, cache_len), "dq");
        check_gradient(&k, &dk, &dy, |k| attention(&q, k, &v, &rows, shape, cache_len), "dk");
        check_gradient(&v, &dv, &dy, |v| attention(&q, &k, v, &rows, shape, cache_len), "dv");
    }
}
