//! A whole fine-tuning run: data, steps, validation, the step log, checkpoints written
//! atomically, resume after a kill, and the final model (or adapter) with a loss plot.
//!
//! `OUT/checkpoint-N/` holds the state after N steps: the model as transformers loads it
//! (`model.safetensors`, `config.json`, `tokenizer.json`) or the PEFT adapter, plus
//! `optimizer.safetensors` (AdamW moments) and `trainer_state.json` (with mixed precision
//! also the loss scale and its count of good steps). Batches are a pure
//! function of (step, seed), so a resumed run sees the same data as an uninterrupted one
//! and, the kernels being deterministic, computes the same losses.

use super::constrict::ConstrictConfig;
use super::data::{Row, TrainData};
use super::graph::ActivationMemory;
use super::log::{loss_curve, read_log, StepLog};
use super::precision::{LossScaler, Precision};
use super::schedule::{lr_at, Schedule};
use super::trainer::{Method, OptimConfig, Trainer};
use crate::atomic;
use crate::chat::ChatTemplate;
use crate::gpu::{Gpu, WeightFormat};
use crate::model::adapter::{parse_targets, Lora};
use crate::model::load::read_safetensors;
use crate::model::save::{safetensors_bytes, write_hf_files};
use crate::model::{GpuModel, LoadedModel, WeightChoice};
use crate::modulate::LcmConfig;
use crate::ops::optim::AdamW;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// LoRA's settings.
#[derive(Clone, Debug)]
pub struct LoraOptions {
    /// The rank of the low-rank update.
    pub rank: usize,
    /// The update is scaled by alpha / rank.
    pub alpha: f32,
    /// `--lora-targets`: "q,v", "all", ...
    pub targets: String,
}

/// Everything `keel finetune` takes besides the model.
#[derive(Clone, Debug)]
pub struct FinetuneConfig {
    /// The training text (a UTF-8 file).
    pub data: PathBuf,
    /// The folder for the log, the checkpoints and the final model or adapter.
    pub out: PathBuf,
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// AdamW's learning rate, betas, epsilon and weight decay.
    pub adamw: AdamW,
    /// Steps of linear learning-rate warmup.
    pub warmup: usize,
    /// The learning rate after warmup: constant or cosine.
    pub schedule: Schedule,
    /// Largest global gradient norm (0: no clipping).
    pub grad_clip: f32,
    /// Weight decay on norms and biases too.
    pub decay_norms_biases: bool,
    /// Train a LoRA adapter instead of every weight.
    pub lora: Option<LoraOptions>,
    /// The frozen base's format under LoRA (`--weights`; `auto` keeps a GGUF's packed blocks);
    /// full fine-tuning trains f32 weights whatever this says.
    pub weights: WeightChoice,
    /// Activations kept for the backward pass or recomputed.
    pub memory: ActivationMemory,
    /// LCM during training (forward and its reverse scan), when on.
    pub lcm: Option<LcmConfig>,
    /// HGC, the alignment loss and CGFM (the default: none of them).
    pub constrict: ConstrictConfig,
    /// The products' precision: f32, or mixed (f16 operands, dynamic loss scaling).
    pub precision: Precision,
    /// Hold out this fraction of the data for validation.
    pub val_fraction: Option<f32>,
    /// Validate on this file instead.
    pub val_data: Option<PathBuf>,
    /// Validate every K steps (0: only at the end, when there is validation data).
    pub eval_every: usize,
    /// Save a checkpoint every K steps (0: only the final model).
    pub save_every: usize,
    /// Keep only the newest checkpoint, removing the older ones once it is written.
    pub keep_newest_checkpoint_only: bool,
    /// Seeds the data order and the LoRA initialisation.
    pub seed: u64,
    /// Shuffle the training sequences.
    pub shuffle: bool,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
}

/// One step as the progress display sees it.
pub struct Progress {
    /// The step just done, 0-based.
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// Training loss of the step.
    pub loss: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Training throughput of the step.
    pub tokens_per_s: f64,
    /// Validation loss, on the steps that validate.
    pub val_loss: Option<f64>,
    /// Mean HGC λ over kinds and blocks, when HGC is on.
    pub mean_lambda: Option<f64>,
    /// Mixed precision: the step's loss scale, and whether its gradients overflowed so that
    /// it was skipped.
    pub loss_scale: Option<f64>,
    pub skipped: bool,
}

