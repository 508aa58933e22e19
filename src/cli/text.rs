//! `keel generate` and `keel score`.

use super::chat::{self, TemplateArg};
use super::{load_model, upload, LcmArgs, ModelArg, SamplingArgs};
use crate::generate::{self, GenerateOptions};
use crate::tokenize::TextStream;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The prompt (encoded exactly as `score` encodes a text)
    #[arg(long, required_unless_present = "messages")]
    prompt: Option<String>,
    /// A conversation (a JSON array of {"role", "content"} messages) to answer, rendered with
    /// the model's chat template
    #[arg(long, conflicts_with = "prompt")]
    messages: Option<PathBuf>,
    /// Send --prompt as one user message through the chat template
    #[arg(long, requires = "prompt")]
    chat: bool,
    #[command(flatten)]
    template: TemplateArg,
    /// Most tokens to generate
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    lcm: LcmArgs,
    /// Print one JSON object {"prompt_ids", "ids", "text"} instead of streaming text
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The text to score, taken exactly as its bytes are (UTF-8)
    #[arg(long)]
    text_file: PathBuf,
    /// Print {"ids", "next_logprobs", "entropies", "perplexity"} (+ "lcm_stats") as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    lcm: LcmArgs,
    #[command(flatten)]
    window: WindowArgs,
}

/// How a text longer than the context is scored (transformers' strided-perplexity recipe).
#[derive(Args)]
pub struct WindowArgs {
    /// Tokens per window over a text longer than it [default: the model's context]
    #[arg(long)]
    window: Option<usize>,
    /// Tokens between window starts; each token is scored once, with at least window - stride
    /// tokens of left context past the first window [default: half the window]
    #[arg(long)]
    stride: Option<usize>,
}

impl WindowArgs {
    /// (window, stride) for a model of context `ctx`.
    fn resolve(&self, ctx: usize) -> (usize, usize) {
        let window = self.window.unwrap_or(ctx);
        (window, self.stride.unwrap_or((window / 2).max(1)))
    }
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The text (UTF-8), encoded whole as `score` encodes it
    #[arg(long)]
    text_file: PathBuf,
    #[command(flatten)]
    window: WindowArgs,
    /// Print {"tokens", "scored", "nll", "perplexity", "bits_per_byte"} as JSON
    #[arg(long)]
    json: bool,
}

pub fn generate(a: GenerateArgs, adapter: &Option<String>) -> Result<()> {
    let lcm = a.lcm.config()?;
    // The conversation first: a broken messages file is refused before the model loads.
    let conversation = match (&a.messages, &a.prompt) {
        (Some(path), _) => Some(chat::read_messages(path)?),
        (None, Some(prompt)) if a.chat => Some((vec![json!({"role": "user", "content": prompt})], None)),
        _ => None,
    };
    let t0 = Instant::now();
    let host = crate::model::load(&crate::pull::resolve_model(a.model.model.as_deref())?)?;
    let sampler = a.sampling.config(&host)?;
    if let Some(c) = &lcm {
        c.validate(host.config.layers)?;
    }
    // The prompt before the GPU starts: a template's refusal needs no device.
    let (prompt_ids, eos) = match conversation {
        Some((messages, tools)) => {
            let template = a.template.load(&host)?;
            let (_, ids) = chat::render(&template, &host, &messages, tools.as_ref(), true)?;
            (ids, chat::stop_ids(&template, &host))
        }
        // clap requires --prompt when --messages is absent.
        None => (host.tokenizer.encode(a.prompt.as_deref().unwrap_or_default())?, host.config.eos.clone()),
    };
    let m = upload(host, adapter, a.model.weights()?, t0)?;
    let opts = GenerateOptions { max_tokens: a.max_tokens, sampler, eos, lcm };
    let tok = &m.host.tokenizer;
    let mut stream = TextStream::new();
    let mut stdout = std::io::stdout();
    let t0 = Instant::now();
    let mut first_token_s = None;
    let ids = generate::generate(m.gpu, &m.gpu_model, &prompt_ids, &opts, &mut |id| {
        first_token_s.get_or_insert(t0.elapsed().as_secs_f64());
        if !a.json {
            stdout.write_all(stream.push(tok, id)?.as_bytes())?;
            stdout.flush()?;
        }
        Ok(())
    })?;
    let total = t0.elapsed().as_secs_f64();
    let text = tok.decode(&ids)?;
    if a.json {
        println!("{}", json!({"prompt_ids": prompt_ids, "ids": ids, "text": text}));
    } else {
        println!();
    }
    let prefill = first_token_s.unwrap_or(total);
    let decoded = ids.len().saturating_sub(1);
    eprintln!(
        "[{} prompt tokens, prefill {:.0} tok/s; {} new tokens, decode {:.1} tok/s; load {:.2}s; {}]",
        prompt_ids.len(),
        prompt_ids.len() as f64 / prefill,
        ids.len(),
        if decoded > 0 { decoded as f64 / (total - prefill) } else { 0.0 },
        m.load_s,
        m.gpu.info.name
    );
    Ok(())
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))
}

