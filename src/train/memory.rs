//! The GPU memory a fine-tune will take, predicted from the model's shapes before anything is
//! allocated: `keel finetune --dry-run`, `keel bench --train --dry-run`, and the refusal of a
//! run that would not fit. Every buffer the trainer allocates is counted here by its own
//! shape (a test holds the prediction to the bytes a real run allocates); the buffers of LCM,
//! the alignment loss, HGC and CGFM are not.

use super::graph::{head_chunk_rows, ActivationMemory};
use crate::gpu::WeightFormat;
use crate::model::adapter::Lora;
use crate::model::forward::shardable;
use crate::model::layout::Weights;
use crate::model::weights::HostTensor;
use crate::model::{ModelConfig, WeightChoice};

/// What is trained: every weight (f32), or LoRA adapters of `rank` given as the (in, out)
/// sizes of one block's adapters (every block has the same).
pub enum Trained {
    Full,
    Lora { rank: usize, pairs: Vec<(usize, usize)> },
}

impl Trained {
    /// The adapters' shapes of a LoRA initialisation.
    pub fn lora(lora: &Lora) -> Trained {
        let pairs = lora.blocks.first().map_or(&[][..], |b| &b[..]);
        let pairs = pairs.iter().map(|p| (p.a.len() / lora.rank, p.slot.rows.len())).collect();
        Trained::Lora { rank: lora.rank, pairs }
    }
}

/// A fine-tune's GPU memory, in bytes, by purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes {
    /// The model's weights as the GPU holds them (packed or f32), the rotary tables.
    pub weights: u64,
    /// LoRA's A and B (0 in full fine-tuning).
    pub adapters: u64,
    /// Gradients, AdamW's two moments and the gradient-norm buffers.
    pub optimizer: u64,
    /// Everything that grows with batch × sequence: activations, backward scratch, the
    /// logits, LoRA's saved products.
    pub activations: u64,
}

impl Bytes {
    pub fn total(&self) -> u64 {
        self.weights + self.adapters + self.optimizer + self.activations
    }
}

/// A model's training memory: what does not depend on the batch, and the bytes per row
/// (token) of a micro-batch, kept or recomputed.
pub struct MemoryPlan {
    fixed: Bytes,
    per_row_keep: u64,
    per_row_recompute: u64,
    /// The widest per-row tensor (elements per row): what the binding limit caps.
    widest_row: u64,
    /// The vocabulary: one chunk of the LM head's logits is kept (graph.rs `head_chunk_rows`).
    vocab: usize,
    /// The largest weight on the GPU that one binding must hold (name, bytes); the
    /// vocabulary's tables are stored in row shards (src/gpu/sharded.rs), so one row of them.
    pub largest_weight: (String, u64),
}

/// f32 (and u32) elements.
const F32: u64 = 4;

/// Bytes of a GPU tensor of `shape` in `fmt` (buffers are at least one word).
fn tensor_bytes(shape: &[usize], fmt: WeightFormat) -> u64 {
    let bytes = match (fmt, shape) {
        (WeightFormat::F32, _) => shape.iter().product::<usize>() as u64 * F32,
        (f, &[rows, cols]) => f.words(rows, cols) as u64 * 4,
        (f, _) => panic!("a {f:?} tensor must be a matrix"),
    };
    bytes.max(4)
}

/// Bytes of the gradient-norm buffers over tensors of these sizes (src/ops/optim.rs: a
/// partial sum per 4096 elements, two range words and one norm per tensor, three more).
fn grad_norm_bytes(sizes: impl Iterator<Item = usize>) -> u64 {
    let (mut partials, mut n) = (0, 0);
    for s in sizes {
        partials += s.div_ceil(4096).max(1) as u64;
        n += 1;
    }
    (partials + 2 * n + n + 3) * F32
}

/// The (shape, stored format) of every tensor of a loaded model.
pub fn stored_formats(host: &Weights<HostTensor>) -> Weights<(Vec<usize>, WeightFormat)> {
    host.try_map(|_, t| Ok((t.shape.clone(), t.format()))).expect("cannot fail")
}

