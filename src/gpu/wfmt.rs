//! Weight formats, the host side of `shaders/wfmt.wgsl`: ggml's reference quantizers (Q8_0,
//! Q4_0, Q4_1) and f16 rounding, writing the GPU layout the matrix kernels read; GGUF blocks
//! (those and the K-quants Q4_K, Q5_K, Q6_K) repacked into it; and dequantization back to f32.
//!
//! The GPU layout keeps ggml's blocks of consecutive elements of a row (32, or 256 for the
//! K-quants' superblocks) as the file has them, each block padded to whole u32 words:
//! - F16: 16 words, two halves per word (element 2i in the low half);
//! - Q8_0: word 0 = f16 scale d (low half), words 1..9 = 32 i8 quants (element j in byte j);
//! - Q4_0: word 0 = d, words 1..5 = ggml's 16 bytes of nibbles (low nibble of byte j is element
//!   j, high nibble element j + 16);
//! - Q4_1: word 0 = d | m << 16, words 1..5 as Q4_0;
//! - Q4_K (36 words), Q5_K (44), Q6_K (53): ggml's block bytes as they are (`block_q4_K` etc.
//!   in ggml-common.h), Q6_K's 210 padded with 2 zero bytes after its trailing d.
//!
//! So a GGUF block is repacked by copying its bytes and padding to a word (Q4_1's 20 bytes and
//! Q4_K's and Q5_K's need no padding at all). Keeping a block's scales beside its quants keeps
//! a thread's reads of one block in one short run (a cache line or two on GPUs), where
//! separate scale and quant arrays would cost a second, strided stream for the scales.

use half::f16;

/// How a weight matrix is stored on the GPU (ggml's names for its formats).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// Elements per block of the formats Keel quantizes to.
const BLOCK: usize = 32;
/// Elements per superblock of the K-quants.
const SUPERBLOCK: usize = 256;

impl WeightFormat {
    pub const ALL: [WeightFormat; 8] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q4_K,
        WeightFormat::Q5_K,
        WeightFormat::Q6_K,
    ];

    /// The formats [`quantize`] writes, which `--weights` may ask for; the K-quants only come
    /// from files.
    pub const QUANTIZABLE: [WeightFormat; 5] =
        [WeightFormat::F32, WeightFormat::F16, WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1];

    /// The name used by `--weights` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_0 => "q4_0",
            WeightFormat::Q4_1 => "q4_1",
            WeightFormat::Q4_K => "q4_k",
            WeightFormat::Q5_K => "q5_k",
            WeightFormat::Q6_K => "q6_k",
        }
    }

    /// Elements per block.
    pub fn block_elements(self) -> usize {
        match self {
            WeightFormat::Q4_K | WeightFormat::Q5_K | WeightFormat::Q6_K => SUPERBLOCK,
            _ => BLOCK,
        }
    }

    /// u32 words per block.
    pub fn block_words(self) -> usize {
        match self {
            WeightFormat::F32 => 32,
            WeightFormat::F16 => 16,
            WeightFormat::Q8_0 => 9,
            WeightFormat::Q4_0 | WeightFormat::Q4_1 => 5,
            WeightFormat::Q4_K => 36,
            WeightFormat::Q5_K => 44,
            WeightFormat::Q6_K => 53,
        }
    }

    /// Whether rows of `cols` elements can be stored in this format (f32 always; the others
    /// need whole blocks).
    pub fn fits(self, cols: usize) -> bool {
        self == WeightFormat::F32 || (cols > 0 && cols.is_multiple_of(self.block_elements()))
    }

    /// Words of a `rows × cols` matrix (cols whole blocks unless f32).
    pub fn words(self, rows: usize, cols: usize) -> usize {
        match self {
            WeightFormat::F32 => rows * cols,
            _ => rows * cols / self.block_elements() * self.block_words(),
        }
    }
}

fn h(x: f32) -> u32 {
    u32::from(f16::from_f32(x).to_bits())
}

fn hf(bits: u32) -> f32 {
    f16::from_bits(bits as u16).to_f32()
}

