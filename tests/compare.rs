//! `keel compare` and `keel sweep` end to end on stories260k with a tiny budget: the report's
//! structure, its numbers against tokens.csv, report.html rendered by headless Chromium, an
//! interrupted run, and every kind of bad input (exit 2, one `error:` line).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Splits one CSV line, honouring quoted fields with doubled quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// CSV records (a quoted field may hold a line break).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(line);
        if pending.matches('"').count().is_multiple_of(2) {
            records.push(csv_fields(&pending));
            pending.clear();
        }
    }
    records
}

/// A screenshot of `html` by headless Chromium, as PNG bytes; None (with a visible note)
/// when Chromium is not installed.
fn screenshot(html: &Path, tmp: &TempDir, name: &str) -> Option<Vec<u8>> {
    let chromium = keel::testing::chromium()?;
    let png = tmp.path(&format!("{name}.png"));
    let profile = tmp.path(&format!("{name}-profile"));
    let status = Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-gpu-sandbox",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,2000",
            &format!("file://{}", html.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start chromium");
    assert!(status.success(), "chromium failed on {}", html.display());
    Some(std::fs::read(&png).expect("chromium wrote no screenshot"))
}

#[test]
fn compare_report_agrees_with_tokens_csv_and_renders() {
    let Some(model) = stories() else { return };
    let t = TempDir::new("compare");
    std::fs::write(t.path("prompts.txt"), "Once upon a time\n\nTom said \"hi\", and\n").unwrap();
    let out = t.path("report");
    let run = keel(&[
        "compare",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        t.path("prompts.txt").to_str().unwrap(),
        "--tokens",
        "130",
        "--seeds",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(!run.stderr.contains('\r'), "progress bars stay off a stderr that is not a terminal");
    let stdout = run.stdout;
    assert!(stdout.contains("plain_perplexity") && stdout.contains("repeated_4gram_rate"), "{stdout}");
    let report = read_json(&out.join("report.json"));
    let study = &report["study"];
    assert_eq!((study["tokens"].as_u64(), study["seeds"].as_u64()), (Some(130), Some(2)));
    assert_eq!(study["prompts"].as_array().unwrap().len(), 2, "the blank line is skipped");
    assert_eq!(study["reduced"], Value::Bool(false), "every budget flag was given");
    assert_eq!(study["top_p"].as_f64(), Some(0.95), "the f32 setting as its decimal");
    assert_eq!(study["lcm"]["sink"].as_u64(), Some(1), "the default setting: {}", study["lcm"]);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2 * 2 * 2);
    let metrics = report["metrics"].as_array().unwrap();
    let summary = report["summary"].as_array().unwrap();
    assert_eq!(summary.len(), metrics.len());
    for s in summary {
        // 130 tokens make two windows of 64, so every metric is defined (the latent ones
        // only where the runs were traced).
        let traced = !runs[0]["latent"].as_array().unwrap().is_empty();
        let metric = s["metric"].as_str().unwrap();
        if metric.starts_with("judge_") {
            // The sentence judge runs only with --judge: without it no pair is measured.
            assert_eq!(s["n"].as_u64(), Some(0), "{s}");
        } else if traced || !metric.starts_with("latent_") {
            assert_eq!(s["n"].as_u64(), Some(4), "{s}");
        }
        for key in ["base_mean", "base_sd", "arm_mean", "arm_sd", "diff", "ci_low", "ci_high"] {
            assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
        }
    }
    // tokens.csv: exact header, and per run the tokens and mean log-prob of report.json.
    let csv = std::fs::read_to_string(out.join("tokens.csv")).unwrap();
    let records = csv_records(&csv);
    assert_eq!(
        records[0].join(","),
        "arm,prompt,seed,position,token_id,token_text,logprob,entropy,top1_prob"
    );
    let mut by_run: BTreeMap<(String, u64, u64), Vec<f64>> = BTreeMap::new();
    for r in &records[1..] {
        assert_eq!(r.len(), 9, "{r:?}");
        let key = (r[0].clone(), r[1].parse().unwrap(), r[2].parse().unwrap());
        let lp = by_run.entry(key).or_default();
        assert_eq!(r[3].parse::<usize>().unwrap(), lp.len(), "positions count from 0: {r:?}");
        let top1: f64 = r[8].parse().unwrap();
        assert!(top1 > 0.0 && top1 <= 1.0, "{r:?}");
        lp.push(r[6].parse().unwrap());
    }
    assert_eq!(by_run.len(), runs.len());
    let mut texts_seen = 0;
    for run in runs {
        let key = (
            run["arm"].as_str().unwrap().to_string(),
            run["prompt"].as_u64().unwrap(),
            run["seed"].as_u64().unwrap(),
        );
        let lp = &by_run[&key];
        assert_eq!(lp.len() as u64, run["tokens"].as_u64().unwrap());
        assert!(lp.len() <= 130);
        let mean = lp.iter().sum::<f64>() / lp.len() as f64;
        let reported = run["mean_logprob"].as_f64().unwrap();
        assert!((mean - reported).abs() < 1e-5, "{key:?}: csv {mean} vs report {reported}");
        let ppl = run["metrics"]["perplexity"].as_f64().unwrap();
        assert!((ppl - (-reported).exp()).abs() < 1e-9 * ppl);
        if key.0 == "baseline" {
            // The baseline's own scores are the plain model's.
            assert_eq!(run["plain_mean_logprob"], run["mean_logprob"]);
        } else {
            // The plain model scored the modulated text: close to its own scores, not equal.
            let plain = run["plain_mean_logprob"].as_f64().unwrap();
            assert!(plain.is_finite() && plain != reported, "{key:?}: {plain} vs {reported}");
        }
        texts_seen += !run["text"].as_str().unwrap().is_empty() as usize;
    }
    assert_eq!(texts_seen, runs.len());
    // The summary's baseline mean of plain perplexity is the mean over the baseline runs.
    let base_ppl: Vec<f64> = runs
        .iter()
        .filter(|r| r["arm"] == "baseline")
        .map(|r| r["metrics"]["plain_perplexity"].as_f64().unwrap())
        .collect();
    let plain = summary.iter().find(|s| s["metric"] == "plain_perplexity").unwrap();
    let expected = base_ppl.iter().sum::<f64>() / base_ppl.len() as f64;
    assert!((plain["base_mean"].as_f64().unwrap() - expected).abs() < 1e-9);
    assert!(plain["ci_low"].as_f64().unwrap() <= plain["diff"].as_f64().unwrap());
    // Each metric's verdict follows its better direction and its interval; the conclusion
    // names every better and worse one; the report names the Keel that wrote it.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let conclusion = report["conclusion"].as_str().unwrap();
    for (s, m) in summary.iter().zip(metrics) {
        assert_eq!(s["better"], m["better"]);
        let (lo, hi, diff) = (s["ci_low"].as_f64(), s["ci_high"].as_f64(), s["diff"].as_f64().unwrap_or(0.0));
        let excludes_zero = lo.is_some_and(|l| l > 0.0) || hi.is_some_and(|h| h < 0.0);
        let want = match (excludes_zero, s["better"].as_str().unwrap(), diff > 0.0) {
            (false, ..) => Value::Null,
            (true, "neither", _) => json!("changed"),
            (true, "lower", false) | (true, "higher", true) => json!("better"),
            (true, ..) => json!("worse"),
        };
        assert_eq!(s["verdict"], want, "{s}");
        let metric = s["metric"].as_str().unwrap();
        if want == "better" || want == "worse" {
            assert!(conclusion.contains(metric), "{conclusion} lacks {metric}");
            assert!(html.contains(&format!("<td class=\"sig {}\">", want.as_str().unwrap())), "{metric}");
        }
    }
    assert!(html.contains("<th>better</th>") && html.contains("Conclusion:"));
    assert!(stdout.contains(conclusion), "{stdout}");
    let commit = report["keel"]["commit"].as_str().unwrap();
    assert_eq!(report["keel"]["version"], env!("CARGO_PKG_VERSION"));
    if Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists() {
        assert!(commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()), "{commit}");
    }
    assert!(html.contains(&format!("Keel {}, commit {commit}", env!("CARGO_PKG_VERSION"))));
    // report.html holds the plots, and renders to a page that is not blank.
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(html.matches("<polyline").count() >= 4, "a mean line per arm in each per-position plot");
    assert!(html.matches("<polygon").count() >= 4, "a band per arm in each per-position plot");
    assert!(!html.contains("src=") && !html.contains("<link") && !html.contains("url("), "nothing fetched");
    std::fs::write(t.path("blank.html"), "<!DOCTYPE html><html><body></body></html>").unwrap();
    if let (Some(page), Some(blank)) =
        (screenshot(&out.join("report.html"), &t, "report"), screenshot(&t.path("blank.html"), &t, "blank"))
    {
        assert_eq!(&page[1..4], b"PNG");
        eprintln!("screenshot: report {} bytes, blank page {} bytes", page.len(), blank.len());
        assert!(page.len() > 5 * blank.len(), "the report renders like a blank page");
    }
    // Nothing staged is left beside the report.
    let left: Vec<_> = std::fs::read_dir(&t.0).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with('.')), "{left:?}");
}

