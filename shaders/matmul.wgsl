#if W_F16_NATIVE
enable f16;
#endif
// C = scale · A · B (+ bias) (+= C with ACC), all f32. A is M×K and B is K×N, each given by an offset
// and row/column strides, so one kernel serves x·Wᵀ (forward), dy·W (input gradient) and
// dyᵀ·x (weight gradient). Each thread computes a 4×4 block of C from registers (no
// workgroup memory: faster on CPU adapters and competitive on GPUs). With KVEC4, A and B
// are contiguous along K (the forward x·Wᵀ case) and are read four K-steps at a time; B may then
// be a packed weight (f16 or quantized, shaders/wfmt.wgsl), dequantized as it is read; so may
// the B = W of the input gradient dy·W with BVEC4 (LoRA over a packed base).
// Otherwise the kernel steps along K one at a time, reading a column of 4 rows of A and a row of
// 4 columns of B: with AVEC4 the 4 rows of A are contiguous (A = dyᵀ in the weight gradient),
// with BVEC4 the 4 columns of B are (B = W in the input gradient, x in the weight gradient),
// and each is one vec4 load instead of four scalar ones (offsets and K strides in vec4 units).
// Every load goes through operand() (shaders/operand.wgsl): f16-rounded with F16_OPERANDS.

struct Params {
    m: u32, n: u32, k: u32, c_off: u32,
    a_off: u32, a_rs: u32, a_cs: u32, c_rs: u32,
    b_off: u32, b_rs: u32, b_cs: u32, scale: f32,
    eps: f32,  // unused: the RMSNORM prologue of matvec.wgsl and gemm.wgsl, which share Params
}

@group(0) @binding(0) var<uniform> p: Params;
#if KVEC4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#include wfmt
#else
#if AVEC4
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#else
@group(0) @binding(1) var<storage, read> a: array<f32>;
#endif
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
#include operand
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) { return; }
    // Out-of-range rows/columns re-read the last valid one; their results are not stored.
    let r = min(vec4<u32>(row0, row0 + 1u, row0 + 2u, row0 + 3u), vec4<u32>(p.m - 1u));
    let q = min(vec4<u32>(col0, col0 + 1u, col0 + 2u, col0 + 3u), vec4<u32>(p.n - 1u));
    var acc = array<vec4<f32>, 4>();
#if KVEC4
    // Offsets and row strides are in vec4 units here (the host divides by 4).
    for (var kk = 0u; kk < p.k / 4u; kk++) {
        let a0 = operand(a[p.a_off + r.x * p.a_rs + kk]);
        let a1 = operand(a[p.a_off + r.y * p.a_rs + kk]);
        let a2 = operand(a[p.a_off + r.z * p.a_rs + kk]);
        let a3 = operand(a[p.a_off + r.w * p.a_rs + kk]);
        let b0 = operand(wload(q.x, kk));
        let b1 = operand(wload(q.y, kk));
        let b2 = operand(wload(q.z, kk));
        let b3 = operand(wload(q.w, kk));
        acc[0] += vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
        acc[1] += vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
        acc[2] += vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
        acc[3] += vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
    }
#else
    for (var kk = 0u; kk < p.k; kk++) {
#if AVEC4
        let av = operand(a[p.a_off + kk * p.a_cs + row0 / 4u]);
#else
        let ak = p.a_off + kk * p.a_cs;
        let av = operand(vec4<f32>(a[ak + r.x * p.a_rs], a[ak + r.y * p.a_rs], a[ak + r.z * p.a_rs], a[ak + r.w * p.a_rs]));
#endif
#if WQ
        // A packed W (dy·W, BVEC4): row kk of W holds this thread's four columns of B.
        let bv = operand(wload(kk, col0 / 4u));
#else
#if BVEC4
        let bv = operand(b[p.b_off + kk * p.b_rs + col0 / 4u]);
#else
        let bk = p.b_off + kk * p.b_rs;
        let bv = operand(vec4<f32>(b[bk + q.x * p.b_cs], b[bk + q.y * p.b_cs], b[bk + q.z * p.b_cs], b[bk + q.w * p.b_cs]));
#endif
#endif
        acc[0] += av.x * bv;
        acc[1] += av.y * bv;
        acc[2] += av.z * bv;
        acc[3] += av.w * bv;
    }
#endif
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + i;
        if (row >= p.m) { break; }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + j;
            if (col >= p.n) { break; }
            var v = acc[i][j] * p.scale;
#if BIAS
            v += bias[col];
#endif
            let at = p.c_off + row * p.c_rs + col;
#if ACC
            v += c[at];
#endif
            c[at] = v;
        }
    }
}
