//! Causal grouped-query attention against the KV cache: `shaders/attention_flash.wgsl`, or
//! the same results from the per-row `shaders/attention.wgsl` and
//! `shaders/attention_backward.wgsl` (see [`Kernels`]).

//! Single-query rows (decode) can take `shaders/attention_decode.wgsl` instead, which also
//! does their rope_kv.

use super::{
    groups,
    rope::{CacheRows, HeadShape},
};
use crate::gpu::{shader::Define, DType, Step, Tensor};
use anyhow::{anyhow, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: CacheRows,
    scale: f32,
    window: u32,
    _p: u32,
}

impl Params {
    /// What attention.wgsl, attention_backward.wgsl and attention_flash.wgsl read: `n_rows`
    /// rows of `heads` over a KV cache of `cache_len` positions, scored as `scores` says.
    fn new(n_rows: usize, heads: HeadShape, cache_len: usize, scores: Scores) -> Params {
        let rows = CacheRows::new(n_rows, heads, cache_len);
        Params { rows, scale: scores.scale, window: scores.window_u32(), _p: 0 }
    }
}

/// How a query's scores are formed: q·k times `scale`, over the keys of its causal past, or
/// with a sliding window the last `window` of them (its own included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub scale: f32,
    pub window: Option<usize>,
    /// False: every position of the sequence (encoders; the cache holds exactly it).
    pub causal: bool,
}

impl Scores {
    /// Plain causal attention over heads of `dim`: scale 1/sqrt(dim), no window.
    pub fn causal(dim: usize) -> Scores {
        Scores { scale: 1.0 / (dim as f32).sqrt(), window: None, causal: true }
    }

    /// The window as the kernels read it (0: none).
    fn window_u32(self) -> u32 {
        self.window.map_or(0, |w| w as u32)
    }
}

/// The kernel keeps a query head in workgroup memory and up to 4 output dims per thread.
pub const MAX_HEAD_DIM: usize = 256;

/// Which kernels run attention over many rows at once (prefill, scoring, training); decode
/// rows take `attention_decode.wgsl` either way. Both give the same results within rounding.
/// Flash is the default: on lavapipe it prefills and trains about 6x faster (docs/bench.md);
/// Simple stays, behind `KEEL_ATTENTION=simple`, until GPU figures compare the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// One workgroup per (row, query head) walking its keys; backward one per (key, KV head).
    Simple,
    /// Tiles of 16 (row, head) pairs of a KV head against tiles of keys in workgroup memory
    /// (each key read once per tile, not once per row); backward a dQ pass and a dK/dV pass.
    Flash,
}

impl Kernels {
    /// `KEEL_ATTENTION` (`flash` or `simple`, read once per process), else Flash.
    pub fn configured() -> Result<Kernels> {
        static FORCED: std::sync::OnceLock<Result<Kernels, String>> = std::sync::OnceLock::new();
        let chosen = FORCED.get_or_init(|| match std::env::var("KEEL_ATTENTION") {
            Err(_) => Ok(Kernels::Flash),
            Ok(text) => Kernels::parse(&text),
        });
        chosen.clone().map_err(|e| anyhow!(e))
    }

    fn parse(text: &str) -> Result<Kernels, String> {
        match text.trim() {
            "flash" => Ok(Kernels::Flash),
            "simple" => Ok(Kernels::Simple),
            other => Err(format!("KEEL_ATTENTION must be flash or simple, got '{other}'")),
        }
    }
}

/// Pairs (or keys, dK/dV) per workgroup of `shaders/attention_flash.wgsl` (its TA).
const FLASH_TILE: usize = 16;

/// Head dims per chunk of the flash kernels (their CHUNK): the smallest of 16, 32 and 64
/// that holds a head, else 64 (a workgroup per output chunk).
fn flash_chunk(dim: usize) -> usize {
    [16, 32, 64].into_iter().find(|&c| dim <= c).unwrap_or(64)
}

