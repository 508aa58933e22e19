//! `keel serve`: a small HTTP/1.1 server on 127.0.0.1 for the browser demo. It serves the
//! page (`web/`, with the built `web/pkg/`), `/models.json` (the models named with
//! `--model` and those in Keel's cache) and `/models/<name>/<file>` with Range support, so
//! the page can fetch a safetensors header first and then each tensor's bytes.
//!
//! Nothing outside those is reachable: model files are looked up by exact name in a table
//! built at start (never joined from the request path), and page paths are checked segment
//! by segment after decoding, then canonicalised and required to stay under `web/`.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Only the page's own origin; wasm compilation needs 'wasm-unsafe-eval'.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Args)]
pub struct ServeArgs {
    /// TCP port on 127.0.0.1 (0 = any free port; the address is printed)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// A model folder or .gguf file to offer (repeatable); Keel's cache is offered too
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// The page's folder (index.html, app.js, style.css and the built pkg/) [default: web/ of
    /// the source tree Keel was built from]
    #[arg(long)]
    pub web: Option<PathBuf>,
    /// Also serve an OpenAI-compatible API under /v1 with the first --model (or the default one)
    #[arg(long)]
    pub api: bool,
    #[command(flatten)]
    pub template: super::chat::TemplateArg,
}

/// The files of one offered model, by file name.
struct ServedModel {
    files: BTreeMap<String, PathBuf>,
}

struct Site {
    web_root: PathBuf,
    models: BTreeMap<String, ServedModel>,
    api: Option<super::api::Api>,
}

pub fn run(a: ServeArgs, adapter: &Option<String>) -> Result<()> {
    let web = a.web.clone().unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/web")));
    let web_root = web.canonicalize().ok().filter(|d| d.join("index.html").is_file()).with_context(|| {
        format!("--web {}: no index.html there (the page's folder is expected)", web.display())
    })?;
    if !web_root.join("pkg").is_dir() {
        eprintln!("note: {} is missing: build it with scripts/build-web.sh", web_root.join("pkg").display());
    }
    let mut models = BTreeMap::new();
    for path in &a.model {
        let (name, model) = offer(path)?;
        models.insert(name, model);
    }
    for path in cached_models() {
        if let Ok((name, model)) = offer(&path) {
            models.entry(name).or_insert(model);
        }
    }
    let api = match a.api {
        true => {
            let model =
                super::ModelArg { model: a.model.first().cloned(), weights: super::WeightsFlag::Auto };
            Some(super::api::Api::new(super::load_model(&model, adapter)?, &a.template)?)
        }
        false => None,
    };
    let listener = TcpListener::bind(("127.0.0.1", a.port))
        .with_context(|| format!("--port {}: cannot listen on 127.0.0.1", a.port))?;
    let port = listener.local_addr()?.port();
    // One line, which ends with the address (the tests read it).
    let api_note = api.as_ref().map(|a| format!(", the OpenAI-compatible API (/v1) for '{}'", a.name));
    println!(
        "serving {} and {} model(s){} on http://127.0.0.1:{port}/",
        web_root.display(),
        models.len(),
        api_note.unwrap_or_default()
    );
    std::io::stdout().flush()?;
    let site = Arc::new(Site { web_root, models, api });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let site = site.clone();
        std::thread::spawn(move || {
            // A client that hangs up mid-answer is its own business.
            let _ = handle(&site, stream, port);
        });
    }
    Ok(())
}

/// The model folders in Keel's cache (`<cache>/models/*`).
fn cached_models() -> Vec<PathBuf> {
    let Ok(cache) = crate::pull::cache_dir() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(cache.join("models")) else { return Vec::new() };
    entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect()
}

