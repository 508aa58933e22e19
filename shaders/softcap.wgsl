// Final-logit soft-capping (Gemma's `final_logit_softcapping`), in place:
// z <- cap * tanh(z / cap). Its backward is xent.wgsl's SOFTCAP variant, which reads the capped
// logits this leaves.

struct Params { n: u32, cap: f32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) { return; }
    // Clamped so tanh never sees an argument whose exp overflows (tanh is ±1 there anyway).
    logits[i] = p.cap * tanh(clamp(logits[i] / p.cap, -15.0, 15.0));
}
