//! The Hugging Face tokenizer.json of a GGUF's own vocabulary.

use anyhow::{anyhow, bail, ensure, Result};
use serde_json::{json, Map, Value};

use super::parse::GgufFile;

/// Builds a Hugging Face tokenizer.json for byte-level BPE ("gpt2") vocabularies;
/// Ok(None) for other tokenizer models.
pub fn tokenizer_json(file: &GgufFile) -> Result<Option<String>> {
    if file.str("tokenizer.ggml.model")? != Some("gpt2") {
        return Ok(None);
    }
    let tokens = file
        .str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| anyhow!("GGUF metadata 'tokenizer.ggml.tokens' is missing"))?;
    let merges = file
        .str_array("tokenizer.ggml.merges")?
        .ok_or_else(|| anyhow!("GGUF metadata 'tokenizer.ggml.merges' is missing"))?;
    let merges = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => bail!("GGUF merge '{m}' is not two space-separated tokens"),
        })
        .collect::<Result<Vec<_>>>()?;

    // As in transformers' reading of a GGUF, a repeated token keeps its last id.
    let vocab: Map<String, Value> =
        tokens.iter().enumerate().map(|(id, &t)| (t.to_string(), json!(id))).collect();

    // llama.cpp token types: 3 = control (special), 4 = user-defined (added, not special).
    let mut added_tokens = Vec::new();
    if let Some(types) = file.array("tokenizer.ggml.token_type")? {
        ensure!(
            types.len() == tokens.len(),
            "GGUF metadata 'tokenizer.ggml.token_type' has {} entries for {} tokens",
            types.len(),
            tokens.len()
        );
        for (id, (t, &content)) in types.iter().zip(&tokens).enumerate() {
            let special = match t.as_uint() {
                Some(3) => true,
                Some(4) => false,
                _ => continue,
            };
            added_tokens.push(json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special,
            }));
        }
    }

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(file.str("tokenizer.ggml.pre")?)?,
        "post_processor": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true,
        },
        "decoder": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true,
        },
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    Ok(Some(tokenizer.to_string()))
}

/// Qwen2's split, from its Hugging Face tokenizer.json: like GPT-2's, but contractions are
/// case-insensitive and every digit stands alone.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer for llama.cpp's `tokenizer.ggml.pre`. Only splits known to match
/// llama.cpp are produced; an unknown one is an error rather than a silent mis-split.
fn pre_tokenizer(pre: Option<&str>) -> Result<Value> {
    let gpt2 = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true,
    });
    Ok(match pre {
        None | Some("gpt2") => gpt2,
        // SmolLM splits every digit on its own before the GPT-2 split.
        Some("smollm") => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, gpt2],
        }),
        Some("qwen2") => json!({
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split", "pattern": {"Regex": QWEN2_SPLIT},
                    "behavior": "Isolated", "invert": false,
                },
                {
                    "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                    "use_regex": false,
                },
            ],
        }),
        Some(other) => {
            bail!("GGUF tokenizer.ggml.pre '{other}' is not supported (gpt2, smollm, qwen2 are)")
        }
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::parse;
    use crate::model::gguf::test_files::{fixture, Builder};

    #[test]
    fn tokenizer_json_matches_fixture_tokenizer() {
        let Some(bytes) = fixture() else { return };
        let built: Value =
            serde_json::from_str(&tokenizer_json(&parse(bytes).unwrap()).unwrap().unwrap()).unwrap();
        let Some(path) = crate::testing::fixture("models/smollm2-135m-instruct/tokenizer.json") else {
            return;
        };
        let text = std::fs::read_to_string(path).unwrap();
        let reference: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(built["model"]["vocab"], reference["model"]["vocab"]);
        let merges = |v: &Value| -> Vec<String> {
            let items = v["model"]["merges"].as_array().unwrap();
            let pair = |m: &Value| match m {
                Value::String(s) => s.clone(),
                pair => format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
            };
            items.iter().map(pair).collect()
        };
        assert_eq!(merges(&built).len(), 48900);
        assert_eq!(merges(&built), merges(&reference));
        assert_eq!(built["added_tokens"], reference["added_tokens"]);
        assert_eq!(built["pre_tokenizer"], reference["pre_tokenizer"]);
        assert_eq!(built["decoder"], reference["decoder"]);
        assert_eq!(built["model"]["type"], "BPE");
    }

    #[test]
    fn tokenizer_json_only_for_gpt2_models() {
        let spm = Builder::default().str("tokenizer.ggml.model", "llama").build();
        assert_eq!(tokenizer_json(&parse(&spm).unwrap()).unwrap(), None);
        let tiny = Builder::default()
            .str("tokenizer.ggml.model", "gpt2")
            .str("tokenizer.ggml.pre", "qwen2")
            .strs("tokenizer.ggml.tokens", &["a", "b", "ab"])
            .strs("tokenizer.ggml.merges", &["a b"])
            .build();
        let json: Value =
            serde_json::from_str(&tokenizer_json(&parse(&tiny).unwrap()).unwrap().unwrap()).unwrap();
        assert_eq!(json["model"]["vocab"], json!({"a": 0, "b": 1, "ab": 2}));
        assert_eq!(json["model"]["merges"], json!([["a", "b"]]));
        assert_eq!(json["pre_tokenizer"]["pretokenizers"][0]["type"], "Split");
        let odd = Builder::default()
            .str("tokenizer.ggml.model", "gpt2")
            .str("tokenizer.ggml.pre", "mystery")
            .strs("tokenizer.ggml.tokens", &["a"])
            .strs("tokenizer.ggml.merges", &[])
            .build();
        let msg = tokenizer_json(&parse(&odd).unwrap()).unwrap_err().to_string();
        assert!(msg.contains("'mystery' is not supported"), "{msg}");
    }
}
