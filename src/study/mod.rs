//! The comparison study behind `keel compare` and `keel sweep`: the prompts and budget (the
//! plan), generating an arm on the GPU, the plain model's scores of its tokens, latent traces,
//! and the paired reports (report::compare, report::sweep).

pub mod arms;
pub mod checkpoint;
pub mod sweep;

use crate::chat::{render, ChatTemplate};
use crate::generate::batch::{generate_batch, SeqRequest};
use crate::generate::trace::{trace, Trace};
use crate::generate::{self, SamplerConfig};
use crate::gpu::Gpu;
use crate::metrics::drift::{self, Drift};
use crate::metrics::latent::{layer_latents, LayerInput, LayerLatent};
use crate::metrics::lexical::sentence_of;
use crate::metrics::sequence::SequenceMetrics;
use crate::model::{GpuModel, ModelInfo};
use crate::modulate::LcmConfig;
use crate::report::compare::{decimal, run_metrics, Comparison, Run, Study, TokenRow, BASELINE, MODULATED};
use crate::sentence::SentenceEncoder;
use crate::tokenize::TextStream;
use anyhow::{anyhow, bail, Context, Result};
use checkpoint::Checkpoints;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The default prompts (data/prompts.txt, see data/NOTICE.md).
const DEFAULT_PROMPTS: &str = include_str!("../../data/prompts.txt");
/// The reduced study a CPU adapter runs when no budget flag says otherwise: it finishes in
/// about 10 minutes for SmolLM2-135M on an idle lavapipe (an estimate: see docs/compare.md).
const REDUCED: Budget = Budget { tokens: 128, seeds: 1, prompts: 8 };
/// The full study on a real GPU.
const FULL: Budget = Budget { tokens: 2048, seeds: 5, prompts: usize::MAX };
/// The LCM setting `compare` uses without LCM flags, chosen by `keel sweep` (docs/compare.md).
pub const DEFAULT_LCM: &str =
    r#"{"gamma": 0.05, "rho": 0.9, "tau": 0.05, "kappa": 20, "sink": 1, "space": "normalized"}"#;

/// What a study asks for before the model is known: unset budget fields take the adapter's
/// default (the reduced study on a CPU adapter).
pub struct Request {
    /// The prompts' file, None for Keel's default prompts.
    pub prompts: Option<PathBuf>,
    pub tokens: Option<usize>,
    pub seeds: Option<usize>,
    /// Every arm's sampling unless the arm says otherwise (the seed is each generation's).
    pub sampler: SamplerConfig,
}

/// A loaded model as a study uses it.
pub struct StudyModel<'a> {
    pub host: &'a ModelInfo,
    pub gpu_model: &'a GpuModel,
    pub gpu: &'a Gpu,
    pub progress: &'a dyn Progress,
    /// The sentence encoder that judges topic drift (None: the drift metrics stay NaN).
    pub judge: Option<&'a SentenceEncoder>,
    /// Where finished arms are kept so that a killed study resumes (None: nowhere).
    pub checkpoints: Option<&'a Checkpoints>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Budget {
    tokens: usize,
    seeds: usize,
    prompts: usize,
}

/// Everything checked and decided before the GPU works.
pub struct Plan {
    pub prompts: Vec<String>,
    /// Each prompt's ids: its text, or with a chat template its one user message rendered.
    pub prompt_ids: Vec<Vec<u32>>,
    /// The ids that end a generation (with a chat template, its end of turn too).
    pub eos: Vec<u32>,
    pub tokens: usize,
    pub seeds: usize,
    pub reduced: bool,
    pub sampler: SamplerConfig,
}

impl Plan {
    /// Checks the prompts and budget against the model (errors name the flag or file) and
    /// picks the budget for the adapter. With `chat`, each prompt is sent as one user message
    /// through that chat template.
    pub fn new(
        a: &Request,
        mut prompts: Vec<String>,
        m: &StudyModel,
        chat: Option<&ChatTemplate>,
    ) -> Result<Plan> {
        let sampler = a.sampler.clone();
        sampler.validate()?;
        let cpu = m.gpu.info.device_type == wgpu::DeviceType::Cpu;
        let default = if cpu { REDUCED } else { FULL };
        if a.prompts.is_none() {
            prompts.truncate(default.prompts);
        }
        let ctx = m.host.config.max_positions;
        let encode = |p: &String| match chat {
            Some(t) => Ok(render(t, m.host, &[json!({"role": "user", "content": p})], None, true)?.1),
            None => m.host.tokenizer.encode(p),
        };
        let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(encode).collect::<Result<_>>()?;
        let eos = chat
            .map_or_else(|| m.host.config.eos.clone(), |t| t.stop_ids(&m.host.config.eos, &m.host.tokenizer));
        let source = a.prompts.as_ref().map_or("the default prompts".into(), |p| p.display().to_string());
        for (i, ids) in prompt_ids.iter().enumerate() {
            if ids.is_empty() {
                bail!("{source}: prompt {i} encodes to no tokens");
            }
            if ids.len() >= ctx {
                bail!("{source}: prompt {i} has {} tokens, the model's context is {ctx}", ids.len());
            }
        }
        let longest = prompt_ids.iter().map(Vec::len).max().unwrap_or(0);
        let tokens = match a.tokens {
            Some(t) if longest + t > ctx => bail!(
                "--tokens {t} plus the longest prompt ({longest} tokens) exceeds the model's context of {ctx}"
            ),
            Some(t) => t,
            None => default.tokens.min(ctx - longest),
        };
        let seeds = a.seeds.unwrap_or(default.seeds);
        let reduced = cpu && (a.tokens.is_none() || a.seeds.is_none() || a.prompts.is_none());
        Ok(Plan { prompts, prompt_ids, eos, tokens, seeds, reduced, sampler })
    }

