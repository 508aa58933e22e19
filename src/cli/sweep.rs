//! `keel sweep`: many LCM settings (a JSON grid) against one baseline on the same prompts
//! and seeds; the paired changes, their Pareto front, report.json and report.html.

use super::compare::{announce, StudyArgs};
use super::progress::StageBars;
use super::{load_model, ModelArg};
use crate::metrics::sequence::DEFAULT_WINDOW;
use crate::study::sweep::{expand_grid, sweep};
use crate::study::Plan;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    study: StudyArgs,
    /// JSON object of lists, e.g. {"gamma": [0.02, 0.05], "sink": [1], "space": ["normalized"]}:
    /// every combination is one setting (keys: gamma, rho, tau, kappa, layers, keep_norm,
    /// sink, space, scales; values as in --lcm-config)
    #[arg(long)]
    grid: PathBuf,
}

fn read_grid(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("--grid {}: cannot read", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| anyhow!("--grid {}: not valid JSON ({e})", path.display()))
}

pub fn run(a: SweepArgs, adapter: &Option<String>) -> Result<()> {
    let prompts = a.study.prompts()?;
    let grid = read_grid(&a.grid)?;
    let m = load_model(&a.model, adapter)?;
    let file = format!("--grid {}", a.grid.display());
    let settings = expand_grid(&grid, &file, m.host.config.layers)?;
    if settings.is_empty() {
        bail!("{file}: no settings");
    }
    let bars = StageBars::default();
    let sm = m.study(&bars);
    let plan = Plan::new(&a.study.request(), prompts, &sm, a.study.chat_template(&m.host)?.as_ref())?;
    announce(&m, &plan);
    println!("{} settings", settings.len());
    let judge = a.study.judge()?;
    let checkpoints = a.study.checkpoints(&a.model, &m);
    let sm = crate::study::StudyModel { judge: judge.as_ref(), checkpoints: Some(&checkpoints), ..sm };
    let sweep = sweep(&sm, &plan, &settings, DEFAULT_WINDOW)?;
    a.study.write(&checkpoints, |dir| sweep.write_into(dir))?;
    print!("{}", sweep.table_text());
    println!("report: {}", a.study.out.join("report.html").display());
    Ok(())
}
