//! Batched generation against one-at-a-time generation: ragged prompts × sampler seeds, with
//! and without LCM, give the same token ids as `generate::generate` for each request alone, and
//! each token's record equals what that step's logits say (CPU) and what `score` says.

use keel::generate::batch::{
    generate_batch, generate_batch_arms, max_batch, SeqOutput, SeqRequest, TokenRecord,
};
use keel::generate::{self, GenerateOptions, SamplerConfig, Session};
use keel::gpu::Gpu;
use keel::model::{self, GpuModel};
use keel::modulate::{LcmConfig, Space};
use serde_json::Value;

/// The model and the golden file's prompts and LCM setting, or None (with a visible note).
fn fixture(name: &str) -> Option<(model::LoadedModel, Vec<Vec<u32>>, LcmConfig)> {
    let v: Value = keel::testing::golden(name)?;
    let path = keel::testing::model(name)?;
    let ids = |c: &Value| c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let prompts = v["cases"].as_array().unwrap().iter().map(ids).collect();
    let lcm = LcmConfig::from_json(&v["lcm_config"], "lcm_config").unwrap();
    Some((model::load(&path).unwrap(), prompts, lcm))
}

fn samplers() -> Vec<SamplerConfig> {
    vec![
        SamplerConfig { temperature: 0.0, ..SamplerConfig::default() },
        SamplerConfig { temperature: 1.0, top_p: 0.9, seed: 1, ..SamplerConfig::default() },
        SamplerConfig { temperature: 1.0, top_p: 0.9, seed: 2, ..SamplerConfig::default() },
    ]
}

/// (log-prob of `id`, entropy, top-1 probability) of the softmax of `logits`, in f64.
fn cpu_record(logits: &[f32], id: u32) -> (f64, f64, f64) {
    let m = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let lse = m + logits.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln();
    let entropy = -logits.iter().map(|&z| (z as f64 - lse).exp() * (z as f64 - lse)).sum::<f64>();
    (logits[id as usize] as f64 - lse, entropy, (m - lse).exp())
}

/// Replays `prompt` + `tokens` one token at a time and checks each record against the CPU
/// statistics of the logits it was drawn from.
fn check_records_against_logits(
    gpu: &Gpu,
    m: &GpuModel,
    prompt: &[u32],
    tokens: &[TokenRecord],
    lcm: Option<&LcmConfig>,
) {
    let mut session = Session::new(gpu, m, prompt.len() + tokens.len(), lcm).unwrap();
    let mut logits = session.feed(prompt, None).unwrap().last_logits;
    for (j, t) in tokens.iter().enumerate() {
        let (lp, ent, top1) = cpu_record(&logits, t.id);
        let what = format!("token {j}: {t:?} vs CPU ({lp}, {ent}, {top1})");
        assert!((t.logprob as f64 - lp).abs() < 1e-5, "{what}");
        assert!((t.entropy as f64 - ent).abs() < 1e-4, "{what}");
        assert!((t.top1_prob as f64 - top1).abs() < 1e-5, "{what}");
        if j + 1 < tokens.len() {
            logits = session.feed(&[t.id], None).unwrap().last_logits;
        }
    }
}

