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

/// Mean softmax cross-entropy over the rows that have a target (`None`: no target):
/// returns (per-row losses, gradient of the mean with respect to the logits).
pub fn cross_entropy(logits: &[f32], targets: &[Option<u32>]) -> (Vec<f32>, Vec<f32>) {
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
            grad[r * vocab + i] = (((z as f64 - lse).exp() - onehot) / n_targets) as f32;
        }
    }
    (losses, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_data::{check_gradient, rand_vec};

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let targets = [Some(3), None, Some(0)];
        let z = rand_vec(1, 3 * 7, 3.0);
        let (_, grad) = cross_entropy(&z, &targets);
        let mean_loss = |z: &[f32]| {
            let total: f32 = cross_entropy(z, &targets).0.iter().sum();
            vec![total / 2.0]
        };
        check_gradient(&z, &grad, &[1.0], mean_loss, "cross-entropy");
    }
}
