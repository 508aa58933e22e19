// Flash attention (FlashAttention-2's tiling) for prefill, scoring and training: the results
// of attention.wgsl and attention_backward.wgsl, with tiles of keys and of queries in
// workgroup memory, so that each key and value is read once per tile of queries, not once per
// query. Same parameters and bindings as those two kernels.
//
// A "pair" is a (query row, query head) of one KV head g: pair u of g is row u / G and head
// g * G + u % G (G query heads per KV head), so a tile of pairs holds the heads of a group
// side by side and they read the same K/V tile. A tile has TA rows (pairs, or keys for dK/dV)
// against tiles of TB (keys, or pairs); each of its 4 threads per A row computes TB / 4
// products of the tile and accumulates a quarter of the output dims. Heads are taken CHUNK
// dims at a time (16, 32 or 64, the smallest that holds a head, else 64): dot products sum
// over every chunk, and each workgroup writes one chunk of the outputs (heads over 64 dims run
// one workgroup per output chunk, each redoing the dot products).
//
// Forward (BACKWARD 0): a workgroup per (tile of pairs, KV head, output chunk); online
//   softmax over key tiles from the first key any pair of the tile sees to the last (causal
//   and sliding-window tiles outside are skipped); writes out and the log-sum-exp, which is all
//   the backward pass needs besides the inputs.
// dQ (BACKWARD 1, KV 0): a workgroup per (tile of pairs, KV head, output chunk):
//   D = dO · O per pair (into delta, for the dK/dV pass), dq = scale Σ_j ds_j k_j with
//   ds_j = p_j (dO · v_j - D), p_j = exp(q · k_j scale - lse).
// dK/dV (BACKWARD 1, KV 1): a workgroup per (TA keys of a sequence, KV head, output chunk),
//   over tiles of the pairs that see them (the group's query heads summed in the workgroup):
//   dv_j = Σ p_j dO, dk_j = scale Σ ds_j q. Needs training's row layout (row = sequence *
//   cache_len + position, every position present), as attention_backward.wgsl does.
// Every output element has one writer: no atomics. A pair's result does not depend on which
// other rows share its tile (key tiles start at multiples of TB, masked keys add exact zeros),
// so a row gives the same bits batched or alone.
//
// lavapipe ends any invocation's loops after 65,535 iterations in all (Mesa's
// LP_MAX_TGSI_LOOP_ITERATIONS), so the loops step by vec4 and by tiles: a workgroup's key
// sweep stays far under it for the contexts Keel runs (about 40 loop iterations per tile).

#include attention_io
#include window

const NEG_INF: f32 = -3.0e38;
const THREADS: u32 = 64u;
const LANES: u32 = 4u;              // threads per A row
const TA: u32 = 16u;                // = THREADS / LANES
const C4: u32 = CHUNK / 4u;         // vec4s per chunk of a row
const ROW: u32 = C4 + 1u;           // row stride of the tiles: rows start in different banks
const OWN: u32 = C4 / LANES;        // output vec4s per thread
#if BACKWARD
const TB: u32 = 8u;
#else
const TB: u32 = 16u;
#endif
const PER_THREAD: u32 = TB / LANES;  // tile products per thread
const WS: u32 = TB + 1u;             // row stride of the TA x TB tiles
var<workgroup> a1: array<vec4<f32>, TA * ROW>;  // q (dK/dV: k)
var<workgroup> b1: array<vec4<f32>, TB * ROW>;  // k (dK/dV: q)
var<workgroup> b2: array<vec4<f32>, TB * ROW>;  // v (dK/dV: dO)
var<workgroup> w_s: array<f32, TA * WS>;        // scores (backward: ds)

// The tensors the tiles are read from.
const Q: u32 = 0u;
const K: u32 = 1u;
const V: u32 = 2u;
const DO: u32 = 3u;

