// Final-logit soft-capping (Gemma's `final_logit_softcapping`), in place:
// z <- cap * tanh(z / cap). Training does not run it: xent.wgsl's SOFTCAP variant caps the
// logits itself and takes the gradient through the cap.

struct Params { n: u32, cap: f32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;

#include cap

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) { return; }
    logits[i] = soft_cap(logits[i], p.cap);
}
