//! `keel finetune` (full or LoRA, with checkpoints and resume) and `keel merge`.

use super::progress::Bar;
use super::{gpu, resolve_model, LcmArgs, ModelArg};
use crate::gpu::WeightFormat;
use crate::model::adapter::{parse_targets, Lora};
use crate::model::save::save_hf_model;
use crate::model::WeightChoice;
use crate::ops::optim::AdamW;
use crate::train::constrict::{CgfmConfig, ConstrictConfig, HgcConfig, HgcOn};
use crate::train::graph::ActivationMemory;
use crate::train::memory::{stored_formats, MemoryPlan, Trained};
use crate::train::precision::Precision;
use crate::train::run::{
    finetune, latest_checkpoint, resumable_state, FinetuneConfig, LoraOptions, Progress as StepProgress,
};
use crate::train::schedule::Schedule;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Training data: a text file (tokenized and packed), or a .jsonl of {"ids": [...]} rows
    /// of --seq-len + 1 ids, taken as they are (in file order with --shuffle false)
    #[arg(long)]
    data: PathBuf,
    /// Output folder: log.jsonl, checkpoint-N/, final/, loss.svg
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps to run (counted from 0 in log.jsonl and on the terminal)
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Rows per micro-batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per row
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Micro-batches per optimizer step (gradient accumulation)
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate (AdamW)
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// AdamW's decoupled weight decay
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Exempt norm weights and biases from weight decay
    #[arg(long)]
    no_decay_norms_biases: bool,
    /// AdamW's decay of the gradient's running mean, in [0, 1)
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    /// AdamW's decay of the squared gradient's running mean, in [0, 1)
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    /// AdamW's epsilon, added to the denominator
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,
    /// Linear warmup steps
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// The rate after the warmup
    #[arg(long, value_enum, default_value_t = Schedule::Constant)]
    schedule: Schedule,
    /// Clip the global gradient norm (0 = off)
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    /// Train LoRA adapters of this rank instead of every weight
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA scale numerator: updates are scaled by alpha / rank (default: 2 × rank)
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// Where LoRA goes: q,k,v,o,gate,up,down (any list) or all
    #[arg(long, default_value = "q,v")]
    lora_targets: String,
    /// Recompute each block's activations in the backward pass (less memory, ~1/3 more compute)
    #[arg(long)]
    recompute: bool,
    /// Precision of the training products: f32, or mixed (f16 operands, f32 accumulation, f32
    /// master weights and AdamW, dynamic loss scaling; a step whose gradients overflow is
    /// skipped and logged)
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Hold out the last fraction of the rows for validation
    #[arg(long)]
    val_fraction: Option<f32>,
    /// Validation data (same formats as --data)
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// Validate every K steps (0 = at the end only, when validation data is given)
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Save a checkpoint every K steps, all kept (0 = the final model only). Default: every
    /// tenth of the run, keeping only the newest, so that --resume can always continue
    #[arg(long)]
    save_every: Option<usize>,
    /// Seeds shuffling and LoRA's initialisation
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Draw the rows in a seeded random order (false: in file order)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    shuffle: bool,
    /// Continue from the newest checkpoint in --out (refused when there is none)
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    lcm: LcmArgs,
    #[command(flatten)]
    constrict: ConstrictArgs,
    #[command(flatten)]
    plan: PlanArgs,
}

/// Memory planning: print the prediction instead of training, against the adapter's memory
/// or another card's.
#[derive(Args, Clone, Debug)]
pub struct PlanArgs {
    /// Print the GPU memory the run would take (weights, adapters, optimizer, activations
    /// with and without --recompute) and the largest batch that fits, then stop
    #[arg(long)]
    pub dry_run: bool,
    /// Plan against this much GPU memory (GiB) instead of what the adapter reports
    #[arg(long)]
    pub memory_gb: Option<f64>,
}

