//! GGUF (llama.cpp) model files: parsing, dequantization to f32, and conversion to the
//! Hugging Face layout (config.json, tensor names and shapes, tokenizer.json).
//!
//! Input bytes are untrusted: every read is bounds-checked, every count is checked
//! against the bytes left before anything is allocated for it, and errors are one line
//! naming what was wrong. No `std::fs` here, so this works on wasm32 as well.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, ensure, Result};
use half::f16;
use serde_json::{json, Map, Value};

use super::weights::HostTensor;
use crate::cpu::quant::{self, WeightFormat};

/// A parsed GGUF file: header, metadata and tensor table (tensor data stays in the bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// Absolute offset of the tensor data section in the file.
    pub data_offset: usize,
}

/// One metadata value, with GGUF's value types.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGUF order: ne[0] first (fastest varying), so the reverse of a row-major shape.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Relative to `GgufFile::data_offset`.
    pub offset: u64,
}

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays may nest (gguf-py writes lists of lists), but each level recurses: bound it so
/// a file of nested empty arrays cannot overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;

const GGML_F32: u32 = 0;
const GGML_F16: u32 = 1;
const GGML_Q4_0: u32 = 2;
const GGML_Q4_1: u32 = 3;
const GGML_Q8_0: u32 = 8;
const GGML_BF16: u32 = 30;

/// ggml's name for a type number, for error messages.
fn ggml_type_name(t: u32) -> &'static str {
    match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        _ => "unknown",
    }
}

/// (elements per block, bytes per block) of the types `dequantize` supports.
fn block_layout(t: u32) -> Option<(u64, u64)> {
    match t {
        GGML_F32 => Some((1, 4)),
        GGML_F16 | GGML_BF16 => Some((1, 2)),
        GGML_Q4_0 => Some((32, 18)),
        GGML_Q4_1 => Some((32, 20)),
        GGML_Q8_0 => Some((32, 34)),
        _ => None,
    }
}

/// Bounds-checked little-endian reader of the first `bytes` of a file of `size` bytes.
/// Its errors name the offset; callers prefix what was being read. A read past the end of
/// `bytes` but within the file fails with `short` set: more bytes are needed, the file is
/// not wrong.
struct Reader<'a> {
    bytes: &'a [u8],
    size: usize,
    pos: usize,
    short: bool,
}

impl<'a> Reader<'a> {
    /// Bytes left in the file (not only in `bytes`).
    fn remaining(&self) -> usize {
        self.size - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(
            n <= self.remaining(),
            "needs {n} bytes at offset {} but only {} remain",
            self.pos,
            self.remaining()
        );
        if n > self.bytes.len() - self.pos {
            self.short = true;
            bail!("needs {n} bytes at offset {}, which have not arrived yet", self.pos);
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a u64 count of items that each take at least `min_item_bytes`, and checks
    /// that they can fit in what remains, so the caller may allocate for them.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.checked_mul(min_item_bytes).is_some_and(|b| b <= self.remaining()));
        fits.ok_or_else(|| {
            anyhow!("count {n} at offset {at} cannot fit in the {} bytes left", self.remaining())
        })
    }

    fn string(&mut self) -> Result<String> {
        let len = self.count(1)?;
        let at = self.pos;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| anyhow!("string at offset {at} is not UTF-8"))
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<GgufValue> {
        Ok(match value_type {
            0 => GgufValue::U8(self.u8()?),
            1 => GgufValue::I8(i8::from_le_bytes(self.array()?)),
            2 => GgufValue::U16(self.u16()?),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => GgufValue::Bool(self.u8()? != 0),
            8 => GgufValue::Str(self.string()?),
            9 => {
                ensure!(depth < MAX_ARRAY_DEPTH, "arrays nested deeper than {MAX_ARRAY_DEPTH}");
                let elem_type = self.u32()?;
                let n = self.count(min_value_bytes(elem_type)?)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_type, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }
}

/// Smallest encoding of a value of this type (an empty string or array for those).
fn min_value_bytes(value_type: u32) -> Result<usize> {
    Ok(match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        other => bail!("unknown metadata value type {other}"),
    })
}

/// Parses header, metadata and tensor table, and checks every tensor's shape and (for
/// the types `dequantize` supports) that its data lies within `bytes`.
pub fn parse(bytes: &[u8]) -> Result<GgufFile> {
    parse_header(bytes, bytes.len())?.ok_or_else(|| anyhow!("GGUF header: incomplete"))
}

/// [`parse`] of a file of `size` bytes of which only the first `bytes` have arrived:
/// Ok(None) while the header (metadata and tensor table) needs more of them. Tensor data
/// ranges are checked against `size`.
pub fn parse_header(bytes: &[u8], size: usize) -> Result<Option<GgufFile>> {
    let mut r = Reader { bytes: &bytes[..bytes.len().min(size)], size, pos: 0, short: false };
    match read_header(&mut r) {
        Err(_) if r.short => Ok(None),
        parsed => parsed.map(Some),
    }
}

fn read_header(r: &mut Reader) -> Result<GgufFile> {
    let header = |e: anyhow::Error| anyhow!("GGUF header: {e}");
    let magic = r.array::<4>().map_err(header)?;
    ensure!(&magic == MAGIC, "not a GGUF file (magic {magic:02x?})");
    let version = r.u32().map_err(header)?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        bail!("big-endian GGUF files are not supported");
    }
    ensure!(version == 2 || version == 3, "GGUF version {version} is not supported (only 2 and 3)");
    // Smallest tensor-table entry: empty name, n_dims, type and offset.
    let tensor_count = r.count(8 + 4 + 4 + 8).map_err(|e| anyhow!("GGUF header: tensor {e}"))?;
    // Smallest metadata entry: empty key, value type and a one-byte value.
    let kv_count = r.count(8 + 4 + 1).map_err(|e| anyhow!("GGUF header: metadata {e}"))?;

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string().map_err(|e| anyhow!("GGUF metadata entry #{i}: key: {e}"))?;
        let value = r.u32().and_then(|t| r.value(t, 0)).map_err(|e| anyhow!("GGUF metadata '{key}': {e}"))?;
        ensure!(metadata.insert(key.clone(), value).is_none(), "GGUF metadata key '{key}' appears twice");
    }

    let mut tensors = Vec::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let name = r.string().map_err(|e| anyhow!("GGUF tensor #{i}: name: {e}"))?;
        let info = read_tensor_info(r, name.clone()).map_err(|e| anyhow!("GGUF tensor '{name}': {e}"))?;
        tensors.push(info);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(other) => {
            bail!("GGUF metadata 'general.alignment': {other:?} is not a power-of-two u32")
        }
    };
    let data_offset = usize::try_from(align_up(r.pos as u64, alignment)?)
        .map_err(|_| anyhow!("GGUF data section offset does not fit in memory"))?;
    let file = GgufFile { version, metadata, tensors, data_offset };

    let mut names = BTreeSet::new();
    for info in &file.tensors {
        ensure!(names.insert(info.name.as_str()), "GGUF tensor '{}' appears twice", info.name);
        ensure!(
            info.offset.is_multiple_of(alignment),
            "GGUF tensor '{}': offset {} is not a multiple of the alignment {alignment}",
            info.name,
            info.offset
        );
        element_count(info)?;
        if block_layout(info.ggml_type).is_some() {
            check_range(info, tensor_range(&file, info)?, r.size)?;
        }
    }
    Ok(file)
}

