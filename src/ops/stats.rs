//! Log-softmax statistics of logit rows, `shaders/stats.wgsl`: what scoring, generation
//! records and metrics read back instead of whole logit rows.

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

/// `targets` value meaning "no target for this row".
pub const NO_TARGET: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    vocab: u32,
    _p: [u32; 2],
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![("stats", vec![])]
}

/// Per row of `logits` `[n_rows, vocab]`: `out[r] = [lse, entropy, logprob(targets[r]), argmax]`.
pub fn logit_stats(step: &mut Step, logits: &Tensor, targets: &Tensor, out: &Tensor, n_rows: usize) {
    let vocab = *logits.shape.last().unwrap();
    assert!(logits.numel() >= n_rows * vocab && targets.numel() >= n_rows && out.numel() >= 4 * n_rows);
    let params = Params { n_rows: n_rows as u32, vocab: vocab as u32, _p: [0; 2] };
    let pipeline = step.gpu.pipeline("stats", &[]);
    step.dispatch(pipeline, &params, &[logits, targets, out], groups(n_rows, 1));
}

/// One row of [`logit_stats`] output, decoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowStats {
    pub lse: f32,
    pub entropy: f32,
    pub target_logprob: f32,
    pub argmax: u32,
}

impl RowStats {
    pub fn parse(flat: &[f32]) -> Vec<RowStats> {
        flat.chunks(4)
            .map(|c| RowStats { lse: c[0], entropy: c[1], target_logprob: c[2], argmax: c[3] as u32 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    #[test]
    fn stats_match_cpu() {
        let gpu = gpu();
        let (n, v) = (3, 1000);
        let mut z = rand_vec(1, n * v, 6.0);
        z[v + 7] = 40.0; // a peaked row
        z[2 * v + 5] = 9.0; // a tie: the lower index must win
        z[2 * v + 900] = 9.0;
        let targets = [7u32, 7, NO_TARGET];
        let zt = gpu.upload_f32("z", &[n, v], &z).unwrap();
        let tt = gpu.upload_u32("t", &[n], &targets).unwrap();
        let out = gpu.zeros("out", &[n, 4], DType::F32).unwrap();
        let mut step = Step::new(gpu);
        logit_stats(&mut step, &zt, &tt, &out, n);
        step.submit().unwrap();
        let got = RowStats::parse(&gpu.read_f32(&out).unwrap());
        for r in 0..n {
            let row = &z[r * v..(r + 1) * v];
            let (lse, ent, arg) = cpu::stats::logit_stats(row);
            assert!((got[r].lse as f64 - lse).abs() < 1e-4, "lse row {r}");
            assert!(
                (got[r].entropy as f64 - ent).abs() < 1e-4,
                "entropy row {r}: {} vs {ent}",
                got[r].entropy
            );
            assert_eq!(got[r].argmax as usize, arg, "argmax row {r}");
            if targets[r] != NO_TARGET {
                let want = row[targets[r] as usize] as f64 - lse;
                assert!((got[r].target_logprob as f64 - want).abs() < 1e-4);
            }
        }
        assert_eq!(got[2].argmax, 5);
    }
}