/// The (shape, f32) of every tensor of a config (`--shapes`: random f32 weights).
pub fn config_shapes(cfg: &ModelConfig) -> Weights<(Vec<usize>, WeightFormat)> {
    let (shapes, _) = crate::model::layout::hf_layout(cfg);
    shapes.try_map(|_, s| Ok((s.clone(), WeightFormat::F32))).expect("cannot fail")
}

impl MemoryPlan {
    /// `stored`: every tensor's shape and the format its file holds it in; `choice`: the
    /// `--weights` the model is uploaded with (f32 for full fine-tuning).
    pub fn new(
        cfg: &ModelConfig,
        stored: &Weights<(Vec<usize>, WeightFormat)>,
        choice: WeightChoice,
        trained: &Trained,
    ) -> MemoryPlan {
        let named = stored.named();
        let on_gpu = |name: &str, (shape, fmt): &(Vec<usize>, WeightFormat)| {
            tensor_bytes(shape, choice.gpu_format(name, shape, *fmt))
        };
        // Rotary (cos, sin) tables, and a second pair for sliding-window layers (Gemma 3).
        let local_rope = cfg.local_rope_theta.is_some() && !cfg.sliding_layers.is_empty();
        let long_rope = cfg.rope_theta.is_some() && cfg.rope_scaling.long_past().is_some();
        let rope_tables = cfg.rope_theta.is_some() as u64 + local_rope as u64 + long_rope as u64;
        let rope = rope_tables * 2 * (cfg.max_positions * (cfg.rotary_dim / 2)) as u64 * F32;
        // A tied head the choice packs gets its own copy of the embedding.
        let head_copy = match stored.lm_head {
            None if choice.gpu_format("lm_head", &stored.embed.0, stored.embed.1) != WeightFormat::F32 => {
                on_gpu("lm_head", &stored.embed)
            }
            _ => 0,
        };
        let weight_bytes = named.iter().map(|(name, t)| on_gpu(name, t)).sum::<u64>() + head_copy + rope;
        let binding_bytes = |name: &str, (shape, fmt): &(Vec<usize>, WeightFormat)| match &shape[..] {
            [_, row @ ..] if shardable(name) => on_gpu(name, &([&[1][..], row].concat(), *fmt)),
            _ => on_gpu(name, &(shape.clone(), *fmt)),
        };
        let largest_weight = named
            .iter()
            .map(|(name, t)| (name.clone(), binding_bytes(name, t)))
            .max_by_key(|(_, b)| *b)
            .unwrap_or_default();
        let (c, hd) = (cfg, cfg.head_dim);
        let (q, kv, qkv) = (c.heads * hd, c.kv_heads * hd, c.head_shape().qkv_width());
        let qk_norm = if c.qk_norm { qkv + 2 * c.heads + 2 * c.kv_heads } else { 0 };
        // Gemma 3's post-norms keep both output projections' results and their statistics.
        let post_norms = if c.post_norms { 2 * (c.hidden + 2) } else { 0 };
        // One block's saved activations (graph.rs BlockActs), per row.
        let block = 3 * c.hidden
            + 2
            + 2
            + qkv
            + q
            + 2 * kv
            + q
            + c.heads
            + c.up_width()
            + c.ffn
            + qk_norm
            + post_norms;
        // The backward pass's scratch (backward.rs BackwardBufs), the ones vector included.
        let backward = 2 * c.hidden + c.ffn + c.up_width() + 2 * q + 2 * kv + c.heads + qkv + 1;
        let backward = backward + if c.qk_norm { qkv } else { 0 };
        // The graph's own: ids, targets, the (sequence, position) table, the residual streams,
        // the final norm's output and statistics and the per-row loss (the logits: a chunk).
        let own = 1 + 1 + 2 + (c.layers + 1) * c.hidden + c.hidden + 2 + 1;
        let (adapters, optimizer, lora_rows) = match trained {
            Trained::Full => {
                let sizes = named.iter().map(|(_, (s, _))| s.iter().product::<usize>());
                let f32_bytes: u64 = sizes.clone().map(|n| (n as u64 * F32).max(4)).sum();
                (0, 3 * f32_bytes + grad_norm_bytes(sizes), 0)
            }
            Trained::Lora { rank, pairs } => {
                let sizes: Vec<usize> =
                    pairs.iter().flat_map(|&(inp, out)| [rank * inp, out * rank]).collect();
                let per_block: u64 = sizes.iter().map(|&n| n as u64 * F32).sum();
                let all = (0..c.layers).flat_map(|_| sizes.iter().copied());
                let adapters = per_block * c.layers as u64;
                // Each adapter's x·Aᵀ, saved per row, and one shared gradient of it.
                (adapters, 3 * adapters + grad_norm_bytes(all), (c.layers * pairs.len() + 1) * rank)
            }
        };
        // The norms' weight-gradient sums and the embedding gradient's scratch: a part per row
        // and a fixed part.
        let norm_sums = |rows| crate::model::backward::norm_sums_len(c, rows);
        let embed_scratch = |rows| crate::ops::embed::scratch_len(rows, c.hidden);
        let backward = backward + norm_sums(1) - norm_sums(0) + embed_scratch(1) - embed_scratch(0);
        let rows = |blocks: usize| (own + blocks * block + backward + lora_rows) as u64 * F32;
        let widest = [c.up_width(), c.ffn, qkv, c.hidden, lora_rows].into_iter().max().unwrap_or(1);
        MemoryPlan {
            fixed: Bytes {
                weights: weight_bytes,
                adapters,
                optimizer,
                activations: (norm_sums(0) + embed_scratch(0)) as u64 * F32,
            },
            per_row_keep: rows(c.layers),
            per_row_recompute: rows(1),
            widest_row: widest as u64,
            vocab: c.vocab,
            largest_weight,
        }
    }

