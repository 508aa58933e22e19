// Latent-trace reductions of the residual stream at one block (generate/trace.rs), over a
// chunk of rows that are the consecutive positions t0 .. t0 + n_rows of one sequence.
// ROWS: one workgroup per row writes |h_t| and cos(h_t, h_{t-1}) (the row before the chunk's
//   first is `prev`; at t = 0 the cosine is written as 0 and the host marks it undefined).
// Otherwise (segment sums): one thread per column adds each row into its segment's sum,
//   rows in order, so no two threads touch the same sum.

struct Params { n_rows: u32, d: u32, t0: u32, out_off: u32, prev_off: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [n_rows, d]
#if ROWS
@group(0) @binding(2) var<storage, read> prev: array<f32>;      // the row before t0, at prev_off
@group(0) @binding(3) var<storage, read_write> norms: array<f32>;  // at out_off + t
@group(0) @binding(4) var<storage, read_write> cosines: array<f32>;

const WG: u32 = 64u;
#include reduce

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.n_rows) { return; }
    let lid = lid3.x;
    let base = r * p.d;
    var hh = 0.0;
    var hq = 0.0;
    var qq = 0.0;
    for (var i = lid; i < p.d; i += WG) {
        let h = x[base + i];
        var q = 0.0;
        if (r > 0u) { q = x[base - p.d + i]; } else { q = prev[p.prev_off + i]; }
        hh += h * h;
        hq += h * q;
        qq += q * q;
    }
    let sum_hh = workgroup_sum(hh, lid);
    let sum_hq = workgroup_sum(hq, lid);
    let sum_qq = workgroup_sum(qq, lid);
    if (lid == 0u) {
        let t = p.t0 + r;
        norms[p.out_off + t] = sqrt(sum_hh);
        cosines[p.out_off + t] = select(sum_hq / max(sqrt(sum_hh * sum_qq), 1e-30), 0.0, t == 0u);
    }
}
#else
@group(0) @binding(2) var<storage, read> segment_of: array<u32>;  // per position of the sequence
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;  // [segments, d] at out_off

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.d) { return; }
    for (var r = 0u; r < p.n_rows; r++) {
        let at = p.out_off + segment_of[p.t0 + r] * p.d + i;
        sums[at] += x[r * p.d + i];
    }
}
#endif
