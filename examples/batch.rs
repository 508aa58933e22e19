//! Batched generation throughput: `B` sampled sequences of `T` new tokens from one prompt,
//! decoded together, for each batch size given; prints prefill time and decode tokens/s.
//!
//!     cargo run --release --example batch -- ../shared/models/stories260k 32 1,8,16

use anyhow::Result;
use keel::generate::batch::{generate_batch, SeqRequest};
use keel::generate::SamplerConfig;
use keel::gpu::Gpu;
use keel::model::{load, GpuModel};
use std::time::Instant;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "../shared/models/stories260k".into());
    let tokens: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let sizes: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,8,16".into())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let gpu = Gpu::shared()?;
    let host = load(path.as_ref())?;
    let model = GpuModel::upload(gpu, &host)?;
    let prompt = host.tokenizer.encode("Once upon a time, in a small village by the sea,")?;
    println!(
        "{path}: {} prompt tokens, {tokens} new tokens per sequence, adapter {}",
        prompt.len(),
        gpu.info.name
    );
    for b in sizes {
        let reqs: Vec<SeqRequest> = (0..b)
            .map(|seed| SeqRequest {
                prompt: prompt.clone(),
                sampler: SamplerConfig { seed: seed as u64, ..SamplerConfig::default() },
                max_tokens: tokens,
            })
            .collect();
        let start = Instant::now();
        let mut first_step = None;
        let outs = generate_batch(gpu, &model, &reqs, &[], None, &mut |done, _| {
            if done == 1 {
                first_step = Some(Instant::now());
            }
        })?;
        let end = Instant::now();
        let prefill = first_step.unwrap() - start;
        let decoded: usize = outs.iter().map(|o| o.tokens.len() - 1).sum();
        let decode = (end - first_step.unwrap()).as_secs_f64();
        println!(
            "batch {b:>3}: prefill + first token {:.2} s, decode {:.1} tok/s ({decoded} tokens in {decode:.2} s)",
            prefill.as_secs_f64(),
            decoded as f64 / decode
        );
    }
    Ok(())
}
