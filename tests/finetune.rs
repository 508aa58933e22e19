//! `keel finetune` and `keel merge` end to end: the golden training curve through the CLI,
//! a run killed mid-way and resumed to the same losses and weights, divergence stopping
//! the run with its last checkpoint intact, LoRA adapters merged, and bad flags refused.

mod common;

use common::*;
use keel::gpu::Gpu;
use keel::model::{self, GpuModel};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The golden batch of `name` as a .jsonl of rows of seq_len + 1 ids, and its losses.
fn golden_jsonl(name: &str, dir: &TempDir) -> Option<(String, Vec<f64>)> {
    let golden = keel::testing::golden(name)?;
    let train = &golden["train"];
    let mut lines = String::new();
    for (i, t) in train["input_ids"].as_array().unwrap().iter().zip(train["target_ids"].as_array().unwrap()) {
        let mut ids = i.as_array().unwrap().clone();
        ids.push(t.as_array().unwrap().last().unwrap().clone());
        lines.push_str(&serde_json::json!({ "ids": ids }).to_string());
        lines.push('\n');
    }
    let file = dir.path("golden.jsonl");
    std::fs::write(&file, lines).unwrap();
    let losses = train["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    Some((file.display().to_string(), losses))
}

fn logged_losses(out: &Path) -> Vec<(usize, f64)> {
    keel::train::run::logged_losses(out).unwrap()
}

/// The golden run's hyper-parameters as flags.
const GOLDEN_FLAGS: &str = "--batch 2 --seq-len 32 --steps 10 --lr 1e-3 --weight-decay 0.01 --warmup 0 \
     --schedule constant --grad-clip 0 --shuffle false --seed 0";

#[test]
fn cli_finetune_logs_the_golden_losses() {
    for name in ["stories260k", "tiny-gpt2", "tiny-qwen2"] {
        let t = TempDir::new("golden");
        let Some(model) = keel::testing::model(name) else { continue };
        let Some((data, want)) = golden_jsonl(name, &t) else { continue };
        let out = t.path("run");
        succeeds(&finetune_args(model.to_str().unwrap(), &data, out.to_str().unwrap(), GOLDEN_FLAGS));
        let got = logged_losses(&out);
        assert_eq!(got.len(), 10, "{name}: one log line per step");
        for ((step, loss), want) in got.iter().zip(&want) {
            let tol = (1e-3 * want.abs()).max(1e-4);
            assert!((loss - want).abs() <= tol, "{name} step {step}: {loss} vs golden {want}");
        }
        // The log's other keys, and the plot.
        let line: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(out.join("log.jsonl")).unwrap().lines().next().unwrap(),
        )
        .unwrap();
        for key in ["step", "loss", "grad_norm", "lr", "tokens_per_s"] {
            assert!(line.get(key).is_some(), "{name}: log line lacks {key}: {line}");
        }
        assert!(std::fs::read_to_string(out.join("loss.svg")).unwrap().contains("<svg"));
    }
}

/// `keel finetune --model M --data D --out O` and then `flags`.
fn finetune_args<'a>(model: &'a str, data: &'a str, out: &'a str, flags: &'a str) -> Vec<&'a str> {
    let mut args = vec!["finetune", "--model", model, "--data", data, "--out", out];
    args.extend(flags.split_whitespace());
    args
}

/// Fine-tuning stories260k on TinyStories text for 48 steps, saving every 3.
fn text_run_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    let flags =
        "--steps 48 --batch 4 --seq-len 32 --lr 3e-3 --warmup 4 --schedule cosine --save-every 3 --seed 5";
    finetune_args(model, data, out, flags)
}

