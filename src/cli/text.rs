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
    if a.max_tokens == 0 {
        bail!("--max-tokens 0: nothing to generate (give 1 or more)");
    }
    let lcm = a.lcm.config()?;
    // The conversation first: a broken messages file is refused before the model loads.
    let conversation = match (&a.messages, &a.prompt) {
        (Some(path), _) => Some(chat::read_messages(path)?),
        (None, Some(prompt)) if a.chat => Some((vec![json!({"role": "user", "content": prompt})], None)),
        _ => None,
    };
    let t0 = Instant::now();
    let host = crate::model::open(&crate::pull::resolve_model(a.model.model.as_deref())?)?;
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
    let m = upload(host, adapter, a.model.weights(), t0)?;
    let opts = GenerateOptions { max_tokens: a.max_tokens, sampler, eos: eos.clone(), lcm };
    let tok = &m.host.tokenizer;
    let mut stream = TextStream::new(tok);
    let mut stdout = std::io::stdout();
    // Until the first token: the prompt's forward pass and, on a first run, shader compilation.
    let waiting = super::progress::spinner(format!("reading {} prompt tokens", prompt_ids.len()));
    let t0 = Instant::now();
    let mut first_token_s = None;
    let ids = generate::generate(m.gpu, &m.gpu_model, &prompt_ids, &opts, &mut |id| {
        if first_token_s.is_none() {
            first_token_s = Some(t0.elapsed().as_secs_f64());
            waiting.finish_and_clear();
        }
        if !a.json {
            stdout.write_all(stream.push(id)?.as_bytes())?;
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
    let stats = GenerationStats {
        prompt_tokens: prompt_ids.len(),
        ids: &ids,
        eos: &eos,
        first_token_s: first_token_s.unwrap_or(total),
        total_s: total,
    };
    eprintln!("[{}; load {:.2} s; {}]", stats.describe(), m.load_s, m.gpu.info.name);
    Ok(())
}

/// What one generation measured, for the line printed after it.
struct GenerationStats<'a> {
    prompt_tokens: usize,
    /// The generated ids, an end-of-sequence token included when it stopped the generation.
    ids: &'a [u32],
    eos: &'a [u32],
    /// Seconds to the first new token: the prompt's forward pass plus any shader compilation.
    first_token_s: f64,
    total_s: f64,
}

/// Fewer decode steps than this give no rate worth printing.
const MIN_DECODE_STEPS: usize = 4;

impl GenerationStats<'_> {
    fn describe(&self) -> String {
        let stopped_at_eos = self.ids.last().is_some_and(|id| self.eos.contains(id));
        let new_tokens = self.ids.len() - usize::from(stopped_at_eos);
        let mut parts = vec![
            format!("{} prompt tokens", self.prompt_tokens),
            format!("first token after {:.2} s", self.first_token_s),
        ];
        // Each token after the first is one decode step (the end-of-sequence pick included).
        let steps = self.ids.len().saturating_sub(1);
        let decode_s = self.total_s - self.first_token_s;
        if steps >= MIN_DECODE_STEPS && decode_s > 0.0 {
            parts.push(format!("{new_tokens} new tokens, decode {:.1} tok/s", steps as f64 / decode_s));
        } else {
            parts.push(format!("{new_tokens} new tokens"));
        }
        if stopped_at_eos {
            parts.push(format!("stopped at end of sequence after {new_tokens} tokens"));
        }
        parts.join("; ")
    }
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))
}

pub fn score(a: ScoreArgs, adapter: &Option<String>) -> Result<()> {
    let text = read_text(&a.text_file)?;
    if text.is_empty() {
        bail!("{}: empty, nothing to score", a.text_file.display());
    }
    let lcm = a.lcm.config()?;
    let m = load_model(&a.model, adapter)?;
    let ids = m.host.tokenizer.encode(&text)?;
    if ids.len() < 2 {
        bail!(
            "{}: {} token(s) after tokenizing; scoring needs at least 2 (each token is scored from the ones before it)",
            a.text_file.display(),
            ids.len()
        );
    }
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
#[cfg(test)]
mod tests {
    use super::GenerationStats;

    fn line(ids: &[u32], first_token_s: f64, total_s: f64) -> String {
        GenerationStats { prompt_tokens: 6, ids, eos: &[2], first_token_s, total_s }.describe()
    }

    #[test]
    fn the_stats_line_reports_what_was_measured() {
        // Nine tokens, the last one EOS: eight new tokens, eight decode steps in 2 s.
        let ids = [5, 6, 7, 8, 9, 10, 11, 12, 2];
        assert_eq!(
            line(&ids, 1.5, 3.5),
            "6 prompt tokens; first token after 1.50 s; 8 new tokens, decode 4.0 tok/s; \
             stopped at end of sequence after 8 tokens"
        );
        // EOS at once: no new token, no rate.
        assert_eq!(
            line(&[2], 0.25, 0.25),
            "6 prompt tokens; first token after 0.25 s; 0 new tokens; stopped at end of sequence after 0 tokens"
        );
        // Too few decode steps for a rate; stopped by --max-tokens.
        assert_eq!(line(&[5, 6, 7], 0.5, 0.6), "6 prompt tokens; first token after 0.50 s; 3 new tokens");
    }
}
