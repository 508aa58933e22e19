//! Where the tests find their fixtures: the models, golden files and corpora in `../shared`,
//! which sits beside the repository in CI and on the developers' machines. One function finds
//! them for every test, unit and integration alike.
//!
//! A test whose fixture (or a tool it needs, such as Chromium) is absent prints `SKIPPED:` and
//! passes, so a plain `cargo test` works without them; with `KEEL_REQUIRE_FIXTURES=1` (set by
//! `scripts/test.sh` and CI) it fails instead, so nothing skips silently there.

use std::path::{Path, PathBuf};

/// The folder of shared fixtures: `KEEL_SHARED` if set, else `../shared` beside the crate.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("KEEL_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

/// Whether absent fixtures fail the test instead of skipping it (`KEEL_REQUIRE_FIXTURES=1`).
pub fn fixtures_required() -> bool {
    std::env::var("KEEL_REQUIRE_FIXTURES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `shared_dir()/relative` when it exists; otherwise the test is skipped (None, with a
/// visible note) or, when fixtures are required, fails naming the path.
pub fn fixture(relative: &str) -> Option<PathBuf> {
    let path = shared_dir().join(relative);
    if path.exists() {
        Some(path)
    } else {
        skip(&format!("fixture {} absent", path.display()));
        None
    }
}

/// The model folder `shared/models/{name}` (see [`fixture`]).
pub fn model(name: &str) -> Option<PathBuf> {
    fixture(&format!("models/{name}"))
}

/// The golden file `shared/golden/{name}.json`, parsed (see [`fixture`]).
pub fn golden(name: &str) -> Option<serde_json::Value> {
    let path = fixture(&format!("golden/{name}.json"))?;
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Reports a test skipped for `why` (something it needs is absent), or panics with `why`
/// when fixtures are required.
pub fn skip(why: &str) {
    if fixtures_required() {
        panic!("{why} (KEEL_REQUIRE_FIXTURES is set, so this test may not skip)");
    }
    eprintln!("SKIPPED: {why}");
}

/// Chromium for the browser and report tests: `CHROMIUM` if set, else `/usr/bin/chromium`;
/// None (see [`skip`]) when absent.
pub fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()));
    if path.exists() {
        Some(path)
    } else {
        skip(&format!("Chromium ({}) absent", path.display()));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_fixtures_are_found_and_absent_ones_named() {
        if let Some(dir) = model("stories260k") {
            assert!(dir.join("config.json").exists());
        }
        // An absent fixture: skipped (None) normally, a panic naming it when required.
        let absent = std::panic::catch_unwind(|| fixture("models/no-such-model"));
        match absent {
            Ok(found) => {
                assert!(!fixtures_required());
                assert!(found.is_none());
            }
            Err(e) => {
                assert!(fixtures_required());
                let msg = e.downcast_ref::<String>().unwrap();
                assert!(msg.contains("no-such-model") && msg.contains("KEEL_REQUIRE_FIXTURES"), "{msg}");
            }
        }
    }
}
