#if COOP
enable f16;
enable wgpu_cooperative_matrix;
#else
#if W_F16_NATIVE
enable f16;
#endif
#endif
// C = scale · A · B (+ bias) (+= C with ACC): the tiled matrix engine for GPUs, one kernel for
// x·Wᵀ (forward), dy·W (input gradient) and dyᵀ·x (weight gradient), as matmul.wgsl's
// strided A (M×K) and B (K×N). A workgroup computes a BM×BN tile of C, stepping along K by
// BK: all its threads stage the A and B tiles in workgroup memory (A transposed, so that a
// thread's rows are one vec4 read), then each computes its share from there while the next K
// tile is already on its way into registers (one barrier pair per K tile). Every loop inside a
// K tile has a constant trip count; out-of-range rows and columns are clamped on load and
// masked on store, so control flow stays uniform (which the cooperative matrices need).
//
// Loads are vec4 along whichever dimension the operand is contiguous in: A along K (AKVEC4:
// x, dy) or along M (AVEC4: dyᵀ); B along K (BKVEC4: Wᵀ, any weight format through wload) or
// along N (BVEC4: W, any format; x); neither: scalar loads with any strides. Each is staged
// through operand() (shaders/operand.wgsl): f16-rounded with F16_OPERANDS (mixed-precision
// training; the COOP tiles are f16 anyway).
//
// SIMT (default): 8×8 outputs per thread, rows ty·4 + {0..3} and BM/2 + ty·4 + {0..3}, columns
// likewise, so its A and B reads are two vec4 each per K step; with OUT4, 4×4 outputs per
// thread (small tiles: more workgroups for small products), one vec4 each.
// COOP: f16 tiles and 16×16 cooperative matrices with f32 accumulators (tensor cores); each
// subgroup of 32 threads computes a 32×32 block of C as 2×2 matrices. The host picks it only on
// adapters whose subgroups are 32 threads.
//
// Prefill prologues (x·Wᵀ, A read along K), each replacing the dispatch of the op it is named
// after, as matvec.wgsl's do in decode: with SILU_GATE, A's rows are the fused [gate | up]
// projection (2K wide) and the kernel stages silu(gate) · up (act.wgsl with GATED and SILU);
// with RMSNORM, A is the residual stream and the kernel stages x · w (the norm's weight) while
// each thread sums the squares of the quads it loads, which lie on the same row and columns
// mod BK at every K tile; the workgroup adds each row's sums (in a fixed order, so that a row's
// result depends on neither its tile nor the other rows) and scales the row's outputs by
// 1 / RMS before bias and accumulation (matvec.wgsl's algebra). The COOP tiles are f16, where
// x · w before the norm can pass f16's range (residual streams reach thousands): there a
// pre-pass over the workgroup's rows finds each row's 1 / RMS first and the tiles stage the
// normed rows, as norm.wgsl's output would be staged (one more read of A's rows).

struct Params {
    m: u32, n: u32, k: u32, c_off: u32,
    a_off: u32, a_rs: u32, a_cs: u32, c_rs: u32,
    b_off: u32, b_rs: u32, b_cs: u32, scale: f32,
    eps: f32,  // RMSNORM
}

@group(0) @binding(0) var<uniform> p: Params;
#if AKVEC4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#else
#if AVEC4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#else
@group(0) @binding(1) var<storage, read> a: array<f32>;
#endif
#endif
#if BKVEC4
#include wfmt
#else
#if WQ
#include wfmt
#else
#if BVEC4
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> b: array<f32>;
#endif
#endif
#endif
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
#if RMSNORM
#if AKVEC4
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;
#else
@group(0) @binding(4) var<storage, read> norm_w: array<f32>;
#endif
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif
#else
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
#endif
#include operand

#if COOP
const OUTPUTS_PER_THREAD: u32 = 32u;
#else
#if OUT4
const OUTPUTS_PER_THREAD: u32 = 16u;
#else
const OUTPUTS_PER_THREAD: u32 = 64u;
#endif
#endif
const THREADS: u32 = BM * BN / OUTPUTS_PER_THREAD;
// vec4s of each operand's tile each thread loads per K tile.
const A_QUADS: u32 = BM * BK / 4u / THREADS;
const B_QUADS: u32 = BN * BK / 4u / THREADS;

