//! Token (and learned position) embedding, `shaders/embed.wgsl`, and its gradient,
//! `shaders/embed_backward.wgsl`.

use super::groups;
use crate::gpu::{shader::Define, DType, Gpu, Sharded, Step, Tensor};
use anyhow::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    d: u32,
    /// The table shard's first row and rows.
    first: u32,
    rows: u32,
    scale: f32,
    _pad: [u32; 3],
}

impl Params {
    fn new(n_rows: usize, d: usize, (first, rows): (usize, usize), scale: f32) -> Params {
        let (first, rows) = (first as u32, rows as u32);
        Params { n_rows: n_rows as u32, d: d as u32, first, rows, scale, _pad: [0; 3] }
    }
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    let mut v = Vec::new();
    for pos in [0, 1] {
        v.push(("embed", vec![("POS", pos)]));
        v.push(("embed_backward", vec![("SORT", 1), ("POS", pos)]));
    }
    v.push(("embed_backward", vec![("HEADS", 1)]));
    v.push(("embed_backward", vec![("SUM", 1)]));
    v
}

/// `out[r] = table[ids[r]] * scale (+ pos_table[position of r])` for `n_rows` rows, one
/// dispatch per shard of the table. `positions` is the (row table, position table) pair for
/// learned positions.
pub fn embed(
    step: &mut Step,
    ids: &Tensor,
    (table, scale): (&Sharded, f32),
    positions: Option<(&Tensor, &Tensor)>,
    out: &Tensor,
    n_rows: usize,
) {
    let d = table.shape[1];
    assert!(ids.numel() >= n_rows && out.numel() >= n_rows * d);
    let pipeline = step.gpu.pipeline("embed", &[("POS", positions.is_some() as u32)]);
    for (first, table) in table.rows() {
        let params = Params::new(n_rows, d, (first, table.shape[0]), scale);
        let mut buffers = bind![ids, table, out].to_vec();
        if let Some((rows, pos_table)) = positions {
            buffers.extend(bind![rows, pos_table]);
        }
        step.dispatch(pipeline.clone(), &params, &buffers, groups(n_rows, 1));
    }
}

/// Sorted rows per chunk of [`embed_backward`] (`CHUNK` in embed_backward.wgsl): no thread
/// sums more than this many rows, plus one partial sum per later chunk of a long run.
const CHUNK: usize = 64;

/// Rows one workgroup of the gradient's SORT ranks (`SORT_ROWS` in embed_backward.wgsl).
const SORT_ROWS: usize = 16;

/// The working buffers of [`embed_backward`] over up to `rows` rows of width `d`: the rows
/// sorted by index, and per chunk of them and column the sum of a run that began before.
pub struct Scratch {
    order: Tensor,
    heads: Tensor,
}

