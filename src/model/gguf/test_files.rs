//! What the GGUF tests share: the SmolLM2 fixture, a writer of small GGUF files, and a
//! one-layer model built with it.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Result;
use half::f16;

use super::convert::decode;
use super::parse::{tensor_data, GgufFile, GgufTensorInfo, GGML_F32};

/// Tensor `info` of the file `bytes`, decoded to f32.
pub(crate) fn dequantize(file: &GgufFile, bytes: &[u8], info: &GgufTensorInfo) -> Result<Vec<f32>> {
    decode(info, tensor_data(file, bytes, info)?)
}

/// The SmolLM2 fixture folder (its GGUF and tokenizer.json).
pub(crate) fn fixture_dir() -> Option<PathBuf> {
    crate::testing::model("smollm2-135m-instruct")
}

/// The SmolLM2 fixture's GGUF, read once.
pub(crate) fn fixture() -> Option<&'static [u8]> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let path = crate::testing::fixture("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")?;
    Some(BYTES.get_or_init(|| std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))))
}

pub(crate) fn info<'a>(file: &'a GgufFile, name: &str) -> &'a GgufTensorInfo {
    file.tensor(name).expect("tensor present")
}

/// Start of a tensor's data, computed independently of `tensor_data`.
pub(crate) fn data_start(file: &GgufFile, name: &str) -> usize {
    file.data_offset + info(file, name).offset as usize
}

pub(crate) fn f16_le(b: &[u8]) -> f32 {
    f16::from_bits(u16::from(b[0]) | (u16::from(b[1]) << 8)).to_f32()
}

/// Writes small GGUF v3 files for the tests.
#[derive(Default)]
pub(crate) struct Builder {
    kvs: Vec<u8>,
    n_kv: u64,
    pub(crate) table: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

pub(crate) fn gguf_str(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

impl Builder {
    /// Adds a key with a raw value type and encoded value.
    pub(crate) fn kv(mut self, key: &str, value_type: u32, value: &[u8]) -> Self {
        self.kvs.extend(gguf_str(key));
        self.kvs.extend(value_type.to_le_bytes());
        self.kvs.extend_from_slice(value);
        self.n_kv += 1;
        self
    }
    pub(crate) fn u32(self, key: &str, v: u32) -> Self {
        self.kv(key, 4, &v.to_le_bytes())
    }
    pub(crate) fn f32(self, key: &str, v: f32) -> Self {
        self.kv(key, 6, &v.to_le_bytes())
    }
    pub(crate) fn str(self, key: &str, v: &str) -> Self {
        self.kv(key, 8, &gguf_str(v))
    }
    pub(crate) fn strs(self, key: &str, items: &[&str]) -> Self {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|s| v.extend(gguf_str(s)));
        self.kv(key, 9, &v)
    }
    pub(crate) fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, data: &[u8]) -> Self {
        self.data.resize(self.data.len().next_multiple_of(32), 0);
        self.table.extend(gguf_str(name));
        self.table.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| self.table.extend(d.to_le_bytes()));
        self.table.extend(ggml_type.to_le_bytes());
        self.table.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend_from_slice(data);
        self.n_tensors += 1;
        self
    }
    pub(crate) fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GGML_F32, &data)
    }
    pub(crate) fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kvs);
        out.extend_from_slice(&self.table);
        out.resize(out.len().next_multiple_of(32), 0);
        out.extend_from_slice(&self.data);
        out
    }
}

/// A one-layer model: hidden 8, 2 heads, 1 kv head, head_dim 4, ffn 6, vocab 5.
pub(crate) fn tiny_model(arch: &str) -> Vec<u8> {
    tiny_model_builder(arch).build()
}

/// [`tiny_model`], still open for more keys and tensors.
pub(crate) fn tiny_model_builder(arch: &str) -> Builder {
    let k = |s: &str| format!("{arch}.{s}");
    let seq = |n: usize| (0..n).map(|x| x as f32).collect::<Vec<_>>();
    let mut b = Builder::default()
        .str("general.architecture", arch)
        .u32(&k("embedding_length"), 8)
        .u32(&k("block_count"), 1)
        .u32(&k("attention.head_count"), 2)
        .u32(&k("attention.head_count_kv"), 1)
        .u32(&k("feed_forward_length"), 6)
        .u32(&k("context_length"), 64)
        .f32(&k("attention.layer_norm_rms_epsilon"), 1e-6)
        .f32_tensor("token_embd.weight", &[8, 5], &seq(40))
        .f32_tensor("blk.0.attn_norm.weight", &[8], &seq(8))
        .f32_tensor("blk.0.attn_q.weight", &[8, 8], &seq(64))
        .f32_tensor("blk.0.attn_k.weight", &[8, 4], &seq(32))
        .f32_tensor("blk.0.attn_v.weight", &[8, 4], &seq(32))
        .f32_tensor("blk.0.attn_output.weight", &[8, 8], &seq(64))
        .f32_tensor("blk.0.ffn_norm.weight", &[8], &seq(8))
        .f32_tensor("blk.0.ffn_gate.weight", &[8, 6], &seq(48))
        .f32_tensor("blk.0.ffn_up.weight", &[8, 6], &seq(48))
        .f32_tensor("blk.0.ffn_down.weight", &[6, 8], &seq(48))
        .f32_tensor("output_norm.weight", &[8], &seq(8))
        .f32_tensor("output.weight", &[8, 5], &seq(40));
    if arch == "qwen2" {
        b = b
            .f32_tensor("blk.0.attn_q.bias", &[8], &seq(8))
            .f32_tensor("blk.0.attn_k.bias", &[4], &seq(4))
            .f32_tensor("blk.0.attn_v.bias", &[4], &seq(4));
    }
    b
}

