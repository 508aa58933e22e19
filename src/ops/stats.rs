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
    parts: u32,
    _p: u32,
}

/// Logits per workgroup of the first pass: a 49k vocabulary spreads over 48 workgroups (a
/// single one took ~0.3 ms per decoded token on an H200), a small one stays in one.
const PART_LEN: usize = 1024;
/// At most this many parts per row (one per thread of the combining workgroup's first step).
const MAX_PARTS: usize = 64;

/// Parts a row of `vocab` logits is split into.
fn parts(vocab: usize) -> usize {
    vocab.div_ceil(PART_LEN).clamp(1, MAX_PARTS)
}

/// Elements of the partials buffer [`logit_stats`] needs for `rows` rows of `vocab` logits.
pub fn partials_len(rows: usize, vocab: usize) -> usize {
    rows * parts(vocab) * 4
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![("stats", vec![("SPLIT", 1)]), ("stats", vec![("SPLIT", 0)])]
}

/// Per row of `logits` `[n_rows, vocab]`: `out[r] = [lse, entropy, logprob(targets[r]), argmax]`.
/// `partials` is working space of [`partials_len`] elements.
pub fn logit_stats(
    step: &mut Step,
    logits: &Tensor,
    targets: &Tensor,
    (partials, out): (&Tensor, &Tensor),
    n_rows: usize,
) {
    let vocab = *logits.shape.last().unwrap();
    assert!(logits.numel() >= n_rows * vocab && targets.numel() >= n_rows && out.numel() >= 4 * n_rows);
    assert!(partials.numel() >= partials_len(n_rows, vocab));
    let parts = parts(vocab);
    let params = Params { n_rows: n_rows as u32, vocab: vocab as u32, parts: parts as u32, _p: 0 };
    let split = step.gpu.pipeline("stats", &[("SPLIT", 1)]);
    step.dispatch(split, &params, &[logits, partials], groups(n_rows * parts, 1));
    let combine = step.gpu.pipeline("stats", &[("SPLIT", 0)]);
    step.dispatch(combine, &params, &[logits, partials, targets, out], groups(n_rows, 1));
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

    /// Rows of 1000 logits (one part) and of 5000 (five parts, the tie across two of them).
    #[test]
    fn stats_match_cpu() {
        check(1000, 5, 900);
        check(5000, 1500, 4000);
    }

    /// Row 1 is peaked at 7; row 2 has the maximum twice, at `tie_a < tie_b`: `tie_a` must win.
    fn check(v: usize, tie_a: usize, tie_b: usize) {
        let gpu = gpu();
        let n = 3;
        let mut z = rand_vec(1, n * v, 6.0);
        z[v + 7] = 40.0;
        z[2 * v + tie_a] = 9.0;
        z[2 * v + tie_b] = 9.0;
        let targets = [7u32, 7, NO_TARGET];
        let zt = gpu.upload_f32("z", &[n, v], &z).unwrap();
        let tt = gpu.upload_u32("t", &[n], &targets).unwrap();
        let out = gpu.zeros("out", &[n, 4], DType::F32).unwrap();
        let partials = gpu.zeros("partials", &[partials_len(n, v)], DType::F32).unwrap();
        let mut step = Step::new(gpu);
        logit_stats(&mut step, &zt, &tt, (&partials, &out), n);
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
        assert_eq!(got[2].argmax as usize, tie_a);
    }
}
