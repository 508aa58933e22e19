//! `keel bench`: load time, prefill and decode throughput (mean ± sd over repeats, as
//! llama-bench reports them); with `--train`, fine-tuning throughput and memory.

use super::finetune::{plan_run, ConstrictArgs, PlanArgs};
use super::{load_model_as, LcmArgs, ModelArg};
use crate::generate::batch::{generate_batch, SeqRequest};
use crate::generate::{Sampler, SamplerConfig, Session};
use crate::gpu::WeightFormat;
use crate::gpu::{env_flag, AdapterChoice, Gpu, KernelOptions, KernelTime, Timing};
use crate::model::adapter::{parse_targets, Lora};
use crate::model::layout::Weights;
use crate::model::{GpuModel, ModelConfig, WeightChoice};
use crate::ops::optim::AdamW;
use crate::train::graph::ActivationMemory;
use crate::train::memory::{MemoryPlan, Trained};
use crate::train::precision::Precision;
use crate::train::trainer::{Method, OptimConfig, Trainer};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Benchmark pseudo-random weights of the shapes in this config.json instead of a model's
    /// own (speed does not depend on the values; e.g. data/configs/smollm2-135m.json)
    #[arg(long, conflicts_with = "model")]
    shapes: Option<PathBuf>,
    /// Length of the prompt whose prefill is timed
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// New tokens decoded after the prompt, timed
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Timed runs after one untimed warm-up (which compiles the shaders): mean ± sd over them
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
    /// Also time every kernel of one prefill chunk and one decode step, or of one training
    /// step with --train (GPU timestamps where the adapter has them, else wall clock per dispatch)
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    lcm: LcmArgs,
    /// Decode by sampling on the GPU (temperature 1, top-k 40, top-p 0.95, repetition
    /// penalty 1.1) instead of greedily
    #[arg(long)]
    sample: bool,
    /// Measure fine-tuning steps (forward, backward, AdamW) instead of generation
    #[arg(long)]
    train: bool,
    /// Time the three matrix products of a linear layer (x·Wᵀ, dy·W, dyᵀ·x) of this size
    /// (f32, random values) on every matrix tier, checked against the portable one
    #[arg(long, value_name = "M,N,K", conflicts_with_all = ["train", "model", "shapes"])]
    matmul: Option<String>,
    /// Decode steps per submission, their picks read back together (batch 1 only; the page
    /// takes 4)
    #[arg(long, default_value_t = crate::generate::decode::STEPS_PER_SUBMIT)]
    steps_per_submit: usize,
    /// Sequences per step: training rows (with --train; default 4), else sequences decoded
    /// together as `keel compare` batches them (default 1: one sequence, as `keel generate`)
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per training row (with --train)
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Benchmark LoRA of this rank on q,v instead of full fine-tuning (with --train)
    #[arg(long)]
    lora_rank: Option<usize>,
    /// Recompute activations in the backward pass (with --train)
    #[arg(long)]
    recompute: bool,
    /// Precision of the training products, as keel finetune takes it (with --train)
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Constricted fine-tuning options, as keel finetune takes them (with --train)
    #[command(flatten)]
    constrict: ConstrictArgs,
    /// --dry-run and --memory-gb (with --train), as keel finetune takes them
    #[command(flatten)]
    plan: PlanArgs,
}

/// The sampler decoding uses: greedy, or one with every kind of filtering on (`--sample`).
fn decode_sampler(sample: bool) -> Sampler {
    let cfg = match sample {
        true => SamplerConfig { top_k: 40, top_p: 0.95, repetition_penalty: 1.1, ..SamplerConfig::default() },
        false => SamplerConfig { temperature: 0.0, ..SamplerConfig::default() },
    };
    Sampler::new(cfg).expect("valid settings")
}

/// What is benchmarked: a model's config and GPU weights, and what to call it.
struct Subject {
    name: String,
    config: ModelConfig,
    gpu: &'static Gpu,
    gpu_model: GpuModel,
    load_s: f64,
}

