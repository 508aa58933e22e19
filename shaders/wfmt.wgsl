// Not a kernel: the weight operand B of matmul.wgsl and matvec.wgsl, pasted in by `#include
// wfmt`. wload(row, kk) returns elements 4kk..4kk+3 of weight row `row` as f32, whatever the
// storage format; everything else in the kernels is format-blind. The KVEC4 kernels read W's
// rows along K (x·Wᵀ); matmul.wgsl's BVEC4 form reads them along N (dy·W, LoRA's backward
// over a packed base), so a row has p.n elements there.
// f32: B is any strided view (offset and column stride in vec4 units). Packed formats (WQ and one
// W_* flag) are whole [n, k] weights in src/gpu/wfmt.rs's layout: rows of k/32 blocks (k/256
// superblocks for the K-quants), each ggml's bytes padded to whole words, so a row is
// k/32 · words-per-block u32s (k/256 · words-per-superblock).
#if WQ
#if BVEC4
fn wrow() -> u32 { return p.n; }
#else
fn wrow() -> u32 { return p.k; }
#endif
#if W_F16_NATIVE
// Adapters with shader-f16 read the same halves as f16 vectors (the including kernel says
// `enable f16;`, which the preprocessor moves to the top).
@group(0) @binding(2) var<storage, read> b: array<vec4<f16>>;
#else
@group(0) @binding(2) var<storage, read> b: array<u32>;
#endif
#else
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
fn wload(row: u32, kk: u32) -> vec4<f32> { return b[p.b_off + row * p.b_cs + kk]; }
#endif
#if W_F16
#if W_F16_NATIVE
fn wload(row: u32, kk: u32) -> vec4<f32> { return vec4<f32>(b[row * (wrow() / 4u) + kk]); }
#else
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let at = row * (wrow() / 2u) + kk * 2u;
    return vec4<f32>(unpack2x16float(b[at]), unpack2x16float(b[at + 1u]));
}
#endif
#endif
#if W_Q8_0
// Block: d (f16, low half), then 8 words of i8 quants, element j in byte j: d · q.
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let blk = (row * (wrow() / 32u) + kk / 8u) * 9u;
    let d = unpack2x16float(b[blk]).x;
    let w = bitcast<i32>(b[blk + 1u + kk % 8u]);
    // Shifting each byte to the top, then arithmetically down, sign-extends it.
    let q = vec4<i32>(w << 24u, w << 16u, w << 8u, w) >> vec4<u32>(24u);
    return d * vec4<f32>(q);
}
#endif
#if W_Q4_0
// Block: d, then 4 words of nibbles: d · (q − 8).
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let blk = (row * (wrow() / 32u) + kk / 8u) * 5u;
    return unpack2x16float(b[blk]).x * (nibbles(blk, kk) - 8.0);
}
#endif
#if W_Q4_1
// Block: d | m << 16, then 4 words of nibbles: d · q + m.
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let blk = (row * (wrow() / 32u) + kk / 8u) * 5u;
    let dm = unpack2x16float(b[blk]);
    return dm.x * nibbles(blk, kk) + dm.y;
}
#endif
#if W_Q4_K
// Superblock (36 words): d | dmin << 16, 3 words of 6-bit scales and mins, 32 words of
// nibbles. Sub-block s (32 elements) is d·scale·q − dmin·min; its element l is the low (even s)
// or high (odd s) nibble of byte 32·(s/2) + l.
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let blk = (row * (wrow() / 256u) + kk / 64u) * 36u;
    let e = kk % 64u * 4u;
    let s = e / 32u;
    let dm = unpack2x16float(b[blk]);
    let sm = scale_min(blk + 1u, s);
    let q = bytes4((b[blk + 4u + s / 2u * 8u + e % 32u / 4u] >> (s % 2u * 4u)) & 0x0F0F0F0Fu);
    return dm.x * sm.x * q - dm.y * sm.y;
}
#endif
#if W_Q5_K
// Superblock (44 words): as Q4_K with 8 words of fifth bits before the nibbles: bit s of byte
// l is the fifth bit of element l of sub-block s.
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let blk = (row * (wrow() / 256u) + kk / 64u) * 44u;
    let e = kk % 64u * 4u;
    let s = e / 32u;
    let dm = unpack2x16float(b[blk]);
    let sm = scale_min(blk + 1u, s);
    let lo = (b[blk + 12u + s / 2u * 8u + e % 32u / 4u] >> (s % 2u * 4u)) & 0x0F0F0F0Fu;
    let hi = (b[blk + 4u + e % 32u / 4u] >> s) & 0x01010101u;
    return dm.x * sm.x * bytes4(lo | (hi << 4u)) - dm.y * sm.y;
}
#endif
#if W_Q6_K
// Superblock (53 words): 32 words of low nibbles, 16 of 2-bit high parts, 4 of i8 scales (one
// per 16 elements), d. In half h (128 elements), quarter t (32), element l: the low nibble of
// byte 64h + 32(t%2) + l (high half for t ≥ 2), bits 2t of byte 32h + l, scale 8h + l/16 + 2t;
// the value is d·scale·(q − 32).
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let blk = (row * (wrow() / 256u) + kk / 64u) * 53u;
    let e = kk % 64u * 4u;
    let h = e / 128u;
    let t = e % 128u / 32u;
    let l = e % 32u;
    let lo = (b[blk + h * 16u + t % 2u * 8u + l / 4u] >> (t / 2u * 4u)) & 0x0F0F0F0Fu;
    let hi = (b[blk + 32u + h * 8u + l / 4u] >> (2u * t)) & 0x03030303u;
    let is = h * 8u + l / 16u + 2u * t;
    // Shifting the scale's byte to the top, then arithmetically down, sign-extends it.
    let scale = f32(bitcast<i32>(b[blk + 48u + is / 4u] << (24u - is % 4u * 8u)) >> 24u);
    let d = unpack2x16float(b[blk + 52u]).x;
    return d * scale * (bytes4(lo | (hi << 4u)) - 32.0);
}
#endif
#if W_K_SCALES
// Byte i of the packed scales at word `at`.
fn scale_byte(at: u32, i: u32) -> u32 { return (b[at + i / 4u] >> (i % 4u * 8u)) & 255u; }

// ggml's get_scale_min_k4 (Q4_K, Q5_K): the 6-bit scale and min of sub-block s from the 12
// bytes at word `at`: bytes s and s + 4 for s < 4, else byte s + 4's nibbles topped by the two
// high bits of bytes s − 4 and s.
fn scale_min(at: u32, s: u32) -> vec2<f32> {
    if (s < 4u) {
        return vec2<f32>(vec2<u32>(scale_byte(at, s), scale_byte(at, s + 4u)) & vec2<u32>(63u));
    }
    let low = scale_byte(at, s + 4u);
    let top = vec2<u32>(scale_byte(at, s - 4u), scale_byte(at, s)) >> vec2<u32>(6u);
    return vec2<f32>(vec2<u32>(low & 15u, low >> 4u) | (top << vec2<u32>(4u)));
}
#endif
#if WQ
#if W_F16
#else
// The four bytes of a word as numbers, byte 0 first.
fn bytes4(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(255u));
}

// Quants 4kk..4kk+3 of a 4-bit block (ggml's order): elements 0..16 are the low nibbles of
// bytes 0..16, elements 16..32 the high nibbles, so both halves read word kk % 4.
fn nibbles(blk: u32, kk: u32) -> vec4<f32> {
    return bytes4((b[blk + 1u + kk % 4u] >> (kk / 4u % 2u * 4u)) & 0x0F0F0F0Fu);
}
#endif
#endif
