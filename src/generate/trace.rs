//! Latent traces: statistics of the residual stream at every block (hook point
//! `blocks.{l}.resid_post`, after LCM where it is on) over a token sequence, from one
//! teacher-forced pass, reduced on the GPU inside the pass's steps (one per chunk of positions):
//! nothing of size T × d per layer is read back.

use super::PREFILL_CHUNK;
use crate::gpu::{DType, Gpu, Step, Tensor};
use crate::model::GpuModel;
use crate::modulate::{LcmConfig, LcmState};
use crate::ops::matmul::{matmul, Mat};
use crate::ops::trace::{norms_and_cosines, segment_sums};
use crate::rng::Rng;
use anyhow::{bail, Result};

/// Seed of the projection matrix: fixed, so that traces of different runs (arms, prompts,
/// models of the same width) project onto the same directions.
pub const PROJECTION_SEED: u64 = 0x7ACE;

#[derive(Clone, Debug, PartialEq)]
pub struct LayerTrace {
    /// Block index l (hook point `blocks.{l}.resid_post`).
    pub layer: usize,
    /// `[T]` L2 norm of `h[l][t]`.
    pub norms: Vec<f32>,
    /// `[T]` cos(`h[l][t]`, `h[l][t-1]`); entry 0 is NaN.
    pub successive_cos: Vec<f32>,
    /// `[T, proj_dim]` `h[l][t]` times [`projection_matrix`] (which holds the 1/sqrt(proj_dim)).
    pub projected: Vec<f32>,
    /// `[segments, d]` mean of `h[l][t]` over each segment's tokens.
    pub segment_means: Vec<f32>,
}

/// One [`LayerTrace`] per block, 0..L.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub proj_dim: usize,
    pub segments: usize,
    pub layers: Vec<LayerTrace>,
}

/// The fixed projection, `[proj_dim, d]` (row j is the j-th direction): standard Gaussian
/// entries (Box–Muller over [`Rng`] seeded with [`PROJECTION_SEED`]) divided by sqrt(proj_dim).
pub fn projection_matrix(d: usize, proj_dim: usize) -> Vec<f32> {
    let mut rng = Rng::seed_from_u64(PROJECTION_SEED);
    let scale = 1.0 / (proj_dim as f64).sqrt();
    (0..d * proj_dim)
        .map(|_| {
            let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * scale) as f32
        })
        .collect()
}

/// Latent statistics of `ids` (teacher forcing, modulated by `lcm` when given).
/// `segment_of[t]`: the segment (e.g. sentence) index of token t, non-decreasing from 0.
pub fn trace(
    gpu: &Gpu,
    model: &GpuModel,
    ids: &[u32],
    lcm: Option<&LcmConfig>,
    segment_of: &[u32],
    proj_dim: usize,
) -> Result<Trace> {
    trace_capturing(gpu, model, ids, lcm, segment_of, proj_dim, (None, PREFILL_CHUNK))
}

