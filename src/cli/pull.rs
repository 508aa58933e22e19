//! `keel pull`: a model into its cache ahead of use, its path printed on stdout.

use crate::pull::{self, HubModel};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct PullArgs {
    /// org/name or org/name:FILE on the Hugging Face Hub (into its cache, shared with
    /// transformers); none: Keel's default model
    pub name: Option<String>,
}

pub fn run(a: PullArgs) -> Result<()> {
    let path = match a.name {
        None => pull::pull_default_model()?,
        Some(name) => match HubModel::parse(&name) {
            Some(model) => pull::pull_hub_model(&model).map_err(|e| anyhow::anyhow!("{name}: {e:#}"))?,
            None => bail!("pull {name}: expected a Hub name, org/name or org/name:FILE"),
        },
    };
    println!("{}", path.display());
    Ok(())
}