    fn per_row(&self, memory: ActivationMemory) -> u64 {
        match memory {
            ActivationMemory::Keep => self.per_row_keep,
            ActivationMemory::Recompute => self.per_row_recompute,
        }
    }

    /// The bytes of one chunk of the LM head's logits over `rows` rows.
    fn logits(&self, rows: usize) -> u64 {
        (head_chunk_rows(rows, self.vocab) * self.vocab) as u64 * F32
    }

    /// The bytes of a run of `batch` rows of `seq_len` tokens.
    pub fn bytes(&self, (batch, seq_len): (usize, usize), memory: ActivationMemory) -> Bytes {
        let rows = batch * seq_len;
        let activations = self.fixed.activations + rows as u64 * self.per_row(memory) + self.logits(rows);
        Bytes { activations, ..self.fixed }
    }

    /// The most rows (batch × sequence) within `budget` bytes and the largest binding
    /// (`binding` bytes: no tensor may pass it); 0 when not even the weights fit.
    pub fn max_rows(&self, budget: u64, binding: u64, memory: ActivationMemory) -> u64 {
        if self.largest_weight.1 > binding {
            return 0;
        }
        let avail = budget.saturating_sub(self.fixed.total());
        let (per_row, logit_row) = (self.per_row(memory), self.vocab as u64 * F32);
        // Up to a chunk of rows each row adds its logits too; past it the chunk stays full.
        let chunk = head_chunk_rows(usize::MAX, self.vocab) as u64;
        let below = avail / (per_row + logit_row);
        let by_memory = if below < chunk { below } else { avail.saturating_sub(chunk * logit_row) / per_row };
        by_memory.min(binding / (self.widest_row * F32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{AdapterChoice, Gpu};
    use crate::model::adapter::parse_targets;
    use crate::model::GpuModel;
    use crate::train::trainer::{Method, OptimConfig, Trainer};

    /// The prediction equals the bytes a real run allocates, counted by the device (its own,
    /// so no other test's buffers are counted): full and LoRA, kept and recomputed
    /// activations, an f32 and a packed base with its tied head, q/k norms and biases.
    #[test]
    fn predicted_bytes_equal_the_bytes_a_run_allocates() {
        let gpu: &'static Gpu = Box::leak(Box::new(
            pollster::block_on(Gpu::new(&AdapterChoice::from_flag_or_env(None))).unwrap(),
        ));
        let llama = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rope_theta": 10000, "max_position_embeddings": 32,
            "tie_word_embeddings": true}"#;
        let qwen3 = r#"{"architectures": ["Qwen3ForCausalLM"], "vocab_size": 80, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "head_dim": 16,
            "num_key_value_heads": 2, "rope_theta": 10000, "max_position_embeddings": 32,
            "attention_bias": true, "tie_word_embeddings": false}"#;
        // Gemma 3 (post-norms, two rotary tables) when its fixture is there.
        let gemma =
            crate::testing::model("tiny-gemma3").map(|dir| std::fs::read(dir.join("config.json")).unwrap());
        let gemma = gemma.as_deref().map(|text| std::str::from_utf8(text).unwrap());
        let gemma_cases = gemma.map(|g| {
            [
                (g, Some(4), WeightFormat::Q8_0, ActivationMemory::Keep),
                (g, None, WeightFormat::F32, ActivationMemory::Keep),
            ]
        });
        let cases = [
            (llama, None, WeightFormat::F32, ActivationMemory::Keep),
            (llama, Some(4), WeightFormat::Q4_0, ActivationMemory::Recompute),
            (llama, Some(2), WeightFormat::F16, ActivationMemory::Keep),
            (qwen3, None, WeightFormat::F32, ActivationMemory::Recompute),
            (qwen3, Some(4), WeightFormat::Q8_0, ActivationMemory::Keep),
        ];
        for (config, rank, fmt, memory) in cases.into_iter().chain(gemma_cases.into_iter().flatten()) {
            let cfg = crate::model::load::parse_config(config.as_bytes(), "test").unwrap();
            let host = Weights::random(&cfg, 0);
            let choice = WeightChoice::Format(fmt);
            let (trained, method) = match rank {
                Some(r) => {
                    let lora = Lora::init(&cfg, &parse_targets(&cfg, "all").unwrap(), r, 8.0, 0).unwrap();
                    (Trained::lora(&lora), Method::Lora(lora))
                }
                None => (Trained::Full, Method::Full),
            };
            let shape = (3, 8);
            let plan = MemoryPlan::new(&cfg, &stored_formats(&host), choice, &trained);
            assert_eq!(stored_formats(&host).named(), config_shapes(&cfg).named());
            let before = gpu.allocated_bytes();
            let model = GpuModel::upload_weights(gpu, &cfg, &host, choice).unwrap();
            let adamw =
                crate::ops::optim::AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
            let opt = OptimConfig { adamw, grad_clip: 1.0, decay_norms_biases: true };
            let mut t = Trainer::new(gpu, model, shape, memory, opt, method).unwrap();
            let row: Vec<u32> = (0..9).collect();
            t.step(&[vec![&row[..]; 3]], 1e-3).unwrap();
            let allocated = gpu.allocated_bytes() - before;
            let want = plan.bytes(shape, memory);
            assert_eq!(want.total(), allocated, "{:?} rank {rank:?} {fmt:?} {memory:?}: {want:?}", cfg.arch);
        }
    }

    /// The largest run that fits is the one whose bytes reach the budget: one more row does not
    /// fit; below the LM head's chunk of rows (each row adds its logits) and past it.
    #[test]
    fn max_rows_fill_the_budget() {
        let cfg = crate::model::load::parse_config(
            br#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rope_theta": 10000, "max_position_embeddings": 32}"#,
            "test",
        )
        .unwrap();
        let plan = MemoryPlan::new(&cfg, &config_shapes(&cfg), WeightChoice::Auto, &Trained::Full);
        assert!(crate::train::graph::head_chunk_rows(usize::MAX, 96) < 400_000);
        for (memory, want) in [(ActivationMemory::Keep, 1000), (ActivationMemory::Recompute, 400_000)] {
            let budget = plan.bytes((1, want), memory).total() + 17;
            let rows = plan.max_rows(budget, u64::MAX, memory) as usize;
            assert_eq!(rows, want, "{memory:?}");
            assert!(plan.bytes((1, rows + 1), memory).total() > budget);
            // The widest rows are the fused [gate | up] projection's, 2 × 96 floats; its weight,
            // [192, 64], is the largest, and a binding that cannot hold it fits nothing.
            assert_eq!(plan.max_rows(budget, 2 * 96 * 4 * 100, memory), 100, "the binding caps the rows");
            assert_eq!(plan.largest_weight.1, 192 * 64 * 4);
            assert_eq!(plan.max_rows(budget, 192 * 64 * 4 - 4, memory), 0);
        }
    }
}
