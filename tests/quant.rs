//! Packed weights (`--weights`, src/gpu/wfmt.rs) end to end on real models: SmolLM2's GGUF kept
//! in its file's Q4_1/Q8_0 blocks against the same file dequantized to f32, and stories260k
//! converted to f16 and Q8_0 against f32.

use keel::generate::{self, GenerateOptions, SamplerConfig};
use keel::gpu::Gpu;
use keel::gpu::WeightFormat;
use keel::model::{self, GpuModel, WeightChoice};
use std::path::PathBuf;

fn model_dir(name: &str) -> Option<PathBuf> {
    keel::testing::model(name)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn greedy(gpu: &Gpu, m: &GpuModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions {
        max_tokens: n,
        sampler: SamplerConfig { temperature: 0.0, ..SamplerConfig::default() },
        eos: vec![],
        lcm: None,
    };
    generate::generate(gpu, m, prompt, &opts, &mut |_| Ok(())).unwrap()
}

/// `auto` keeps the GGUF's blocks: the same dequantized values as the f32 path, summed in
/// another order, so log-probs agree to ~1e-5 (asserted at 1e-3) and greedy text is the same.
#[test]
fn smollm2_gguf_kept_quantized_matches_dequantized() {
    let Some(dir) = model_dir("smollm2-135m-instruct") else { return };
    let gpu = Gpu::shared().expect("GPU adapter");
    let host = model::load(&dir).unwrap();
    let f32m = GpuModel::upload(gpu, &host).unwrap();
    let q = GpuModel::upload_with(gpu, &host, WeightChoice::Auto).unwrap();
    assert_eq!(f32m.formats(), (WeightFormat::F32, WeightFormat::F32));
    assert_eq!(q.formats(), (WeightFormat::Q4_1, WeightFormat::Q8_0), "file's own formats");
    assert!(q.weight_bytes() < f32m.weight_bytes());
    let ids = host.tokenizer.encode("The capital of France is Paris, and the capital of Germany is").unwrap();
    let a = generate::score(gpu, &f32m, &ids, None).unwrap();
    let b = generate::score(gpu, &q, &ids, None).unwrap();
    let d = max_diff(&a.next_logprobs, &b.next_logprobs);
    eprintln!("smollm2 q4_1 (auto) vs f32: max |Δ logprob| {d:.2e}");
    assert!(d <= 1e-3, "log-prob diff {d}");
    assert_eq!(greedy(gpu, &q, &ids, 8), greedy(gpu, &f32m, &ids, 8));
}

/// Converting f32 weights at upload: f16 and Q8_0 stay close to f32 (a stated tolerance, the
/// quantization error propagated) and still tell a story.
#[test]
fn stories260k_f16_and_q8_0_stay_close_to_f32() {
    let Some(dir) = model_dir("stories260k") else { return };
    let gpu = Gpu::shared().expect("GPU adapter");
    let host = model::load(&dir).unwrap();
    let f32m = GpuModel::upload(gpu, &host).unwrap();
    let ids = host.tokenizer.encode("Once upon a time there was a little girl named Lily. She").unwrap();
    let want = generate::score(gpu, &f32m, &ids, None).unwrap();
    let want_text = greedy(gpu, &f32m, &ids, 24);
    for (fmt, tol) in [(WeightFormat::F16, 5e-3), (WeightFormat::Q8_0, 5e-2)] {
        let m = GpuModel::upload_with(gpu, &host, WeightChoice::Format(fmt)).unwrap();
        assert_eq!(m.formats().0, fmt);
        let got = generate::score(gpu, &m, &ids, None).unwrap();
        let d = max_diff(&got.next_logprobs, &want.next_logprobs);
        let text = greedy(gpu, &m, &ids, 24);
        let same = text.iter().zip(&want_text).take_while(|(a, b)| a == b).count();
        eprintln!(
            "stories260k {}: max |Δ logprob| {d:.2e}; greedy agrees with f32 for {same}/24 tokens: {:?}",
            fmt.name(),
            host.tokenizer.decode(&text).unwrap()
        );
        assert!(d <= tol, "{}: log-prob diff {d} over {tol}", fmt.name());
    }
}

/// Fine-tuning refuses packed weights in one line naming the flag.
#[test]
fn finetune_refuses_packed_weights() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "finetune",
            "--model",
            "nowhere",
            "--data",
            "nowhere.txt",
            "--out",
            "nowhere",
            "--weights",
            "q8_0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: --weights q8_0") && err.lines().count() == 1, "{err}");
}
