//! Token (and learned position) embedding, `shaders/embed.wgsl`.

use super::groups;
use crate::gpu::{shader::Define, Sharded, Step, Tensor};

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
        v.push(("embed_backward", vec![("POS", pos)]));
    }
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

/// Gradient of [`embed`]: `d_table[ids[r]] += dy[r] * scale` for `n_rows` rows; with `rows`
/// (the row table) the positions' table instead, `d_pos[position of r] += dy[r]`. One
/// dispatch per shard of the gradient.
pub fn embed_backward(step: &mut Step, index: EmbedIndex, dy: &Tensor, d_table: &Sharded, n_rows: usize) {
    let d = d_table.shape[1];
    assert!(dy.numel() >= n_rows * d);
    let (index, pos, scale) = match index {
        EmbedIndex::Ids(ids, scale) => (ids, 0, scale),
        EmbedIndex::Positions(rows) => (rows, 1, 1.0),
    };
    let pipeline = step.gpu.pipeline("embed_backward", &[("POS", pos)]);
    for (first, d_table) in d_table.rows() {
        let params = Params::new(n_rows, d, (first, d_table.shape[0]), scale);
        step.dispatch(pipeline.clone(), &params, &bind![index, dy, d_table], groups(d, 64));
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

    #[test]
    fn embed_backward_adds_rows_by_index() {
        let (v, d, p) = (40, 70, 9);
        let ids = [3u32, 0, 39, 3, 12, 20];
        let rows = [0u32, 5, 0, 6, 1, 0, 1, 5, 2, 0, 2, 1];
        let dy = rand_vec(1, 6 * d, 1.0);
        let mut want = vec![0.0f32; v * d];
        let mut want_pos = vec![0.0f32; p * d];
        for r in 0..6 {
            for i in 0..d {
                want[ids[r] as usize * d + i] += dy[r * d + i] * 3.0;
                want_pos[rows[2 * r + 1] as usize * d + i] += dy[r * d + i];
            }
        }
        for gpu in devices() {
            let it = gpu.upload_u32("ids", &[6], &ids).unwrap();
            let rt = gpu.upload_u32("rows", &[6, 2], &rows).unwrap();
            let dyt = gpu.upload_f32("dy", &[6, d], &dy).unwrap();
            let dt = gpu.zeros_sharded("dt", &[v, d], DType::F32).unwrap();
            let dp = gpu.zeros_sharded("dp", &[p, d], DType::F32).unwrap();
            let mut step = Step::new(gpu);
            embed_backward(&mut step, EmbedIndex::Ids(&it, 3.0), &dyt, &dt, 6);
            embed_backward(&mut step, EmbedIndex::Positions(&rt), &dyt, &dp, 6);
            step.submit().unwrap();
            let shards = dt.shards.len();
            assert_close(
                &gpu.read_sharded_f32(&dt).unwrap(),
                &want,
                1e-7,
                &format!("token table, {shards} shards"),
            );
            assert_close(&gpu.read_sharded_f32(&dp).unwrap(), &want_pos, 1e-7, "position table");
        }
    }
}
