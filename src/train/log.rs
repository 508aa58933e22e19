//! The step log, `DIR/log.jsonl`: one JSON object per line, each normally carrying the
//! `step` it describes (e.g. `{"step": 12, "loss": 2.31, "lr": 3e-4}`, or a line with
//! `val_loss`). Lines are appended as they happen, so a killed run keeps every whole line
//! it wrote; at most the last line is torn, and readers skip it.

use crate::atomic;
use crate::report::svg::{Chart, Series, PALETTE};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct StepLog {
    path: PathBuf,
    /// None once closed.
    file: Option<File>,
}

impl StepLog {
    /// Opens the log for appending. A fresh run (`resume_from_step` None) starts it empty.
    /// A run resuming at step N keeps only the lines whose `step` is below N, so the steps
    /// it repeats are not logged twice; lines without a `step` are dropped too, as the
    /// resumed run writes its own. The trimmed log replaces the old one atomically.
    pub fn open(path: &Path, resume_from_step: Option<usize>) -> Result<StepLog> {
        let file = path.display().to_string();
        let kept = match resume_from_step {
            Some(resume) if path.exists() => {
                let text = std::fs::read_to_string(path).with_context(|| format!("{file}: cannot read"))?;
                let mut kept = String::new();
                for (line, v) in parse_lines(&text, &file)? {
                    if v.get("step").and_then(Value::as_u64).is_some_and(|s| s < resume as u64) {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                }
                kept
            }
            _ => String::new(),
        };
        atomic::write_file(path, kept.as_bytes())?;
        let f = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("{file}: cannot open for appending"))?;
        Ok(StepLog { path: path.to_path_buf(), file: Some(f) })
    }

    /// Appends `value` (a JSON object) as one line. The line goes to the file in a single
    /// write, so a kill leaves at most a torn last line.
    pub fn append(&mut self, value: &Value) -> Result<()> {
        let file = self.path.display();
        ensure!(value.is_object(), "{file}: a log line must be a JSON object, got {value}");
        let mut line = value.to_string();
        line.push('\n');
        let f = self.file.as_mut().ok_or_else(|| anyhow!("{file}: the log is closed"))?;
        f.write_all(line.as_bytes()).with_context(|| format!("{file}: cannot append"))
    }

    /// Syncs the log to disk and closes it.
    pub fn close(mut self) -> Result<()> {
        match self.file.take() {
            Some(f) => f.sync_all().with_context(|| format!("{}: cannot sync", self.path.display())),
            None => Ok(()),
        }
    }
}

impl Drop for StepLog {
    /// Best effort when `close` was not called (an error unwinding the run, say).
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = f.sync_all();
        }
    }
}

/// Every whole line of the log at `path`, parsed. A last line without its newline is
/// kept if it parses (a hand-written file) and skipped otherwise (a write cut short).
pub fn read_log(path: &Path) -> Result<Vec<Value>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{file}: cannot read"))?;
    Ok(parse_lines(&text, &file)?.into_iter().map(|(_, v)| v).collect())
}

/// The non-blank lines of a log with their parsed objects; errors name the line.
fn parse_lines<'a>(text: &'a str, file: &str) -> Result<Vec<(&'a str, Value)>> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let last = lines.len() - 1;
    for (n, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err("expected a JSON object".to_string()),
            Err(e) => Err(format!("not valid JSON ({e})")),
        };
        match parsed {
            Ok(v) => out.push((line, v)),
            // Only the piece after the last newline can be torn.
            Err(_) if n == last => {}
            Err(e) => bail!("{file}:{}: {e}", n + 1),
        }
    }
    Ok(out)
}