/// A two-layer llama of random weights in the formats of llama.cpp's Q4_K_M (hidden 256, 4
/// heads of 64, 2 kv heads, ffn 512, vocab 300, a GPT-2 vocabulary of made-up tokens): Q4_K
/// projections, Q6_K attn_v and ffn_down in layer 1 (so its fused QKV and the two layers'
/// down projections mix formats as Q4_K_M's do), Q5_K attn_output, a Q8_0 embedding and a
/// Q6_K head; the blocks are random bytes with small f16 scales, the norms random f32.
pub(crate) fn k_quant_model() -> Vec<u8> {
    use crate::gpu::wfmt::random_ggml_blocks;
    use crate::gpu::WeightFormat as F;
    let (hidden, ffn, vocab) = (256u64, 512u64, 300u64);
    let ggml_type = |f: F| match f {
        F::Q8_0 => 8,
        F::Q4_K => 12,
        F::Q5_K => 13,
        F::Q6_K => 14,
        _ => unreachable!("not used here"),
    };
    let mut seed = 0;
    let mut weight = |b: Builder, name: &str, f: F, cols: u64, rows: u64| {
        seed += 1;
        // Scales keep values within about ±0.25 (see wfmt::random_packed).
        let scale = if f == F::Q6_K { 1.0 / 16384.0 } else { 1.0 / 8192.0 };
        let scale = if f == F::Q8_0 { 1.0 / 512.0 } else { scale };
        let blocks = (cols * rows) as usize / f.block_elements();
        b.tensor(name, &[cols, rows], ggml_type(f), &random_ggml_blocks(f, blocks, seed, Some(scale)))
    };
    let tokens: Vec<String> = (0..vocab).map(|i| format!("t{i}")).collect();
    let mut b = Builder::default()
        .str("general.architecture", "llama")
        .u32("llama.embedding_length", hidden as u32)
        .u32("llama.block_count", 2)
        .u32("llama.attention.head_count", 4)
        .u32("llama.attention.head_count_kv", 2)
        .u32("llama.feed_forward_length", ffn as u32)
        .u32("llama.context_length", 64)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .str("tokenizer.ggml.model", "gpt2")
        .strs("tokenizer.ggml.tokens", &tokens.iter().map(String::as_str).collect::<Vec<_>>())
        .strs("tokenizer.ggml.merges", &[]);
    b = weight(b, "token_embd.weight", F::Q8_0, hidden, vocab);
    for l in 0..2 {
        let norm = crate::cpu::test_data::rand_vec(100 + l, hidden as usize, 1.0);
        let more_bits = if l == 1 { F::Q6_K } else { F::Q4_K };
        b = b.f32_tensor(&format!("blk.{l}.attn_norm.weight"), &[hidden], &norm);
        b = weight(b, &format!("blk.{l}.attn_q.weight"), F::Q4_K, hidden, hidden);
        b = weight(b, &format!("blk.{l}.attn_k.weight"), F::Q4_K, hidden, 128);
        b = weight(b, &format!("blk.{l}.attn_v.weight"), more_bits, hidden, 128);
        b = weight(b, &format!("blk.{l}.attn_output.weight"), F::Q5_K, hidden, hidden);
        b = b.f32_tensor(&format!("blk.{l}.ffn_norm.weight"), &[hidden], &norm);
        b = weight(b, &format!("blk.{l}.ffn_gate.weight"), F::Q4_K, hidden, ffn);
        b = weight(b, &format!("blk.{l}.ffn_up.weight"), F::Q4_K, hidden, ffn);
        b = weight(b, &format!("blk.{l}.ffn_down.weight"), more_bits, ffn, hidden);
    }
    b = b.f32_tensor(
        "output_norm.weight",
        &[hidden],
        &crate::cpu::test_data::rand_vec(9, hidden as usize, 1.0),
    );
    b = weight(b, "output.weight", F::Q6_K, hidden, vocab);
    b.build()
}