/// Kills a fine-tune with SIGKILL at pseudo-random moments (10 times, resuming after each),
/// then lets it finish: every checkpoint left is whole, no staging folder survives a
/// resume, and the losses and final weights equal an uninterrupted run's.
#[test]
fn killed_finetune_resumes_to_the_same_losses_and_weights() {
    let Some(stories) = stories() else { return };
    let Some(data) = fixture("corpora/tinystories_train_head.txt") else { return };
    let t = TempDir::new("kill");
    let (model, data) = (stories.to_str().unwrap(), data.to_str().unwrap());
    let whole = t.path("whole");
    succeeds(&text_run_args(model, data, whole.to_str().unwrap()));

    let killed = t.path("killed");
    let args = text_run_args(model, data, killed.to_str().unwrap());
    let mut resume = args.clone();
    resume.push("--resume");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut kills = 0;
    let has_checkpoint = |dir: &Path| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        })
    };
    for _ in 0..10 {
        // --resume once there is a checkpoint; before the first one, start again from scratch
        // (--resume refuses a folder with nothing to resume).
        let attempt = if has_checkpoint(&killed) {
            &resume
        } else {
            let _ = std::fs::remove_dir_all(&killed);
            &args
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(attempt)
            .env("WGPU_BACKEND", "vulkan")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(t.path("stderr.txt")).unwrap())
            .spawn()
            .unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Kill once 1 to 4 more steps are logged, plus 0-15 ms: anywhere in a step, a
        // checkpoint write or a log append, but always before the end.
        let logged = || std::fs::read_to_string(killed.join("log.jsonl")).map_or(0, |t| t.lines().count());
        let target = (logged() + 1 + (x % 4) as usize).min(45);
        let t0 = Instant::now();
        while logged() < target && child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < HANG, "no progress in {HANG:?}");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis((x >> 20) % 16));
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(t.path("stderr.txt")).unwrap();
            panic!("the run ended ({status}) before kill {}: {err}", kills + 1);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        let mut newest = 0;
        for e in std::fs::read_dir(&killed).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(step) = name.strip_prefix("checkpoint-") {
                let state = e.path().join("trainer_state.json");
                assert!(state.exists(), "kill {kills}: {name} is incomplete");
                model::load(&e.path())
                    .unwrap_or_else(|err| panic!("kill {kills}: {name} does not load: {err:#}"));
                newest = newest.max(step.parse::<usize>().unwrap());
            }
        }
        // What the resume will redo: the steps logged since the newest checkpoint, at most
        // --save-every 3 (the log line of a step is written before its checkpoint).
        let lost = logged() - newest;
        assert!(lost <= 3, "kill {kills}: {lost} steps since the newest checkpoint (step {newest})");
    }
    succeeds(&resume);
    let leftovers: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging folders left: {leftovers:?}");
    assert_eq!(logged_losses(&killed), logged_losses(&whole), "resumed losses equal the uninterrupted run's");
    let weights = |dir: &Path| std::fs::read(dir.join("final/model.safetensors")).unwrap();
    assert!(weights(&killed) == weights(&whole), "resumed final weights equal the uninterrupted run's");
}

