/// How scores are formed: q·k times `scale`, over the last `window` keys (None: all).
#[derive(Clone, Copy, Debug)]
pub struct Scores {
    pub scale: f32,
    pub window: Option<usize>,
    /// False: every cache position of the sequence, not only those up to the row's (encoders).
    pub causal: bool,
}

impl Scores {
    /// 1/sqrt(hd), no window.
    pub fn causal(hd: usize) -> Scores {
        Scores { scale: 1.0 / (hd as f32).sqrt(), window: None, causal: true }
    }

    /// The keys a query at `pos` sees.
    fn keys(self, pos: usize) -> std::ops::RangeInclusive<usize> {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))..=pos
    }
}

/// Causal GQA attention over a `[seqs, cache_len, Hkv, hd]` cache: row r (sequence s,
/// position p) attends to positions 0..=p of s (the window's last of them). Returns
/// `[rows, Hq * hd]`.
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    rows: &[(usize, usize)],
    (n_q, n_kv, hd): (usize, usize, usize),
    (cache_len, scores): (usize, Scores),
) -> Vec<f32> {
    let scale = scores.scale as f64;
    let mut out = vec![0.0f32; rows.len() * n_q * hd];
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        for h in 0..n_q {
            let kvh = h / (n_q / n_kv);
            let qv = &q[(r * n_q + h) * hd..(r * n_q + h + 1) * hd];
            let at = |t: usize| ((seq * cache_len + t) * n_kv + kvh) * hd;
            let keys = scores.keys(if scores.causal { pos } else { cache_len - 1 });
            let s: Vec<f64> = keys
                .clone()
                .map(|t| {
                    let k = &k_cache[at(t)..at(t) + hd];
                    qv.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = s.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = w.iter().sum();
            for i in 0..hd {
                let v: f64 = keys.clone().zip(&w).map(|(t, w)| w * v_cache[at(t) + i] as f64).sum();
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
    (cache_len, scores): (usize, Scores),
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let scale = scores.scale as f64;
    let mut dq = vec![0.0f64; q.len()];
    let mut dk = vec![0.0f64; k_cache.len()];
    let mut dv = vec![0.0f64; v_cache.len()];
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        for h in 0..n_q {
            let kvh = h / (n_q / n_kv);
            let qb = (r * n_q + h) * hd;
            let at = |t: usize| ((seq * cache_len + t) * n_kv + kvh) * hd;
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
            let keys: Vec<usize> = scores.keys(pos).collect();
            let s: Vec<f64> =
                keys.iter().map(|&t| dot(&q[qb..qb + hd], &k_cache[at(t)..at(t) + hd]) * scale).collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = s.iter().map(|s| (s - m).exp()).sum();
            let probs: Vec<f64> = s.iter().map(|s| (s - m).exp() / total).collect();
            let dp: Vec<f64> =
                keys.iter().map(|&t| dot(&dout[qb..qb + hd], &v_cache[at(t)..at(t) + hd])).collect();
            let delta: f64 = (0..keys.len()).map(|i| probs[i] * dp[i]).sum();
            for (j, &t) in keys.iter().enumerate() {
                let ds = probs[j] * (dp[j] - delta);
                for i in 0..hd {
                    dq[qb + i] += ds * k_cache[at(t) + i] as f64 * scale;
                    dk[at(t) + i] += ds * q[qb + i] as f64 * scale;
                    dv[at(t) + i] += probs[j] * dout[qb + i] as f64;
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

    /// Plain causal attention, and with Gemma's scale and a window of 2 of the 4 positions.
    #[test]
    fn attention_backward_matches_finite_differences() {
        let (n_q, n_kv, hd, cache_len) = (4, 2, 3, 4);
        let rows: Vec<(usize, usize)> = (0..cache_len).map(|p| (0, p)).chain([(1, 0), (1, 1)]).collect();
        let q = rand_vec(1, rows.len() * n_q * hd, 1.0);
        let k = rand_vec(2, 2 * cache_len * n_kv * hd, 1.0);
        let v = rand_vec(3, k.len(), 1.0);
        let dy = rand_vec(4, q.len(), 1.0);
        let shape = (n_q, n_kv, hd);
        for scores in [Scores::causal(hd), Scores { scale: 0.3, window: Some(2), causal: true }] {
            let len = (cache_len, scores);
            let (dq, dk, dv) = attention_backward(&q, &k, &v, &rows, shape, len, &dy);
            check_gradient(&q, &dq, &dy, |q| attention(q, &k, &v, &rows, shape, len), "dq");
            check_gradient(&k, &dk, &dy, |k| attention(&q, k, &v, &rows, shape, len), "dk");
            check_gradient(&v, &dv, &dy, |v| attention(&q, &k, v, &rows, shape, len), "dv");
        }
    }

    /// A window of w: position p sees p - w + 1 ..= p, so a key outside it changes nothing.
    #[test]
    fn window_hides_older_keys() {
        let (shape, len) = ((1, 1, 2), 5);
        let q = rand_vec(1, 2, 1.0);
        let (mut k, v) = (rand_vec(2, len * 2, 1.0), rand_vec(3, len * 2, 1.0));
        let scores = Scores { scale: 0.5, window: Some(3), causal: true };
        let out = attention(&q, &k, &v, &[(0, 4)], shape, (len, scores));
        k[2] += 5.0;
        assert_eq!(attention(&q, &k, &v, &[(0, 4)], shape, (len, scores)), out, "key 1 is outside");
        k[4] += 5.0;
        assert_ne!(attention(&q, &k, &v, &[(0, 4)], shape, (len, scores)), out, "key 2 is inside");
    }
}
