//! `keel serve --api`: an OpenAI-compatible API beside the demo page. `GET /v1/models`,
//! `POST /v1/chat/completions` (the model's chat template applied) and `POST /v1/completions`,
//! each plain or streamed as server-sent events, with `usage`, the sampling fields, stop strings
//! (matched on the host), `logprobs` with up to 20 `top_logprobs` alternatives (chat; a
//! completion's `logprobs: N`) and LCM in the extra body field `keel`
//! (`{"keel": {"lcm": {"gamma": 0.05}}}`). One generation runs at a time; the others wait
//! their turn. A client that hangs up stops its generation.

use super::chat::{self, TemplateArg};
use super::Ready;
use crate::chat::ChatTemplate;
use crate::generate::{self, GenerateOptions, SamplerConfig, Session};
use crate::modulate::LcmConfig;
use crate::tokenize::TextStream;
use anyhow::Result;
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Largest request body accepted (a long conversation fits; a runaway upload does not).
pub const MAX_BODY: usize = 4 << 20;
/// `max_tokens` when a request does not say.
const DEFAULT_MAX_TOKENS: usize = 256;
/// Most alternatives per token (`top_logprobs`), as OpenAI allows.
const MAX_TOP_LOGPROBS: usize = 20;

/// The served model and its chat template (None: chat completions are refused, completions work).
pub struct Api {
    pub name: String,
    engine: Mutex<Ready>,
    template: Option<ChatTemplate>,
    template_error: String,
    next_id: AtomicU64,
    /// `/v1/embeddings`' sentence encoder, loaded on the first request.
    embedder: Mutex<Option<crate::sentence::SentenceEncoder>>,
}

/// An OpenAI error: HTTP status, message, and the parameter it concerns.
pub struct ApiError {
    pub status: u16,
    pub message: String,
    param: Option<&'static str>,
}

fn bad(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
    ApiError { status: 400, message: message.into(), param }
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), param: None }
    }

    /// OpenAI's error object.
    pub fn body(&self) -> String {
        let kind = if self.status < 500 { "invalid_request_error" } else { "server_error" };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": null}})
            .to_string()
    }
}

impl Api {
    pub fn new(ready: Ready, template: &TemplateArg) -> Result<Api> {
        let name = ready.host.path.file_stem().and_then(|n| n.to_str()).unwrap_or("model").to_string();
        let (template, template_error) = match template.load(&ready.host) {
            Ok(t) => (Some(t), String::new()),
            // A template given by hand must work; a model without one still serves completions.
            Err(e) if template.chat_template.is_none() => (None, format!("{e:#}")),
            Err(e) => return Err(e),
        };
        Ok(Api {
            name,
            engine: Mutex::new(ready),
            template,
            template_error,
            next_id: AtomicU64::new(1),
            embedder: Mutex::new(None),
        })
    }

    /// Answers one `/v1/...` request on `stream`; errors come back as OpenAI error objects.
    pub fn handle(&self, method: &str, path: &str, body: &[u8], stream: &mut TcpStream) -> Result<()> {
        let reply = match (method, path) {
            ("GET", "/v1/models") => Ok(json!({"object": "list", "data": [self.model_card()]}).to_string()),
            ("GET", p) if p.strip_prefix("/v1/models/") == Some(&self.name) => {
                Ok(self.model_card().to_string())
            }
            ("POST", "/v1/chat/completions") => self.complete(body, true, stream),
            ("POST", "/v1/completions") => self.complete(body, false, stream),
            ("POST", "/v1/embeddings") => self.embeddings(body),
            (_, "/v1/models" | "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
                Err(ApiError::new(405, format!("{method} is not allowed on {path}")))
            }
            _ => Err(ApiError::new(404, format!("no such endpoint: {path}"))),
        };
        match reply {
            Ok(body) if body.is_empty() => Ok(()), // streamed
            Ok(body) => super::serve::respond(stream, 200, "application/json", body.as_bytes(), &[], false),
            Err(e) => {
                super::serve::respond(stream, e.status, "application/json", e.body().as_bytes(), &[], false)
            }
        }
    }

