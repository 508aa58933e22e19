//! The `keel` command line. Every failure prints one `error: ...` line and exits with 2.

mod bench;
mod info;
mod text;

use crate::generate::SamplerConfig;
use crate::gpu::{AdapterChoice, Gpu};
use crate::model::{GpuModel, LoadedModel};
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Run, modulate and fine-tune transformer language models in WGSL on any GPU"
)]
struct Cli {
    /// GPU adapter: index in `keel info`'s list or part of its name (env: KEEL_ADAPTER)
    #[arg(long, global = true)]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the adapters, and the features and limits Keel requests
    Info,
    /// Generate a continuation of a prompt
    Generate(text::GenerateArgs),
    /// Score a text: per-token log-probabilities, entropies, perplexity
    Score(text::ScoreArgs),
    /// Measure load, prefill and decode speed
    Bench(bench::BenchArgs),
}

/// `--model PATH`, shared by the commands that load a model.
#[derive(Args, Clone)]
pub struct ModelArg {
    /// Model folder (config.json + safetensors, or one .gguf) or .gguf file (env: KEEL_MODEL)
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// Sampling flags; unset ones fall back to the model's generation_config.json.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Keep only the K most likely tokens (0 = off)
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set with this much probability (1 = off)
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Penalise tokens already in the context (1 = off)
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Sampler seed: the same seed gives the same tokens
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn config(&self, model: &LoadedModel) -> Result<SamplerConfig> {
        let d = &model.generation;
        let cfg = SamplerConfig {
            temperature: self.temperature.or(d.temperature).unwrap_or(1.0),
            top_k: self.top_k.or(d.top_k).unwrap_or(0),
            top_p: self.top_p.or(d.top_p).unwrap_or(1.0),
            repetition_penalty: self.repetition_penalty.or(d.repetition_penalty).unwrap_or(1.0),
            seed: self.seed,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The device, opened once per process with the `--adapter` choice.
fn gpu(adapter: &Option<String>) -> Result<&'static Gpu> {
    Gpu::shared_with(&AdapterChoice::from_flag_or_env(adapter.clone()))
}

/// A model loaded and uploaded, with the seconds it took.
pub struct Ready {
    pub host: LoadedModel,
    pub gpu_model: GpuModel,
    pub gpu: &'static Gpu,
    pub load_s: f64,
}

fn resolve_model(arg: &ModelArg) -> Result<PathBuf> {
    crate::pull::resolve_model(arg.model.as_deref())
}

pub fn load_model(arg: &ModelArg, adapter: &Option<String>) -> Result<Ready> {
    let path = resolve_model(arg)?;
    let t0 = Instant::now();
    let gpu = gpu(adapter)?;
    let host = crate::model::load(&path)?;
    let gpu_model = GpuModel::upload(gpu, &host)?;
    gpu.check_lost()?;
    Ok(Ready { host, gpu_model, gpu, load_s: t0.elapsed().as_secs_f64() })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info => info::run(&cli.adapter),
        Command::Generate(a) => text::generate(a, &cli.adapter),
        Command::Score(a) => text::score(a, &cli.adapter),
        Command::Bench(a) => bench::run(a, &cli.adapter),
    }
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            2
        }
    }
}
