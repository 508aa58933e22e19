//! Phi-3's longrope past its original context, on copies of tiny-phi3 whose original context
//! is 16 positions of 64: the rotary tables equal the host's cos and sin of the short and
//! long frequencies; a pass that ends past position 16 (scoring, a decode step, a training
//! batch) rotates every row with the long factors and one within it with the short ones, as
//! transformers picks them per forward pass; generation crosses over mid-way, one sequence
//! and batched.

mod common;

use common::TempDir;
use keel::generate::batch::{generate_batch, SeqRequest};
use keel::generate::{self, Sampler, SamplerConfig, Session};
use keel::gpu::Gpu;
use keel::model::{self, GpuModel};
use keel::ops::optim::AdamW;
use keel::train::graph::ActivationMemory;
use keel::train::trainer::{Method, OptimConfig, Trainer};
use serde_json::json;

const SHORT: [f32; 6] = [1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
const LONG: [f32; 6] = [1.3, 2.5, 4.0, 7.0, 9.0, 12.0];
const ORIGINAL: usize = 16;
const ATTENTION_FACTOR: f32 = 1.2;

/// tiny-phi3 with longrope over an original context of 16 of 64 positions, its short and long
/// factors as given.
fn longrope(gpu: &'static Gpu, tag: &str, short: &[f32], long: &[f32]) -> Option<(GpuModel, TempDir)> {
    let src = keel::testing::model("tiny-phi3")?;
    let dir = TempDir::new(tag);
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path(f)).unwrap();
    }
    dir.edit_json("config.json", |v| {
        v["max_position_embeddings"] = json!(64);
        v["original_max_position_embeddings"] = json!(ORIGINAL);
        v["rope_parameters"] = json!({"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "short_factor": short, "long_factor": long, "attention_factor": ATTENTION_FACTOR});
    });
    let m = GpuModel::upload(gpu, &model::load(&dir.0).unwrap()).unwrap();
    assert_eq!(m.config.max_positions, 64, "the whole context");
    Some((m, dir))
}

fn ids(n: usize) -> Vec<u32> {
    (0..n).map(|i| (i * 37 % 500 + 3) as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tables_are_the_host_frequencies() {
    let gpu = Gpu::shared().expect("GPU adapter");
    let Some((m, _dir)) = longrope(gpu, "longrope-tables", &SHORT, &LONG) else { return };
    for (long, factors) in [(false, SHORT), (true, LONG)] {
        let (cos, sin) = m.rope_tables(0, long).unwrap();
        let (cos, sin) = (gpu.read_f32(cos).unwrap(), gpu.read_f32(sin).unwrap());
        assert_eq!(cos.len(), 64 * 6);
        for pos in 0..64 {
            for j in 0..6 {
                // transformers: 1 / (factor · theta^(2j / rotary_dim)), angles in float32.
                let inv_freq = 1.0 / (factors[j] as f64 * 10000f64.powf(2.0 * j as f64 / 12.0));
                let angle = (pos as f32 * inv_freq as f32) as f64;
                let (c, s) = (cos[pos * 6 + j], sin[pos * 6 + j]);
                let what = format!("long {long} position {pos} frequency {j}");
                assert!((c as f64 - angle.cos() * ATTENTION_FACTOR as f64).abs() < 1e-5, "{what}: cos");
                assert!((s as f64 - angle.sin() * ATTENTION_FACTOR as f64).abs() < 1e-5, "{what}: sin");
            }
        }
    }
}

/// Scoring is one pass: past the original context every row takes the long factors (as a
/// model whose factors are all long), within it the short ones.
#[test]
fn a_pass_past_the_original_context_takes_the_long_factors() {
    let gpu = Gpu::shared().expect("GPU adapter");
    let Some((m, _a)) = longrope(gpu, "longrope", &SHORT, &LONG) else { return };
    let (short, _b) = longrope(gpu, "longrope-short", &SHORT, &SHORT).unwrap();
    let (long, _c) = longrope(gpu, "longrope-long", &LONG, &LONG).unwrap();
    let score = |m: &GpuModel, n: usize| generate::score(gpu, m, &ids(n), None).unwrap();
    for (n, want, other) in [(40, &long, &short), (ORIGINAL, &short, &long)] {
        let (got, want, other) = (score(&m, n), score(want, n), score(other, n));
        assert_eq!(got.next_logprobs, want.next_logprobs, "{n} tokens");
        assert_eq!(got.entropies, want.entropies, "{n} tokens");
        assert!(max_diff(&got.next_logprobs, &other.next_logprobs) > 1e-3, "{n} tokens: the factors matter");
    }
    let adamw = AdamW { lr: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let opt = OptimConfig { adamw, grad_clip: 0.0, decay_norms_biases: true };
    let loss = |m: &GpuModel, seq_len: usize| {
        let row = ids(seq_len + 1);
        let (model, mem) = (m.duplicate_f32(gpu).unwrap(), ActivationMemory::Keep);
        let mut t = Trainer::new(gpu, model, (1, seq_len), mem, opt, Method::Full).unwrap();
        let report = t.step(&[vec![&row[..]]], 0.0).unwrap();
        (report.loss, report.grad_norm)
    };
    assert_eq!(loss(&m, 40), loss(&long, 40), "a training pass past the original context");
    assert_eq!(loss(&m, ORIGINAL), loss(&short, ORIGINAL), "a training pass within it");
}

/// A prompt of 10 tokens (short factors) and 20 new ones: from position 16 on each decode
/// step is a pass past the original context (long factors), the cached keys before it keep
/// their short rotation. The GPU's replayed steps (one or four per submission) equal the host
/// path that feeds one token per pass, and a batch equals one sequence at a time.
#[test]
fn generation_crosses_to_the_long_factors() {
    let gpu = Gpu::shared().expect("GPU adapter");
    let Some((m, _dir)) = longrope(gpu, "longrope-generate", &SHORT, &LONG) else { return };
    let (prompt, n) = (ids(10), 20);
    let cfg = SamplerConfig { temperature: 1.0, seed: 3, ..SamplerConfig::default() };
    let mut host = Sampler::new(cfg.clone()).unwrap();
    let mut session = Session::new(gpu, &m, prompt.len() + n, None).unwrap();
    let mut logits = session.feed(&prompt, None).unwrap().last_logits;
    let mut want = prompt.clone();
    for _ in 0..n {
        let id = host.sample(&logits, &want, prompt.len());
        want.push(id);
        logits = session.feed(&[id], None).unwrap().last_logits;
    }
    let want = &want[prompt.len()..];
    // 4 steps per submission: the switch falls inside one (tokens 5-8).
    for steps in [1, 4] {
        let mut session = Session::new(gpu, &m, prompt.len() + n, None).unwrap();
        session.steps_per_submit = steps;
        let mut sampler = Sampler::new(cfg.clone()).unwrap();
        let got = pollster::block_on(session.decode(&prompt, n, &[], &mut sampler, &mut |_| Ok(()))).unwrap();
        assert_eq!(got, want, "replayed decode steps, {steps} per submission");
    }
    let req = |seed| SeqRequest {
        prompt: prompt.clone(),
        sampler: SamplerConfig { seed, ..cfg.clone() },
        max_tokens: n,
    };
    let batch = generate_batch(gpu, &m, &[req(8), req(3)], &[], None, &mut |_, _| {}).unwrap();
    assert_eq!(batch[1].ids(), want, "batched");
    // Without the switch the tokens after position 16 would come from the short factors.
    let (short, _b) = longrope(gpu, "longrope-generate-short", &SHORT, &SHORT).unwrap();
    let mut session = Session::new(gpu, &short, prompt.len() + n, None).unwrap();
    let mut sampler = Sampler::new(cfg).unwrap();
    let other = pollster::block_on(session.decode(&prompt, n, &[], &mut sampler, &mut |_| Ok(()))).unwrap();
    assert_eq!(
        other[..ORIGINAL - prompt.len()],
        want[..ORIGINAL - prompt.len()],
        "the same before the switch"
    );
    assert_ne!(other, want, "the long factors change the tokens after it");
}
