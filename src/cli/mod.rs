//! The `keel` command line. Every failure prints one `error: ...` line and exits with 2.

mod analyze;
mod api;
mod bench;
mod chat;
mod compare;
mod compare_finetune;
mod embed;
mod finetune;
mod info;
mod progress;
mod pull;
mod serve;
mod sweep;
mod text;

use crate::generate::sampler::Dry;
use crate::generate::SamplerConfig;
use crate::gpu::WeightFormat;
use crate::gpu::{AdapterChoice, Gpu};
use crate::model::{GpuModel, ModelInfo, OpenModel, WeightChoice};
use crate::modulate::{self, LcmConfig};
use anyhow::{Context, Result};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "keel",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("KEEL_GIT_COMMIT"), ")"),
    about = "Run, modulate and fine-tune transformer language models in WGSL on any GPU"
)]
struct Cli {
    /// GPU adapter: index in `keel info`'s list, or part of its name or backend (env: KEEL_ADAPTER)
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
    /// Perplexity and bits per byte of a text of any length (strided windows)
    Perplexity(text::PerplexityArgs),
    /// Measure load, prefill and decode speed (and training speed with --train)
    Bench(bench::BenchArgs),
    /// Fine-tune a model (every weight, or LoRA adapters) on a text or .jsonl file
    Finetune(finetune::FinetuneArgs),
    /// Merge a LoRA adapter folder (--lora DIR) into its base model and save the result
    Merge(finetune::MergeArgs),
    /// Baseline vs LCM-modulated generation on the same prompts and seeds: metrics and a report
    Compare(compare::CompareArgs),
    /// Plain vs constricted fine-tuning on the same data order and seeds: logs and a report
    CompareFinetune(compare_finetune::CompareFinetuneArgs),
    /// Many LCM settings (a JSON grid) against the baseline: paired changes and the Pareto front
    Sweep(sweep::SweepArgs),
    /// Sentence embeddings (all-MiniLM-L6-v2 run by Keel's kernels) of texts, as JSON
    Embed(embed::EmbedArgs),
    /// Multi-scale (MSMA) analysis and latent stability of a text, per layer
    Analyze(analyze::AnalyzeArgs),
    /// Serve the browser demo (web/) and models on 127.0.0.1
    Serve(serve::ServeArgs),
    /// Download a model into its cache: the default one, or org/name[:FILE] from the Hugging Face Hub
    Pull(pull::PullArgs),
    /// Render a conversation with the model's chat template (the prompt chat commands use)
    Template(chat::TemplateArgs),
    /// Chat with the model in the terminal (its chat template, streamed replies, /reset, /lcm)
    Chat(chat::ChatArgs),
}

/// `--model PATH`, shared by the commands that load a model.
#[derive(Args, Clone)]
pub struct ModelArg {
    /// Model folder (config.json + safetensors, or one .gguf), .gguf file, or Hugging Face Hub
    /// name org/name[:FILE] (env: KEEL_MODEL)
    // The text is --help's, where [:FILE] means optional, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// GPU format of the linear layers' weights
    #[arg(long, value_enum, default_value_t = WeightsFlag::Auto)]
    pub weights: WeightsFlag,
}

/// `--weights`' values: the library's [`WeightChoice`] for the formats Keel quantizes to.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum WeightsFlag {
    /// f32, except a GGUF file's own F16/Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K weights, kept packed
    Auto,
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
}

impl std::fmt::Display for WeightsFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        use clap::ValueEnum;
        f.write_str(self.to_possible_value().expect("no value is skipped").get_name())
    }
}

impl ModelArg {
    pub fn weights(&self) -> WeightChoice {
        match self.weights {
            WeightsFlag::Auto => WeightChoice::Auto,
            WeightsFlag::F32 => WeightChoice::Format(WeightFormat::F32),
            WeightsFlag::F16 => WeightChoice::Format(WeightFormat::F16),
            WeightsFlag::Q8_0 => WeightChoice::Format(WeightFormat::Q8_0),
            WeightsFlag::Q4_0 => WeightChoice::Format(WeightFormat::Q4_0),
            WeightsFlag::Q4_1 => WeightChoice::Format(WeightFormat::Q4_1),
        }
    }