    /// What makes two plans generate the same texts (the checkpoints' key).
    pub fn key(&self) -> Value {
        json!({"prompt_ids": self.prompt_ids, "eos": self.eos, "tokens": self.tokens, "seeds": self.seeds})
    }

    /// (prompt, seed) of every generation, prompt-major.
    pub fn units(&self) -> Vec<(usize, u64)> {
        (0..self.prompts.len()).flat_map(|p| (0..self.seeds as u64).map(move |s| (p, s))).collect()
    }
}

/// The prompts of `path` (one per line, blank lines skipped; or `.jsonl` with a "prompt"
/// string per line), or the default ones.
pub fn load_prompts(path: Option<&Path>) -> Result<Vec<String>> {
    let Some(path) = path else {
        return Ok(DEFAULT_PROMPTS.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect());
    };
    let name = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("--prompts {name}: cannot read"))?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("--prompts {name}: not UTF-8 text"))?;
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let prompts: Vec<String> = if path.extension().is_some_and(|e| e == "jsonl") {
        lines
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .map_err(|e| anyhow!("--prompts {name}: line {} is not JSON ({e})", i + 1))?;
                v.get("prompt")
                    .and_then(|p| p.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("--prompts {name}: line {} has no string \"prompt\"", i + 1))
            })
            .collect::<Result<_>>()?
    } else {
        lines.map(|(_, l)| l.to_string()).collect()
    };
    if prompts.is_empty() {
        bail!("--prompts {name}: holds no prompts");
    }
    Ok(prompts)
}

/// Where a study reports how far it has got: each stage's label with its units done of its
/// total (a stage is finished at its total). The CLI draws bars; other callers may ignore it.
pub trait Progress {
    fn update(&self, stage: &str, done: usize, total: usize);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn update(&self, _: &str, _: usize, _: usize) {}
}

/// One generation of an arm: its prompt, seed and tokens.
#[derive(Serialize, Deserialize)]
pub struct Generated {
    pub prompt: usize,
    pub seed: u64,
    pub tokens: Vec<TokenRow>,
}

/// The sampler seed of a (prompt, seed) pair: each pair has its own random stream.
pub fn stream_seed(prompt: usize, seed: u64) -> u64 {
    ((prompt as u64) << 32) ^ seed
}

/// Generates every (prompt, seed) of the plan with `sampler` and `lcm`, as batches on the
/// GPU, each token with what the model thought of it.
pub fn generate_arm(
    m: &StudyModel,
    plan: &Plan,
    sampler: &SamplerConfig,
    lcm: Option<&LcmConfig>,
    label: &str,
) -> Result<Vec<Generated>> {
    let units = plan.units();
    let reqs: Vec<SeqRequest> = units
        .iter()
        .map(|&(p, seed)| SeqRequest {
            prompt: plan.prompt_ids[p].clone(),
            sampler: SamplerConfig { seed: stream_seed(p, seed), ..sampler.clone() },
            max_tokens: plan.tokens,
        })
        .collect();
    let outs = generate_batch(m.gpu, m.gpu_model, &reqs, &plan.eos, lcm, &mut |done, total| {
        m.progress.update(label, done, total)
    })?;
    units
        .iter()
        .zip(outs)
        .map(|(&(prompt, seed), out)| {
            let texts = token_texts(m, &out.ids())?;
            let tokens = out
                .tokens
                .into_iter()
                .zip(texts)
                .map(|(r, text)| TokenRow {
                    id: r.id,
                    text,
                    logprob: r.logprob,
                    entropy: r.entropy,
                    top1_prob: r.top1_prob,
                })
                .collect();
            Ok(Generated { prompt, seed, tokens })
        })
        .collect()
}