impl Scratch {
    pub fn new(gpu: &Gpu, rows: usize, d: usize) -> Result<Scratch> {
        Ok(Scratch {
            order: gpu.zeros("embed grad order", &[rows, 2], DType::U32)?,
            heads: gpu.zeros("embed grad heads", &[heads_bound(rows, d)], DType::F32)?,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.order.bytes() + self.heads.bytes()
    }
}

/// A bound on the heads of `rows` rows of width `d` (one per chunk and column), linear in
/// `rows` so that a memory plan can count it per token.
fn heads_bound(rows: usize, d: usize) -> usize {
    rows * d.div_ceil(CHUNK) + d
}

/// The 4-byte elements of a [`Scratch`] over `rows` rows of width `d`.
pub fn scratch_len(rows: usize, d: usize) -> usize {
    2 * rows + heads_bound(rows, d)
}

/// Gradient of [`embed`]: `d_table[ids[r]] += dy[r] * scale` for `n_rows` rows; with `rows`
/// (the row table) the positions' table instead, `d_pos[position of r] += dy[r]`. Rows
/// sharing an index are summed in a fixed order (the same bits on every run) and added once:
/// the rows are sorted by index, then each run of an index is summed by chunks of 64 sorted
/// rows (embed_backward.wgsl). Two dispatches, then one per shard of the gradient.
pub fn embed_backward(
    step: &mut Step,
    index: EmbedIndex,
    dy: &Tensor,
    d_table: &Sharded,
    n_rows: usize,
    scratch: &Scratch,
) {
    let d = d_table.shape[1];
    let chunks = n_rows.div_ceil(CHUNK);
    assert!(dy.numel() >= n_rows * d && chunks <= 65_535);
    assert!(scratch.order.numel() >= 2 * n_rows && scratch.heads.numel() >= chunks * d);
    let (index, pos, scale) = match index {
        EmbedIndex::Ids(ids, scale) => (ids, 0, scale),
        EmbedIndex::Positions(rows) => (rows, 1, 1.0),
    };
    let (order, heads) = (&scratch.order, &scratch.heads);
    let params = Params::new(n_rows, d, (0, 0), scale);
    let sort = step.gpu.pipeline("embed_backward", &[("SORT", 1), ("POS", pos)]);
    step.dispatch(sort, &params, &bind![index, order], groups(n_rows, SORT_ROWS));
    let grid = |chunks: usize| [d.div_ceil(64) as u32, chunks as u32, 1];
    if chunks > 1 {
        let pipeline = step.gpu.pipeline("embed_backward", &[("HEADS", 1)]);
        step.dispatch(pipeline, &params, &bind![order, dy, heads], grid(chunks - 1));
    }
    let sum = step.gpu.pipeline("embed_backward", &[("SUM", 1)]);
    for (first, d_table) in d_table.rows() {
        let params = Params::new(n_rows, d, (first, d_table.shape[0]), scale);
        step.dispatch(sum.clone(), &params, &bind![order, dy, heads, d_table], grid(chunks));
    }
}

/// Which table an embedding gradient goes to: token ids, or the row table's positions.
#[derive(Clone, Copy)]
pub enum EmbedIndex<'a> {
    /// Token ids, and the scale the forward pass applied to the table.
    Ids(&'a Tensor, f32),
    Positions(&'a Tensor),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{DType, WeightFormat};
    use crate::ops::test_util::*;

    /// The devices the tests run on: the shared one (each table one shard) and one whose
    /// binding holds 10 rows of 70 floats (the 40-row token table in 4 shards).
    fn devices() -> [&'static crate::gpu::Gpu; 2] {
        [gpu(), gpu_with_binding(10 * 70 * 4)]
    }

    #[test]
    fn embed_gathers_rows_and_adds_positions() {
        let (v, d, p) = (40, 70, 9);
        let table = rand_vec(1, v * d, 1.0);
        let pos = rand_vec(2, p * d, 1.0);
        let ids = [3u32, 0, 39, 3, 12, 20];
        let rows = [0u32, 5, 0, 6, 1, 0, 1, 8, 2, 0, 2, 1]; // (sequence, position)
        let mut want = Vec::new();
        let mut want_pos = Vec::new();
        for (r, &id) in ids.iter().enumerate() {
            let at = rows[2 * r + 1] as usize;
            for i in 0..d {
                want.push(table[id as usize * d + i]);
                want_pos.push(table[id as usize * d + i] + pos[at * d + i]);
            }
        }
        let want_scaled: Vec<f32> = want.iter().map(|v| v * 8.3666).collect();
        for gpu in devices() {
            let tt =
                gpu.upload_sharded("t", &[v, d], WeightFormat::F32, bytemuck::cast_slice(&table)).unwrap();
            let pt = gpu.upload_f32("p", &[p, d], &pos).unwrap();
            let it = gpu.upload_u32("ids", &[6], &ids).unwrap();
            let rt = gpu.upload_u32("rows", &[6, 2], &rows).unwrap();
            let plain = gpu.zeros("o", &[6, d], DType::F32).unwrap();
            let with_pos = gpu.zeros("o2", &[6, d], DType::F32).unwrap();
            let scaled = gpu.zeros("o3", &[6, d], DType::F32).unwrap();
            let mut step = Step::new(gpu);
            embed(&mut step, &it, (&tt, 1.0), None, &plain, 6);
            embed(&mut step, &it, (&tt, 1.0), Some((&rt, &pt)), &with_pos, 6);
            // Gemma's sqrt(hidden), in f32.
            embed(&mut step, &it, (&tt, 8.3666), None, &scaled, 6);
            step.submit().unwrap();
            let shards = tt.shards.len();
            assert_close(&gpu.read_f32(&plain).unwrap(), &want, 0.0, &format!("embed, {shards} shards"));
            assert_close(&gpu.read_f32(&scaled).unwrap(), &want_scaled, 0.0, "scaled embed");
            assert_close(&gpu.read_f32(&with_pos).unwrap(), &want_pos, 1e-7, "embed+pos");
        }
        assert_eq!(devices().map(|g| g.shard_rows("t", &[v, d], DType::F32).unwrap()), [40, 10]);
    }

    /// `d_table[index[r]] += dy[r] * scale` over the rows in order, in f64, and the sum of the
    /// terms' magnitudes per element (what float rounding of any order is relative to).
    fn cpu_embed_backward(index: &[u32], dy: &[f32], table: &[f32], scale: f32) -> (Vec<f64>, Vec<f64>) {
        let d = dy.len() / index.len();
        let mut sums: Vec<f64> = table.iter().map(|&v| v as f64).collect();
        let mut magnitudes: Vec<f64> = sums.iter().map(|v| v.abs()).collect();
        for (r, &at) in index.iter().enumerate() {
            for i in 0..d {
                let term = dy[r * d + i] as f64 * scale as f64;
                sums[at as usize * d + i] += term;
                magnitudes[at as usize * d + i] += term.abs();
            }
        }
        (sums, magnitudes)
    }

    /// Each element within 1e-6 of the magnitude of its terms.
    fn assert_sums(got: &[f32], (want, magnitudes): &(Vec<f64>, Vec<f64>), what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (*g as f64 - w).abs();
            assert!(err <= 1e-6 * magnitudes[i], "{what}: element {i}: got {g}, want {w}");
        }
    }

    /// Few rows (one chunk) and 700 (11 chunks of 64): most ids 7, so its run spans
    /// chunks, the rest spread over the table; positions repeat every 9 rows. Added into
    /// tables that already hold values, on the shared device and on one whose binding holds
    /// `dy` (700 rows of 70) but not the 1000-row token table (2 shards), the same bits twice.
    #[test]
    fn embed_backward_adds_rows_by_index() {
        let (v, d, p) = (1000, 70, 9);
        for n in [6, 700] {
            let (common, spread) = (rand_vec(3, n, 1.0), rand_vec(6, n, 1.0));
            let id = |(c, s): (&f32, &f32)| {
                if *c < 0.2 {
                    7
                } else {
                    ((s + 1.0) / 2.0 * v as f32) as u32 % v as u32
                }
            };
            let ids: Vec<u32> = common.iter().zip(&spread).map(id).collect();
            let rows: Vec<u32> = (0..n as u32).flat_map(|r| [r / p as u32, r % p as u32]).collect();
            let positions: Vec<u32> = rows.iter().skip(1).step_by(2).copied().collect();
            let dy = rand_vec(1, n * d, 1.0);
            let (table, pos_table) = (rand_vec(4, v * d, 1.0), rand_vec(5, p * d, 1.0));
            let want = cpu_embed_backward(&ids, &dy, &table, 3.0);
            let want_pos = cpu_embed_backward(&positions, &dy, &pos_table, 1.0);
            let mut shard_counts = Vec::new();
            for gpu in [gpu(), gpu_with_binding(700 * 70 * 4)] {
                let it = gpu.upload_u32("ids", &[n], &ids).unwrap();
                let rt = gpu.upload_u32("rows", &[n, 2], &rows).unwrap();
                let dyt = gpu.upload_f32("dy", &[n, d], &dy).unwrap();
                let scratch = Scratch::new(gpu, n, d).unwrap();
                let run = || -> (Vec<f32>, Vec<f32>, usize) {
                    let upload = |t: &[f32], rows| {
                        gpu.upload_sharded("dt", &[rows, d], WeightFormat::F32, bytemuck::cast_slice(t))
                            .unwrap()
                    };
                    let (dt, dp) = (upload(&table, v), upload(&pos_table, p));
                    let mut step = Step::new(gpu);
                    embed_backward(&mut step, EmbedIndex::Ids(&it, 3.0), &dyt, &dt, n, &scratch);
                    embed_backward(&mut step, EmbedIndex::Positions(&rt), &dyt, &dp, n, &scratch);
                    step.submit().unwrap();
                    (gpu.read_sharded_f32(&dt).unwrap(), gpu.read_sharded_f32(&dp).unwrap(), dt.shards.len())
                };
                let (got, got_pos, shards) = run();
                shard_counts.push(shards);
                let what = format!("{n} rows, token table in {shards} shards");
                assert_sums(&got, &want, &what);
                assert_sums(&got_pos, &want_pos, &format!("{n} rows, position table"));
                let bits = |t: &[f32]| t.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let (again, again_pos, _) = run();
                assert_eq!(bits(&again), bits(&got), "{what}: a second run");
                assert_eq!(bits(&again_pos), bits(&got_pos), "{n} rows, position table: a second run");
            }
            assert_eq!(shard_counts, [1, 2]);
        }
    }
}
