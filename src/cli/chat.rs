//! `keel template`, `keel chat`, and the chat-template plumbing that `generate --messages`, `chat` and the
//! API share: finding the model's template, rendering a conversation and encoding it.

use super::{upload, LcmArgs, ModelArg, SamplingArgs};
pub use crate::chat::render;
use crate::chat::{self, ChatTemplate};
use crate::generate::{self, GenerateOptions};
use crate::model::ModelInfo;
use crate::tokenize::TextStream;
use anyhow::{Context, Result};
use clap::Args;
use rustyline::error::ReadlineError;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// `--chat-template FILE`, for models without a template of their own.
#[derive(Args, Clone, Default)]
pub struct TemplateArg {
    /// A Jinja chat template file, used instead of the model's own
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
}

impl TemplateArg {
    /// The template for `model`: `--chat-template` if given, else the model's own.
    pub fn load(&self, model: &ModelInfo) -> Result<ChatTemplate> {
        let tok = &model.tokenizer;
        ChatTemplate::for_model_or_file(&model.path, self.chat_template.as_deref(), &|id| tok.token_text(id))
    }
}

#[derive(Args)]
pub struct TemplateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// A JSON file: an array of {"role", "content"} messages (or {"messages": [...], "tools": [...]})
    #[arg(long)]
    messages: PathBuf,
    /// Leave out the assistant turn's opening (add_generation_prompt=false)
    #[arg(long)]
    no_generation_prompt: bool,
    #[command(flatten)]
    template: TemplateArg,
    /// Print {"text", "ids"} (ids: the text's tokens, no special tokens added)
    #[arg(long)]
    json: bool,
}

/// A conversation read from a `--messages` file: (messages, tools).
pub fn read_messages(path: &Path) -> Result<(Vec<Value>, Option<Value>)> {
    let bytes = std::fs::read(path).with_context(|| format!("--messages {}: cannot read", path.display()))?;
    chat::parse_messages(&bytes, &format!("--messages {}", path.display()))
}

/// The ids that end a reply (see [`ChatTemplate::stop_ids`]).
pub fn stop_ids(template: &ChatTemplate, model: &ModelInfo) -> Vec<u32> {
    template.stop_ids(&model.config.eos, &model.tokenizer)
}

pub fn template(a: TemplateArgs) -> Result<()> {
    let (messages, tools) = read_messages(&a.messages)?;
    let model = crate::model::load(&crate::pull::resolve_model(a.model.model.as_deref())?)?;
    let template = a.template.load(&model)?;
    let (text, ids) = render(&template, &model, &messages, tools.as_ref(), !a.no_generation_prompt)?;
    if a.json {
        println!("{}", json!({"text": text, "ids": ids}));
    } else {
        print!("{text}");
    }
    Ok(())
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArg,
    /// A system message opening the conversation
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    lcm: LcmArgs,
    #[command(flatten)]
    template: TemplateArg,
}

/// `keel chat`: read a line, answer it through the template, stream the reply. Each turn
/// renders the whole conversation again (no cache is kept between turns).
pub fn chat(a: ChatArgs, adapter: &Option<String>) -> Result<()> {
    let lcm = a.lcm.config()?;
    let path = crate::pull::resolve_model(a.model.model.as_deref())?;
    let t0 = Instant::now();
    let host = crate::model::open(&path)?;
    let template = a.template.load(&host)?;
    let sampler = a.sampling.config(&host)?;
    if let Some(c) = &lcm {
        c.validate(host.config.layers)?;
    }
    let m = upload(host, adapter, a.model.weights(), t0)?;
    let (tok, ctx, eos) = (&m.host.tokenizer, m.host.config.max_positions, stop_ids(&template, &m.host));
    // Ctrl-C during a reply stops the reply; at the prompt the line editor sees it as a key.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("cannot catch Ctrl-C")?;
    let mut editor = rustyline::DefaultEditor::new().context("cannot open the line editor")?;
    let opening: Vec<Value> = a.system.iter().map(|s| json!({"role": "system", "content": s})).collect();
    let mut messages = opening.clone();
    let mut lcm_on = lcm.is_some();
    eprintln!(
        "chatting with {} (/reset, /lcm on|off; Ctrl-C stops a reply, Ctrl-D leaves)",
        m.host.path.display()
    );
    let mut stdout = std::io::stdout();
    loop {
        let line = match editor.readline("> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(e).context("reading the next line"),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        match line {
            "/reset" => {
                messages.clone_from(&opening);
                println!("(conversation cleared)");
                continue;
            }
            "/lcm on" if lcm.is_none() => {
                println!("(no LCM setting: start keel chat with LCM flags, e.g. --lcm-gamma 0.05)");
                continue;
            }
            "/lcm on" | "/lcm off" => {
                lcm_on = line == "/lcm on";
                println!("(LCM {})", if lcm_on { "on" } else { "off" });
                continue;
            }
            _ if line.starts_with('/') => {
                println!("(commands: /reset, /lcm on, /lcm off)");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line}));
        let prompt = match render(&template, &m.host, &messages, None, true) {
            Ok((_, ids)) if ids.len() + a.max_tokens <= ctx => ids,
            Ok((_, ids)) => {
                println!("(the conversation, {} tokens, leaves no room for a reply in the context of {ctx}: /reset)", ids.len());
                messages.pop();
                continue;
            }
            Err(e) => {
                println!("({e:#})");
                messages.pop();
                continue;
            }
        };
        let opts = GenerateOptions {
            max_tokens: a.max_tokens,
            sampler: sampler.clone(),
            eos: eos.clone(),
            lcm: if lcm_on { lcm.clone() } else { None },
        };
        interrupted.store(false, Ordering::SeqCst);
        let (mut reply, mut pieces) = (String::new(), TextStream::new(tok));
        let result = generate::generate(m.gpu, &m.gpu_model, &prompt, &opts, &mut |id| {
            if interrupted.load(Ordering::SeqCst) {
                anyhow::bail!("interrupted");
            }
            if !eos.contains(&id) {
                let piece = pieces.push(id)?;
                stdout.write_all(piece.as_bytes())?;
                stdout.flush()?;
                reply.push_str(&piece);
            }
            Ok(())
        });
        println!();
        match result {
            Err(_) if interrupted.load(Ordering::SeqCst) => println!("(stopped)"),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        messages.push(json!({"role": "assistant", "content": reply}));
    }
}