/// The flash kernels' defines for a pass (one of the `FLASH_*` below, CHUNK added) and the
/// workgroups of `tiles` tiles over heads of `heads`: one per tile, KV head and output chunk.
fn flash_pass(heads: HeadShape, pass: [Define; 3], tiles: usize) -> (Vec<Define>, usize) {
    let chunk = flash_chunk(heads.dim);
    let defines = [&pass[..], &[("CHUNK", chunk as u32)]].concat();
    (defines, tiles * heads.n_kv * heads.dim.div_ceil(chunk))
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![
        ("attention", vec![("CAUSAL", 1)]),
        ("attention", vec![("CAUSAL", 0)]),
        ("attention_backward", vec![("KV", 0)]),
        ("attention_backward", vec![("KV", 1)]),
        ("attention_decode", vec![("COMBINE", 1)]),
    ]
    .into_iter()
    .chain([0, 1].into_iter().flat_map(|rope| {
        [(256, 0), (256, 1), (64, 0), (64, 1)].map(|(threads, merge)| {
            ("attention_decode", vec![("COMBINE", 0), ("ROPE", rope), ("THREADS", threads), ("MERGE", merge)])
        })
    }))
    .chain([16, 32, 64].into_iter().flat_map(|chunk| {
        [FLASH_FORWARD, FLASH_FORWARD_ENCODER, FLASH_DQ, FLASH_DKV]
            .map(|pass| ("attention_flash", [&pass[..], &[("CHUNK", chunk)]].concat()))
    }))
    .collect()
}

// The passes of `shaders/attention_flash.wgsl` (CHUNK added by [`flash_pass`]).
const FLASH_FORWARD: [Define; 3] = [("BACKWARD", 0), ("CAUSAL", 1), ("KV", 0)];
const FLASH_FORWARD_ENCODER: [Define; 3] = [("BACKWARD", 0), ("CAUSAL", 0), ("KV", 0)];
const FLASH_DQ: [Define; 3] = [("BACKWARD", 1), ("CAUSAL", 1), ("KV", 0)];
const FLASH_DKV: [Define; 3] = [("BACKWARD", 1), ("CAUSAL", 1), ("KV", 1)];

