//! Decoding with the pick on the GPU (a replayed step per token, read back a few tokens
//! late) against the CPU path it replaces (every logit row read back, the pick made by the
//! host's `Sampler`): the same tokens, greedy and sampled (temperature, top-k, top-p, min-p,
//! repetition, presence and frequency penalties; n-gram bans and DRY sampled on the host), with and without LCM, an EOS mid-way included, and per-token
//! statistics equal to the CPU's from the logits; and several steps per submission (the
//! page's way) giving exactly the picks of one.

use keel::generate::decode::pick_from_logits;
use keel::generate::sampler::Dry;
use keel::generate::{Sampler, SamplerConfig, Session};
use keel::gpu::{AdapterChoice, Gpu, KernelOptions};
use keel::model::{self, GpuModel};
use keel::modulate::LcmConfig;
use keel::ops::stats::Pick;

fn sampler(cfg: &SamplerConfig) -> Sampler {
    Sampler::new(cfg.clone()).unwrap()
}

/// The CPU path: feed, read the logits, pick with the host sampler, `n` times.
fn cpu_path(
    gpu: &Gpu,
    m: &GpuModel,
    prompt: &[u32],
    n: usize,
    cfg: &SamplerConfig,
    lcm: Option<&LcmConfig>,
) -> Vec<Pick> {
    let mut session = Session::new(gpu, m, prompt.len() + n, lcm).unwrap();
    let mut logits = session.feed(prompt, None).unwrap().last_logits;
    let mut history = prompt.to_vec();
    let mut sampler = sampler(cfg);
    let mut picks = Vec::new();
    for i in 0..n {
        let id = sampler.sample(&logits, &history, prompt.len());
        history.push(id);
        picks.push(pick_from_logits(id, &logits));
        if i + 1 < n {
            logits = session.feed(&[id], None).unwrap().last_logits;
        }
    }
    picks
}

/// The GPU path; also returns the session's length afterwards.
fn gpu_path(
    gpu: &Gpu,
    m: &GpuModel,
    prompt: &[u32],
    n: usize,
    eos: &[u32],
    cfg: &SamplerConfig,
    lcm: Option<&LcmConfig>,
) -> (Vec<Pick>, Vec<u32>, usize) {
    let mut session = Session::new(gpu, m, prompt.len() + n, lcm).unwrap();
    let mut picks = Vec::new();
    let ids = pollster::block_on(session.decode(prompt, n, eos, &mut sampler(cfg), &mut |p| {
        picks.push(p);
        Ok(())
    }))
    .unwrap();
    (picks, ids, session.len)
}

#[test]
fn gpu_picks_equal_the_cpu_path() {
    let gpu = Gpu::shared().unwrap();
    let lcm = LcmConfig { gamma: 0.5, ..LcmConfig::default() };
    let greedy = SamplerConfig { temperature: 0.0, ..SamplerConfig::default() };
    let sampled = SamplerConfig {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.9,
        repetition_penalty: 1.2,
        seed: 3,
        ..SamplerConfig::default()
    };
    let openai = SamplerConfig {
        min_p: 0.05,
        presence_penalty: 0.6,
        frequency_penalty: 0.4,
        seed: 5,
        ..SamplerConfig::default()
    };
    // Read the sequence: sampled on the host, by the same decode call.
    let sequence = SamplerConfig {
        no_repeat_ngram_size: 3,
        dry: Dry { multiplier: 0.8, ..Dry::default() },
        seed: 6,
        ..SamplerConfig::default()
    };
    let plain = SamplerConfig { seed: 11, ..SamplerConfig::default() };
    for name in ["stories260k", "tiny-qwen2"] {
        let Some(dir) = keel::testing::model(name) else { continue };
        let host = model::load(&dir).unwrap();
        let m = GpuModel::upload(gpu, &host).unwrap();
        let prompt: Vec<u32> = host.tokenizer.encode("Once upon a time, a girl").unwrap();
        let n = 24;
        let settings = [
            (&greedy, None),
            (&greedy, Some(&lcm)),
            (&sampled, None),
            (&plain, Some(&lcm)),
            (&openai, None),
            (&sequence, None),
        ];
        for (cfg, lcm) in settings {
            let want = cpu_path(gpu, &m, &prompt, n, cfg, lcm);
            let want_ids: Vec<u32> = want.iter().map(|p| p.id).collect();
            let (got, ids, len) = gpu_path(gpu, &m, &prompt, n, &[], cfg, lcm);
            assert_eq!(ids, want_ids, "{name}, {cfg:?}, lcm {}", lcm.is_some());
            assert_eq!(len, prompt.len() + n - 1);
            for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.id, w.id);
                for (what, a, b) in [("logprob", g.logprob, w.logprob), ("entropy", g.entropy, w.entropy)] {
                    assert!((a - b).abs() < 1e-5, "{name} token {t} {what}: GPU {a} vs CPU {b}");
                }
            }
            // EOS mid-way: the token at its first occurrence ends the output there, and the
            // tokens the GPU computed past it are not counted.
            let k = n / 2;
            let eos = want_ids[k];
            let stop = want_ids.iter().position(|&id| id == eos).unwrap();
            let (_, ids, len) = gpu_path(gpu, &m, &prompt, n, &[eos], cfg, lcm);
            assert_eq!(ids, want_ids[..=stop], "{name} with EOS {eos}");
            assert_eq!(len, prompt.len() + stop);
        }
    }
}