/// [`trace`] in prefill chunks of `chunk_rows`; with `capture` `[L, T, d]` (tests only) also
/// copies every traced state there.
fn trace_capturing(
    gpu: &Gpu,
    model: &GpuModel,
    ids: &[u32],
    lcm: Option<&LcmConfig>,
    segment_of: &[u32],
    proj_dim: usize,
    (capture, chunk_rows): (Option<&Tensor>, usize),
) -> Result<Trace> {
    let c = &model.config;
    let (t, d, n_layers) = (ids.len(), c.hidden, c.layers);
    if ids.is_empty() {
        bail!("nothing to trace: the text encodes to no tokens");
    }
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= c.vocab) {
        bail!("token id {bad} is outside the model's vocabulary of {}", c.vocab);
    }
    if segment_of.len() != t {
        bail!("segment_of has {} entries for {t} tokens", segment_of.len());
    }
    let steps_ok = segment_of[0] == 0 && segment_of.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1);
    if !steps_ok {
        bail!("segment_of must start at 0 and grow by 0 or 1 from one token to the next");
    }
    let segments = segment_of[t - 1] as usize + 1;
    let cache = model.new_cache(gpu, 1, t)?;
    let scratch = model.scratch(gpu, t.min(chunk_rows))?;
    let lcm = match lcm {
        Some(cfg) => LcmState::new(gpu, cfg, n_layers, d, 1)?,
        None => None,
    };
    let projection = gpu.upload_f32("trace projection", &[proj_dim, d], &projection_matrix(d, proj_dim))?;
    let segment_table = gpu.upload_u32("trace segments", &[t], segment_of)?;
    let norms = gpu.zeros("trace norms", &[n_layers, t], DType::F32)?;
    let cosines = gpu.zeros("trace cosines", &[n_layers, t], DType::F32)?;
    let projected = gpu.zeros("trace projections", &[n_layers, t, proj_dim], DType::F32)?;
    let sums = gpu.zeros("trace segment sums", &[n_layers, segments, d], DType::F32)?;
    // Each layer's last state of the previous chunk, for the first cosine of the next.
    let prev = gpu.zeros("trace previous states", &[n_layers, d], DType::F32)?;
    for (k, part) in ids.chunks(scratch.rows).enumerate() {
        let (t0, n) = (k * scratch.rows, part.len());
        let rows: Vec<u32> = (t0..t0 + n).flat_map(|p| [0, p as u32]).collect();
        gpu.write_u32(&scratch.ids, part);
        gpu.write_u32(&scratch.row_table, &rows);
        let mut step = Step::new(gpu);
        // One pass over the whole text, chunked: its end picks longrope's factors.
        let pass = (&[n][..], model.long_rope(ids.len()));
        let modulation = lcm.as_ref().map(|state| (state, &scratch.row_table));
        model.record_blocks(&mut step, &scratch, &cache, pass, modulation, &mut |step, l, x| {
            norms_and_cosines(step, x, (n, t0), (&prev, l * d), &norms, &cosines, l * t);
            segment_sums(step, x, (n, t0), &segment_table, &sums, l * segments * d);
            let out = Mat::rows(&projected, (l * t + t0) * proj_dim, proj_dim);
            matmul(
                step,
                Mat::rows(x, 0, d),
                Mat::transposed(&projection, 0, d),
                out,
                (n, proj_dim, d),
                None,
                false,
            );
            if let Some(all) = capture {
                step.copy(x, 0, all, (l * t + t0) * d, n * d);
            }
            step.copy(x, (n - 1) * d, &prev, l * d, d);
        });
        step.submit()?;
    }
    gpu.recycle(cache.into_tensors().into_iter().chain(scratch.into_tensors()));
    let (norms, mut cosines) = (gpu.read_f32(&norms)?, gpu.read_f32(&cosines)?);
    let (projected, sums) = (gpu.read_f32(&projected)?, gpu.read_f32(&sums)?);
    let mut counts = vec![0f32; segments];
    for &s in segment_of {
        counts[s as usize] += 1.0;
    }
    for l in 0..n_layers {
        cosines[l * t] = f32::NAN;
    }
    let layers = (0..n_layers)
        .map(|l| LayerTrace {
            layer: l,
            norms: norms[l * t..(l + 1) * t].to_vec(),
            successive_cos: cosines[l * t..(l + 1) * t].to_vec(),
            projected: projected[l * t * proj_dim..(l + 1) * t * proj_dim].to_vec(),
            segment_means: sums[l * segments * d..(l + 1) * segments * d]
                .iter()
                .enumerate()
                .map(|(i, s)| s / counts[i / d])
                .collect(),
        })
        .collect();
    Ok(Trace { proj_dim, segments, layers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::ops::test_util::*;

    /// A 324-token text (two chunks) on stories260k, plain and with the golden LCM setting:
    /// every statistic against the CPU from the full states the pass captured; with LCM the
    /// captured last state, through the final norm and the head on the CPU, gives `score`'s
    /// last logits (so the traced states are the modulated ones the model continues from).
    #[test]
    fn trace_matches_cpu_from_full_states() {
        let Some(v) = crate::testing::golden("stories260k") else { return };
        let Some((host, m)) = super::super::test_stories() else { return };
        let ids: Vec<u32> =
            v["cases"][2]["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let lcm_cfg = LcmConfig::from_json(&v["lcm_config"], "lcm_config").unwrap();
        let gpu = gpu();
        let c = &m.config;
        let (t, d, p) = (ids.len(), c.hidden, 8);
        let chunk_rows = 128;
        assert!(t > 2 * chunk_rows, "the text must span three chunks");
        let segment_of: Vec<u32> = (0..t).map(|i| (i / 50) as u32).collect();
        let proj = projection_matrix(d, p);
        for lcm in [None, Some(&lcm_cfg)] {
            let all = gpu.zeros("all states", &[c.layers, t, d], DType::F32).unwrap();
            let tr = trace_capturing(gpu, &m, &ids, lcm, &segment_of, p, (Some(&all), chunk_rows)).unwrap();
            let states = gpu.read_f32(&all).unwrap();
            assert_eq!((tr.layers.len(), tr.segments, tr.proj_dim), (c.layers, 7, p));
            let f32s = |v: Vec<f64>| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            for (l, lt) in tr.layers.iter().enumerate() {
                let h = &states[l * t * d..(l + 1) * t * d];
                let what = |s: &str| format!("lcm {} layer {l}: {s}", lcm.is_some());
                assert_close(&lt.norms, &f32s(cpu::trace::norms(h, d)), 1e-5, &what("norms"));
                assert!(lt.successive_cos[0].is_nan());
                let want_cos = f32s(cpu::trace::successive_cos(h, d));
                assert_close(&lt.successive_cos[1..], &want_cos[1..], 1e-5, &what("successive cos"));
                assert_close(
                    &lt.projected,
                    &f32s(cpu::trace::project(h, d, &proj)),
                    1e-4,
                    &what("projected"),
                );
                let means = f32s(cpu::trace::segment_means(h, d, &segment_of, 7));
                assert_close(&lt.segment_means, &means, 1e-5, &what("segment means"));
            }
            let last = &states[((c.layers - 1) * t + t - 1) * d..][..d];
            let w = &host.weights;
            let xn = cpu::norm::rms_norm(last, &w.final_norm.values(), c.norm_eps);
            let logits = cpu::matmul::linear(&xn, &w.head().values(), None, 1, c.vocab, d);
            let scored = crate::generate::score(gpu, &m, &ids, lcm).unwrap();
            assert_close(&logits, &scored.last_logits, 1e-4, "last logits from the traced state");
        }
        // The projection is a fixed seeded Gaussian: mean ~0, variance ~1/p.
        let big = projection_matrix(64, 16);
        let mean = big.iter().map(|&x| x as f64).sum::<f64>() / big.len() as f64;
        let var = big.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / big.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var * 16.0 - 1.0).abs() < 0.1,
            "mean {mean}, variance × p {}",
            var * 16.0
        );
        assert_eq!(big, projection_matrix(64, 16));
    }

    #[test]
    fn bad_segments_are_refused() {
        let Some((_, m)) = super::super::test_stories() else { return };
        let gpu = gpu();
        let err = |seg: &[u32]| trace(gpu, &m, &[1, 2, 3], None, seg, 4).unwrap_err().to_string();
        assert!(err(&[0, 1]).contains("segment_of has 2 entries for 3 tokens"));
        assert!(err(&[0, 2, 2]).contains("grow by 0 or 1"));
        assert!(err(&[1, 1, 1]).contains("start at 0"));
    }
}
