//! Chat templates end to end: `keel template` against transformers' renderings of SmolLM2's
//! template (text and ids), `generate --messages`/`--chat` against a plain generation of the
//! rendered prompt, and the refusals (no template, broken messages, a role the template refuses).

mod common;

use common::*;
use keel::testing::{golden, model};
use serde_json::{json, Value};

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

/// What `keel generate --json` of `model` with `args` prints, greedy, at most `max_tokens`.
fn greedy(model: &str, max_tokens: usize, args: &[&str]) -> Value {
    let max_tokens = max_tokens.to_string();
    let mut all = vec!["generate", "--model", model];
    all.extend(args);
    all.extend(["--max-tokens", &max_tokens, "--temperature", "0", "--json"]);
    serde_json::from_str(succeeds(&all).trim()).unwrap()
}

#[test]
fn template_matches_transformers_renderings() {
    let (Some(dir), Some(golden)) = (model("smollm2-135m-instruct"), golden("chat-smollm2")) else { return };
    let cases = golden["templates"]["smollm2-135m-instruct"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let tmp = TempDir::new("template");
    for (i, case) in cases.iter().enumerate() {
        let file = tmp.path(&format!("messages-{i}.json"));
        std::fs::write(&file, case["messages"].to_string()).unwrap();
        let mut args =
            vec!["template", "--model", dir.to_str().unwrap(), "--messages", file.to_str().unwrap()];
        if !case["add_generation_prompt"].as_bool().unwrap() {
            args.push("--no-generation-prompt");
        }
        // The plain form prints the text itself; --json adds the ids.
        assert_eq!(succeeds(&args), case["text"].as_str().unwrap(), "case {i}");
        args.push("--json");
        let out: Value = serde_json::from_str(succeeds(&args).trim()).unwrap();
        assert_eq!(out["text"], case["text"], "case {i}");
        assert_eq!(ids(&out["ids"]), ids(&case["ids"]), "case {i}");
    }
}

/// `generate --messages` is a plain generation of the rendered prompt's ids, ending at EOS.
#[test]
fn generate_messages_is_generate_on_the_rendered_prompt() {
    let Some(dir) = model("tiny-qwen2") else { return };
    let tmp = TempDir::new("generate-messages");
    let file = tmp.path("messages.json");
    let messages =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]);
    std::fs::write(&file, messages.to_string()).unwrap();
    let (m, f) = (dir.to_str().unwrap(), file.to_str().unwrap());
    let rendered: Value =
        serde_json::from_str(succeeds(&["template", "--model", m, "--messages", f, "--json"]).trim())
            .unwrap();
    let run = |extra: &[&str]| greedy(m, 12, extra);
    let chat = run(&["--messages", f]);
    assert_eq!(chat["prompt_ids"], rendered["ids"]);
    let plain = run(&["--prompt", rendered["text"].as_str().unwrap()]);
    assert_eq!(plain["prompt_ids"], rendered["ids"], "the rendered text encodes to the same ids either way");
    assert_eq!(chat["ids"], plain["ids"]);
    assert!(!ids(&chat["ids"]).is_empty());

    // --chat: the prompt as one user message.
    let one = tmp.path("one.json");
    std::fs::write(&one, json!([{"role": "user", "content": "Hello there"}]).to_string()).unwrap();
    let from_file = run(&["--messages", one.to_str().unwrap()]);
    let from_flag = run(&["--prompt", "Hello there", "--chat"]);
    assert_eq!(from_flag["prompt_ids"], from_file["prompt_ids"]);
    assert_eq!(from_flag["ids"], from_file["ids"]);
}