fn read_tensor_info(r: &mut Reader, name: String) -> Result<GgufTensorInfo> {
    let n_dims = r.u32()?;
    ensure!(n_dims <= MAX_DIMS, "{n_dims} dimensions (ggml allows at most {MAX_DIMS})");
    let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
    Ok(GgufTensorInfo { name, dims, ggml_type: r.u32()?, offset: r.u64()? })
}

fn align_up(x: u64, alignment: u64) -> Result<u64> {
    x.checked_next_multiple_of(alignment)
        .ok_or_else(|| anyhow!("offset {x} overflows when aligned to {alignment}"))
}

/// Number of elements, checked for overflow of both u64 and usize.
fn element_count(info: &GgufTensorInfo) -> Result<usize> {
    info.dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| anyhow!("GGUF tensor '{}': shape {:?} has too many elements", info.name, info.dims))
}

/// The tensor's bytes, after checking its type is supported, its rows are whole blocks
/// and its range lies within the file.
fn tensor_data<'a>(file: &GgufFile, bytes: &'a [u8], info: &GgufTensorInfo) -> Result<&'a [u8]> {
    let (start, end) = check_range(info, tensor_range(file, info)?, bytes.len())?;
    Ok(&bytes[start..end])
}

/// The range, after checking it lies within a file of `size` bytes.
fn check_range(info: &GgufTensorInfo, (start, end): (u64, u64), size: usize) -> Result<(usize, usize)> {
    match (usize::try_from(start), usize::try_from(end)) {
        (Ok(start), Ok(end)) if end <= size => Ok((start, end)),
        _ => bail!(
            "GGUF tensor '{}': data [{start}..{end}) extends past end of file ({size} bytes)",
            info.name
        ),
    }
}

/// The tensor's byte range in the file, after checking its type is supported and its rows
/// are whole blocks.
fn tensor_range(file: &GgufFile, info: &GgufTensorInfo) -> Result<(u64, u64)> {
    let name = &info.name;
    let t = info.ggml_type;
    let (block_elems, block_bytes) = block_layout(t).ok_or_else(|| {
        anyhow!(
            "GGUF tensor '{name}': ggml type {t} ({}) is not supported \
             (F32, F16, BF16, Q4_0, Q4_1, Q8_0 are)",
            ggml_type_name(t)
        )
    })?;
    let numel = element_count(info)? as u64;
    // Blocks run along ne[0]; ggml requires each row to be whole blocks.
    let row = info.dims.first().copied().unwrap_or(1);
    ensure!(
        row.is_multiple_of(block_elems),
        "GGUF tensor '{name}': row length {row} is not a multiple of the {} block size \
         {block_elems}",
        ggml_type_name(t)
    );
    let size = (numel / block_elems).checked_mul(block_bytes);
    let start = (file.data_offset as u64).checked_add(info.offset);
    start.zip(size).and_then(|(s, n)| Some((s, s.checked_add(n)?))).ok_or_else(|| {
        anyhow!(
            "GGUF tensor '{name}': data range (offset {} + {}, {numel} elements) overflows",
            file.data_offset,
            info.offset
        )
    })
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes a tensor's bytes `data` (as [`tensor_data`] checked them) to f32, in row-major
/// order of its Hugging Face shape (`dims` reversed), which is the order they are stored in.
fn decode(info: &GgufTensorInfo, data: &[u8]) -> Result<Vec<f32>> {
    let out = match info.ggml_type {
        GGML_F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        GGML_F16 => data.chunks_exact(2).map(|c| f16_at(c, 0)).collect(),
        // bf16 is the top half of an f32.
        GGML_BF16 => data
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        GGML_Q8_0 => data
            .chunks_exact(34)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                b[2..].iter().map(move |&q| d * f32::from(q as i8))
            })
            .collect(),
        // Low nibbles are elements 0..16 of the block, high nibbles 16..32.
        GGML_Q4_0 => data
            .chunks_exact(18)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                let qs = &b[2..];
                let lo = qs.iter().map(|&q| i32::from(q & 0xF));
                let hi = qs.iter().map(|&q| i32::from(q >> 4));
                lo.chain(hi).map(move |q| d * (q - 8) as f32)
            })
            .collect(),
        GGML_Q4_1 => data
            .chunks_exact(20)
            .flat_map(|b| {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..];
                let lo = qs.iter().map(|&q| q & 0xF);
                let hi = qs.iter().map(|&q| q >> 4);
                lo.chain(hi).map(move |q| d * f32::from(q) + m)
            })
            .collect(),
        // tensor_data has already rejected every other type.
        t => bail!("GGUF tensor '{}': ggml type {t} is not supported", info.name),
    };
    Ok(out)
}

impl GgufValue {
    /// Any integer value that is non-negative (writers differ in the integer type used).
    fn as_uint(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(x) => Some(u64::from(x)),
            GgufValue::U16(x) => Some(u64::from(x)),
            GgufValue::U32(x) => Some(u64::from(x)),
            GgufValue::U64(x) => Some(x),
            GgufValue::I8(x) => u64::try_from(x).ok(),
            GgufValue::I16(x) => u64::try_from(x).ok(),
            GgufValue::I32(x) => u64::try_from(x).ok(),
            GgufValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }
}

/// Metadata look-ups with one-line errors naming the key.
impl GgufFile {
    fn uint(&self, key: &str) -> Result<Option<u64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_uint()
                .map(Some)
                .ok_or_else(|| anyhow!("GGUF metadata '{key}': expected a non-negative integer, got {v:?}")),
        }
    }

    fn required_uint(&self, key: &str) -> Result<u64> {
        self.uint(key)?.ok_or_else(|| anyhow!("GGUF metadata '{key}' is missing"))
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            // Via the shortest decimal form, so an f32 1e-5 becomes 1e-5, not 9.99999974e-6.
            Some(GgufValue::F32(x)) => Ok(x.to_string().parse().ok()),
            Some(GgufValue::F64(x)) => Ok(Some(*x)),
            Some(v) => bail!("GGUF metadata '{key}': expected a float, got {v:?}"),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(GgufValue::Str(s)) => Ok(Some(s)),
            Some(v) => bail!("GGUF metadata '{key}': expected a string, got {v:?}"),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&[GgufValue]>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(items)) => Ok(Some(items)),
            Some(v) => bail!("GGUF metadata '{key}': expected an array, got {v:?}"),
        }
    }

    fn str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        let strs = items.iter().map(|v| match v {
            GgufValue::Str(s) => Ok(s.as_str()),
            other => bail!("GGUF metadata '{key}': expected strings, found {other:?}"),
        });
        strs.collect::<Result<_>>().map(Some)
    }

    fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// The supported architectures: (GGUF name, HF class, whether q/k rows are permuted).
const ARCHITECTURES: [(&str, &str, bool); 2] =
    [("llama", "LlamaForCausalLM", true), ("qwen2", "Qwen2ForCausalLM", false)];

