//! The GGUF container: header, metadata and tensor table, parsed from untrusted bytes (every
//! read bounds-checked, every count checked against the bytes left before anything is
//! allocated for it), the tensors' byte ranges, and typed metadata look-ups.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, ensure, Result};

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
    /// GGUF order: `ne[0]` first (fastest varying), so the reverse of a row-major shape.
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
pub(super) const MAX_ARRAY_DEPTH: usize = 8;

pub(super) const GGML_F32: u32 = 0;
pub(super) const GGML_F16: u32 = 1;
pub(super) const GGML_Q4_0: u32 = 2;
pub(super) const GGML_Q4_1: u32 = 3;
pub(super) const GGML_Q8_0: u32 = 8;
pub(super) const GGML_Q4_K: u32 = 12;
pub(super) const GGML_Q5_K: u32 = 13;
pub(super) const GGML_Q6_K: u32 = 14;
pub(super) const GGML_BF16: u32 = 30;

/// ggml's name for a type number, for error messages.
pub(super) fn ggml_type_name(t: u32) -> &'static str {
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
        GGML_Q4_K => Some((256, 144)),
        GGML_Q5_K => Some((256, 176)),
        GGML_Q6_K => Some((256, 210)),
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
pub fn tensor_data<'a>(file: &GgufFile, bytes: &'a [u8], info: &GgufTensorInfo) -> Result<&'a [u8]> {
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
pub(super) fn tensor_range(file: &GgufFile, info: &GgufTensorInfo) -> Result<(u64, u64)> {
    let name = &info.name;
    let t = info.ggml_type;
    let (block_elems, block_bytes) = block_layout(t).ok_or_else(|| {
        anyhow!(
            "GGUF tensor '{name}': ggml type {t} ({}) is not supported \
             (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K are)",
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

impl GgufValue {
    /// Any integer value that is non-negative (writers differ in the integer type used).
    pub(super) fn as_uint(&self) -> Option<u64> {
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
    pub(super) fn uint(&self, key: &str) -> Result<Option<u64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_uint()
                .map(Some)
                .ok_or_else(|| anyhow!("GGUF metadata '{key}': expected a non-negative integer, got {v:?}")),
        }
    }

    pub(super) fn required_uint(&self, key: &str) -> Result<u64> {
        self.uint(key)?.ok_or_else(|| anyhow!("GGUF metadata '{key}' is missing"))
    }

    pub(super) fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            // Via the shortest decimal form, so an f32 1e-5 becomes 1e-5, not 9.99999974e-6.
            Some(GgufValue::F32(x)) => Ok(x.to_string().parse().ok()),
            Some(GgufValue::F64(x)) => Ok(Some(*x)),
            Some(v) => bail!("GGUF metadata '{key}': expected a float, got {v:?}"),
        }
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(GgufValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => bail!("GGUF metadata '{key}': expected a boolean, got {v:?}"),
        }
    }

    pub(super) fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(GgufValue::Str(s)) => Ok(Some(s)),
            Some(v) => bail!("GGUF metadata '{key}': expected a string, got {v:?}"),
        }
    }

    pub(super) fn array(&self, key: &str) -> Result<Option<&[GgufValue]>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(items)) => Ok(Some(items)),
            Some(v) => bail!("GGUF metadata '{key}': expected an array, got {v:?}"),
        }
    }

    pub(super) fn str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        let strs = items.iter().map(|v| match v {
            GgufValue::Str(s) => Ok(s.as_str()),
            other => bail!("GGUF metadata '{key}': expected strings, found {other:?}"),
        });
        strs.collect::<Result<_>>().map(Some)
    }

    pub(super) fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::model::gguf::test_files::{data_start, fixture, info, Builder};

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
        // K-quant rows are whole superblocks of 256.
        let msg = parse_err(&t(&[128, 2], GGML_Q6_K, &[0; 210]));
        assert_eq!(msg, "GGUF tensor 'w': row length 128 is not a multiple of the Q6_K block size 256");
        let one = Builder::default().tensor("w", &[1], GGML_F32, &[0; 8]);
        let mut misaligned = one.build();
        // The offset is the last field of the table, which follows the 24-byte header.
        misaligned[24 + one.table.len() - 8] = 4;
        assert!(parse_err(&misaligned).contains("not a multiple of the alignment 32"));
        let two = Builder::default().f32_tensor("w", &[1], &[1.0]).f32_tensor("w", &[1], &[2.0]);
        assert!(parse_err(&two.build()).contains("'w' appears twice"));
    }
}
