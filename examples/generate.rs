//! The smallest use of Keel as a library: load a model, generate greedily, print the text.
//!
//!     cargo run --release --example generate -- ../shared/models/stories260k "Once upon a time"

use anyhow::Result;
use keel::generate::{generate, GenerateOptions, SamplerConfig};
use keel::gpu::Gpu;
use keel::model::{load, GpuModel};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "../shared/models/stories260k".into());
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".into());
    let gpu = Gpu::shared()?;
    let host = load(path.as_ref())?;
    let model = GpuModel::upload(gpu, &host)?;
    let prompt_ids = host.tokenizer.encode(&prompt)?;
    let opts = GenerateOptions {
        max_tokens: 64,
        sampler: SamplerConfig { temperature: 0.0, ..SamplerConfig::default() },
        eos: host.config.eos.clone(),
        lcm: None,
    };
    let ids = generate(gpu, &model, &prompt_ids, &opts, &mut |_| Ok(()))?;
    println!("{prompt}{}", host.tokenizer.decode(&ids)?);
    Ok(())
}