    /// OpenAI's embeddings: `input` a string or a list of them, each embedded by the judge
    /// encoder (all-MiniLM-L6-v2, whatever `model` says); `encoding_format` float or base64
    /// (little-endian f32, what the openai client asks for).
    fn embeddings(&self, body: &[u8]) -> Result<String, ApiError> {
        let req: Value = serde_json::from_slice(body)
            .map_err(|e| bad(None, format!("the body is not valid JSON: {e}")))?;
        let texts: Vec<&str> = match req.get("input") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) if !a.is_empty() => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(bad(Some("input"), "'input' must be a string or a non-empty list of strings")),
        };
        if texts.len() != req["input"].as_array().map_or(1, Vec::len) {
            return Err(bad(Some("input"), "'input' must hold strings (token arrays are not supported)"));
        }
        let base64 = match req.get("encoding_format").and_then(Value::as_str) {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(bad(
                    Some("encoding_format"),
                    format!("'encoding_format' {other:?}: expected float or base64"),
                ))
            }
        };
        let mut slot = self.embedder.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let load = crate::pull::resolve_judge_model(None)
                .and_then(|p| crate::sentence::SentenceEncoder::load(&p));
            *slot = Some(load.map_err(|e| ApiError::new(500, format!("the embedding model: {e:#}")))?);
        }
        let encoder = slot.as_ref().expect("loaded above");
        let (mut data, mut tokens) = (Vec::new(), 0);
        for (index, text) in texts.iter().enumerate() {
            let fail = |e: anyhow::Error| bad(Some("input"), format!("input {index}: {e:#}"));
            tokens += encoder.tokens(text).map_err(fail)?.len();
            let e = encoder.embed(text).map_err(fail)?;
            let embedding = if base64 { json!(base64_f32(&e)) } else { json!(e) };
            data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
        }
        let usage = json!({"prompt_tokens": tokens, "total_tokens": tokens});
        Ok(json!({"object": "list", "data": data, "model": crate::pull::JUDGE_MODEL_NAME, "usage": usage})
            .to_string())
    }

    fn model_card(&self) -> Value {
        json!({"id": self.name, "object": "model", "created": 0, "owned_by": "keel"})
    }

    /// A completion; returns the JSON body, or "" when it was streamed.
    fn complete(&self, body: &[u8], chat: bool, stream: &mut TcpStream) -> Result<String, ApiError> {
        let req: Value = serde_json::from_slice(body)
            .map_err(|e| bad(None, format!("the body is not valid JSON ({e})")))?;
        if !req.is_object() {
            return Err(bad(None, "the body must be a JSON object"));
        }
        // Waiting here is the queue: one generation at a time.
        let ready = self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let host = &ready.host;
        let (prompt, eos) = if chat {
            let template = self.template.as_ref().ok_or_else(|| bad(None, self.template_error.clone()))?;
            let messages = req.get("messages").and_then(Value::as_array).ok_or_else(|| {
                bad(Some("messages"), "'messages' must be an array of {\"role\", \"content\"} objects")
            })?;
            crate::chat::check_messages(messages).map_err(|e| bad(Some("messages"), format!("{e:#}")))?;
            let tools = req.get("tools").filter(|t| !t.is_null());
            let (_, ids) = chat::render(template, host, messages, tools, true)
                .map_err(|e| bad(Some("messages"), format!("{e:#}")))?;
            (ids, chat::stop_ids(template, host))
        } else {
            let prompt = match req.get("prompt") {
                Some(Value::String(s)) => s.as_str(),
                Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                    a[0].as_str().unwrap_or_default()
                }
                _ => return Err(bad(Some("prompt"), "'prompt' must be a string")),
            };
            let ids = host.tokenizer.encode(prompt).map_err(|e| bad(Some("prompt"), format!("{e:#}")))?;
            (ids, host.config.eos.clone())
        };
        let p = Params::parse(&req, host, chat)?;
        let ctx = host.config.max_positions;
        let max_tokens = p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS.min(ctx.saturating_sub(prompt.len())));
        if prompt.is_empty() || prompt.len() + max_tokens > ctx {
            return Err(bad(
                Some("max_tokens"),
                format!("the prompt ({} tokens) plus max_tokens {max_tokens} exceeds the model's context of {ctx} tokens", prompt.len()),
            ));
        }
        if let Some(lcm) = &p.lcm {
            lcm.validate(host.config.layers).map_err(|e| bad(Some("keel"), format!("{e:#}")))?;
        }
        let id = format!(
            "{}-{}",
            if chat { "chatcmpl" } else { "cmpl" },
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let mut out = Output {
            chat,
            stream: p.stream,
            id,
            model: self.name.clone(),
            created: unix_now(),
            socket: stream,
        };
        if p.stream {
            out.start().map_err(|_| ApiError::new(499, "client closed"))?;
        }
        let opts =
            GenerateOptions { max_tokens, sampler: p.sampler.clone(), eos: eos.clone(), lcm: p.lcm.clone() };
        let tok = &host.tokenizer;
        let mut alternatives = match p.top_logprobs {
            0 => None,
            n => Some(
                Alternatives::new(&ready, &prompt, max_tokens, p.lcm.as_ref(), n)
                    .map_err(|e| ApiError::new(500, format!("{e:#}")))?,
            ),
        };
        let (mut text, mut sent, mut ids) = (String::new(), 0, Vec::new());
        // Each reported token's log-probability and alternatives; those up to `flushed` went out.
        let (mut logprobs, mut flushed) = (Vec::new(), 0);
        let mut pieces = TextStream::new(tok);
        let mut finish = "length";
        let mut hung_up = false;
        let result = pollster::block_on(generate::generate_async(
            ready.gpu,
            &ready.gpu_model,
            &prompt,
            &opts,
            &mut |pick| {
                ids.push(pick.id);
                if eos.contains(&pick.id) {
                    // Generation ends here by itself; the EOS token has no text.
                    finish = "stop";
                    return Ok(());
                }
                let top = match &mut alternatives {
                    Some(a) => a.next(pick.id)?,
                    None => Vec::new(),
                };
                logprobs.push(TokenLogprob { id: pick.id, logprob: pick.logprob, top });
                text.push_str(&pieces.push(pick.id)?);
                let (end, stopped) = match p.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                    Some(at) => (at, true),
                    None => (held_back(&text, &p.stop), false),
                };
                if p.stream && end > sent {
                    let lp = p.logprobs.then(|| logprob_json(tok, &logprobs[flushed..], chat, sent));
                    out.chunk(&text[sent..end], lp, None).inspect_err(|_| hung_up = true)?;
                    (sent, flushed) = (end, logprobs.len());
                }
                if stopped {
                    text.truncate(end);
                    finish = "stop";
                    anyhow::bail!("done");
                }
                if !p.stream && peer_closed(out.socket) {
                    hung_up = true;
                    anyhow::bail!("client closed");
                }
                Ok(())
            },
        ));
        if hung_up {
            // The server's log says what a hang-up cost.
            eprintln!("keel: {}: the client hung up after {} tokens; generation stopped", out.id, ids.len());
            return Ok(String::new());
        }
        // A stop string ends generation through an error of its own, with `finish` set.
        if let (Err(e), "length") = (result, finish) {
            return Err(ApiError::new(500, format!("{e:#}")));
        }
        let usage = json!({"prompt_tokens": prompt.len(), "completion_tokens": ids.len(), "total_tokens": prompt.len() + ids.len()});
        if p.stream {
            let pending = p.logprobs && flushed < logprobs.len();
            let rest = pending.then(|| logprob_json(tok, &logprobs[flushed..], chat, sent));
            // A client gone by now has its answer anyway.
            let _ = out.finish(&text[sent..], rest, finish, p.include_usage.then_some(usage));
            return Ok(String::new());
        }
        let logprobs = p.logprobs.then(|| logprob_json(tok, &logprobs, chat, 0));
        Ok(out.whole(&text, finish, logprobs, usage).to_string())
    }
}