/// Packs 4 bytes little-endian into a word.
fn word(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Quantizes one block of 32 values as ggml's `quantize_row_*_ref` does, into GPU words.
fn quantize_block(fmt: WeightFormat, x: &[f32], out: &mut Vec<u32>) {
    match fmt {
        WeightFormat::F32 => out.extend(x.iter().map(|v| v.to_bits())),
        WeightFormat::F16 => out.extend(x.chunks_exact(2).map(|p| h(p[0]) | h(p[1]) << 16)),
        WeightFormat::Q8_0 => {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.push(h(d));
            // roundf: halves away from zero, as Rust's round.
            let q: Vec<u8> = x.iter().map(|v| (v * id).round() as i8 as u8).collect();
            out.extend(q.chunks_exact(4).map(word));
        }
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
            let (d, m, bias) = if fmt == WeightFormat::Q4_0 {
                // The value of largest magnitude, sign kept, maps to -8.
                let max = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                (max / -8.0, 0.0, 8.5)
            } else {
                let min = x.iter().fold(f32::MAX, |m, &v| m.min(v));
                let max = x.iter().fold(-f32::MAX, |m, &v| m.max(v));
                ((max - min) / 15.0, min, 0.5)
            };
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            // (int8_t) truncates toward zero, then MIN(15, .).
            let q = |v: f32| (((v - m) * id + bias) as i8).min(15) as u8;
            out.push(if fmt == WeightFormat::Q4_0 { h(d) } else { h(d) | h(m) << 16 });
            let bytes: Vec<u8> = (0..16).map(|j| q(x[j]) | q(x[j + 16]) << 4).collect();
            out.extend(bytes.chunks_exact(4).map(word));
        }
        WeightFormat::Q4_K | WeightFormat::Q5_K | WeightFormat::Q6_K => {
            unreachable!("quantize refuses {fmt:?}")
        }
    }
}

/// Quantizes a row-major matrix whose rows have `cols` elements (`fmt.fits(cols)`).
pub fn quantize(fmt: WeightFormat, data: &[f32], cols: usize) -> Vec<u32> {
    assert!(WeightFormat::QUANTIZABLE.contains(&fmt), "Keel does not quantize to {fmt:?}");
    assert!(fmt.fits(cols) && data.len().is_multiple_of(cols.max(1)), "{cols} columns do not fit {fmt:?}");
    if fmt == WeightFormat::F32 {
        return data.iter().map(|v| v.to_bits()).collect();
    }
    let mut out = Vec::with_capacity(fmt.words(data.len() / cols, cols));
    for block in data.chunks_exact(BLOCK) {
        quantize_block(fmt, block, &mut out);
    }
    out
}

/// The f32 values of packed words, by ggml's definitions (`dequantize_row_*` in ggml-quants.c):
/// Q8_0 d·q, Q4_0 d·(q−8), Q4_1 d·q + m, and the K-quants in `dequantize_superblock`.
pub fn dequantize(fmt: WeightFormat, words: &[u32]) -> Vec<f32> {
    if fmt == WeightFormat::F32 {
        return words.iter().map(|&w| f32::from_bits(w)).collect();
    }
    let mut out = Vec::with_capacity(words.len() / fmt.block_words() * fmt.block_elements());
    for b in words.chunks_exact(fmt.block_words()) {
        let bytes: Vec<u8> = b.iter().flat_map(|w| w.to_le_bytes()).collect();
        let (d, m) = (hf(b[0] & 0xFFFF), hf(b[0] >> 16));
        let quants = &bytes[4..];
        match fmt {
            WeightFormat::F16 => out.extend(b.iter().flat_map(|&w| [hf(w & 0xFFFF), hf(w >> 16)])),
            WeightFormat::Q8_0 => out.extend(quants.iter().map(|&q| d * f32::from(q as i8))),
            WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
                let nibbles = quants.iter().map(|q| q & 0xF).chain(quants.iter().map(|q| q >> 4));
                if fmt == WeightFormat::Q4_0 {
                    out.extend(nibbles.map(|q| d * (i32::from(q) - 8) as f32));
                } else {
                    out.extend(nibbles.map(|q| d * f32::from(q) + m));
                }
            }
            _ => dequantize_superblock(fmt, &bytes, &mut out),
        }
    }
    out
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `s` (of 8) from the 12
/// bytes Q4_K and Q5_K pack them into.
fn scale_min_k4(s: usize, q: &[u8]) -> (f32, f32) {
    let (scale, min) = if s < 4 {
        (q[s] & 63, q[s + 4] & 63)
    } else {
        ((q[s + 4] & 0xF) | (q[s - 4] >> 6) << 4, (q[s + 4] >> 4) | (q[s] >> 6) << 4)
    };
    (f32::from(scale), f32::from(min))
}