// The staged tiles, K-major: element (k, m) of A's tile, (k, n) of B's.
#if COOP
var<workgroup> a_tile: array<f16, BK * BM>;
var<workgroup> b_tile: array<f16, BK * BN>;
// Each subgroup's 16×16 accumulator on its way out through the epilogue.
var<workgroup> c_tile: array<f32, THREADS / 32u * 256u>;
fn stage_a1(k: u32, m: u32, v: f32) { a_tile[k * BM + m] = f16(v); }
fn stage_b1(k: u32, n: u32, v: f32) { b_tile[k * BN + n] = f16(v); }
fn stage_a4(k: u32, m: u32, v: vec4<f32>) {
    for (var i = 0u; i < 4u; i++) { a_tile[k * BM + m + i] = f16(v[i]); }
}
fn stage_b4(k: u32, n: u32, v: vec4<f32>) {
    for (var i = 0u; i < 4u; i++) { b_tile[k * BN + n + i] = f16(v[i]); }
}
#else
// Rows padded by one vec4: the transposing scalar stores then hit 2 banks per 4 lanes, not 1.
const AROW: u32 = BM / 4u + 1u;
const BROW: u32 = BN / 4u + 1u;
var<workgroup> a_tile: array<vec4<f32>, BK * AROW>;
var<workgroup> b_tile: array<vec4<f32>, BK * BROW>;
fn stage_a1(k: u32, m: u32, v: f32) { a_tile[k * AROW + m / 4u][m % 4u] = v; }
fn stage_b1(k: u32, n: u32, v: f32) { b_tile[k * BROW + n / 4u][n % 4u] = v; }
fn stage_a4(k: u32, m: u32, v: vec4<f32>) { a_tile[k * AROW + m / 4u] = v; }
fn stage_b4(k: u32, n: u32, v: vec4<f32>) { b_tile[k * BROW + n / 4u] = v; }
#endif

#if AVEC4
#else
// Elements k..k+3 of row `row` of the stored A from its column `col` on (SILU_GATE's up half:
// column K), zero past K.
fn a_quad(row: u32, col: u32, k: u32) -> vec4<f32> {
#if AKVEC4
    // k % 4 == 0 here (and col); offsets and row strides in vec4 units.
    let v = a[p.a_off + row * p.a_rs + col / 4u + min(k / 4u, p.k / 4u - 1u)];
    return select(vec4<f32>(0.0), v, k < p.k);
#else
    let ks = vec4<u32>(k, k + 1u, k + 2u, k + 3u);
    let kc = (min(ks, vec4<u32>(p.k - 1u)) + col) * p.a_cs + p.a_off + row * p.a_rs;
    return select(vec4<f32>(0.0), vec4<f32>(a[kc.x], a[kc.y], a[kc.z], a[kc.w]), ks < vec4<u32>(p.k));
#endif
}

// Row and first column of quad q of A's tile at (m0, k0) read along K: four K steps of a row.
fn quad_at(m0: u32, k0: u32, q: u32) -> vec2<u32> {
    return vec2<u32>(min(m0 + q / (BK / 4u), p.m - 1u), k0 + q % (BK / 4u) * 4u);
}
#endif

#if RMSNORM
// Each of the thread's quads' sums of squares (SIMT: so far; COOP: over all of K).
var<private> sq: array<f32, A_QUADS>;
// Every thread's sums, by quad: row q / (BK / 4) of the tile, columns 4 (q % (BK / 4)) mod BK.
var<workgroup> row_sq: array<f32, BM * BK / 4u>;
#if COOP
// 1 / RMS of the row of each of the thread's quads.
var<private> rstd: array<f32, A_QUADS>;
#endif

// The norm's weights k..k+3.
fn norm_quad(k: u32) -> vec4<f32> {
#if AKVEC4
    return norm_w[min(k / 4u, p.k / 4u - 1u)];
#else
    let kc = min(vec4<u32>(k, k + 1u, k + 2u, k + 3u), vec4<u32>(p.k - 1u));
    return vec4<f32>(norm_w[kc.x], norm_w[kc.y], norm_w[kc.z], norm_w[kc.w]);
#endif
}

