//! Every input kept from the fuzz campaigns (tests/fuzz-inputs/<target>/<file>) through
//! the same entry point the fuzz target calls (fuzz/src/lib.rs, included here), as an
//! ordinary test: no panic, and the verdict the file name records (`ok-...` parses,
//! `err-...` is refused with a one-line error).

#[path = "../fuzz/src/lib.rs"]
mod entries;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

/// A kept input must be decided well within this (the campaign's timeout is 10 s).
const SLOW: Duration = Duration::from_secs(5);

#[test]
fn kept_fuzz_inputs_give_their_recorded_verdict() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-inputs");
    let mut checked = 0;
    for dir in std::fs::read_dir(&root).unwrap().flatten() {
        let target = dir.file_name().into_string().unwrap();
        let (_, entry) = entries::TARGETS
            .iter()
            .find(|(name, _)| *name == target)
            .unwrap_or_else(|| panic!("tests/fuzz-inputs/{target}: no fuzz target of that name"));
        for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = format!("{target}/{}", file.file_name().to_string_lossy());
            let want_ok = match name.split('/').nth(1).unwrap() {
                n if n.starts_with("ok-") => true,
                n if n.starts_with("err-") => false,
                _ => panic!("{name}: the file name must start with ok- or err-"),
            };
            let bytes = std::fs::read(file.path()).unwrap();
            let t0 = Instant::now();
            let verdict = catch_unwind(AssertUnwindSafe(|| entry(&bytes)))
                .unwrap_or_else(|_| panic!("{name}: the parser panicked"));
            assert!(t0.elapsed() < SLOW, "{name}: took {:?}", t0.elapsed());
            match verdict {
                Ok(()) => assert!(want_ok, "{name}: accepted, but kept as an input to refuse"),
                Err(e) => {
                    let msg = format!("{e:#}");
                    eprintln!("{name}: {msg}");
                    assert!(!want_ok, "{name}: refused ({msg}), but kept as an input to accept");
                    assert!(!msg.trim().is_empty(), "{name}: empty error");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no kept inputs under {}", root.display());
}
