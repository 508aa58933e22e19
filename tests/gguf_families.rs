//! GGUFs of the new families in llama.cpp's layout (tensor names, metadata keys, and what its
//! converter does to the values: q/k rows permuted, Gemma's norms as 1 + w, GPT-NeoX's QKV as
//! [q; k; v], Llama 3's rope scaling as `rope_freqs.weight`), written from the tiny Hugging
//! Face models by gguf-py (`scripts/hf_to_gguf.py`): each loads into the config of its HF
//! files and scores the golden cases as transformers did.

mod common;

use common::TempDir;
use keel::gpu::Gpu;
use keel::model::{self, GpuModel};
use serde_json::Value;

/// python3 with gguf-py and numpy, else a visible skip (a failure under KEEL_REQUIRE_FIXTURES=1).
fn has_gguf_py() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        keel::testing::skip("python3 with the gguf and numpy packages (pip install gguf numpy) absent");
    }
    ok
}

fn check_family(name: &str) {
    let (Some(golden), Some(src)) = (keel::testing::golden(name), keel::testing::model(name)) else { return };
    if !has_gguf_py() {
        return;
    }
    let dir = TempDir::new(&format!("gguf-{name}"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hf_to_gguf.py");
    let run = std::process::Command::new("python3")
        .arg(script)
        .arg(&src)
        .arg(dir.path("model.gguf"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
    std::fs::copy(src.join("tokenizer.json"), dir.path("tokenizer.json")).unwrap();

    let hf = model::load(&src).unwrap();
    let host = model::load(&dir.0).unwrap();
    let (mut got, want) = (host.config.clone(), &hf.config);
    // llama.cpp keeps Llama 3's scaling as divisors of the inverse frequencies: the same
    // frequencies (to f32 rounding), read as transformers' longrope within the context.
    let (got_freq, want_freq) = (got.rope_scaling.inv_freq(5e5, 16), want.rope_scaling.inv_freq(5e5, 16));
    for (g, w) in got_freq.iter().zip(&want_freq) {
        assert!((g - w).abs() <= 1e-6 * w, "{name}: inverse frequency {g} vs {w}");
    }
    got.rope_scaling = want.rope_scaling.clone();
    assert_eq!(&got, want, "{name}: the GGUF's config");

    let gpu = Gpu::shared().expect("GPU adapter");
    let m = GpuModel::upload(gpu, &host).unwrap();
    let floats =
        |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<_>>();
    for (i, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let s = keel::generate::score(gpu, &m, &ids, None).unwrap();
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        let (want_lp, want_ent) = (floats(&case["next_logprobs"]), floats(&case["entropies"]));
        assert_eq!(s.next_logprobs.len(), want_lp.len());
        let (dl, de) = (diff(&s.next_logprobs, &want_lp), diff(&s.entropies, &want_ent));
        eprintln!("{name} GGUF case {i}: max |Δ logprob| {dl:.2e}, max |Δ entropy| {de:.2e}");
        assert!(dl <= 1e-3 && de <= 1e-3, "{name} GGUF case {i}: logprob diff {dl}, entropy diff {de}");
    }
}

#[test]
fn llama3_gguf_with_rope_freqs_matches_transformers() {
    check_family("tiny-llama3");
}

#[test]
fn qwen3_gguf_matches_transformers() {
    check_family("tiny-qwen3");
}

#[test]
fn gemma3_gguf_matches_transformers() {
    check_family("tiny-gemma3");
}

#[test]
fn phi3_gguf_matches_transformers() {
    check_family("tiny-phi3");
}

#[test]
fn gptneox_gguf_matches_transformers() {
    check_family("tiny-gptneox");
}

#[test]
fn smollm3_gguf_matches_transformers() {
    check_family("tiny-smollm3");
}