/// Each token's piece of the decoded text (empty while a character is incomplete), so that
/// the pieces join to the text.
fn token_texts(m: &StudyModel, ids: &[u32]) -> Result<Vec<String>> {
    let mut stream = TextStream::new(&m.host.tokenizer);
    ids.iter().map(|&id| stream.push(id)).collect()
}

/// The plain model's log-probabilities and entropies of one generation's tokens.
#[derive(Serialize, Deserialize)]
pub struct PlainScore {
    pub logprobs: Vec<f64>,
    pub entropies: Vec<f64>,
}

/// The plain model's scores of each generation's tokens (teacher forcing over prompt +
/// generation, no LCM; strided windows past the context), so that modulation cannot flatter
/// itself.
pub fn plain_scores(m: &StudyModel, plan: &Plan, arm: &[Generated], label: &str) -> Result<Vec<PlainScore>> {
    let mut out = Vec::new();
    for (i, g) in arm.iter().enumerate() {
        m.progress.update(label, i, arm.len());
        let prompt = &plan.prompt_ids[g.prompt];
        let all: Vec<u32> = prompt.iter().copied().chain(g.tokens.iter().map(|t| t.id)).collect();
        let ctx = m.host.config.max_positions;
        let s = generate::score_windowed(m.gpu, m.gpu_model, &all, ctx, ctx / 2)?;
        let from = prompt.len() - 1;
        out.push(PlainScore {
            logprobs: s.next_logprobs[from..].iter().map(|&x| x as f64).collect(),
            entropies: s.entropies[from..].iter().map(|&x| x as f64).collect(),
        });
    }
    m.progress.update(label, arm.len(), arm.len());
    Ok(out)
}

/// What an arm's generation, plain scoring and judging produced: everything its runs'
/// metrics are computed from, and what a checkpoint keeps.
#[derive(Serialize, Deserialize)]
pub struct ArmOutput {
    pub gens: Vec<Generated>,
    /// The plain model's scores of the tokens; None where the arm's own scores are the plain
    /// model's (no LCM: the sampler settings change the pick, not the logits).
    pub plain: Option<Vec<PlainScore>>,
    /// Each generation's topic drift by the judge; empty without one.
    pub drift: Vec<Drift>,
}

impl ArmOutput {
    /// The arm's runs, every metric computed.
    pub fn runs(self, arm: &str, window: usize) -> Vec<Run> {
        let mut plain = self.plain.map(Vec::into_iter);
        let mut drift = self.drift.into_iter();
        self.gens
            .into_iter()
            .map(|g| {
                let (own, lexical) = run_metrics(&g.tokens, window);
                let plain = plain.as_mut().and_then(Iterator::next).map_or_else(
                    || own.clone(),
                    |s| {
                        SequenceMetrics::new(
                            &s.logprobs,
                            &s.entropies,
                            &vec![f64::NAN; s.logprobs.len()],
                            window,
                        )
                    },
                );
                Run {
                    arm: arm.into(),
                    prompt: g.prompt,
                    seed: g.seed,
                    tokens: g.tokens,
                    own,
                    plain,
                    lexical,
                    latent: Vec::new(),
                    drift: drift.next().unwrap_or(Drift::NONE),
                }
            })
            .collect()
    }
}

/// An arm generated on every (prompt, seed) of the plan with `sampler` and `lcm`, scored by
/// the plain model when modulated, and judged when the study has a judge; or, when the
/// study keeps checkpoints, the same arm as a killed run left it under `name`.
pub fn arm_output(
    m: &StudyModel,
    plan: &Plan,
    sampler: &SamplerConfig,
    lcm: Option<&LcmConfig>,
    name: &str,
    label: &str,
) -> Result<ArmOutput> {
    let arm_key = json!({"sampler": format!("{sampler:?}"), "lcm": lcm.map(LcmConfig::to_json)});
    if let Some(saved) = m.checkpoints.and_then(|c| c.load(name, &plan.key(), &arm_key)) {
        m.progress.update(&format!("{label}: resumed"), 1, 1);
        return Ok(saved);
    }
    let gens = generate_arm(m, plan, sampler, lcm, &format!("{label}: generating"))?;
    let plain = match lcm {
        Some(_) => Some(plain_scores(m, plan, &gens, &format!("{label}: plain scores"))?),
        None => None,
    };
    let drift = match m.judge {
        Some(encoder) => judge_drift(m, encoder, plan, &gens, &format!("{label}: judge"))?,
        None => Vec::new(),
    };
    let output = ArmOutput { gens, plain, drift };
    if let Some(c) = m.checkpoints {
        c.save(name, &plan.key(), &arm_key, &output)?;
    }
    Ok(output)
}