/// The empty-kernel experiment (`keel bench` under KEEL_EMPTY_KERNELS=1) records the same
/// dispatches of the same kernels as a real decode step, and computes nothing: its logits stay
/// zero where the real device's are not.
#[test]
fn empty_kernels_keep_the_dispatches_and_compute_nothing() {
    let Some(path) = keel::testing::model("stories260k") else { return };
    let host = model::load(&path).unwrap();
    let options = KernelOptions { checked: false, empty: true };
    let empty = pollster::block_on(Gpu::with_options(&AdapterChoice::from_flag_or_env(None), options));
    let empty: &'static Gpu = Box::leak(Box::new(empty.unwrap()));
    let real = Gpu::shared().unwrap();
    let prompt = [1u32, 400, 300, 20];
    let kernels_of = |gpu: &'static Gpu| {
        let m = GpuModel::upload(gpu, &host).unwrap();
        let mut session = Session::new(gpu, &m, 16, None).unwrap();
        let cfg = SamplerConfig { temperature: 0.0, ..SamplerConfig::default() };
        let [prefill, decode] = session.decode_recordings(&prompt, &mut sampler(&cfg)).unwrap();
        let names = |r: &keel::gpu::Recording| -> Vec<String> {
            r.profile().unwrap().1.iter().map(|t| t.name.to_string()).collect()
        };
        let kernels = (names(&prefill), names(&decode));
        drop((prefill, decode));
        let logits = Session::new(gpu, &m, 16, None).unwrap().feed(&prompt, None).unwrap().last_logits;
        (kernels, logits)
    };
    let (real_kernels, real_logits) = kernels_of(real);
    let (empty_kernels, empty_logits) = kernels_of(empty);
    assert!(real_kernels.1.len() > 10, "{} decode dispatches", real_kernels.1.len());
    assert_eq!(empty_kernels, real_kernels);
    assert!(real_logits.iter().any(|&z| z != 0.0));
    assert!(empty_logits.iter().all(|&z| z == 0.0), "the empty kernels computed logits");
}

/// Several decode steps per submission (one read-back of their picks, as the page decodes)
/// give exactly the picks of one step per submission, greedy and sampled, with an EOS inside
/// a submission's steps: the same tokens and statistics, the session's length, and the
/// sampler's stream left where one step per submission leaves it.
#[test]
fn steps_per_submit_do_not_change_the_picks() {
    let Some(dir) = keel::testing::model("stories260k") else { return };
    let gpu = Gpu::shared().unwrap();
    let host = model::load(&dir).unwrap();
    let m = GpuModel::upload(gpu, &host).unwrap();
    let prompt: Vec<u32> = host.tokenizer.encode("Once upon a time, a girl").unwrap();
    let n = 24;
    let run = |steps: usize, eos: &[u32], cfg: &SamplerConfig| {
        let mut session = Session::new(gpu, &m, prompt.len() + n, None).unwrap();
        session.steps_per_submit = steps;
        let mut sampler = sampler(cfg);
        let mut picks = Vec::new();
        pollster::block_on(session.decode(&prompt, n, eos, &mut sampler, &mut |p| {
            picks.push(p);
            Ok(())
        }))
        .unwrap();
        (picks, session.len, sampler.next_draw())
    };
    let greedy = SamplerConfig { temperature: 0.0, ..SamplerConfig::default() };
    let sampled =
        SamplerConfig { temperature: 0.9, top_k: 40, top_p: 0.9, seed: 3, ..SamplerConfig::default() };
    for cfg in [&greedy, &sampled] {
        let (want, want_len, want_draw) = run(1, &[], cfg);
        assert_eq!(want.len(), n);
        for steps in [2, 3, 5, 32] {
            assert_eq!(run(steps, &[], cfg), (want.clone(), want_len, want_draw), "{steps} steps, {cfg:?}");
        }
        // Token 0 comes from the prefill's submission, tokens 1..=3 from the first of 3 steps,
        // and so on: an EOS first seen at a token not last in its submission stops inside it.
        let ids: Vec<u32> = want.iter().map(|p| p.id).collect();
        let stop = (1..n)
            .find(|&t| (t - 1) % 3 != 2 && !ids[..t].contains(&ids[t]))
            .expect("a token first seen inside a submission of 3");
        let eos = [ids[stop]];
        let (until_eos, len, draw) = run(1, &eos, cfg);
        assert_eq!(until_eos, want[..=stop], "{cfg:?}");
        assert_eq!(len, prompt.len() + stop);
        assert_eq!(run(3, &eos, cfg), (until_eos, len, draw), "EOS at token {stop}, {cfg:?}");
    }
}
