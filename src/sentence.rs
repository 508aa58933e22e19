//! Sentence embeddings from an encoder (BertModel, e.g. all-MiniLM-L6-v2), run by Keel's own
//! kernels: the encoder's last states, mean-pooled over the tokens and L2-normalised, as
//! sentence-transformers' Transformer → Pooling (mean) → Normalize modules do. The independent
//! judge of `compare`'s topic-drift metrics.

use crate::gpu::{Gpu, Step};
pub use crate::metrics::drift::cosine;
use crate::model::{self, GpuModel};
use crate::tokenize::Tokenizer;
use anyhow::{bail, Result};
use std::path::Path;

/// Tokens per text, as sentence-transformers' `max_seq_length` of all-MiniLM-L6-v2: longer
/// texts are cut there (their embedding reads the first 256 tokens).
pub const MAX_TOKENS: usize = 256;

/// An encoder on the GPU with its tokenizer.
pub struct SentenceEncoder {
    model: GpuModel,
    tokenizer: Tokenizer,
    max_tokens: usize,
}

impl SentenceEncoder {
    /// Loads the encoder at `path` (config.json + safetensors + tokenizer.json) onto the
    /// process-wide GPU. A model that is not an encoder is refused.
    pub fn load(path: &Path) -> Result<SentenceEncoder> {
        let loaded = model::load(path)?;
        if loaded.config.causal {
            bail!(
                "{}: {:?} is a language model, not a sentence encoder (BertModel)",
                path.display(),
                loaded.config.arch
            );
        }
        let gpu = Gpu::shared()?;
        let max_tokens = MAX_TOKENS.min(loaded.config.max_positions);
        let model = GpuModel::upload(gpu, &loaded)?;
        Ok(SentenceEncoder { model, tokenizer: loaded.info.tokenizer, max_tokens })
    }

    /// Width of an embedding.
    pub fn dim(&self) -> usize {
        self.model.config.hidden
    }

    /// The token ids the encoder reads for `text`: the tokenizer's special tokens included
    /// ([CLS] … [SEP]), cut to [`MAX_TOKENS`] keeping the final [SEP], as transformers'
    /// truncation does.
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text)?;
        if ids.len() > self.max_tokens {
            let last = *ids.last().expect("non-empty");
            ids.truncate(self.max_tokens - 1);
            ids.push(last);
        }
        if ids.is_empty() {
            bail!("the text encodes to no tokens");
        }
        Ok(ids)
    }

    /// The unit-length embedding of `text`.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.tokens(text)?;
        let states = self.states(&ids)?;
        Ok(mean_pool_normalized(&states, self.dim()))
    }

    /// The encoder's last states, `[tokens, hidden]`, of one sequence (all in one pass:
    /// attention is bidirectional).
    fn states(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let (m, n) = (&self.model, ids.len());
        let gpu = m.gpu();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= m.config.vocab) {
            bail!("token id {bad} is outside the encoder's vocabulary of {}", m.config.vocab);
        }
        // The cache holds exactly this sequence: the bidirectional kernel attends to all of it.
        let cache = m.new_cache(gpu, 1, n)?;
        let scratch = m.scratch(gpu, n)?;
        let rows: Vec<u32> = (0..n as u32).flat_map(|p| [0, p]).collect();
        gpu.write_u32(&scratch.ids, ids);
        gpu.write_u32(&scratch.row_table, &rows);
        let mut step = Step::new(gpu);
        m.record_blocks(&mut step, &scratch, &cache, (&[n], false), None, &mut |_, _, _| {});
        step.submit()?;
        gpu.read_f32_range(&scratch.x, 0, n * m.config.hidden)
    }
}

/// The mean of the rows of `states` (`[tokens, dim]`), scaled to unit length (a zero mean
/// stays zero, as torch's `normalize` with its epsilon leaves it).
pub fn mean_pool_normalized(states: &[f32], dim: usize) -> Vec<f32> {
    let n = states.len() / dim;
    let mut mean = vec![0.0f64; dim];
    for row in states.chunks_exact(dim) {
        mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt().max(1e-12);
    mean.iter().map(|m| (m / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_averages_rows_then_normalizes() {
        let states = [1.0, 0.0, 3.0, 4.0];
        let e = mean_pool_normalized(&states, 2);
        // Mean (2, 2) → (1/√2, 1/√2).
        assert!((e[0] - 0.5f32.sqrt()).abs() < 1e-7 && (e[1] - 0.5f32.sqrt()).abs() < 1e-7);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(mean_pool_normalized(&[0.0, 0.0], 2), [0.0, 0.0]);
    }
}
