//! A `keel serve` on a free port for the serve and browser tests, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `web/` and `model` (and no cache: KEEL_CACHE points at nothing).
pub fn serve(model: &Path) -> Server {
    serve_with(&["--model", model.to_str().unwrap()], &super::shared().join("no-cache-here"))
}

/// Serves `web/` with these extra arguments and Keel's cache at `cache`.
pub fn serve_with(args: &[&str], cache: &Path) -> Server {
    serve_logging(args, cache, Stdio::null())
}

/// [`serve_with`], the server's stderr going to `log`.
pub fn serve_logging(args: &[&str], cache: &Path, log: impl Into<Stdio>) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "--port", "0"])
        .args(args)
        .env("KEEL_CACHE", cache)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start keel serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("http://127.0.0.1:"), "{line}");
    let port = line.trim_end().trim_end_matches('/').rsplit(':').next().unwrap().parse().expect(&line);
    Server { child, port }
}