// 1 / RMS of row r of the tile, once every thread's sums are in `row_sq`.
fn row_rstd(r: u32) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < BK / 4u; j++) { s += row_sq[r * (BK / 4u) + j]; }
    return 1.0 / sqrt(s / f32(p.k) + p.eps);
}

// The thread's sums into `row_sq`, for all to read after the next barrier.
fn publish_sq(lid: u32) {
    for (var l = 0u; l < A_QUADS; l++) { row_sq[lid + l * THREADS] = sq[l]; }
}
#endif

// Quad l of the thread's share of A's tile at (m0, k0): along M, rows 4i..4i+3 of column k;
// else four K steps of a row, through the prologue.
fn load_a(m0: u32, k0: u32, lid: u32, l: u32) -> vec4<f32> {
    let q = lid + l * THREADS;
#if AVEC4
    // m % 4 == 0 here; offsets and K strides in vec4 units.
    let k = k0 + q / (BM / 4u);
    let m4 = min(m0 / 4u + q % (BM / 4u), p.m / 4u - 1u);
    let v = a[p.a_off + min(k, p.k - 1u) * p.a_cs + m4];
    return select(vec4<f32>(0.0), v, k < p.k);
#else
    let at = quad_at(m0, k0, q);
    let v = a_quad(at.x, 0u, at.y);
#if SILU_GATE
    // act.wgsl's silu(gate) · up (zero past K: silu(0) · 0).
    return v / (1.0 + exp(-v)) * a_quad(at.x, p.k, at.y);
#else
#if RMSNORM
#if COOP
    return v * norm_quad(at.y) * rstd[l];
#else
    sq[l] += dot(v, v);
    return v * norm_quad(at.y);
#endif
#else
    return v;
#endif
#endif
#endif
}

fn stage_a(q: u32, v: vec4<f32>) {
#if AVEC4
    stage_a4(q / (BM / 4u), q % (BM / 4u) * 4u, v);
#else
    let m = q / (BK / 4u);
    let k = q % (BK / 4u) * 4u;
    stage_a1(k, m, v.x);
    stage_a1(k + 1u, m, v.y);
    stage_a1(k + 2u, m, v.z);
    stage_a1(k + 3u, m, v.w);
#endif
}

// Quad q of B's tile at (k0, n0): along N, columns 4j..4j+3 of row k; else four K steps of a column.
fn load_b(n0: u32, k0: u32, q: u32) -> vec4<f32> {
#if BVEC4
    let k = k0 + q / (BN / 4u);
    let n4 = min(n0 / 4u + q % (BN / 4u), p.n / 4u - 1u);
    let kc = min(k, p.k - 1u);
#if WQ
    let v = wload(kc, n4);
#else
    let v = b[p.b_off + kc * p.b_rs + n4];
#endif
    return select(vec4<f32>(0.0), v, k < p.k);
#else
    let col = min(n0 + q / (BK / 4u), p.n - 1u);
    let k = k0 + q % (BK / 4u) * 4u;
#if BKVEC4
    let v = wload(col, min(k / 4u, p.k / 4u - 1u));
    return select(vec4<f32>(0.0), v, k < p.k);
#else
    let ks = vec4<u32>(k, k + 1u, k + 2u, k + 3u);
    let kc = min(ks, vec4<u32>(p.k - 1u)) * p.b_rs + p.b_off + col * p.b_cs;
    return select(vec4<f32>(0.0), vec4<f32>(b[kc.x], b[kc.y], b[kc.z], b[kc.w]), ks < vec4<u32>(p.k));
#endif
#endif
}

fn stage_b(q: u32, v: vec4<f32>) {
#if BVEC4
    stage_b4(q / (BN / 4u), q % (BN / 4u) * 4u, v);
#else
    let n = q / (BK / 4u);
    let k = q % (BK / 4u) * 4u;
    stage_b1(k, n, v.x);
    stage_b1(k + 1u, n, v.y);
    stage_b1(k + 2u, n, v.z);
    stage_b1(k + 3u, n, v.w);
#endif
}