/// Converts a llama or qwen2 GGUF into a Hugging Face config.json and tensors with HF
/// names and shapes (q/k un-permuted for llama; see [`hf_tensor`]).
pub fn to_hf(bytes: &[u8]) -> Result<(Value, Vec<HostTensor>)> {
    let file = parse(bytes)?;
    let config = hf_config(&file)?;
    let tensors = file
        .tensors
        .iter()
        .map(|info| hf_tensor(&file, info, tensor_data(&file, bytes, info)?))
        .collect::<Result<_>>()?;
    Ok((config, tensors))
}

/// The architecture's (HF class, whether llama.cpp permuted the q/k rows).
fn architecture(file: &GgufFile) -> Result<(&'static str, bool)> {
    let arch = file
        .str("general.architecture")?
        .ok_or_else(|| anyhow!("GGUF metadata 'general.architecture' is missing"))?;
    let &(_, hf_class, permuted) = ARCHITECTURES
        .iter()
        .find(|(name, _, _)| *name == arch)
        .ok_or_else(|| anyhow!("GGUF architecture '{arch}' is not supported (llama, qwen2 are)"))?;
    Ok((hf_class, permuted))
}

/// (layers, heads, kv heads) from the metadata.
fn layer_and_head_counts(file: &GgufFile) -> Result<(u64, u64, u64)> {
    let arch = file.str("general.architecture")?.unwrap_or_default();
    let key = |k: &str| format!("{arch}.{k}");
    let layers = file.required_uint(&key("block_count"))?;
    let heads = file.required_uint(&key("attention.head_count"))?;
    let kv_heads = file.uint(&key("attention.head_count_kv"))?.unwrap_or(heads);
    ensure!(
        heads > 0 && kv_heads > 0,
        "GGUF metadata: head counts must be positive ({heads} heads, {kv_heads} kv heads)"
    );
    Ok((layers, heads, kv_heads))
}

/// The Hugging Face config.json of a parsed GGUF (from its metadata and tensor table),
/// after checking every tensor has a Hugging Face name: a file with a stray tensor is
/// refused before any tensor is converted.
pub fn hf_config(file: &GgufFile) -> Result<Value> {
    let (hf_class, _) = architecture(file)?;
    let arch = file.str("general.architecture")?.unwrap_or_default();
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = file.required_uint(&key("embedding_length"))?;
    let (layers, heads, kv_heads) = layer_and_head_counts(file)?;
    let head_dim = match file.uint(&key("attention.key_length"))? {
        Some(d) => d,
        None => {
            ensure!(
                hidden.is_multiple_of(heads),
                "GGUF metadata: hidden size {hidden} is not a multiple of {heads} heads"
            );
            hidden / heads
        }
    };
    let eps = file
        .float(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| anyhow!("GGUF metadata '{arch}.attention.layer_norm_rms_epsilon' is missing"))?;
    let vocab_size = match file.tensor("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => t.dims[1],
        _ => file
            .str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("GGUF: no 2-D token_embd.weight nor tokenizer.ggml.tokens"))?
            .len() as u64,
    };
    let config = json!({
        "architectures": [hf_class],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": file.required_uint(&key("feed_forward_length"))?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": eps,
        "rope_theta": file.float(&key("rope.freq_base"))?.unwrap_or(10000.0),
        "max_position_embeddings": file.required_uint(&key("context_length"))?,
        "vocab_size": vocab_size,
        "tie_word_embeddings": file.tensor("output.weight").is_none(),
        "bos_token_id": file.uint("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": file.uint("tokenizer.ggml.eos_token_id")?,
        "hidden_act": "silu",
    });
    for info in &file.tensors {
        hf_tensor_name(&info.name, layers, heads, kv_heads)?;
    }
    Ok(config)
}

/// One tensor of `file`, from its bytes `data`, with its Hugging Face name and shape: a 2-D
/// F16, Q8_0, Q4_0 or Q4_1 tensor stays packed (GPU layout: the GPU reads it without
/// dequantizing, and the host dequantizes only when f32 values are asked for), any other is
/// decoded to f32. llama's q/k rows are un-permuted (rows are whole blocks: ggml blocks run
/// along rows, so this works on packed rows too).
pub fn hf_tensor(file: &GgufFile, info: &GgufTensorInfo, data: &[u8]) -> Result<HostTensor> {
    let (_, permuted) = architecture(file)?;
    let (layers, heads, kv_heads) = layer_and_head_counts(file)?;
    let (hf, rope_heads) = hf_tensor_name(&info.name, layers, heads, kv_heads)?;
    let shape = info
        .dims
        .iter()
        .rev()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow!("GGUF tensor '{}': a dimension does not fit in memory", info.name))?;
    let rows = shape.first().copied().unwrap_or(1);
    let fail = |e: anyhow::Error| anyhow!("GGUF tensor '{}': {e}", info.name);
    // The head count of llama's q/k rows to un-permute.
    let unpermute =
        rope_heads.filter(|_| permuted).map(usize::try_from).transpose().map_err(|e| fail(e.into()))?;
    let t = match packed_format(info.ggml_type).filter(|f| shape.len() == 2 && f.fits(shape[1])) {
        Some(fmt) => {
            let mut words = quant::from_ggml(fmt, data);
            if let Some(n) = unpermute {
                words = unpermute_rows(&words, rows, n).map_err(fail)?;
            }
            HostTensor::packed(hf, shape, fmt, words)
        }
        None => {
            let mut values = decode(info, data)?;
            if let Some(n) = unpermute {
                values = unpermute_rows(&values, rows, n).map_err(fail)?;
            }
            HostTensor::new(hf, shape, values)
        }
    };
    Ok(t)
}

/// The GPU format that holds a ggml type as it is stored.
fn packed_format(ggml_type: u32) -> Option<WeightFormat> {
    match ggml_type {
        GGML_F16 => Some(WeightFormat::F16),
        GGML_Q8_0 => Some(WeightFormat::Q8_0),
        GGML_Q4_0 => Some(WeightFormat::Q4_0),
        GGML_Q4_1 => Some(WeightFormat::Q4_1),
        _ => None,
    }
}

/// The format [`hf_tensor`] gives each tensor, by Hugging Face name (known from the header
/// alone, before any tensor data).
pub fn hf_formats(file: &GgufFile) -> Result<BTreeMap<String, WeightFormat>> {
    let (layers, heads, kv_heads) = layer_and_head_counts(file)?;
    let mut out = BTreeMap::new();
    for info in &file.tensors {
        let (hf, _) = hf_tensor_name(&info.name, layers, heads, kv_heads)?;
        let cols = (info.dims.len() == 2).then(|| info.dims[0] as usize);
        let fmt = packed_format(info.ggml_type).filter(|f| cols.is_some_and(|c| f.fits(c)));
        out.insert(hf, fmt.unwrap_or(WeightFormat::F32));
    }
    Ok(out)
}