/// The request's generation settings.
struct Params {
    max_tokens: Option<usize>,
    sampler: SamplerConfig,
    stop: Vec<String>,
    logprobs: bool,
    /// Alternatives per token (0: the chosen token's log-probability alone).
    top_logprobs: usize,
    stream: bool,
    include_usage: bool,
    lcm: Option<LcmConfig>,
}

impl Params {
    fn parse(req: &Value, host: &crate::model::ModelInfo, chat: bool) -> Result<Params, ApiError> {
        let num = |k: &'static str| -> Result<Option<f64>, ApiError> {
            match req.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    v.as_f64().map(Some).ok_or_else(|| bad(Some(k), format!("'{k}' must be a number")))
                }
            }
        };
        let count = |k: &'static str| -> Result<Option<usize>, ApiError> {
            match req.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| bad(Some(k), format!("'{k}' must be a non-negative integer"))),
            }
        };
        let flag = |k: &'static str| -> Result<bool, ApiError> {
            match req.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(bad(Some(k), format!("'{k}' must be true or false"))),
            }
        };
        let d = &host.generation;
        let sampler = SamplerConfig {
            temperature: num("temperature")?.map(|t| t as f32).or(d.temperature).unwrap_or(1.0),
            top_k: d.top_k.unwrap_or(0),
            top_p: num("top_p")?.map(|t| t as f32).or(d.top_p).unwrap_or(1.0),
            repetition_penalty: d.repetition_penalty.unwrap_or(1.0),
            min_p: num("min_p")?.map_or(0.0, |p| p as f32),
            presence_penalty: num("presence_penalty")?.map_or(0.0, |p| p as f32),
            frequency_penalty: num("frequency_penalty")?.map_or(0.0, |p| p as f32),
            seed: num("seed")?.map_or(0, |s| s as u64),
            ..SamplerConfig::default()
        };
        sampler.validate().map_err(|e| bad(None, format!("{e:#}")))?;
        let stop = match req.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(Some("stop"), "'stop' must be a string or an array of strings"))?,
            Some(_) => return Err(bad(Some("stop"), "'stop' must be a string or an array of strings")),
        };
        if stop.iter().any(String::is_empty) {
            return Err(bad(Some("stop"), "stop strings must not be empty"));
        }
        // Chat: `logprobs: true`; completions: `logprobs: N` (the count of alternatives).
        let logprobs = if chat { flag("logprobs")? } else { count("logprobs")?.is_some() };
        let (key, alternatives) =
            if chat { ("top_logprobs", count("top_logprobs")?) } else { ("logprobs", count("logprobs")?) };
        let top_logprobs = alternatives.unwrap_or(0);
        if top_logprobs > MAX_TOP_LOGPROBS {
            return Err(bad(
                Some(key),
                format!("'{key}' must be at most {MAX_TOP_LOGPROBS}, got {top_logprobs}"),
            ));
        }
        if chat && top_logprobs > 0 && !logprobs {
            return Err(bad(Some(key), "'top_logprobs' needs 'logprobs': true"));
        }
        let lcm = match req.get("keel").and_then(|k| k.get("lcm")) {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(LcmConfig::from_json(v, "keel.lcm").map_err(|e| bad(Some("keel"), format!("{e:#}")))?)
            }
        };
        let include_usage =
            req.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool);
        Ok(Params {
            max_tokens: count("max_tokens")?.or(count("max_completion_tokens")?),
            sampler,
            stop,
            logprobs,
            top_logprobs,
            stream: flag("stream")?,
            include_usage: include_usage.unwrap_or(false),
            lcm,
        })
    }
}

