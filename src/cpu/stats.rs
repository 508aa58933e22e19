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

/// Final-logit soft-capping: `cap · tanh(z / cap)` (Gemma's `final_logit_softcapping`).
pub fn softcap(z: &[f32], cap: f32) -> Vec<f32> {
    z.iter().map(|&v| (cap as f64 * (v as f64 / cap as f64).tanh()) as f32).collect()
}

/// Mean softmax cross-entropy over the rows that have a target (`None`: no target), of the
/// logits soft-capped by `cap` if given: returns (per-row losses, gradient of the mean with
/// respect to the raw logits).
pub fn cross_entropy(raw: &[f32], targets: &[Option<u32>], cap: Option<f32>) -> (Vec<f32>, Vec<f32>) {
    let logits = match cap {
        Some(cap) => softcap(raw, cap),
        None => raw.to_vec(),
    };
    let vocab = logits.len() / targets.len();
    let n_targets = targets.iter().flatten().count().max(1) as f64;
    let mut losses = Vec::new();
    let mut grad = vec![0.0f32; logits.len()];
    for (r, t) in targets.iter().enumerate() {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let Some(t) = t else {
            losses.push(0.0);
            continue;
        };
        let (lse, _, _) = logit_stats(row);
        losses.push((lse - row[*t as usize] as f64) as f32);
        for (i, &z) in row.iter().enumerate() {
            let onehot = if i == *t as usize { 1.0 } else { 0.0 };
            let dz = ((z as f64 - lse).exp() - onehot) / n_targets;
            // d(cap · tanh(raw / cap)) / d raw = 1 - tanh²(raw / cap).
            let dcap = cap.map_or(1.0, |cap| 1.0 - (raw[r * vocab + i] as f64 / cap as f64).tanh().powi(2));
            grad[r * vocab + i] = (dz * dcap) as f32;
        }
    }
    (losses, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_data::{check_gradient, rand_vec};

    /// With and without soft-capping; the cap (2) is below the logits' range (±3), so the
    /// capped gradient differs from the plain one where it is checked.
    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let targets = [Some(3), None, Some(0)];
        let z = rand_vec(1, 3 * 7, 3.0);
        for cap in [None, Some(2.0)] {
            let (_, grad) = cross_entropy(&z, &targets, cap);
            let mean_loss = |z: &[f32]| {
                let total: f32 = cross_entropy(z, &targets, cap).0.iter().sum();
                vec![total / 2.0]
            };
            check_gradient(&z, &grad, &[1.0], mean_loss, &format!("cross-entropy, cap {cap:?}"));
        }
        let (plain, capped) = (cross_entropy(&z, &targets, None), cross_entropy(&z, &targets, Some(2.0)));
        assert!(plain.1.iter().zip(&capped.1).any(|(a, b)| (a - b).abs() > 1e-2));
    }

    #[test]
    fn softcap_bounds_and_keeps_small_logits() {
        let capped = softcap(&[0.0, 0.01, 100.0, -1e30], 30.0);
        assert_eq!(capped[0], 0.0);
        assert!((capped[1] - 0.01).abs() < 1e-8);
        assert!((29.9..30.0).contains(&capped[2]), "{}", capped[2]);
        assert_eq!(capped[3], -30.0);
    }
}