/// A model folder's plain files (or a lone .gguf file), named after the folder (or file).
fn offer(path: &Path) -> Result<(String, ServedModel)> {
    let meta = std::fs::metadata(path).with_context(|| format!("--model {}", path.display()))?;
    let mut files = BTreeMap::new();
    let add = |files: &mut BTreeMap<String, PathBuf>, p: PathBuf| {
        if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            if !name.starts_with('.') && p.is_file() {
                files.insert(name.to_string(), p);
            }
        }
    };
    let name = if meta.is_dir() {
        for entry in std::fs::read_dir(path).with_context(|| format!("--model {}", path.display()))? {
            add(&mut files, entry?.path());
        }
        let is_model = files.contains_key("config.json") || files.keys().any(|f| f.ends_with(".gguf"));
        if !is_model {
            bail!("--model {}: not a model folder (no config.json and no .gguf)", path.display());
        }
        path.canonicalize()?.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_string()
    } else {
        if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
            bail!("--model {}: expected a model folder or a .gguf file", path.display());
        }
        add(&mut files, path.to_path_buf());
        path.file_stem().and_then(|n| n.to_str()).unwrap_or("model").to_string()
    };
    Ok((name, ServedModel { files }))
}

struct Request {
    method: String,
    path: String,
    host: Option<String>,
    range: Option<String>,
    /// The body (API requests), or None when its Content-Length is over the API's bound.
    body: Option<Vec<u8>>,
}

fn read_request(stream: &TcpStream) -> Result<Request> {
    let mut reader = BufReader::new(stream.take((64 * 1024 + super::api::MAX_BODY) as u64));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let (mut host, mut range, mut length) = (None, None, 0);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "host" => host = Some(v.trim().to_string()),
                "range" => range = Some(v.trim().to_string()),
                "content-length" => length = v.trim().parse().unwrap_or(usize::MAX),
                _ => {}
            }
        }
    }
    let body = (length <= super::api::MAX_BODY).then(|| {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).map(|_| body)
    });
    Ok(Request { method, path, host, range, body: body.transpose()? })
}

/// What to answer: a status with a short text, or a file (or part of one).
enum Reply {
    Status(u16, &'static str),
    Json(String),
    File(PathBuf),
}

fn handle(site: &Site, mut stream: TcpStream, port: u16) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = read_request(&stream)?;
    let head_only = req.method == "HEAD";
    // DNS rebinding: a page of another site resolved to 127.0.0.1 would send its own Host.
    let host_ok = req
        .host
        .as_deref()
        .is_some_and(|h| h == format!("127.0.0.1:{port}") || h == format!("localhost:{port}"));
    if let (Some(api), true, true) = (&site.api, host_ok, req.path.starts_with("/v1/")) {
        let path = req.path.split('?').next().unwrap_or("");
        return match &req.body {
            Some(body) => api.handle(&req.method, path, body, &mut stream),
            None => {
                let e = super::api::ApiError::new(
                    400,
                    format!("the body is over {} bytes", super::api::MAX_BODY),
                );
                respond(&mut stream, 400, "application/json", e.body().as_bytes(), &[], false)
            }
        };
    }
    let reply = if req.method != "GET" && !head_only {
        Reply::Status(405, "method not allowed")
    } else if !host_ok {
        Reply::Status(403, "forbidden host")
    } else {
        route(site, &req.path)
    };
    match reply {
        Reply::Status(code, text) => {
            respond(&mut stream, code, "text/plain", text.as_bytes(), &[], head_only)
        }
        Reply::Json(body) => respond(&mut stream, 200, "application/json", body.as_bytes(), &[], head_only),
        Reply::File(path) => send_file(&mut stream, &path, req.range.as_deref(), head_only),
    }
}

fn route(site: &Site, raw_path: &str) -> Reply {
    let path = raw_path.split(['?', '#']).next().unwrap_or("");
    let Some(segments) = safe_segments(path) else { return Reply::Status(404, "not found") };
    match segments.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["models.json"] => Reply::Json(models_json(site)),
        ["models", model, file] => match site.models.get(model).and_then(|m| m.files.get(file)) {
            Some(p) => Reply::File(p.clone()),
            None => Reply::Status(404, "not found"),
        },
        [] => Reply::File(site.web_root.join("index.html")),
        _ => {
            let candidate = segments.iter().fold(site.web_root.clone(), |p, s| p.join(s));
            // Symbolic links may not lead out of the page's folder.
            match candidate.canonicalize() {
                Ok(real) if real.starts_with(&site.web_root) && real.is_file() => Reply::File(real),
                _ => Reply::Status(404, "not found"),
            }
        }
    }
}