/// `out[r] = softmax(q[r] · Kᵀ · scale) · V` over cache positions `0..=pos(r)` of the
/// row's sequence (the window's last of them, see [`Scores`]); writes the log-sum-exp of the
/// scores per (row, head) into `lse`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    step: &mut Step,
    kernels: Kernels,
    q: &Tensor,
    rows: &Tensor,
    (heads, scores): (HeadShape, Scores),
    (k_cache, v_cache): (&Tensor, &Tensor),
    out: &Tensor,
    lse: &Tensor,
    n_rows: usize,
) {
    assert!(heads.dim <= MAX_HEAD_DIM && heads.n_q.is_multiple_of(heads.n_kv));
    assert!(q.numel() >= n_rows * heads.n_q * heads.dim && out.numel() >= n_rows * heads.n_q * heads.dim);
    assert!(lse.numel() >= n_rows * heads.n_q);
    let params = Params::new(n_rows, heads, k_cache.shape[1], scores);
    let buffers = bind![q, rows, k_cache, v_cache, out, lse];
    let (pipeline, workgroups) = match kernels {
        Kernels::Simple => {
            (step.gpu.pipeline("attention", &[("CAUSAL", scores.causal as u32)]), n_rows * heads.n_q)
        }
        Kernels::Flash => {
            let pass = if scores.causal { FLASH_FORWARD } else { FLASH_FORWARD_ENCODER };
            let (defines, workgroups) = flash_pass(heads, pass, (n_rows * heads.n_q).div_ceil(FLASH_TILE));
            (step.gpu.pipeline("attention_flash", &defines), workgroups)
        }
    };
    step.dispatch(pipeline, &params, &buffers, groups(workgroups, 1));
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DecodeParams {
    rows: CacheRows,
    scale: f32,
    chunk: u32,
    n_chunks: u32,
    first_row: u32,
    rot_dim: u32,
    window: u32,
    _p: u32,
}

// Workgroup arrays of shaders/attention_decode.wgsl (about 14 KiB in all).
const DECODE_MAX_GQ: usize = 1024;
const DECODE_KV_TILE: usize = 2080;
const DECODE_MAX_SCORES: usize = 512;
const DECODE_MAX_CHUNK: usize = 64;

/// Cache positions per workgroup of [`rope_kv_attention_decode`], or None where the head shape does
/// not fit its workgroup memory (such models keep `rope_kv` + [`attention`] for every row).
pub fn decode_chunk(heads: HeadShape) -> Option<usize> {
    let group = heads.n_q / heads.n_kv;
    let fits =
        heads.dim >= 2 && group <= 64 && group * heads.dim <= DECODE_MAX_GQ && heads.dim < DECODE_KV_TILE;
    fits.then(|| (DECODE_KV_TILE / (heads.dim + 1)).min(DECODE_MAX_SCORES / group).min(DECODE_MAX_CHUNK))
}

/// Counters of [`rope_kv_attention_decode`]'s merging workgroups: one per (sequence, KV head),
/// zero before the first dispatch (each dispatch leaves them zero).
pub fn decode_arrivals_len(heads: HeadShape, seqs: usize) -> usize {
    seqs * heads.n_kv
}

/// Floats of the per-chunk results [`rope_kv_attention_decode`] keeps for `seqs` sequences of
/// `cache_len` positions (0 where [`decode_chunk`] is None).
pub fn decode_part_len(heads: HeadShape, seqs: usize, cache_len: usize) -> usize {
    decode_chunk(heads).map_or(0, |chunk| seqs * heads.n_q * cache_len.div_ceil(chunk) * (heads.dim + 2))
}

/// [`rope::rope_kv`](super::rope::rope_kv) then [`attention`] for rows `first .. first + n_rows`,
/// each of which must be the only row of its sequence in the step: q, k, v come straight from
/// `qkv` (k, v are written into the cache), the positions are split into chunks of
/// [`decode_chunk`] over many workgroups (results in `part`, [`decode_part_len`] floats),
/// then combined into `out` and `lse`. Natively one dispatch, whose last workgroup per
/// (sequence, KV head) to finish merges the chunks (counted in `arrived`, [`decode_arrivals_len`]
/// zeroed u32s); on the page two, the second merging (WebGPU does not promise that a workgroup
/// sees another's writes within a dispatch). A row's result depends only on its own
/// (sequence, position) and data, and is the same either way.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_attention_decode(
    step: &mut Step,
    qkv: &Tensor,
    rows: &Tensor,
    heads: (HeadShape, Scores),
    tables: Option<(&Tensor, &Tensor)>,
    caches: (&Tensor, &Tensor),
    space: (&Tensor, &Tensor),
    outputs: (&Tensor, &Tensor),
    rows_range: (usize, usize),
) {
    // CPU adapters pay per thread at every barrier: 64 threads there doubled SwiftShader's
    // decode; GPUs need the 256 (see the shader).
    let threads = if step.gpu.info.device_type == wgpu::DeviceType::Cpu { 64 } else { 256 };
    let merge = !cfg!(target_arch = "wasm32");
    rope_kv_attention_decode_with(
        step,
        qkv,
        rows,
        heads,
        tables,
        caches,
        space,
        outputs,
        rows_range,
        (threads, merge),
    );
}

