//! Peak host memory of a load. Native loading streams the weights to the device tensor by
//! tensor from a memory map (src/model/open.rs), so a run's peak is the model as the device
//! holds it (on lavapipe the device's buffers are host memory too), working memory and a
//! fixed allowance, not the file, its tensors and Keel's fused layout on top, which took 2.4
//! times the model's f32 size (docs/robustness.md, "Memory"). Measured as the child's peak
//! resident set (wait4's ru_maxrss, VmHWM), not time.

mod common;

use common::*;
use keel::model::layout::hf_layout;
use keel::model::ModelConfig;

/// The binary, its libraries, the Vulkan driver and the allocator's arenas (`keel info`
/// peaks at 89 MiB on lavapipe), the rotary tables and a scoring pass's activations.
const FIXED_MEMORY: u64 = 96 << 20;

/// SmolLM2-135M from its Q4_1 GGUF, scored with every weight as f32 on the device: the peak
/// stays under 1.5 times those f32 weights plus the allowance (measured 1.40×; the loader
/// that read the file whole peaked at 2.45×).
#[test]
fn smollm2_scores_within_one_and_a_half_times_its_f32_weights() {
    let Some(gguf) = fixture("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let shapes = concat!(env!("CARGO_MANIFEST_DIR"), "/data/configs/smollm2-135m.json");
    let config = serde_json::from_str(&std::fs::read_to_string(shapes).unwrap()).unwrap();
    let config = ModelConfig::from_hf(&config, shapes).unwrap();
    let weights = hf_layout(&config).0;
    let f32_bytes: u64 =
        weights.named().iter().map(|(_, shape)| shape.iter().product::<usize>() as u64 * 4).sum();
    let t = TempDir::new("memory");
    std::fs::write(t.path("text.txt"), "The quick brown fox jumps over the lazy dog.").unwrap();
    let text = t.path("text.txt");
    let args = ["score", "--model", gguf.to_str().unwrap(), "--text-file", text.to_str().unwrap()];
    let run = keel(&[&args[..], &["--weights", "f32"]].concat());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let bound = f32_bytes * 3 / 2 + FIXED_MEMORY;
    eprintln!(
        "peak {} MiB = {:.2} × the f32 weights ({} MiB); bound {} MiB",
        run.peak_rss >> 20,
        run.peak_rss as f64 / f32_bytes as f64,
        f32_bytes >> 20,
        bound >> 20
    );
    assert!(run.peak_rss < bound, "peak {} bytes, over {bound}", run.peak_rss);
}