    /// Full fine-tuning reads and updates f32 weights: `auto` means f32 there (a GGUF is
    /// dequantized), any other format than f32 is refused (LoRA takes them all).
    pub fn require_f32(&self, command: &str) -> Result<()> {
        match self.weights() {
            WeightChoice::Auto | WeightChoice::Format(WeightFormat::F32) => Ok(()),
            WeightChoice::Format(f) => anyhow::bail!(
                "--weights {}: {command} trains f32 weights (use --weights f32 or auto, or add --lora-rank to train adapters over the packed base)",
                f.name()
            ),
        }
    }
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
    /// Keep tokens at least this fraction as likely as the most likely one (0 = off)
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// OpenAI's presence penalty: subtracted once from each generated token's logit (0 = off)
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted per occurrence among the generated tokens (0 = off)
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Never repeat an n-gram of this many tokens, prompt included (0 = off)
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram_size: usize,
    /// DRY: penalty on a token extending a repeated sequence (0 = off)
    #[arg(long, default_value_t = 0.0)]
    pub dry_multiplier: f32,
    /// DRY: growth of the penalty per token of repeat beyond the allowed length
    #[arg(long, default_value_t = 1.75)]
    pub dry_base: f32,
    /// DRY: repeats shorter than this are free
    #[arg(long, default_value_t = 2)]
    pub dry_allowed_length: usize,
    /// DRY: search the last N tokens for repeats (0 = all)
    #[arg(long, default_value_t = 0)]
    pub dry_penalty_last_n: usize,
    /// Sampler seed: the same seed gives the same tokens
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn config(&self, model: &ModelInfo) -> Result<SamplerConfig> {
        let d = SamplerConfig::for_model(&model.generation);
        let cfg = SamplerConfig {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            min_p: self.min_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            dry: Dry {
                multiplier: self.dry_multiplier,
                base: self.dry_base,
                allowed_length: self.dry_allowed_length,
                penalty_last_n: self.dry_penalty_last_n,
            },
            seed: self.seed,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// LCM flags (methods.md section 1); `--lcm-config FILE` first, then the flags override.
#[derive(Args, Clone, Default)]
pub struct LcmArgs {
    /// Pull strength (0 = off)
    #[arg(long)]
    pub lcm_gamma: Option<f32>,
    /// Anchor decay in [0, 1)
    #[arg(long)]
    pub lcm_rho: Option<f32>,
    /// Divergence threshold of the gate
    #[arg(long)]
    pub lcm_tau: Option<f32>,
    /// Sharpness of the gate
    #[arg(long)]
    pub lcm_kappa: Option<f32>,
    /// Modulated blocks A-B, 0-based, both included (default: the upper half)
    #[arg(long)]
    pub lcm_layers: Option<String>,
    /// Keep each modulated state's norm
    #[arg(long)]
    pub lcm_keep_norm: Option<bool>,
    /// Multi-scale anchors "rho:gamma,rho:gamma,..."
    #[arg(long)]
    pub lcm_scales: Option<String>,
    /// Leave positions 0..N out of the scan (attention sinks)
    #[arg(long)]
    pub lcm_sink: Option<usize>,
    /// Where the states are compared and pulled
    #[arg(long)]
    pub lcm_space: Option<modulate::Space>,
    /// JSON object with the golden files' lcm_config keys
    #[arg(long)]
    pub lcm_config: Option<PathBuf>,
}

impl LcmArgs {
    /// The LCM setting, or None when no LCM flag was given.
    pub fn config(&self) -> Result<Option<LcmConfig>> {
        let mut c = match &self.lcm_config {
            Some(path) => {
                let text = std::fs::read(path)
                    .with_context(|| format!("--lcm-config {}: cannot read", path.display()))?;
                let v: serde_json::Value = serde_json::from_slice(&text)
                    .map_err(|e| anyhow::anyhow!("--lcm-config {}: not valid JSON ({e})", path.display()))?;
                LcmConfig::from_json(&v, &path.display().to_string())?
            }
            None => LcmConfig::default(),
        };
        let any = self.lcm_config.is_some()
            || self.lcm_gamma.is_some()
            || self.lcm_scales.is_some()
            || self.lcm_rho.is_some()
            || self.lcm_tau.is_some()
            || self.lcm_kappa.is_some()
            || self.lcm_layers.is_some()
            || self.lcm_keep_norm.is_some()
            || self.lcm_sink.is_some()
            || self.lcm_space.is_some();
        if !any {
            return Ok(None);
        }
        c.gamma = self.lcm_gamma.unwrap_or(c.gamma);
        c.rho = self.lcm_rho.unwrap_or(c.rho);
        c.tau = self.lcm_tau.unwrap_or(c.tau);
        c.kappa = self.lcm_kappa.unwrap_or(c.kappa);
        c.keep_norm = self.lcm_keep_norm.unwrap_or(c.keep_norm);
        c.sink = self.lcm_sink.unwrap_or(c.sink);
        if let Some(l) = &self.lcm_layers {
            c.layers = Some(modulate::parse_layers(l)?);
        }
        if let Some(s) = &self.lcm_scales {
            c.scales = modulate::parse_scales(s)?;
        }
        if let Some(s) = self.lcm_space {
            c.space = s;
        }
        Ok(Some(c))
    }
}

/// The device, opened once per process with the `--adapter` choice.
fn gpu(adapter: &Option<String>) -> Result<&'static Gpu> {
    Gpu::shared_with(&AdapterChoice::from_flag_or_env(adapter.clone()))
}

/// A model loaded and uploaded, with the seconds it took.
pub struct Ready {
    pub host: ModelInfo,
    pub gpu_model: GpuModel,
    pub gpu: &'static Gpu,
    pub load_s: f64,
}

impl Ready {
    /// The model as the comparison study uses it, reporting its stages to `progress`.
    pub fn study<'a>(&'a self, progress: &'a dyn crate::study::Progress) -> crate::study::StudyModel<'a> {
        crate::study::StudyModel {
            host: &self.host,
            gpu_model: &self.gpu_model,
            gpu: self.gpu,
            progress,
            judge: None,
            checkpoints: None,
        }
    }
}

fn resolve_model(arg: &ModelArg) -> Result<PathBuf> {
    crate::pull::resolve_model(arg.model.as_deref())
}

pub fn load_model(arg: &ModelArg, adapter: &Option<String>) -> Result<Ready> {
    load_model_as(arg, adapter, arg.weights())
}

/// [`load_model`] with the weight format given (training: f32 whatever `--weights` says).
pub fn load_model_as(arg: &ModelArg, adapter: &Option<String>, choice: WeightChoice) -> Result<Ready> {
    let path = resolve_model(arg)?;
    let t0 = Instant::now();
    // The files' headers first: a model broken there is refused without starting the GPU.
    let model = crate::model::open(&path)?;
    upload(model, adapter, choice, t0)
}

/// Streams a model opened with `crate::model::open` (begun at `t0`) to the GPU.
pub fn upload(
    model: OpenModel,
    adapter: &Option<String>,
    choice: WeightChoice,
    t0: Instant,
) -> Result<Ready> {
    let gpu = gpu(adapter)?;
    let (host, gpu_model) = model.upload(gpu, choice)?;
    gpu.check_lost()?;
    Ok(Ready { host, gpu_model, gpu, load_s: t0.elapsed().as_secs_f64() })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info => info::run(&cli.adapter),
        Command::Generate(a) => text::generate(a, &cli.adapter),
        Command::Score(a) => text::score(a, &cli.adapter),
        Command::Perplexity(a) => text::perplexity(a, &cli.adapter),
        Command::Bench(a) => bench::run(a, &cli.adapter),
        Command::Finetune(a) => finetune::run(a, &cli.adapter),
        Command::Merge(a) => finetune::merge(a, &cli.adapter),
        Command::Compare(a) => compare::run(a, &cli.adapter),
        Command::CompareFinetune(a) => compare_finetune::run(a, &cli.adapter),
        Command::Sweep(a) => sweep::run(a, &cli.adapter),
        Command::Analyze(a) => analyze::run(a, &cli.adapter),
        Command::Embed(a) => embed::run(a, &cli.adapter),
        Command::Serve(a) => serve::run(a, &cli.adapter),
        Command::Pull(a) => pull::run(a),
        Command::Template(a) => chat::template(a),
        Command::Chat(a) => chat::chat(a, &cli.adapter),
    }
}

/// The flag that sets a library field: `top_p` is `--top-p`.
pub fn flag(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// The parser: `keel` alone prints the help, and every subcommand reads `-1` as a value
/// (`--temperature -1` is then refused by the range check, not taken for a flag).
fn command() -> clap::Command {
    let cmd = Cli::command().arg_required_else_help(true);
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.iter().fold(cmd, |cmd, name| cmd.mut_subcommand(name, |s| s.allow_negative_numbers(true)))
}

/// clap's whole message as one line (its tips included, its usage block left out), ending
/// with where to look: `see keel generate --help` (the usage line's command, else `command`).
fn one_line_parse_error(rendered: &str, command: &str) -> String {
    let mut parts = Vec::new();
    let mut command = command.to_string();
    for line in rendered.lines().map(str::trim) {
        if let Some(usage) = line.strip_prefix("Usage: ") {
            // "Usage: keel generate [OPTIONS] --prompt <PROMPT>" names the command.
            let words: Vec<&str> =
                usage.split_whitespace().take_while(|w| !w.starts_with(['-', '<', '['])).collect();
            command = words.join(" ");
        } else if line.starts_with("tip: ") {
            parts.push(format!("({line})"));
        } else if !line.is_empty() && !line.starts_with("For more information") {
            parts.push(line.trim_start_matches("error: ").to_string());
        }
    }
    let message = parts.join(" ");
    let message = if message.is_empty() { "invalid arguments".to_string() } else { message };
    format!("{message}; see {command} --help")
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let parsed = command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `keel` alone: the help, as `keel --help` prints it.
            print!("{}", command().render_help());
            return 0;
        }
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap's own output, exit 0.
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // A wrong value's message has no usage line: the arguments name the command.
            let cmd = command();
            let sub = std::env::args().skip(1).find(|a| cmd.find_subcommand(a).is_some());
            let named = sub.map_or("keel".to_string(), |s| format!("keel {s}"));
            eprintln!("error: {}", one_line_parse_error(&e.render().to_string(), &named));
            return 2;
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            // As `{e:#}` prints the chain, with the library's field names given as flags.
            let chain: Vec<String> = e
                .chain()
                .map(|cause| match cause.downcast_ref::<crate::Error>() {
                    Some(kind) => kind.render(flag),
                    None => cause.to_string(),
                })
                .collect();
            let msg = chain.join(": ").replace('\n', " ");
            eprintln!("error: {msg}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag of every command says what it does in `--help`.
    #[test]
    fn every_flag_has_help() {
        let cmd = command();
        let mut bare = Vec::new();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| a.get_long().is_some() && !a.is_hide_set()) {
                if arg.get_help().is_none() {
                    bare.push(format!("keel {} --{}", sub.get_name(), arg.get_long().unwrap()));
                }
            }
        }
        assert!(bare.is_empty(), "flags without help: {bare:?}");
    }

    #[test]
    fn parse_errors_become_one_line_ending_with_the_help_to_read() {
        let rendered = "error: unexpected argument '--max-token' found\n\n  tip: a similar argument exists: \
                        '--max-tokens'\n\nUsage: keel generate [OPTIONS] --prompt <PROMPT>\n\nFor more \
                        information, try '--help'.\n";
        assert_eq!(
            one_line_parse_error(rendered, "keel"),
            "unexpected argument '--max-token' found (tip: a similar argument exists: '--max-tokens'); \
             see keel generate --help"
        );
    }
}