// The epilogue of one element of C: scale, bias, accumulate, store if inside C.
fn store(row: u32, col: u32, v: f32) {
    if (row >= p.m || col >= p.n) { return; }
    var out = v * p.scale;
#if BIAS
    out += bias[col];
#endif
    let at = p.c_off + row * p.c_rs + col;
#if ACC
    out += c[at];
#endif
    c[at] = out;
}

#if RMSNORM
#if COOP
// The pre-pass: each row's 1 / RMS over all of K before the first tile is staged.
fn rms_prepass(m0: u32, lid: u32) {
    let tiles = (p.k + BK - 1u) / BK;
    for (var t = 0u; t < tiles; t++) {
        for (var l = 0u; l < A_QUADS; l++) {
            let at = quad_at(m0, t * BK, lid + l * THREADS);
            let v = a_quad(at.x, 0u, at.y);
            sq[l] += dot(v, v);
        }
    }
    publish_sq(lid);
    workgroupBarrier();
    for (var l = 0u; l < A_QUADS; l++) { rstd[l] = row_rstd((lid + l * THREADS) / (BK / 4u)); }
}
#endif
#endif

#if COOP
// One 16×16 accumulator of subgroup `sg` with its top-left at (row0, col0) of C: through
// workgroup memory to the lanes, 8 elements each.
fn emit(m: coop_mat16x16<f32, C>, sg: u32, lane: u32, row0: u32, col0: u32) {
    coopStoreT(m, &c_tile[sg * 256u], 16u);
    workgroupBarrier();
    for (var e = 0u; e < 8u; e++) {
        let i = lane + e * 32u;
        store(row0 + i / 16u, col0 + i % 16u, c_tile[sg * 256u + i]);
    }
    workgroupBarrier();
}
#else
// Four outputs of a thread: row `row`, columns col..col+3 (normed: row % BM of the tile).
fn store4(row: u32, col: u32, sums: vec4<f32>) {
#if RMSNORM
    let v = sums * row_rstd(row % BM);
#else
    let v = sums;
#endif
    store(row, col, v.x);
    store(row, col + 1u, v.y);
    store(row, col + 2u, v.z);
    store(row, col + 3u, v.w);
}
#endif

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
#if RMSNORM
#if COOP
    rms_prepass(m0, lid);
#endif
#endif
    var ra: array<vec4<f32>, A_QUADS>;
    var rb: array<vec4<f32>, B_QUADS>;
    for (var l = 0u; l < A_QUADS; l++) { ra[l] = load_a(m0, 0u, lid, l); }
    for (var l = 0u; l < B_QUADS; l++) { rb[l] = load_b(n0, 0u, lid + l * THREADS); }
#if COOP
    let sg = lid / 32u;
    let sm = sg / (BN / 32u) * 32u;
    let sn = sg % (BN / 32u) * 32u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
#else
#if OUT4
    let tx = lid % (BN / 4u);
    let ty = lid / (BN / 4u);
    // acc[i]: row ty·4 + i, columns tx·4..
    var acc = array<vec4<f32>, 4>();
#else
    let tx = lid % (BN / 8u);
    let ty = lid / (BN / 8u);
    // acc[2i + j]: row i of the thread's 8 (i < 4: ty·4 + i, else BM/2 + ty·4 + i − 4), column
    // quad j (0: tx·4.., 1: BN/2 + tx·4..).
    var acc = array<vec4<f32>, 16>();
