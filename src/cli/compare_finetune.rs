//! `keel compare-finetune`: plain vs constricted fine-tuning of one model on the same data
//! order and seeds, each arm's step log, and a report (report.json, report.html) on loss,
//! gradient-norm variability, steps to a target loss, validation perplexity and
//! representation drift; the output folder is staged and renamed into place as a whole.

use super::finetune::ConstrictArgs;
use super::progress::Bar;
use super::{gpu, resolve_model, ModelArg};
use crate::generate::trace::{trace, Trace};
use crate::gpu::Gpu;
use crate::metrics::{cosine, widen};
use crate::model::{GpuModel, LoadedModel};
use crate::ops::optim::AdamW;
use crate::report::finetune::{ArmRun, FinetuneComparison, CONSTRICTED, PLAIN};
use crate::study::PROJ_DIM;
use crate::train::constrict::ConstrictConfig;
use crate::train::graph::ActivationMemory;
use crate::train::log::read_log;
use crate::train::run::{finetune, FinetuneConfig};
use crate::train::schedule::Schedule;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;

/// The probe text the drift is measured on, unless --probe names a file.
const DEFAULT_PROBE: &str = "Once upon a time, there was a little girl who loved to read. \
     Every night she opened a book and the words carried her far away.";

#[derive(Args)]
pub struct CompareFinetuneArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Training data: a text file or a .jsonl of {"ids": [...]} rows (as `keel finetune`)
    #[arg(long)]
    data: PathBuf,
    /// Optimizer steps per fine-tune
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Seeds 0 .. S-1 (data order; the paired units)
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Rows per batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per row
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Learning rate of both arms (AdamW, constant)
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Held-out last fraction of the rows, for validation perplexity
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f32,
    /// Text file the representation drift is measured on [default: a built-in sentence pair]
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Output folder (replaced as a whole when the report is complete)
    #[arg(long, default_value = "keel-finetune-report")]
    out: PathBuf,
    /// The constricted arm's options (at least one must change something)
    #[command(flatten)]
    constrict: ConstrictArgs,
}

/// Checks everything that needs no model.
fn check(a: &CompareFinetuneArgs) -> Result<(ConstrictConfig, String)> {
    if a.out.exists() && !a.out.is_dir() {
        bail!("--out {}: exists and is not a folder", a.out.display());
    }
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if a.batch == 0 || a.seq_len == 0 {
        bail!("--batch and --seq-len must be at least 1");
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", a.lr);
    }
    if !a.data.is_file() {
        bail!("--data {}: no such file", a.data.display());
    }
    let constrict = a.constrict.config()?;
    if constrict.is_off() {
        bail!(
            "the constricted arm is defined by the constriction flags, and none changes anything: \
             give --hgc-alpha, --hgc-mu, --align-beta, --cgfm-local, --cgfm-global or --cgfm-adaptive-lr"
        );
    }
    let probe = match &a.probe {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("--probe {}: cannot read", p.display()))?
        }
        None => DEFAULT_PROBE.to_string(),
    };
    Ok((constrict, probe))
}

/// The trace of the probe with one segment per token, so each segment mean is a token's state.
fn probe_trace(gpu: &'static Gpu, model: &LoadedModel, ids: &[u32]) -> Result<Trace> {
    let m = GpuModel::upload(gpu, model)?;
    let segments: Vec<u32> = (0..ids.len() as u32).collect();
    trace(gpu, &m, ids, None, &segments, PROJ_DIM)
}

/// Per block: mean over the tokens of cos(base state, tuned state).
fn drift(base: &Trace, tuned: &Trace, hidden: usize) -> Vec<f64> {
    base.layers
        .iter()
        .zip(&tuned.layers)
        .map(|(b, t)| {
            let cos: Vec<f64> = b
                .segment_means
                .chunks(hidden)
                .zip(t.segment_means.chunks(hidden))
                .map(|(x, y)| cosine(&widen(x), &widen(y)))
                .collect();
            crate::metrics::mean(&cos)
        })
        .collect()
}

