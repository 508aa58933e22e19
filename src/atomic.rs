//! Atomic file and folder writes: readers (and a resumed run) see the old version or the
//! new one, never half of one. Everything Keel writes for the user goes through here.

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A sibling name for staging `path`: `.NAME.tmp-PID`, hidden and unique per process.
fn staging_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and then
/// renamed over `path`.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = staging_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// Builds a folder at `dir` by calling `fill` on an empty staging folder beside it, then
/// renames the staging folder into place (replacing an older `dir`).
pub fn write_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = staging_path(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = fill(&tmp).and_then(|()| {
        if dir.exists() {
            // Move the old folder aside first so `dir` is never missing a complete version
            // for longer than two renames.
            let old = dir.with_file_name(format!(
                ".{}.old-{}",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                std::process::id()
            ));
            fs::rename(dir, &old)?;
            fs::rename(&tmp, dir)?;
            fs::remove_dir_all(&old)?;
        } else {
            fs::rename(&tmp, dir)?;
        }
        Ok(())
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.with_context(|| format!("writing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_folder_replace_whole() {
        let root = std::env::temp_dir().join(format!("keel-atomic-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let f = root.join("a.json");
        write_file(&f, b"one").unwrap();
        write_file(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        let d = root.join("ckpt");
        write_dir(&d, |tmp| Ok(fs::write(tmp.join("x"), b"1")?)).unwrap();
        write_dir(&d, |tmp| Ok(fs::write(tmp.join("y"), b"2")?)).unwrap();
        assert!(!d.join("x").exists() && d.join("y").exists());
        // A failing fill leaves the previous folder as it was.
        assert!(write_dir(&d, |_| anyhow::bail!("boom")).is_err());
        assert!(d.join("y").exists());
        let leftovers: Vec<_> = fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
        fs::remove_dir_all(&root).unwrap();
    }
}