fn models_json(site: &Site) -> String {
    let list: Vec<_> = site
        .models
        .iter()
        .map(|(name, m)| {
            let files: Vec<_> = m
                .files
                .iter()
                .map(|(f, p)| json!({"name": f, "size": std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)}))
                .collect();
            json!({"name": name, "files": files})
        })
        .collect();
    json!({ "models": list }).to_string()
}

/// The decoded path segments, or None if any is empty, `.`, `..`, hidden, holds a
/// separator or NUL, or does not decode (every such request is a 404).
pub fn safe_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.split('/')
        .map(|raw| {
            let s = percent_decode(raw)?;
            let bad = s.is_empty() || s.starts_with('.') || s.contains(['/', '\\', '\0', ':']);
            (!bad).then_some(s)
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "md" | "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `Range: bytes=a-b | a- | -n` against a file of `len` bytes: the inclusive byte span,
/// None when unsatisfiable or malformed (one range only; the page never asks for more).
pub fn parse_range(header: &str, len: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.checked_sub(n.min(len))?, len.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, len.checked_sub(1)?),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(len.checked_sub(1)?)),
    };
    (start <= end && end < len).then_some((start, end))
}

fn send_file(stream: &mut TcpStream, path: &Path, range: Option<&str>, head_only: bool) -> Result<()> {
    let Ok(mut file) = File::open(path) else {
        return respond(stream, 404, "text/plain", b"not found", &[], head_only);
    };
    let len = file.metadata()?.len();
    let kind = content_type(path);
    let (status, start, count, extra) = match range {
        None => (200, 0, len, Vec::new()),
        Some(r) => match parse_range(r, len) {
            Some((a, b)) => (206, a, b - a + 1, vec![format!("Content-Range: bytes {a}-{b}/{len}")]),
            None => {
                let extra = [format!("Content-Range: bytes */{len}")];
                return respond(stream, 416, "text/plain", b"range not satisfiable", &extra, head_only);
            }
        },
    };
    write_head(stream, status, kind, count, &extra)?;
    if !head_only {
        file.seek(SeekFrom::Start(start))?;
        std::io::copy(&mut file.take(count), stream)?;
    }
    stream.flush()?;
    Ok(())
}

pub fn respond(
    stream: &mut TcpStream,
    status: u16,
    kind: &str,
    body: &[u8],
    extra: &[String],
    head_only: bool,
) -> Result<()> {
    write_head(stream, status, kind, body.len() as u64, extra)?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()?;
    Ok(())
}

fn write_head(stream: &mut TcpStream, status: u16, kind: &str, len: u64, extra: &[String]) -> Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        400 => "Bad Request",
        500 => "Internal Server Error",
        416 => "Range Not Satisfiable",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\n\
         Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\nX-Content-Type-Options: nosniff\r\n\
         Cross-Origin-Resource-Policy: same-origin\r\nReferrer-Policy: no-referrer\r\n\
         Accept-Ranges: bytes\r\nCache-Control: no-cache\r\nConnection: close\r\n"
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-7", 100), Some((0, 7)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)), "end clamped to the file");
        assert_eq!(parse_range("bytes=100-", 100), None, "starts past the end");
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None, "empty file");
    }

    #[test]
    fn traversal_segments_are_refused() {
        assert_eq!(safe_segments("/"), Some(vec![]));
        assert_eq!(safe_segments("/pkg/keel.js"), Some(vec!["pkg".into(), "keel.js".into()]));
        assert_eq!(safe_segments("/a%20b"), Some(vec!["a b".into()]));
        for bad in [
            "/../x",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/pkg/..",
            "/a/%2e%2e%2fb",
            "/..%2fx",
            "/..%5cx",
            "//etc/passwd",
            "/a//b",
            "/.git/config",
            "/%00",
            "/%zz",
            "/c:%5cwindows",
            "x",
        ] {
            assert_eq!(safe_segments(bad), None, "{bad}");
        }
    }
}
