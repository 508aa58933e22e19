//! One entry point per parser of outside bytes, shared by the fuzz targets and by
//! `tests/fuzz_regressions.rs` (which includes this file), so a kept input runs through
//! exactly what the fuzzer ran. Each returns the parser's verdict; none may panic.

use anyhow::{anyhow, Result};
use keel::chat::ChatTemplate;
use keel::model::{adapter, gguf, load};
use keel::modulate::{self, LcmConfig};
use keel::tokenize::Tokenizer;
use keel::train::data::TrainData;

/// A tokenizer for the text path of the data reader: whitespace words over a tiny vocabulary.
const WORDS_TOKENIZER: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
    "post_processor": null, "decoder": null,
    "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "the": 1, "a": 2, ".": 3}, "unk_token": "<unk>"}}"#;

/// The model-file layers a fuzzed config is checked against (as `validate` would be).
const LAYERS: usize = 30;

fn text(data: &[u8]) -> Result<&str> {
    std::str::from_utf8(data).map_err(|e| anyhow!("not UTF-8 ({e})"))
}

pub fn safetensors(data: &[u8]) -> Result<()> {
    load::read_safetensors(data, "fuzz.safetensors").map(drop)
}

pub fn shard_index(data: &[u8]) -> Result<()> {
    load::parse_shard_index(data, "fuzz.index.json").map(drop)
}

/// Header, metadata and tensor table, then (if those parse) the conversion to Hugging Face
/// tensors with dequantization, and the tokenizer built from the vocabulary.
pub fn gguf(data: &[u8]) -> Result<()> {
    let file = gguf::parse(data)?;
    gguf::tokenizer_json(&file)?;
    gguf::to_hf(data).map(drop)
}

/// The page's streaming reader: the first byte picks the chunk size (1 to 256 bytes), the rest
/// is the file, pushed chunk by chunk, then each tensor's conversion. Where the whole-file
/// conversion ([`gguf`]'s) accepts the file too, both must give the same tensors (the reader
/// hands them on in data order; compared by name). A disagreement panics: a finding.
pub fn gguf_stream(data: &[u8]) -> Result<()> {
    let Some((&mode, file)) = data.split_first() else { return Ok(()) };
    let chunk = usize::from(mode) + 1;
    let mut reader = gguf::GgufReader::new("fuzz.gguf", file.len() as u64);
    let mut streamed = Vec::new();
    for part in file.chunks(chunk) {
        reader.push(part, &mut |_, t| {
            streamed.push(t);
            Ok(())
        })?;
    }
    let header = reader.finish()?;
    let config = gguf::hf_config(&header)?;
    if let Ok((whole_config, mut whole)) = gguf::to_hf(file) {
        streamed.sort_by(|a, b| a.name.cmp(&b.name));
        whole.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(config, whole_config, "streamed and whole-file configs differ");
        let bits = |t: &keel::model::weights::HostTensor| match t.packed_words() {
            Some((f, words)) => (t.name.clone(), t.shape.clone(), Some(f), words.to_vec()),
            None => (t.name.clone(), t.shape.clone(), None, t.values().iter().map(|v| v.to_bits()).collect()),
        };
        // Bit for bit (NaN values compare unequal as numbers).
        let differ =
            streamed.len() != whole.len() || streamed.iter().zip(&whole).any(|(a, b)| bits(a) != bits(b));
        assert!(!differ, "streamed and whole-file tensors differ");
    }
    Ok(())
}

pub fn config_json(data: &[u8]) -> Result<()> {
    load::parse_config(data, "config.json").map(drop)
}

pub fn generation_config(data: &[u8]) -> Result<()> {
    load::parse_generation_config(data, "generation_config.json").map(drop)
}

/// tokenizer.json, then one encode and decode with it.
pub fn tokenizer_json(data: &[u8]) -> Result<()> {
    let tok = Tokenizer::from_json(text(data)?, "tokenizer.json")?;
    let ids = tok.encode("Once upon a time, 42 cats.")?;
    tok.decode(&ids)?;
    tok.id_bound();
    Ok(())
}

/// The first byte picks the format (odd: .jsonl, whose `{"messages"}` rows go through a small
/// chat template) and the sequence length (1 to 64).
pub fn train_data(data: &[u8]) -> Result<()> {
    static TOKENIZER: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    static TEMPLATE: std::sync::OnceLock<ChatTemplate> = std::sync::OnceLock::new();
    let Some((&mode, rest)) = data.split_first() else { return Ok(()) };
    // Parsed once: parsing it for every input took most of the target's time.
    let tok = TOKENIZER.get_or_init(|| Tokenizer::from_json(WORDS_TOKENIZER, "words").expect("valid"));
    let template = TEMPLATE.get_or_init(|| {
        let source = "{% for m in messages %}{{ m.role }} {{ m.content }} {{ eos_token }}{% endfor %}";
        ChatTemplate::new(source, vec![("eos_token".into(), "end".into())], "fuzz").expect("valid")
    });
    let seq_len = usize::from(mode >> 1) % 64 + 1;
    TrainData::from_bytes(rest.to_vec(), "fuzz.data", mode & 1 == 1, tok, Some(template), seq_len, 1000)
        .map(drop)
}

/// `--lcm-scales` and `--lcm-layers` values, one per line; a third line, once `--lcm-space`,
/// is left alone (clap checks that flag), so the kept inputs keep their meaning.
pub fn lcm_flags(data: &[u8]) -> Result<()> {
    let mut lines = text(data)?.splitn(3, '\n');
    let mut c =
        LcmConfig { scales: modulate::parse_scales(lines.next().unwrap_or(""))?, ..Default::default() };
    c.layers = Some(modulate::parse_layers(lines.next().unwrap_or(""))?);
    c.validate(LAYERS)
}

/// An `--lcm-config` file, then the same checks the CLI makes.
pub fn lcm_config(data: &[u8]) -> Result<()> {
    let v = serde_json::from_slice(data)?;
    LcmConfig::from_json(&v, "lcm.json")?.validate(LAYERS)
}

pub fn adapter_config(data: &[u8]) -> Result<()> {
    adapter::parse_adapter_config(text(data)?, "adapter_config.json").map(drop)
}

/// A parser's entry point: its verdict on some bytes.
pub type Entry = fn(&[u8]) -> Result<()>;

/// Every target by name (the name of its fuzz binary and of its kept-inputs folder).
pub const TARGETS: &[(&str, Entry)] = &[
    ("safetensors", safetensors),
    ("shard_index", shard_index),
    ("gguf", gguf),
    ("gguf_stream", gguf_stream),
    ("config_json", config_json),
    ("generation_config", generation_config),
    ("tokenizer_json", tokenizer_json),
    ("train_data", train_data),
    ("lcm_flags", lcm_flags),
    ("lcm_config", lcm_config),
    ("adapter_config", adapter_config),
];
