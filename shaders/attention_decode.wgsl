// Attention for single-query rows (decode: the row is its sequence's only row in the step),
// split over the cached positions so that one row still fills many workgroups.
//
// Without COMBINE: one workgroup per (row, KV head, chunk of `chunk` positions). It takes the
// row's raw QKV projection, rotates q (ROPE) and, in the chunk that holds the row's own
// position, rotates k and writes k, v into the cache (this replaces rope_kv for these rows).
// The keys, then the values, of the chunk are staged in workgroup memory with coalesced loads
// and shared by the query heads of the KV head (GQA). Writes per (sequence, q head, chunk) the
// unnormalised weighted sum of V, the chunk's max score and its sum of exp(score - max).
// With COMBINE: one workgroup per (row, q head) merges the chunks into `out` and `lse`.
// With MERGE (native only: WebGPU does not promise that one workgroup sees another's storage
// writes within a dispatch), there is no COMBINE dispatch: each workgroup counts its arrival
// per (sequence, KV head) in `arrived` after a storage barrier, and the last to arrive merges
// the chunks of its KV head's query heads, then resets the count for the next dispatch.
// With a sliding window (window > 0) keys older than the window are left out, and chunks
// wholly older than it are skipped.

struct Params {
    n_rows: u32, n_q_heads: u32, n_kv_heads: u32, head_dim: u32,
    cache_len: u32, scale: f32, chunk: u32, n_chunks: u32,
    first_row: u32, rot_dim: u32, window: u32, _p2: u32,
}

#if COMBINE
const WG: u32 = 64u;
#else
// THREADS: 256 on GPUs (a workgroup's loads and dot products are loops over the chunk, and
// with 64 threads each thread's serial share kept the partial kernel at ~50 µs per layer on an
// H200), 64 on CPU adapters (which pay per thread at every barrier). The arithmetic of each
// result is the same either way.
const WG: u32 = THREADS;
#endif
const NEG_INF: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
#include window
#if COMBINE
@group(0) @binding(1) var<storage, read> rows: array<u32>;     // (sequence, position) per row
@group(0) @binding(2) var<storage, read> part: array<f32>;     // [seqs, Hq, n_chunks, hd + 2]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // [rows, Hq * hd]
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;  // [rows, Hq]
#include attention_merge

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let idx = wid.x + wid.y * nwg.x;
    if (idx >= p.n_rows * p.n_q_heads) { return; }
    let r = p.first_row + idx / p.n_q_heads;
    let h = idx % p.n_q_heads;
    for (var i = lid3.x; i < p.head_dim; i += WG) { merge_chunks(r, h, i); }
}
#else
@group(0) @binding(1) var<storage, read> qkv: array<f32>;      // [rows, (Hq + 2 Hkv) * hd]
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>; // [seqs, cache_len, Hkv, hd]
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
#if ROPE
@group(0) @binding(6) var<storage, read> cos_table: array<f32>;  // [positions, rot_dim / 2]
@group(0) @binding(7) var<storage, read> sin_table: array<f32>;
#if MERGE
@group(0) @binding(8) var<storage, read_write> arrived: array<atomic<u32>>;  // [seqs, Hkv]
@group(0) @binding(9) var<storage, read_write> out: array<f32>;
@group(0) @binding(10) var<storage, read_write> lse: array<f32>;
#include attention_merge
#endif
#else
#if MERGE
@group(0) @binding(6) var<storage, read_write> arrived: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> lse: array<f32>;
#include attention_merge
#endif
#endif

// The host keeps (q heads per KV head) × hd <= MAX_GQ, chunk × (hd + 1) <= KV_TILE and
// (q heads per KV head) × chunk <= MAX_SCORES.
const MAX_GQ: u32 = 1024u;
const KV_TILE: u32 = 2080u;
const MAX_SCORES: u32 = 512u;
var<workgroup> q_s: array<f32, MAX_GQ>;
var<workgroup> kv_s: array<f32, KV_TILE>;  // row stride hd + 1: no bank conflicts per key
var<workgroup> s_s: array<f32, MAX_SCORES>;
var<workgroup> m_s: array<f32, 64>;
#if MERGE
var<workgroup> last_s: u32;  // whether this workgroup arrived last
#endif

