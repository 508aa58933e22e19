// MLP activations. SILU_GATE: the fused [gate | up] projection (2F columns) becomes
// silu(gate) * up (F columns), Llama/Qwen2. GELU_TANH: GPT-2's tanh approximation, F to F.

struct Params { n_rows: u32, f: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n_rows * p.f) { return; }
    let r = idx / p.f;
    let c = idx % p.f;
#if SILU_GATE
    let g = x[r * 2u * p.f + c];
    let u = x[r * 2u * p.f + p.f + c];
    out[idx] = g / (1.0 + exp(-g)) * u;
#else
    let v = x[idx];
    // Clamped so tanh never sees an argument whose exp overflows (tanh is ±1 there anyway).
    let inner = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    out[idx] = 0.5 * v * (1.0 + tanh(inner));
#endif
}