/// A GGUF file read as its bytes arrive, in order, in chunks of any size (the browser's
/// File.stream() or fetch body): the header is buffered until it is complete, then each
/// tensor's bytes, and each finished tensor ([`hf_tensor`]) is handed on and dropped. It
/// holds the header and one tensor at a time. Tensors are read in the order of their data
/// (padding between them skipped); data ranges that overlap are an error.
pub struct GgufReader {
    /// The file's name, in errors.
    name: String,
    size: u64,
    /// Bytes received so far.
    received: u64,
    /// The header's bytes until it parses; then the bytes of the tensor being read.
    buf: Vec<u8>,
    /// The header is parsed again once `buf` holds this many bytes (doubling, so that a
    /// header arriving in many small chunks is parsed a few times, not once per chunk).
    parse_at: usize,
    header: Option<StreamedHeader>,
}

struct StreamedHeader {
    file: GgufFile,
    /// Tensor indices with their byte ranges in the file, in the order of the data.
    order: Vec<(usize, (u64, u64))>,
    /// The next tensor of `order`.
    next: usize,
}

impl GgufReader {
    /// A reader for file `name` of `size` bytes.
    pub fn new(name: &str, size: u64) -> GgufReader {
        GgufReader { name: name.into(), size, received: 0, buf: Vec::new(), parse_at: 64, header: None }
    }

    /// The parsed header, once complete.
    pub fn header(&self) -> Option<&GgufFile> {
        self.header.as_ref().map(|h| &h.file)
    }

    /// The file's next bytes; `on_tensor` gets each tensor they complete, with the header.
    pub fn push(
        &mut self,
        chunk: &[u8],
        on_tensor: &mut dyn FnMut(&GgufFile, HostTensor) -> Result<()>,
    ) -> Result<()> {
        let (name, size) = (&self.name, self.size);
        let end = self.received + chunk.len() as u64;
        ensure!(end <= size, "{name}: more than the {size} bytes the file was said to have arrived");
        let start = self.received;
        self.received = end;
        if self.header.is_some() {
            return self.read_tensors(start, chunk, on_tensor);
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() < self.parse_at && end < size {
            return Ok(());
        }
        let size = usize::try_from(size).map_err(|_| anyhow!("{name}: {size} bytes do not fit in memory"))?;
        let Some(file) = parse_header(&self.buf, size).map_err(|e| anyhow!("{name}: {e}"))? else {
            self.parse_at = self.buf.len() * 2;
            return Ok(());
        };
        let order = data_order(&file).map_err(|e| anyhow!("{name}: {e}"))?;
        // What came after the header is the start of the data.
        let data = self.buf.split_off(self.buf.len().min(file.data_offset));
        let at = self.buf.len() as u64;
        self.buf = Vec::new();
        self.header = Some(StreamedHeader { file, order, next: 0 });
        self.read_tensors(at, &data, on_tensor)
    }

    /// Reads `bytes`, which start at offset `at` of the file, into the tensors.
    fn read_tensors(
        &mut self,
        mut at: u64,
        mut bytes: &[u8],
        on_tensor: &mut dyn FnMut(&GgufFile, HostTensor) -> Result<()>,
    ) -> Result<()> {
        let h = self.header.as_mut().expect("read_tensors runs once the header is parsed");
        while let Some(&(i, (start, end))) = h.order.get(h.next) {
            if at >= end {
                let info = &h.file.tensors[i];
                let t = hf_tensor(&h.file, info, &self.buf).map_err(|e| anyhow!("{}: {e}", self.name))?;
                self.buf.clear();
                h.next += 1;
                on_tensor(&h.file, t)?;
                continue;
            }
            if bytes.is_empty() {
                break;
            }
            // Padding before the tensor is skipped; its bytes are kept.
            let (n, keep) = if at < start { (start - at, false) } else { (end - at, true) };
            let n = n.min(bytes.len() as u64) as usize;
            if keep {
                self.buf.reserve_exact((end - start) as usize - self.buf.len());
                self.buf.extend_from_slice(&bytes[..n]);
            }
            (at, bytes) = (at + n as u64, &bytes[n..]);
        }
        Ok(())
    }

    /// The header, once every byte has arrived and every tensor been handed on.
    pub fn finish(self) -> Result<GgufFile> {
        let (name, size, received) = (&self.name, self.size, self.received);
        let Some(h) = self.header else {
            bail!("{name}: only {received} of its {size} bytes arrived, before the end of its header")
        };
        if let Some(&(i, (start, end))) = h.order.get(h.next) {
            bail!(
                "{name}: only {received} of its {size} bytes arrived: tensor '{}' (bytes {start}..{end}) is incomplete",
                h.file.tensors[i].name
            );
        }
        Ok(h.file)
    }
}

/// Every tensor's index and byte range, in the order of the data; ranges must not overlap.
fn data_order(file: &GgufFile) -> Result<Vec<(usize, (u64, u64))>> {
    let mut order = (0..file.tensors.len())
        .map(|i| Ok((i, tensor_range(file, &file.tensors[i])?)))
        .collect::<Result<Vec<_>>>()?;
    order.sort_by_key(|&(_, range)| range);
    for pair in order.windows(2) {
        let [(a, (a_start, a_end)), (b, (b_start, b_end))] = [pair[0], pair[1]];
        ensure!(
            b_start >= a_end,
            "GGUF tensors '{}' (bytes {a_start}..{a_end}) and '{}' (bytes {b_start}..{b_end}) overlap",
            file.tensors[a].name,
            file.tensors[b].name
        );
    }
    Ok(order)
}

/// Maps a GGUF tensor name to its HF name, and for q/k projections the head count whose
/// rows llama.cpp permutes.
fn hf_tensor_name(name: &str, layers: u64, heads: u64, kv_heads: u64) -> Result<(String, Option<u64>)> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(hf) = fixed {
        return Ok((hf.to_string(), None));
    }
    let unknown = || anyhow!("GGUF tensor '{name}' has no Hugging Face equivalent");
    let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: u64 = layer.parse().map_err(|_| unknown())?;
    ensure!(layer < layers, "GGUF tensor '{name}': layer {layer} but the model has {layers} layers");
    let (part, suffix) = rest.split_once('.').ok_or_else(unknown)?;
    let (hf_part, rope_heads) = match (part, suffix) {
        ("attn_norm", "weight") => ("input_layernorm", None),
        ("ffn_norm", "weight") => ("post_attention_layernorm", None),
        ("attn_q", "weight" | "bias") => ("self_attn.q_proj", Some(heads)),
        ("attn_k", "weight" | "bias") => ("self_attn.k_proj", Some(kv_heads)),
        ("attn_v", "weight" | "bias") => ("self_attn.v_proj", None),
        ("attn_output", "weight") => ("self_attn.o_proj", None),
        ("ffn_gate", "weight") => ("mlp.gate_proj", None),
        ("ffn_up", "weight") => ("mlp.up_proj", None),
        ("ffn_down", "weight") => ("mlp.down_proj", None),
        _ => return Err(unknown()),
    };
    Ok((format!("model.layers.{layer}.{hf_part}.{suffix}"), rope_heads))
}

