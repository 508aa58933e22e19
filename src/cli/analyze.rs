//! `keel analyze`: the MSMA multi-scale analysis (methods.md section 4) and latent stability
//! of one text, per layer, from one traced teacher-forced pass.

use super::{load_model, LcmArgs, ModelArg};
use crate::metrics::msma::{analyze_layer, DEFAULT_WINDOW};
use crate::metrics::sequence;
use crate::metrics::widen;
use crate::report::analysis::Analysis;
use crate::study::{latent_from, trace_ids, PROJ_DIM};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The text to analyse (UTF-8)
    #[arg(long)]
    text_file: PathBuf,
    /// Intermediate scale: tokens in the trailing window
    #[arg(long, default_value_t = DEFAULT_WINDOW)]
    window: usize,
    /// Print the analysis as JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Also write analysis.json and analysis.html into this folder
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    lcm: LcmArgs,
}

pub fn run(a: AnalyzeArgs, adapter: &Option<String>) -> Result<()> {
    if a.window == 0 {
        bail!("--window must be at least 1");
    }
    if let Some(out) = a.out.as_ref().filter(|o| o.exists() && !o.is_dir()) {
        bail!("--out {}: exists and is not a folder", out.display());
    }
    let name = a.text_file.display();
    let bytes = std::fs::read(&a.text_file).with_context(|| format!("--text-file {name}: cannot read"))?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("--text-file {name}: not UTF-8 text"))?;
    let lcm = a.lcm.config()?;
    let m = load_model(&a.model, adapter)?;
    if let Some(c) = &lcm {
        c.validate(m.host.config.layers)?;
    }
    let ids = m.host.tokenizer.encode(&text)?;
    let ctx = m.host.config.max_positions;
    if ids.len() < 2 {
        bail!("--text-file {name}: {} tokens; at least 2 are needed", ids.len());
    }
    if ids.len() > ctx {
        bail!("--text-file {name}: {} tokens exceed the model's context of {ctx} tokens", ids.len());
    }
    let (tr, segment_of) = trace_ids(&m.study(&crate::study::Quiet), &ids, lcm.as_ref())?;
    let msma = tr
        .layers
        .iter()
        .map(|l| analyze_layer(l.layer, &widen(&l.projected), tr.proj_dim, a.window))
        .collect();
    let analysis = Analysis {
        model: m.host.path.display().to_string(),
        text_file: name.to_string(),
        tokens: ids.len(),
        sentences: segment_of.last().map_or(0, |&s| s as usize + 1),
        window: a.window,
        proj_dim: PROJ_DIM,
        lcm: lcm.as_ref().map(|c| c.to_json()),
        msma,
        latent: latent_from(&tr, &segment_of, 0, m.host.config.hidden, sequence::DEFAULT_WINDOW),
    };
    if let Some(out) = &a.out {
        crate::atomic::write_dir(out, |dir| analysis.write_into(dir))?;
    }
    if a.json {
        println!("{}", crate::report::html::stamped(&analysis.json()));
    } else {
        print!("{}", analysis.table_text());
    }
    Ok(())
}
