//! Golden parity with Hugging Face transformers (float32): token ids, next-token
//! log-probs and entropies, the last position's top-5, and greedy continuations, for every
//! case in ../shared/golden. Fixtures are read in place (keel::testing).

use keel::generate::{self, GenerateOptions, SamplerConfig};
use keel::gpu::{AdapterChoice, Gpu, KernelOptions, Tier};
use keel::model::{self, GpuModel};
use keel::modulate::LcmConfig;
use serde_json::Value;
use std::path::PathBuf;

/// The golden file and model path (see keel::testing: skipped or failed when absent).
fn fixture(name: &str, model_path: &str) -> Option<(Value, PathBuf)> {
    Some((keel::testing::golden(name)?, keel::testing::fixture(&format!("models/{model_path}"))?))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Greedy ids up to and including the first EOS (the golden does not stop at EOS).
fn up_to_eos(ids: &[u32], eos: &[u32]) -> Vec<u32> {
    match ids.iter().position(|i| eos.contains(i)) {
        Some(p) => ids[..=p].to_vec(),
        None => ids.to_vec(),
    }
}

fn check_model(name: &str, model_path: &str, tol: f32) {
    check_model_on(Gpu::shared().expect("GPU adapter"), name, model_path, tol);
}

fn check_model_on(gpu: &'static Gpu, name: &str, model_path: &str, tol: f32) {
    let Some((golden, path)) = fixture(name, model_path) else { return };
    let host = model::load(&path).unwrap();
    let m = GpuModel::upload(gpu, &host).unwrap();
    for (i, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let text = case["text"].as_str().unwrap();
        let want_ids = ids(&case["ids"]);
        let got_ids = host.tokenizer.encode(text).unwrap();
        assert_eq!(got_ids, want_ids, "{name} case {i}: token ids");

        let s = generate::score(gpu, &m, &got_ids, None).unwrap();
        let dl = max_diff(&s.next_logprobs, &floats(&case["next_logprobs"]));
        let de = max_diff(&s.entropies, &floats(&case["entropies"]));
        eprintln!(
            "{name} case {i}: {} tokens, max |Δ logprob| {dl:.2e}, max |Δ entropy| {de:.2e}",
            got_ids.len()
        );
        assert!(
            dl <= tol && de <= tol,
            "{name} case {i}: logprob diff {dl}, entropy diff {de} (tolerance {tol})"
        );

        // The last position's top-5 tokens, from the last logits row.
        let lse = {
            let m = s.last_logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
            m + s.last_logits.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln()
        };
        for pair in case["last_top5"].as_array().unwrap() {
            let (id, lp) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
            let got = s.last_logits[id] as f64 - lse;
            assert!((got - lp).abs() <= tol as f64, "{name} case {i}: top-5 token {id}: {got} vs {lp}");
        }

        let want_greedy = ids(&case["greedy_ids"]);
        let opts = GenerateOptions {
            max_tokens: want_greedy.len(),
            sampler: SamplerConfig { temperature: 0.0, ..SamplerConfig::default() },
            eos: vec![],
            lcm: None,
        };
        let got = generate::generate(gpu, &m, &got_ids, &opts, &mut |_| Ok(())).unwrap();
        let eos = &host.config.eos;
        assert_eq!(up_to_eos(&got, eos), up_to_eos(&want_greedy, eos), "{name} case {i}: greedy ids");

        // LCM with gamma 0 is the plain model, bit for bit.
        let off = LcmConfig { gamma: 0.0, ..LcmConfig::default() };
        let s_off = generate::score(gpu, &m, &got_ids, Some(&off)).unwrap();
        assert_eq!(s_off.next_logprobs, s.next_logprobs, "{name} case {i}: gamma 0 changed log-probs");
        assert_eq!(s_off.last_logits, s.last_logits, "{name} case {i}: gamma 0 changed logits");

        // The same with LCM on: the full-sequence scan (score) and incremental decoding
        // (KV cache + carried anchors) must both match the reference.
        let lcm = LcmConfig::from_json(&golden["lcm_config"], "lcm_config").unwrap();
        let want = &case["lcm"];
        let s = generate::score(gpu, &m, &got_ids, Some(&lcm)).unwrap();
        let dl = max_diff(&s.next_logprobs, &floats(&want["next_logprobs"]));
        let de = max_diff(&s.entropies, &floats(&want["entropies"]));
        eprintln!("{name} case {i} LCM: max |Δ logprob| {dl:.2e}, max |Δ entropy| {de:.2e}");
        assert!(dl <= tol && de <= tol, "{name} case {i} LCM: logprob diff {dl}, entropy diff {de}");
        assert_eq!(s.lcm_stats.len(), lcm.layers.as_ref().unwrap().len());
        let want_greedy = ids(&want["greedy_ids"]);
        let opts = GenerateOptions { max_tokens: want_greedy.len(), lcm: Some(lcm), ..opts };
        let got = generate::generate(gpu, &m, &got_ids, &opts, &mut |_| Ok(())).unwrap();
        assert_eq!(up_to_eos(&got, eos), up_to_eos(&want_greedy, eos), "{name} case {i}: LCM greedy ids");
    }
}

#[test]
fn stories260k_matches_transformers() {
    check_model("stories260k", "stories260k", 1e-3);
}

/// The same parity with the modules the page runs: WebGPU's runtime checks and zeroed
/// workgroup memory (native devices drop them unless KEEL_CHECKED=1), on a device of its own.
#[test]
fn stories260k_matches_transformers_with_checked_kernels() {
    let options = KernelOptions { checked: true, empty: false };
    let gpu = pollster::block_on(Gpu::with_options(&AdapterChoice::from_flag_or_env(None), options));
    check_model_on(Box::leak(Box::new(gpu.expect("GPU adapter"))), "stories260k", "stories260k", 1e-3);
}

#[test]
fn tiny_gpt2_matches_transformers() {
    check_model("tiny-gpt2", "tiny-gpt2", 1e-3);
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check_model("tiny-qwen2", "tiny-qwen2", 1e-3);
}

#[test]
fn tiny_llama3_matches_transformers() {
    check_model("tiny-llama3", "tiny-llama3", 1e-3);
}

#[test]
fn tiny_smollm3_matches_transformers() {
    check_model("tiny-smollm3", "tiny-smollm3", 1e-3);
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check_model("tiny-qwen3", "tiny-qwen3", 1e-3);
}

#[test]
fn tiny_gptneox_matches_transformers() {
    check_model("tiny-gptneox", "tiny-gptneox", 1e-3);
}

#[test]
fn tiny_phi3_matches_transformers() {
    check_model("tiny-phi3", "tiny-phi3", 1e-3);
}

/// Gemma 3: `(1 + w)` norms, post-norms, scaled embedding, sliding windows of 8 on blocks
/// 0, 1 and 3 (the ~270-token case runs far past them) with their own RoPE base.
#[test]
fn tiny_gemma3_matches_transformers() {
    check_model("tiny-gemma3", "tiny-gemma3", 1e-3);
}

/// The tiled matrix engine (the GPUs' default; CPU adapters take the register kernel) keeps
/// the parity too: a llama, biases (qwen2), GPT-2's Conv1D layout and LayerNorm biases.
#[test]
fn golden_cases_hold_on_the_tiled_tier() {
    let gpu = Gpu::shared_on_tier(Tier::Tiled).expect("GPU adapter");
    for name in ["stories260k", "tiny-qwen2", "tiny-gpt2"] {
        check_model_on(gpu, name, name, 1e-3);
    }
}

#[test]
fn smollm2_gguf_matches_transformers() {
    check_model("smollm2-135m-instruct", "smollm2-135m-instruct", 2e-3);
}

/// A forked session (KV cache and LCM anchors copied) continues exactly as the original.
#[test]
fn forked_session_continues_like_the_original() {
    let Some((_, path)) = fixture("stories260k", "stories260k") else { return };
    let gpu = Gpu::shared().expect("GPU adapter");
    let host = model::load(&path).unwrap();
    let m = GpuModel::upload(gpu, &host).unwrap();
    let prompt = host.tokenizer.encode("Once upon a time there was a little girl").unwrap();
    let modulated = LcmConfig { gamma: 0.3, layers: Some(vec![2, 3, 4]), ..LcmConfig::default() };
    for lcm in [None, Some(&modulated)] {
        let mut a = generate::Session::new(gpu, &m, 64, lcm).unwrap();
        let mut logits = a.feed(&prompt, None).unwrap().last_logits;
        let mut b = a.fork().unwrap();
        for _ in 0..6 {
            let id = generate::sampler::argmax(&logits);
            let (la, lb) =
                (a.feed(&[id], None).unwrap().last_logits, b.feed(&[id], None).unwrap().last_logits);
            assert!(
                la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()),
                "lcm {:?}: fork diverged",
                lcm.is_some()
            );
            logits = la;
        }
    }
}