/// Undoes the row permutation llama.cpp's converter applies to q and k projections
/// (weights [rows, cols] or biases [rows]):
///
/// ```text
/// w.reshape(n_head, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(w.shape)
/// ```
///
/// HF's rotate_half pairs element i of a head with element i + head_dim/2; llama.cpp's
/// RoPE pairs adjacent elements 2i and 2i+1. The forward permutation therefore moves HF
/// row (head h, half s, index i) = h*head_dim + s*head_dim/2 + i to GGUF row
/// h*head_dim + 2i + s. The inverse gathers, for each HF row, that GGUF row: within a
/// head, the even GGUF rows become the first half and the odd rows the second half.
fn unpermute_rows<T: Copy>(data: &[T], rows: usize, n_heads: usize) -> Result<Vec<T>> {
    ensure!(
        n_heads > 0 && rows.is_multiple_of(2 * n_heads),
        "{rows} rows do not split into {n_heads} heads of even size"
    );
    ensure!(
        !data.is_empty() && data.len().is_multiple_of(rows),
        "{} values do not form {rows} rows",
        data.len()
    );
    let cols = data.len() / rows;
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for hf_row in 0..rows {
        let (h, within) = (hf_row / head_dim, hf_row % head_dim);
        let (s, i) = (within / half, within % half);
        let src = h * head_dim + 2 * i + s;
        out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    Ok(out)
}

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
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// Tensor `info` of the file `bytes`, decoded to f32.
    fn dequantize(file: &GgufFile, bytes: &[u8], info: &GgufTensorInfo) -> Result<Vec<f32>> {
        decode(info, tensor_data(file, bytes, info)?)
    }

    /// The SmolLM2 fixture folder, beside the repository as in CI.
    fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/smollm2-135m-instruct")
    }

    fn fixture() -> Option<&'static [u8]> {
        static BYTES: OnceLock<Option<Vec<u8>>> = OnceLock::new();
        let bytes =
            BYTES.get_or_init(|| std::fs::read(fixture_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")).ok());
        if bytes.is_none() {
            eprintln!("skipped: fixture absent");
        }
        bytes.as_deref()
    }

    fn info<'a>(file: &'a GgufFile, name: &str) -> &'a GgufTensorInfo {
        file.tensor(name).expect("tensor present")
    }

    /// Start of a tensor's data, computed independently of `tensor_data`.
    fn data_start(file: &GgufFile, name: &str) -> usize {
        file.data_offset + info(file, name).offset as usize
    }

    fn f16_le(b: &[u8]) -> f32 {
        f16::from_bits(u16::from(b[0]) | (u16::from(b[1]) << 8)).to_f32()
    }

    #[test]
    fn parses_fixture_metadata_and_tensor_table() {
        let Some(bytes) = fixture() else { return };
        let file = parse(bytes).unwrap();
        assert_eq!(file.version, 3);
        assert_eq!(file.metadata.len(), 33);
        assert_eq!(file.tensors.len(), 272);
        assert_eq!(file.data_offset % 32, 0);
        let md = |k: &str| file.metadata.get(k).unwrap_or_else(|| panic!("{k}"));
        assert_eq!(md("general.architecture"), &GgufValue::Str("llama".into()));
        assert_eq!(md("llama.block_count"), &GgufValue::U32(30));
        assert_eq!(md("llama.embedding_length"), &GgufValue::U32(576));
        assert_eq!(md("llama.attention.head_count"), &GgufValue::U32(9));
        assert_eq!(md("llama.attention.head_count_kv"), &GgufValue::U32(3));
        assert_eq!(md("llama.rope.freq_base"), &GgufValue::F32(100000.0));
        assert_eq!(md("tokenizer.ggml.model"), &GgufValue::Str("gpt2".into()));
        assert_eq!(md("tokenizer.ggml.add_bos_token"), &GgufValue::Bool(false));
        assert_eq!(file.str_array("tokenizer.ggml.tokens").unwrap().unwrap().len(), 49152);
        assert_eq!(file.str_array("tokenizer.ggml.tokens").unwrap().unwrap()[1], "<|im_start|>");
        let embd = info(&file, "token_embd.weight");
        assert_eq!((embd.dims.as_slice(), embd.ggml_type, embd.offset), (&[576, 49152][..], 8, 0));
        let q = info(&file, "blk.0.attn_q.weight");
        assert_eq!((q.dims.as_slice(), q.ggml_type), (&[576, 576][..], 3));
        // The last tensor's data ends exactly at the end of the file.
        let last = file.tensors.iter().max_by_key(|t| t.offset).unwrap();
        assert_eq!(last.name, "output_norm.weight");
        assert_eq!(data_start(&file, &last.name) + 576 * 4, bytes.len());
    }

    #[test]
    fn dequantizes_fixture_q8_0_q4_1_and_f32() {
        let Some(bytes) = fixture() else { return };
        let file = parse(bytes).unwrap();

        // Q8_0 token embedding [49152, 576]: 18 blocks of 34 bytes per row.
        let embd = dequantize(&file, bytes, info(&file, "token_embd.weight")).unwrap();
        assert_eq!(embd.len(), 49152 * 576);
        let start = data_start(&file, "token_embd.weight");
        for (row, col) in [(0, 0), (1, 31), (1234, 32), (1234, 575), (49151, 575)] {
            let block = start + (row * 18 + col / 32) * 34;
            let d = f16_le(&bytes[block..]);
            let q = bytes[block + 2 + col % 32] as i8;
            assert_eq!(embd[row * 576 + col], d * q as f32, "embd[{row}][{col}]");
        }
        assert!(embd.iter().any(|&x| x != 0.0));

        // Q4_1 q projection [576, 576]: 18 blocks of 20 bytes per row.
        let name = "blk.0.attn_q.weight";
        let q = dequantize(&file, bytes, info(&file, name)).unwrap();
        assert_eq!(q.len(), 576 * 576);
        let start = data_start(&file, name);
        for (row, col) in [(0, 0), (0, 15), (0, 16), (7, 31), (300, 47), (575, 575)] {
            let block = start + (row * 18 + col / 32) * 20;
            let (d, m) = (f16_le(&bytes[block..]), f16_le(&bytes[block + 2..]));
            let j = col % 32;
            let byte = bytes[block + 4 + j % 16];
            let nibble = if j < 16 { byte & 0xF } else { byte >> 4 };
            assert_eq!(q[row * 576 + col], d * nibble as f32 + m, "q[{row}][{col}]");
        }

        let norm = dequantize(&file, bytes, info(&file, "output_norm.weight")).unwrap();
        let start = data_start(&file, "output_norm.weight");
        let first = f32::from_le_bytes(bytes[start..start + 4].try_into().unwrap());
        assert_eq!((norm.len(), norm[0]), (576, first));
    }

    /// Loaded GGUF weights hold their packed blocks only, no f32 copy (the host holds less
    /// than the file); their values, dequantized on demand, are the file's, rows concatenated
    /// as in Keel's fused QKV and gate|up. Norms stay f32.
    #[test]
    fn fixture_weights_stay_packed_without_f32() {
        let Some(bytes) = fixture() else { return };
        let (_, tensors) = to_hf(bytes).unwrap();
        let by_name: BTreeMap<&str, &HostTensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        assert_eq!(by_name["model.layers.3.self_attn.q_proj.weight"].format(), WeightFormat::Q4_1);
        assert_eq!(by_name["model.embed_tokens.weight"].format(), WeightFormat::Q8_0);
        assert_eq!(by_name["model.norm.weight"].packed_words(), None);
        let model = crate::model::load(&fixture_dir()).unwrap();
        let host: usize = model.weights.named().iter().map(|(_, t)| t.host_bytes()).sum();
        assert!(host < bytes.len(), "the host holds {host} bytes of weights, the file has {}", bytes.len());
        let b0 = &model.weights.blocks[0];
        for t in [&b0.qkv, &b0.o, &b0.up, &b0.down] {
            assert_eq!(t.format(), WeightFormat::Q4_1, "{}", t.name);
        }
        let file = parse(bytes).unwrap();
        let raw = |name: &str| dequantize(&file, bytes, info(&file, name)).unwrap();
        assert_eq!(*b0.down.values(), raw("blk.0.ffn_down.weight"));
        assert_eq!(*b0.up.values(), [raw("blk.0.ffn_gate.weight"), raw("blk.0.ffn_up.weight")].concat());
        assert_eq!(*model.weights.embed.values(), raw("token_embd.weight"));
    }

    #[test]
    fn converts_fixture_to_hf() {
        let Some(bytes) = fixture() else { return };
        let (config, tensors) = to_hf(bytes).unwrap();
        let expected = json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "head_dim": 64, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "max_position_embeddings": 8192, "vocab_size": 49152,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
            "hidden_act": "silu",
        });
        assert_eq!(config, expected);

        assert_eq!(tensors.len(), 272);
        let by_name: BTreeMap<&str, &HostTensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        assert_eq!(by_name.len(), 272, "HF names are unique");
        assert_eq!(by_name["model.embed_tokens.weight"].shape, [49152, 576]);
        assert_eq!(by_name["model.norm.weight"].shape, [576]);
        assert!(!by_name.contains_key("lm_head.weight"));
        for l in 0..30 {
            let shape = |s: &str| by_name[format!("model.layers.{l}.{s}.weight").as_str()].shape.clone();
            assert_eq!(shape("input_layernorm"), [576]);
            assert_eq!(shape("post_attention_layernorm"), [576]);
            assert_eq!(shape("self_attn.q_proj"), [576, 576]);
            assert_eq!(shape("self_attn.k_proj"), [192, 576]);
            assert_eq!(shape("self_attn.v_proj"), [192, 576]);
            assert_eq!(shape("self_attn.o_proj"), [576, 576]);
            assert_eq!(shape("mlp.gate_proj"), [1536, 576]);
            assert_eq!(shape("mlp.up_proj"), [1536, 576]);
            assert_eq!(shape("mlp.down_proj"), [576, 1536]);
        }
        for t in &tensors {
            assert_eq!(t.values().len(), t.numel(), "{}", t.name);
        }

        // Within each 64-row head, HF row s*32 + i is GGUF row 2i + s; v is not permuted.
        let file = parse(bytes).unwrap();
        for (gguf, hf) in [("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")] {
            let raw = dequantize(&file, bytes, info(&file, &format!("blk.5.{gguf}.weight"))).unwrap();
            let conv = &by_name[format!("model.layers.5.self_attn.{hf}.weight").as_str()].values();
            let row = |d: &[f32], r: usize| d[r * 576..(r + 1) * 576].to_vec();
            for (hf_row, gguf_row) in
                [(0, 0), (1, 2), (31, 62), (32, 1), (33, 3), (63, 63), (64 + 40, 64 + 17)]
            {
                let src = if gguf == "attn_v" { hf_row } else { gguf_row };
                assert_eq!(row(conv, hf_row), row(&raw, src), "{hf} row {hf_row}");
            }
        }
    }

    #[test]
    fn truncated_fixture_is_an_error_not_a_panic() {
        let Some(bytes) = fixture() else { return };
        let file = parse(bytes).unwrap();
        // Header, inside the metadata, the table's last byte, the data, the last byte.
        let fixed = [0, 3, 4, 7, 8, 20, 24, 100, 10_000, 1_000_000];
        let ends = [file.data_offset - 1, file.data_offset + 1000, bytes.len() - 1];
        for len in fixed.into_iter().chain(ends) {
            let err = parse(&bytes[..len]).expect_err(&format!("truncated at {len}"));
            let msg = err.to_string();
            assert!(!msg.contains('\n'), "one-line error: {msg}");
            assert!(msg.starts_with("GGUF") || msg.starts_with("not a GGUF"), "{msg}");
        }
        let err = parse(&bytes[..bytes.len() - 1]).unwrap_err().to_string();
        assert!(
            err.starts_with("GGUF tensor 'output_norm.weight': data [")
                && err.ends_with(&format!("extends past end of file ({} bytes)", bytes.len() - 1)),
            "{err}"
        );
    }

    /// Writes small GGUF v3 files for the tests.
    #[derive(Default)]
    struct Builder {
        kvs: Vec<u8>,
        n_kv: u64,
        table: Vec<u8>,
        n_tensors: u64,
        data: Vec<u8>,
    }

    fn gguf_str(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    }

    impl Builder {
        /// Adds a key with a raw value type and encoded value.
        fn kv(mut self, key: &str, value_type: u32, value: &[u8]) -> Self {
            self.kvs.extend(gguf_str(key));
            self.kvs.extend(value_type.to_le_bytes());
            self.kvs.extend_from_slice(value);
            self.n_kv += 1;
            self
        }
        fn u32(self, key: &str, v: u32) -> Self {
            self.kv(key, 4, &v.to_le_bytes())
        }
        fn f32(self, key: &str, v: f32) -> Self {
            self.kv(key, 6, &v.to_le_bytes())
        }
        fn str(self, key: &str, v: &str) -> Self {
            self.kv(key, 8, &gguf_str(v))
        }
        fn strs(self, key: &str, items: &[&str]) -> Self {
            let mut v = 8u32.to_le_bytes().to_vec();
            v.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|s| v.extend(gguf_str(s)));
            self.kv(key, 9, &v)
        }
        fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, data: &[u8]) -> Self {
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
        fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
            let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.tensor(name, dims, GGML_F32, &data)
        }
        fn build(&self) -> Vec<u8> {
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

    fn header(tensor_count: u64, kv_count: u64) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(tensor_count.to_le_bytes());
        out.extend(kv_count.to_le_bytes());
        out
    }

    fn parse_err(bytes: &[u8]) -> String {
        let start = Instant::now();
        let msg = parse(bytes).expect_err("should be rejected").to_string();
        assert!(start.elapsed() < Duration::from_secs(1), "slow rejection: {msg}");
        assert!(!msg.contains('\n'), "one-line error: {msg}");
        msg
    }

    #[test]
    fn huge_counts_and_bad_headers_fail_fast() {
        let msg = parse_err(&header(1 << 40, 0));
        assert!(msg.contains("tensor count 1099511627776"), "{msg}");
        let msg = parse_err(&header(0, 1 << 40));
        assert!(msg.contains("metadata count 1099511627776"), "{msg}");
        // A key claiming 2^60 bytes.
        let mut huge_key = header(0, 1);
        huge_key.extend((1u64 << 60).to_le_bytes());
        huge_key.extend([b'a'; 20]);
        let msg = parse_err(&huge_key);
        assert!(msg.contains("count 1152921504606846976"), "{msg}");
        // An array claiming 2^60 u8 values, and a string value claiming 2^60 bytes.
        let mut arr = 0u32.to_le_bytes().to_vec();
        arr.extend((1u64 << 60).to_le_bytes());
        let msg = parse_err(&Builder::default().kv("big", 9, &arr).build());
        assert!(msg.starts_with("GGUF metadata 'big': count"), "{msg}");
        let msg = parse_err(&Builder::default().kv("s", 8, &(1u64 << 60).to_le_bytes()).build());
        assert!(msg.starts_with("GGUF metadata 's': count"), "{msg}");

        assert!(parse_err(b"GGU").starts_with("GGUF header:"));
        assert!(parse_err(b"GGML\x03\0\0\0").starts_with("not a GGUF file"));
        let mut v1 = header(0, 0);
        v1[4] = 1;
        assert!(parse_err(&v1).contains("version 1"));
        let mut big_endian = header(0, 0);
        big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(parse_err(&big_endian).contains("big-endian"));
    }

    #[test]
    fn malformed_metadata_and_tensors_are_errors() {
        let msg = parse_err(&Builder::default().kv("x", 13, &[0; 8]).build());
        assert_eq!(msg, "GGUF metadata 'x': unknown metadata value type 13");
        let msg = parse_err(&Builder::default().u32("k", 1).u32("k", 2).build());
        assert!(msg.contains("'k' appears twice"), "{msg}");
        // Arrays of arrays, nested past the limit, ending in an empty u8 array.
        let mut nested = Vec::new();
        for _ in 0..MAX_ARRAY_DEPTH + 1 {
            nested.extend(9u32.to_le_bytes());
            nested.extend(1u64.to_le_bytes());
        }
        nested.extend(0u32.to_le_bytes());
        nested.extend(0u64.to_le_bytes());
        let msg = parse_err(&Builder::default().kv("deep", 9, &nested).build());
        assert!(msg.contains("nested deeper"), "{msg}");
        let msg =
            parse_err(&Builder::default().kv("a", 4, &[5, 0, 0, 0]).u32("general.alignment", 3).build());
        assert!(msg.contains("general.alignment"), "{msg}");

        let t = |dims: &[u64], ggml_type: u32, data: &[u8]| {
            Builder::default().tensor("w", dims, ggml_type, data).build()
        };
        let msg = parse_err(&t(&[1 << 32, 1 << 32, 1 << 32], GGML_F32, &[]));
        assert!(msg.starts_with("GGUF tensor 'w': shape") && msg.contains("too many elements"), "{msg}");
        let msg = parse_err(&t(&[1 << 62], GGML_F32, &[]));
        assert!(msg.contains("overflows"), "{msg}");
        let msg = parse_err(&t(&[1, 1, 1, 1, 1], GGML_F32, &[0; 4]));
        assert!(msg.contains("5 dimensions"), "{msg}");
        let msg = parse_err(&t(&[3], GGML_F32, &[0; 8]));
        assert!(
            msg.starts_with("GGUF tensor 'w': data [") && msg.contains("extends past end of file"),
            "{msg}"
        );
        let msg = parse_err(&t(&[16], GGML_Q8_0, &[0; 34]));
        assert!(msg.contains("not a multiple of the Q8_0 block size 32"), "{msg}");
        let one = Builder::default().tensor("w", &[1], GGML_F32, &[0; 8]);
        let mut misaligned = one.build();
        // The offset is the last field of the table, which follows the 24-byte header.
        misaligned[24 + one.table.len() - 8] = 4;
        assert!(parse_err(&misaligned).contains("not a multiple of the alignment 32"));
        let two = Builder::default().f32_tensor("w", &[1], &[1.0]).f32_tensor("w", &[1], &[2.0]);
        assert!(parse_err(&two.build()).contains("'w' appears twice"));
    }

    #[test]
    fn dequantizes_each_supported_type() {
        let f16s: Vec<u8> =
            [1.5f32, -2.0, 65504.0].iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        let bf16s: Vec<u8> =
            [1.5f32, -3.0e38].iter().flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut q4_0 = f16::from_f32(2.0).to_le_bytes().to_vec();
        q4_0.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let mut q4_1 = [f16::from_f32(0.25).to_le_bytes(), f16::from_f32(-1.0).to_le_bytes()].concat();
        q4_1.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let b = Builder::default()
            .tensor("f16", &[3], GGML_F16, &f16s)
            .tensor("bf16", &[2], GGML_BF16, &bf16s)
            .tensor("q8", &[32], GGML_Q8_0, &q8)
            .tensor("q4_0", &[32], GGML_Q4_0, &q4_0)
            .tensor("q4_1", &[32], GGML_Q4_1, &q4_1)
            .tensor("q4_k", &[256], 12, &[0; 144])
            .build();
        let file = parse(&b).unwrap();
        let get = |name: &str| dequantize(&file, &b, info(&file, name));
        assert_eq!(get("f16").unwrap(), [1.5, -2.0, 65504.0]);
        assert_eq!(get("bf16").unwrap(), [1.5, f32::from_bits((-3.0e38f32).to_bits() & 0xFFFF_0000)]);
        assert_eq!(get("q8").unwrap(), (0..32).map(|i| 0.5 * (i - 16) as f32).collect::<Vec<_>>());
        // Element j < 16 is the low nibble j of byte j; element 16 + j the high nibble 15 - j.
        let nibbles: Vec<f32> = (0..16).chain((0..16).rev()).map(|q| q as f32).collect();
        let want: Vec<f32> = nibbles.iter().map(|q| 2.0 * (q - 8.0)).collect();
        assert_eq!(get("q4_0").unwrap(), want);
        let want: Vec<f32> = nibbles.iter().map(|q| 0.25 * q + -1.0).collect();
        assert_eq!(get("q4_1").unwrap(), want);
        let msg = get("q4_k").unwrap_err().to_string();
        assert!(msg.contains("'q4_k'") && msg.contains("ggml type 12 (Q4_K)"), "{msg}");
    }

    /// llama.cpp's converter, transcribed index by index from
    /// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`:
    /// output element [h][i][s][c] is input element [h][s][i][c].
    fn llama_cpp_permute(w: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
        let cols = w.len() / rows;
        let half = rows / n_head / 2;
        let mut out = vec![0.0; w.len()];
        for h in 0..n_head {
            for i in 0..half {
                for s in 0..2 {
                    for c in 0..cols {
                        out[((h * half + i) * 2 + s) * cols + c] = w[((h * 2 + s) * half + i) * cols + c];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // One head of 4 rows: GGUF rows [a, b, c, d] hold rope pairs (a, b), (c, d); HF
        // wants pairs (x0, x2), (x1, x3), i.e. rows [a, c, b, d].
        assert_eq!(unpermute_rows(&[0.0, 1.0, 2.0, 3.0], 4, 1).unwrap(), [0.0, 2.0, 1.0, 3.0]);
        for (rows, n_head, cols) in [(24, 3, 5), (24, 3, 1), (12, 1, 2), (16, 4, 3)] {
            let w: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
            let permuted = llama_cpp_permute(&w, rows, n_head);
            assert_ne!(permuted, w);
            assert_eq!(unpermute_rows(&permuted, rows, n_head).unwrap(), w);
            assert_eq!(llama_cpp_permute(&unpermute_rows(&w, rows, n_head).unwrap(), rows, n_head), w);
        }
        assert!(unpermute_rows(&[0.0; 6], 6, 2).is_err(), "heads of odd size");
    }

    /// A one-layer model: hidden 8, 2 heads, 1 kv head, head_dim 4, ffn 6, vocab 5.
    fn tiny_model(arch: &str) -> Vec<u8> {
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
        b.build()
    }

    #[test]
    fn converts_tiny_llama_and_qwen2() {
        let seq = |n: usize| (0..n).map(|x| x as f32).collect::<Vec<_>>();
        let (config, tensors) = to_hf(&tiny_model("llama")).unwrap();
        assert_eq!(config["head_dim"], 4);
        assert_eq!(config["rope_theta"], 10000.0);
        assert_eq!(config["tie_word_embeddings"], false);
        assert_eq!(config["bos_token_id"], Value::Null);
        assert_eq!(config["vocab_size"], 5);
        let get = |ts: &[HostTensor], n: &str| ts.iter().find(|t| t.name == n).unwrap().clone();
        let q = get(&tensors, "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(q.shape, [8, 8]);
        assert_eq!(llama_cpp_permute(&q.values(), 8, 2), seq(64));
        let k = get(&tensors, "model.layers.0.self_attn.k_proj.weight");
        assert_eq!((k.shape.as_slice(), llama_cpp_permute(&k.values(), 4, 1)), (&[4, 8][..], seq(32)));
        assert_eq!(get(&tensors, "lm_head.weight").shape, [5, 8]);
        assert_eq!(get(&tensors, "model.layers.0.mlp.down_proj.weight").shape, [8, 6]);

        let (config, tensors) = to_hf(&tiny_model("qwen2")).unwrap();
        assert_eq!(config["architectures"], json!(["Qwen2ForCausalLM"]));
        assert_eq!(config["model_type"], "qwen2");
        assert_eq!(tensors.len(), 15);
        assert_eq!(*get(&tensors, "model.layers.0.self_attn.q_proj.weight").values(), seq(64));
        assert_eq!(*get(&tensors, "model.layers.0.self_attn.k_proj.bias").values(), seq(4));

        let mut unknown = Builder::default().str("general.architecture", "gpt2").build();
        assert!(to_hf(&unknown).unwrap_err().to_string().contains("'gpt2' is not supported"));
        unknown = tiny_model("llama");
        // Rename a tensor in place: "output.weight" -> "outpux.weight".
        let name = [&13u64.to_le_bytes()[..], b"output.weight"].concat();
        let at = unknown.windows(21).position(|w| w == name).unwrap() + 8;
        unknown[at + 5] = b'x';
        let msg = to_hf(&unknown).unwrap_err().to_string();
        assert_eq!(msg, "GGUF tensor 'outpux.weight' has no Hugging Face equivalent");
    }

    #[test]
    fn tokenizer_json_matches_fixture_tokenizer() {
        let Some(bytes) = fixture() else { return };
        let built: Value =
            serde_json::from_str(&tokenizer_json(&parse(bytes).unwrap()).unwrap().unwrap()).unwrap();
        let Ok(text) = std::fs::read_to_string(fixture_dir().join("tokenizer.json")) else {
            eprintln!("skipped: fixture absent");
            return;
        };
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

    /// Pushes `bytes` of a file of `size` bytes through a reader in chunks of `sizes`
    /// (cycled): the tensors, sorted by name, or the first error.
    fn stream(bytes: &[u8], size: usize, sizes: &[usize]) -> Result<Vec<HostTensor>> {
        let mut reader = GgufReader::new("f.gguf", size as u64);
        let mut out = Vec::new();
        let mut rest = bytes;
        for &n in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, r) = rest.split_at(n.min(rest.len()));
            rest = r;
            reader.push(chunk, &mut |_, t| {
                out.push(t);
                Ok(())
            })?;
        }
        reader.finish()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn whole(bytes: &[u8]) -> Vec<HostTensor> {
        let mut tensors = to_hf(bytes).unwrap().1;
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        tensors
    }

    #[test]
    fn fixture_pushed_in_odd_chunks_converts_like_the_whole_file() {
        let Some(bytes) = fixture() else { return };
        let streamed = stream(bytes, bytes.len(), &[1, 7, 4096, 1 << 20, 3]).unwrap();
        assert!(streamed == whole(bytes), "the same tensors, packed alike");
    }

    /// Where the offset of tensor `name` (one dimension) lies in a built file.
    fn offset_field(bytes: &[u8], name: &str) -> usize {
        let key = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
        bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8 + 4
    }

    #[test]
    fn pushed_files_in_any_table_order_and_bad_ones() {
        let tiny = tiny_model("llama");
        for sizes in [&[1][..], &[5, 64], &[1 << 20]] {
            assert!(stream(&tiny, tiny.len(), sizes).unwrap() == whole(&tiny), "{sizes:?}");
        }
        // The table lists two tensors of one size with their data swapped: read in data order.
        let mut swapped = tiny.clone();
        let (a, b) =
            (offset_field(&tiny, "blk.0.attn_norm.weight"), offset_field(&tiny, "output_norm.weight"));
        for (from, to) in [(a, b), (b, a)] {
            swapped[to..to + 8].copy_from_slice(&tiny[from..from + 8]);
        }
        assert_ne!(swapped, tiny);
        assert!(stream(&swapped, swapped.len(), &[3]).unwrap() == whole(&swapped));

        let err = |bytes: &[u8], size: usize| stream(bytes, size, &[7]).unwrap_err().to_string();
        let mut overlapping = tiny.clone();
        overlapping[b..b + 8].copy_from_slice(&tiny[a..a + 8]);
        let msg = err(&overlapping, tiny.len());
        assert!(
            msg.starts_with("f.gguf: GGUF tensors 'blk.0.attn_norm.weight' (bytes ")
                && msg.ends_with("overlap"),
            "{msg}"
        );
        let msg = err(&tiny[..tiny.len() - 1], tiny.len());
        assert!(
            msg.contains("f.gguf: only")
                && msg.contains("tensor 'output.weight' (bytes")
                && msg.contains("is incomplete"),
            "{msg}"
        );
        let msg = err(&tiny[..40], tiny.len());
        assert!(msg.contains("only 40 of its") && msg.contains("before the end of its header"), "{msg}");
        let msg = err(&tiny[..tiny.len() - 1], tiny.len() - 1);
        assert!(
            msg.starts_with("f.gguf: GGUF tensor 'output.weight': data [")
                && msg.contains("extends past end of file"),
            "{msg}"
        );
        let msg = err(&[&tiny[..], &[0; 10]].concat(), tiny.len() + 5);
        assert!(msg.contains(&format!("more than the {} bytes", tiny.len() + 5)), "{msg}");
        let zip = [&b"PK\x03\x04"[..], &[0; 100]].concat();
        let msg = err(&zip, 1 << 30);
        assert!(msg.starts_with("f.gguf: not a GGUF file"), "{msg}");
        let q4_k = Builder::default().tensor("q4_k", &[256], 12, &[0; 144]).build();
        let msg = err(&q4_k, q4_k.len());
        assert!(msg.contains("'q4_k': ggml type 12 (Q4_K) is not supported"), "{msg}");
    }
}