/// The fine-tuning loss plot: training `loss` by step, and `val_loss` as a second series
/// when the log has any. Lines without a numeric `step` are left out.
pub fn loss_curve(log: &[Value]) -> Chart {
    let points = |key: &str| -> Vec<(f64, f64)> {
        log.iter().filter_map(|v| Some((v.get("step")?.as_f64()?, v.get(key)?.as_f64()?))).collect()
    };
    let mut series = vec![Series::new("train loss", points("loss"), PALETTE[0])];
    let val = points("val_loss");
    if !val.is_empty() {
        series.push(Series::new("validation loss", val, PALETTE[1]));
    }
    Chart {
        title: "Fine-tuning loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series,
        log_y: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn temp_log(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keel-log-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("log.jsonl")
    }

    fn steps(log: &[Value]) -> Vec<u64> {
        log.iter().map(|v| v["step"].as_u64().unwrap()).collect()
    }

    #[test]
    fn appends_and_reads_back() {
        let p = temp_log("append");
        let mut log = StepLog::open(&p, None).unwrap();
        for s in 0..3 {
            log.append(&json!({"step": s, "loss": 1.0 / (s as f64 + 1.0)})).unwrap();
        }
        // Each line is on disk as soon as it is appended.
        assert_eq!(read_log(&p).unwrap().len(), 3);
        assert!(log.append(&json!([1, 2])).is_err());
        log.close().unwrap();
        let back = read_log(&p).unwrap();
        assert_eq!(steps(&back), [0, 1, 2]);
        assert_eq!(back[1]["loss"], 0.5);
        // A fresh run starts an empty log.
        StepLog::open(&p, None).unwrap().close().unwrap();
        assert!(read_log(&p).unwrap().is_empty());
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn resume_drops_the_steps_it_repeats() {
        let p = temp_log("resume");
        let mut log = StepLog::open(&p, None).unwrap();
        log.append(&json!({"event": "start"})).unwrap();
        for s in 0..6 {
            log.append(&json!({"step": s, "loss": 2.0})).unwrap();
        }
        log.append(&json!({"step": 4, "val_loss": 2.5})).unwrap();
        drop(log);
        // Killed mid-line at step 6.
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"{\"step\": 6, \"lo").unwrap();
        let mut log = StepLog::open(&p, Some(4)).unwrap();
        assert_eq!(steps(&read_log(&p).unwrap()), [0, 1, 2, 3]);
        for s in 4..8 {
            log.append(&json!({"step": s, "loss": 1.0})).unwrap();
        }
        log.close().unwrap();
        assert_eq!(steps(&read_log(&p).unwrap()), [0, 1, 2, 3, 4, 5, 6, 7]);
        // Resuming a run whose log is missing starts one.
        std::fs::remove_file(&p).unwrap();
        StepLog::open(&p, Some(3)).unwrap().close().unwrap();
        assert!(read_log(&p).unwrap().is_empty());
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn torn_last_line_is_skipped_but_bad_middle_lines_are_errors() {
        let p = temp_log("torn");
        std::fs::write(&p, "{\"step\": 0, \"loss\": 3}\n{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"lo")
            .unwrap();
        assert_eq!(steps(&read_log(&p).unwrap()), [0, 1]);
        // A complete last line that only lacks its newline is kept.
        std::fs::write(&p, "{\"step\": 0}\n\n{\"step\": 1}").unwrap();
        assert_eq!(steps(&read_log(&p).unwrap()), [0, 1]);
        std::fs::write(&p, "{\"step\": 0}\n{\"step\": 1, \"lo\n{\"step\": 2}\n").unwrap();
        let e = read_log(&p).unwrap_err().to_string();
        assert!(e.contains("log.jsonl:2:") && e.contains("not valid JSON"), "{e}");
        assert!(StepLog::open(&p, Some(1)).is_err());
        std::fs::write(&p, "{\"step\": 0}\n[1]\n").unwrap();
        let e = read_log(&p).unwrap_err().to_string();
        assert!(e.contains("log.jsonl:2:") && e.contains("expected a JSON object"), "{e}");
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn loss_curve_has_train_and_validation_series() {
        let log = vec![
            json!({"step": 0, "loss": 3.0, "lr": 0.1}),
            json!({"step": 1, "loss": 2.5}),
            json!({"step": 1, "val_loss": 2.8}),
            json!({"event": "start", "loss": 9.0}),
        ];
        let c = loss_curve(&log);
        assert_eq!(c.series.len(), 2);
        assert_eq!(c.series[0].points, [(0.0, 3.0), (1.0, 2.5)]);
        assert_eq!(c.series[1].points, [(1.0, 2.8)]);
        assert_eq!(loss_curve(&log[..2]).series.len(), 1);
        assert!(c.to_svg().contains("validation loss"));
    }
}
