// Splits each row of the fused QKV projection into heads, applies rotary position
// embeddings (Hugging Face's rotate_half convention, with ROPE) to the first rot_dim
// dimensions of each q and k head (all of them, or a partial rotary's share), writes q to
// `q_out` and k, v into the KV cache at the row's (sequence, position). One workgroup per row.

struct Params {
    n_rows: u32, n_q_heads: u32, n_kv_heads: u32, head_dim: u32,
    cache_len: u32, rot_dim: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;      // [rows, (Hq + 2 Hkv) * hd]
@group(0) @binding(2) var<storage, read> rows: array<u32>;     // (sequence, position) per row
@group(0) @binding(3) var<storage, read_write> q_out: array<f32>;   // [rows, Hq * hd]
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>; // [seqs, cache_len, Hkv, hd]
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;
#if ROPE
@group(0) @binding(6) var<storage, read> cos_table: array<f32>;  // [positions, rot_dim / 2]
@group(0) @binding(7) var<storage, read> sin_table: array<f32>;
#endif

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.n_rows) { return; }
    let hd = p.head_dim;
    let width = (p.n_q_heads + 2u * p.n_kv_heads) * hd;
    let seq = rows[2u * r];
    let pos = rows[2u * r + 1u];
    for (var col = lid.x; col < width; col += 64u) {
        let head = col / hd;
        let i = col % hd;
        var v = qkv[r * width + col];
#if ROPE
        if (head < p.n_q_heads + p.n_kv_heads && i < p.rot_dim) {
            let half = p.rot_dim / 2u;
            let j = i % half;
            let c = cos_table[pos * half + j];
            let s = sin_table[pos * half + j];
            if (i < half) {
                v = v * c - qkv[r * width + col + half] * s;
            } else {
                v = v * c + qkv[r * width + col - half] * s;
            }
        }
#endif
        if (head < p.n_q_heads) {
            q_out[r * p.n_q_heads * hd + col] = v;
        } else {
            let kv_head = (head - p.n_q_heads) % p.n_kv_heads;
            let at = ((seq * p.cache_len + pos) * p.n_kv_heads + kv_head) * hd + i;
            if (head < p.n_q_heads + p.n_kv_heads) {
                k_cache[at] = v;
            } else {
                v_cache[at] = v;
            }
        }
    }
}