/// [`rope_kv_attention_decode`] with `threads` per workgroup of the split pass (64 or 256),
/// merging in its last workgroups (`merge`) or in a second dispatch.
#[allow(clippy::too_many_arguments)]
fn rope_kv_attention_decode_with(
    step: &mut Step,
    qkv: &Tensor,
    rows: &Tensor,
    (heads, scores): (HeadShape, Scores),
    tables: Option<(&Tensor, &Tensor)>,
    (k_cache, v_cache): (&Tensor, &Tensor),
    (part, arrived): (&Tensor, &Tensor),
    (out, lse): (&Tensor, &Tensor),
    (first, n_rows): (usize, usize),
    (threads, merge): (u32, bool),
) {
    let chunk =
        decode_chunk(heads).expect("rope_kv_attention_decode: head shape outside the decode kernel's limits");
    let (seqs, cache_len) = (k_cache.shape[0], k_cache.shape[1]);
    let end = first + n_rows;
    assert_eq!(k_cache.shape[2..], [heads.n_kv, heads.dim]);
    assert!(v_cache.shape == k_cache.shape && part.numel() >= decode_part_len(heads, seqs, cache_len));
    assert!(arrived.dtype == DType::U32 && arrived.numel() >= decode_arrivals_len(heads, seqs));
    assert!(qkv.numel() >= end * heads.qkv_width() && rows.numel() >= 2 * end);
    assert!(out.numel() >= end * heads.n_q * heads.dim && lse.numel() >= end * heads.n_q);
    if n_rows == 0 {
        return;
    }
    let n_chunks = cache_len.div_ceil(chunk);
    let params = DecodeParams {
        rows: CacheRows::new(n_rows, heads, cache_len),
        scale: scores.scale,
        chunk: chunk as u32,
        n_chunks: n_chunks as u32,
        first_row: first as u32,
        rot_dim: super::rope::rotated_dims(tables) as u32,
        window: scores.window_u32(),
        _p: 0,
    };
    let defines =
        [("COMBINE", 0), ("ROPE", tables.is_some() as u32), ("THREADS", threads), ("MERGE", merge as u32)];
    let pipeline = step.gpu.pipeline("attention_decode", &defines);
    let mut buffers = bind![qkv, rows, k_cache, v_cache, part].to_vec();
    if let Some((cos, sin)) = tables {
        buffers.extend(bind![cos_table = cos, sin_table = sin]);
    }
    if merge {
        buffers.extend(bind![arrived, out, lse]);
    }
    step.dispatch(pipeline, &params, &buffers, groups(n_rows * heads.n_kv * n_chunks, 1));
    if !merge {
        let pipeline = step.gpu.pipeline("attention_decode", &[("COMBINE", 1)]);
        step.dispatch(pipeline, &params, &bind![rows, part, out, lse], groups(n_rows * heads.n_q, 1));
    }
}

/// What [`attention`] saved, as its backward pass reads it.
#[derive(Clone, Copy)]
pub struct Saved<'a> {
    pub q: &'a Tensor,
    pub rows: &'a Tensor,
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub out: &'a Tensor,
    pub lse: &'a Tensor,
}