#[test]
fn sweep_reports_every_setting() {
    let Some(model) = stories() else { return };
    let t = TempDir::new("sweep");
    std::fs::write(t.path("grid.json"), r#"{"gamma": [0.05, 0.3], "sink": [1]}"#).unwrap();
    std::fs::write(
        t.path("prompts.jsonl"),
        "{\"prompt\": \"Once upon a time\"}\n{\"prompt\": \"Lily saw\"}\n",
    )
    .unwrap();
    let out = t.path("sweep");
    let stdout = succeeds(&[
        "sweep",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        t.path("prompts.jsonl").to_str().unwrap(),
        "--tokens",
        "16",
        "--seeds",
        "2",
        "--grid",
        t.path("grid.json").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout.contains("2 settings") && stdout.contains("pareto"), "{stdout}");
    let report = read_json(&out.join("report.json"));
    let settings = report["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 2);
    let gammas: Vec<f64> = settings.iter().map(|s| s["arm"]["lcm"]["gamma"].as_f64().unwrap()).collect();
    assert_eq!(gammas, vec![0.05, 0.3]);
    for s in settings {
        assert!(s["pareto"].is_boolean());
        let plain = metric(s, "plain_perplexity");
        assert_eq!(plain["n"].as_u64(), Some(4));
        assert_eq!(plain["base_mean"].as_f64(), report["baseline_plain_perplexity"].as_f64());
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // One front per judged coherence metric that was measured: entropy variance and
    // repetition (16 tokens are too few for two fluctuation windows; no judge ran).
    assert_eq!(html.matches("<svg").count(), 2);
    assert!(html.contains("Pareto front"));
}

/// The summary of `metric` in a report setting.
fn metric<'a>(setting: &'a Value, metric: &str) -> &'a Value {
    setting["summary"].as_array().unwrap().iter().find(|m| m["metric"] == metric).unwrap()
}

#[test]
fn arms_of_every_type_are_paired_with_the_baseline() {
    let Some(model) = stories() else { return };
    let t = TempDir::new("arms");
    std::fs::write(t.path("prompts.txt"), "Once upon a time\nLily saw a\n").unwrap();
    // "copy" is the baseline again, listed first: the reference is still the arm named
    // baseline, and a copy of it, paired on the same prompts and random streams, changes nothing.
    let arms = r#"[
        {"name": "copy", "temperature": 0.9},
        {"name": "baseline"},
        {"name": "lcm", "lcm": {"gamma": 0.3, "sink": 1}},
        {"name": "min-p", "min_p": 0.1},
        {"name": "openai", "presence_penalty": 0.6, "frequency_penalty": 0.4},
        {"name": "repetition", "repetition_penalty": 1.3, "top_k": 40},
        {"name": "ngram", "no_repeat_ngram_size": 3},
        {"name": "dry", "dry": {"multiplier": 0.8, "base": 1.75, "allowed_length": 2, "penalty_last_n": 64}},
        {"name": "mix", "lcm": {"gamma": 0.05}, "min_p": 0.05, "top_p": 0.8, "dry": {"multiplier": 0.5}}
    ]"#;
    std::fs::write(t.path("arms.json"), arms).unwrap();
    let out = t.path("report");
    let stdout = succeeds(&[
        "compare",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        t.path("prompts.txt").to_str().unwrap(),
        "--tokens",
        "40",
        "--seeds",
        "2",
        "--temperature",
        "0.9",
        "--arms",
        t.path("arms.json").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout.contains("9 arms, reference \"baseline\"") && stdout.contains("helps"), "{stdout}");
    assert!(stdout.contains("population sd"), "{stdout}");
    let report = read_json(&out.join("report.json"));
    let settings = report["settings"].as_array().unwrap();
    let names: Vec<&str> = settings.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["copy", "lcm", "min-p", "openai", "repetition", "ngram", "dry", "mix"]);
    for s in settings {
        assert!(s["pareto"].is_boolean() && s["helps"].is_boolean());
        let plain = metric(s, "plain_perplexity");
        assert_eq!(plain["n"].as_u64(), Some(4), "{}", s["name"]);
        assert_eq!(plain["base_mean"].as_f64(), report["baseline_plain_perplexity"].as_f64());
        assert!(plain["arm_mean"].as_f64().unwrap().is_finite());
    }
    // The copy: every change exactly 0, so it neither helps nor is on a front.
    let copy = &settings[0];
    for m in copy["summary"].as_array().unwrap() {
        if m["n"].as_u64() > Some(0) {
            assert_eq!(m["diff"].as_f64(), Some(0.0), "copy, {}", m["metric"]);
        }
    }
    assert_eq!((copy["helps"].as_bool(), copy["pareto"].as_bool()), (Some(false), Some(false)));
    // The n-gram ban leaves no repeated 3-gram, so no repeated 4-gram either.
    assert_eq!(metric(&settings[5], "repeated_4gram_rate")["arm_mean"].as_f64(), Some(0.0));
    // Each arm as written, its name and sampler keys included.
    assert_eq!(settings[6]["arm"]["dry"]["penalty_last_n"].as_u64(), Some(64));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Entropy variance and repetition: 40 tokens make one fluctuation window, no judge ran.
    assert_eq!(html.matches("<svg").count(), 2);
    for name in names {
        assert!(html.contains(&format!("<td>{name}</td>")), "{name}");
    }
}

#[test]
fn an_interrupted_compare_leaves_the_old_report() {
    let Some(model) = stories() else { return };
    let t = TempDir::new("compare-kill");
    let out = t.path("report");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.json"), "old").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["compare", "--model", model.to_str().unwrap(), "--tokens", "200", "--seeds", "3"])
        .args(["--out", out.to_str().unwrap()])
        .env("WGPU_BACKEND", "vulkan")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(child.try_wait().unwrap().is_none(), "compare ended before it could be interrupted");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read_to_string(out.join("report.json")).unwrap(), "old");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn a_judged_compare_measures_drift_as_the_embeddings_say() {
    let Some(model) = stories() else { return };
    let judge = match keel::pull::resolve_judge_model(None) {
        Ok(path) => path,
        Err(e) if !keel::testing::fixtures_required() => {
            return keel::testing::skip(&format!("the judge model is unavailable: {e:#}"));
        }
        Err(e) => panic!("{e:#}"),
    };
    let t = TempDir::new("judged");
    let prompt = "Once upon a time";
    std::fs::write(t.path("prompts.txt"), format!("{prompt}\n")).unwrap();
    let out = t.path("report");
    let (model, prompts, out_s) = (model.to_str().unwrap(), t.path("prompts.txt"), out.to_str().unwrap());
    let args = ["compare", "--model", model, "--prompts", prompts.to_str().unwrap(), "--tokens", "128"];
    succeeds(
        &[&args[..], &["--seeds", "2", "--judge", "--embed-model", judge.to_str().unwrap(), "--out", out_s]]
            .concat(),
    );
    let report = read_json(&out.join("report.json"));
    let csv = std::fs::read_to_string(out.join("tokens.csv")).unwrap();
    let rows = csv_records(&csv);
    let mut checked = 0;
    for run in report["runs"].as_array().unwrap() {
        // The run's token pieces, cut as the judge cuts them: 64 tokens a segment, a tail
        // shorter than 32 dropped.
        let pieces: Vec<&str> = rows[1..]
            .iter()
            .filter(|r| {
                r[0] == run["arm"].as_str().unwrap() && r[2].parse::<u64>().ok() == run["seed"].as_u64()
            })
            .map(|r| r[5].as_str())
            .collect();
        let mut segments: Vec<String> = pieces.chunks(64).map(|c| c.concat()).collect();
        if segments.len() > 1 && !pieces.len().is_multiple_of(64) && pieces.len() % 64 < 32 {
            segments.pop();
        }
        let metrics = &run["metrics"];
        if segments.len() < 2 {
            assert!(metrics["judge_topic_drift"].is_null());
            continue;
        }
        // Their embeddings by `keel embed` (itself checked against transformers, tests/embed.rs).
        let texts: Vec<String> =
            std::iter::once(prompt.to_string()).chain(segments).map(|s| format!("--text={s}")).collect();
        let mut embed_args = vec!["embed", "--embed-model", judge.to_str().unwrap()];
        embed_args.extend(texts.iter().map(String::as_str));
        let e: Value = serde_json::from_str(succeeds(&embed_args).trim()).unwrap();
        let v: Vec<Vec<f64>> = e["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
            .collect();
        let distance = |a: &[f64], b: &[f64]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |u: &[f64]| u.iter().map(|x| x * x).sum::<f64>().sqrt();
            1.0 - dot / (norm(a) * norm(b))
        };
        let later = 2..v.len();
        let n = later.len() as f64;
        let want_prompt: f64 = later.clone().map(|i| distance(&v[i], &v[0])).sum::<f64>() / n;
        let want_topic: f64 = later.clone().map(|i| distance(&v[i], &v[1])).sum::<f64>() / n;
        let want_consecutive: f64 = later.map(|i| distance(&v[i], &v[i - 1])).sum::<f64>() / n;
        for (metric, want) in [
            ("judge_prompt_drift", want_prompt),
            ("judge_topic_drift", want_topic),
            ("judge_consecutive_drift", want_consecutive),
        ] {
            let got = metrics[metric].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-4,
                "{} seed {}: {metric} {got} against {want}",
                run["arm"],
                run["seed"]
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} runs had two segments");
    // Two pairs: every judge metric is paired and has its interval.
    let summary = report["summary"].as_array().unwrap();
    let topic = summary.iter().find(|m| m["metric"] == "judge_topic_drift").unwrap();
    assert_eq!(topic["n"].as_u64(), Some(2), "{topic}");
}

/// Everything a report says except how long it took.
fn without_seconds(mut report: Value) -> Value {
    report["study"]["seconds"] = json!(null);
    report
}

#[test]
fn a_killed_arms_study_resumes_with_the_same_numbers() {
    let Some(model) = stories() else { return };
    let t = TempDir::new("arms-resume");
    std::fs::write(t.path("prompts.txt"), "Once upon a time\nLily saw a\n").unwrap();
    let arms = r#"[{"name": "baseline"}, {"name": "lcm", "lcm": {"gamma": 0.3, "sink": 1}},
        {"name": "repetition", "repetition_penalty": 1.3}, {"name": "ngram", "no_repeat_ngram_size": 2}]"#;
    std::fs::write(t.path("arms.json"), arms).unwrap();
    let (prompts, arms) = (t.path("prompts.txt"), t.path("arms.json"));
    let args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> =
            ["compare", "--model", model.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(
            ["--tokens", "60", "--seeds", "2", "--arms", arms.to_str().unwrap(), "--out"].map(String::from),
        );
        a.push(out.to_str().unwrap().into());
        a
    };
    let run_to_end = |out: &Path| {
        let a = args(out);
        keel(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // The uninterrupted run.
    let whole = t.path("whole");
    let run = run_to_end(&whole);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Where stderr is not a terminal, each finished stage is a line.
    assert!(run.stderr.contains("arm 4/4 ngram: generating: 60 done in"), "{}", run.stderr);
    assert!(!t.path("whole.partial").exists(), "the checkpoints are removed with the report written");
    // The same study killed once its first arm is kept, then run again.
    let out = t.path("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args(&out))
        .env("WGPU_BACKEND", "vulkan")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = t.path("killed.partial").join("arm-0.json");
    let t0 = std::time::Instant::now();
    while !first.exists() {
        assert!(child.try_wait().unwrap().is_none(), "compare ended before its first arm was kept");
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed study writes no report");
    let run = run_to_end(&out);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("resuming: the arms a killed run finished are read from"), "{}", run.stdout);
    assert!(run.stderr.contains("arm 1/4 baseline: resumed"), "{}", run.stderr);
    assert!(!run.stderr.contains("arm 1/4 baseline: generating"), "{}", run.stderr);
    assert_eq!(
        without_seconds(read_json(&out.join("report.json"))),
        without_seconds(read_json(&whole.join("report.json")))
    );
    assert!(!t.path("killed.partial").exists());
}

#[test]
fn bad_input_is_refused() {
    let Some(model) = stories() else { return };
    let m = model.to_str().unwrap();
    let t = TempDir::new("compare-bad");
    let file = |name: &str, text: &str| {
        std::fs::write(t.path(name), text).unwrap();
        t.path(name).to_str().unwrap().to_string()
    };
    let (empty, blank) = (file("empty.txt", ""), file("blank.txt", "\n  \n"));
    let long = file("long.txt", &"once upon a time ".repeat(200));
    let jsonl = file("p.jsonl", "{\"text\": \"x\"}\n");
    let not_a_folder = file("out.txt", "x");
    let missing = t.path("missing.txt").to_str().unwrap().to_string();
    let compare = |extra: &[&str], needles: &[&str]| {
        let mut args = vec!["compare", "--model", m, "--tokens", "8", "--seeds", "1"];
        args.extend(extra);
        fails(&args, needles);
    };
    compare(&["--prompts", &missing], &["--prompts", "missing.txt", "cannot read"]);
    compare(&["--prompts", &empty], &["--prompts", "holds no prompts"]);
    compare(&["--prompts", &blank], &["holds no prompts"]);
    compare(&["--prompts", &long], &["long.txt", "prompt 0", "context is 512"]);
    compare(&["--prompts", &jsonl], &["p.jsonl", "line 1", "\"prompt\""]);
    fails(&["compare", "--model", m, "--seeds", "0"], &["--seeds", "at least 1"]);
    compare(&["--out", &not_a_folder], &["--out", "not a folder"]);
    compare(&["--top-p", "0"], &["top"]);
    compare(&["--lcm-gamma", "2"], &["--lcm-gamma"]);
    fails(&["compare", "--model", m, "--tokens", "600"], &["--tokens 600", "context of 512"]);
    let arms = |text: &str, needles: &[&str]| {
        let path = file("arms.json", text);
        compare(&["--arms", &path], &[&["--arms", "arms.json"], needles].concat());
    };
    arms("[", &["not valid JSON"]);
    arms(r#"{"name": "baseline"}"#, &["a JSON list of arms"]);
    arms(
        r#"[{"name": "baseline"}, {"name": "x", "min_p": "high"}]"#,
        &["arm 1 (x)", "'min_p' must be a number"],
    );
    arms(
        r#"[{"name": "baseline"}, {"name": "x", "dry": {"base": 0.5}}]"#,
        &["arm 1 (x)", "--dry-base must be"],
    );
    arms(
        r#"[{"name": "baseline"}, {"name": "x", "lcm": {"layers": [99]}}]"#,
        &["arm 1 (x)", "'lcm'", "out of range"],
    );
    arms(r#"[{"name": "baseline"}, {"name": "x", "top_q": 1}]"#, &["unknown key 'top_q'"]);
    compare(&["--arms", &missing], &["--arms", "missing.txt", "cannot read"]);
    let grid = |text: &str| file("grid.json", text);
    let sweep = |grid: &str, needles: &[&str]| {
        fails(&["sweep", "--model", m, "--tokens", "8", "--seeds", "1", "--grid", grid], needles)
    };
    sweep(&missing, &["--grid", "cannot read"]);
    sweep(&grid("{"), &["--grid", "not valid JSON"]);
    sweep(&grid(r#"{"gamma": 0.1}"#), &["'gamma' must be a non-empty list"]);
    sweep(&grid(r#"{"gamma": [0.1], "colour": [1]}"#), &["unknown LCM key 'colour'"]);
    sweep(&grid(r#"{"layers": [[0, 99]]}"#), &["--lcm-layers", "out of range"]);
}

#[test]
fn analyze_reports_every_layer_and_scale() {
    let Some(model) = stories() else { return };
    let t = TempDir::new("analyze");
    let text = "Once upon a time, there was a little girl named Lily. She loved to play outside. \
                One day, she saw a big dog in the park. The dog was friendly and wagged its tail. \
                Lily and the dog played all day. They were happy.";
    std::fs::write(t.path("text.txt"), text).unwrap();
    let out = t.path("analysis");
    let m = model.to_str().unwrap();
    let file = t.path("text.txt");
    let args = ["analyze", "--model", m, "--text-file", file.to_str().unwrap(), "--window", "8"];
    let printed: Value =
        serde_json::from_str(&succeeds(&[&args[..], &["--json", "--out", out.to_str().unwrap()]].concat()))
            .unwrap();
    assert_eq!(printed, read_json(&out.join("analysis.json")));
    assert_eq!(printed["window"].as_u64(), Some(8));
    assert_eq!(printed["sentences"].as_u64(), Some(6), "six sentences end with a full stop");
    let layers = printed["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 5, "stories260k has 5 blocks");
    for (l, layer) in layers.iter().enumerate() {
        let (msma, latent) = (&layer["msma"], &layer["latent"]);
        for key in ["local_successive_cosine", "intermediate_successive_cosine", "global_successive_cosine"] {
            let c = msma[key].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&c), "layer {l} {key} {c}");
        }
        // Means over more tokens move less from one position to the next.
        assert!(msma["global_successive_cosine"].as_f64() > msma["local_successive_cosine"].as_f64());
        assert!(msma["kl_local_intermediate"].as_f64().unwrap() > 0.0);
        assert_eq!(latent["projection_error"].is_null(), l == 0, "layer {l}: {latent}");
        assert!(latent["coherence"].as_f64().unwrap().abs() <= 1.0);
    }
    let table = succeeds(&args);
    assert_eq!(table.lines().count(), 1 + 5);
    let html = std::fs::read_to_string(out.join("analysis.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 1);
    fails(&[&args[..5], &["--window", "0"]].concat(), &["--window", "at least 1"]);
    fails(
        &["analyze", "--model", m, "--text-file", "missing.txt"],
        &["--text-file missing.txt", "cannot read"],
    );
    std::fs::write(t.path("long.txt"), "once upon a time ".repeat(200)).unwrap();
    fails(
        &["analyze", "--model", m, "--text-file", t.path("long.txt").to_str().unwrap()],
        &["long.txt", "context of 512"],
    );
}

#[test]
fn a_cpu_adapter_runs_the_reduced_study_and_says_so() {
    let Some(model) = stories() else { return };
    let t = TempDir::new("compare-reduced");
    let out = t.path("report");
    let stdout = succeeds(&[
        "compare",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    let report = read_json(&out.join("report.json"));
    let study = &report["study"];
    if !study["adapter"].as_str().unwrap().ends_with("(Cpu)") {
        eprintln!("SKIPPED: not a CPU adapter ({})", study["adapter"]);
        return;
    }
    assert!(stdout.contains("reduced study"), "{stdout}");
    assert_eq!(study["reduced"], Value::Bool(true));
    // The reduced defaults: the first 8 default prompts, 1 seed (the tokens were given).
    assert_eq!((study["prompts"].as_array().unwrap().len(), study["seeds"].as_u64()), (8, Some(1)));
    assert!(study["prompts"][0].as_str().unwrap().starts_with("Once upon a time"));
    assert_eq!(report["runs"].as_array().unwrap().len(), 2 * 8);
    assert!(std::fs::read_to_string(out.join("report.html")).unwrap().contains("Reduced study"));
}

/// `--chat`: each prompt goes through the model's chat template, so the baseline's greedy
/// tokens are `generate --chat`'s (which start from the templated ids), and without it those of
/// the raw prompt.
#[test]
fn chat_prompts_go_through_the_template() {
    let Some(model) = keel::testing::model("tiny-qwen2") else { return };
    let m = model.to_str().unwrap();
    let t = TempDir::new("compare-chat");
    let prompts = t.path("prompts.txt");
    std::fs::write(&prompts, "Name a colour.\n").unwrap();
    let ids = |v: &Value| -> Vec<u64> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect() };
    let baseline = |chat: bool| -> Vec<u64> {
        let out = t.path(if chat { "chat" } else { "plain" });
        let mut args = vec!["compare", "--model", m, "--prompts", prompts.to_str().unwrap(), "--tokens", "6"];
        args.extend(["--seeds", "1", "--temperature", "0", "--out", out.to_str().unwrap()]);
        if chat {
            args.push("--chat");
        }
        succeeds(&args);
        let csv = std::fs::read_to_string(out.join("tokens.csv")).unwrap();
        csv_records(&csv).iter().filter(|r| r[0] == "baseline").map(|r| r[4].parse().unwrap()).collect()
    };
    let generate = |chat: bool| -> Value {
        let mut args = vec!["generate", "--model", m, "--prompt", "Name a colour.", "--max-tokens", "6"];
        args.extend(["--temperature", "0", "--json"]);
        if chat {
            args.push("--chat");
        }
        serde_json::from_str(succeeds(&args).trim()).unwrap()
    };
    let (chat, plain) = (generate(true), generate(false));
    assert_ne!(chat["prompt_ids"], plain["prompt_ids"], "the template changes the prompt");
    assert_eq!(baseline(true), ids(&chat["ids"]));
    assert_eq!(baseline(false), ids(&plain["ids"]));
    fails(
        &["compare", "--model", m, "--chat-template", "t.jinja", "--out", t.path("x").to_str().unwrap()],
        &["--chat-template t.jinja", "--chat"],
    );
}