fn check_model(name: &str, max_tokens: usize) {
    let Some((host, golden_prompts, golden_lcm)) = fixture(name) else { return };
    let gpu = Gpu::shared().expect("GPU adapter");
    let m = GpuModel::upload(gpu, &host).unwrap();
    // Ragged: the golden prompts (stories260k's longest takes two prefill chunks) and prompts
    // of 1 and 3 tokens (which a lone prefill runs through the matrix-vector kernel).
    let first = &golden_prompts[0];
    let mut prompts = golden_prompts.clone();
    prompts.push(first[..1].to_vec());
    prompts.push(first[..3].to_vec());
    let reqs: Vec<SeqRequest> = prompts
        .iter()
        .flat_map(|p| samplers().into_iter().map(move |s| (p.clone(), s)))
        .enumerate()
        .map(|(i, (prompt, sampler))| SeqRequest { prompt, sampler, max_tokens: max_tokens - i % 4 })
        .collect();
    let sink_normalized = LcmConfig { gamma: 0.3, sink: 1, space: Space::Normalized, ..golden_lcm.clone() };
    // The golden LCM setting for the whole batch, then three arms (plain, golden LCM, sink 1
    // normalized) mixed in one batch, each arm over every prompt and sampler kind.
    let settings = [None, Some(&golden_lcm), Some(&sink_normalized)];
    let mixed: Vec<Option<&LcmConfig>> = (0..reqs.len()).map(|i| settings[(i + i / 3) % 3]).collect();
    for (run, lcm_of) in [("golden lcm", vec![Some(&golden_lcm); reqs.len()]), ("mixed arms", mixed)] {
        // The model's EOS and a token the first (greedy) request emits early, so that some
        // sequences stop while the batch goes on.
        let lcm = lcm_of[0].cloned();
        let greedy = GenerateOptions { max_tokens: 5, sampler: reqs[0].sampler.clone(), eos: vec![], lcm };
        let early =
            *generate::generate(gpu, &m, &reqs[0].prompt, &greedy, &mut |_| Ok(())).unwrap().last().unwrap();
        let eos: Vec<u32> = host.config.eos.iter().copied().chain([early]).collect();
        let mut progress = Vec::new();
        let mut on_step = |done, total| progress.push((done, total));
        let outs = match run {
            "golden lcm" => generate_batch(gpu, &m, &reqs, &eos, Some(&golden_lcm), &mut on_step),
            _ => generate_batch_arms(gpu, &m, &reqs, &eos, &lcm_of, &mut on_step),
        }
        .unwrap();
        let (&(last, total), _) = progress.split_last().unwrap();
        assert_eq!((last, total), (max_tokens, max_tokens), "{name}: progress {progress:?}");
        assert!(progress.windows(2).all(|w| w[0].0 < w[1].0), "{name}: progress {progress:?}");
        assert_eq!(outs.len(), reqs.len());
        let mut ended_early = 0;
        for (i, (r, out)) in reqs.iter().zip(&outs).enumerate() {
            let lcm = lcm_of[i];
            let opts = GenerateOptions {
                max_tokens: r.max_tokens,
                sampler: r.sampler.clone(),
                eos: eos.clone(),
                lcm: lcm.cloned(),
            };
            let alone = generate::generate(gpu, &m, &r.prompt, &opts, &mut |_| Ok(())).unwrap();
            let what = format!("{name} request {i} (prompt of {}, lcm {lcm:?})", r.prompt.len());
            assert_eq!(out.ids(), alone, "{what}: batched ids differ from generating alone");
            ended_early += (alone.len() < r.max_tokens) as usize;
            // Records against score of the same tokens (teacher forcing).
            let text: Vec<u32> = r.prompt.iter().copied().chain(out.ids()).collect();
            let scores = generate::score(gpu, &m, &text, lcm).unwrap();
            let at = r.prompt.len() - 1;
            for (j, t) in out.tokens.iter().enumerate() {
                let (lp, ent) = (scores.next_logprobs[at + j], scores.entropies[at + j]);
                assert!(
                    (t.logprob - lp).abs() < 1e-4,
                    "{what} token {j}: logprob {} vs score {lp}",
                    t.logprob
                );
                assert!(
                    (t.entropy - ent).abs() < 1e-4,
                    "{what} token {j}: entropy {} vs score {ent}",
                    t.entropy
                );
                assert!(t.logprob <= 0.0 && t.top1_prob >= t.logprob.exp() - 1e-6, "{what} token {j}: {t:?}");
            }
        }
        eprintln!("{name} {run}: {} requests equal, {ended_early} ended at EOS", reqs.len());
        assert!(ended_early >= 1 && ended_early < reqs.len(), "{name} {run}: {ended_early} ended at EOS");
        let (i, _) = reqs.iter().enumerate().rfind(|(_, r)| r.sampler.temperature > 0.0).unwrap();
        check_records_against_logits(gpu, &m, &reqs[i].prompt, &outs[i].tokens, lcm_of[i]);
    }
}

#[test]
fn stories260k_batch_equals_one_at_a_time() {
    check_model("stories260k", 24);
}

#[test]
fn tiny_qwen2_batch_equals_one_at_a_time() {
    check_model("tiny-qwen2", 24);
}

#[test]
fn tiny_gpt2_batch_equals_one_at_a_time() {
    check_model("tiny-gpt2", 16);
}

/// Gemma 3's sliding windows in batched decode: its long prompt runs far past them.
#[test]
fn tiny_gemma3_batch_equals_one_at_a_time() {
    check_model("tiny-gemma3", 16);
}

/// A zero-token request yields nothing, bad requests are refused naming the request, and
/// `max_batch` keeps each layer's KV cache inside one binding.
#[test]
fn edge_cases_and_limits() {
    let Some((host, prompts, _)) = fixture("stories260k") else { return };
    let gpu = Gpu::shared().expect("GPU adapter");
    let m = GpuModel::upload(gpu, &host).unwrap();
    let req =
        |prompt: Vec<u32>, max_tokens| SeqRequest { prompt, sampler: SamplerConfig::default(), max_tokens };
    let outs = generate_batch(
        gpu,
        &m,
        &[req(prompts[0].clone(), 0), req(prompts[1].clone(), 2)],
        &[],
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(outs[0], SeqOutput { tokens: vec![] });
    assert_eq!(outs[1].tokens.len(), 2);
    let mut calls = 0;
    let none = generate_batch(gpu, &m, &[req(vec![1], 0)], &[], None, &mut |_, _| calls += 1).unwrap();
    assert_eq!((none, calls), (vec![SeqOutput { tokens: vec![] }], 0));
    let err = |r: SeqRequest| {
        generate_batch(gpu, &m, &[req(vec![1], 1), r], &[], None, &mut |_, _| {}).unwrap_err().to_string()
    };
    assert!(err(req(vec![], 3)).starts_with("request 1: the prompt encodes to no tokens"));
    assert!(err(req(vec![1], 600)).contains("exceeds the model's context of 512"));
    assert!(err(req(vec![100_000], 1)).contains("outside the model's vocabulary"));
    let arms = generate_batch_arms(gpu, &m, &[req(vec![1], 1)], &[], &[None, None], &mut |_, _| {});
    assert_eq!(arms.unwrap_err().to_string(), "2 LCM settings given for 1 requests");
    let c = &host.config;
    let n = max_batch(gpu, &m, c.max_positions);
    let kv_layer = (n * c.max_positions * c.kv_heads * c.head_dim * 4) as u64;
    assert!(n >= 1 && kv_layer <= gpu.limits.max_storage_buffer_binding_size, "max_batch {n}");
}