/// One K-quant superblock of 256 elements from its ggml bytes, with the products in ggml's
/// (and gguf-py's) order, so that the values are theirs bit for bit:
/// - Q4_K: d, dmin (f16), 12 bytes of scales and mins, 128 bytes of nibbles: sub-block s of
///   32 elements is (d·scale)·q − dmin·min, its nibbles the low (even s) or high (odd s) halves
///   of bytes 32·(s/2)..;
/// - Q5_K: as Q4_K with 32 bytes of fifth bits before the nibbles: bit s of byte l is the
///   fifth bit of element l of sub-block s;
/// - Q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales (one per 16
///   elements), d (f16) last: (d·scale)·(q − 32).
fn dequantize_superblock(fmt: WeightFormat, b: &[u8], out: &mut Vec<f32>) {
    let f16_at = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    if fmt == WeightFormat::Q6_K {
        let (ql, qh, scales, d) = (&b[..128], &b[128..192], &b[192..208], f16_at(208));
        for e in 0..SUPERBLOCK {
            // Half h of 128 elements, quarter t of 32 within it, element l of the quarter.
            let (h, t, l) = (e / 128, e % 128 / 32, e % 32);
            let lo = ql[h * 64 + t % 2 * 32 + l] >> (t / 2 * 4) & 0xF;
            let hi = qh[h * 32 + l] >> (2 * t) & 3;
            let scale = scales[h * 8 + l / 16 + 2 * t] as i8;
            out.push(d * f32::from(scale) * f32::from((lo | hi << 4) as i8 - 32));
        }
        return;
    }
    let (d, dmin, scales) = (f16_at(0), f16_at(2), &b[4..16]);
    let (fifth, nibbles) =
        if fmt == WeightFormat::Q5_K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
    for s in 0..8 {
        let (scale, min) = scale_min_k4(s, scales);
        let (ds, dm) = (d * scale, dmin * min);
        for l in 0..32 {
            let mut q = nibbles[s / 2 * 32 + l] >> (s % 2 * 4) & 0xF;
            if let Some(fifth) = fifth {
                q |= (fifth[l] >> s & 1) << 4;
            }
            out.push(ds * f32::from(q) - dm);
        }
    }
}

/// A ggml block format's (bytes per block, bytes of its header padded to a word in the GPU
/// layout); None for F32 and F16, which are not blocks.
fn ggml_block(fmt: WeightFormat) -> Option<(usize, usize)> {
    match fmt {
        WeightFormat::F32 | WeightFormat::F16 => None,
        WeightFormat::Q8_0 => Some((34, 2)),
        WeightFormat::Q4_0 => Some((18, 2)),
        WeightFormat::Q4_1 => Some((20, 0)),
        WeightFormat::Q4_K => Some((144, 0)),
        WeightFormat::Q5_K => Some((176, 0)),
        WeightFormat::Q6_K => Some((210, 0)),
    }
}

/// Repacks GGUF data of `fmt` (F16 halves, or ggml blocks) into GPU words: Q8_0's and Q4_0's
/// f16 header padded to a word, Q6_K's block padded at its end, every other byte copied.
pub fn from_ggml(fmt: WeightFormat, bytes: &[u8]) -> Vec<u32> {
    let Some((block_bytes, header)) = ggml_block(fmt) else {
        return bytes.chunks_exact(4).map(word).collect();
    };
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * fmt.block_words());
    let mut block = Vec::with_capacity(fmt.block_words() * 4);
    for b in bytes.chunks_exact(block_bytes) {
        block.clear();
        block.extend_from_slice(&b[..header]);
        block.resize(block.len().next_multiple_of(4), 0);
        block.extend_from_slice(&b[header..]);
        block.resize(fmt.block_words() * 4, 0);
        out.extend(block.chunks_exact(4).map(word));
    }
    out
}

