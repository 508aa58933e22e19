//! Records the git commit Keel is built from as KEEL_GIT_COMMIT, for reports to name. A build
//! outside a git checkout (a source tarball) says "unknown" unless KEEL_GIT_COMMIT is set.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=KEEL_GIT_COMMIT");
    let commit = std::env::var("KEEL_GIT_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        // Only this crate's own checkout counts, not a repository the tarball was unpacked in.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).canonicalize().ok()?;
        let top = git(&["rev-parse", "--show-toplevel"])?;
        if Path::new(&top).canonicalize().ok()? != manifest {
            return None;
        }
        for file in ["HEAD", "logs/HEAD"] {
            if let Some(path) = git(&["rev-parse", "--git-path", file]) {
                println!("cargo:rerun-if-changed={path}");
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!("cargo:rustc-env=KEEL_GIT_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
}
