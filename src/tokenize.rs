//! The tokenizer: Hugging Face's tokenizer.json through the `tokenizers` crate (the same
//! file natively and in wasm).

use anyhow::{anyhow, Result};

/// A Hugging Face tokenizer (tokenizer.json, or one synthesized from a GGUF's vocabulary).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The tokenizer.json text, kept to write beside fine-tuned checkpoints unchanged.
    json: String,
}

impl Tokenizer {
    /// Parses tokenizer.json text; `file` names it in errors.
    pub fn from_json(json: &str, file: &str) -> Result<Tokenizer> {
        // The syntax first: the tokenizers crate panics (`expect("Helper")`) rather than
        // erring on broken JSON inside "decoder"; from a parsed value it cannot. (Found by
        // the tokenizer_json fuzz target; see docs/robustness.md.)
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| anyhow!("{file}: not valid JSON ({e})"))?;
        let mut inner: tokenizers::Tokenizer =
            serde_json::from_value(value).map_err(|e| anyhow!("{file}: not a valid tokenizer.json ({e})"))?;
        // A text is encoded whole and unpadded, as transformers' tokenizer(text) does by default
        // (all-MiniLM-L6-v2's file pads to 128 and truncates there; its users cut at 256).
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| anyhow!("{file}: {e}"))?;
        Ok(Tokenizer { inner, json: json.to_string() })
    }

    /// The tokenizer.json text this tokenizer was made from.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Encodes with the post-processor's special tokens (BOS etc.), as transformers does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes without adding special tokens: a chat template's text already holds them
    /// (transformers' `apply_chat_template(tokenize=True)`).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Tokenizer::encode_plain`] with each token's byte range in `text`.
    pub fn encode_plain_with_offsets(&self, text: &str) -> Result<Vec<(u32, (usize, usize))>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().iter().copied().zip(enc.get_offsets().iter().copied()).collect())
    }

    /// The id of a token given by its text (e.g. a special token), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Decodes, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("tokenizer: {e}"))
    }

    /// The largest id the tokenizer can produce, plus one.
    pub fn id_bound(&self) -> usize {
        // Ids may have gaps, so this is the largest id, not the vocabulary's size.
        self.inner.get_vocab(true).values().max().map_or(0, |&id| id as usize + 1)
    }

    /// The token's own text in the vocabulary (empty for an unknown id).
    pub fn token_text(&self, id: u32) -> String {
        self.inner.id_to_token(id).unwrap_or_default()
    }
}

/// The tokenizers crate's streaming decoder for [`Tokenizer`]'s model type.
type DecodeStream<'t> = tokenizers::DecodeStream<
    't,
    tokenizers::ModelWrapper,
    tokenizers::NormalizerWrapper,
    tokenizers::PreTokenizerWrapper,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

/// Turns generated ids, one at a time, into text pieces to print, holding back bytes that do
/// not yet form a whole character. Each step decodes only the last few ids (the tokenizers
/// crate's `DecodeStream`), so a long generation costs linear, not quadratic, time.
pub struct TextStream<'t> {
    inner: DecodeStream<'t>,
}

impl<'t> TextStream<'t> {
    /// An empty stream decoding with `tok`.
    pub fn new(tok: &'t Tokenizer) -> Self {
        TextStream { inner: tok.inner.decode_stream(true) }
    }

    /// Adds one id; returns the new text that is safe to print (empty while a character is
    /// incomplete or the id is a special token).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let piece = self.inner.step(id).map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(piece.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed pieces join to the whole decode, on a byte-level BPE vocabulary with
    /// multi-byte characters split across tokens.
    #[test]
    fn streamed_pieces_join_to_the_decoded_text() {
        let Some(dir) = crate::testing::model("tiny-qwen2") else { return };
        let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
        let tok = Tokenizer::from_json(&json, "tokenizer.json").unwrap();
        let text = "Streaming: naïve café, 日本語, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and emoji 🙂 — done.";
        let ids = tok.encode(text).unwrap();
        let mut stream = TextStream::new(&tok);
        let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
        assert_eq!(pieces.concat(), tok.decode(&ids).unwrap());
        assert!(pieces.iter().filter(|p| p.is_empty()).count() > 0, "some bytes were held back: {pieces:?}");
    }
}
