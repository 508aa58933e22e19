//! Token (and learned position) embedding, `shaders/embed.wgsl`.

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    d: u32,
    vocab: u32,
    scale: f32,
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    let mut v = Vec::new();
    for pos in [0, 1] {
        v.push(("embed", vec![("POS", pos)]));
        v.push(("embed_backward", vec![("POS", pos)]));
    }
    v
}

/// `out[r] = table[ids[r]] * scale (+ pos_table[position of r])` for `n_rows` rows.
/// `positions` is the (row table, position table) pair for learned positions.
pub fn embed(
    step: &mut Step,
    ids: &Tensor,
    (table, scale): (&Tensor, f32),
    positions: Option<(&Tensor, &Tensor)>,
    out: &Tensor,
    n_rows: usize,
) {
    let (vocab, d) = (table.shape[0], table.shape[1]);
    assert!(ids.numel() >= n_rows && out.numel() >= n_rows * d);
    let params = Params { n_rows: n_rows as u32, d: d as u32, vocab: vocab as u32, scale };
    let pipeline = step.gpu.pipeline("embed", &[("POS", positions.is_some() as u32)]);
    let mut buffers = bind![ids, table, out].to_vec();
    if let Some((rows, pos_table)) = positions {
        buffers.extend(bind![rows, pos_table]);
    }
    step.dispatch(pipeline, &params, &buffers, groups(n_rows, 1));
}

/// Gradient of [`embed`]: `d_table[ids[r]] += dy[r] * scale` for `n_rows` rows; with `rows`
/// (the row table) the positions' table instead, `d_pos[position of r] += dy[r]`.
pub fn embed_backward(step: &mut Step, index: EmbedIndex, dy: &Tensor, d_table: &Tensor, n_rows: usize) {
    let (table_rows, d) = (d_table.shape[0], d_table.shape[1]);
    assert!(dy.numel() >= n_rows * d);
    let (index, pos, scale) = match index {
        EmbedIndex::Ids(ids, scale) => (ids, 0, scale),
        EmbedIndex::Positions(rows) => (rows, 1, 1.0),
    };
    let params = Params { n_rows: n_rows as u32, d: d as u32, vocab: table_rows as u32, scale };
    let pipeline = step.gpu.pipeline("embed_backward", &[("POS", pos)]);
    step.dispatch(pipeline, &params, &bind![index, dy, d_table], groups(d, 64));
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
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    #[test]
    fn embed_gathers_rows_and_adds_positions() {
        let gpu = gpu();
        let (v, d, p) = (11, 70, 9);
        let table = rand_vec(1, v * d, 1.0);
        let pos = rand_vec(2, p * d, 1.0);
        let ids = [3u32, 0, 10, 3];
        let rows = [0u32, 5, 0, 6, 1, 0, 1, 8]; // (sequence, position)
        let tt = gpu.upload_f32("t", &[v, d], &table).unwrap();
        let pt = gpu.upload_f32("p", &[p, d], &pos).unwrap();
        let it = gpu.upload_u32("ids", &[4], &ids).unwrap();
        let rt = gpu.upload_u32("rows", &[4, 2], &rows).unwrap();
        let plain = gpu.zeros("o", &[4, d], DType::F32).unwrap();
        let with_pos = gpu.zeros("o2", &[4, d], DType::F32).unwrap();
        let scaled = gpu.zeros("o3", &[4, d], DType::F32).unwrap();
        let mut step = Step::new(gpu);
        embed(&mut step, &it, (&tt, 1.0), None, &plain, 4);
        embed(&mut step, &it, (&tt, 1.0), Some((&rt, &pt)), &with_pos, 4);
        // Gemma's sqrt(hidden), in f32.
        embed(&mut step, &it, (&tt, 8.3666), None, &scaled, 4);
        step.submit().unwrap();
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
        assert_close(&gpu.read_f32(&plain).unwrap(), &want, 0.0, "embed");
        assert_close(&gpu.read_f32(&scaled).unwrap(), &want_scaled, 0.0, "scaled embed");
        assert_close(&gpu.read_f32(&with_pos).unwrap(), &want_pos, 1e-7, "embed+pos");
    }

    #[test]
    fn embed_backward_adds_rows_by_index() {
        let gpu = gpu();
        let (v, d, p) = (11, 70, 9);
        let ids = [3u32, 0, 10, 3];
        let rows = [0u32, 5, 0, 6, 1, 0, 1, 5];
        let dy = rand_vec(1, 4 * d, 1.0);
        let it = gpu.upload_u32("ids", &[4], &ids).unwrap();
        let rt = gpu.upload_u32("rows", &[4, 2], &rows).unwrap();
        let dyt = gpu.upload_f32("dy", &[4, d], &dy).unwrap();
        let dt = gpu.zeros("dt", &[v, d], DType::F32).unwrap();
        let dp = gpu.zeros("dp", &[p, d], DType::F32).unwrap();
        let mut step = Step::new(gpu);
        embed_backward(&mut step, EmbedIndex::Ids(&it, 3.0), &dyt, &dt, 4);
        embed_backward(&mut step, EmbedIndex::Positions(&rt), &dyt, &dp, 4);
        step.submit().unwrap();
        let mut want = vec![0.0f32; v * d];
        let mut want_pos = vec![0.0f32; p * d];
        for r in 0..4 {
            for i in 0..d {
                want[ids[r] as usize * d + i] += dy[r * d + i] * 3.0;
                want_pos[rows[2 * r + 1] as usize * d + i] += dy[r * d + i];
            }
        }
        assert_close(&gpu.read_f32(&dt).unwrap(), &want, 1e-7, "token table");
        assert_close(&gpu.read_f32(&dp).unwrap(), &want_pos, 1e-7, "position table");
    }
}
