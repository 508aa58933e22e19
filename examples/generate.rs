//! The smallest use of Keel as a library, through the crate root's items only: load a model,
//! generate greedily, print the text as it comes.
//!
//!     cargo run --release --example generate -- ../shared/models/stories260k "Once upon a time"

use std::io::Write;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "../shared/models/stories260k".into());
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".into());
    let gpu = keel::Gpu::shared()?;
    let host = keel::load(&path)?;
    let model = keel::GpuModel::upload(gpu, &host)?;
    let mut opts = keel::GenerateOptions::for_model(&host);
    opts.max_tokens = 64;
    opts.sampler.temperature = 0.0;
    let mut text = keel::TextStream::new(&host.tokenizer);
    print!("{prompt}");
    keel::generate(&model, &host.tokenizer.encode(&prompt)?, &opts, |id| {
        print!("{}", text.push(id)?);
        Ok(std::io::stdout().flush()?)
    })?;
    println!();
    Ok(())
}