pub fn run(a: CompareFinetuneArgs, adapter: &Option<String>) -> Result<()> {
    let (constrict, probe) = check(&a)?;
    let path = resolve_model(&a.model)?;
    let base = crate::model::load(&path)?;
    let gpu = gpu(adapter)?;
    let mut probe_ids = base.tokenizer.encode(&probe)?;
    probe_ids.truncate(base.config.max_positions);
    if probe_ids.is_empty() {
        bail!("the probe text encodes to no tokens");
    }
    let base_trace = probe_trace(gpu, &base, &probe_ids)?;
    let hidden = base.config.hidden;
    let base_name = path.display().to_string();
    let study = json!({
        "model": base_name, "data": a.data.display().to_string(), "steps": a.steps, "seeds": a.seeds,
        "batch": a.batch, "seq_len": a.seq_len, "lr": a.lr, "val_fraction": a.val_fraction,
        "constrict": format!("{constrict:?}"), "probe_tokens": probe_ids.len(),
    });
    let arms = [(PLAIN, ConstrictConfig::default()), (CONSTRICTED, constrict)];
    let mut report = None;
    crate::atomic::write_dir(&a.out, |dir| {
        let mut runs: Vec<Vec<ArmRun>> = vec![Vec::new(), Vec::new()];
        for (k, (arm, constrict)) in arms.iter().enumerate() {
            let mut log = String::new();
            let progress = Bar::new(format!("{arm}: fine-tuning"));
            for seed in 0..a.seeds as u64 {
                progress.update(seed as usize, a.seeds);
                let work = dir.join(format!(".work-{arm}-{seed}"));
                let cfg = FinetuneConfig {
                    data: a.data.clone(),
                    out: work.clone(),
                    steps: a.steps,
                    batch: a.batch,
                    seq_len: a.seq_len,
                    grad_accum: 1,
                    adamw: AdamW { lr: a.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
                    warmup: 0,
                    schedule: Schedule::Constant,
                    grad_clip: 1.0,
                    decay_norms_biases: true,
                    lora: None,
                    weights: crate::model::WeightChoice::Auto,
                    memory: ActivationMemory::Keep,
                    lcm: None,
                    constrict: *constrict,
                    precision: Default::default(),
                    val_fraction: Some(a.val_fraction),
                    val_data: None,
                    eval_every: 0,
                    save_every: 0,
                    keep_newest_checkpoint_only: false,
                    seed,
                    shuffle: true,
                    resume: false,
                };
                let summary = finetune(gpu, crate::model::load(&path)?, &base_name, &cfg, &mut |_| {})?;
                let lines = read_log(&work.join("log.jsonl"))?;
                let (mut losses, mut norms, mut val_loss) = (Vec::new(), Vec::new(), f64::NAN);
                for mut v in lines {
                    if let Some(l) = v.get("loss").and_then(Value::as_f64) {
                        losses.push(l);
                        let n = v["layer_grad_norms"]
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_f64).collect());
                        norms.push(n.unwrap_or_default());
                    }
                    if let Some(l) = v.get("val_loss").and_then(Value::as_f64) {
                        val_loss = l;
                    }
                    v["seed"] = json!(seed);
                    log.push_str(&v.to_string());
                    log.push('\n');
                }
                let tuned = crate::model::load(&summary.final_dir)?;
                let tuned_trace = probe_trace(gpu, &tuned, &probe_ids)?;
                let drift = drift(&base_trace, &tuned_trace, hidden);
                std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
                runs[k].push(ArmRun::new(seed, losses, norms, val_loss, drift));
            }
            progress.update(a.seeds, a.seeds);
            std::fs::create_dir_all(dir.join(arm))?;
            crate::atomic::write_file(&dir.join(arm).join("log.jsonl"), log.as_bytes())?;
        }
        let constricted = runs.pop().unwrap_or_default();
        let plain = runs.pop().unwrap_or_default();
        let r = FinetuneComparison::new(study.clone(), plain, constricted);
        r.write_into(dir)?;
        report = Some(r);
        Ok(())
    })?;
    if let Some(r) = report {
        print!("{}", r.table_text());
    }
    println!("(* = the 95 % interval excludes 0)  report: {}", a.out.join("report.html").display());
    Ok(())
}