fn subject(a: &BenchArgs, adapter: &Option<String>, choice: WeightChoice) -> Result<Subject> {
    let Some(path) = &a.shapes else {
        let m = load_model_as(&a.model, adapter, choice)?;
        let name = m.host.path.display().to_string();
        return Ok(Subject {
            name,
            config: m.host.config,
            gpu: m.gpu,
            gpu_model: m.gpu_model,
            load_s: m.load_s,
        });
    };
    let t0 = Instant::now();
    let text = std::fs::read(path).with_context(|| format!("--shapes {}: cannot read", path.display()))?;
    let config = crate::model::load::parse_config(&text, &path.display().to_string())?;
    let host = Weights::random(&config, 0);
    let gpu = super::gpu(adapter)?;
    let gpu_model = GpuModel::upload_weights(gpu, &config, &host, choice)
        .with_context(|| format!("--shapes {}: cannot load onto the GPU", path.display()))?;
    gpu.check_lost()?;
    let name = format!("random weights of {}'s shapes", path.display());
    Ok(Subject { name, config, gpu, gpu_model, load_s: t0.elapsed().as_secs_f64() })
}

fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = if x.len() > 1 { x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

pub fn run(a: BenchArgs, adapter: &Option<String>) -> Result<()> {
    // The empty-kernel experiment (KEEL_EMPTY_KERNELS=1) is read here only, so that no other
    // command can run kernels that compute nothing; the device opens with it before the model.
    let kernels = KernelOptions { empty: env_flag("KEEL_EMPTY_KERNELS"), ..KernelOptions::from_env() };
    Gpu::shared_with_options(&AdapterChoice::from_flag_or_env(adapter.clone()), kernels)?;
    if a.train {
        return run_train(a, adapter);
    }
    if let Some(shape) = &a.matmul {
        return run_matmul(shape, &a, adapter);
    }
    if a.prompt_tokens == 0 || a.repeats == 0 {
        bail!("--prompt-tokens and --repeats must be at least 1");
    }
    let lcm = a.lcm.config()?;
    let m = subject(&a, adapter, a.model.weights())?;
    let cfg = &m.config;
    let total = a.prompt_tokens + a.gen_tokens;
    if total > cfg.max_positions {
        bail!(
            "--prompt-tokens {} plus --gen-tokens {} = {total} exceeds the model's context of {} tokens",
            a.prompt_tokens,
            a.gen_tokens,
            cfg.max_positions
        );
    }
    // A fixed pseudo-random prompt: speed does not depend on the text.
    let prompt: Vec<u32> = (0..a.prompt_tokens).map(|i| ((i * 7919 + 13) % cfg.vocab) as u32).collect();
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let seqs = a.batch.unwrap_or(1);
    if seqs == 0 {
        bail!("--batch must be at least 1");
    }
    if a.steps_per_submit == 0 {
        bail!("--steps-per-submit must be at least 1");
    }
    // One unmeasured run compiles the pipelines.
    for rep in 0..=a.repeats {
        if seqs > 1 {
            let (t_prefill, t_decode) =
                time_batch(&m, &prompt, (seqs, a.gen_tokens), a.sample, lcm.as_ref())?;
            if rep > 0 {
                prefill.push((seqs * a.prompt_tokens) as f64 / t_prefill);
                if a.gen_tokens > 1 {
                    decode.push((seqs * (a.gen_tokens - 1)) as f64 / t_decode);
                }
            }
            continue;
        }
        let mut session = Session::new(m.gpu, &m.gpu_model, total, lcm.as_ref())?;
        session.steps_per_submit = a.steps_per_submit;
        // Greedy decoding as `keel generate` does it: the first pick ends the prefill.
        let t0 = Instant::now();
        let mut first = None;
        pollster::block_on(session.decode(
            &prompt,
            a.gen_tokens + 1,
            &[],
            &mut decode_sampler(a.sample),
            &mut |_| {
                first.get_or_insert_with(Instant::now);
                Ok(())
            },
        ))?;
        let first = first.expect("one token at least");
        let t_prefill = (first - t0).as_secs_f64();
        let t_decode = first.elapsed().as_secs_f64();
        if rep > 0 {
            prefill.push(a.prompt_tokens as f64 / t_prefill);
            if a.gen_tokens > 0 {
                decode.push(a.gen_tokens as f64 / t_decode);
            }
        }
    }
    let profile = if a.profile && seqs == 1 {
        let mut session = Session::new(m.gpu, &m.gpu_model, total, lcm.as_ref())?;
        let chunk = &prompt[..prompt.len().min(session.chunk_rows())];
        let [prefill_step, decode_step] = session.decode_recordings(chunk, &mut decode_sampler(a.sample))?;
        let (timing, prefill_times) = prefill_step.profile()?;
        let (_, decode_times) = decode_step.profile()?;
        Some((timing, chunk.len(), kernel_table(&prefill_times), kernel_table(&decode_times)))
    } else {
        None
    };
    let (p, p_sd) = mean_sd(&prefill);
    let (d, d_sd) = if decode.is_empty() { (0.0, 0.0) } else { mean_sd(&decode) };
    let info = &m.gpu.info;
    let (linear_fmt, head_fmt) = m.gpu_model.formats();
    let weight_mib = m.gpu_model.weight_bytes() as f64 / (1 << 20) as f64;
    if a.json {
        println!(
            "{}",
            json!({"load_s": m.load_s, "weights": linear_fmt.name(), "head_weights": head_fmt.name(),
                   "weight_bytes": m.gpu_model.weight_bytes(), "prefill_tok_s": p, "prefill_tok_s_sd": p_sd, "decode_tok_s": d,
                   "decode_tok_s_sd": d_sd, "adapter": info.name, "backend": format!("{:?}", info.backend),
                   "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "repeats": a.repeats, "lcm": lcm.is_some_and(|c| !c.is_off()), "sample": a.sample,
                   "batch": seqs, "steps_per_submit": a.steps_per_submit, "checked_kernels": m.gpu.kernels.checked, "empty_kernels": m.gpu.kernels.empty,
                   "profile": profile.as_ref().map(|(timing, n, prefill, decode)| json!({
                       "timing": format!("{timing:?}"), "prefill_chunk_tokens": n,
                       "prefill_chunk": rows_json(prefill), "decode_step": rows_json(decode)}))})
        );
    } else {
        println!("model:   {} ({} parameters)", m.name, cfg.param_count());
        println!("adapter: {} ({:?})", info.name, info.backend);
        println!(
            "weights: {} linears, {} LM head, {weight_mib:.1} MiB on the GPU",
            linear_fmt.name(),
            head_fmt.name()
        );
        if m.gpu.kernels.empty {
            println!(
                "kernels: EMPTY (KEEL_EMPTY_KERNELS=1): every kernel returns at once, nothing is computed"
            );
        }
        if m.gpu.kernels.checked {
            println!("kernels: checked modules (KEEL_CHECKED=1)");
        }
        println!("load:    {:.2} s", m.load_s);
        let per = if seqs > 1 {
            format!(", {seqs} sequences together, tok/s summed over them")
        } else {
            String::new()
        };
        println!("prefill: {p:.1} ± {p_sd:.1} tok/s ({} tokens{per})", a.prompt_tokens);
        let how = match (a.sample, seqs > 1) {
            (true, false) => "sampled on the GPU",
            (true, true) => "sampled on the host",
            (false, _) => "greedy",
        };
        let submits = match seqs {
            1 => format!(", {} per submission", a.steps_per_submit),
            _ => String::new(),
        };
        println!("decode:  {d:.1} ± {d_sd:.1} tok/s ({} tokens, {how}{per}{submits})", a.gen_tokens);
        if let Some((timing, n, prefill, decode)) = &profile {
            println!("\nprofile ({}):", timing_words(*timing));
            print_table(&format!("one prefill chunk of {n} tokens"), prefill);
            print_table("one decode step (per token)", decode);
        }
    }
    Ok(())
}

/// Seconds of prefill (up to the first pick of every sequence) and of the decode steps after
/// it, for `seqs` copies of `prompt` generating `gen` tokens each as one batch (the path `keel
/// compare` takes: logits read back and picked on the host).
fn time_batch(
    m: &Subject,
    prompt: &[u32],
    (seqs, gen): (usize, usize),
    sample: bool,
    lcm: Option<&crate::modulate::LcmConfig>,
) -> Result<(f64, f64)> {
    let sampler = decode_sampler(sample).config().clone();
    let reqs: Vec<SeqRequest> = (0..seqs)
        .map(|i| SeqRequest {
            prompt: prompt.to_vec(),
            sampler: SamplerConfig { seed: i as u64, ..sampler.clone() },
            max_tokens: gen.max(1),
        })
        .collect();
    let t0 = Instant::now();
    let mut first = None;
    generate_batch(m.gpu, &m.gpu_model, &reqs, &[], lcm, &mut |_, _| {
        first.get_or_insert_with(Instant::now);
    })?;
    let first = first.expect("one step at least");
    Ok(((first - t0).as_secs_f64(), first.elapsed().as_secs_f64()))
}

/// One kernel's line in a profile: name, calls, total and mean time (µs), share of the step.
struct KernelRow {
    name: String,
    calls: usize,
    total_us: f64,
    mean_us: f64,
    percent: f64,
}

/// Dispatch times grouped by kernel (shader and defines), the slowest first.
fn kernel_table(times: &[KernelTime]) -> Vec<KernelRow> {
    let all: f64 = times.iter().map(|t| t.seconds).sum();
    let mut rows: Vec<KernelRow> = Vec::new();
    for t in times {
        let us = t.seconds * 1e6;
        match rows.iter_mut().find(|r| *r.name == *t.name) {
            Some(r) => {
                r.calls += 1;
                r.total_us += us;
            }
            None => rows.push(KernelRow {
                name: t.name.to_string(),
                calls: 1,
                total_us: us,
                mean_us: 0.0,
                percent: 0.0,
            }),
        }
    }
    for r in &mut rows {
        r.mean_us = r.total_us / r.calls as f64;
        r.percent = if all > 0.0 { 100.0 * r.total_us * 1e-6 / all } else { 0.0 };
    }
    rows.sort_by(|a, b| b.total_us.total_cmp(&a.total_us));
    rows
}

fn timing_words(t: Timing) -> &'static str {
    match t {
        Timing::InsidePasses => "GPU timestamps between dispatches",
        Timing::PerPass => "GPU timestamps, one compute pass per dispatch",
        Timing::WallClock => {
            "no timestamp queries on this adapter: wall clock per dispatch, submitted alone and waited for, so each includes the submit overhead"
        }
    }
}

