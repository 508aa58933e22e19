//! Helpers the command-line tests share: running `keel` with a hang guard, expecting
//! success or a one-line refusal, fixtures read in place, temporary folders.

#![allow(dead_code)] // Each test binary uses its own subset.

pub mod server;

use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A command that takes longer than this counts as hung.
pub const HANG: Duration = Duration::from_secs(60);
/// Bad input must be refused within this (generous for a loaded 2-core machine).
pub const REFUSAL: Duration = Duration::from_secs(20);

pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// The stories260k folder, or None (with a visible note) when absent.
pub fn stories() -> Option<PathBuf> {
    let dir = shared().join("models/stories260k");
    if !dir.join("model.safetensors").exists() {
        eprintln!("SKIPPED: fixture {} absent", dir.display());
        return None;
    }
    Some(dir)
}

pub struct Run {
    pub time: Duration,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `keel args`, killing it (and failing) if it runs past [`HANG`].
pub fn keel(args: &[&str]) -> Run {
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("WGPU_BACKEND", "vulkan")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keel");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            r.read_to_end(&mut s).unwrap();
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > HANG {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("keel {args:?} still running after {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let run = Run { time: t0.elapsed(), code: status.code(), stdout, stderr };
    eprintln!("keel {:?}: exit {:?} in {:.2}s", args, run.code, run.time.as_secs_f64());
    run
}

/// Runs `keel args`, expecting failure: exit 2, one `error: ` line on stderr holding every
/// `needle`, no panic. Returns that line.
pub fn fails(args: &[&str], needles: &[&str]) -> String {
    let r = keel(args);
    let line = r.stderr.trim_end();
    eprintln!("  {line}");
    assert!(!r.stderr.contains("panicked"), "keel {args:?} panicked:\n{}", r.stderr);
    assert_eq!(r.code, Some(2), "keel {args:?}: exit code\nstderr:\n{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "keel {args:?}: stderr is not one line:\n{}", r.stderr);
    assert!(line.starts_with("error: "), "keel {args:?}: {line}");
    assert!(r.time < REFUSAL, "keel {args:?} took {:?} to fail", r.time);
    for needle in needles {
        assert!(line.contains(needle), "keel {args:?}: {line:?} does not mention {needle:?}");
    }
    line.to_string()
}

/// Runs `keel args`, expecting success; returns stdout.
pub fn succeeds(args: &[&str]) -> String {
    let r = keel(args);
    assert_eq!(r.code, Some(0), "keel {args:?} failed:\n{}", r.stderr);
    r.stdout
}

/// A temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("keel-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A copy of stories260k's model files.
    pub fn stories(tag: &str, src: &Path) -> TempDir {
        let t = TempDir::new(tag);
        for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), t.0.join(f)).unwrap();
        }
        t
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }

    pub fn edit_json(&self, file: &str, f: impl FnOnce(&mut Value)) {
        let mut v: Value = serde_json::from_slice(&std::fs::read(self.path(file)).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(self.path(file), serde_json::to_vec(&v).unwrap()).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
