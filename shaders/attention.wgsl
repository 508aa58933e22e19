// Causal attention with grouped-query heads, reading keys and values from the KV cache.
// One workgroup per (row, query head); the row's query at position `pos` attends to cache
// positions 0..=pos of its sequence, or with a sliding window (window > 0) the last `window`
// of them (CAUSAL 1, language models); CAUSAL 0 (encoders): to all cache_len positions of it,
// the caller sizing the cache to the sequence. Keys are taken 64 at a time with an online softmax, so prefill, decode and
// training all use this one kernel. Also writes the log-sum-exp of the scores per (row, head)
// for the backward pass.

#include attention_io
#include window
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // [rows, Hq * hd]
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;  // [rows, Hq]

const WG: u32 = 64u;
const MAX_HD: u32 = 256u;
const NEG_INF: f32 = -3.0e38;
var<workgroup> q_s: array<f32, MAX_HD>;
var<workgroup> p_s: array<f32, WG>;

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
#if CAUSAL
    let pos = rows[2u * r + 1u];
#else
    let pos = p.cache_len - 1u;
#endif
    let q_base = (r * p.n_q_heads + h) * hd;
    for (var i = lid; i < hd; i += WG) { q_s[i] = q[q_base + i]; }
    workgroupBarrier();

    var m = NEG_INF;   // running max of the scores
    var l = 0.0;       // running sum of exp(score - m)
    var acc = array<f32, 4>();  // output dims lid, lid + 64, ...
    let kv_stride = p.n_kv_heads * hd;
    let seq_base = seq * p.cache_len * kv_stride + kv_head * hd;
    for (var c0 = first_key(pos); c0 <= pos; c0 += WG) {
        let j = c0 + lid;
        var s = NEG_INF;
        if (j <= pos) {
            let kb = seq_base + j * kv_stride;
            var dot_qk = 0.0;
            for (var i = 0u; i < hd; i++) { dot_qk += q_s[i] * k_cache[kb + i]; }
            s = dot_qk * p.scale;
        }
        p_s[lid] = s;
        workgroupBarrier();
        var chunk_max = NEG_INF;
        for (var t = 0u; t < WG; t++) { chunk_max = max(chunk_max, p_s[t]); }
        let m_new = max(m, chunk_max);
        workgroupBarrier();
        p_s[lid] = select(0.0, exp(s - m_new), j <= pos);
        workgroupBarrier();
        let rescale = exp(m - m_new);
        var chunk_sum = 0.0;
        let n_keys = min(WG, pos + 1u - c0);
        for (var d = 0u; d < 4u; d++) { acc[d] *= rescale; }
        for (var t = 0u; t < n_keys; t++) {
            let pt = p_s[t];
            chunk_sum += pt;
            let vb = seq_base + (c0 + t) * kv_stride;
            for (var d = 0u; d < 4u; d++) {
                let i = lid + d * WG;
                if (i < hd) { acc[d] += pt * v_cache[vb + i]; }
            }
        }
        l = l * rescale + chunk_sum;
        m = m_new;
        workgroupBarrier();
    }
    for (var d = 0u; d < 4u; d++) {
        let i = lid + d * WG;
        if (i < hd) { out[q_base + i] = acc[d] / l; }
    }
    if (lid == 0u) { lse[r * p.n_q_heads + h] = m + log(l); }
}
