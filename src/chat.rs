//! Chat templates: a model's own Jinja template (tokenizer_config.json's `chat_template`, or a
//! GGUF's `tokenizer.chat_template`) rendered with minijinja as transformers renders it
//! (`apply_chat_template`): the same variables (`messages`, `add_generation_prompt`, the special
//! tokens, `raise_exception`, `strftime_now`, `tools`), Jinja's `trim_blocks`/`lstrip_blocks`,
//! Python's string methods (minijinja-contrib's pycompat) and Python's `json.dumps` for `tojson`.

use crate::model::ModelInfo;
use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// The name a template is known by in errors and in minijinja.
const TEMPLATE_NAME: &str = "chat_template";

/// A parsed chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from (a file name), for errors.
    pub origin: String,
    /// The special tokens by their tokenizer_config.json names (`bos_token`, `eos_token`, ...).
    pub special_tokens: Vec<(String, String)>,
}

impl ChatTemplate {
    /// Parses `source`; `origin` names it in errors.
    pub fn new(source: &str, special_tokens: Vec<(String, String)>, origin: &str) -> Result<Self> {
        let mut env = Environment::new();
        // transformers' environment: trim_blocks and lstrip_blocks on, loop controls allowed.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| anyhow!("{origin}: {e}"))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| strftime(&format, unix_now()));
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| anyhow!("{origin}: the chat template does not parse: {}", describe(&e)))?;
        Ok(ChatTemplate { env, origin: origin.to_string(), special_tokens })
    }

    /// The template's special token `name` (e.g. `eos_token`), if it has one.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_str())
    }

    /// The ids that end a reply: the model's `eos` ids and the template's `eos_token` (a chat
    /// model's end-of-turn token, which generation_config.json does not always list).
    pub fn stop_ids(&self, eos: &[u32], tokenizer: &crate::tokenize::Tokenizer) -> Vec<u32> {
        let mut ids = eos.to_vec();
        if let Some(id) = self.special_token("eos_token").and_then(|t| tokenizer.token_id(t)) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The conversation as the model's prompt text. `tools`: the JSON tool list, when given.
    pub fn render(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        tools: Option<&Json>,
    ) -> Result<String> {
        let mut ctx = serde_json::Map::new();
        for (name, token) in &self.special_tokens {
            ctx.insert(name.clone(), Json::String(token.clone()));
        }
        ctx.insert("messages".into(), Json::Array(messages.to_vec()));
        ctx.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        if let Some(tools) = tools {
            ctx.insert("tools".into(), tools.clone());
        }
        let template = self.env.get_template(TEMPLATE_NAME).expect("added in new");
        template
            .render(Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| anyhow!("{}: the chat template refused the messages: {}", self.origin, describe(&e)))
    }

    /// The template of the model at `path` (a folder, or a .gguf file): tokenizer_config.json
    /// beside it, else the GGUF's `tokenizer.chat_template`; None when neither has one.
    /// `token_text` turns a GGUF's special token ids into their text.
    pub fn for_model(path: &Path, token_text: &dyn Fn(u32) -> String) -> Result<Option<ChatTemplate>> {
        let (dir, gguf) = if path.is_file() {
            (path.parent().unwrap_or(Path::new(".")).to_path_buf(), Some(path.to_path_buf()))
        } else {
            (path.to_path_buf(), lone_gguf(path))
        };
        let config = dir.join("tokenizer_config.json");
        if config.is_file() {
            let bytes =
                std::fs::read(&config).with_context(|| format!("{}: cannot read", config.display()))?;
            if let Some(t) = Self::from_tokenizer_config(&bytes, &config.display().to_string())? {
                return Ok(Some(t));
            }
        }
        match gguf {
            Some(file) => Self::from_gguf(&file, token_text),
            None => Ok(None),
        }
    }

    /// The template of a tokenizer_config.json (its `chat_template`: a string, or a list of
    /// named templates of which `default` is used); None when it has none.
    pub fn from_tokenizer_config(bytes: &[u8], file: &str) -> Result<Option<ChatTemplate>> {
        let v: Json = serde_json::from_slice(bytes).map_err(|e| anyhow!("{file}: not valid JSON ({e})"))?;
        let source = match v.get("chat_template") {
            None | Some(Json::Null) => return Ok(None),
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .ok_or_else(|| anyhow!("{file}: 'chat_template' lists no template named 'default'"))?
                .to_string(),
            Some(_) => bail!("{file}: 'chat_template' must be a string or a list of named templates"),
        };
        // Special tokens are strings or AddedToken objects {"content": ...}.
        let special_tokens = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.ends_with("_token"))
            .filter_map(|(k, t)| {
                let text = t.as_str().or_else(|| t.get("content").and_then(Json::as_str))?;
                Some((k.clone(), text.to_string()))
            })
            .collect();
        Self::new(&source, special_tokens, file).map(Some)
    }

    /// The `tokenizer.chat_template` of a GGUF file, with its BOS and EOS tokens.
    fn from_gguf(file: &Path, token_text: &dyn Fn(u32) -> String) -> Result<Option<ChatTemplate>> {
        let shown = file.display().to_string();
        let header =
            read_gguf_header(file).with_context(|| format!("{shown}: cannot read its GGUF header"))?;
        Self::from_gguf_header(&header, &shown, token_text)
    }

    /// The `tokenizer.chat_template` of a parsed GGUF header (`shown`: the file, for errors).
    pub fn from_gguf_header(
        header: &crate::model::gguf::GgufFile,
        shown: &str,
        token_text: &dyn Fn(u32) -> String,
    ) -> Result<Option<ChatTemplate>> {
        let Some(crate::model::gguf::GgufValue::Str(source)) = header.metadata.get("tokenizer.chat_template")
        else {
            return Ok(None);
        };
        let mut special_tokens = Vec::new();
        for (name, key) in
            [("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")]
        {
            if let Some(id) = header.metadata.get(key).and_then(gguf_uint) {
                special_tokens.push((name.to_string(), token_text(id)));
            }
        }
        Self::new(source, special_tokens, &format!("{shown} (tokenizer.chat_template)")).map(Some)
    }

    /// [`ChatTemplate::for_model`], or the template file given with `--chat-template`, or an
    /// error saying how to give one.
    pub fn for_model_or_file(
        path: &Path,
        file: Option<&Path>,
        token_text: &dyn Fn(u32) -> String,
    ) -> Result<ChatTemplate> {
        let found = Self::for_model(path, token_text)?;
        let Some(file) = file else {
            return found.ok_or_else(|| {
                anyhow!(
                    "{}: the model has no chat template (no 'chat_template' in tokenizer_config.json nor \
                     'tokenizer.chat_template' in a GGUF); give one with --chat-template FILE",
                    path.display()
                )
            });
        };
        let source = std::fs::read(file)
            .with_context(|| format!("--chat-template {}: cannot read", file.display()))?;
        let source = String::from_utf8(source)
            .map_err(|_| anyhow!("--chat-template {}: not UTF-8 text", file.display()))?;
        // The model's special tokens still apply to a template given by hand.
        let special_tokens = found.map(|t| t.special_tokens).unwrap_or_default();
        Self::new(&source, special_tokens, &format!("--chat-template {}", file.display()))
    }
}

