// Backward of rope.wgsl: gathers the gradients of q (per row) and of k, v (in KV-cache
// layout, at the row's sequence and position) back into the fused QKV row, rotating q and k
// by the negative angle (the transpose of the forward rotation, with ROPE).

struct Params {
    n_rows: u32, n_q_heads: u32, n_kv_heads: u32, head_dim: u32,
    cache_len: u32, rot_dim: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> rows: array<u32>;     // (sequence, position) per row
@group(0) @binding(2) var<storage, read> dq: array<f32>;       // [rows, Hq * hd]
@group(0) @binding(3) var<storage, read> dk: array<f32>;       // [seqs, cache_len, Hkv, hd]
@group(0) @binding(4) var<storage, read> dv: array<f32>;
@group(0) @binding(5) var<storage, read_write> dqkv: array<f32>;  // [rows, (Hq + 2 Hkv) * hd]
#if ROPE
@group(0) @binding(6) var<storage, read> cos_table: array<f32>;
@group(0) @binding(7) var<storage, read> sin_table: array<f32>;
#endif

/// Gradient of the rotated value of fused column `col` of row `r`.
fn grad_of(r: u32, col: u32) -> f32 {
    let hd = p.head_dim;
    let head = col / hd;
    if (head < p.n_q_heads) { return dq[r * p.n_q_heads * hd + col]; }
    let kv_head = (head - p.n_q_heads) % p.n_kv_heads;
    let at = ((rows[2u * r] * p.cache_len + rows[2u * r + 1u]) * p.n_kv_heads + kv_head) * hd + col % hd;
    if (head < p.n_q_heads + p.n_kv_heads) { return dk[at]; }
    return dv[at];
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.n_rows) { return; }
    let hd = p.head_dim;
    let width = (p.n_q_heads + 2u * p.n_kv_heads) * hd;
    for (var col = lid.x; col < width; col += 64u) {
        var g = grad_of(r, col);
#if ROPE
        let i = col % hd;
        if (col / hd < p.n_q_heads + p.n_kv_heads && i < p.rot_dim) {
            let half = p.rot_dim / 2u;
            let pos = rows[2u * r + 1u];
            let c = cos_table[pos * half + i % half];
            let s = sin_table[pos * half + i % half];
            if (i < half) {
                g = g * c + grad_of(r, col + half) * s;
            } else {
                g = g * c - grad_of(r, col - half) * s;
            }
        }
#endif
        dqkv[r * width + col] = g;
    }
}