/// What a finished run leaves.
pub struct Summary {
    /// The final model or adapter.
    pub final_dir: PathBuf,
    /// The step the run started from (0, or the resumed checkpoint's).
    pub first_step: usize,
    /// The last step's training loss.
    pub last_loss: Option<f64>,
    /// The loss plot (SVG).
    pub plot: PathBuf,
    /// Mixed precision: the steps this run skipped for gradients that overflowed.
    pub skipped_steps: usize,
}

/// The newest complete checkpoint in `out` and its step count.
pub fn latest_checkpoint(out: &Path) -> Option<(usize, PathBuf)> {
    std::fs::read_dir(out)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            // Folders appear by rename only when whole; the state file is written last anyway.
            e.path().join("trainer_state.json").is_file().then(|| (step, e.path()))
        })
        .max_by_key(|(step, _)| *step)
}

/// Removes the hidden staging folders (`.NAME.tmp-PID`, `.NAME.old-PID`) a killed run left.
fn remove_abandoned_staging(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-")) {
            let _ = if e.path().is_dir() {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
        }
    }
}

/// Removes the checkpoints of `out` older than step `newest`.
fn remove_checkpoints_before(out: &Path, newest: usize) -> Result<()> {
    for e in std::fs::read_dir(out)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.strip_prefix("checkpoint-").and_then(|s| s.parse::<usize>().ok()).is_some_and(|s| s < newest)
        {
            std::fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

fn method_name(cfg: &FinetuneConfig) -> &'static str {
    if cfg.lora.is_some() {
        "lora"
    } else {
        "full"
    }
}

/// The trainer state of checkpoint `dir`, checked against what `cfg` asks for (the CLI checks
/// before it says it resumes, so that a refusal is its only line).
pub fn resumable_state(dir: &Path, cfg: &FinetuneConfig) -> Result<Value> {
    let state: Value = serde_json::from_slice(&std::fs::read(dir.join("trainer_state.json"))?)
        .with_context(|| format!("{}: unreadable trainer_state.json", dir.display()))?;
    for (key, want) in
        [("method", json!(method_name(cfg))), ("batch", json!(cfg.batch)), ("seq_len", json!(cfg.seq_len))]
    {
        if state[key] != want {
            bail!("{}: saved with {key} = {}, but this run asks for {want}", dir.display(), state[key]);
        }
    }
    // Checkpoints from before the option are f32.
    let saved_precision = state["precision"].as_str().unwrap_or("f32");
    if saved_precision != cfg.precision.name() {
        bail!(
            "{}: saved with --precision {saved_precision}, but this run asks for --precision {}",
            dir.display(),
            cfg.precision.name()
        );
    }
    Ok(state)
}

/// Runs (or resumes) a fine-tune of `model`, `base_name` naming it in adapter configs.
pub fn finetune(
    gpu: &'static Gpu,
    model: LoadedModel,
    base_name: &str,
    cfg: &FinetuneConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    if cfg.steps == 0 || cfg.grad_accum == 0 {
        bail!("--steps and --grad-accum must be at least 1");
    }
    let log_path = cfg.out.join("log.jsonl");
    let resume_from = latest_checkpoint(&cfg.out);
    let started = log_path.exists() || resume_from.is_some();
    match (cfg.resume, &resume_from) {
        (false, _) if started => bail!(
            "--out {} already holds a fine-tune: pass --resume to continue it, or choose another folder",
            cfg.out.display()
        ),
        (true, None) if started => bail!(
            "--resume: {} holds a log.jsonl but no checkpoint (the run stopped before its first one), \
             so there is nothing to resume; delete the folder to start over, or choose another --out",
            cfg.out.display()
        ),
        (true, None) => bail!(
            "--resume: {} holds no checkpoint to resume from; run without --resume to start a fine-tune",
            cfg.out.display()
        ),
        _ => {}
    }
    let resume_from = if cfg.resume { resume_from } else { None };
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating --out {}", cfg.out.display()))?;
    remove_abandoned_staging(&cfg.out);
    let config = model.config.clone();
    // `{"messages": [...]}` rows of a .jsonl file go through the model's chat template.
    let jsonl = |p: &Path| p.extension().is_some_and(|e| e == "jsonl");
    let chat = if jsonl(&cfg.data) || cfg.val_data.as_deref().is_some_and(jsonl) {
        ChatTemplate::for_model(&model.path, &|id| model.tokenizer.token_text(id))?
    } else {
        None
    };
    let read =
        |path: &Path| TrainData::from_file(path, &model.tokenizer, chat.as_ref(), cfg.seq_len, config.vocab);
    let mut data = read(&cfg.data)?;
    let val = match (&cfg.val_data, cfg.val_fraction) {
        (Some(_), Some(_)) => bail!("give --val-data or --val-fraction, not both"),
        (Some(path), None) => Some(read(path)?),
        (None, Some(f)) => Some(data.split_validation(f)?),
        (None, None) => None,
    };

    // The starting point: the model as given, or the newest checkpoint's state.
    let mut first_step = 0;
    let mut weights_model = model;
    let mut lora = match &cfg.lora {
        Some(o) => {
            Some(Lora::init(&config, &parse_targets(&config, &o.targets)?, o.rank, o.alpha, cfg.seed)?)
        }
        None => None,
    };
    let mut moments = None;
    // CGFM's adaptive step size keeps the first step's gradient norm.
    let mut resumed_lr_reference = None;
    let mut resumed_loss_scale = None;
    if let Some((step, dir)) = &resume_from {
        let state = resumable_state(dir, cfg)?;
        if let (Some(scale), Some(good)) =
            (state["loss_scale"].as_f64(), state["loss_scale_good_steps"].as_u64())
        {
            resumed_loss_scale = Some(LossScaler { scale: scale as f32, good_steps: good as u32 });
        }
        match &mut lora {
            Some(l) => *l = Lora::load(dir, &config)?,
            None => weights_model = crate::model::load(dir)?,
        }
        let file = dir.join("optimizer.safetensors");
        moments = Some(read_safetensors(&std::fs::read(&file)?, &file.display().to_string())?);
        first_step = *step;
        resumed_lr_reference = state["lr_reference"].as_f64().map(|r| r as f32);
    }
    let tokenizer_json = weights_model.tokenizer.json().to_string();
    let choice = if cfg.lora.is_some() { cfg.weights } else { WeightChoice::Format(WeightFormat::F32) };
    let gpu_model = GpuModel::upload_with(gpu, &weights_model, choice)?;
    drop(weights_model);
    let optim = OptimConfig {
        adamw: cfg.adamw,
        grad_clip: cfg.grad_clip,
        decay_norms_biases: cfg.decay_norms_biases,
    };
    let method = match lora {
        Some(l) => Method::Lora(l),
        None => Method::Full,
    };
    let mut trainer = Trainer::new(gpu, gpu_model, (cfg.batch, cfg.seq_len), cfg.memory, optim, method)?;
    if let Some(m) = &moments {
        trainer.restore_moments(m, first_step as u32)?;
    }
    if let Some(lcm) = &cfg.lcm {
        trainer.set_lcm(lcm)?;
    }
    trainer.set_constrict(&cfg.constrict)?;
    if let Some(reference) = resumed_lr_reference {
        trainer.restore_lr_reference(reference)?;
    }
    trainer.set_precision(cfg.precision)?;
    if let Some(scaler) = resumed_loss_scale {
        trainer.restore_loss_scale(scaler)?;
    }

    let save = |trainer: &Trainer, dir: &Path, with_state: Option<usize>| -> Result<()> {
        atomic::write_dir(dir, |tmp| {
            match trainer.adapters()? {
                Some(l) => l.write_files(tmp, &config, base_name)?,
                None => {
                    write_hf_files(tmp, &config, &trainer.download(&trainer.model.weights)?, &tokenizer_json)?
                }
            }
            if let Some(step) = with_state {
                std::fs::write(tmp.join("optimizer.safetensors"), safetensors_bytes(&trainer.moments()?)?)?;
                let mut state = json!({"step": step, "method": method_name(cfg), "batch": cfg.batch,
                                       "seq_len": cfg.seq_len, "seed": cfg.seed,
                                       "precision": cfg.precision.name()});
                if let Some(reference) = trainer.lr_reference() {
                    state["lr_reference"] = json!(reference);
                }
                if let Some(scaler) = trainer.scaler {
                    state["loss_scale"] = json!(scaler.scale);
                    state["loss_scale_good_steps"] = json!(scaler.good_steps);
                }
                std::fs::write(tmp.join("trainer_state.json"), serde_json::to_string_pretty(&state)?)?;
            }
            Ok(())
        })
    };

    let mut log = StepLog::open(&log_path, Some(first_step))?;
    let validate = |trainer: &Trainer, log: &mut StepLog, step: usize| -> Result<Option<f64>> {
        let Some(val) = &val else { return Ok(None) };
        let rows: Vec<Row> = val.val_batches(cfg.batch).flatten().collect();
        let loss = trainer.evaluate(&rows)?;
        log.append(&json!({"step": step, "val_loss": loss, "val_ppl": loss.exp()}))?;
        Ok(Some(loss))
    };
    let mut last_loss = None;
    let mut skipped_steps = 0;
    for step in first_step..cfg.steps {
        let lr = lr_at(step, cfg.adamw.lr, cfg.warmup, cfg.steps, cfg.schedule, 0.0);
        let micro: Vec<Vec<Row>> = (0..cfg.grad_accum)
            .map(|k| data.batch(step * cfg.grad_accum + k, cfg.batch, cfg.shuffle, cfg.seed))
            .collect();
        let t0 = Instant::now();
        let report = trainer.step(&micro, lr)?;
        let tokens_per_s = report.tokens as f64 / t0.elapsed().as_secs_f64();
        // A skipped step's gradients overflowed the loss scale, which has halved: not a divergence.
        if !(report.loss + report.align_loss).is_finite() || !(report.grad_norm.is_finite() || report.skipped)
        {
            let kept = latest_checkpoint(&cfg.out)
                .map_or("none was saved yet".to_string(), |(_, d)| d.display().to_string());
            bail!(
                "step {step}: training diverged (loss {}, gradient norm {}) and stopped; \
                 the last good checkpoint is {kept}. Try a lower --lr or --grad-clip 1",
                report.loss,
                report.grad_norm
            );
        }
        let loss = report.loss + report.align_loss;
        let lr = report.lr;
        let mut line = json!({"step": step, "loss": loss, "grad_norm": report.grad_norm, "lr": lr,
                              "tokens_per_s": tokens_per_s,
                              "layer_grad_norms": block_grad_norms(&trainer, &report.tensor_norms, config.layers)});
        if !cfg.constrict.is_off() {
            line["ce_loss"] = json!(report.loss);
            line["align_loss"] = json!(report.align_loss);
        }
        if let Some(scale) = report.loss_scale {
            line["loss_scale"] = json!(scale);
        }
        if report.skipped {
            line["skipped"] = json!(true);
            skipped_steps += 1;
        }
        let mut mean_lambda = None;
        if let Some(table) = trainer.hgc_lambda()? {
            let all: Vec<f32> = table.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            mean_lambda = Some(all.iter().map(|&x| x as f64).sum::<f64>() / all.len().max(1) as f64);
            line["lambda"] =
                table.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>().into();
        }
        log.append(&line)?;
        last_loss = Some(loss);
        let done = step + 1;
        // Every --eval-every steps and once at the end (never twice for the same step).
        let val_loss = if (cfg.eval_every > 0 && done % cfg.eval_every == 0) || done == cfg.steps {
            validate(&trainer, &mut log, step)?
        } else {
            None
        };
        let (loss_scale, skipped) = (report.loss_scale, report.skipped);
        progress(&Progress {
            step,
            steps: cfg.steps,
            loss,
            lr,
            tokens_per_s,
            val_loss,
            mean_lambda,
            loss_scale,
            skipped,
        });
        if cfg.save_every > 0 && done % cfg.save_every == 0 {
            save(&trainer, &cfg.out.join(format!("checkpoint-{done}")), Some(done))?;
            if cfg.keep_newest_checkpoint_only {
                remove_checkpoints_before(&cfg.out, done)?;
            }
        }
    }
    log.close()?;
    let final_dir = cfg.out.join("final");
    save(&trainer, &final_dir, None)?;
    let plot = cfg.out.join("loss.svg");
    let chart = loss_curve(&read_log(&log_path)?);
    atomic::write_file(&plot, chart.to_svg().as_bytes())?;
    Ok(Summary { final_dir, first_step, last_loss, plot, skipped_steps })
}

/// The gradient norm of each block (all its tensors), from the per-tensor norms.
fn block_grad_norms(trainer: &Trainer, tensor_norms: &[f64], layers: usize) -> Vec<f64> {
    let mut sq = vec![0.0; layers];
    for (name, norm) in trainer.param_names().iter().zip(tensor_norms) {
        let block = name.strip_prefix("blocks.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        if let Some(l) = block {
            sq[l] += norm * norm;
        }
    }
    sq.into_iter().map(f64::sqrt).collect()
}

/// Reads the losses of a run's log, by step (for tests and reports).
pub fn logged_losses(out: &Path) -> Result<Vec<(usize, f64)>> {
    Ok(read_log(&out.join("log.jsonl"))?
        .iter()
        .filter_map(|v| Some((v["step"].as_u64()? as usize, v.get("loss")?.as_f64()?)))
        .collect())
}