/// Where the text may be sent up to: short of any tail that could begin a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    for stop in stops {
        for k in (1..stop.len()).rev() {
            if stop.is_char_boundary(k) && text.ends_with(&stop[..k]) {
                end = end.min(text.len() - k);
                break;
            }
        }
    }
    end
}

/// Whether the client has closed its side (a read would give end of file).
fn peer_closed(socket: &TcpStream) -> bool {
    let mut byte = [0u8];
    let _ = socket.set_nonblocking(true);
    let closed = matches!(socket.peek(&mut byte), Ok(0));
    let _ = socket.set_nonblocking(false);
    closed
}

/// A generated token as `logprobs` reports it.
struct TokenLogprob {
    id: u32,
    /// Its log-probability under the model (the raw logits, whatever the sampler did).
    logprob: f32,
    /// The most likely tokens at its position with their log-probabilities, best first.
    top: Vec<(u32, f32)>,
}

/// The model's distribution at each generated position for `top_logprobs`: a second session
/// fed the prompt and then each pick, as the generation saw them (LCM included).
struct Alternatives<'m> {
    session: Session<'m>,
    /// Logits of the position the next pick is made at.
    logits: Vec<f32>,
    n: usize,
}

impl<'m> Alternatives<'m> {
    fn new(
        ready: &'m Ready,
        prompt: &[u32],
        max_tokens: usize,
        lcm: Option<&LcmConfig>,
        n: usize,
    ) -> Result<Self> {
        let mut session = Session::new(ready.gpu, &ready.gpu_model, prompt.len() + max_tokens, lcm)?;
        let logits = session.feed(prompt, None)?.last_logits;
        Ok(Alternatives { session, logits, n })
    }