/// The conversation rendered and encoded as the model's prompt: (text, ids).
pub fn render(
    template: &ChatTemplate,
    model: &ModelInfo,
    messages: &[Json],
    tools: Option<&Json>,
    add_generation_prompt: bool,
) -> Result<(String, Vec<u32>)> {
    let text = template.render(messages, add_generation_prompt, tools)?;
    let ids = model.tokenizer.encode_plain(&text)?;
    Ok((text, ids))
}

/// A parsed messages file: an OpenAI-style array of `{"role", "content"}` objects, or an
/// object `{"messages": [...], "tools": [...]}`. Returns (messages, tools).
pub fn parse_messages(bytes: &[u8], file: &str) -> Result<(Vec<Json>, Option<Json>)> {
    let v: Json = serde_json::from_slice(bytes).map_err(|e| anyhow!("{file}: not valid JSON ({e})"))?;
    let (messages, tools) = match v {
        Json::Array(m) => (m, None),
        Json::Object(mut o) => match o.remove("messages") {
            Some(Json::Array(m)) => (m, o.remove("tools").filter(|t| !t.is_null())),
            _ => bail!("{file}: expected a 'messages' array"),
        },
        _ => bail!("{file}: expected a JSON array of messages or an object with 'messages'"),
    };
    check_messages(&messages).map_err(|e| anyhow!("{file}: {e}"))?;
    Ok((messages, tools))
}

