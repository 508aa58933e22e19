/// Statistics of one logit row: (log-sum-exp, entropy in nats, argmax).
pub fn logit_stats(z: &[f32]) -> (f64, f64, usize) {
    let mut arg = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[arg] {
            arg = i;
        }
    }
    let m = z[arg] as f64;
    let total: f64 = z.iter().map(|&v| (v as f64 - m).exp()).sum();
    let lse = m + total.ln();
    let entropy = -z
        .iter()
        .map(|&v| {
            let lp = v as f64 - lse;
            lp.exp() * lp
        })
        .sum::<f64>();
    (lse, entropy, arg)
}
