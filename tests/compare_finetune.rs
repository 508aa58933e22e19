//! `keel compare-finetune` end to end on stories260k with a tiny budget: the report's
//! structure, each arm's log.jsonl against report.json, and bad input (exit 2, one line).

mod common;

use common::*;
use serde_json::Value;

const DATA: &str = "data/milton_paradise_lost.txt";

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn compare_finetune_report_matches_the_logs() {
    let Some(model) = stories() else { return };
    let tmp = TempDir::new("cmp-ft");
    let out = tmp.path("report");
    let stdout = succeeds(&[
        "compare-finetune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        DATA,
        "--steps",
        "3",
        "--batch",
        "2",
        "--seq-len",
        "32",
        "--seeds",
        "2",
        "--val-fraction",
        "0.005",
        "--hgc-alpha",
        "1",
        "--hgc-mu",
        "0.2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout.contains("final_loss") && stdout.contains("report.html"), "{stdout}");
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["constricted", "plain", "report.html", "report.json"]);
    // Nothing staged is left beside the report.
    let beside: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().collect();
    assert_eq!(beside.len(), 1);
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["study"]["steps"], 3);
    assert_eq!(report["study"]["seeds"], 2);
    assert!(report["target"].as_str().unwrap().contains("plain arm's final training loss"));
    let metrics: Vec<&str> =
        report["summary"].as_array().unwrap().iter().map(|m| m["metric"].as_str().unwrap()).collect();
    assert_eq!(metrics, ["final_loss", "val_ppl", "steps_to_target", "grad_norm_cv", "drift_cosine"]);
    for m in report["summary"].as_array().unwrap() {
        assert!(m["paired"]["n"].as_u64().unwrap() <= 2, "{m}");
    }
    let mut plain_final = Vec::new();
    for arm in ["plain", "constricted"] {
        let runs = report["arms"][arm]["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        let log: Vec<Value> = std::fs::read_to_string(out.join(arm).join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for (seed, run) in runs.iter().enumerate() {
            assert_eq!(run["seed"], seed as u64);
            let logged: Vec<f64> = log
                .iter()
                .filter(|v| v["seed"] == seed as u64 && v.get("loss").is_some())
                .map(|v| v["loss"].as_f64().unwrap())
                .collect();
            let reported: Vec<f64> =
                run["losses"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(logged.len(), 3, "{arm} seed {seed}");
            assert_eq!(logged, reported, "{arm} seed {seed}");
            assert_eq!(run["final_loss"].as_f64().unwrap(), reported[2]);
            let val = log.iter().find(|v| v["seed"] == seed as u64 && v.get("val_loss").is_some()).unwrap();
            assert_eq!(run["val_loss"], val["val_loss"]);
            assert!(
                (run["val_ppl"].as_f64().unwrap() - val["val_loss"].as_f64().unwrap().exp()).abs() < 1e-9
            );
            assert_eq!(run["grad_norm_cv"].as_array().unwrap().len(), 5);
            let drift = run["drift_cosine"].as_array().unwrap();
            assert_eq!(drift.len(), 5);
            assert!(drift.iter().all(|c| (0.0..=1.0 + 1e-9).contains(&c.as_f64().unwrap())), "{drift:?}");
            if arm == "plain" {
                plain_final.push(reported[2]);
                // The plain arm reaches its own final loss by the last step at the latest.
                assert!(run["steps_to_target"].as_u64().unwrap() <= 3);
            }
        }
    }
    // The same data order: both arms' first step sees the same batch from the same weights.
    for seed in 0..2 {
        let first = |arm: &str| report["arms"][arm]["runs"][seed]["losses"][0].as_f64().unwrap();
        assert!((first("plain") - first("constricted")).abs() < 1e-6, "seed {seed}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("plain vs constricted"));
}

#[test]
fn compare_finetune_refuses_bad_input() {
    let Some(model) = stories() else { return };
    let tmp = TempDir::new("cmp-ft-bad");
    let file = tmp.path("a-file");
    std::fs::write(&file, "x").unwrap();
    let m = model.to_str().unwrap();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["compare-finetune", "--model", m, "--out", tmp.path("out").to_str().unwrap()]
                .map(String::from)
                .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: &[(&[&str], &[&str])] = &[
        (&["--data", "/nonexistent/data.txt", "--hgc-alpha", "1"], &["--data", "no such file"]),
        (&["--data", DATA, "--seeds", "0", "--hgc-alpha", "1"], &["--seeds"]),
        (&["--data", DATA, "--steps", "0", "--hgc-alpha", "1"], &["--steps"]),
        (&["--data", DATA], &["constricted arm", "--hgc-alpha", "--align-beta"]),
        (&["--data", DATA, "--hgc-mu", "2"], &["--hgc-mu"]),
    ];
    for (extra, needles) in cases {
        let args = base(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, needles);
    }
    fails(
        &[
            "compare-finetune",
            "--model",
            m,
            "--data",
            DATA,
            "--hgc-alpha",
            "1",
            "--out",
            file.to_str().unwrap(),
        ],
        &["--out", "not a folder"],
    );
    assert!(!tmp.path("out").exists());
}
