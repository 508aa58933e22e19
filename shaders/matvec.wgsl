#if W_F16_NATIVE
enable f16;
#endif
// C[m×n] (+)= A[m×k] · B[k×n] (+ bias[n]) for MR ≤ 4 rows of A (decode), with A contiguous
// along K and B the transposed view of an [n, k] weight, so every output is the dot product of
// an A row with a contiguous weight row. Each weight is read once for all MR rows of A.
// A workgroup of 64 threads covers ROWS weight rows: TPR threads share each row, consecutive
// threads reading consecutive elements (coalesced on GPUs), and each thread sums RPT rows, so
// one load of A serves RPT rows (what CPU adapters pay for: they cost per element loaded).
// Latency first: each thread takes U of its strides at a time and issues all their weight
// (and A) loads before the first multiply-add, so U × RPT loads are in flight at once, not
// one (GPUs: U = 4; CPU adapters: 1); the sums are still taken stride by stride in order (the
// result does not depend on U).
// One workgroup-memory reduction at the end, as barriers are expensive on CPU adapters; with
// SUBGROUP (the host checks that a row's TPR threads are lanes of one subgroup: TPR divides the
// adapter's smallest subgroup) a shuffle butterfly sums each row instead, with no workgroup
// memory and no barrier (wgpu's naga takes subgroup built-ins without `enable subgroups;`).
// With KVEC4, A and B are read as vec4 and their offsets and strides are in vec4 units, and B
// may be a packed weight (f16 or quantized, shaders/wfmt.wgsl), dequantized as it is read.
// Decode prologues, each replacing the dispatch of the op it is named after: with SILU_GATE,
// A's rows are the fused [gate | up] projection (2k wide) and the kernel reads silu(gate) * up
// (act.wgsl with GATED and SILU); with RMSNORM, A is the residual stream and the kernel reads
// its RMSNorm (norm.wgsl): it multiplies by the norm's weight as it loads A, sums the squares
// of what it loads alongside the products, and scales each sum by 1 / RMS once the row's
// threads have been reduced (which also reduces their sums of squares), so the norm costs no
// pass of its own.
// With EMBED too (the first block's QKV product in decode), A is the embedding table and row i
// of the product's input is row ids[i] of it (the rows' index from `a_off / a_rs`, A's first
// row), replacing embed.wgsl's dispatch: the first workgroup's threads of its first weight
// rows, which between them load every element of A once, also write it into the residual
// stream (`stream`, laid out as A's rows would be) for the block's later products to add to.
// With LCM (natively, on the down projection that writes a block's residual output in decode),
// the kernel then modulates the rows it wrote, replacing lcm.wgsl's dispatch: each workgroup
// counts its arrival in `arrived` after a storage barrier, and the last to arrive runs
// lcm_step.wgsl on every row of C (as decode attention merges its chunks; WebGPU does not
// promise that one workgroup sees another's writes within a dispatch, so the page keeps the
// separate dispatch).
// With PICK (natively, on the LM head of a greedy decode step: one row, no bias, one shard),
// the head's last workgroups make the pick instead of stats.wgsl's two dispatches, with the
// same functions (logit_merge.wgsl) on the same parts of the row, so with the same bits: the
// row is split into stats.wgsl's parts; each workgroup counts its arrival at every part its
// rows reach, the last to reach a part reduces it to a partial, counts that part's arrival,
// and the last part's reducer merges the partials and writes the pick.

struct Params {
    m: u32, n: u32, k: u32, c_off: u32,
    a_off: u32, a_rs: u32, a_cs: u32, c_rs: u32,
    b_off: u32, b_rs: u32, b_cs: u32, scale: f32,
    eps: f32,  // RMSNORM
#if LCM
    // The row table's index of A's first row, the sequences the anchors hold, lcm.wgsl's settings.
    first_row: u32, n_seqs: u32, n_scales: u32, sink: u32,
    tau: f32, kappa: f32, keep_norm: u32, normalized: u32,
#endif
#if PICK
    row: u32, parts: u32,  // stats.wgsl's: the row table's entry of A's row, the row's parts
#endif
}