pub fn score(a: ScoreArgs, adapter: &Option<String>) -> Result<()> {
    let text = read_text(&a.text_file)?;
    let lcm = a.lcm.config()?;
    let m = load_model(&a.model, adapter)?;
    let ids = m.host.tokenizer.encode(&text)?;
    let (window, stride) = a.window.resolve(m.host.config.max_positions);
    let s = match &lcm {
        Some(_) if ids.len() > window => bail!(
            "{}: {} tokens exceed the window of {window} tokens, and LCM scoring needs the whole text in one",
            a.text_file.display(),
            ids.len()
        ),
        Some(c) => generate::score(m.gpu, &m.gpu_model, &ids, Some(c))?,
        None => generate::score_windowed(m.gpu, &m.gpu_model, &ids, window, stride)?,
    };
    let ppl = s.perplexity();
    if a.json {
        let mut out = json!({"ids": ids, "next_logprobs": s.next_logprobs, "entropies": s.entropies,
                   "perplexity": if ppl.is_finite() { json!(ppl) } else { json!(null) }});
        if lcm.is_some() {
            out["lcm_stats"] = s
                .lcm_stats
                .iter()
                .map(|l| json!({"layer": l.layer, "mean_gate": l.mean_gate, "mean_divergence": l.mean_divergence}))
                .collect();
        }
        println!("{out}");
    } else {
        let mean_entropy =
            s.entropies.iter().map(|&e| e as f64).sum::<f64>() / s.entropies.len().max(1) as f64;
        println!("{} tokens, perplexity {ppl:.4}, mean entropy {mean_entropy:.4} nats", ids.len());
    }
    Ok(())
}

/// `keel perplexity`: the whole text's perplexity by the strided recipe, and its bits per byte.
pub fn perplexity(a: PerplexityArgs, adapter: &Option<String>) -> Result<()> {
    let text = read_text(&a.text_file)?;
    let m = load_model(&a.model, adapter)?;
    let ids = m.host.tokenizer.encode(&text)?;
    let (window, stride) = a.window.resolve(m.host.config.max_positions);
    if ids.len() < 2 {
        bail!("{}: needs at least two tokens to score, got {}", a.text_file.display(), ids.len());
    }
    let s = generate::score_windowed(m.gpu, &m.gpu_model, &ids, window, stride)?;
    let total: f64 = s.next_logprobs.iter().map(|&l| -f64::from(l)).sum();
    let scored = s.next_logprobs.len();
    let nll = total / scored as f64;
    let bits_per_byte = total / std::f64::consts::LN_2 / text.len() as f64;
    if a.json {
        let out = json!({"tokens": ids.len(), "scored": scored, "nll": nll, "perplexity": nll.exp(),
                         "bits_per_byte": bits_per_byte, "window": window, "stride": stride});
        println!("{out}");
    } else {
        println!(
            "{} tokens ({scored} scored, window {window}, stride {stride}): perplexity {:.4}, {nll:.4} nats/token, {bits_per_byte:.4} bits/byte",
            ids.len(),
            nll.exp()
        );
    }
    Ok(())
}