fn element(src: u32, i: u32) -> f32 {
    switch src {
        case Q: { return q[i]; }
        case K: { return k_cache[i]; }
        case V: { return v_cache[i]; }
        default: {
#if BACKWARD
            return d_out[i];
#else
            return 0.0;
#endif
        }
    }
}

// Dims d4 * 4 .. + 4 of chunk i of the head vector at `base` in `src` (zeros past the head).
fn load4(src: u32, base: u32, i: u32, d4: u32) -> vec4<f32> {
    let d = i * CHUNK + d4 * 4u;
    let at = base + d;
    if (d + 4u <= p.head_dim) {
        return vec4<f32>(element(src, at), element(src, at + 1u), element(src, at + 2u), element(src, at + 3u));
    }
    var x = vec4<f32>();
    for (var k = 0u; d + k < p.head_dim && k < 4u; k++) { x[k] = element(src, at + k); }
    return x;
}

// Index of pair u (KV head g, `group` query heads per KV head) in a [rows, Hq] tensor; times
// head_dim, the offset of its vector in a [rows, Hq * hd] one.
fn pair_index(u: u32, g: u32, group: u32) -> u32 {
    return (u / group) * p.n_q_heads + g * group + u % group;
}

// Offset of key j of sequence `seq`, KV head g, in the cache layout.
fn key_at(seq: u32, j: u32, g: u32) -> u32 {
    return ((seq * p.cache_len + j) * p.n_kv_heads + g) * p.head_dim;
}

// Workgroup index, split into the output chunk it writes and the rest.
fn split_chunk(idx: u32) -> vec2<u32> {
    let n_chunks = (p.head_dim + CHUNK - 1u) / CHUNK;
    return vec2<u32>(idx % n_chunks, idx / n_chunks);
}

#if BACKWARD
@group(0) @binding(5) var<storage, read> lse: array<f32>;      // [rows, Hq]
@group(0) @binding(6) var<storage, read> d_out: array<f32>;    // [rows, Hq * hd]
var<workgroup> a2: array<vec4<f32>, TA * ROW>;  // dO (dK/dV: v)
#else
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // [rows, Hq * hd]
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;  // [rows, Hq]
#endif