/// Gradients of [`attention`] from `d_out`: `dq` per row and `dk`, `dv` in the cache's
/// layout (written, not accumulated). `delta` `[rows, Hq]` is working space. Needs the
/// training row layout: row = sequence × cache_len + position, every position present, and
/// causal scores.
pub fn attention_backward(
    step: &mut Step,
    kernels: Kernels,
    saved: Saved,
    (heads, scores): (HeadShape, Scores),
    d_out: &Tensor,
    (dq, dk, dv): (&Tensor, &Tensor, &Tensor),
    delta: &Tensor,
) {
    let (seqs, cache_len) = (saved.k_cache.shape[0], saved.k_cache.shape[1]);
    let n_rows = seqs * cache_len;
    assert!(heads.dim <= MAX_HEAD_DIM && heads.n_q.is_multiple_of(heads.n_kv) && scores.causal);
    assert!(dq.numel() >= n_rows * heads.n_q * heads.dim && d_out.numel() >= n_rows * heads.n_q * heads.dim);
    assert!(delta.numel() >= n_rows * heads.n_q && dk.shape == saved.k_cache.shape && dv.shape == dk.shape);
    let params = Params::new(n_rows, heads, cache_len, scores);
    // Both kernel pairs take the same bindings: dq and delta first, then dk and dv.
    let ((family, dq_defines, dq_groups), (dkv_defines, dkv_groups)) = match kernels {
        Kernels::Simple => (
            ("attention_backward", vec![("KV", 0)], n_rows * heads.n_q),
            (vec![("KV", 1)], n_rows * heads.n_kv),
        ),
        Kernels::Flash => {
            let (dq, dq_groups) = flash_pass(heads, FLASH_DQ, (n_rows * heads.n_q).div_ceil(FLASH_TILE));
            (
                ("attention_flash", dq, dq_groups),
                flash_pass(heads, FLASH_DKV, seqs * cache_len.div_ceil(FLASH_TILE)),
            )
        }
    };
    let s = saved;
    let common = bind![q = s.q, rows = s.rows, k_cache = s.k_cache, v_cache = s.v_cache, lse = s.lse, d_out];
    let pipeline = step.gpu.pipeline(family, &dq_defines);
    step.dispatch(
        pipeline,
        &params,
        &[&common[..], &bind![out = s.out, dq, delta]].concat(),
        groups(dq_groups, 1),
    );
    let pipeline = step.gpu.pipeline(family, &dkv_defines);
    step.dispatch(pipeline, &params, &[&common[..], &bind![delta, dk, dv]].concat(), groups(dkv_groups, 1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::{rope, test_util::*};

    /// Plain causal, Gemma's scale with sliding windows of 8 and of 70 (past a 64-key chunk),
    /// and bidirectional (encoders; written as a window of 0 here), through both kernels: single
    /// rows of two sequences, then runs of consecutive positions (a prefill's layout) of odd
    /// lengths, one ending where the other sequence's begins; head dims of 16, 64 (SmolLM2's,
    /// 3 query heads per KV head), 96 (two of the flash kernel's 64-dim chunks) and 256.
    #[test]
    fn attention_matches_cpu() {
        let gpu = gpu();
        let windows = [None, Some(8), Some(70), Some(0)];
        let shapes = [(4, 2, 16), (9, 3, 64), (3, 1, 96), (2, 1, 256)];
        let cases = shapes
            .map(|(n_q, n_kv, dim)| HeadShape { n_q, n_kv, dim })
            .into_iter()
            .flat_map(|h| windows.map(|window| (h, window)));
        for (heads, window) in cases {
            let scores = match window {
                None => Scores::causal(heads.dim),
                Some(0) => Scores { causal: false, ..Scores::causal(heads.dim) },
                Some(w) => Scores { scale: 0.2, window: Some(w), causal: true },
            };
            let (seqs, cache_len) = (2, 150);
            // Positions past one 64-key chunk exercise the online softmax.
            let rows: Vec<(usize, usize)> = [(0, 0), (0, 63), (1, 64), (1, 149), (0, 100)]
                .into_iter()
                .chain((101..=137).map(|p| (1, p)))
                .chain((0..=20).map(|p| (0, p)))
                .collect();
            let qd = heads.n_q * heads.dim;
            let q = rand_vec(1, rows.len() * qd, 2.0);
            let kc = rand_vec(2, seqs * cache_len * heads.n_kv * heads.dim, 2.0);
            let vc = rand_vec(3, kc.len(), 1.0);
            let cache_shape = [seqs, cache_len, heads.n_kv, heads.dim];
            let kt = gpu.upload_f32("k", &cache_shape, &kc).unwrap();
            let vt = gpu.upload_f32("v", &cache_shape, &vc).unwrap();
            let run = |kernels: Kernels, rows: &[(usize, usize)], q: &[f32]| {
                let n = rows.len();
                let flat: Vec<u32> = rows.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();
                let qt = gpu.upload_f32("q", &[n, qd], q).unwrap();
                let rt = gpu.upload_u32("rows", &[n, 2], &flat).unwrap();
                let out = gpu.zeros("out", &[n, qd], DType::F32).unwrap();
                let lse = gpu.zeros("lse", &[n, heads.n_q], DType::F32).unwrap();
                let mut step = Step::new(gpu);
                attention(&mut step, kernels, &qt, &rt, (heads, scores), (&kt, &vt), &out, &lse, n);
                step.submit().unwrap();
                (gpu.read_f32(&out).unwrap(), gpu.read_f32(&lse).unwrap())
            };
            let shape = (heads.n_q, heads.n_kv, heads.dim);
            let want = cpu::attention::attention(&q, &kc, &vc, &rows, shape, (cache_len, cpu_scores(scores)));
            let mut want_lse = Vec::new();
            for (r, &(seq, pos)) in rows.iter().enumerate() {
                let pos = if scores.causal { pos } else { cache_len - 1 };
                let qr = &q[r * qd..(r + 1) * qd];
                want_lse.extend(
                    (0..heads.n_q).map(|h| cpu_lse(qr, &kc, (seq, pos), h, (heads, scores), cache_len)),
                );
            }
            for kernels in [Kernels::Simple, Kernels::Flash] {
                let what = format!("attention {kernels:?} {heads:?} {scores:?}");
                let (out, lse) = run(kernels, &rows, &q);
                assert_close(&out, &want, 1e-5, &what);
                assert_close(&lse, &want_lse, 1e-5, &format!("lse {what}"));
                // A row's result does not depend on the rows beside it.
                for r in [3, 20] {
                    let (alone, _) = run(kernels, &rows[r..=r], &q[r * qd..(r + 1) * qd]);
                    assert_eq!(alone, out[r * qd..(r + 1) * qd], "{what}: row {r} alone");
                }
            }
        }
    }

    #[test]
    fn keel_attention_names_a_kernel() {
        assert_eq!(Kernels::parse("flash"), Ok(Kernels::Flash));
        assert_eq!(Kernels::parse(" simple\n"), Ok(Kernels::Simple));
        assert_eq!(Kernels::parse("fast").unwrap_err(), "KEEL_ATTENTION must be flash or simple, got 'fast'");
    }

    fn cpu_scores(s: Scores) -> cpu::attention::Scores {
        cpu::attention::Scores { scale: s.scale, window: s.window, causal: s.causal }
    }

    /// Log-sum-exp of the scaled scores of one (row, q head), in f64.
    fn cpu_lse(
        q: &[f32],
        kc: &[f32],
        (seq, pos): (usize, usize),
        h: usize,
        (heads, s): (HeadShape, Scores),
        len: usize,
    ) -> f32 {
        let hd = heads.dim;
        let kvh = h / (heads.n_q / heads.n_kv);
        let first = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let scores: Vec<f64> = (first..=pos)
            .map(|t| {
                let k = &kc[((seq * len + t) * heads.n_kv + kvh) * hd..][..hd];
                let dot: f64 =
                    q[h * hd..(h + 1) * hd].iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum();
                dot * s.scale as f64
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::MIN, f64::max);
        (m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln()) as f32
    }

    #[test]
    fn rope_kv_attention_decode_matches_cpu() {
        let gpu = gpu();
        let len = 700;
        // Row 0 is left out (first row 1); the others see 1, 63, 64, 65 and 700 positions.
        let rows = [(5usize, 3usize), (0, 0), (1, 62), (2, 63), (3, 64), (4, 699)];
        let seqs = 6;
        for heads in [
            HeadShape { n_q: 9, n_kv: 3, dim: 64 },
            HeadShape { n_q: 4, n_kv: 4, dim: 32 },
            HeadShape { n_q: 2, n_kv: 1, dim: 128 },
        ] {
            let n = rows.len();
            let (qd, width) = (heads.n_q * heads.dim, heads.qkv_width());
            let cache_shape = [seqs, len, heads.n_kv, heads.dim];
            let qkv = rand_vec(1, n * width, 1.0);
            let kc = rand_vec(2, cache_shape.iter().product(), 1.0);
            let vc = rand_vec(3, kc.len(), 1.0);
            let flat: Vec<u32> = rows.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();
            let up = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
            let rt = gpu.upload_u32("rows", &[n, 2], &flat).unwrap();
            // Rotated dimensions (all, none, a partial rotary's quarter), threads, and a sliding
            // window of 100 (whole chunks before it skipped).
            let plain = Scores::causal(heads.dim);
            let window = Scores { scale: 0.1, window: Some(100), causal: true };
            let cases =
                [(heads.dim, 64, plain), (0, 64, plain), (heads.dim, 256, plain), (heads.dim / 4, 64, plain)];
            let cases = cases.into_iter().chain([(heads.dim, 64, window)]);
            // Each case merged by the last workgroups (native) and by a second dispatch (the page).
            for ((rot, threads, scores), merge) in cases.flat_map(|case| [(case, true), (case, false)]) {
                let rope = rot > 0;
                let inv_freq = rope::RopeScaling::None.inv_freq(10000.0, rot.max(2));
                let (cos, sin) = rope::rope_tables(&inv_freq, len);
                let table_shape = [len, rot.max(2) / 2];
                let (cos_t, sin_t) = (up("cos", &table_shape, &cos), up("sin", &table_shape, &sin));
                let (qkv_t, kt, vt) =
                    (up("qkv", &[n, width], &qkv), up("k", &cache_shape, &kc), up("v", &cache_shape, &vc));
                let part = gpu.zeros("part", &[decode_part_len(heads, seqs, len)], DType::F32).unwrap();
                let arrived = gpu.zeros("arrived", &[decode_arrivals_len(heads, seqs)], DType::U32).unwrap();
                let out = gpu.zeros("out", &[n, qd], DType::F32).unwrap();
                let lse = gpu.zeros("lse", &[n, heads.n_q], DType::F32).unwrap();
                let mut step = Step::new(gpu);
                let tables = rope.then_some((&cos_t, &sin_t));
                rope_kv_attention_decode_with(
                    &mut step,
                    &qkv_t,
                    &rt,
                    (heads, scores),
                    tables,
                    (&kt, &vt),
                    (&part, &arrived),
                    (&out, &lse),
                    (1, n - 1),
                    (threads, merge),
                );
                step.submit().unwrap();

                let (mut want_k, mut want_v) = (kc.clone(), vc.clone());
                let h = cpu::rope::Heads { n_q: heads.n_q, n_kv: heads.n_kv, dim: heads.dim, rot };
                let cpu_tables = rope.then_some((&cos[..], &sin[..]));
                let q = cpu::rope::rope_kv(
                    &qkv[width..],
                    &rows[1..],
                    &h,
                    cpu_tables,
                    len,
                    &mut want_k,
                    &mut want_v,
                );
                let shape = (heads.n_q, heads.n_kv, heads.dim);
                let mut want = vec![0.0; qd];
                let at = (len, cpu_scores(scores));
                want.extend(cpu::attention::attention(&q, &want_k, &want_v, &rows[1..], shape, at));
                let mut want_lse = vec![0.0; heads.n_q];
                for (r, &row) in rows[1..].iter().enumerate() {
                    let qr = &q[r * qd..(r + 1) * qd];
                    want_lse
                        .extend((0..heads.n_q).map(|h| cpu_lse(qr, &want_k, row, h, (heads, scores), len)));
                }
                let what = format!("{heads:?} rope={rope} {scores:?} threads={threads} merge={merge}");
                assert_close(&gpu.read_f32(&out).unwrap(), &want, 1e-5, &format!("out {what}"));
                assert_close(&gpu.read_f32(&lse).unwrap(), &want_lse, 1e-5, &format!("lse {what}"));
                assert_close(&gpu.read_f32(&kt).unwrap(), &want_k, 1e-6, &format!("k cache {what}"));
                assert_close(&gpu.read_f32(&vt).unwrap(), &want_v, 0.0, &format!("v cache {what}"));
                // The counters are left zero for the next dispatch.
                assert!(gpu.read_u32(&arrived).unwrap().iter().all(|&n| n == 0), "arrivals {what}");
            }
        }
    }

    /// Both kernels, causal and with a window of 8, two sequences of an odd 71 positions (past
    /// one 64-key chunk, a partial last tile), head dims of 16, 64 (3 query heads per KV head),
    /// 96 and 256 (2 and 4 of the flash kernel's chunks).
    #[test]
    fn attention_backward_matches_cpu() {
        let gpu = gpu();
        let windowed = Scores { scale: 0.3, window: Some(8), causal: true };
        let cases = [
            (HeadShape { n_q: 4, n_kv: 2, dim: 16 }, None),
            (HeadShape { n_q: 9, n_kv: 3, dim: 64 }, None),
            (HeadShape { n_q: 3, n_kv: 1, dim: 96 }, None),
            (HeadShape { n_q: 2, n_kv: 1, dim: 256 }, None),
            (HeadShape { n_q: 4, n_kv: 2, dim: 16 }, Some(windowed)),
            (HeadShape { n_q: 9, n_kv: 3, dim: 64 }, Some(windowed)),
        ];
        for ((heads, scores), kernels) in
            cases.into_iter().flat_map(|case| [Kernels::Simple, Kernels::Flash].map(|k| (case, k)))
        {
            let scores = scores.unwrap_or(Scores::causal(heads.dim));
            let (seqs, len) = (2, 71);
            let rows: Vec<(usize, usize)> = (0..seqs).flat_map(|s| (0..len).map(move |p| (s, p))).collect();
            let n = rows.len();
            let qd = heads.n_q * heads.dim;
            let cache_shape = [seqs, len, heads.n_kv, heads.dim];
            let q = rand_vec(1, n * qd, 1.0);
            let kc = rand_vec(2, seqs * len * heads.n_kv * heads.dim, 1.0);
            let vc = rand_vec(3, kc.len(), 1.0);
            let d_out = rand_vec(4, n * qd, 1.0);
            let flat: Vec<u32> = rows.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();
            let up = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
            let (qt, kt, vt, dot) = (
                up("q", &[n, qd], &q),
                up("k", &cache_shape, &kc),
                up("v", &cache_shape, &vc),
                up("do", &[n, qd], &d_out),
            );
            let rt = gpu.upload_u32("rows", &[n, 2], &flat).unwrap();
            let zeros = |name, shape: &[usize]| gpu.zeros(name, shape, DType::F32).unwrap();
            let (out, lse, dq, delta) = (
                zeros("out", &[n, qd]),
                zeros("lse", &[n, heads.n_q]),
                zeros("dq", &[n, qd]),
                zeros("delta", &[n, heads.n_q]),
            );
            let (dk, dv) = (zeros("dk", &cache_shape), zeros("dv", &cache_shape));
            let mut step = Step::new(gpu);
            attention(&mut step, kernels, &qt, &rt, (heads, scores), (&kt, &vt), &out, &lse, n);
            let saved = Saved { q: &qt, rows: &rt, k_cache: &kt, v_cache: &vt, out: &out, lse: &lse };
            attention_backward(&mut step, kernels, saved, (heads, scores), &dot, (&dq, &dk, &dv), &delta);
            step.submit().unwrap();
            let shape = (heads.n_q, heads.n_kv, heads.dim);
            let at = (len, cpu_scores(scores));
            let (want_dq, want_dk, want_dv) =
                cpu::attention::attention_backward(&q, &kc, &vc, &rows, shape, at, &d_out);
            let what = format!("{kernels:?} {heads:?} {scores:?}");
            assert_close(&gpu.read_f32(&dq).unwrap(), &want_dq, 1e-5, &format!("dq {what}"));
            assert_close(&gpu.read_f32(&dk).unwrap(), &want_dk, 1e-5, &format!("dk {what}"));
            assert_close(&gpu.read_f32(&dv).unwrap(), &want_dv, 1e-5, &format!("dv {what}"));
        }
    }
}