// Column `col` of the QKV row at `base`, rotated as rope.wgsl does (same arithmetic, so the
// cached keys equal rope_kv's).
fn rotated(base: u32, col: u32, pos: u32) -> f32 {
    var v = qkv[base + col];
#if ROPE
    let half = p.rot_dim / 2u;
    let i = col % p.head_dim;
    if (i < p.rot_dim) {
        let j = i % half;
        let c = cos_table[pos * half + j];
        let s = sin_table[pos * half + j];
        if (i < half) {
            v = v * c - qkv[base + col + half] * s;
        } else {
            v = v * c + qkv[base + col - half] * s;
        }
    }
#endif
    return v;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let idx = wid.x + wid.y * nwg.x;
    if (idx >= p.n_rows * p.n_kv_heads * p.n_chunks) { return; }
    let lid = lid3.x;
    let c = idx % p.n_chunks;
    let kvh = (idx / p.n_chunks) % p.n_kv_heads;
    let r = p.first_row + idx / (p.n_chunks * p.n_kv_heads);
    let seq = rows[2u * r];
    let pos = rows[2u * r + 1u];
    let t0 = c * p.chunk;
    let lo = first_key(pos);
    // Uniform per workgroup, so no barrier is skipped by part of it.
    if (t0 > pos || t0 + p.chunk <= lo) { return; }
    let n = min(p.chunk, pos + 1u - t0);
    let hd = p.head_dim;
    let g = p.n_q_heads / p.n_kv_heads;
    let qkv_base = r * (p.n_q_heads + 2u * p.n_kv_heads) * hd;
    let k_col = (p.n_q_heads + kvh) * hd;
    let v_col = (p.n_q_heads + p.n_kv_heads + kvh) * hd;
    let kv_stride = p.n_kv_heads * hd;
    let cache_base = (seq * p.cache_len + t0) * kv_stride + kvh * hd;

    for (var e = lid; e < g * hd; e += WG) { q_s[e] = rotated(qkv_base, kvh * g * hd + e, pos); }
    // Keys: consecutive threads read consecutive floats of a key.
    for (var e = lid; e < n * hd; e += WG) {
        let t = e / hd;
        let i = e % hd;
        let at = cache_base + t * kv_stride + i;
        var k: f32;
        if (t0 + t == pos) {
            k = rotated(qkv_base, k_col + i, pos);
            k_cache[at] = k;
            v_cache[at] = qkv[qkv_base + v_col + i];
        } else {
            k = k_cache[at];
        }
        kv_s[t * (hd + 1u) + i] = k;
    }
    workgroupBarrier();
    for (var e = lid; e < g * p.chunk; e += WG) {
        let h = e / p.chunk;
        let t = e % p.chunk;
        var s = NEG_INF;
        if (t < n && t0 + t >= lo) {
            var dot_qk = 0.0;
            for (var i = 0u; i < hd; i++) { dot_qk += q_s[h * hd + i] * kv_s[t * (hd + 1u) + i]; }
            s = dot_qk * p.scale;
        }
        s_s[e] = s;
    }
    workgroupBarrier();
    // The keys are used up: stage the values in their place (the row's own value from qkv,
    // as this workgroup's cache write need not be visible to it yet).
    for (var e = lid; e < n * hd; e += WG) {
        let t = e / hd;
        let i = e % hd;
        var v: f32;
        if (t0 + t == pos) {
            v = qkv[qkv_base + v_col + i];
        } else {
            v = v_cache[cache_base + t * kv_stride + i];
        }
        kv_s[t * (hd + 1u) + i] = v;
    }
    if (lid < g) {
        var m = NEG_INF;
        for (var t = 0u; t < n; t++) { m = max(m, s_s[lid * p.chunk + t]); }
        m_s[lid] = m;
    }
    workgroupBarrier();
    for (var e = lid; e < g * p.chunk; e += WG) {
        s_s[e] = select(0.0, exp(s_s[e] - m_s[e / p.chunk]), e % p.chunk < n);
    }
    workgroupBarrier();
    let stride = hd + 2u;
    for (var e = lid; e < g * hd; e += WG) {
        let h = e / hd;
        let i = e % hd;
        var o = 0.0;
        for (var t = 0u; t < n; t++) { o += s_s[h * p.chunk + t] * kv_s[t * (hd + 1u) + i]; }
        part[((seq * p.n_q_heads + kvh * g + h) * p.n_chunks + c) * stride + i] = o;
    }
    if (lid < g) {
        var l = 0.0;
        for (var t = 0u; t < n; t++) { l += s_s[lid * p.chunk + t]; }
        let at = ((seq * p.n_q_heads + kvh * g + lid) * p.n_chunks + c) * stride + hd;
        part[at] = m_s[lid];
        part[at + 1u] = l;
    }
#if MERGE
    storageBarrier();  // this workgroup's part results, before its arrival is counted
    if (lid == 0u) {
        let chunks = pos / p.chunk + 1u - lo / p.chunk;  // the workgroups that got this far
        let counter = seq * p.n_kv_heads + kvh;
        let last = atomicAdd(&arrived[counter], 1u) + 1u == chunks;
        if (last) { atomicStore(&arrived[counter], 0u); }
        last_s = u32(last);
    }
    if (workgroupUniformLoad(&last_s) == 0u) { return; }
    storageBarrier();
    for (var e = lid; e < g * hd; e += WG) { merge_chunks(r, kvh * g + e / hd, e % hd); }
#endif
}
#endif
