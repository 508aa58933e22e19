//! `keel serve --api` driven by the official `openai` Python client (pip install openai):
//! greedy replies, plain and streamed, equal `keel generate` with the same settings (chat
//! through the template, completions on the raw prompt, LCM through the extra `keel` field);
//! stop strings, usage and logprobs; bad requests get OpenAI's error object with status 400
//! and the server stays up.

mod common;

use common::server::serve_with;
use common::*;
use keel::testing::{model, skip};
use serde_json::{json, Value};
use std::process::Command;

fn generate(args: &[&str]) -> Value {
    let greedy = ["--max-tokens", "8", "--temperature", "0", "--json"];
    let args: Vec<&str> = ["generate"].iter().chain(args).chain(&greedy).copied().collect();
    serde_json::from_str(succeeds(&args).trim()).unwrap()
}

#[test]
fn openai_client_gets_keel_generates_replies() {
    let Some(dir) = model("tiny-qwen2") else { return };
    let has_client =
        Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !has_client {
        skip("the Python module openai is absent (pip install openai)");
        return;
    }
    let m = dir.to_str().unwrap();
    let server = serve_with(&["--api", "--model", m], &std::env::temp_dir().join("keel-no-cache-here"));
    let lcm = json!({"gamma": 0.3, "sink": 1});
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/openai_client.py");
    let run = Command::new("python3")
        .args([script, &server.port.to_string(), "tiny-qwen2", &lcm.to_string()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out: Value = serde_json::from_slice(&run.stdout).unwrap();
    eprintln!("{out:#}");
    assert_eq!(out["models"], json!(["tiny-qwen2"]));

    let tmp = TempDir::new("api");
    let messages = tmp.path("messages.json");
    let conversation =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]);
    std::fs::write(&messages, conversation.to_string()).unwrap();
    let f = messages.to_str().unwrap();
    let chat = generate(&["--model", m, "--messages", f]);
    assert_eq!(out["chat"], chat["text"]);
    assert_eq!(out["chat_stream"], chat["text"]);
    let (prompt_n, n) = (chat["prompt_ids"].as_array().unwrap().len(), chat["ids"].as_array().unwrap().len());
    let usage = json!({"prompt_tokens": prompt_n, "completion_tokens": n, "total_tokens": prompt_n + n});
    assert_eq!(out["chat_usage"], usage);
    assert_eq!(out["chat_stream_usage"], usage);
    assert_eq!(out["chat_logprobs"].as_array().unwrap().len(), n.min(8));
    assert!(out["chat_logprobs"].as_array().unwrap().iter().all(|l| l.as_f64().unwrap() < 0.0));
    let lcm_reply = generate(&["--model", m, "--messages", f, "--lcm-gamma", "0.3", "--lcm-sink", "1"]);
    assert_eq!(out["chat_lcm"], lcm_reply["text"]);
    assert_ne!(lcm_reply["ids"], chat["ids"], "the LCM setting changes this reply, so the check has teeth");

    let completion = generate(&["--model", m, "--prompt", "Once upon a time"]);
    assert_eq!(out["completion"], completion["text"]);
    assert_eq!(out["completion_stream"], completion["text"]);
    let (text, stop) = (completion["text"].as_str().unwrap(), out["stop"].as_str().unwrap());
    let before = &text[..text.find(stop).unwrap()];
    assert_eq!(out["stopped"], before);
    assert_eq!(out["stopped_stream"], before);
    assert_eq!(out["stopped_finish"], "stop");

    for key in ["bad_json", "bad_role"] {
        assert_eq!(out[key][0], 400, "{key}");
        assert_eq!(out[key][1]["error"]["type"], "invalid_request_error", "{key}");
    }
    assert!(out["bad_json"][1]["error"]["message"].as_str().unwrap().contains("not valid JSON"));
    assert!(out["bad_role"][1]["error"]["message"].as_str().unwrap().contains("'role'"));
    assert_eq!(out["too_long"][0], 400);
    assert!(out["too_long"][1].as_str().unwrap().contains("context"), "{}", out["too_long"]);
    assert_eq!(out["still_up"], chat["text"]);
}
