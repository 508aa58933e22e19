//! The demo page in headless Chromium (WebGPU on SwiftShader), driven through its own
//! controls by `tests/browser/run.mjs` (playwright-core): stories260k read from local files
//! through the file picker, and served by `keel serve` and loaded with one click, gives the same greedy tokens as the native `keel generate
//! --json`, without and with LCM (one at a time and side by side); 5 fine-tuning steps give
//! the native `keel finetune` losses (and the loss falls), every weight or LoRA (whose
//! downloaded PEFT adapter is `keel finetune --lora-rank`'s, and whose merged weights generate
//! in the page what `keel merge` of it generates natively); the chat panel's greedy reply from
//! tiny-qwen2 is `keel generate --messages`'s; files that are not a model are
//! refused in words and the page stays usable; the page requests nothing from another
//! origin; the screenshot is not blank. The page explains itself: the LCM panel starts at
//! `keel compare`'s setting, plots have legends and axis labels, no stale panel survives
//! switching LCM off, Max tokens 0 is refused, and Chromium without --enable-unsafe-webgpu is
//! told to add it. The npm package (`npm pack web/pkg`), unpacked under a plain page's
//! node_modules/ (`tests/browser/minimal/`), loads and generates the CLI's tokens; an
//! AbortSignal stops a generation at the next token; free() destroys the model's GPU buffers
//! and later use is refused in words; `engine.chat.completions.create` answers like OpenAI's,
//! plain and streamed, with `keel generate --messages`'s tokens. Skips visibly without node,
//! npm, Chromium, the npm dependencies or the built page (scripts/build-web.sh).

mod common;

use common::server::serve_with;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const PROMPT: &str = "Once upon a time";
const TOKENS: usize = 32;
/// One row of 32 + 1 tokens for stories260k, so that every step sees the same batch.
const TRAIN_TEXT: &str = "Once upon a time there was a little girl named Lily. She loved to play outside in \
    the park with her friends. One day she saw a big red ball and she was very happy. Her mom said she \
    could play with it.";

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("Chromium ({chromium}) absent"));
    }
    for tool in ["node", "npm"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} absent"));
        }
    }
    for module in ["playwright-core", "typescript"] {
        if !root.join("tests/browser/node_modules").join(module).is_dir() {
            return Some(format!("{module} absent (npm ci --prefix tests/browser)"));
        }
    }
    if !root.join("web/pkg/keel_bg.wasm").is_file() {
        return Some("the page is not built (scripts/build-web.sh)".into());
    }
    None
}