/// Without --save-every a run checkpoints every tenth of its steps, keeping the newest;
/// --resume names the checkpoint it continues from, and refuses in words, touching nothing,
/// where there is none. The terminal's steps are log.jsonl's, validation is logged once per
/// step it ran at (the last step included), and no carriage return reaches a log file.
#[test]
fn resume_continues_from_a_named_checkpoint_or_refuses() {
    let Some(stories) = stories() else { return };
    let t = TempDir::new("resume");
    let Some((data, _)) = golden_jsonl("stories260k", &t) else { return };
    let model = stories.to_str().unwrap();
    let out = t.path("run");
    let out_arg = out.to_str().unwrap();
    let flags = |steps: usize, extra: &str| {
        format!("--batch 2 --seq-len 32 --lr 1e-3 --steps {steps} --val-fraction 0.2 --eval-every 4 {extra}")
    };
    // Nothing to resume: refused, and the folder is not even created.
    fails(&finetune_args(model, &data, out_arg, &flags(6, "--resume")), &["--resume", "no checkpoint"]);
    assert!(!out.exists());
    // A log but no checkpoint: refused, the log untouched.
    std::fs::create_dir_all(&out).unwrap();
    let log = "{\"step\": 0, \"loss\": 1.0}\n";
    std::fs::write(out.join("log.jsonl"), log).unwrap();
    fails(
        &finetune_args(model, &data, out_arg, &flags(6, "--resume")),
        &["no checkpoint", "nothing to resume"],
    );
    assert_eq!(std::fs::read_to_string(out.join("log.jsonl")).unwrap(), log);
    std::fs::remove_dir_all(&out).unwrap();

    // 5 steps: a checkpoint after each (a tenth of 5, rounded up), only the newest kept.
    let first = keel(&finetune_args(model, &data, out_arg, &flags(5, "")));
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let checkpoints: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(checkpoints, ["checkpoint-5"]);
    let resumed = keel(&finetune_args(model, &data, out_arg, &flags(8, "--resume")));
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    assert!(resumed.stderr.contains("checkpoint-5 (after step 5 of 8)"), "{}", resumed.stderr);
    for run in [&first, &resumed] {
        assert!(!run.stderr.contains('\r'), "progress bars stay off a stderr that is not a terminal");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = |key: &str| -> Vec<u64> {
        lines.iter().filter(|v| v.get(key).is_some()).map(|v| v["step"].as_u64().unwrap()).collect()
    };
    assert_eq!(steps("loss"), [0, 1, 2, 3, 4, 5, 6, 7]);
    // Validation after steps 4 and 8 (log steps 3 and 7), and at the first run's end (step 4).
    assert_eq!(steps("val_loss"), [3, 4, 7]);
    // The terminal names the same steps as the log.
    let said: Vec<&str> = resumed.stderr.lines().filter(|l| l.contains("validation loss")).collect();
    assert_eq!(said.len(), 1, "{}", resumed.stderr);
    assert!(said[0].starts_with("step 7: validation loss "), "{}", said[0]);
}

#[test]
fn diverging_run_stops_and_keeps_its_last_checkpoint() {
    let Some(stories) = stories() else { return };
    let t = TempDir::new("nan");
    let Some((data, _)) = golden_jsonl("stories260k", &t) else { return };
    let out = t.path("run");
    let flags = "--batch 2 --seq-len 32 --steps 10 --lr 1e30 --grad-clip 0 --save-every 1";
    let r = keel(&finetune_args(stories.to_str().unwrap(), &data, out.to_str().unwrap(), flags));
    assert_eq!(r.code, Some(2));
    // Progress lines, then one error line.
    let line = r.stderr.lines().last().unwrap();
    assert!(line.starts_with("error: step 1: training diverged") && line.contains("checkpoint-1"), "{line}");
    assert!(!r.stderr.contains("panicked"));
    assert!(out.join("checkpoint-1/model.safetensors").exists());
    assert!(model::load(&out.join("checkpoint-1")).is_ok(), "the kept checkpoint loads");
}

/// A checkpoint loads back into Keel with identical logits.
#[test]
fn checkpoint_loads_back_with_identical_logits() {
    use keel::ops::optim::AdamW;
    use keel::train::graph::ActivationMemory;
    use keel::train::trainer::{Method, OptimConfig, Trainer};
    let Some(stories) = stories() else { return };
    let gpu = Gpu::shared().unwrap();
    let host = model::load(&stories).unwrap();
    let adamw = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let opt = OptimConfig { adamw, grad_clip: 1.0, decay_norms_biases: true };
    let gm = GpuModel::upload(gpu, &host).unwrap();
    let mut trainer = Trainer::new(gpu, gm, (1, 16), ActivationMemory::Keep, opt, Method::Full).unwrap();
    let row: Vec<u32> = (0..17).map(|i| (i * 37 % 500) as u32).collect();
    trainer.step(&[vec![&row[..]]], 1e-3).unwrap();
    let t = TempDir::new("ckpt");
    let dir = t.path("ckpt");
    let weights = trainer.download(&trainer.model.weights).unwrap();
    keel::model::save::save_hf_model(&dir, &host.config, &weights, host.tokenizer.json()).unwrap();
    let back = GpuModel::upload(gpu, &model::load(&dir).unwrap()).unwrap();
    let ids = &row[..16];
    let a = keel::generate::score(gpu, &trainer.model, ids, None).unwrap();
    let b = keel::generate::score(gpu, &back, ids, None).unwrap();
    assert!(a.last_logits.iter().zip(&b.last_logits).all(|(x, y)| x.to_bits() == y.to_bits()), "last logits");
    assert_eq!(a.next_logprobs, b.next_logprobs);
    let base = keel::generate::score(gpu, &GpuModel::upload(gpu, &host).unwrap(), ids, None).unwrap();
    assert_ne!(a.next_logprobs, base.next_logprobs, "the step changed the model");
}

#[test]
fn lora_finetune_writes_an_adapter_that_merges() {
    let Some(stories) = stories() else { return };
    let t = TempDir::new("lora");
    let Some((data, _)) = golden_jsonl("stories260k", &t) else { return };
    let (out, merged) = (t.path("run"), t.path("merged"));
    let model = stories.to_str().unwrap();
    let flags = "--batch 2 --seq-len 32 --steps 5 --lr 1e-2 --lora-rank 4 --lora-targets q,v,down";
    succeeds(&finetune_args(model, &data, out.to_str().unwrap(), flags));
    let losses = logged_losses(&out);
    assert!(losses[4].1 < losses[0].1, "LoRA learns: {losses:?}");
    let adapter = out.join("final");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));
    succeeds(&[
        "merge",
        "--model",
        model,
        "--lora",
        adapter.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    let mut want = model::load(&stories).unwrap();
    let lora = keel::model::adapter::Lora::load(&adapter, &want.config).unwrap();
    lora.merge_into(&mut want.weights);
    let got = model::load(&merged).unwrap();
    assert_eq!(got.weights.blocks[1].qkv.values(), want.weights.blocks[1].qkv.values());
    assert_ne!(
        got.weights.blocks[1].qkv.values(),
        model::load(&stories).unwrap().weights.blocks[1].qkv.values()
    );
    // Merging an adapter into a model of another shape is refused.
    let Some(gpt2) = keel::testing::model("tiny-gpt2") else { return };
    fails(
        &["merge", "--model", gpt2.to_str().unwrap(), "--lora", adapter.to_str().unwrap(), "--out", "/tmp/x"],
        &["--lora"],
    );
}

/// LoRA on GPT-NeoX's fused `query_key_value` (q and v name one adapter over it): a few
/// steps, the adapter saved in PEFT's layout (B's rows interleaved per head, which
/// adapter::tests checks against a hand-made PEFT adapter), merged by `keel merge`, scores
/// as the in-training model with its adapters merged on the GPU.
#[test]
fn gptneox_lora_on_the_fused_qkv_merges_to_the_trained_model() {
    use keel::model::adapter::{parse_targets, Lora};
    use keel::ops::optim::AdamW;
    use keel::train::graph::ActivationMemory;
    use keel::train::trainer::{Method, OptimConfig, Trainer};
    let Some(path) = keel::testing::model("tiny-gptneox") else { return };
    let gpu = Gpu::shared().expect("GPU adapter");
    let host = model::load(&path).unwrap();
    let cfg = host.config.clone();
    let slots = parse_targets(&cfg, "q,v,o").unwrap();
    assert_eq!(
        slots.iter().map(|s| s.module).collect::<Vec<_>>(),
        ["attention.query_key_value", "attention.dense"]
    );
    let lora = Lora::init(&cfg, &slots, 4, 8.0, 1).unwrap();
    let adamw = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let opt = OptimConfig { adamw, grad_clip: 0.0, decay_norms_biases: true };
    let base = GpuModel::upload(gpu, &host).unwrap();
    let mut trainer =
        Trainer::new(gpu, base, (1, 16), ActivationMemory::Keep, opt, Method::Lora(lora)).unwrap();
    let row: Vec<u32> = (0..17).map(|i| (i * 37 % cfg.vocab) as u32).collect();
    for _ in 0..3 {
        trainer.step(&[vec![&row[..]]], 1e-2).unwrap();
    }
    let t = TempDir::new("neox-lora");
    let (adapter, merged) = (t.path("adapter"), t.path("merged"));
    trainer.adapters().unwrap().unwrap().save(&adapter, &cfg, "tiny-gptneox").unwrap();
    let peft: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(peft["target_modules"], serde_json::json!(["query_key_value", "dense"]));
    let (model_arg, adapter_arg) = (path.to_str().unwrap(), adapter.to_str().unwrap());
    succeeds(&["merge", "--model", model_arg, "--lora", adapter_arg, "--out", merged.to_str().unwrap()]);
    let merged = GpuModel::upload(gpu, &model::load(&merged).unwrap()).unwrap();
    let trained = trainer.into_merged().unwrap();
    let ids = &row[..16];
    let (want, got) = (
        keel::generate::score(gpu, &trained, ids, None).unwrap(),
        keel::generate::score(gpu, &merged, ids, None).unwrap(),
    );
    let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(diff(&want.last_logits, &got.last_logits) < 1e-5, "last logits");
    assert!(diff(&want.next_logprobs, &got.next_logprobs) < 1e-5, "log-probs");
    let plain = keel::generate::score(gpu, &GpuModel::upload(gpu, &host).unwrap(), ids, None).unwrap();
    assert!(diff(&plain.next_logprobs, &got.next_logprobs) > 1e-3, "the adapter changed the model");
}

#[test]
fn finetune_bad_flags_are_refused() {
    let Some(stories) = stories() else { return };
    let t = TempDir::new("bad");
    let Some((data, _)) = golden_jsonl("stories260k", &t) else { return };
    let model = stories.to_str().unwrap();
    let out = t.path("run");
    let run = |flags: &str, needles: &[&str]| {
        fails(&finetune_args(model, &data, out.to_str().unwrap(), flags), needles)
    };
    run("--batch 2 --seq-len 32 --lr=-1", &["--lr"]);
    run("--batch 2 --seq-len 32 --lora-rank 2 --lora-targets q,x", &["--lora-targets", "'x'"]);
    run("--batch 2 --seq-len 32 --schedule linear", &["--schedule"]);
    run("--batch 2 --seq-len 31", &["golden.jsonl:1:", "expected 32"]);
    run("--batch 2 --seq-len 32 --beta2 1.5", &["--beta2"]);
    run("--batch 2 --seq-len 100000", &["--seq-len"]);
    run("--batch 2 --seq-len 32 --lcm-gamma 0.2 --lcm-layers 9-12", &["--lcm-layers"]);
    fails(
        &["finetune", "--model", model, "--data", "/no/such/file.txt", "--out", out.to_str().unwrap()],
        &["/no/such/file.txt"],
    );
    // An output folder holding a run is not overwritten without --resume.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("log.jsonl"), "{\"step\": 0, \"loss\": 1.0}\n").unwrap();
    run("--batch 2 --seq-len 32", &["--resume"]);
}

/// HGC through the CLI: the golden `hgc_plain` run's losses, and the log's per-step λ table,
/// cross-entropy and per-block gradient norms; bad HGC flags are refused.
#[test]
fn cli_hgc_logs_lambda_and_matches_the_golden_run() {
    let Some(stories) = stories() else { return };
    let t = TempDir::new("hgc");
    let Some((data, _)) = golden_jsonl("stories260k", &t) else { return };
    let Some(golden) = keel::testing::golden("stories260k") else { return };
    let run = &golden["constriction"]["runs"]["hgc_plain"];
    let out = t.path("run");
    let model = stories.to_str().unwrap();
    let flags =
        format!("{GOLDEN_FLAGS} --hgc-alpha 0.5 --hgc-mu 0.2 --hgc-depth-slope 1 --hgc-normalized false");
    succeeds(&finetune_args(model, &data, out.to_str().unwrap(), &flags));
    let want: Vec<f64> = run["ce_losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for ((step, loss), want) in logged_losses(&out).iter().zip(&want) {
        assert!((loss - want).abs() <= 1e-3 * want, "step {step}: {loss} vs golden {want}");
    }
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(out.join("log.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    let lambda = first["lambda"].as_object().unwrap();
    assert_eq!(lambda.len(), 7, "{first}");
    let q = lambda["self_attn.q_proj"].as_array().unwrap();
    let want_q = run["step0_lambda"]["self_attn.q_proj"].as_array().unwrap();
    for (g, w) in q.iter().zip(want_q) {
        assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-4);
    }
    assert_eq!(first["layer_grad_norms"].as_array().unwrap().len(), 5);
    assert_eq!(first["ce_loss"], first["loss"]);
    let bad = t.path("bad");
    let refuse = |flags: &str, needle: &str| {
        fails(
            &finetune_args(model, &data, bad.to_str().unwrap(), &format!("--batch 2 --seq-len 32 {flags}")),
            &[needle],
        );
    };
    refuse("--hgc-alpha=-1", "--hgc-alpha");
    refuse("--hgc-mu 1.5", "--hgc-mu");
    refuse("--hgc-mu=-0.1", "--hgc-mu");
    refuse("--align-beta=-1", "--align-beta");
    refuse("--hgc-on weights", "--hgc-on");
    refuse("--cgfm-local=-1", "--cgfm-local");
    refuse("--cgfm-global=-0.5", "--cgfm-global");
    refuse("--cgfm-local 0.5 --lora-rank 2", "LoRA");
    refuse("--cgfm-adaptive-lr --lr-min 1e-3 --lr-max 1e-4", "--lr-max");
    refuse("--cgfm-adaptive-lr --lr-min 0 --lr-max 1e-3", "--lr-min");
    refuse("--cgfm-adaptive-lr --lr-min=-1e-3 --lr-max 1e-3", "--lr-min");
    refuse("--cgfm-adaptive-lr --lr-max 1e-3", "--lr-min");
    refuse("--lr-min 1e-4 --lr-max 1e-3", "--cgfm-adaptive-lr");
    // HGC compares a block with the one below: a one-block model has none.
    let one_block = TempDir::stories("one-block", &stories);
    one_block.edit_json("config.json", |c| c["num_hidden_layers"] = 1.into());
    fails(
        &finetune_args(
            one_block.arg(),
            &data,
            bad.to_str().unwrap(),
            "--batch 2 --seq-len 32 --hgc-alpha 0.5",
        ),
        &["HGC", "two blocks", "has 1"],
    );

    // The alignment loss: total, cross-entropy and alignment parts in the log.
    let out = t.path("align");
    succeeds(&finetune_args(
        model,
        &data,
        out.to_str().unwrap(),
        &format!("{GOLDEN_FLAGS} --align-beta 0.5"),
    ));
    let run = &golden["constriction"]["runs"]["align"];
    let text = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    for (s, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (ce, al) = (v["ce_loss"].as_f64().unwrap(), v["align_loss"].as_f64().unwrap());
        let (want_ce, want_al) =
            (run["ce_losses"][s].as_f64().unwrap(), run["align_losses"][s].as_f64().unwrap());
        assert!(
            (ce - want_ce).abs() <= 1e-3 * want_ce && (al - want_al).abs() <= 1e-3 * want_al,
            "step {s}: {line}"
        );
        assert!((v["loss"].as_f64().unwrap() - (ce + al)).abs() < 1e-9, "loss is the total: {line}");
    }
}

/// stories260k on Milton's text with each constriction option (and LoRA with HGC on its
/// adapters) runs to the end; every log line holds the per-step quantities (λ with HGC).
#[test]
fn cli_constriction_options_run_on_a_corpus() {
    let Some(stories) = stories() else { return };
    let model = stories.to_str().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/milton_paradise_lost.txt");
    let base = "--steps 3 --batch 2 --seq-len 32 --lr 1e-3 --grad-clip 1 --seed 1";
    let options = [
        ("hgc", "--hgc-alpha 0.5 --hgc-mu 0.2 --hgc-depth-slope 1"),
        ("hgc-update", "--hgc-alpha 2 --hgc-normalized true --hgc-on update"),
        ("align", "--align-beta 0.5"),
        ("cgfm", "--cgfm-local 0.5 --cgfm-global 2"),
        ("adaptive", "--cgfm-adaptive-lr --lr-min 5e-4 --lr-max 3e-3"),
        ("lora-hgc", "--lora-rank 2 --lora-targets q,v --hgc-alpha 1 --hgc-mu 0.1 --hgc-on update"),
    ];
    for (tag, flags) in options {
        let t = TempDir::new(tag);
        let out = t.path("run");
        let args = finetune_args(model, data.to_str().unwrap(), out.to_str().unwrap(), base);
        let args: Vec<&str> = args.into_iter().chain(flags.split_whitespace()).collect();
        let r = common::keel(&args);
        assert_eq!(r.code, Some(0), "{tag}: {}", r.stderr);
        let hgc = flags.contains("--hgc-alpha");
        // Off a terminal the progress bar (which shows the mean λ with HGC) hides itself; the
        // log below carries λ per step.
        assert!(!r.stderr.contains('\r'), "{tag}: no progress bar off a terminal:\n{}", r.stderr);
        let text = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{tag}: {text}");
        for v in &lines {
            let (ce, al) = (v["ce_loss"].as_f64().unwrap(), v["align_loss"].as_f64().unwrap());
            assert!(ce > 0.0 && (v["loss"].as_f64().unwrap() - ce - al).abs() < 1e-9, "{tag}: {v}");
            assert_eq!(al > 0.0, flags.contains("--align-beta"), "{tag}: {v}");
            assert_eq!(v["layer_grad_norms"].as_array().unwrap().len(), 5, "{tag}: {v}");
            let lr = v["lr"].as_f64().unwrap();
            if flags.contains("--cgfm-adaptive-lr") {
                assert!(lr > 1e-3 && (5e-4..=3e-3).contains(&lr), "{tag}: adjusted lr {v}");
            } else {
                assert_eq!(lr, 1e-3, "{tag}: {v}");
            }
            match v.get("lambda") {
                Some(table) => {
                    assert!(hgc, "{tag}: {v}");
                    let kinds = table.as_object().unwrap();
                    let want = if tag.starts_with("lora") { 4 } else { 7 };
                    assert_eq!(kinds.len(), want, "{tag}: {v}");
                    let mut constricted = false;
                    for l in kinds.values() {
                        let l: Vec<f64> = l.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                        assert_eq!(l.len(), 5);
                        // (LoRA's B starts at 0, so its A's gradient, and their distance, is 0 at first.)
                        assert!(
                            l[0] == 1.0 && l[1..].iter().all(|x| *x > 0.0 && *x <= 1.0),
                            "{tag}: λ {l:?}"
                        );
                        constricted |= l[1..].iter().any(|x| *x < 0.99);
                    }
                    assert!(constricted, "{tag}: λ constricts nothing: {v}");
                }
                None => assert!(!hgc, "{tag}: no λ in {v}"),
            }
        }
        assert_eq!(lines[0]["lambda"].get("self_attn.q_proj.lora_A").is_some(), tag.starts_with("lora"));
    }
}

/// Every constriction option at its neutral value is plain fine-tuning, bit for bit: the same
/// logged losses and the same checkpoint bytes.
#[test]
fn neutral_constriction_options_are_plain_finetuning() {
    let Some(stories) = stories() else { return };
    let t = TempDir::new("neutral");
    let Some((data, _)) = golden_jsonl("stories260k", &t) else { return };
    let model = stories.to_str().unwrap();
    let flags = GOLDEN_FLAGS.replace("--steps 10", "--steps 4 --save-every 2");
    let neutral = format!(
        "{flags} --hgc-alpha 0 --hgc-mu 0 --hgc-depth-slope 3 --hgc-normalized true --hgc-on update \
         --align-beta 0 --cgfm-local 1 --cgfm-global 1"
    );
    let (plain, off) = (t.path("plain"), t.path("off"));
    succeeds(&finetune_args(model, &data, plain.to_str().unwrap(), &flags));
    succeeds(&finetune_args(model, &data, off.to_str().unwrap(), &neutral));
    assert_eq!(
        std::fs::read_to_string(plain.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(strip_speed)
            .collect::<Vec<_>>(),
        std::fs::read_to_string(off.join("log.jsonl")).unwrap().lines().map(strip_speed).collect::<Vec<_>>(),
    );
    for file in
        ["checkpoint-2/model.safetensors", "checkpoint-2/optimizer.safetensors", "final/model.safetensors"]
    {
        let same = std::fs::read(plain.join(file)).unwrap() == std::fs::read(off.join(file)).unwrap();
        assert!(same, "{file} differs");
    }
}

/// A log line without its timing.
fn strip_speed(line: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    v.as_object_mut().unwrap().remove("tokens_per_s");
    v.to_string()
}

/// The adaptive step size's reference norm (step 0's) is kept in checkpoints: a run stopped
/// after 2 steps and resumed takes the same steps as one run of 4.
#[test]
fn adaptive_step_size_resumes_with_its_reference() {
    let Some(stories) = stories() else { return };
    let t = TempDir::new("adaptive-resume");
    let Some((data, _)) = golden_jsonl("stories260k", &t) else { return };
    let model = stories.to_str().unwrap();
    let flags = |steps: usize| {
        GOLDEN_FLAGS.replace("--steps 10", &format!("--steps {steps} --save-every 2"))
            + " --cgfm-adaptive-lr --lr-min 5e-4 --lr-max 3e-3 --cgfm-local 0.5 --cgfm-global 2"
    };
    let (whole, parts) = (t.path("whole"), t.path("parts"));
    succeeds(&finetune_args(model, &data, whole.to_str().unwrap(), &flags(4)));
    succeeds(&finetune_args(model, &data, parts.to_str().unwrap(), &flags(2)));
    succeeds(&finetune_args(model, &data, parts.to_str().unwrap(), &(flags(4) + " --resume")));
    let read = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("log.jsonl")).unwrap().lines().map(strip_speed).collect()
    };
    let (a, b) = (read(&whole), read(&parts));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b[b.len() - 4..], "same steps, step sizes included");
    assert!(a[3].contains("\"lr\""));
}

