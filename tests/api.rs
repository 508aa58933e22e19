//! `keel serve --api` driven by the official `openai` Python client (pip install openai):
//! greedy replies, plain and streamed, equal `keel generate` with the same settings (chat
//! through the template, completions on the raw prompt, LCM through the extra `keel` field);
//! stop strings, usage and logprobs (the alternatives against the golden file's top 5 from
//! transformers); bad requests get OpenAI's error object with status 400 and the server stays
//! up.

mod common;

use common::server::{serve_logging, serve_with};
use common::*;
use keel::testing::{golden, model, skip};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

fn generate(args: &[&str]) -> Value {
    let greedy = ["--max-tokens", "8", "--temperature", "0", "--json"];
    let args: Vec<&str> = ["generate"].iter().chain(args).chain(&greedy).copied().collect();
    serde_json::from_str(succeeds(&args).trim()).unwrap()
}

#[test]
fn openai_client_gets_keel_generates_replies() {
    let (Some(dir), Some(golden)) = (model("tiny-qwen2"), golden("tiny-qwen2")) else { return };
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
    let case = &golden["cases"][0];
    let golden_prompt = case["text"].as_str().unwrap();
    let run = Command::new("python3")
        .args([script, &server.port.to_string(), "tiny-qwen2", &lcm.to_string(), golden_prompt])
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

    // Alternatives. The completion of the golden text: its tokens are transformers' greedy ones,
    // the first position's 5 alternatives transformers' top 5.
    let tok = keel::model::load(&dir).unwrap().info.tokenizer;
    let text_of = |id: &Value| tok.decode(&[id.as_u64().unwrap() as u32]).unwrap();
    let lp = &out["completion_top"];
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let greedy: Vec<String> =
        case["greedy_ids"].as_array().unwrap()[..tokens.len()].iter().map(text_of).collect();
    assert_eq!(tokens, greedy);
    assert_eq!(tokens.concat(), lp["text"].as_str().unwrap());
    let first = lp["top_logprobs"][0].as_object().unwrap();
    for pair in case["last_top5"].as_array().unwrap() {
        let (token, want) = (text_of(&pair[0]), pair[1].as_f64().unwrap());
        let got =
            first.get(&token).and_then(Value::as_f64).unwrap_or_else(|| panic!("{token:?} not in {first:?}"));
        assert!((got - want).abs() < 1e-3, "{token:?}: {got} vs transformers' {want}");
    }
    let mut offset = 0;
    for (i, token) in tokens.iter().enumerate() {
        // Greedy: the chosen token is the best alternative, and the others are no likelier.
        let top = lp["top_logprobs"][i].as_object().unwrap();
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert_eq!(top.len(), 5);
        assert!((top[*token].as_f64().unwrap() - chosen).abs() < 1e-4, "position {i}: {top:?} vs {chosen}");
        assert!(top.values().all(|v| v.as_f64().unwrap() <= chosen + 1e-4), "position {i}: {top:?}");
        assert_eq!(lp["text_offset"][i].as_u64(), Some(offset as u64));
        offset += token.len();
    }
    let close = |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4;
    let stream = &out["completion_top_stream"];
    assert_eq!((&stream["tokens"], &stream["text_offset"]), (&lp["tokens"], &lp["text_offset"]));
    for (a, b) in
        stream["token_logprobs"].as_array().unwrap().iter().zip(lp["token_logprobs"].as_array().unwrap())
    {
        assert!(close(a, b), "streamed {a} vs {b}");
    }
    // Chat: one entry per generated token (the reply's n), each with its 5 alternatives, the
    // first of them itself; streamed the same.
    let entries = out["chat_top"].as_array().unwrap();
    assert_eq!(entries.len(), n.min(8));
    for e in entries {
        let top = e[2].as_array().unwrap();
        assert_eq!(top.len(), 5, "{e}");
        assert!(top[0][0] == e[0] && close(&top[0][1], &e[1]), "{e}");
        assert!(top.windows(2).all(|w| w[0][1].as_f64() >= w[1][1].as_f64()), "best first: {e}");
    }
    let streamed = out["chat_top_stream"].as_array().unwrap();
    assert_eq!(streamed.len(), entries.len());
    for (s, e) in streamed.iter().zip(entries) {
        assert!(s[0] == e[0] && close(&s[1], &e[1]), "{s} vs {e}");
    }
}

/// One raw HTTP/1.1 exchange with the server: the request's head and body as given, the
/// whole reply (the server closes the connection).
fn exchange(port: u16, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

fn post(port: u16, path: &str, body: &Value) -> String {
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    exchange(port, &head, body.as_bytes())
}

/// A client that hangs up mid-stream stops its generation: the server's log says so after a
/// few of the 400 tokens asked for, and the next request is served. A body over the bound
/// gets OpenAI's error object with status 400, and the server stays up.
#[test]
fn a_hang_up_stops_generating_and_an_oversized_body_is_refused() {
    let Some(dir) = model("stories260k") else { return };
    let tmp = TempDir::new("api-hangup");
    let log = tmp.path("serve.log");
    let server = serve_logging(
        &["--api", "--model", dir.to_str().unwrap()],
        &std::env::temp_dir().join("keel-no-cache-here"),
        std::fs::File::create(&log).unwrap(),
    );
    let port = server.port;
    let long = json!({"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 400,
                      "temperature": 0, "stream": true})
    .to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n",
        long.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(long.as_bytes()).unwrap();
    // The first event is on its way: then hang up.
    let mut first = [0u8; 256];
    let got = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..got]).starts_with("HTTP/1.1 200"));
    drop(s);
    let short =
        json!({"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0});
    let reply = post(port, "/v1/completions", &short);
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("\"completion_tokens\":4"), "{reply}");
    // One generation runs at a time, so the first had stopped before this reply was written.
    let logged = std::fs::read_to_string(&log).unwrap();
    let line =
        logged.lines().find(|l| l.contains("hung up")).unwrap_or_else(|| panic!("no hang-up in {logged:?}"));
    let tokens: usize =
        line.split("after ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    assert!(tokens < 100, "stopped after {tokens} of 400 tokens: {line}");

    let over = 4 << 20 | 1;
    let head =
        format!("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {over}\r\n\r\n");
    let reply = exchange(port, &head, b"");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let body: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("over 4194304 bytes"), "{body}");
    let reply = post(port, "/v1/completions", &short);
    assert!(reply.starts_with("HTTP/1.1 200"), "still up: {reply}");
}