/// What `script` printed, as JSON, run by node with `settings` as its one argument.
fn node(script: &Path, settings: &Value) -> Value {
    let run = Command::new("node").arg(script).arg(settings.to_string()).output().expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "node failed: {stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// `keel generate`'s ids: greedy unless `extra` sets a temperature.
fn native_ids(model: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", PROMPT];
    if !extra.contains(&"--temperature") {
        args.extend(["--temperature", "0"]);
    }
    let n = TOKENS.to_string();
    args.extend(["--max-tokens", &n, "--json"]);
    args.extend(extra);
    let r = keel(&args);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    serde_json::from_str::<Value>(&r.stdout).unwrap()["ids"].clone()
}

/// The chat of the browser tests: one user message, and the greedy reply's length.
const CHAT_MESSAGE: &str = "Hello! Who are you?";
const CHAT_TOKENS: usize = 12;

fn chat_messages() -> Value {
    json!([{"role": "user", "content": CHAT_MESSAGE}])
}

/// `keel generate --messages`'s greedy reply (`--json`: prompt_ids, ids) and `keel template
/// --json`'s rendering (text, ids) of [`chat_messages`].
fn native_chat(model: &Path) -> (Value, Value) {
    let dir = TempDir::new("browser-chat");
    let file = dir.path("messages.json");
    std::fs::write(&file, chat_messages().to_string()).unwrap();
    let (m, f, n) = (model.to_str().unwrap(), file.to_str().unwrap(), CHAT_TOKENS.to_string());
    let run = |args: &[&str]| {
        let r = keel(args);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        serde_json::from_str::<Value>(&r.stdout).unwrap()
    };
    let reply =
        run(&["generate", "--model", m, "--messages", f, "--max-tokens", &n, "--temperature", "0", "--json"]);
    let template = run(&["template", "--model", m, "--messages", f, "--json"]);
    (reply, template)
}

/// `keel finetune`'s 5 losses on [`TRAIN_TEXT`] (`extra`: more flags) and its folder, whose
/// `run/final` holds the result.
fn native_finetune(model: &Path, extra: &[&str]) -> (Vec<f64>, TempDir) {
    let dir = TempDir::new("browser-finetune");
    let data = dir.path("text.txt");
    std::fs::write(&data, TRAIN_TEXT).unwrap();
    let out = dir.path("run");
    let r = keel(
        &[
            "finetune",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "5",
            "--batch",
            "1",
            "--seq-len",
            "32",
            "--lr",
            "0.001",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let losses =
        log.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["loss"].as_f64().unwrap()).collect();
    (losses, dir)
}

/// The page's 5 losses equal `cli_losses` within 1e-5 + 1e-4 relative.
fn assert_losses(run: &Value, cli_losses: &[f64]) -> Vec<f64> {
    let page_losses: Vec<f64> = serde_json::from_value(run["losses"].clone())
        .unwrap_or_else(|_| panic!("no losses: {}", run["status"]));
    assert_eq!(page_losses.len(), 5);
    for (step, (p, c)) in page_losses.iter().zip(cli_losses).enumerate() {
        assert!((p - c).abs() <= 1e-5 + 1e-4 * c.abs(), "step {step}: page loss {p}, keel finetune {c}");
    }
    page_losses
}

/// Writes stories260k as llama.cpp's converter would into `dir/model.gguf`, beside a copy of
/// its tokenizer.json and generation_config.json: q/k rows permuted for llama.cpp's RoPE,
/// weights whose rows are whole 32-blocks as Q8_0 (the others F32).
fn write_gguf(model: &Path, dir: &Path) {
    for f in ["tokenizer.json", "generation_config.json"] {
        std::fs::copy(model.join(f), dir.join(f)).unwrap();
    }
    let cfg: Value = serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    let n = |k: &str| cfg[k].as_u64().unwrap();
    let st = std::fs::read(model.join("model.safetensors")).unwrap();
    let tensors = keel::model::load::read_safetensors(&st, "model.safetensors").unwrap();
    let s = |v: &str| [&(v.len() as u64).to_le_bytes()[..], v.as_bytes()].concat();
    let mut kvs = vec![[s("general.architecture"), 8u32.to_le_bytes().to_vec(), s("llama")].concat()];
    for (k, v) in [
        ("embedding_length", n("hidden_size")),
        ("block_count", n("num_hidden_layers")),
        ("attention.head_count", n("num_attention_heads")),
        ("attention.head_count_kv", n("num_key_value_heads")),
        ("feed_forward_length", n("intermediate_size")),
        ("context_length", n("max_position_embeddings")),
    ] {
        kvs.push(
            [s(&format!("llama.{k}")), 4u32.to_le_bytes().to_vec(), (v as u32).to_le_bytes().to_vec()]
                .concat(),
        );
    }
    let eps = cfg["rms_norm_eps"].as_f64().unwrap() as f32;
    kvs.push(
        [
            s("llama.attention.layer_norm_rms_epsilon"),
            6u32.to_le_bytes().to_vec(),
            eps.to_le_bytes().to_vec(),
        ]
        .concat(),
    );
    let (mut table, mut data) = (Vec::new(), Vec::new());
    for t in &tensors {
        let gguf_name = t
            .name
            .replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down");
        let mut values = t.values().into_owned();
        let heads = [("attn_q", "num_attention_heads"), ("attn_k", "num_key_value_heads")]
            .into_iter()
            .find(|(part, _)| gguf_name.contains(part));
        if let Some((_, key)) = heads {
            // Within each head, llama.cpp's row 2i + s is Hugging Face's row s·half + i.
            let (rows, cols, n_head) = (t.shape[0], t.shape[1], n(key) as usize);
            let half = rows / n_head / 2;
            let src = values.clone();
            for (r, row) in values.chunks_mut(cols).enumerate() {
                let (h, i, s) = (r / (2 * half), r % (2 * half) / 2, r % 2);
                row.copy_from_slice(&src[(h * 2 * half + s * half + i) * cols..][..cols]);
            }
        }
        let q8 = t.shape.len() == 2 && t.shape[1] % 32 == 0;
        data.resize(data.len().next_multiple_of(32), 0);
        table.extend(s(&gguf_name));
        table.extend((t.shape.len() as u32).to_le_bytes());
        t.shape.iter().rev().for_each(|&d| table.extend((d as u64).to_le_bytes()));
        table.extend(if q8 { 8u32 } else { 0 }.to_le_bytes());
        table.extend((data.len() as u64).to_le_bytes());
        if q8 {
            for block in values.chunks(32) {
                let d = block.iter().fold(0.0f32, |m, x| m.max(x.abs())) / 127.0;
                data.extend(half::f16::from_f32(d).to_le_bytes());
                data.extend(block.iter().map(|x| if d == 0.0 { 0 } else { (x / d).round() as i8 as u8 }));
            }
        } else {
            values.iter().for_each(|v| data.extend(v.to_le_bytes()));
        }
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    kvs.iter().for_each(|kv| out.extend(kv));
    out.extend(table);
    out.resize(out.len().next_multiple_of(32), 0);
    out.extend(data);
    std::fs::write(dir.join("model.gguf"), out).unwrap();
}

#[test]
fn page_generates_and_finetunes_like_the_native_cli() {
    let Some(model) = stories() else { return };
    if let Some(why) = missing() {
        keel::testing::skip(&format!("browser test: {why}"));
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gguf_dir = TempDir::new("browser-gguf");
    let gguf = gguf_dir.path("stories260k-q8_0");
    std::fs::create_dir(&gguf).unwrap();
    write_gguf(&model, &gguf);
    let Some(chat_model) = keel::testing::model("tiny-qwen2") else { return };
    let no_cache = shared().join("no-cache-here");
    let served = [&model, &gguf, &chat_model].map(|m| ["--model", m.to_str().unwrap()]).concat();
    let server = serve_with(&served, &no_cache);
    let origin = format!("http://127.0.0.1:{}/", server.port);
    let screenshot = root.join("target/browser-demo.png");
    let lora_dir = TempDir::new("browser-lora");
    let local_files = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
        .map(|f| model.join(f));
    let settings = json!({
        "url": origin, "model": "stories260k", "prompt": PROMPT, "max_tokens": TOKENS,
        "local_files": local_files,
        "lcm": {"gamma": 0.2, "layers": "2-4", "sink": 0, "space": "raw"},
        "sampling": {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 7},
        "finetune": {"text": TRAIN_TEXT, "steps": 5, "lr": 0.001},
        "lora": {"rank": 4, "targets": "q,v,down", "dir": lora_dir.0},
        "gguf": "stories260k-q8_0",
        "chat": {"model": "tiny-qwen2", "message": CHAT_MESSAGE, "max_tokens": CHAT_TOKENS},
        "screenshot": screenshot,
    });
    let got = node(&root.join("tests/browser/run.mjs"), &settings);
    eprintln!("browser: {}", got["adapter"]);
    // For docs/web.md's page-vs-native figure.
    eprintln!(
        "page decode tok/s ({} greedy tokens): plain {}, LCM {}",
        TOKENS, got["plain"]["decode_tps"], got["lcm"]["decode_tps"]
    );
    assert!(got.get("error").is_none(), "{got:#}");

    // The LCM panel starts at keel compare's default setting (src/cli/compare.rs, DEFAULT_LCM;
    // layers empty: the upper half), not at one that wrecks text.
    let defaults = &got["lcm_defaults"];
    assert_eq!(
        defaults,
        &json!({"gamma": "0.05", "layers": "", "rho": "0.9", "tau": "0.05", "kappa": "20", "sink": "1",
                "space": "normalized"}),
        "{defaults}"
    );
    // The plots name their lines and axes; switching LCM off leaves no stale panel; Max
    // tokens 0 is refused; Chromium without --enable-unsafe-webgpu is told so.
    let plots = &got["plots"];
    assert_eq!(plots[0], json!({"legend": "baseline,LCM", "axes": "generated token;entropy (nats)"}));
    assert_eq!(plots[1], json!({"legend": "baseline,LCM", "axes": "generated token;perplexity (last 16)"}));
    assert_eq!(got["after_lcm_off"], json!({"b_hidden": true, "title": "Output", "text": "", "legend": ""}));
    let zero = got["zero_tokens"].as_str().unwrap();
    assert!(zero.contains("Max tokens must be a whole number of at least 1"), "{zero}");
    let bare = got["without_flag"].as_str().unwrap();
    assert!(bare.contains("--enable-unsafe-webgpu"), "{bare}");

    let refusals: Vec<String> = serde_json::from_value(got["refusals"].clone()).unwrap();
    assert!(refusals[0].contains("notes.txt") && refusals[0].contains("model file"), "{}", refusals[0]);
    assert!(refusals[1].contains("model.safetensors: header length"), "{}", refusals[1]);
    assert!(refusals[2].contains("config.json: not valid JSON"), "{}", refusals[2]);

    let plain = native_ids(&model, &[]);
    let lcm = native_ids(&model, &["--lcm-gamma", "0.2", "--lcm-layers", "2-4"]);
    assert_eq!(plain.as_array().unwrap().len(), TOKENS);
    assert_ne!(plain, lcm, "LCM changes these tokens, so the comparison tests it");
    assert_eq!(got["local"]["ids"], plain, "from local files ({})", got["local"]["status"]);
    assert_eq!(
        got["plain"]["ids"], plain,
        "greedy tokens in the page = keel generate ({})",
        got["plain"]["status"]
    );
    assert_eq!(got["lcm"]["ids"], lcm, "greedy tokens with LCM = keel generate ({})", got["lcm"]["status"]);
    // Sampling on the GPU: the page's draws (SwiftShader) are native's (lavapipe) for a seed.
    let sampling = [
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--top-p",
        "0.9",
        "--seed",
        "7",
        "--repetition-penalty",
        "1",
    ];
    let sampled = native_ids(&model, &sampling);
    assert_ne!(
        sampled, plain,
        "these settings sample other tokens than greedy, so the comparison tests them"
    );
    assert_eq!(
        got["sampled"]["ids"], sampled,
        "sampled tokens in the page = keel generate ({})",
        got["sampled"]["status"]
    );
    let both = &got["side_by_side"];
    assert_eq!(
        (&both["ids"], &both["ids_b"]),
        (&plain, &lcm),
        "side by side: baseline and LCM ({})",
        both["status"]
    );

    // The page's 5 losses equal keel finetune's, and fall.
    let check_losses = |run: &Value, model: &Path| {
        let page_losses = assert_losses(run, &native_finetune(model, &[]).0);
        assert!(page_losses[4] < page_losses[0] / 2.0, "the loss falls: {page_losses:?}");
    };
    check_losses(&got["finetune"], &model);

    // LoRA in the page: keel finetune --lora-rank's losses, and the downloaded adapter is the
    // one keel finetune writes (PEFT's format), which keel merge reads into the same model.
    let lora_flags = ["--lora-rank", "4", "--lora-targets", "q,v,down"];
    let (cli_losses, native) = native_finetune(&model, &lora_flags);
    let page_losses = assert_losses(&got["lora"], &cli_losses);
    assert!(page_losses[4] < page_losses[0], "LoRA learns: {page_losses:?}");
    assert_eq!(got["lora"]["files"], json!(["adapter_config.json", "adapter_model.safetensors"]));
    let (page_dir, native_dir) = (lora_dir.0.clone(), native.path("run/final"));
    let config = |dir: &Path| {
        let mut c: Value =
            serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
        c.as_object_mut().unwrap().remove("base_model_name_or_path");
        c
    };
    assert_eq!(config(&page_dir), config(&native_dir));
    let tensors = |dir: &Path| {
        let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let mut tensors = keel::model::load::read_safetensors(&bytes, "adapter_model.safetensors").unwrap();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        tensors
    };
    let (page_tensors, native_tensors) = (tensors(&page_dir), tensors(&native_dir));
    assert_eq!(page_tensors.len(), native_tensors.len());
    for (p, n) in page_tensors.iter().zip(&native_tensors) {
        assert_eq!((&p.name, &p.shape), (&n.name, &n.shape));
        let worst =
            p.values().iter().zip(n.values().iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{}: the page's values differ from keel finetune's by up to {worst}", p.name);
    }
    let merged_ids = |adapter: &Path, tag: &str| {
        let merged = native.path(tag);
        let (m, a, o) = (model.to_str().unwrap(), adapter.to_str().unwrap(), merged.to_str().unwrap());
        let r = keel(&["merge", "--model", m, "--lora", a, "--out", o]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        native_ids(&merged, &[])
    };
    let page_adapter_ids = merged_ids(&page_dir, "merged-page");
    assert_eq!(page_adapter_ids, merged_ids(&native_dir, "merged-native"));
    let lora_ids = &got["lora"]["generated"]["ids"];
    assert_eq!(lora_ids, &page_adapter_ids, "the page generates with its adapter as keel does natively");
    assert_ne!(lora_ids, &plain, "the adapter changes the tokens, so the comparison tests it");

    // The served GGUF, streamed chunk by chunk: its packed weights give keel generate's tokens,
    // and fine-tuning it (from f32 copies dequantized on the GPU; natively on the host) gives
    // keel finetune's losses.
    let gguf_ids = native_ids(&gguf, &[]);
    assert_eq!(got["gguf"]["ids"], gguf_ids, "greedy tokens of the served GGUF ({})", got["gguf"]["status"]);
    check_losses(&got["gguf"]["finetune"], &gguf);

    // The chat panel's greedy reply: keel generate --messages's tokens, shown as a second turn.
    let (reply, _) = native_chat(&chat_model);
    assert_eq!(
        got["chat"]["ids"], reply["ids"],
        "chat reply in the page = keel generate --messages ({})",
        got["chat"]["status"]
    );
    assert_eq!(got["chat"]["turns"][0], CHAT_MESSAGE);
    assert!(got["chat"]["turns"].as_array().unwrap().len() == 2, "{}", got["chat"]);

    // The weights came header first, then one Range request per tensor.
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&weights[8..8 + n]).unwrap();
    let tensors = header.keys().filter(|k| *k != "__metadata__").count();
    let ranges: Vec<&str> = got["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            r.as_str().unwrap().strip_prefix(&format!("{origin}models/stories260k/model.safetensors "))
        })
        .collect();
    assert_eq!(ranges[..2], ["bytes=0-7".to_string(), format!("bytes=8-{}", 8 + n - 1)]);
    assert_eq!(ranges.len(), 2 + tensors, "one request per tensor: {ranges:?}");

    for url in got["requests"].as_array().unwrap() {
        assert!(url.as_str().unwrap().starts_with(&origin), "request to another origin: {url}");
    }
    let shot = &got["screenshot"];
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "a saved screenshot");
    assert!(shot["width"].as_u64() >= Some(800) && shot["height"].as_u64() >= Some(600), "{shot}");
    assert!(shot["colours"].as_u64() > Some(100), "the screenshot is not blank: {shot}");
}

#[test]
fn npm_package_works_from_a_plain_page() {
    let (Some(model), Some(chat_model)) = (stories(), keel::testing::model("tiny-qwen2")) else { return };
    if let Some(why) = missing() {
        keel::testing::skip(&format!("browser test: {why}"));
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The package as npm packs it, unpacked where `npm install` would put it.
    let tmp = TempDir::new("browser-package");
    let pack = Command::new("npm")
        .args(["pack", "--json", "--pack-destination", tmp.0.to_str().unwrap()])
        .arg(root.join("web/pkg"))
        .output()
        .expect("run npm pack");
    assert!(pack.status.success(), "npm pack: {}", String::from_utf8_lossy(&pack.stderr));
    let packed: Value = serde_json::from_slice(&pack.stdout).unwrap();
    let files: Vec<&str> =
        packed[0]["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for f in ["package.json", "README.md", "index.js", "index.d.ts", "keel.js", "keel.d.ts", "keel_bg.wasm"] {
        assert!(files.contains(&f), "the package holds {f}: {files:?}");
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(root.join("web/pkg/package.json")).unwrap()).unwrap();
    assert_eq!(manifest["name"], "keel-webgpu");
    assert_eq!(manifest["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["types"], "./index.d.ts");
    assert_eq!(manifest["exports"]["."], json!({"types": "./index.d.ts", "import": "./index.js"}));
    let site = tmp.path("site");
    let installed = site.join("node_modules/keel-webgpu");
    std::fs::create_dir_all(&installed).unwrap();
    let tarball = tmp.path(packed[0]["filename"].as_str().unwrap());
    let untar = Command::new("tar")
        .args(["-xzf", tarball.to_str().unwrap(), "--strip-components=1", "-C", installed.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(untar.success());
    for f in ["index.html", "main.js", "types.ts"] {
        std::fs::copy(root.join("tests/browser/minimal").join(f), site.join(f)).unwrap();
    }
    // The declarations, resolved through the package's exports, type the API as used and
    // refuse its misuses (types.ts).
    let tsc = Command::new(root.join("tests/browser/node_modules/.bin/tsc"))
        .args([
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
        ])
        .args(["--lib", "es2022,dom,dom.iterable,dom.asynciterable"])
        .arg(site.join("types.ts"))
        .output()
        .expect("run tsc (npm ci --prefix tests/browser)");
    assert!(tsc.status.success(), "tsc: {}", String::from_utf8_lossy(&tsc.stdout));

    let served = [&model, &chat_model].map(|m| ["--model", m.to_str().unwrap()]).concat();
    let server = serve_with(
        &[&["--web", site.to_str().unwrap()][..], &served].concat(),
        &shared().join("no-cache-here"),
    );
    let settings = json!({
        "url": format!("http://127.0.0.1:{}/", server.port), "model": "stories260k", "prompt": PROMPT,
        "max_tokens": TOKENS, "chat_model": "tiny-qwen2", "messages": chat_messages(), "chat_tokens": CHAT_TOKENS,
    });
    let got = node(&root.join("tests/browser/minimal.mjs"), &settings);
    assert!(got.get("error").is_none(), "{got:#}");

    // The plain page's greedy continuation is keel generate's.
    let plain = native_ids(&model, &[]);
    assert_eq!(serde_json::from_str::<Value>(got["page"]["ids"].as_str().unwrap()).unwrap(), plain);
    // Aborted in the third token's callback: no fourth token, an AbortError; the model then
    // generates as before. A signal aborted beforehand starts nothing.
    assert_eq!(got["abort"]["name"], "AbortError", "{}", got["abort"]);
    assert_eq!(got["abort"]["seen"], 3, "{}", got["abort"]);
    assert_eq!(got["aborted_before"]["name"], "AbortError", "{}", got["aborted_before"]);
    assert_eq!(got["after_abort"], plain);
    let typo = got["typo"]["message"].as_str().unwrap();
    assert!(typo.contains("unknown field `temprature`"), "{typo}");

    // free(): the engine holds no bytes after, and the page's live WebGPU buffers shrank by
    // at least what it held (its buffers were destroyed, not left to the garbage collector).
    let free = &got["free"];
    let held = free["before"]["engine"].as_f64().unwrap();
    assert!(held > 0.0 && free["after"]["engine"] == 0, "{free}");
    let released = free["before"]["live"].as_f64().unwrap() - free["after"]["live"].as_f64().unwrap();
    eprintln!("free(): the model held {held} bytes; the page's live WebGPU buffers fell by {released}");
    assert!(released >= held, "destroyed {released} bytes of {held}: {free}");
    let refused = free["generate"]["message"].as_str().unwrap();
    assert!(refused.contains("was freed (model.free())"), "{refused}");
    let refused = free["chat"]["message"].as_str().unwrap();
    assert!(refused.contains("no model is loaded"), "{refused}");
    assert_eq!(free["no_model"], true);

    // Chat completions: the template's prompt, and the greedy reply's tokens, as the CLI's.
    let (reply, template) = native_chat(&chat_model);
    assert_eq!(got["chat_info"]["chat_template"], true);
    assert_eq!(got["chat_prompt"], template, "chatPrompt = keel template --json");
    let completion = &got["completion"];
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["keel"]["ids"], reply["ids"], "{completion}");
    assert_eq!(completion["keel"]["prompt_ids"], reply["prompt_ids"]);
    let n = reply["ids"].as_array().unwrap().len();
    assert!(n > 0, "{reply}");
    eprintln!("chat reply ({n} tokens): {}", reply["text"]);
    let stopped = n < CHAT_TOKENS;
    let choice = &completion["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], if stopped { "stop" } else { "length" });
    assert_eq!(completion["usage"]["completion_tokens"], n);
    assert_eq!(completion["usage"]["prompt_tokens"], reply["prompt_ids"].as_array().unwrap().len());
    // Streamed: the role first, one chunk per reply token (none for a stop token), then the
    // finish reason; the deltas add up to the plain completion's text.
    let chunks = got["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 2 + n - usize::from(stopped), "{chunks:?}");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], choice["finish_reason"]);
    assert_eq!(last["keel"]["ids"], reply["ids"]);
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, choice["message"]["content"].as_str().unwrap());
    // A stream aborted after its third chunk ends in an AbortError before its end.
    let aborted = &got["stream_abort"];
    assert_eq!(aborted["name"], "AbortError", "{aborted}");
    assert!(aborted["chunks"].as_u64().unwrap() < chunks.len() as u64, "{aborted}");
    // A model without a chat template says so.
    let plain_chat = got["plain_model_chat"]["message"].as_str().unwrap();
    assert!(plain_chat.contains("no chat template"), "{plain_chat}");
}