@group(0) @binding(0) var<uniform> p: Params;
#if KVEC4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#include wfmt
#else
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
#if KVEC4
alias AElem = vec4<f32>;
#else
alias AElem = f32;
#endif
#if RMSNORM
@group(0) @binding(4) var<storage, read> norm_w: array<AElem>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#if EMBED
@group(0) @binding(6) var<storage, read> ids: array<u32>;
@group(0) @binding(7) var<storage, read_write> stream: array<AElem>;
#endif
#else
#if EMBED
@group(0) @binding(5) var<storage, read> ids: array<u32>;               // per row
@group(0) @binding(6) var<storage, read_write> stream: array<AElem>;   // the residual stream
#endif
#endif
#if PICK
@group(0) @binding(5) var<storage, read_write> partials: array<vec4<f32>>;  // per part
@group(0) @binding(6) var<storage, read_write> ids: array<u32>;
@group(0) @binding(7) var<storage, read_write> rows: array<u32>;      // (sequence, position) per row
@group(0) @binding(8) var<storage, read_write> out: array<vec4<u32>>; // per position
@group(0) @binding(9) var<storage, read_write> arrived: array<atomic<u32>>;  // per part, then 1
#endif
#else
#if PICK
@group(0) @binding(4) var<storage, read_write> partials: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> ids: array<u32>;
@group(0) @binding(6) var<storage, read_write> rows: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read_write> arrived: array<atomic<u32>>;
#endif
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#if LCM
@group(0) @binding(5) var<storage, read> rows: array<u32>;          // (sequence, position) per row
@group(0) @binding(6) var<storage, read_write> anchor: array<f32>;  // [seqs, n_scales, n]
@group(0) @binding(7) var<storage, read> scales: array<f32>;        // (rho, gamma) per scale
@group(0) @binding(8) var<storage, read_write> stats: array<f32>;   // [seqs, 4]
@group(0) @binding(9) var<storage, read_write> arrived: array<atomic<u32>>;  // zero between dispatches
#endif
#else
#if LCM
@group(0) @binding(4) var<storage, read> rows: array<u32>;
@group(0) @binding(5) var<storage, read_write> anchor: array<f32>;
@group(0) @binding(6) var<storage, read> scales: array<f32>;
@group(0) @binding(7) var<storage, read_write> stats: array<f32>;
@group(0) @binding(8) var<storage, read_write> arrived: array<atomic<u32>>;
#endif
#endif
#endif

// RMSNORM: this thread's share of the sum of squares of each row of A (component i: row i).
var<private> sq: vec4<f32>;
#if EMBED
// Whether this thread writes what it loads of A into the residual stream.
var<private> writes_stream: bool;
#endif

// Element kk (of len) of row i of A, as the product reads it.
fn load_a(i: u32, kk: u32, len: u32) -> AElem {
    let row = p.a_off + i * p.a_rs;
#if SILU_GATE
    let g = a[row + kk];
    return g / (1.0 + exp(-g)) * a[row + len + kk];
#else
#if RMSNORM
#if EMBED
    let v = a[ids[p.a_off / p.a_rs + i] * p.a_rs + kk];
    if (writes_stream) { stream[row + kk] = v; }
#else
    let v = a[row + kk];
#endif
#if KVEC4
    sq[i] += dot(v, v);
#else
    sq[i] += v * v;
#endif
    return v * norm_w[kk];
#else
    return a[row + kk];
#endif
#endif
}

// Weight kk of row `row` (a vec4 of them with KVEC4).
fn load_w(row: u32, kk: u32) -> AElem {
#if KVEC4
    return wload(row, kk);
#else
    return b[p.b_off + row * p.b_cs + kk];
#endif
}

fn fma_dot(x: AElem, w: AElem) -> f32 {
#if KVEC4
    return dot(x, w);
#else
    return x * w;
#endif
}

const WG: u32 = 64u;
const ROWS: u32 = WG / TPR * RPT;

#if PICK
fn logit(at: u32) -> f32 { return c[p.c_off + at]; }
#include logit_merge
var<workgroup> last_s: u32;  // whether this workgroup arrived last (at a part; of the parts)
#endif
#if LCM
fn stream_get(at: u32) -> f32 { return c[at]; }
fn stream_set(at: u32, v: f32) { c[at] = v; }
#include lcm_step
var<workgroup> last_s: u32;  // whether this workgroup arrived last
#endif

#if RMSNORM
// Each thread's partial sums, RPT per thread, then (RMSNORM) each thread's sums of squares.
var<workgroup> part: array<vec4<f32>, WG * (RPT + 1u)>;
#else
// Each thread's partial sums, RPT per thread; component i belongs to row i of A.
var<workgroup> part: array<vec4<f32>, WG * RPT>;
#endif

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let base = (wid.x + wid.y * nwg.x) * ROWS;
    if (base >= p.n) { return; }  // spare groups of a grid folded into y
    let row0 = base + lid / TPR * RPT;
#if EMBED
    writes_stream = base == 0u && lid < TPR;
#endif
    // Rows past the end re-read the last one; their sums are never stored.
    var w_row: array<u32, RPT>;
    for (var j = 0u; j < RPT; j++) { w_row[j] = min(row0 + j, p.n - 1u); }
    var acc: array<vec4<f32>, RPT>;
#if KVEC4
    let len = p.k / 4u;
#else
    let len = p.k;