/// Each message is an object with a string `role` and a `content` that is a string, a list of
/// content parts, or null (an assistant turn with tool calls).
pub fn check_messages(messages: &[Json]) -> Result<()> {
    if messages.is_empty() {
        bail!("the messages array is empty");
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Json::as_str);
        ensure_field(role.is_some(), i, "a string 'role'")?;
        let content_ok =
            matches!(m.get("content"), Some(Json::String(_) | Json::Array(_) | Json::Null) | None);
        ensure_field(content_ok, i, "'content' as a string or a list of parts")?;
    }
    Ok(())
}

fn ensure_field(ok: bool, index: usize, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        bail!("message #{index}: expected an object with {what}")
    }
}

/// A minijinja error's message with its detail and line.
fn describe(e: &Error) -> String {
    let mut text = match e.detail() {
        Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    text
}

/// The single .gguf file in a folder without config.json, as the loader picks it.
fn lone_gguf(dir: &Path) -> Option<PathBuf> {
    if dir.join("config.json").is_file() {
        return None;
    }
    let mut ggufs = std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path()));
    let first = ggufs.find(|p| p.extension().is_some_and(|e| e == "gguf"))?;
    ggufs.all(|p| p.extension().is_none_or(|e| e != "gguf")).then_some(first)
}

/// A GGUF file's header, reading more of the file until the metadata is whole.
fn read_gguf_header(file: &Path) -> Result<crate::model::gguf::GgufFile> {
    use std::io::Read;
    let mut f = std::fs::File::open(file)?;
    let size = f.metadata()?.len() as usize;
    let mut bytes = Vec::new();
    let mut want = 1 << 20;
    loop {
        let have = bytes.len();
        (&mut f).take((want - have) as u64).read_to_end(&mut bytes)?;
        if let Some(header) = crate::model::gguf::parse_header(&bytes, size)? {
            return Ok(header);
        }
        if bytes.len() == have {
            bail!("the header is incomplete");
        }
        want *= 4;
    }
}

fn gguf_uint(v: &crate::model::gguf::GgufValue) -> Option<u32> {
    use crate::model::gguf::GgufValue::*;
    match *v {
        U8(x) => Some(x.into()),
        U16(x) => Some(x.into()),
        U32(x) => Some(x),
        I32(x) => u32::try_from(x).ok(),
        U64(x) => u32::try_from(x).ok(),
        I64(x) => u32::try_from(x).ok(),
        _ => None,
    }
}

/// Jinja's `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
/// indent=indent)`, so `", "` and `": "` between items and no HTML escaping (minijinja's own
/// escapes `<`, `>`, `&` and `'`).
fn tojson(value: &Value, indent: Option<usize>, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent = indent.or(kwargs.get("indent")?);
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn python_json(v: &Json, indent: Option<usize>, depth: usize, out: &mut String) {
    let (item_sep, newline) = match indent {
        Some(n) => (",", Some(" ".repeat(n))),
        None => (", ", None),
    };
    let open = |out: &mut String, d: usize| {
        if let Some(pad) = &newline {
            out.push('\n');
            out.push_str(&pad.repeat(d));
        }
    };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i > 0 { item_sep } else { "" });
                open(out, depth + 1);
                python_json(item, indent, depth + 1, out);
            }
            open(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                out.push_str(if i > 0 { item_sep } else { "" });
                open(out, depth + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, depth + 1, out);
            }
            open(out, depth);
            out.push('}');
        }
        // Strings unescaped beyond JSON's needs (ensure_ascii=False), numbers and literals.
        other => out.push_str(&other.to_string()),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Python's `strftime` for the directives chat templates use (`%d %b %Y`, `%Y-%m-%d`, ...), in
