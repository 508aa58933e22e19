// Backward of attention.wgsl, in two passes over the saved q, KV cache, output and
// log-sum-exp (probabilities are recomputed, never stored):
//   p_ij = exp(q_i · k_j · scale - lse_i),  D_i = dO_i · O_i,
//   ds_ij = p_ij (dO_i · v_j - D_i),
//   dq_i = scale Σ_j ds_ij k_j,  dk_j = scale Σ_i ds_ij q_i,  dv_j = Σ_i p_ij dO_i.
// Default entry: one workgroup per (row, query head) → dq and D.
// KV: one workgroup per (sequence, key position, kv head) → dk, dv, summed over the query
// heads of the group and the query positions at or after the key (within the sliding
// window, if any). It needs training's row layout: row = sequence * cache_len + position,
// every position present.

#include attention_io
#include window
@group(0) @binding(5) var<storage, read> lse: array<f32>;      // [rows, Hq]
@group(0) @binding(6) var<storage, read> d_out: array<f32>;    // [rows, Hq * hd]

const WG: u32 = 64u;
const MAX_HD: u32 = 256u;
var<workgroup> a_s: array<f32, MAX_HD>;
var<workgroup> b_s: array<f32, MAX_HD>;
var<workgroup> ds_s: array<f32, WG>;

#if KV
@group(0) @binding(7) var<storage, read> delta: array<f32>;   // [rows, Hq]
@group(0) @binding(8) var<storage, read_write> dk: array<f32>; // cache layout
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;
var<workgroup> p_s: array<f32, WG>;
var<workgroup> row_s: array<u32, WG>;  // q row index * Hq + head of each pair in the chunk

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let idx = wid.x + wid.y * nwg.x;
    let n_keys = p.n_rows * p.n_kv_heads;
    if (idx >= n_keys) { return; }
    let lid = lid3.x;
    let hd = p.head_dim;
    let g = idx % p.n_kv_heads;
    let key_row = idx / p.n_kv_heads;  // = seq * cache_len + j
    let j = rows[2u * key_row + 1u];
    let group = p.n_q_heads / p.n_kv_heads;
    let kv_at = (key_row * p.n_kv_heads + g) * hd;
    for (var i = lid; i < hd; i += WG) {
        a_s[i] = k_cache[kv_at + i];
        b_s[i] = v_cache[kv_at + i];
    }
    workgroupBarrier();
    var dk_acc = array<f32, 4>();
    var dv_acc = array<f32, 4>();
    // Pairs (query position i from j to the last that sees key j, head in the group), flattened.
    let n_pairs = (last_query(j, p.cache_len) + 1u - j) * group;
    for (var c0 = 0u; c0 < n_pairs; c0 += WG) {
        let t = c0 + lid;
        var pr = 0.0;
        var ds = 0.0;
        var rh = 0u;
        if (t < n_pairs) {
            let qrow = key_row + t / group;
            let h = g * group + t % group;
            rh = qrow * p.n_q_heads + h;
            let qb = rh * hd;
            var s = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < hd; i++) {
                s += q[qb + i] * a_s[i];
                dp += d_out[qb + i] * b_s[i];
            }
            pr = exp(s * p.scale - lse[rh]);
            ds = pr * (dp - delta[rh]);
        }
        p_s[lid] = pr;
        ds_s[lid] = ds;
        row_s[lid] = rh;
        workgroupBarrier();
        let n = min(WG, n_pairs - c0);
        for (var u = 0u; u < n; u++) {
            let qb = row_s[u] * hd;
            for (var d = 0u; d < 4u; d++) {
                let i = lid + d * WG;
                if (i < hd) {
                    dk_acc[d] += ds_s[u] * q[qb + i];
                    dv_acc[d] += p_s[u] * d_out[qb + i];
                }
            }
        }
        workgroupBarrier();
    }
    for (var d = 0u; d < 4u; d++) {
        let i = lid + d * WG;
        if (i < hd) {
            dk[kv_at + i] = dk_acc[d] * p.scale;
            dv[kv_at + i] = dv_acc[d];
        }
    }
}
#else
@group(0) @binding(7) var<storage, read> out: array<f32>;          // forward output O
@group(0) @binding(8) var<storage, read_write> dq: array<f32>;     // [rows, Hq * hd]
@group(0) @binding(9) var<storage, read_write> delta: array<f32>;  // [rows, Hq]
#include reduce

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let idx = wid.x + wid.y * nwg.x;
    if (idx >= p.n_rows * p.n_q_heads) { return; }
    let lid = lid3.x;
    let r = idx / p.n_q_heads;
    let h = idx % p.n_q_heads;
    let hd = p.head_dim;
    let kv_head = h / (p.n_q_heads / p.n_kv_heads);
    let seq = rows[2u * r];
    let pos = rows[2u * r + 1u];
    let qb = idx * hd;
    var part = 0.0;
    for (var i = lid; i < hd; i += WG) {
        a_s[i] = q[qb + i];
        b_s[i] = d_out[qb + i];
        part += d_out[qb + i] * out[qb + i];
    }
    let d_i = workgroup_sum(part, lid);
    let row_lse = lse[idx];
    var acc = array<f32, 4>();
    let kv_stride = p.n_kv_heads * hd;
    let seq_base = seq * p.cache_len * kv_stride + kv_head * hd;
    for (var c0 = first_key(pos); c0 <= pos; c0 += WG) {
        let j = c0 + lid;
        var ds = 0.0;
        if (j <= pos) {
            let kb = seq_base + j * kv_stride;
            var s = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < hd; i++) {
                s += a_s[i] * k_cache[kb + i];
                dp += b_s[i] * v_cache[kb + i];
            }
            ds = exp(s * p.scale - row_lse) * (dp - d_i);
        }
        ds_s[lid] = ds;
        workgroupBarrier();
        let n = min(WG, pos + 1u - c0);
        for (var t = 0u; t < n; t++) {
            let kb = seq_base + (c0 + t) * kv_stride;
            for (var d = 0u; d < 4u; d++) {
                let i = lid + d * WG;
                if (i < hd) { acc[d] += ds_s[t] * k_cache[kb + i]; }
            }
        }
        workgroupBarrier();
    }
    for (var d = 0u; d < 4u; d++) {
        let i = lid + d * WG;
        if (i < hd) { dq[qb + i] = acc[d] * p.scale; }
    }
    if (lid == 0u) { delta[idx] = d_i; }
}
#endif
