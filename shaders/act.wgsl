// MLP activations (φ from activation.wgsl). GATED: the fused [gate | up] projection
// (2F columns) becomes φ(gate) * up (F columns): Llama/Qwen (SiLU), Gemma 3 (GELU-tanh).
// Else F to F: GPT-2 (GELU-tanh), GPT-NeoX (GELU).

struct Params { n_rows: u32, f: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

#include activation

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n_rows * p.f) { return; }
    let r = idx / p.f;
    let c = idx % p.f;
#if GATED
    out[idx] = phi(x[r * 2u * p.f + c]) * x[r * 2u * p.f + p.f + c];
#else
    out[idx] = phi(x[idx]);
#endif
}