fn print_table(title: &str, rows: &[KernelRow]) {
    let total: f64 = rows.iter().map(|r| r.total_us).sum();
    let calls: usize = rows.iter().map(|r| r.calls).sum();
    println!("{title}: {calls} dispatches, {total:.1} µs");
    println!("  {:<48} {:>6} {:>12} {:>10} {:>6}", "kernel", "calls", "total µs", "mean µs", "%");
    for r in rows {
        println!(
            "  {:<48} {:>6} {:>12.1} {:>10.2} {:>6.1}",
            r.name, r.calls, r.total_us, r.mean_us, r.percent
        );
    }
}

fn rows_json(rows: &[KernelRow]) -> serde_json::Value {
    rows.iter()
        .map(|r| json!({"kernel": r.name, "calls": r.calls, "total_us": r.total_us, "mean_us": r.mean_us, "percent": r.percent}))
        .collect()
}

/// `--matmul M,N,K`'s three numbers.
fn parse_mnk(text: &str) -> Result<(usize, usize, usize)> {
    let dims: Vec<usize> = text.split(',').filter_map(|d| d.trim().parse().ok()).collect();
    match dims[..] {
        [m, n, k] if m > 4 && n > 0 && k > 0 && text.split(',').count() == 3 => Ok((m, n, k)),
        _ => bail!("--matmul must be M,N,K: three whole numbers, M above 4 (fewer rows take the matrix-vector kernel), got '{text}'"),
    }
}