    /// The alternatives at the current position; then moves past `id`.
    fn next(&mut self, id: u32) -> Result<Vec<(u32, f32)>> {
        let top = top_logprobs(&self.logits, self.n);
        // The last position's successor is never asked for (and has no room in the cache).
        if self.session.len < self.session.cache.len {
            self.logits = self.session.feed(&[id], None)?.last_logits;
        }
        Ok(top)
    }
}

/// The `n` largest entries of log-softmax(`logits`) as (id, log-probability), best first,
/// ties to the lower id.
fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + logits.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
    let better = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(order.len());
    if n > 0 {
        order.select_nth_unstable_by(n - 1, better);
        order.truncate(n);
        order.sort_by(better);
    }
    order.into_iter().map(|i| (i, (logits[i as usize] as f64 - lse) as f32)).collect()
}

/// OpenAI's `logprobs` object of `tokens`: chat's `content` list, or a completion's parallel
/// lists with each token's offset in the text, counted from `offset` (a stream chunk's start).
fn logprob_json(
    tok: &crate::tokenize::Tokenizer,
    tokens: &[TokenLogprob],
    chat: bool,
    offset: usize,
) -> Value {
    let text = |id: u32| tok.decode(&[id]).unwrap_or_default();
    if chat {
        let entry = |id: u32, lp: f32| {
            let t = text(id);
            json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
        };
        let content: Vec<Value> = tokens
            .iter()
            .map(|t| {
                let mut e = entry(t.id, t.logprob);
                e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                e
            })
            .collect();
        json!({"content": content})
    } else {
        let texts: Vec<String> = tokens.iter().map(|t| text(t.id)).collect();
        let offsets: Vec<usize> = texts
            .iter()
            .scan(offset, |at, t| {
                *at += t.len();
                Some(*at - t.len())
            })
            .collect();
        // Alternatives were asked for where a token has them (every token has at least one).
        let top = tokens.iter().any(|t| !t.top.is_empty()).then(|| {
            tokens
                .iter()
                .map(|t| {
                    t.top.iter().map(|&(id, lp)| (text(id), json!(lp))).collect::<serde_json::Map<_, _>>()
                })
                .collect::<Vec<_>>()
        });
        json!({"tokens": texts, "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
               "top_logprobs": top, "text_offset": offsets})
    }
}

