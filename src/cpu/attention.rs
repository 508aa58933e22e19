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