/// Each generation's topic drift by the sentence-embedding judge: its prompt and its
/// 64-token segments embedded by `encoder` (a model independent of the one that generated).
pub fn judge_drift(
    m: &StudyModel,
    encoder: &SentenceEncoder,
    plan: &Plan,
    gens: &[Generated],
    label: &str,
) -> Result<Vec<Drift>> {
    let prompts: Vec<Vec<f32>> = plan.prompts.iter().map(|p| encoder.embed(p)).collect::<Result<_>>()?;
    let mut out = Vec::new();
    for (i, g) in gens.iter().enumerate() {
        m.progress.update(label, i, gens.len());
        let pieces: Vec<String> = g.tokens.iter().map(|t| t.text.clone()).collect();
        let segments: Vec<Vec<f32>> = drift::segments(&pieces, drift::SEGMENT_TOKENS)
            .iter()
            .map(|s| encoder.embed(s))
            .collect::<Result<_>>()?;
        out.push(drift::drift(&prompts[g.prompt], &segments));
    }
    m.progress.update(label, gens.len(), gens.len());
    Ok(out)
}

/// Width of the projected states the traces keep (cross-layer projection error, MSMA).
pub const PROJ_DIM: usize = 32;

/// The latent trace of `ids` (modulated by `lcm`), with sentences as its segments.
pub fn trace_ids(m: &StudyModel, ids: &[u32], lcm: Option<&LcmConfig>) -> Result<(Trace, Vec<u32>)> {
    let segment_of = sentence_of(&token_texts(m, ids)?);
    Ok((trace(m.gpu, m.gpu_model, ids, lcm, &segment_of, PROJ_DIM)?, segment_of))
}

/// Latent stability of the positions `from..` of a trace, per layer: the sentences are those
/// that hold any of them.
pub fn latent_from(
    tr: &Trace,
    segment_of: &[u32],
    from: usize,
    hidden: usize,
    window: usize,
) -> Vec<LayerLatent> {
    let first_segment = segment_of.get(from).map_or(0, |&s| s as usize);
    let inputs: Vec<LayerInput> = tr
        .layers
        .iter()
        .map(|l| LayerInput {
            layer: l.layer,
            norms: &l.norms[from..],
            successive_cos: &l.successive_cos[from..],
            projected: &l.projected[from * tr.proj_dim..],
            segment_means: &l.segment_means[first_segment * hidden..],
        })
        .collect();
    layer_latents(&inputs, tr.proj_dim, hidden, window)
}

/// Adds each run's latent stability (over its generated tokens) from a trace of prompt and
/// generation under the arm's own setting.
fn trace_runs(
    m: &StudyModel,
    plan: &Plan,
    runs: &mut [Run],
    lcm: Option<&LcmConfig>,
    window: usize,
    label: &str,
) -> Result<()> {
    let total = runs.len();
    for (i, run) in runs.iter_mut().enumerate() {
        m.progress.update(label, i, total);
        let prompt = &plan.prompt_ids[run.prompt];
        let ids: Vec<u32> = prompt.iter().copied().chain(run.tokens.iter().map(|t| t.id)).collect();
        let (tr, segment_of) = trace_ids(m, &ids, lcm)?;
        run.latent = latent_from(&tr, &segment_of, prompt.len(), m.host.config.hidden, window);
    }
    m.progress.update(label, total, total);
    Ok(())
}

/// Baseline vs `lcm` on every (prompt, seed) of the plan: both arms generated, the modulated
/// one scored by the plain model, both traced, compared.
pub fn compare(m: &StudyModel, plan: &Plan, lcm: &LcmConfig, window: usize) -> Result<Comparison> {
    let t0 = Instant::now();
    let base = arm_output(m, plan, &plan.sampler, None, "baseline", "baseline")?;
    let modulated = arm_output(m, plan, &plan.sampler, Some(lcm), "modulated", "modulated")?;
    let study = Study {
        model: m.host.path.display().to_string(),
        adapter: format!("{} ({:?})", m.gpu.info.name, m.gpu.info.device_type),
        reduced: plan.reduced,
        tokens: plan.tokens,
        seeds: plan.seeds,
        prompts: plan.prompts.clone(),
        temperature: decimal(plan.sampler.temperature),
        top_p: decimal(plan.sampler.top_p),
        window,
        lcm: lcm.to_json(),
        seconds: 0.0,
    };
    let mut base_runs = base.runs(BASELINE, window);
    let mut mod_runs = modulated.runs(MODULATED, window);
    trace_runs(m, plan, &mut base_runs, None, window, "baseline: latent trace")?;
    trace_runs(m, plan, &mut mod_runs, Some(lcm), window, "modulated: latent trace")?;
    let mut report = Comparison::new(study, base_runs, mod_runs);
    report.study.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}
