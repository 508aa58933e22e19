//! Gemma's final-logit soft-capping end to end: a copy of tiny-gemma3 with
//! `final_logit_softcapping` set scores, samples (one sequence with the pick on the GPU, and
//! batched) and trains as a host computation from the uncapped model's logits says:
//! `cap · tanh(z / cap)`, then the softmax.

mod common;

use common::TempDir;
use keel::cpu::stats::{logit_stats, softcap};
use keel::generate::batch::{generate_batch, SeqRequest};
use keel::generate::{self, Sampler, SamplerConfig, Session};
use keel::gpu::Gpu;
use keel::model::{self, GpuModel};
use keel::ops::optim::AdamW;
use keel::train::graph::ActivationMemory;
use keel::train::trainer::{Method, OptimConfig, Trainer};

/// Below the tiny model's largest logits, so the cap bends them (the tests check it does).
const CAP: f32 = 1.5;

/// The uncapped tiny-gemma3 and a copy of it with the cap set.
fn models(gpu: &'static Gpu) -> Option<(GpuModel, GpuModel, TempDir)> {
    let src = keel::testing::model("tiny-gemma3")?;
    let dir = TempDir::new("softcap");
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path(f)).unwrap();
    }
    dir.edit_json("config.json", |v| v["final_logit_softcapping"] = CAP.into());
    let plain = GpuModel::upload(gpu, &model::load(&src).unwrap()).unwrap();
    let capped = GpuModel::upload(gpu, &model::load(&dir.0).unwrap()).unwrap();
    assert_eq!((plain.config.logit_softcap, capped.config.logit_softcap), (None, Some(CAP)));
    Some((plain, capped, dir))
}

/// The uncapped model's logits after each prefix of `ids`, capped on the host.
fn host_capped_logits(gpu: &Gpu, plain: &GpuModel, ids: &[u32]) -> Vec<Vec<f32>> {
    (1..=ids.len())
        .map(|i| softcap(&generate::score(gpu, plain, &ids[..i], None).unwrap().last_logits, CAP))
        .collect()
}

const IDS: [u32; 12] = [1, 17, 300, 45, 2, 99, 511, 8, 8, 140, 77, 260];

#[test]
fn capped_scores_equal_the_host_computation() {
    let gpu = Gpu::shared().expect("GPU adapter");
    let Some((plain, capped, _dir)) = models(gpu) else { return };
    let want = host_capped_logits(gpu, &plain, &IDS);
    let got = generate::score(gpu, &capped, &IDS, None).unwrap();
    let unbent = generate::score(gpu, &plain, &IDS, None).unwrap();
    let mut bent = 0f32;
    for (i, z) in want[..IDS.len() - 1].iter().enumerate() {
        let (lse, entropy, _) = logit_stats(z);
        let logprob = (z[IDS[i + 1] as usize] as f64 - lse) as f32;
        assert!(
            (got.next_logprobs[i] - logprob).abs() < 1e-4,
            "position {i}: {} vs {logprob}",
            got.next_logprobs[i]
        );
        assert!((got.entropies[i] - entropy as f32).abs() < 1e-4, "position {i}: entropy");
        bent = bent.max((unbent.next_logprobs[i] - logprob).abs());
    }
    let last = want.last().unwrap();
    let max_last = got.last_logits.iter().zip(last).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(max_last < 1e-5, "last logits differ by {max_last}");
    assert!(got.last_logits.iter().all(|z| z.abs() < CAP));
    assert!(bent > 0.05, "the cap changed the log-probs by only {bent}");
}

/// Sampled at temperature 1 (greedy picks would not see a monotone cap): the GPU's draws from
/// the capped model equal the host sampler's draws from the host-capped logits, one sequence
/// and batched.
#[test]
fn capped_sampling_equals_the_host_computation() {
    let gpu = Gpu::shared().expect("GPU adapter");
    let Some((plain, capped, _dir)) = models(gpu) else { return };
    let (prompt, n) = (&IDS[..4], 16);
    let cfg = SamplerConfig { temperature: 1.0, seed: 5, ..SamplerConfig::default() };
    let mut host = Sampler::new(cfg.clone()).unwrap();
    let mut session = Session::new(gpu, &plain, prompt.len() + n, None).unwrap();
    let mut logits = session.feed(prompt, None).unwrap().last_logits;
    let mut want = prompt.to_vec();
    for _ in 0..n {
        let id = host.sample(&softcap(&logits, CAP), &want, prompt.len());
        want.push(id);
        logits = session.feed(&[id], None).unwrap().last_logits;
    }
    let want = &want[prompt.len()..];
    let mut session = Session::new(gpu, &capped, prompt.len() + n, None).unwrap();
    let mut gpu_sampler = Sampler::new(cfg.clone()).unwrap();
    let got = pollster::block_on(session.decode(prompt, n, &[], &mut gpu_sampler, &mut |_| Ok(()))).unwrap();
    assert_eq!(got, want, "one sequence");
    let req = |seed| SeqRequest {
        prompt: prompt.to_vec(),
        sampler: SamplerConfig { seed, ..cfg.clone() },
        max_tokens: n,
    };
    let batch = generate_batch(gpu, &capped, &[req(9), req(5)], &[], None, &mut |_, _| {}).unwrap();
    assert_eq!(batch[1].ids(), want, "batched");
    // What the batch says of each token: its log-probability under the capped softmax.
    let full: Vec<u32> = prompt.iter().chain(want).copied().collect();
    let host_logits = host_capped_logits(gpu, &plain, &full);
    for (k, t) in batch[1].tokens.iter().enumerate() {
        let z = &host_logits[prompt.len() + k - 1];
        let logprob = z[t.id as usize] as f64 - logit_stats(z).0;
        assert!((t.logprob as f64 - logprob).abs() < 1e-4, "token {k}: {} vs {logprob}", t.logprob);
    }
}

/// The training loss is the mean negative log-probability under the capped softmax (the
/// backward through the cap is checked in ops::xent and cpu::stats, against finite
/// differences).
#[test]
fn capped_training_loss_equals_the_host_computation() {
    let gpu = Gpu::shared().expect("GPU adapter");
    let Some((plain, capped, _dir)) = models(gpu) else { return };
    let want = host_capped_logits(gpu, &plain, &IDS[..IDS.len() - 1]);
    let nll: f64 =
        want.iter().enumerate().map(|(i, z)| logit_stats(z).0 - z[IDS[i + 1] as usize] as f64).sum::<f64>()
            / want.len() as f64;
    let adamw = AdamW { lr: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let optim = OptimConfig { adamw, grad_clip: 0.0, decay_norms_biases: true };
    let rows = (1, IDS.len() - 1);
    let mut trainer = Trainer::new(gpu, capped, rows, ActivationMemory::Keep, optim, Method::Full).unwrap();
    let batch: Vec<&[u32]> = vec![&IDS[..]];
    let report = trainer.step(std::slice::from_ref(&batch), 0.0).unwrap();
    assert!((report.loss - nll).abs() < 1e-5 * nll, "loss {} vs host {nll}", report.loss);
}
