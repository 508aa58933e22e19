// Not a kernel: the weight operand B of matmul.wgsl and matvec.wgsl in their KVEC4 form, pasted
// in by `#include wfmt`. wload(row, kk) returns elements 4kk..4kk+3 of weight row `row` as f32,
// whatever the storage format; everything else in the kernels is format-blind.
// f32: B is any strided view (offset and column stride in vec4 units). Packed formats (WQ and one
// W_* flag) are whole [n, k] weights in src/gpu/wfmt.rs's layout: rows of k/32 blocks, each
// block its scale word(s) then its quants, so a row is k/32 · words-per-block u32s.
#if WQ
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
fn wload(row: u32, kk: u32) -> vec4<f32> { return vec4<f32>(b[row * (p.k / 4u) + kk]); }
#else
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let at = row * (p.k / 2u) + kk * 2u;
    return vec4<f32>(unpack2x16float(b[at]), unpack2x16float(b[at + 1u]));
}
#endif
#endif
#if W_Q8_0
// Block: d (f16, low half), then 8 words of i8 quants, element j in byte j: d · q.
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let blk = (row * (p.k / 32u) + kk / 8u) * 9u;
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
    let blk = (row * (p.k / 32u) + kk / 8u) * 5u;
    return unpack2x16float(b[blk]).x * (nibbles(blk, kk) - 8.0);
}
#endif
#if W_Q4_1
// Block: d | m << 16, then 4 words of nibbles: d · q + m.
fn wload(row: u32, kk: u32) -> vec4<f32> {
    let blk = (row * (p.k / 32u) + kk / 8u) * 5u;
    let dm = unpack2x16float(b[blk]);
    return dm.x * nibbles(blk, kk) + dm.y;
}
#endif
#if WQ
#if W_F16
#else
// Quants 4kk..4kk+3 of a 4-bit block (ggml's order): elements 0..16 are the low nibbles of
// bytes 0..16, elements 16..32 the high nibbles, so both halves read word kk % 4.
fn nibbles(blk: u32, kk: u32) -> vec4<f32> {
    let w = b[blk + 1u + kk % 4u] >> (kk / 4u % 2u * 4u);
    return vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(15u));
}
#endif
#endif