/// The memory a run may use: `--memory-gb`, else, on a CPU adapter (lavapipe), the host
/// memory available; wgpu reports no memory size for GPUs.
fn budget(gpu: &crate::gpu::Gpu, memory_gb: Option<f64>) -> Result<Option<(u64, String)>> {
    if let Some(gb) = memory_gb {
        if !(gb.is_finite() && gb > 0.0) {
            bail!("--memory-gb must be a positive number of GiB, got {gb}");
        }
        return Ok(Some(((gb * GIB) as u64, format!("{gb} GiB (--memory-gb)"))));
    }
    if gpu.info.device_type != wgpu::DeviceType::Cpu {
        return Ok(None);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    Ok(kib.map(|k| {
        (k * 1024, format!("{:.1} GiB (host memory available to the CPU adapter)", (k * 1024) as f64 / GIB))
    }))
}

const GIB: f64 = (1u64 << 30) as f64;

/// A run's memory, planned: printed with `--dry-run` (then `Ok(true)`: stop), refused in
/// words, before anything is allocated, when it would not fit (naming what does).
pub fn plan_run(
    gpu: &crate::gpu::Gpu,
    plan_args: &PlanArgs,
    (cfg, plan, what): (&crate::model::ModelConfig, &MemoryPlan, &str),
    (batch, seq_len): (usize, usize),
    memory: ActivationMemory,
) -> Result<bool> {
    let budget = budget(gpu, plan_args.memory_gb)?;
    let binding = gpu.limits.max_storage_buffer_binding_size;
    let fits = |memory| {
        let rows = plan.max_rows(budget.as_ref().map_or(u64::MAX, |b| b.0), binding, memory);
        let batch = rows / seq_len as u64;
        if batch == 0 {
            format!("no batch of --seq-len {seq_len} ({rows} tokens at most)")
        } else {
            format!("--batch {batch} at --seq-len {seq_len} ({rows} tokens)")
        }
    };
    let keep = plan.bytes((batch, seq_len), ActivationMemory::Keep);
    let recompute = plan.bytes((batch, seq_len), ActivationMemory::Recompute);
    let want = plan.bytes((batch, seq_len), memory);
    if plan_args.dry_run {
        let gib = |b: u64| format!("{:.3} GiB ({b} bytes)", b as f64 / GIB);
        println!("memory plan: {what}, batch {batch} × {seq_len} tokens ({} parameters)", cfg.param_count());
        println!("  weights:      {}", gib(keep.weights));
        println!("  adapters:     {}", gib(keep.adapters));
        println!("  optimizer:    {}  (gradients, AdamW m and v)", gib(keep.optimizer));
        println!(
            "  activations:  {}  kept; {} with --recompute",
            gib(keep.activations),
            gib(recompute.activations)
        );
        println!("  total:        {}; {} with --recompute", gib(keep.total()), gib(recompute.total()));
        match &budget {
            Some((_, source)) => println!("budget:       {source}"),
            None => println!(
                "budget:       unknown (wgpu reports no memory size for this GPU; plan with --memory-gb)"
            ),
        }
        println!("largest binding: {} (the adapter's max_storage_buffer_binding_size)", gib(binding));
        let (name, bytes) = &plan.largest_weight;
        if *bytes > binding {
            println!(
                "largest weight: {name}, {}: over the largest binding, so this adapter cannot hold the model",
                gib(*bytes)
            );
        }
        println!(
            "fits:         {}; with --recompute {}",
            fits(ActivationMemory::Keep),
            fits(ActivationMemory::Recompute)
        );
        return Ok(true);
    }
    // A weight over the binding is refused by the upload, naming it (before any upload).
    let weights_bind = plan.largest_weight.1 <= binding;
    let too_wide = weights_bind && plan.max_rows(u64::MAX, binding, memory) < (batch * seq_len) as u64;
    let too_big = budget.as_ref().filter(|(b, _)| want.total() > *b);
    if too_wide || too_big.is_some() {
        let need = match too_big {
            Some((_, source)) => {
                format!("needs {:.2} GiB of GPU memory, more than {source}", want.total() as f64 / GIB)
            }
            None => format!("needs a binding larger than the adapter's {binding} bytes"),
        };
        bail!(
            "batch {batch} × {seq_len} tokens {need}; what fits: {} (with --recompute: {}); see --dry-run",
            fits(memory),
            fits(ActivationMemory::Recompute)
        );
    }
    Ok(false)
}

/// The constriction options of methods.md sections 2-3 (HGC, the alignment loss, CGFM), as
/// `keel finetune` takes them; their defaults change nothing.
#[derive(Args, Clone, Debug)]
pub struct ConstrictArgs {
    /// HGC: how strongly a gradient that differs from the block below's is damped (0 = off)
    #[arg(long, default_value_t = 0.0)]
    pub hgc_alpha: f32,
    /// HGC: how much of the block below's gradient is mixed in, in [0, 1]
    #[arg(long, default_value_t = 0.0)]
    pub hgc_mu: f32,
    /// HGC: alpha grows with depth as alpha (1 + S l / L)
    #[arg(long, default_value_t = 0.0)]
    pub hgc_depth_slope: f32,
    /// HGC: divide the distance by the two gradients' norms (scale-free alpha)
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub hgc_normalized: bool,
    /// HGC acts on the gradient (before AdamW) or on AdamW's update
    #[arg(long, value_enum, default_value_t = HgcOn::Gradient)]
    pub hgc_on: HgcOn,
    /// Weight of the alignment loss between adjacent blocks' normalised outputs (0 = off)
    #[arg(long, default_value_t = 0.0)]
    pub align_beta: f32,
    /// CGFM: weight of each linear weight gradient's local part (1 = as it is)
    #[arg(long, default_value_t = 1.0)]
    pub cgfm_local: f32,
    /// CGFM: weight of its global part, from the per-sequence means (1 = as it is)
    #[arg(long, default_value_t = 1.0)]
    pub cgfm_global: f32,
    /// CGFM: step size lr (1 + |G| / |G at step 0|), clamped to [--lr-min, --lr-max]
    #[arg(long)]
    pub cgfm_adaptive_lr: bool,
    /// Smallest adaptive step size (with --cgfm-adaptive-lr)
    #[arg(long)]
    pub lr_min: Option<f64>,
    /// Largest adaptive step size (with --cgfm-adaptive-lr)
    #[arg(long)]
    pub lr_max: Option<f64>,
}

impl ConstrictArgs {
    /// The library's options, checked (all but what depends on the model).
    pub fn config(&self) -> Result<ConstrictConfig> {
        let adaptive_lr = match (self.cgfm_adaptive_lr, self.lr_min, self.lr_max) {
            (true, Some(lo), Some(hi)) => Some((lo, hi)),
            (true, _, _) => bail!("--cgfm-adaptive-lr needs --lr-min and --lr-max"),
            (false, None, None) => None,
            (false, _, _) => {
                bail!("--lr-min and --lr-max bound the adaptive step size: add --cgfm-adaptive-lr")
            }
        };
        let cfg = ConstrictConfig {
            hgc: HgcConfig {
                alpha: self.hgc_alpha,
                mu: self.hgc_mu,
                depth_slope: self.hgc_depth_slope,
                normalized: self.hgc_normalized,
                on: self.hgc_on,
            },
            align_beta: self.align_beta,
            cgfm: CgfmConfig { local: self.cgfm_local, global: self.cgfm_global, adaptive_lr },
        };
        cfg.check()?;
        Ok(cfg)
    }
}

fn check_positive(flag: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a positive number, got {v}");
    }
    Ok(())
}