#endif
#endif
    let tiles = (p.k + BK - 1u) / BK;
    for (var t = 0u; t < tiles; t++) {
        workgroupBarrier();
        for (var l = 0u; l < A_QUADS; l++) { stage_a(lid + l * THREADS, operand(ra[l])); }
        for (var l = 0u; l < B_QUADS; l++) { stage_b(lid + l * THREADS, operand(rb[l])); }
#if RMSNORM
#if COOP
#else
        // The sums are whole once the last K tile is loaded: out with its staging.
        if (t + 1u == tiles) { publish_sq(lid); }
#endif
#endif
        workgroupBarrier();
        if (t + 1u < tiles) {
            let k0 = (t + 1u) * BK;
            for (var l = 0u; l < A_QUADS; l++) { ra[l] = load_a(m0, k0, lid, l); }
            for (var l = 0u; l < B_QUADS; l++) { rb[l] = load_b(n0, k0, lid + l * THREADS); }
        }
#if COOP
        for (var kk = 0u; kk < BK; kk += 16u) {
            // A's tile is K-major: column-major 16×16 blocks with stride BM; B's row-major.
            let a0 = coopLoad<coop_mat16x16<f16, A>>(&a_tile[kk * BM + sm], BM);
            let a1 = coopLoad<coop_mat16x16<f16, A>>(&a_tile[kk * BM + sm + 16u], BM);
            let b0 = coopLoadT<coop_mat16x16<f16, B>>(&b_tile[kk * BN + sn], BN);
            let b1 = coopLoadT<coop_mat16x16<f16, B>>(&b_tile[kk * BN + sn + 16u], BN);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
#else
#if OUT4
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = a_tile[kk * AROW + ty];
            let b0 = b_tile[kk * BROW + tx];
            acc[0] += a0.x * b0;
            acc[1] += a0.y * b0;
            acc[2] += a0.z * b0;
            acc[3] += a0.w * b0;
        }
#else
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = a_tile[kk * AROW + ty];
            let a1 = a_tile[kk * AROW + BM / 8u + ty];
            let b0 = b_tile[kk * BROW + tx];
            let b1 = b_tile[kk * BROW + BN / 8u + tx];
            acc[0] += a0.x * b0;
            acc[1] += a0.x * b1;
            acc[2] += a0.y * b0;
            acc[3] += a0.y * b1;
            acc[4] += a0.z * b0;
            acc[5] += a0.z * b1;
            acc[6] += a0.w * b0;
            acc[7] += a0.w * b1;
            acc[8] += a1.x * b0;
            acc[9] += a1.x * b1;
            acc[10] += a1.y * b0;
            acc[11] += a1.y * b1;
            acc[12] += a1.z * b0;
            acc[13] += a1.z * b1;
            acc[14] += a1.w * b0;
            acc[15] += a1.w * b1;
        }
#endif
#endif
    }
#if COOP
    let lane = lid % 32u;
    emit(c00, sg, lane, m0 + sm, n0 + sn);
    emit(c01, sg, lane, m0 + sm, n0 + sn + 16u);
    emit(c10, sg, lane, m0 + sm + 16u, n0 + sn);
    emit(c11, sg, lane, m0 + sm + 16u, n0 + sn + 16u);
#else
#if OUT4
    let r = m0 + ty * 4u;
    let q = n0 + tx * 4u;
    store4(r, q, acc[0]);
    store4(r + 1u, q, acc[1]);
    store4(r + 2u, q, acc[2]);
    store4(r + 3u, q, acc[3]);
#else
    let r0 = m0 + ty * 4u;
    let r1 = m0 + BM / 2u + ty * 4u;
    let q0 = n0 + tx * 4u;
    let q1 = n0 + BN / 2u + tx * 4u;
    store4(r0, q0, acc[0]);
    store4(r0, q1, acc[1]);
    store4(r0 + 1u, q0, acc[2]);
    store4(r0 + 1u, q1, acc[3]);
    store4(r0 + 2u, q0, acc[4]);
    store4(r0 + 2u, q1, acc[5]);
    store4(r0 + 3u, q0, acc[6]);
    store4(r0 + 3u, q1, acc[7]);
    store4(r1, q0, acc[8]);
    store4(r1, q1, acc[9]);
    store4(r1 + 1u, q0, acc[10]);
    store4(r1 + 1u, q1, acc[11]);
    store4(r1 + 2u, q0, acc[12]);
    store4(r1 + 2u, q1, acc[13]);
    store4(r1 + 3u, q0, acc[14]);
    store4(r1 + 3u, q1, acc[15]);
#endif
#endif
}
