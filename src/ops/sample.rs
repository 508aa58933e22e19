//! Greedy sampling on the GPU, `shaders/sample.wgsl`: the pick of
//! [`crate::generate::sampler::argmax`] and its statistics, fed straight into the next
//! decode step so that only the token id (and its statistics) travels back to the host.

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

/// Logits each workgroup of the first pass reduces.
const PART: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    n_parts: u32,
    row: u32,
    _p: u32,
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![("sample", vec![("FINAL", 0)]), ("sample", vec![("FINAL", 1)])]
}

/// Rows of working space [`greedy`] needs for a vocabulary of `vocab` (`[parts, 4]` f32).
pub fn parts_for(vocab: usize) -> usize {
    vocab.div_ceil(PART)
}

/// Picks the argmax `id` of `logits` row 0 and, with `(seq, pos)` the entry `row` of the
/// row table `rows`, writes `ids[0] = id`, row-table entry 0 = `(seq, pos + 1)` (the next
/// step's input) and `out[pos + 1] = [id, log-prob, entropy, lse]` (f32 bits after the id;
/// `out` is `[positions, 4]` u32, skipped past its end). `parts` is working space.
pub fn greedy(
    step: &mut Step,
    logits: &Tensor,
    parts: &Tensor,
    (ids, rows, row): (&Tensor, &Tensor, usize),
    out: &Tensor,
) {
    let vocab = *logits.shape.last().unwrap();
    let n_parts = parts_for(vocab);
    assert!(parts.numel() >= 4 * n_parts && rows.numel() >= 2 * (row + 1) && out.shape[1] == 4);
    let params = Params { vocab: vocab as u32, n_parts: n_parts as u32, row: row as u32, _p: 0 };
    let pipeline = step.gpu.pipeline("sample", &[("FINAL", 0)]);
    step.dispatch(pipeline, &params, &[logits, parts], groups(n_parts, 1));
    let pipeline = step.gpu.pipeline("sample", &[("FINAL", 1)]);
    step.dispatch(pipeline, &params, &[parts, ids, rows, out], [1, 1, 1]);
}

/// One entry of [`greedy`]'s output, decoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    pub id: u32,
    pub logprob: f32,
    pub entropy: f32,
    pub lse: f32,
}

impl Pick {
    pub fn parse(words: &[u32]) -> Pick {
        let f = f32::from_bits;
        Pick { id: words[0], logprob: f(words[1]), entropy: f(words[2]), lse: f(words[3]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::generate::sampler::argmax;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    /// Picks from `z` on the GPU, the row table's entry 1 at position `pos`.
    fn pick(z: &[f32], pos: u32) -> (Pick, Vec<u32>, Vec<u32>) {
        let gpu = gpu();
        let v = z.len();
        let zt = gpu.upload_f32("z", &[1, v], z).unwrap();
        let parts = gpu.zeros("parts", &[parts_for(v), 4], DType::F32).unwrap();
        let ids = gpu.upload_u32("ids", &[2], &[7, 7]).unwrap();
        let rows = gpu.upload_u32("rows", &[2, 2], &[9, 9, 0, pos]).unwrap();
        let out = gpu.zeros("out", &[8, 4], DType::U32).unwrap();
        let mut step = Step::new(gpu);
        greedy(&mut step, &zt, &parts, (&ids, &rows, 1), &out);
        step.submit().unwrap();
        let out = gpu.read_u32(&out).unwrap();
        let at = 4 * (pos as usize + 1);
        (Pick::parse(&out[at.min(28)..]), gpu.read_u32(&ids).unwrap(), gpu.read_u32(&rows).unwrap())
    }

    #[test]
    fn greedy_matches_cpu_argmax_and_stats() {
        for (v, seed) in [(3000, 1), (512, 2), (49152, 3), (1025, 4)] {
            let mut z = rand_vec(seed, v, 6.0);
            // A tie across workgroups, and NaN above it: the lower index must win.
            z[v - 1] = 30.0;
            z[v / 3] = 30.0;
            z[v / 2] = f32::NAN;
            let (got, ids, rows) = pick(&z, 3);
            assert_eq!(got.id, argmax(&z), "vocab {v}");
            assert_eq!((ids[0], &rows[..2]), (got.id, &[0, 4][..]));
            let numbers: Vec<f32> = z.iter().copied().filter(|x| !x.is_nan()).collect();
            let (lse, entropy, _) = cpu::stats::logit_stats(&numbers);
            let logprob = z[got.id as usize] as f64 - lse;
            assert!((got.lse as f64 - lse).abs() < 1e-5, "lse {} vs {lse}", got.lse);
            assert!((got.entropy as f64 - entropy).abs() < 1e-5, "entropy {} vs {entropy}", got.entropy);
            assert!((got.logprob as f64 - logprob).abs() < 1e-5, "logprob {} vs {logprob}", got.logprob);
        }
    }

    #[test]
    fn greedy_handles_rows_without_numbers() {
        let (got, _, _) = pick(&[f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY], 0);
        assert_eq!(got.id, 1);
        let (got, _, _) = pick(&[f32::NAN; 5], 0);
        assert_eq!(got.id, 0);
        // Past the end of `out`: nothing written there, the pick still fed on.
        let (_, ids, rows) = pick(&[0.0, 2.0, 1.0], 7);
        assert_eq!((ids[0], rows[1]), (1, 8));
    }
}