/// UTC. Unknown directives are an error rather than a silently wrong date.
fn strftime(format: &str, unix_seconds: i64) -> Result<String, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: directive %{} is not supported",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(source: &str) -> ChatTemplate {
        let tokens = vec![("bos_token".into(), "<s>".into()), ("eos_token".into(), "</s>".into())];
        ChatTemplate::new(source, tokens, "test").unwrap()
    }

    #[test]
    fn renders_with_the_variables_transformers_passes() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}\n  {{ m.role | upper }}: {{ m.content.strip() }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}A:{% endif %}",
        );
        let messages = [json!({"role": "user", "content": "  hi "})];
        // trim_blocks drops the newline after each block tag, lstrip_blocks the indentation.
        assert_eq!(t.render(&messages, true, None).unwrap(), "<s>  USER: hi</s>\nA:");
        assert_eq!(t.render(&messages, false, None).unwrap(), "<s>  USER: hi</s>\n");
    }

    #[test]
    fn raise_exception_is_an_error_naming_the_template() {
        let t = template("{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}ok");
        let e = t.render(&[json!({"role": "robot", "content": "x"})], true, None).unwrap_err().to_string();
        assert!(
            e.starts_with("test: the chat template refused the messages: Conversations must start"),
            "{e}"
        );
        assert_eq!(t.render(&[json!({"role": "user", "content": "x"})], true, None).unwrap(), "ok");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let t = template("{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}");
        let tools = json!([{"name": "f<&>", "args": [1, "é"], "empty": {}}]);
        assert_eq!(
            t.render(&[json!({"role": "user", "content": ""})], false, Some(&tools)).unwrap(),
            "[{\"args\": [1, \"é\"], \"empty\": {}, \"name\": \"f<&>\"}]|{\n  \"args\": [\n    1,\n    \"é\"\n  ],\n  \"empty\": {},\n  \"name\": \"f<&>\"\n}"
        );
    }

    #[test]
    fn strftime_formats_utc_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "29 Feb 2024");
        assert_eq!(strftime("%A %B %m/%d %H:%M:%S %%", t).unwrap(), "Thursday February 02/29 13:05:09 %");
        assert!(strftime("%Q", t).is_err());
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn messages_files_are_checked() {
        let ok = parse_messages(br#"[{"role": "user", "content": "hi"}]"#, "m.json").unwrap();
        assert_eq!(ok.0.len(), 1);
        let with_tools =
            parse_messages(br#"{"messages": [{"role": "user", "content": "hi"}], "tools": []}"#, "m.json");
        assert_eq!(with_tools.unwrap().1, Some(json!([])));
        for (bad, want) in [
            (&b"[{"[..], "m.json: not valid JSON"),
            (b"{}", "m.json: expected a 'messages' array"),
            (b"[]", "m.json: the messages array is empty"),
            (br#"[{"content": "x"}]"#, "m.json: message #0: expected an object with a string 'role'"),
            (br#"[{"role": "user", "content": 3}]"#, "m.json: message #0: expected an object with 'content'"),
        ] {
            let e = parse_messages(bad, "m.json").unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn tokenizer_config_templates_and_tokens() {
        let config = br#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D{{ eos_token }}"}],
            "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "model_max_length": 5}"#;
        let t = ChatTemplate::from_tokenizer_config(config, "tc.json").unwrap().unwrap();
        assert_eq!(t.render(&[json!({"role": "user", "content": ""})], true, None).unwrap(), "<s>D</s>");
        assert!(ChatTemplate::from_tokenizer_config(b"{}", "tc.json").unwrap().is_none());
    }
}
