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

/// A command that takes longer than this counts as hung. The longest, the kill test's 48-step
/// fine-tune, needs about 35 s of CPU and took 76 s of wall time on a loaded 2-core machine.
pub const HANG: Duration = Duration::from_secs(180);
/// Bad input must be refused within this (generous for a loaded 2-core machine).
pub const REFUSAL: Duration = Duration::from_secs(20);

#[allow(unused_imports)] // Each test binary uses its own subset.
pub use keel::testing::{fixture, shared_dir as shared};

/// The stories260k folder (see [`keel::testing::fixture`]: skipped or failed when absent).
pub fn stories() -> Option<PathBuf> {
    keel::testing::model("stories260k")
}

pub struct Run {
    pub time: Duration,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// User plus system CPU time of the child (unlike wall time, not stretched by a
    /// loaded machine).
    pub cpu: Duration,
    /// The child's peak resident memory, in bytes.
    pub peak_rss: u64,
}

/// Waits for `child` without blocking: its exit code (None if killed by a signal), CPU time
/// and peak RSS once it has ended.
fn try_wait_with_usage(child: &std::process::Child) -> Option<(Option<i32>, Duration, u64)> {
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: wait4 on our own child's pid, writing into the two locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, libc::WNOHANG, &mut usage) };
    assert!(pid >= 0, "wait4: {}", std::io::Error::last_os_error());
    if pid == 0 {
        return None;
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    // ru_maxrss is in kilobytes on Linux.
    Some((code, time(usage.ru_utime) + time(usage.ru_stime), usage.ru_maxrss as u64 * 1024))
}

/// Runs `keel args`, killing it (and failing) if it runs past [`HANG`].
pub fn keel(args: &[&str]) -> Run {
    keel_env(args, &[])
}

/// [`keel`] with extra environment variables.
#[allow(clippy::zombie_processes)] // Reaped by wait4 in try_wait_with_usage, which clippy cannot see.
pub fn keel_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("WGPU_BACKEND", "vulkan")
        .envs(env.iter().copied())
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
    let (code, cpu, peak_rss) = loop {
        if let Some(ended) = try_wait_with_usage(&child) {
            break ended;
        }
        if t0.elapsed() > HANG {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("keel {args:?} still running after {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let run = Run { time: t0.elapsed(), code, stdout, stderr, cpu, peak_rss };
    eprintln!("keel {:?}: exit {:?} in {:.2}s", args, run.code, run.time.as_secs_f64());
    run
}

/// Runs `keel args`, expecting failure: exit 2, one `error: ` line on stderr holding every
/// `needle`, no panic. Returns that line.
pub fn fails(args: &[&str], needles: &[&str]) -> String {
    fails_with(args, needles).0
}

/// [`fails`], also returning the run (for its CPU time and memory).
pub fn fails_with(args: &[&str], needles: &[&str]) -> (String, Run) {
    fails_env(args, &[], needles)
}

/// [`fails_with`] with extra environment variables.
pub fn fails_env(args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> (String, Run) {
    let r = keel_env(args, env);
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
    (line.to_string(), r)
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

    /// A copy of stories260k's model files (or another model folder's, which has the same).
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

/// A safetensors file split into its JSON header and its data section.
pub struct Safetensors {
    pub header: serde_json::Map<String, Value>,
    pub data: Vec<u8>,
}

impl Safetensors {
    pub fn read(path: &Path) -> Safetensors {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        Safetensors {
            header: serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
            data: bytes[8 + n..].to_vec(),
        }
    }

    pub fn write(&self, path: &Path) {
        let mut header = serde_json::to_vec(&self.header).unwrap();
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        bytes.extend(&self.data);
        std::fs::write(path, bytes).unwrap();
    }

    /// The data range of `name`.
    pub fn range(&self, name: &str) -> std::ops::Range<usize> {
        let o = &self.header[name]["data_offsets"];
        o[0].as_u64().unwrap() as usize..o[1].as_u64().unwrap() as usize
    }
}

/// A copy of the model folder `src` (stories260k or another with the same four files) whose
/// model.safetensors `edit` has changed.
pub fn edited_stories(tag: &str, src: &Path, edit: impl FnOnce(&mut Safetensors)) -> TempDir {
    let t = TempDir::stories(tag, src);
    let mut st = Safetensors::read(&t.path("model.safetensors"));
    edit(&mut st);
    st.write(&t.path("model.safetensors"));
    t
}
