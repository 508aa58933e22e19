//! `keel serve` end to end over raw TCP: the page and the models are served with the
//! content-security policy, Range requests return the right bytes, and every way of
//! climbing out of `web/` or a model folder (`../`, encoded dots and slashes, backslashes,
//! hidden files) is a 404. Bad flags are one `error:` line.

mod common;

use common::server::{serve, serve_with};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn get(port: u16, path: &str, extra: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Response { status, headers, body: raw[split + 4..].to_vec() }
}

#[test]
fn serves_page_and_models_with_csp_and_ranges() {
    let Some(model) = stories() else { return };
    let server = serve(&model);
    let page = get(server.port, "/", "");
    assert_eq!(page.status, 200);
    let index =
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/index.html")).unwrap();
    assert_eq!(page.body, index);
    let csp = page.header("Content-Security-Policy").expect("a CSP header");
    assert!(csp.contains("default-src 'self'") && csp.contains("'wasm-unsafe-eval'"), "{csp}");
    assert!(!csp.contains('*') && !csp.contains("http"), "only the page's own origin: {csp}");

    let list: serde_json::Value = serde_json::from_slice(&get(server.port, "/models.json", "").body).unwrap();
    let files = &list["models"][0]["files"];
    assert_eq!(list["models"][0]["name"], "stories260k");
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let size =
        files.as_array().unwrap().iter().find(|f| f["name"] == "model.safetensors").unwrap()["size"].clone();
    assert_eq!(size, weights.len());

    let url = "/models/stories260k/model.safetensors";
    let whole = get(server.port, url, "");
    assert_eq!((whole.status, whole.body.len()), (200, weights.len()));
    assert!(whole.body == weights);
    let head = get(server.port, url, "Range: bytes=0-7\r\n");
    assert_eq!(head.status, 206);
    assert_eq!(head.body, weights[..8]);
    assert_eq!(head.header("Content-Range"), Some(format!("bytes 0-7/{}", weights.len()).as_str()));
    let tail = get(server.port, url, "Range: bytes=-100\r\n");
    assert_eq!(tail.body, weights[weights.len() - 100..]);
    let mid = get(server.port, url, "Range: bytes=1000-1999\r\n");
    assert_eq!(mid.body, weights[1000..2000]);
    let past = get(server.port, url, &format!("Range: bytes={}-\r\n", weights.len()));
    assert_eq!(past.status, 416);
}

#[test]
fn no_path_leaves_the_served_folders() {
    let Some(model) = stories() else { return };
    let server = serve(&model);
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E/%2E%2E/shared/models/stories260k/config.json",
        "/..%2fCargo.toml",
        "/..%5cCargo.toml",
        "/web/../Cargo.toml",
        "/style.css/../../Cargo.toml",
        "/models/stories260k/../stories260k/config.json",
        "/models/stories260k/%2e%2e%2fstories260k%2fconfig.json",
        "/models/stories260k/..%2f..%2ftiny-gpt2%2fconfig.json",
        "/models/../models/stories260k/config.json",
        "/models/stories260k/NOTICE.md/..",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/.gitignore",
        "/models/stories260k/.hidden",
        "/models/tiny-gpt2/config.json",
        "/src/lib.rs",
    ] {
        let r = get(server.port, path, "");
        assert_eq!(r.status, 404, "{path} must be a 404, got {} ({} bytes)", r.status, r.body.len());
    }
    assert_eq!(get(server.port, "/models/stories260k/config.json", "").status, 200, "the real file is there");
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: evil.example:{}\r\n\r\n", server.port).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 403"), "another site's Host (DNS rebinding) is refused: {raw}");
}

#[test]
fn offers_the_models_in_keels_cache() {
    let Some(model) = stories() else { return };
    let cache = TempDir::new("serve-cache");
    let cached = cache.path("models/cached-stories");
    std::fs::create_dir_all(&cached).unwrap();
    std::fs::copy(model.join("config.json"), cached.join("config.json")).unwrap();
    std::fs::create_dir_all(cache.path("models/not-a-model")).unwrap();
    let server = serve_with(&[], &cache.0);
    let list: serde_json::Value = serde_json::from_slice(&get(server.port, "/models.json", "").body).unwrap();
    let names: Vec<&str> =
        list["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cached-stories"], "the cached model folder, not the folder without a model");
    let config = get(server.port, "/models/cached-stories/config.json", "");
    assert_eq!(config.body, std::fs::read(model.join("config.json")).unwrap());
}

#[test]
fn bad_serve_flags_are_one_error_line() {
    fails(&["serve", "--model", "/nonexistent/model"], &["--model", "/nonexistent/model"]);
    fails(&["serve", "--model", "README.md"], &["README.md", "model folder or a .gguf"]);
    fails(&["serve", "--web", "/nonexistent/web"], &["--web", "index.html"]);
}
