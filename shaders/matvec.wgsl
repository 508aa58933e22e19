#if W_F16_NATIVE
enable f16;
#endif
// C[m×n] (+)= A[m×k] · B[k×n] (+ bias[n]) for MR ≤ 4 rows of A (decode), with A contiguous
// along K and B the transposed view of an [n, k] weight, so every output is the dot product of
// an A row with a contiguous weight row. Each weight is read once for all MR rows of A.
// A workgroup of 64 threads covers ROWS weight rows: TPR threads share each row, consecutive
// threads reading consecutive elements (coalesced on GPUs), and each thread sums RPT rows, so
// one load of A serves RPT rows (what CPU adapters pay for: they cost per element loaded).
// One workgroup-memory reduction at the end, as barriers are expensive on CPU adapters; with
// SUBGROUP (the host checks that a row's TPR threads are lanes of one subgroup: TPR divides the
// adapter's smallest subgroup) a shuffle butterfly sums each row instead, with no workgroup
// memory and no barrier (wgpu's naga takes subgroup built-ins without `enable subgroups;`).
// With KVEC4, A and B are read as vec4 and their offsets and strides are in vec4 units, and B
// may be a packed weight (f16 or quantized, shaders/wfmt.wgsl), dequantized as it is read.
// Decode prologues, each replacing the dispatch of the op it is named after: with SILU_GATE,
// A's rows are the fused [gate | up] projection (2k wide) and the kernel reads silu(gate) * up
// (act.wgsl with GATED and SILU); with RMSNORM, A is the residual stream and the kernel reads
// its RMSNorm (norm.wgsl), each workgroup summing the squares of its rows of A first (k is
// small next to the weights it reads).

struct Params {
    m: u32, n: u32, k: u32, c_off: u32,
    a_off: u32, a_rs: u32, a_cs: u32, c_rs: u32,
    b_off: u32, b_rs: u32, b_cs: u32, scale: f32,
    eps: f32,  // RMSNORM
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
#endif
#else
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
#endif

var<private> rstd: array<f32, MR>;  // RMSNORM: 1 / RMS of each row of A

// Element kk (of len) of row i of A.
fn load_a(i: u32, kk: u32, len: u32) -> AElem {
    let row = p.a_off + i * p.a_rs;
#if SILU_GATE
    let g = a[row + kk];
    return g / (1.0 + exp(-g)) * a[row + len + kk];
#else
#if RMSNORM
    return a[row + kk] * rstd[i] * norm_w[kk];
#else
    return a[row + kk];
#endif
#endif
}

const WG: u32 = 64u;
const ROWS: u32 = WG / TPR * RPT;

// Each thread's partial sums, RPT per thread; component i belongs to row i of A.
var<workgroup> part: array<vec4<f32>, WG * RPT>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let base = (wid.x + wid.y * nwg.x) * ROWS;
    if (base >= p.n) { return; }  // spare groups of a grid folded into y
    let row0 = base + lid / TPR * RPT;
    // Rows past the end re-read the last one; their sums are never stored.
    var w_row: array<u32, RPT>;
    for (var j = 0u; j < RPT; j++) { w_row[j] = min(row0 + j, p.n - 1u); }
    var acc: array<vec4<f32>, RPT>;
#if KVEC4
    let len = p.k / 4u;
    var x: array<vec4<f32>, MR>;
#else
    let len = p.k;
    var x: array<f32, MR>;
#endif
#if RMSNORM
    var sq = vec4<f32>();
    for (var kk = lid; kk < len; kk += WG) {
        for (var i = 0u; i < MR; i++) {
            let v = a[p.a_off + i * p.a_rs + kk];
#if KVEC4
            sq[i] += dot(v, v);
#else
            sq[i] += v * v;
#endif
        }
    }
    part[lid * RPT] = sq;
    workgroupBarrier();
    sq = vec4<f32>();
    for (var t = 0u; t < WG; t++) { sq += part[t * RPT]; }
    for (var i = 0u; i < MR; i++) { rstd[i] = 1.0 / sqrt(sq[i] / f32(p.k) + p.eps); }
    workgroupBarrier();  // part is reused below
#endif
    for (var kk = lid % TPR; kk < len; kk += TPR) {
        for (var i = 0u; i < MR; i++) { x[i] = load_a(i, kk, len); }
        for (var j = 0u; j < RPT; j++) {
#if KVEC4
            let w = wload(w_row[j], kk);
#else
            let w = b[p.b_off + w_row[j] * p.b_cs + kk];
#endif
            for (var i = 0u; i < MR; i++) {
#if KVEC4
                acc[j][i] += dot(x[i], w);
#else
                acc[j][i] += x[i] * w;
#endif
            }
        }
    }
#if SUBGROUP
    for (var off = TPR / 2u; off > 0u; off >>= 1u) {
        for (var j = 0u; j < RPT; j++) { acc[j] += subgroupShuffleXor(acc[j], off); }
    }
    // The first thread of each row's TPR finishes its RPT rows.
    if (lid % TPR != 0u) { return; }
    for (var j = 0u; j < RPT; j++) {
        if (row0 + j < p.n) { store(row0 + j, acc[j]); }
    }
#else
    for (var j = 0u; j < RPT; j++) { part[lid * RPT + j] = acc[j]; }
    workgroupBarrier();
    // Thread r < ROWS finishes weight row base + r: slot r % RPT of the TPR threads that shared it.
    let col = base + lid;
    if (lid >= ROWS || col >= p.n) { return; }
    let first = lid / RPT * TPR * RPT + lid % RPT;
    var sum = vec4<f32>();
    for (var s = 0u; s < TPR; s++) { sum += part[first + s * RPT]; }
    store(col, sum);
#endif
}

// Writes output column `col` of every row of A from its sums (component i: row i).
fn store(col: u32, sum: vec4<f32>) {
    for (var i = 0u; i < MR; i++) {
        var v = sum[i] * p.scale;
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
