//! Weight formats: ggml's reference quantizers (Q8_0, Q4_0, Q4_1) and f16 rounding, writing
//! the GPU layout the matmul kernels read (`shaders/wfmt.wgsl`), and dequantization back to f32.
//!
//! The GPU layout keeps ggml's blocks of 32 consecutive elements of a row, interleaved (a
//! block's scale words right before its quants), each block padded to whole u32 words:
//! - F16: 16 words, two halves per word (element 2i in the low half);
//! - Q8_0: word 0 = f16 scale d (low half), words 1..9 = 32 i8 quants (element j in byte j);
//! - Q4_0: word 0 = d, words 1..5 = ggml's 16 bytes of nibbles (low nibble of byte j is element
//!   j, high nibble element j + 16);
//! - Q4_1: word 0 = d | m << 16, words 1..5 as Q4_0.
//!
//! So a GGUF block is repacked by copying its bytes and padding the f16 header to a word
//! (Q4_1's 20 bytes need no padding at all). Interleaving keeps a thread's reads of one block
//! in one 20–64 byte run (one cache line on GPUs), where separate scale and quant arrays would
//! cost a second, strided stream for the scales.

use half::f16;

/// How a weight matrix is stored on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    Q8_0,
    Q4_0,
    Q4_1,
}

/// Elements per block (and the row length every packed format needs a multiple of).
pub const BLOCK: usize = 32;

impl WeightFormat {
    pub const ALL: [WeightFormat; 5] =
        [WeightFormat::F32, WeightFormat::F16, WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1];

    /// The name used by `--weights` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_0 => "q4_0",
            WeightFormat::Q4_1 => "q4_1",
        }
    }

    pub fn parse(s: &str) -> Option<WeightFormat> {
        WeightFormat::ALL.into_iter().find(|f| f.name() == s)
    }

    /// u32 words per block of 32 elements.
    pub fn block_words(self) -> usize {
        match self {
            WeightFormat::F32 => 32,
            WeightFormat::F16 => 16,
            WeightFormat::Q8_0 => 9,
            WeightFormat::Q4_0 | WeightFormat::Q4_1 => 5,
        }
    }

    /// Whether rows of `cols` elements can be stored in this format (f32 always; the others
    /// need whole blocks).
    pub fn fits(self, cols: usize) -> bool {
        self == WeightFormat::F32 || (cols > 0 && cols.is_multiple_of(BLOCK))
    }

    /// Words of a `rows × cols` matrix (cols a multiple of [`BLOCK`] unless f32).
    pub fn words(self, rows: usize, cols: usize) -> usize {
        match self {
            WeightFormat::F32 => rows * cols,
            _ => rows * cols / BLOCK * self.block_words(),
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
    }
}

/// Quantizes a row-major matrix whose rows have `cols` elements (`fmt.fits(cols)`).
pub fn quantize(fmt: WeightFormat, data: &[f32], cols: usize) -> Vec<u32> {
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

/// The f32 values of packed words, by ggml's definitions: Q8_0 d·q, Q4_0 d·(q−8), Q4_1 d·q + m.
pub fn dequantize(fmt: WeightFormat, words: &[u32]) -> Vec<f32> {
    if fmt == WeightFormat::F32 {
        return words.iter().map(|&w| f32::from_bits(w)).collect();
    }
    let mut out = Vec::with_capacity(words.len() / fmt.block_words() * BLOCK);
    for b in words.chunks_exact(fmt.block_words()) {
        let bytes: Vec<u8> = b[1..].iter().flat_map(|w| w.to_le_bytes()).collect();
        let (d, m) = (hf(b[0] & 0xFFFF), hf(b[0] >> 16));
        match fmt {
            WeightFormat::F16 => out.extend(b.iter().flat_map(|&w| [hf(w & 0xFFFF), hf(w >> 16)])),
            WeightFormat::Q8_0 => out.extend(bytes.iter().map(|&q| d * f32::from(q as i8))),
            _ => {
                let nibbles = bytes.iter().map(|q| q & 0xF).chain(bytes.iter().map(|q| q >> 4));
                if fmt == WeightFormat::Q4_0 {
                    out.extend(nibbles.map(|q| d * (i32::from(q) - 8) as f32));
                } else {
                    out.extend(nibbles.map(|q| d * f32::from(q) + m));
                }
            }
        }
    }
    out
}

/// Repacks GGUF data of `fmt` (F16 halves, or ggml blocks of 34/18/20 bytes) into GPU words:
/// each block's f16 header padded to a word, its quants copied.
pub fn from_ggml(fmt: WeightFormat, bytes: &[u8]) -> Vec<u32> {
    let (block_bytes, header) = match fmt {
        WeightFormat::F32 | WeightFormat::F16 => return bytes.chunks_exact(4).map(word).collect(),
        WeightFormat::Q8_0 => (34, 2),
        WeightFormat::Q4_0 => (18, 2),
        WeightFormat::Q4_1 => (20, 4),
    };
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * fmt.block_words());
    for b in bytes.chunks_exact(block_bytes) {
        let mut head = [0u8; 4];
        head[..header].copy_from_slice(&b[..header]);
        out.push(u32::from_le_bytes(head));
        out.extend(b[header..].chunks_exact(4).map(word));
    }
    out
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
        for fmt in WeightFormat::ALL {
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
}
