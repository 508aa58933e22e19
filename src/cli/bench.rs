//! `keel bench`: load time, prefill and decode throughput (mean ± sd over repeats, as
//! llama-bench reports them).

use super::{load_model, LcmArgs, ModelArg};
use crate::generate::{sampler::argmax, Session};
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    lcm: LcmArgs,
}

fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = if x.len() > 1 { x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

pub fn run(a: BenchArgs, adapter: &Option<String>) -> Result<()> {
    if a.prompt_tokens == 0 || a.repeats == 0 {
        bail!("--prompt-tokens and --repeats must be at least 1");
    }
    let lcm = a.lcm.config()?;
    let m = load_model(&a.model, adapter)?;
    let cfg = &m.host.config;
    let total = a.prompt_tokens + a.gen_tokens;
    if total > cfg.max_positions {
        bail!(
            "--prompt-tokens {} plus --gen-tokens {} = {total} exceeds the model's context of {} tokens",
            a.prompt_tokens,
            a.gen_tokens,
            cfg.max_positions
        );
    }
    // A fixed pseudo-random prompt: speed does not depend on the text.
    let prompt: Vec<u32> = (0..a.prompt_tokens).map(|i| ((i * 7919 + 13) % cfg.vocab) as u32).collect();
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    // One unmeasured run compiles the pipelines.
    for rep in 0..=a.repeats {
        let mut session = Session::new(m.gpu, &m.gpu_model, total, lcm.as_ref())?;
        let t0 = Instant::now();
        let mut logits = session.feed(&prompt, None)?.last_logits;
        let t_prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..a.gen_tokens {
            let id = argmax(&logits);
            logits = session.feed(&[id], None)?.last_logits;
        }
        let t_decode = t1.elapsed().as_secs_f64();
        if rep > 0 {
            prefill.push(a.prompt_tokens as f64 / t_prefill);
            if a.gen_tokens > 0 {
                decode.push(a.gen_tokens as f64 / t_decode);
            }
        }
    }
    let (p, p_sd) = mean_sd(&prefill);
    let (d, d_sd) = if decode.is_empty() { (0.0, 0.0) } else { mean_sd(&decode) };
    let info = &m.gpu.info;
    if a.json {
        println!(
            "{}",
            json!({"load_s": m.load_s, "prefill_tok_s": p, "prefill_tok_s_sd": p_sd, "decode_tok_s": d,
                   "decode_tok_s_sd": d_sd, "adapter": info.name, "backend": format!("{:?}", info.backend),
                   "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "repeats": a.repeats, "lcm": lcm.is_some_and(|c| !c.is_off())})
        );
    } else {
        println!("model:   {} ({} parameters)", m.host.path.display(), cfg.param_count());
        println!("adapter: {} ({:?})", info.name, info.backend);
        println!("load:    {:.2} s", m.load_s);
        println!("prefill: {p:.1} ± {p_sd:.1} tok/s ({} tokens)", a.prompt_tokens);
        println!("decode:  {d:.1} ± {d_sd:.1} tok/s ({} tokens)", a.gen_tokens);
    }
    Ok(())
}