/// A template given by hand whose end-of-turn token is the first token greedy decoding
/// picks: generation stops right there, though generation_config.json names another EOS.
#[test]
fn generation_stops_at_the_templates_eos_token() {
    let Some(dir) = model("tiny-qwen2") else { return };
    let m = dir.to_str().unwrap();
    let tmp = TempDir::new("stop");
    let plain = greedy(m, 3, &["--prompt", "Hi"]);
    let first = ids(&plain["ids"])[0];
    // The first picked token's text, used as the template's eos_token.
    let token = tmp.path("tokenizer_config.json");
    let tok: Value = serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    let text = tok["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, id)| id.as_u64() == Some(first))
        .unwrap()
        .0;
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(dir.join(f), tmp.path(f)).unwrap();
    }
    let config =
        json!({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}", "eos_token": text});
    std::fs::write(&token, config.to_string()).unwrap();
    let out = greedy(tmp.arg(), 3, &["--prompt", "Hi", "--chat"]);
    assert_eq!(out["prompt_ids"], plain["prompt_ids"]);
    assert_eq!(ids(&out["ids"]), [first]);
}

#[test]
fn bad_chat_input_is_refused_in_one_line() {
    let (Some(stories), Some(qwen)) = (model("stories260k"), model("tiny-qwen2")) else { return };
    let (s, q) = (stories.to_str().unwrap(), qwen.to_str().unwrap());
    let tmp = TempDir::new("chat-bad");
    let write = |name: &str, text: &str| {
        let p = tmp.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let ok = write("ok.json", r#"[{"role": "user", "content": "hi"}]"#);
    fails(&["template", "--model", s, "--messages", &ok], &["has no chat template", "--chat-template FILE"]);
    fails(&["generate", "--model", s, "--messages", &ok], &["has no chat template", "--chat-template FILE"]);
    let broken = write("broken.json", r#"[{"role": "user", "content": "hi"}"#);
    fails(&["template", "--model", q, "--messages", &broken], &["broken.json", "not valid JSON"]);
    let no_role = write("no-role.json", r#"[{"content": "hi"}]"#);
    fails(&["generate", "--model", q, "--messages", &no_role], &["no-role.json", "message #0", "'role'"]);
    fails(
        &["template", "--model", q, "--messages", &tmp.path("absent.json").display().to_string()],
        &["cannot read"],
    );
    let strict = write(
        "strict.jinja",
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{{ m.content }}{% endfor %}",
    );
    let tool = write("tool.json", r#"[{"role": "tool", "content": "42"}]"#);
    fails(
        &["template", "--model", s, "--chat-template", &strict, "--messages", &tool],
        &["strict.jinja", "refused the messages", "Only user and assistant roles are supported!"],
    );
    let unparsable = write("bad.jinja", "{% for m in messages %}");
    fails(
        &["template", "--model", s, "--chat-template", &unparsable, "--messages", &ok],
        &["bad.jinja", "does not parse"],
    );
    // A template given by hand works for a model without one.
    assert_eq!(succeeds(&["template", "--model", s, "--chat-template", &strict, "--messages", &ok]), "hi");
}

/// `keel chat` with its input piped (the line editor's non-terminal mode): each reply is
/// `generate --messages` of the conversation so far; /reset starts over; /lcm off turns the
/// modulation given by the flags off.
#[test]
fn chat_replies_are_generate_messages_replies() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Some(dir) = model("tiny-qwen2") else { return };
    let m = dir.to_str().unwrap();
    let tmp = TempDir::new("chat-repl");
    let greedy = ["--max-tokens", "8", "--temperature", "0"];
    let reply = |messages: Value, extra: &[&str]| -> String {
        let file = tmp.path("m.json");
        std::fs::write(&file, messages.to_string()).unwrap();
        let args: Vec<&str> = ["generate", "--model", m, "--messages", file.to_str().unwrap(), "--json"]
            .iter()
            .chain(&greedy)
            .chain(extra)
            .copied()
            .collect();
        let v: Value = serde_json::from_str(succeeds(&args).trim()).unwrap();
        v["text"].as_str().unwrap().to_string()
    };
    let chat = |input: &str, extra: &[&str]| -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["chat", "--model", m, "--system", "Be brief."])
            .args(greedy)
            .args(extra)
            .env("WGPU_BACKEND", "vulkan")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let system = json!({"role": "system", "content": "Be brief."});
    let first = reply(json!([system, {"role": "user", "content": "Hello there"}]), &[]);
    let second = reply(
        json!([system, {"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "And then?"}]),
        &[],
    );
    assert_eq!(
        chat("Hello there\nAnd then?\n/reset\nHello there\n", &[]),
        format!("{first}\n{second}\n(conversation cleared)\n{first}\n")
    );
    let lcm = ["--lcm-gamma", "0.3", "--lcm-sink", "1"];
    let modulated = reply(json!([system, {"role": "user", "content": "Hello there"}]), &lcm);
    assert_ne!(modulated, first, "the LCM setting changes this reply, so /lcm off is seen");
    assert_eq!(
        chat("Hello there\n/lcm off\n/reset\nHello there\n", &lcm),
        format!("{modulated}\n(LCM off)\n(conversation cleared)\n{first}\n")
    );
}