/// `keel bench --matmul M,N,K`: each product of a linear layer on each tier and tile, GPU
/// time per dispatch (mean of `--repeats` in one recording), TFLOP/s, and the largest
/// difference from the portable tier relative to its largest output.
fn run_matmul(shape: &str, a: &BenchArgs, adapter: &Option<String>) -> Result<()> {
    use crate::gpu::{Step, Tier};
    use crate::ops::matmul::{matmul_on, Engine, GemmTile, Mat, Prologue};
    let (m, n, k) = parse_mnk(shape)?;
    if a.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let gpu = super::gpu(adapter)?;
    // The coop tier needs a device opened with cooperative matrices.
    let coop = match gpu.coop_offered {
        true => Some(Gpu::shared_on_tier(Tier::Coop)?),
        false => None,
    };
    let engines = [(gpu, Tier::Portable, None)]
        .into_iter()
        .chain(GemmTile::SIMT.map(|t| (gpu, Tier::Tiled, Some(t))))
        .chain(coop.map(|g| (g, Tier::Coop, Some(GemmTile::COOP))));
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len).map(|i| ((i * 2654435761 + seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    };
    let (a_host, b_host) = (values(m * k, 1), values(k * n, 2));
    let products = ["x·Wᵀ", "dy·W", "dyᵀ·x"];
    let mut reference: Vec<Vec<f32>> = Vec::new();
    let mut results = Vec::new();
    let mut mismatches = Vec::new();
    for (g, tier, tile) in engines {
        let at = g.upload_f32("a", &[m * k], &a_host)?;
        let bt = g.upload_f32("b", &[k * n], &b_host)?;
        let ct = g.zeros("c", &[m * n], crate::gpu::DType::F32)?;
        let engine = Engine::with_tier(g, tier, tile);
        for (p, product) in products.iter().enumerate() {
            // x [m, k] · W [n, k]ᵀ; dy [m, k] · W [k, n]; dy [k, m]ᵀ · x [k, n].
            let (am, bm) = match p {
                0 => (Mat::rows(&at, 0, k), Mat::transposed(&bt, 0, k)),
                1 => (Mat::rows(&at, 0, k), Mat::rows(&bt, 0, n)),
                _ => (Mat::transposed(&at, 0, m), Mat::rows(&bt, 0, n)),
            };
            let mut step = Step::new(g);
            for _ in 0..a.repeats {
                matmul_on(
                    &mut step,
                    engine,
                    am,
                    bm,
                    Mat::rows(&ct, 0, n),
                    (m, n, k),
                    (1.0, None),
                    false,
                    Prologue::None,
                );
            }
            let recording = step.finish()?;
            recording.submit()?; // compiles and warms up
            let (timing, times) = recording.profile()?;
            let seconds = times.iter().map(|t| t.seconds).sum::<f64>() / times.len() as f64;
            let got = g.read_f32(&ct)?;
            let diff = match reference.get(p) {
                None => {
                    reference.push(got);
                    0.0
                }
                Some(want) => {
                    let scale = want.iter().fold(0f32, |s, w| s.max(w.abs())).max(f32::MIN_POSITIVE);
                    got.iter().zip(want).fold(0f32, |d, (g, w)| d.max((g - w).abs())) / scale
                }
            };
            // f32 tiers differ from the portable one in summation order only; coop rounds its
            // inputs to f16 (2⁻¹¹ relative), which sums to a few 1e-4 of the largest output.
            let tolerance = if tier == Tier::Coop { 1e-2 } else { 1e-4 };
            if diff > tolerance {
                mismatches.push(format!("{} {product}: {diff:.2e} (above {tolerance:.0e})", tier.name()));
            }
            let tile = tile.map(GemmTile::label);
            results.push(json!({"tier": tier.name(), "tile": tile, "product": product, "us": seconds * 1e6,
                "tflops": 2.0 * (m * n * k) as f64 / seconds / 1e12, "max_rel_diff_vs_portable": diff,
                "ok": diff <= tolerance, "timing": format!("{timing:?}")}));
        }
    }
    let info = &gpu.info;
    if a.json {
        println!(
            "{}",
            json!({"matmul": [m, n, k], "adapter": info.name, "backend": format!("{:?}", info.backend),
            "repeats": a.repeats, "results": results})
        );
    } else {
        println!(
            "adapter: {} ({:?}); C[{m}×{n}] = A[{m}×{k}] · B[{k}×{n}], f32 in and out",
            info.name, info.backend
        );
        println!(
            "  {:<9} {:<18} {:<7} {:>10} {:>9} {:>14}",
            "tier", "tile", "product", "µs", "TFLOP/s", "Δ vs portable"
        );
        for r in &results {
            println!(
                "  {:<9} {:<18} {:<7} {:>10.1} {:>9.3} {:>14.2e}",
                r["tier"].as_str().unwrap_or(""),
                r["tile"].as_str().unwrap_or("registers"),
                r["product"].as_str().unwrap_or(""),
                r["us"].as_f64().unwrap_or(0.0),
                r["tflops"].as_f64().unwrap_or(0.0),
                r["max_rel_diff_vs_portable"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if !mismatches.is_empty() {
        bail!(
            "--matmul: tiers differ from the portable one, relative to its largest output: {}",
            mismatches.join("; ")
        );
    }
    Ok(())
}

/// `keel bench --train`: optimizer steps per second on a fixed batch, and the GPU memory
/// the trainer allocated, by purpose.
fn run_train(a: BenchArgs, adapter: &Option<String>) -> Result<()> {
    if a.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let n_rows = a.batch.unwrap_or(4);
    let choice = match a.lora_rank {
        Some(_) => a.model.weights(),
        None => {
            a.model.require_f32("bench --train (full fine-tuning)")?;
            WeightChoice::Format(WeightFormat::F32)
        }
    };
    let memory = if a.recompute { ActivationMemory::Recompute } else { ActivationMemory::Keep };
    // Planned from the shapes (and a model's stored formats) before anything is allocated.
    let (config, stored) = match &a.shapes {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("--shapes {}: cannot read", path.display()))?;
            let config = crate::model::load::parse_config(&text, &path.display().to_string())?;
            let stored = crate::train::memory::config_shapes(&config);
            (config, stored)
        }
        None => {
            let host = crate::model::load(&super::resolve_model(&a.model)?)?;
            (host.config.clone(), crate::train::memory::stored_formats(&host.weights))
        }
    };
    let lora = |cfg: &ModelConfig| match a.lora_rank {
        Some(rank) => Lora::init(cfg, &parse_targets(cfg, "q,v")?, rank, 2.0 * rank as f32, 0).map(Some),
        None => Ok(None),
    };
    let trained = lora(&config)?.as_ref().map_or(Trained::Full, Trained::lora);
    let plan = MemoryPlan::new(&config, &stored, choice, &trained);
    let what = match a.lora_rank {
        Some(rank) => format!("LoRA rank {rank} on q,v over {} weights", a.model.weights),
        None => "full fine-tuning (f32)".to_string(),
    };
    let gpu = super::gpu(adapter)?;
    if plan_run(gpu, &a.plan, (&config, &plan, &what), (n_rows, a.seq_len), memory)? {
        return Ok(());
    }
    let m = subject(&a, adapter, choice)?;
    let cfg = m.config.clone();
    let method = lora(&cfg)?.map_or(Method::Full, Method::Lora);
    let adamw = AdamW { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let opt = OptimConfig { adamw, grad_clip: 1.0, decay_norms_biases: true };
    let mode = if a.lora_rank.is_some() { "lora" } else { "full" };
    let mut trainer = Trainer::new(m.gpu, m.gpu_model, (n_rows, a.seq_len), memory, opt, method)?;
    let lcm = a.lcm.config()?;
    if let Some(c) = &lcm {
        trainer.set_lcm(c)?;
    }
    let constrict = a.constrict.config()?;
    trainer.set_constrict(&constrict)?;
    trainer.set_precision(a.precision)?;
    let rows: Vec<Vec<u32>> = (0..n_rows)
        .map(|r| (0..=a.seq_len).map(|i| ((r * 1009 + i * 7919 + 13) % cfg.vocab) as u32).collect())
        .collect();
    let batch: Vec<&[u32]> = rows.iter().map(|r| &r[..]).collect();
    let mut rates = Vec::new();
    // Mixed precision: measured steps that overflowed the loss scale (they skip AdamW).
    let mut skipped = 0;
    // One unmeasured step compiles the pipelines.
    for rep in 0..=a.repeats {
        let t0 = Instant::now();
        let report = trainer.step(std::slice::from_ref(&batch), 1e-5)?;
        if rep > 0 {
            rates.push(report.tokens as f64 / t0.elapsed().as_secs_f64());
            skipped += report.skipped as usize;
        }
    }
    let (rate, sd) = mean_sd(&rates);
    let profile = if a.profile {
        m.gpu.start_profiling();
        let step = trainer.step(std::slice::from_ref(&batch), 1e-5);
        let (timing, times) = m.gpu.stop_profiling();
        step?;
        Some((timing, kernel_table(&times)))
    } else {
        None
    };
    let (weights, trained, activations) = trainer.memory_bytes();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let info = &m.gpu.info;
    if a.json {
        println!(
            "{}",
            json!({"mode": mode, "batch": n_rows, "seq_len": a.seq_len, "recompute": a.recompute,
                   "precision": a.precision.name(), "skipped_steps": skipped,
                   "train_tok_s": rate, "train_tok_s_sd": sd, "weights_bytes": weights,
                   "trained_state_bytes": trained, "activation_bytes": activations,
                   "total_bytes": weights + trained + activations,
                   "allocated_bytes": m.gpu.allocated_bytes(), "adapter": info.name,
                   "backend": format!("{:?}", info.backend), "repeats": a.repeats,
                   "lcm": lcm.is_some_and(|c| !c.is_off()), "sample": a.sample, "constricted": !constrict.is_off(),
                   "profile": profile.as_ref().map(|(timing, rows)| json!({
                       "timing": format!("{timing:?}"), "train_step": rows_json(rows)}))})
        );
    } else {
        println!("model:    {} ({} parameters)", m.name, cfg.param_count());
        println!("adapter:  {} ({:?})", info.name, info.backend);
        println!(
            "training: {mode}, batch {} × {} tokens, {} precision{}",
            n_rows,
            a.seq_len,
            a.precision.name(),
            if a.recompute { ", recomputed activations" } else { "" }
        );
        println!("speed:    {rate:.1} ± {sd:.1} tok/s");
        if skipped > 0 {
            println!("skipped:  {skipped} of the measured steps overflowed the loss scale");
        }
        println!(
            "memory:   {:.1} MiB = weights {:.1} + gradients and AdamW {:.1} + activations {:.1}",
            mib(weights + trained + activations),
            mib(weights),
            mib(trained),
            mib(activations)
        );
        println!("allocated: {:.1} MiB (every GPU buffer the run created)", mib(m.gpu.allocated_bytes()));
        if let Some((timing, rows)) = &profile {
            println!("\nprofile ({}):", timing_words(*timing));
            print_table(&format!("one training step of {} × {} tokens", n_rows, a.seq_len), rows);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table groups a recorded step's dispatches by kernel: its calls add up to the
    /// dispatches, its shares to 100 %.
    #[test]
    fn profile_table_counts_every_dispatch() {
        let Some((_, m)) = crate::generate::test_stories() else { return };
        let gpu = crate::ops::test_util::gpu();
        // Natively the greedy pick is made by the LM head's product (matvec PICK), a draw by its own kernel.
        let greedy = |name: &str| name.starts_with("matvec ") && name.contains(" PICK=1");
        let draw = |name: &str| name == "draw";
        for (sample, pick) in [(false, &greedy as &dyn Fn(&str) -> bool), (true, &draw)] {
            let mut session = Session::new(gpu, &m, 16, None).unwrap();
            let [prefill, decode] =
                session.decode_recordings(&[1, 2, 3], &mut decode_sampler(sample)).unwrap();
            for recording in [prefill, decode] {
                let (_, times) = recording.profile().unwrap();
                let table = kernel_table(&times);
                assert_eq!(table.iter().map(|r| r.calls).sum::<usize>(), recording.dispatches());
                let names: Vec<_> = table.iter().map(|r| (&r.name, r.calls)).collect();
                assert!(table.iter().any(|r| pick(&r.name) && r.calls == 1), "sampled {sample}: {names:?}");
                let percent: f64 = table.iter().map(|r| r.percent).sum();
                assert!(
                    (percent - 100.0).abs() < 1e-6 || times.iter().all(|t| t.seconds == 0.0),
                    "{percent}"
                );
            }
        }
    }
}
