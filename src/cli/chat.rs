//! `keel template` and the chat-template plumbing that `generate --messages`, `chat` and the
//! API share: finding the model's template, rendering a conversation and encoding it.

use super::ModelArg;
use crate::chat::{self, ChatTemplate};
use crate::model::LoadedModel;
use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// `--chat-template FILE`, for models without a template of their own.
#[derive(Args, Clone, Default)]
pub struct TemplateArg {
    /// A Jinja chat template file, used instead of the model's own
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
}

impl TemplateArg {
    /// The template for `model`: `--chat-template` if given, else the model's own.
    pub fn load(&self, model: &LoadedModel) -> Result<ChatTemplate> {
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

/// The conversation rendered and encoded as the model's prompt: (text, ids).
pub fn render(
    template: &ChatTemplate,
    model: &LoadedModel,
    messages: &[Value],
    tools: Option<&Value>,
    add_generation_prompt: bool,
) -> Result<(String, Vec<u32>)> {
    let text = template.render(messages, add_generation_prompt, tools)?;
    let ids = model.tokenizer.encode_plain(&text)?;
    Ok((text, ids))
}

/// The ids that end a reply: the model's EOS ids and the template's `eos_token` (a chat
/// model's end-of-turn token, which generation_config.json does not always list).
pub fn stop_ids(template: &ChatTemplate, model: &LoadedModel) -> Vec<u32> {
    let mut eos = model.config.eos.clone();
    if let Some(id) = template.special_token("eos_token").and_then(|t| model.tokenizer.token_id(t)) {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    eos
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