/// `--dry-run` prints the plan and trains nothing; a run over the memory given is refused
/// before anything is allocated, naming what fits; packed weights train only LoRA, and LoRA
/// over them runs.
#[test]
fn finetune_plans_memory_and_refuses_what_does_not_fit() {
    let Some(stories) = stories() else { return };
    let t = TempDir::new("plan");
    let Some((data, _)) = golden_jsonl("stories260k", &t) else { return };
    let out = t.path("run");
    let (model, out_dir) = (stories.to_str().unwrap(), out.to_str().unwrap());
    let run = |flags: &'static str| finetune_args(model, &data, out_dir, flags);
    let plan = succeeds(&run("--batch 2 --seq-len 32 --lora-rank 2 --weights q8_0 --dry-run --memory-gb 1"));
    for needle in ["weights:", "adapters:", "optimizer:", "with --recompute", "1 GiB (--memory-gb)", "fits:"]
    {
        assert!(plan.contains(needle), "{needle}: {plan}");
    }
    assert!(!out.exists(), "a dry run writes nothing");
    fails(&run("--batch 2 --seq-len 32 --memory-gb 0.001"), &["--memory-gb", "what fits", "--recompute"]);
    assert!(!out.exists(), "refused before starting");
    fails(&run("--batch 2 --seq-len 32 --weights q8_0"), &["--weights q8_0", "--lora-rank"]);
    succeeds(&run("--batch 2 --seq-len 32 --steps 2 --lora-rank 2 --weights q4_0"));
    assert_eq!(logged_losses(&out).len(), 2);
}