pub fn run(a: FinetuneArgs, adapter: &Option<String>) -> Result<()> {
    if a.lora_rank.is_none() {
        a.model.require_f32("full fine-tuning")?;
    }
    check_positive("--lr", a.lr)?;
    check_positive("--adam-eps", a.adam_eps)?;
    if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
        bail!("--weight-decay must be 0 or more, got {}", a.weight_decay);
    }
    for (flag, b) in [("--beta1", a.beta1), ("--beta2", a.beta2)] {
        if !(0.0..1.0).contains(&b) {
            bail!("{flag} must be in [0, 1), got {b}");
        }
    }
    if !(a.grad_clip.is_finite() && a.grad_clip >= 0.0) {
        bail!("--grad-clip must be 0 (off) or positive, got {}", a.grad_clip);
    }
    let lora = a.lora_rank.map(|rank| LoraOptions {
        rank,
        alpha: a.lora_alpha.unwrap_or(2.0 * rank as f32),
        targets: a.lora_targets.clone(),
    });
    if lora.is_none() && a.lora_alpha.is_some() {
        bail!("--lora-alpha needs --lora-rank");
    }
    let cfg = FinetuneConfig {
        data: a.data,
        out: a.out,
        steps: a.steps,
        batch: a.batch,
        seq_len: a.seq_len,
        grad_accum: a.grad_accum,
        adamw: AdamW {
            lr: a.lr,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.adam_eps,
            weight_decay: a.weight_decay,
        },
        warmup: a.warmup,
        schedule: a.schedule,
        grad_clip: a.grad_clip,
        decay_norms_biases: !a.no_decay_norms_biases,
        lora,
        weights: a.model.weights(),
        memory: if a.recompute { ActivationMemory::Recompute } else { ActivationMemory::Keep },
        lcm: a.lcm.config()?,
        constrict: a.constrict.config()?,
        precision: a.precision,
        val_fraction: a.val_fraction,
        val_data: a.val_data,
        eval_every: a.eval_every,
        save_every: a.save_every.unwrap_or(a.steps.div_ceil(10)),
        keep_newest_checkpoint_only: a.save_every.is_none(),
        seed: a.seed,
        shuffle: a.shuffle,
        resume: a.resume,
    };
    let path = resolve_model(&a.model)?;
    let model = crate::model::load(&path)?;
    let gpu = gpu(adapter)?;
    let trained = match &cfg.lora {
        Some(o) => {
            let slots = parse_targets(&model.config, &o.targets)?;
            Trained::lora(&Lora::init(&model.config, &slots, o.rank, o.alpha, 0)?)
        }
        None => Trained::Full,
    };
    let choice = if cfg.lora.is_some() { cfg.weights } else { WeightChoice::Format(WeightFormat::F32) };
    let plan = MemoryPlan::new(&model.config, &stored_formats(&model.weights), choice, &trained);
    let what = match &cfg.lora {
        Some(o) => format!("LoRA rank {} on {} over {} weights", o.rank, o.targets, a.model.weights),
        None => "full fine-tuning (f32)".to_string(),
    };
    if plan_run(gpu, &a.plan, (&model.config, &plan, &what), (cfg.batch, cfg.seq_len), cfg.memory)? {
        return Ok(());
    }
    if cfg.resume {
        if let Some((step, dir)) = latest_checkpoint(&cfg.out) {
            resumable_state(&dir, &cfg)?;
            eprintln!("keel: resuming from {} (after step {} of {})", dir.display(), step, cfg.steps);
        }
    }
    let bar = Bar::new("fine-tuning");
    let mut show = |p: &StepProgress| {
        let mut message =
            format!("step {}: loss {:.4}  lr {:.2e}  {:.0} tok/s", p.step, p.loss, p.lr, p.tokens_per_s);
        if let Some(l) = p.mean_lambda {
            message.push_str(&format!("  λ {l:.3}"));
        }
        bar.message(message);
        bar.update(p.step + 1, p.steps);
        if let Some(v) = p.val_loss {
            bar.println(&format!("step {}: validation loss {v:.4} (perplexity {:.2})", p.step, v.exp()));
        }
        if let (true, Some(scale)) = (p.skipped, p.loss_scale) {
            bar.println(&format!(
                "step {}: gradients overflowed at loss scale {scale}: step skipped, the scale halved",
                p.step
            ));
        }
    };
    let summary = finetune(gpu, model, &path.display().to_string(), &cfg, &mut show)?;
    if cfg.precision == Precision::Mixed {
        println!("skipped:     {} steps (gradients overflowed the loss scale)", summary.skipped_steps);
    }
    println!("final model: {}", summary.final_dir.display());
    println!("loss curve:  {}", summary.plot.display());
    println!("step log:    {}", cfg.out.join("log.jsonl").display());
    Ok(())
}