#endif
    var kk = lid % TPR;
    for (; kk + (U - 1u) * TPR < len; kk += U * TPR) {
        var w: array<AElem, U * RPT>;
        var x: array<AElem, U * MR>;
        for (var u = 0u; u < U; u++) {
            for (var j = 0u; j < RPT; j++) { w[u * RPT + j] = load_w(w_row[j], kk + u * TPR); }
        }
        for (var u = 0u; u < U; u++) {
            for (var i = 0u; i < MR; i++) { x[u * MR + i] = load_a(i, kk + u * TPR, len); }
        }
        for (var u = 0u; u < U; u++) {
            for (var j = 0u; j < RPT; j++) {
                for (var i = 0u; i < MR; i++) { acc[j][i] += fma_dot(x[u * MR + i], w[u * RPT + j]); }
            }
        }
    }
    for (; kk < len; kk += TPR) {
        var w: array<AElem, RPT>;
        var x: array<AElem, MR>;
        for (var j = 0u; j < RPT; j++) { w[j] = load_w(w_row[j], kk); }
        for (var i = 0u; i < MR; i++) { x[i] = load_a(i, kk, len); }
        for (var j = 0u; j < RPT; j++) {
            for (var i = 0u; i < MR; i++) { acc[j][i] += fma_dot(x[i], w[j]); }
        }
    }
#if SUBGROUP
    for (var off = TPR / 2u; off > 0u; off >>= 1u) {
        for (var j = 0u; j < RPT; j++) { acc[j] += subgroupShuffleXor(acc[j], off); }
#if RMSNORM
        sq += subgroupShuffleXor(sq, off);
#endif
    }
    // The first thread of each row's TPR finishes its RPT rows.
    if (lid % TPR == 0u) {
        for (var j = 0u; j < RPT; j++) {
            if (row0 + j < p.n) { store(row0 + j, acc[j], sq); }
        }
    }
#else
    for (var j = 0u; j < RPT; j++) { part[lid * RPT + j] = acc[j]; }
#if RMSNORM
    part[WG * RPT + lid] = sq;
#endif
    workgroupBarrier();
    // Thread r < ROWS finishes weight row base + r: slot r % RPT of the TPR threads that shared it.
    let col = base + lid;
    if (lid < ROWS && col < p.n) {
        let first_thread = lid / RPT * TPR;
        var sum = vec4<f32>();
        var row_sq = vec4<f32>();
        for (var s = 0u; s < TPR; s++) {
            sum += part[(first_thread + s) * RPT + lid % RPT];
#if RMSNORM
            row_sq += part[WG * RPT + first_thread + s];
#endif
        }
        store(col, sum, row_sq);
    }
#endif
#if LCM
    storageBarrier();  // this workgroup's outputs, before its arrival is counted
    if (lid == 0u) {
        let last = atomicAdd(&arrived[0], 1u) + 1u == (p.n + ROWS - 1u) / ROWS;
        if (last) { atomicStore(&arrived[0], 0u); }
        last_s = u32(last);
    }
    if (workgroupUniformLoad(&last_s) == 0u) { return; }
    storageBarrier();
    let settings = LcmSettings(p.n, p.n_scales, p.sink, p.tau, p.kappa, p.keep_norm, p.normalized);
    for (var i = 0u; i < MR; i++) {
        let row = lcm_row(lid, p.first_row + i);
        // Rows of sequences without anchors here (another setting's, in a batch) are left alone.
        if (row.x < p.n_seqs && row.y >= p.sink) { lcm_step(lid, p.c_off + i * p.c_rs, row.x, row.y, settings); }
    }
#endif
#if PICK
    storageBarrier();  // this workgroup's logits, before its arrival is counted
    let part_len = (p.n + p.parts - 1u) / p.parts;
    for (var j = base / part_len; j <= (min(base + ROWS, p.n) - 1u) / part_len; j++) {
        let start = j * part_len;
        let end = min(start + part_len, p.n);
        if (lid == 0u) {
            // The workgroups whose rows reach part j.
            let last = atomicAdd(&arrived[j], 1u) + 1u == (end - 1u) / ROWS - start / ROWS + 1u;
            if (last) { atomicStore(&arrived[j], 0u); }
            last_s = u32(last);
        }
        if (workgroupUniformLoad(&last_s) == 0u) { continue; }
        storageBarrier();
        let reduced = span_partial(0u, start, end, lid);
        if (lid == 0u) { partials[j] = to_vec4(reduced); }
        storageBarrier();
        if (lid == 0u) {
            let last = atomicAdd(&arrived[p.parts], 1u) + 1u == p.parts;
            if (last) { atomicStore(&arrived[p.parts], 0u); }
            last_s = u32(last);
        }
        if (workgroupUniformLoad(&last_s) == 0u) { continue; }
        storageBarrier();
        let total = merge_partials(0u, p.parts, lid);
        if (lid == 0u) { write_pick(total, p.n, p.row); }
    }
#endif
}

// Writes output column `col` of every row of A from its sums (component i: row i) and, with
// RMSNORM, the sums of squares of the rows of A.
fn store(col: u32, sum: vec4<f32>, sum_sq: vec4<f32>) {
    for (var i = 0u; i < MR; i++) {
        var v = sum[i] * p.scale;
#if RMSNORM
        v *= 1.0 / sqrt(sum_sq[i] / f32(p.k) + p.eps);
#endif
#if BIAS
        v += bias[col];
#endif
        let at = p.c_off + i * p.c_rs + col;
#if ACC
        v += c[at];
#endif
        c[at] = v;
    }
}
