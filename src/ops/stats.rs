//! Log-softmax statistics of logit rows, `shaders/stats.wgsl`: what scoring, generation
//! records and metrics read back instead of whole logit rows; and greedy decoding's pick, the
//! argmax with its statistics, fed straight into the next decode step so that only the token
//! id (and its statistics) travels back to the host.

use super::groups;
use crate::gpu::{shader::Define, DType, Step, Tensor};

/// `targets` value meaning "no target for this row".
pub const NO_TARGET: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    vocab: u32,
    parts: u32,
    /// The row a pick is made from (PICK).
    row: u32,
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
    vec![
        ("stats", vec![("SPLIT", 1)]),
        ("stats", vec![("SPLIT", 0)]),
        ("stats", vec![("SPLIT", 0), ("PICK", 1)]),
    ]
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
    let params = Params { n_rows: n_rows as u32, vocab: vocab as u32, parts: parts as u32, row: 0 };
    let split = step.gpu.pipeline("stats", &[("SPLIT", 1)]);
    step.dispatch(split, &params, &bind![logits, partials], groups(n_rows * parts, 1));
    let combine = step.gpu.pipeline("stats", &[("SPLIT", 0)]);
    step.dispatch(combine, &params, &bind![logits, partials, targets, out], groups(n_rows, 1));
}

/// Greedy decoding's pick: the argmax `id` of `logits` row 0 (as
/// [`crate::generate::sampler::argmax`]: ties to the lowest index, NaN never, 0 when nothing is
/// a number). With `(seq, pos)` the entry `row` of the row table `rows`, writes `ids[0] = id`,
/// row-table entry 0 = `(seq, pos + 1)` (the next step's input) and `out[pos + 1] = [id,
/// log-prob, entropy, lse]` (f32 bits after the id; `out` is `[positions, 4]` u32, skipped past
/// its end). `partials` is working space of [`partials_len`]`(1, vocab)` elements.
pub fn greedy_pick(
    step: &mut Step,
    logits: &Tensor,
    partials: &Tensor,
    (ids, rows, row): (&Tensor, &Tensor, usize),
    out: &Tensor,
) {
    let vocab = *logits.shape.last().unwrap();
    assert!(partials.numel() >= partials_len(1, vocab) && rows.numel() >= 2 * (row + 1) && out.shape[1] == 4);
    let parts = parts(vocab);
    let params = Params { n_rows: 1, vocab: vocab as u32, parts: parts as u32, row: row as u32 };
    let split = step.gpu.pipeline("stats", &[("SPLIT", 1)]);
    step.dispatch(split, &params, &bind![logits, partials], groups(parts, 1));
    let pick = step.gpu.pipeline("stats", &[("SPLIT", 0), ("PICK", 1)]);
    step.dispatch(pick, &params, &bind![logits, partials, ids, rows, out], [1, 1, 1]);
}

/// Arrival counters [`HeadPick::arrived`] holds: one per part of the row, then one for the parts.
pub const PICK_ARRIVALS: usize = MAX_PARTS + 1;

/// [`greedy_pick`] made by the LM head's last workgroups instead (matvec.wgsl with PICK,
/// natively; see [`crate::ops::matmul::linear_picked`]): the same parts, partials and merge,
/// so the same pick and statistics to the bit, with no dispatch of its own.
#[derive(Clone, Copy)]
pub struct HeadPick<'a> {
    /// Working space of [`partials_len`]`(1, vocab)` elements.
    pub partials: &'a Tensor,
    /// [`PICK_ARRIVALS`] u32 counters, zero between dispatches (the kernel leaves them so).
    pub arrived: &'a Tensor,
    /// (ids, row table, entry) as [`greedy_pick`] takes them.
    pub input: (&'a Tensor, &'a Tensor, usize),
    /// `[positions, 4]` u32, as [`greedy_pick`]'s.
    pub out: &'a Tensor,
}

/// matvec.wgsl's uniform block's tail with PICK.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PickParams {
    row: u32,
    parts: u32,
}

impl<'a> HeadPick<'a> {
    /// The epilogue's settings for a row of `vocab` logits, and its buffers in binding order.
    pub fn epilogue(&self, vocab: usize) -> (PickParams, [(&'static str, &'a Tensor); 5]) {
        let (ids, rows, row) = self.input;
        assert!(self.partials.numel() >= partials_len(1, vocab) && rows.numel() >= 2 * (row + 1));
        assert!(self.out.shape[1] == 4 && self.arrived.dtype == DType::U32);
        assert!(self.arrived.numel() >= PICK_ARRIVALS);
        let params = PickParams { row: row as u32, parts: parts(vocab) as u32 };
        (params, bind![partials = self.partials, ids, rows, out = self.out, arrived = self.arrived])
    }
}

/// One entry of [`greedy_pick`]'s (or [`super::draw::draw`]'s) output, decoded.
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
    use crate::generate::sampler::argmax;
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

    /// Picks from `z` on the GPU, the row table's entry 1 at position `pos`.
    fn pick(z: &[f32], pos: u32) -> (Pick, Vec<u32>, Vec<u32>) {
        let gpu = gpu();
        let v = z.len();
        let zt = gpu.upload_f32("z", &[1, v], z).unwrap();
        let parts = gpu.zeros("parts", &[partials_len(1, v)], DType::F32).unwrap();
        let ids = gpu.upload_u32("ids", &[2], &[7, 7]).unwrap();
        let rows = gpu.upload_u32("rows", &[2, 2], &[9, 9, 0, pos]).unwrap();
        let out = gpu.zeros("out", &[8, 4], DType::U32).unwrap();
        let mut step = Step::new(gpu);
        greedy_pick(&mut step, &zt, &parts, (&ids, &rows, 1), &out);
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