/// `blocks` ggml blocks of `fmt` (a block format) of random bytes, with random finite f16
/// scales: within ±`scale`, or any finite f16 where `scale` is None.
#[cfg(test)]
pub(crate) fn random_ggml_blocks(fmt: WeightFormat, blocks: usize, seed: u64, scale: Option<f32>) -> Vec<u8> {
    let mut rng = crate::rng::Rng::seed_from_u64(seed);
    let (block_bytes, _) = ggml_block(fmt).expect("a block format");
    let f16_fields: &[usize] = match fmt {
        WeightFormat::Q4_1 | WeightFormat::Q4_K | WeightFormat::Q5_K => &[0, 2],
        WeightFormat::Q6_K => &[208],
        _ => &[0],
    };
    let mut out: Vec<u8> = (0..blocks * block_bytes).map(|_| rng.next_u64() as u8).collect();
    for block in out.chunks_exact_mut(block_bytes) {
        for &at in f16_fields {
            let h = match scale {
                Some(s) => f16::from_f32(((rng.next_f64() * 2.0 - 1.0) as f32) * s),
                // Random sign and mantissa, any exponent but all ones (inf, NaN).
                None => f16::from_bits(rng.next_u64() as u16 & 0x83FF | ((rng.next_u64() % 31) as u16) << 10),
            };
            block[at..at + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    out
}

/// A random `rows × cols` weight packed in `fmt`: random values quantized by Keel, or, for the
/// K-quants, random ggml blocks whose scales keep the values within about ±1.
#[cfg(test)]
pub(crate) fn random_packed(fmt: WeightFormat, rows: usize, cols: usize, seed: u64) -> Vec<u32> {
    if WeightFormat::QUANTIZABLE.contains(&fmt) {
        return quantize(fmt, &crate::cpu::test_data::rand_vec(seed, rows * cols, 1.0), cols);
    }
    // Q4_K and Q5_K: scale · q and min reach 63 · 31 and 63; Q6_K: 127 · 32.
    let scale = if fmt == WeightFormat::Q6_K { 1.0 / 4096.0 } else { 1.0 / 2048.0 };
    let blocks = rows * cols / fmt.block_elements();
    from_ggml(fmt, &random_ggml_blocks(fmt, blocks, seed, Some(scale)))
}

/// gguf-py's NumPy dequantization (`scripts/gguf_dequantize.py`), the tests' oracle for the
/// block layouts, run on raw ggml bytes in a scratch folder of its own.
#[cfg(test)]
pub(crate) struct GgufPy {
    script: std::path::PathBuf,
    dir: std::path::PathBuf,
}

#[cfg(test)]
impl GgufPy {
    /// None (skipped, or failed under KEEL_REQUIRE_FIXTURES=1) where python3 lacks the gguf
    /// and numpy packages.
    pub(crate) fn find(tag: &str) -> Option<GgufPy> {
        let has_gguf = std::process::Command::new("python3")
            .args(["-c", "import gguf, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_gguf {
            crate::testing::skip("python3 with the gguf and numpy packages (pip install gguf numpy) absent");
            return None;
        }
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gguf_dequantize.py");
        let dir = std::env::temp_dir().join(format!("keel-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Some(GgufPy { script, dir })
    }

    /// The f32 bits gguf-py dequantizes `bytes` of ggml type `type_name` (e.g. "Q4_K") to.
    pub(crate) fn dequantize(&self, type_name: &str, bytes: &[u8]) -> Vec<u32> {
        let (source, target) = (self.dir.join("blocks.bin"), self.dir.join("values.f32"));
        std::fs::write(&source, bytes).unwrap();
        let run = std::process::Command::new("python3")
            .arg(&self.script)
            .arg(type_name)
            .arg(&source)
            .arg(&target)
            .output()
            .unwrap();
        assert!(run.status.success(), "{type_name}: {}", String::from_utf8_lossy(&run.stderr));
        std::fs::read(&target).unwrap().chunks_exact(4).map(word).collect()
    }
}

#[cfg(test)]
impl Drop for GgufPy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_data::rand_vec;

    /// A hand-built block per format, dequantized by hand.
    #[test]
    fn dequantizes_hand_built_blocks() {
        let d = f16::from_f32(0.5).to_bits() as u32;
        let m = f16::from_f32(-1.0).to_bits() as u32;
        // Q8_0: quants 0, 1, -1, 127, -128, then 0s.
        let mut q8 = vec![d, u32::from_le_bytes([0, 1, 0xFF, 127]), u32::from_le_bytes([0x80, 0, 0, 0])];
        q8.extend([0; 6]);
        let got = dequantize(WeightFormat::Q8_0, &q8);
        assert_eq!(&got[..5], &[0.0, 0.5, -0.5, 63.5, -64.0]);
        assert!(got[5..].iter().all(|&v| v == 0.0) && got.len() == 32);
        // Byte 0 = 0x3A: element 0 has nibble 10, element 16 nibble 3; byte 1 = 0xF0: 0 and 15.
        let nib = [u32::from_le_bytes([0x3A, 0xF0, 0, 0]), 0, 0, 0];
        let q40 = dequantize(WeightFormat::Q4_0, &[&[d][..], &nib].concat());
        assert_eq!((q40[0], q40[16], q40[1], q40[17], q40[2]), (1.0, -2.5, -4.0, 3.5, -4.0));
        let q41 = dequantize(WeightFormat::Q4_1, &[&[d | m << 16][..], &nib].concat());
        assert_eq!((q41[0], q41[16], q41[1], q41[17], q41[2]), (4.0, 0.5, -1.0, 6.5, -1.0));
        let f = dequantize(WeightFormat::F16, &[d | m << 16; 16]);
        assert_eq!((f[0], f[1], f.len()), (0.5, -1.0, 32));
    }

    /// ggml's reference quantizers on known values: the maximum maps to the extreme quant,
    /// ties round as ggml does, and the dequantized error stays within half a step.
    #[test]
    fn quantizers_follow_ggml() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect(); // -16..15
                                                                      // Q8_0: d = 16/127; -16 → -127, 15 → round(119.06) = 119.
        let q8 = quantize(WeightFormat::Q8_0, &x, 32);
        assert_eq!(hf(q8[0]), f16::from_f32(16.0 / 127.0).to_f32());
        assert_eq!(q8[1].to_le_bytes()[0] as i8, -127);
        assert_eq!(q8[8].to_le_bytes()[3] as i8, 119);
        // Q4_0: max by magnitude is -16, d = 2; -16·(1/2) + 8.5 = 0.5 → 0; 15 → 16.0 → min(15).
        let q40 = quantize(WeightFormat::Q4_0, &x, 32);
        assert_eq!(hf(q40[0]), 2.0);
        assert_eq!(q40[1] & 0xF, 0, "element 0");
        assert_eq!(q40[4] >> 28, 15, "element 31 (high nibble of byte 15)");
        // Q4_1: min -16, d = 31/15; element 0 → 0, element 31 → 15.
        let q41 = quantize(WeightFormat::Q4_1, &x, 32);
        assert_eq!((hf(q41[0] & 0xFFFF), hf(q41[0] >> 16)), (f16::from_f32(31.0 / 15.0).to_f32(), -16.0));
        assert_eq!((q41[1] & 0xF, q41[4] >> 28), (0, 15));
        // An all-zero block has d = 0 and dequantizes to zeros (Q4_0: q = 8).
        for fmt in WeightFormat::QUANTIZABLE {
            let z = quantize(fmt, &[0.0; 32], 32);
            assert_eq!(dequantize(fmt, &z), vec![0.0; 32], "{fmt:?}");
        }
        // Round trips on random rows: error within half a step (plus f16 rounding of d); Q4_0
        // maps +max to 15 = 7 steps, a full step off (ggml's clamp), so its bound is a step.
        let x = rand_vec(7, 4 * 64, 1.0);
        for (fmt, step) in [
            (WeightFormat::F16, 1e-3),
            (WeightFormat::Q8_0, 1.0 / 127.0),
            (WeightFormat::Q4_0, 2.0 / 8.0),
            (WeightFormat::Q4_1, 2.0 / 15.0),
        ] {
            let back = dequantize(fmt, &quantize(fmt, &x, 64));
            assert_eq!(back.len(), x.len());
            let worst = x.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst <= step * 0.51 + 1e-3, "{fmt:?}: worst error {worst}");
        }
    }

    /// GGUF blocks repack to the same values `gguf::dequantize` gives.
    #[test]
    fn repacks_ggml_blocks() {
        let d = f16::from_f32(0.25).to_le_bytes();
        let m = f16::from_f32(2.0).to_le_bytes();
        let qs: Vec<u8> = (0..32).map(|i| (i * 7) as u8).collect();
        let q8 = [&d[..], &qs].concat();
        let want: Vec<f32> = qs.iter().map(|&q| 0.25 * f32::from(q as i8)).collect();
        assert_eq!(dequantize(WeightFormat::Q8_0, &from_ggml(WeightFormat::Q8_0, &q8)), want);
        let q41 = [&d[..], &m, &qs[..16]].concat();
        let lo = qs[..16].iter().map(|q| q & 0xF);
        let want: Vec<f32> =
            lo.chain(qs[..16].iter().map(|q| q >> 4)).map(|q| 0.25 * f32::from(q) + 2.0).collect();
        assert_eq!(dequantize(WeightFormat::Q4_1, &from_ggml(WeightFormat::Q4_1, &q41)), want);
    }

    /// One K-quant superblock per format, built by hand (both halves of Q4_K's packed 6-bit
    /// scales and mins, Q5_K's fifth bit, Q6_K's high bits and signed scales), dequantized by hand.
    #[test]
    fn dequantizes_hand_built_k_quant_superblocks() {
        let f16_bytes = |x: f32| f16::from_f32(x).to_le_bytes();
        // Sub-block 0: scale 3, min 5 (and the top bits 01, 10 of sub-block 4's); sub-block 4:
        // scale 2 | 1 << 4 = 18, min 7 | 2 << 4 = 39.
        let mut scales = [0u8; 12];
        (scales[0], scales[4], scales[8]) = (0b01_000011, 0b10_000101, 0x72);
        let mut nibbles = [0u8; 128];
        nibbles[0] = 0x94; // element 0: 4; element 32 (sub-block 1, scale 0, min 0): 9
        nibbles[64] = 0x0A; // element 128 (sub-block 4): 10
        let head = [&f16_bytes(0.5)[..], &f16_bytes(0.25), &scales].concat();
        let q4k =
            dequantize(WeightFormat::Q4_K, &from_ggml(WeightFormat::Q4_K, &[&head[..], &nibbles].concat()));
        assert_eq!((q4k.len(), q4k[0], q4k[32], q4k[128]), (256, 0.5 * 3.0 * 4.0 - 0.25 * 5.0, 0.0, 80.25));
        let mut fifth = [0u8; 32];
        fifth[0] = 1 << 4; // element 128's fifth bit
        let q5k = [&head[..], &fifth, &nibbles].concat();
        let q5k = dequantize(WeightFormat::Q5_K, &from_ggml(WeightFormat::Q5_K, &q5k));
        assert_eq!((q5k[0], q5k[128]), (4.75, 0.5 * 18.0 * 26.0 - 0.25 * 39.0));
        // Element 0: low nibble 5, high bits 01, scale -2; element 64: 3, 10, scale 3.
        let (mut ql, mut qh, mut sc) = ([0u8; 128], [0u8; 64], [0u8; 16]);
        (ql[0], qh[0], sc[0], sc[4]) = (0x35, 0b0010_0001, (-2i8) as u8, 3);
        let q6k = [&ql[..], &qh, &sc, &f16_bytes(0.5)].concat();
        let q6k = dequantize(WeightFormat::Q6_K, &from_ggml(WeightFormat::Q6_K, &q6k));
        assert_eq!((q6k.len(), q6k[0], q6k[64], q6k[128]), (256, 11.0, 4.5, 0.0));
    }

    /// Random blocks of every ggml block format (any finite f16 scales) dequantize to gguf-py's
    /// values bit for bit (`scripts/gguf_dequantize.py`; skipped, or failed under
    /// KEEL_REQUIRE_FIXTURES=1, where python3 lacks the gguf and numpy packages).
    #[test]
    fn dequantizes_as_gguf_py() {
        let Some(gguf_py) = GgufPy::find("gguf-py") else { return };
        let formats = [
            ("Q8_0", WeightFormat::Q8_0),
            ("Q4_0", WeightFormat::Q4_0),
            ("Q4_1", WeightFormat::Q4_1),
            ("Q4_K", WeightFormat::Q4_K),
            ("Q5_K", WeightFormat::Q5_K),
            ("Q6_K", WeightFormat::Q6_K),
        ];
        for (seed, (name, fmt)) in formats.into_iter().enumerate() {
            let bytes = random_ggml_blocks(fmt, 64, seed as u64, None);
            let want = gguf_py.dequantize(name, &bytes);
            let got: Vec<u32> =
                dequantize(fmt, &from_ggml(fmt, &bytes)).iter().map(|v| v.to_bits()).collect();
            assert_eq!(got.len(), 64 * fmt.block_elements(), "{name}");
            assert!(got.iter().any(|&v| v != 0), "{name}: all zeros");
            if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                let (g, w) = (f32::from_bits(got[i]), f32::from_bits(want[i]));
                panic!("{name}: element {i}: Keel {g:e}, gguf-py {w:e}");
            }
            assert_eq!(got.len(), want.len(), "{name}");
        }
    }
}