/// `{"messages": [...]}` rows: step 0's loss is the base model's mean negative log-probability
/// of the assistant turns' tokens alone (from `keel score` of the rendered conversation, the
/// turns found in `keel template`'s ids), padding included or not.
#[test]
fn chat_rows_train_on_the_assistant_tokens_only() {
    let Some(model) = keel::testing::model("tiny-qwen2") else { return };
    let m = model.to_str().unwrap();
    let t = TempDir::new("chat");
    let messages = serde_json::json!([
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue, like the sea."},
        {"role": "user", "content": "And another?"},
        {"role": "assistant", "content": "Green."}
    ]);
    let render = |messages: &serde_json::Value, generation_prompt: bool| -> (String, Vec<u64>) {
        let file = t.path("messages.json");
        std::fs::write(&file, messages.to_string()).unwrap();
        let mut args = vec!["template", "--model", m, "--messages", file.to_str().unwrap(), "--json"];
        if !generation_prompt {
            args.push("--no-generation-prompt");
        }
        let out: serde_json::Value = serde_json::from_str(succeeds(&args).trim()).unwrap();
        let ids = out["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        (out["text"].as_str().unwrap().to_string(), ids)
    };
    let (text, ids) = render(&messages, false);
    // The assistant turn's opening: what a generation prompt adds to a conversation.
    let user = serde_json::json!([messages[0]]);
    let ((_, bare), (_, opened)) = (render(&user, false), render(&user, true));
    let opening = &opened[bare.len()..];
    let im_end = bare[bare.len() - 2];
    // Assistant tokens: after each opening, through the <|im_end|> that closes the turn.
    let mut assistant = vec![false; ids.len()];
    let mut i = 0;
    while i + opening.len() <= ids.len() {
        if ids[i..i + opening.len()] == *opening {
            let start = i + opening.len();
            let end = start + ids[start..].iter().position(|&x| x == im_end).unwrap();
            assistant[start..=end].iter_mut().for_each(|a| *a = true);
            i = end;
        }
        i += 1;
    }
    let n_assistant = assistant.iter().filter(|&&a| a).count();
    assert!(n_assistant > 4 && n_assistant < ids.len() / 2, "{n_assistant} of {}", ids.len());
    // The base model's log-probability of each next token.
    std::fs::write(t.path("text.txt"), &text).unwrap();
    let scored: serde_json::Value = serde_json::from_str(
        succeeds(&["score", "--model", m, "--text-file", t.path("text.txt").to_str().unwrap(), "--json"])
            .trim(),
    )
    .unwrap();
    let score_ids: Vec<u64> = scored["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(score_ids, ids, "score reads the rendered text as the same ids");
    let lp: Vec<f64> =
        scored["next_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let mean_nll = |keep: &dyn Fn(usize) -> bool| {
        let kept: Vec<f64> = (0..lp.len()).filter(|&t| keep(t + 1)).map(|t| -lp[t]).collect();
        kept.iter().sum::<f64>() / kept.len() as f64
    };
    let want = mean_nll(&|target| assistant[target]);
    let every_token = mean_nll(&|_| true);
    assert!((want - every_token).abs() > 0.05, "the check tells the two apart: {want} vs {every_token}");
    let data = t.path("chat.jsonl");
    std::fs::write(&data, format!("{}\n", serde_json::json!({"messages": messages}))).unwrap();
    for pad in [0, 9] {
        let out = t.path(&format!("run-{pad}"));
        let flags =
            format!("--batch 1 --seq-len {} --steps 1 --lr 1e-3 --shuffle false", ids.len() - 1 + pad);
        succeeds(&finetune_args(m, data.to_str().unwrap(), out.to_str().unwrap(), &flags));
        let loss = logged_losses(&out)[0].1;
        assert!((loss - want).abs() < 1e-4 * want.max(1.0), "padding {pad}: step 0's loss {loss} vs {want}");
    }
}

/// `--precision mixed` through the CLI: every log line carries its loss scale and the
/// checkpoint keeps it. A run resumed from a checkpoint whose scale was set to 2^40 skips the
/// steps whose gradients overflow f16 (each logged with `skipped` and the scale it used, which
/// halves after each), then trains at the scale that fits, and prints how many it skipped.
/// Resuming with the other precision, a precision Keel does not have, and HGC with mixed
/// precision are refused.
#[test]
fn mixed_precision_logs_its_loss_scale_and_skipped_steps() {
    let Some(stories) = stories() else { return };
    let t = TempDir::new("mixed");
    let Some((data, _)) = golden_jsonl("stories260k", &t) else { return };
    let (model, out) = (stories.to_str().unwrap(), t.path("run"));
    let flags = |steps: usize, precision: &str| {
        GOLDEN_FLAGS.replace("--steps 10", &format!("--steps {steps} --save-every 2 --precision {precision}"))
    };
    let args = |flags: &'static str| finetune_args(model, &data, out.to_str().unwrap(), flags);
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    succeeds(&args(leak(flags(2, "mixed"))));
    let state_file = out.join("checkpoint-2").join("trainer_state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state["precision"], "mixed");
    let kept = (state["loss_scale"].as_f64(), state["loss_scale_good_steps"].as_u64());
    assert_eq!(kept, (Some(65536.0), Some(2)));
    state["loss_scale"] = serde_json::json!(2f64.powi(40));
    std::fs::write(&state_file, state.to_string()).unwrap();

    fails(&args(leak(flags(40, "f32") + " --resume")), &["--precision mixed", "--precision f32"]);
    fails(&args(leak(flags(2, "f16"))), &["--precision", "f16"]);
    let hgc = t.path("hgc");
    let with_hgc = flags(2, "mixed") + " --hgc-alpha 0.5";
    fails(&finetune_args(model, &data, hgc.to_str().unwrap(), &with_hgc), &["--precision mixed", "HGC"]);

    let printed = succeeds(&args(leak(flags(40, "mixed") + " --resume")));
    let lines = keel::train::log::read_log(&out.join("log.jsonl")).unwrap();
    let lines: Vec<_> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    assert_eq!(lines.len(), 40);
    let scales: Vec<f64> = lines.iter().map(|l| l["loss_scale"].as_f64().unwrap()).collect();
    let skipped: Vec<bool> =
        lines.iter().map(|l| l.get("skipped") == Some(&serde_json::json!(true))).collect();
    assert_eq!(&scales[..3], &[65536.0, 65536.0, 2f64.powi(40)]);
    assert!(!skipped[0] && !skipped[1] && skipped[2], "{:?}", &lines[..3]);
    for s in 2..39 {
        let next = if skipped[s] { scales[s] / 2.0 } else { scales[s] };
        assert_eq!(scales[s + 1], next, "step {s}: {}", lines[s]);
    }
    let count = skipped.iter().filter(|&&s| s).count();
    assert!(!skipped[39], "the scale never came down to what f16 holds");
    assert!(lines[39]["grad_norm"].as_f64().is_some_and(f64::is_finite));
    eprintln!("skipped {count} steps from 2^40 down to {}", scales[39]);
    assert!(printed.contains(&format!("skipped:     {count} steps")), "{printed}");
}

/// `--precision mixed` follows the f32 run: stories260k on TinyStories text, 20 steps of
/// 4 × 32 tokens, every step's loss within 1 % of the f32 run's.
#[test]
fn mixed_precision_loss_curve_follows_f32() {
    let Some(stories) = stories() else { return };
    let Some(data) = fixture("corpora/tinystories_train_head.txt") else { return };
    let t = TempDir::new("mixed-curve");
    let (model, data) = (stories.to_str().unwrap(), data.to_str().unwrap());
    let curve = |precision: &str| {
        let out = t.path(precision);
        let flags = format!(
            "--steps 20 --batch 4 --seq-len 32 --lr 3e-3 --warmup 2 --schedule cosine --seed 5 \
             --save-every 0 --precision {precision}"
        );
        succeeds(&finetune_args(model, data, out.to_str().unwrap(), &flags));
        logged_losses(&out)
    };
    let (f32_run, mixed) = (curve("f32"), curve("mixed"));
    assert_eq!((f32_run.len(), mixed.len()), (20, 20));
    let gaps: Vec<f64> = f32_run.iter().zip(&mixed).map(|((_, a), (_, b))| (b - a).abs() / a.abs()).collect();
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    eprintln!("losses {:.4} -> {:.4} (f32), largest relative gap {worst:.2e}", f32_run[0].1, f32_run[19].1);
    assert!(worst <= 0.01, "mixed precision strays from f32: {mixed:?} vs {f32_run:?}");
    assert!(worst > 0.0, "mixed precision computed exactly what f32 did: the operands were not rounded");
}