/// `keel merge --model PATH --lora DIR --out DIR`. Merging runs on the CPU; the adapter
/// folder has its own flag so that it is not confused with the global GPU `--adapter`.
#[derive(Args)]
pub struct MergeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The LoRA adapter folder (adapter_model.safetensors + adapter_config.json), e.g. a
    /// LoRA fine-tune's OUT/final
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Where the merged model goes
    #[arg(long)]
    out: PathBuf,
}

pub fn merge(a: MergeArgs, gpu_adapter: &Option<String>) -> Result<()> {
    let Some(lora_dir) = a.lora else {
        if let Some(given) = gpu_adapter {
            bail!(
                "keel merge takes the LoRA folder as --lora {given} (--adapter picks a GPU, and merging runs on the CPU)"
            )
        }
        bail!("keel merge needs --lora DIR, the LoRA adapter folder (adapter_model.safetensors + adapter_config.json)")
    };
    if !lora_dir.join("adapter_config.json").exists() && lora_dir.join("config.json").exists() {
        bail!(
            "--lora {dir}: holds a full model (config.json), not a LoRA adapter: a full fine-tune needs no merge, \
             use it as it is with --model {dir}",
            dir = lora_dir.display()
        );
    }
    let path = resolve_model(&a.model)?;
    let mut model = crate::model::load(&path)?;
    let lora =
        Lora::load(&lora_dir, &model.config).with_context(|| format!("--lora {}", lora_dir.display()))?;
    lora.merge_into(&mut model.weights);
    save_hf_model(&a.out, &model.config, &model.weights, model.tokenizer.json())?;
    println!("merged model: {}", a.out.display());
    Ok(())
}