/// One response being written: whole, or as server-sent events.
struct Output<'s> {
    chat: bool,
    stream: bool,
    id: String,
    model: String,
    created: u64,
    socket: &'s mut TcpStream,
}

impl Output<'_> {
    fn object(&self) -> &'static str {
        match (self.chat, self.stream) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    fn envelope(&self, choices: Value) -> Value {
        json!({"id": self.id, "object": self.object(), "created": self.created, "model": self.model, "choices": choices})
    }

    fn whole(&self, text: &str, finish: &str, logprobs: Option<Value>, usage: Value) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish})
        };
        let mut v = self.envelope(json!([choice]));
        v["usage"] = usage;
        v
    }

    fn start(&mut self) -> std::io::Result<()> {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
        self.socket.write_all(head.as_bytes())?;
        if self.chat {
            let first = self.envelope(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            );
            self.event(&first)?;
        }
        Ok(())
    }

    fn chunk(&mut self, piece: &str, logprobs: Option<Value>, finish: Option<&str>) -> std::io::Result<()> {
        let choice = if self.chat {
            let delta = if piece.is_empty() { json!({}) } else { json!({"content": piece}) };
            json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": piece, "logprobs": logprobs, "finish_reason": finish})
        };
        let v = self.envelope(json!([choice]));
        self.event(&v)
    }

    /// The rest of the text (with its tokens' `logprobs`), the finish reason, the usage.
    fn finish(
        &mut self,
        rest: &str,
        logprobs: Option<Value>,
        finish: &str,
        usage: Option<Value>,
    ) -> std::io::Result<()> {
        if rest.is_empty() {
            self.chunk("", logprobs, Some(finish))?;
        } else {
            self.chunk(rest, logprobs, None)?;
            self.chunk("", None, Some(finish))?;
        }
        if let Some(usage) = usage {
            let mut v = self.envelope(json!([]));
            v["usage"] = usage;
            self.event(&v)?;
        }
        self.socket.write_all(b"data: [DONE]\n\n")?;
        self.socket.flush()
    }

    fn event(&mut self, v: &Value) -> std::io::Result<()> {
        self.socket.write_all(format!("data: {v}\n\n").as_bytes())?;
        self.socket.flush()
    }
}

/// Standard base64 (with padding) of the little-endian bytes of `values`.
fn base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            let c = if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] } else { b'=' };
            out.push(c as char);
        }
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_may_begin_a_stop_string_is_held_back() {
        let stops = vec!["\nUser:".to_string(), "END".to_string()];
        assert_eq!(held_back("Hello", &stops), 5);
        assert_eq!(held_back("Hello\nUs", &stops), 5);
        assert_eq!(held_back("Hello E", &stops), 6);
        assert_eq!(held_back("Hello EN", &stops), 6);
        assert_eq!(held_back("", &stops), 0);
    }

    #[test]
    fn top_logprobs_are_the_log_softmax_best_first() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let lse = logits.iter().map(|&z| (z as f64).exp()).sum::<f64>().ln();
        let top = top_logprobs(&logits, 3);
        let want = [(1u32, 3.0 - lse), (3, 3.0 - lse), (0, 1.0 - lse)];
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 0], "ties to the lower id");
        for (&(_, got), (_, want)) in top.iter().zip(want) {
            assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(top_logprobs(&logits, 9).len(), 5);
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        // 1.0f32 is 00 00 80 3f: "AACAPw==".
        assert_eq!(super::base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(super::base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
    }

    #[test]
    fn errors_have_openais_shape() {
        let v: Value = serde_json::from_str(&bad(Some("stop"), "no").body()).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "no", "type": "invalid_request_error", "param": "stop", "code": null}})
        );
    }
}
