// Backward of the MLP activations (act.wgsl), from the saved pre-activation `x`.
// GATED: out = φ(g) * u  →  dg = dout * u * φ'(g),  du = dout * φ(g). Else dv = dout * φ'(v).

struct Params { n_rows: u32, f: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;      // forward input
@group(0) @binding(2) var<storage, read> dout: array<f32>;   // [rows, f]
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;  // shaped like x

#include activation

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n_rows * p.f) { return; }
    let r = idx / p.f;
    let c = idx % p.f;
    let d = dout[idx];
#if GATED
    let gi = r * 2u * p.f + c;
    let g = x[gi];
    let u = x[gi + p.f];
    dx[gi] = d * u * phi_grad(g);
    dx[gi + p.f] = d * phi(g);
#else
    dx[idx] = d * phi_grad(x[idx]);
#endif
}
