// What the prefill and training attention kernels (attention.wgsl, attention_backward.wgsl,
// attention_flash.wgsl) share: their parameters and the query and KV cache they read.
// Each kernel binds what else it reads, and its outputs, from binding 5 on.

struct Params {
    n_rows: u32, n_q_heads: u32, n_kv_heads: u32, head_dim: u32,
    cache_len: u32, scale: f32, window: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;        // [rows, Hq * hd]
@group(0) @binding(2) var<storage, read> rows: array<u32>;     // (sequence, position) per row
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;  // [seqs, cache_len, Hkv, hd]
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