#if KV
@group(0) @binding(7) var<storage, read> delta: array<f32>;   // [rows, Hq]
@group(0) @binding(8) var<storage, read_write> dk: array<f32>; // cache layout
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;
var<workgroup> p_s: array<f32, TA * WS>;  // probabilities

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let idx = wid.x + wid.y * nwg.x;
    let len = p.cache_len;
    let key_tiles = (len + TA - 1u) / TA;
    let n_chunks = (p.head_dim + CHUNK - 1u) / CHUNK;
    if (idx >= p.n_rows / len * key_tiles * p.n_kv_heads * n_chunks) { return; }
    let lid = lid3.x;
    let a = lid / LANES;
    let lane = lid % LANES;
    let group = p.n_q_heads / p.n_kv_heads;
    let oc = split_chunk(idx).x;
    let g = split_chunk(idx).y % p.n_kv_heads;
    let tile = split_chunk(idx).y / p.n_kv_heads;
    let row0 = tile / key_tiles * len;  // the row of the sequence's position 0
    let seq = rows[2u * row0];
    let j0 = tile % key_tiles * TA;
    let j = j0 + a;  // this thread's key
    let key_end = min(j0 + TA, len);
    // The pairs of the queries that see a key of the tile: positions j0 ..= last_query(last key).
    let pair_end = (last_query(key_end - 1u, len) + 1u) * group;
    var dk_acc = array<vec4<f32>, OWN>();
    var dv_acc = array<vec4<f32>, OWN>();
    var keys_loaded = false;
    for (var u0 = j0 * group; u0 < pair_end; u0 += TB) {
        var s = array<f32, PER_THREAD>();
        var dp = array<f32, PER_THREAD>();
        for (var i = 0u; i < n_chunks; i++) {
            workgroupBarrier();
            if (n_chunks > 1u || !keys_loaded) {
                for (var e = lid; e < TA * C4; e += THREADS) {
                    let t = e / C4;
                    let inside = j0 + t < key_end;
                    let at = key_at(seq, min(j0 + t, len - 1u), g);
                    a1[t * ROW + e % C4] = select(vec4<f32>(), load4(K, at, i, e % C4), inside);
                    a2[t * ROW + e % C4] = select(vec4<f32>(), load4(V, at, i, e % C4), inside);
                }
            }
            for (var e = lid; e < TB * C4; e += THREADS) {
                let t = e / C4;
                let inside = u0 + t < pair_end;
                let at = (row0 * p.n_q_heads + pair_index(min(u0 + t, pair_end - 1u), g, group)) * p.head_dim;
                b1[t * ROW + e % C4] = select(vec4<f32>(), load4(Q, at, i, e % C4), inside);
                b2[t * ROW + e % C4] = select(vec4<f32>(), load4(DO, at, i, e % C4), inside);
            }
            workgroupBarrier();
            for (var d4 = 0u; d4 < C4; d4++) {
                let k = a1[a * ROW + d4];
                let v = a2[a * ROW + d4];
                for (var c = 0u; c < PER_THREAD; c++) {
                    let b = (lane + c * LANES) * ROW + d4;
                    s[c] += dot(k, b1[b]);
                    dp[c] += dot(v, b2[b]);
                }
            }
        }
        keys_loaded = true;
        if (n_chunks > 1u) {
            // The pairs' output chunk, for the sums below.
            workgroupBarrier();
            for (var e = lid; e < TB * C4; e += THREADS) {
                let t = e / C4;
                let inside = u0 + t < pair_end;
                let at = (row0 * p.n_q_heads + pair_index(min(u0 + t, pair_end - 1u), g, group)) * p.head_dim;
                b1[t * ROW + e % C4] = select(vec4<f32>(), load4(Q, at, oc, e % C4), inside);
                b2[t * ROW + e % C4] = select(vec4<f32>(), load4(DO, at, oc, e % C4), inside);
            }
        }
        for (var c = 0u; c < PER_THREAD; c++) {
            let b = lane + c * LANES;
            let u = u0 + b;
            var pr = 0.0;
            var ds = 0.0;
            if (j < key_end && u < pair_end) {
                let pos = u / group;
                if (j <= pos && j >= first_key(pos)) {
                    let rh = row0 * p.n_q_heads + pair_index(u, g, group);
                    pr = exp(s[c] * p.scale - lse[rh]);
                    ds = pr * (dp[c] - delta[rh]);
                }
            }
            p_s[a * WS + b] = pr;
            w_s[a * WS + b] = ds;
        }
        workgroupBarrier();
        for (var b = 0u; b < TB; b++) {
            let pr = p_s[a * WS + b];
            let ds = w_s[a * WS + b];
            for (var c = 0u; c < OWN; c++) {
                let at = b * ROW + lane + c * LANES;
                dv_acc[c] += pr * b2[at];
                dk_acc[c] += ds * b1[at];
            }
        }
    }
    if (j < key_end) {
        let at = key_at(seq, j, g);
        for (var c = 0u; c < OWN; c++) {
            let d = oc * CHUNK + (lane + c * LANES) * 4u;
            for (var k = 0u; k < 4u; k++) {
                if (d + k < p.head_dim) {
                    dk[at + d + k] = dk_acc[c][k] * p.scale;
                    dv[at + d + k] = dv_acc[c][k];
                }
            }
        }
    }
}
#else
#if BACKWARD
@group(0) @binding(7) var<storage, read> out: array<f32>;          // forward output O
@group(0) @binding(8) var<storage, read_write> dq: array<f32>;     // [rows, Hq * hd]
@group(0) @binding(9) var<storage, read_write> delta: array<f32>;  // [rows, Hq]
#endif

