// Backward of the MLP activations (act.wgsl), from the saved pre-activation `x`.
// SILU_GATE: out = silu(g) * u  →  dg = dout * u * s * (1 + g * (1 - s)),  du = dout * silu(g),
// with s = sigmoid(g). GELU_TANH: out = 0.5 v (1 + tanh(k (v + c v³)))  →
// dv = dout * (0.5 (1 + t) + 0.5 v (1 - t²) k (1 + 3 c v²)).

struct Params { n_rows: u32, f: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;      // forward input
@group(0) @binding(2) var<storage, read> dout: array<f32>;   // [rows, f]
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;  // shaped like x

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n_rows * p.f) { return; }
    let r = idx / p.f;
    let c = idx % p.f;
    let d = dout[idx];
#if SILU_GATE
    let gi = r * 2u * p.f + c;
    let g = x[gi];
    let u = x[gi + p.f];
    let s = 1.0 / (1.0 + exp(-g));
    dx[gi] = d * u * s * (1.0 + g * (1.0 - s));
    dx[gi + p.f] = d * g * s;
#else
    let v = x[idx];
    let k = 0.7978845608028654;
    let inner = clamp(k * (v + 0.044715 * v * v * v), -15.0, 15.0);
    let t = tanh(inner);
    dx[idx] = d * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * v * v));
#endif
}