fn query_pos(r: u32) -> u32 {
#if CAUSAL
    return rows[2u * r + 1u];
#else
    return p.cache_len - 1u;
#endif
}

// Rows `first ..= last` of a tile of pairs, split at sequence boundaries: the sequence of row
// `first`, the end of its run of rows, and the keys their queries see (lowest, highest).
struct Segment { seq: u32, last: u32, lo: u32, hi: u32 }

fn segment(first: u32, last: u32) -> Segment {
    var s = Segment(rows[2u * first], first, first_key(query_pos(first)), query_pos(first));
    while (s.last < last && rows[2u * (s.last + 1u)] == s.seq) {
        s.last += 1u;
        s.lo = min(s.lo, first_key(query_pos(s.last)));
        s.hi = max(s.hi, query_pos(s.last));
    }
    return s;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let idx = wid.x + wid.y * nwg.x;
    let group = p.n_q_heads / p.n_kv_heads;
    let n_pairs = p.n_rows * group;
    let n_chunks = (p.head_dim + CHUNK - 1u) / CHUNK;
    if (idx >= (n_pairs + TA - 1u) / TA * p.n_kv_heads * n_chunks) { return; }
    let lid = lid3.x;
    let a = lid / LANES;
    let lane = lid % LANES;
    let oc = split_chunk(idx).x;
    let g = split_chunk(idx).y % p.n_kv_heads;
    let u0 = split_chunk(idx).y / p.n_kv_heads * TA;
    let u = u0 + a;  // this thread's pair
    let live = u < n_pairs;
    let r = min(u, n_pairs - 1u) / group;
    let rh = pair_index(min(u, n_pairs - 1u), g, group);
    let pos = query_pos(r);
    let first_row = u0 / group;
    let last_row = (min(u0 + TA, n_pairs) - 1u) / group;
#if BACKWARD
    // D = dO · O, reduced over the row's 4 threads.
    var part = 0.0;
    if (live) {
        for (var d = lane; d < p.head_dim; d += LANES) {
            part += d_out[rh * p.head_dim + d] * out[rh * p.head_dim + d];
        }
    }
    w_s[a * WS + lane] = part;
    workgroupBarrier();
    let d_i = w_s[a * WS] + w_s[a * WS + 1u] + w_s[a * WS + 2u] + w_s[a * WS + 3u];
    if (live && oc == 0u && lane == 0u) { delta[rh] = d_i; }
    let row_lse = lse[rh];
#else
    var m = NEG_INF;  // running max of the scores
    var l = 0.0;      // running sum of exp(score - m)
#endif
    var acc = array<vec4<f32>, OWN>();
    var queries_loaded = false;
    for (var seg_first = first_row; seg_first <= last_row;) {
        let seg = segment(seg_first, last_row);
        let in_seg = live && r >= seg_first && r <= seg.last;
        for (var j0 = seg.lo - seg.lo % TB; j0 <= seg.hi; j0 += TB) {
            var s = array<f32, PER_THREAD>();
#if BACKWARD
            var dp = array<f32, PER_THREAD>();
#endif
            for (var i = 0u; i < n_chunks; i++) {
                workgroupBarrier();
                if (n_chunks > 1u || !queries_loaded) {
                    for (var e = lid; e < TA * C4; e += THREADS) {
                        let t = e / C4;
                        let inside = u0 + t < n_pairs;
                        let at = pair_index(min(u0 + t, n_pairs - 1u), g, group) * p.head_dim;
                        a1[t * ROW + e % C4] = select(vec4<f32>(), load4(Q, at, i, e % C4), inside);
#if BACKWARD
                        a2[t * ROW + e % C4] = select(vec4<f32>(), load4(DO, at, i, e % C4), inside);
#endif
                    }
                }
                for (var e = lid; e < TB * C4; e += THREADS) {
                    let t = e / C4;
                    let inside = j0 + t < p.cache_len;
                    let at = key_at(seg.seq, min(j0 + t, p.cache_len - 1u), g);
                    b1[t * ROW + e % C4] = select(vec4<f32>(), load4(K, at, i, e % C4), inside);
#if BACKWARD
                    b2[t * ROW + e % C4] = select(vec4<f32>(), load4(V, at, i, e % C4), inside);
#else
                    // Only the output chunk's values are summed.
                    if (i == oc) {
                        b2[t * ROW + e % C4] = select(vec4<f32>(), load4(V, at, i, e % C4), inside);
                    }
#endif
                }
                workgroupBarrier();
                for (var d4 = 0u; d4 < C4; d4++) {
                    let x = a1[a * ROW + d4];
#if BACKWARD
                    let y = a2[a * ROW + d4];
#endif
                    for (var c = 0u; c < PER_THREAD; c++) {
                        let b = (lane + c * LANES) * ROW + d4;
                        s[c] += dot(x, b1[b]);
#if BACKWARD
                        dp[c] += dot(y, b2[b]);
#endif
                    }
                }
            }
            queries_loaded = true;
#if BACKWARD
            if (n_chunks > 1u) {
                // The keys' output chunk, for the sum below.
                workgroupBarrier();
                for (var e = lid; e < TB * C4; e += THREADS) {
                    let t = e / C4;
                    let at = key_at(seg.seq, min(j0 + t, p.cache_len - 1u), g);
                    b1[t * ROW + e % C4] = select(vec4<f32>(), load4(K, at, oc, e % C4), j0 + t < p.cache_len);
                }
            }
            for (var c = 0u; c < PER_THREAD; c++) {
                let j = j0 + lane + c * LANES;
                let sees = in_seg && j <= pos && j >= first_key(pos);
                w_s[a * WS + lane + c * LANES] =
                    select(0.0, exp(s[c] * p.scale - row_lse) * (dp[c] - d_i), sees);
            }
            workgroupBarrier();
            for (var b = 0u; b < TB; b++) {
                let ds = w_s[a * WS + b];
                for (var c = 0u; c < OWN; c++) { acc[c] += ds * b1[b * ROW + lane + c * LANES]; }
            }
#else
            for (var c = 0u; c < PER_THREAD; c++) {
                let j = j0 + lane + c * LANES;
                let sees = in_seg && j <= pos && j >= first_key(pos);
                w_s[a * WS + lane + c * LANES] = select(NEG_INF, s[c] * p.scale, sees);
            }
            workgroupBarrier();
            var tile_max = NEG_INF;
            for (var b = 0u; b < TB; b++) { tile_max = max(tile_max, w_s[a * WS + b]); }
            let m_new = max(m, tile_max);
            let rescale = exp(m - m_new);
            l *= rescale;
            for (var c = 0u; c < OWN; c++) { acc[c] *= rescale; }
            for (var b = 0u; b < TB; b++) {
                let score = w_s[a * WS + b];
                let pb = select(0.0, exp(score - m_new), score > NEG_INF);
                l += pb;
                for (var c = 0u; c < OWN; c++) { acc[c] += pb * b2[b * ROW + lane + c * LANES]; }
            }
            m = m_new;
#endif
        }
        seg_first = seg.last + 1u;
    }
    if (live) {
        for (var c = 0u; c < OWN; c++) {
            let d = oc * CHUNK + (lane + c * LANES) * 4u;
            for (var k = 0u; k < 4u; k++) {
#if BACKWARD
                if (d + k < p.head_dim) { dq[rh * p.head_dim + d + k] = acc[c][k] * p.scale; }
#else
                if (d + k < p.head_dim) { out[rh * p.head_dim + d + k] = acc[c][k] / l; }
#endif
            }
        }
#if BACKWARD
#else
        if (oc == 0u && lane == 0u) { lse[rh] = m + log(l); }
#endif
    }
}
#endif
