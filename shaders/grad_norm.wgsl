// Gradient norms for clipping and the log, without reading gradients back.
// Default entry: partial sums of squares of one tensor, one per workgroup of CHUNK elements,
// into partials[first + workgroup].
// FINISH: one thread per tensor adds its partials in order (so the result never depends on
// scheduling) into out[t]; then out[n_tensors] = global norm and out[n_tensors + 1] = the
// clip factor min(1, clip / (norm + 1e-6)) (1 when clip = 0), as torch's clip_grad_norm_, and
// out[n_tensors + 2] = what AdamW multiplies the gradients by: the clip factor times `unscale`.
// Loss-scaled gradients (mixed precision) are unscaled by `unscale` = 1 / the loss scale as
// they are squared, so every norm is the true gradient's; f32 training passes 1.

struct Params { n: u32, first: u32, n_tensors: u32, clip: f32, unscale: f32 }

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;

#if FINISH
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read> ranges: array<u32>;  // per tensor: first partial, count
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // [n_tensors + 3]
var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var own = 0.0;
    for (var t = lid; t < p.n_tensors; t += WG) {
        var s = 0.0;
        let first = ranges[2u * t];
        for (var i = 0u; i < ranges[2u * t + 1u]; i++) { s += partials[first + i]; }
        out[t] = s;
        own += s;
    }
    sums[lid] = own;
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var i = 0u; i < WG; i++) { total += sums[i]; }
        let norm = sqrt(total);
        out[p.n_tensors] = norm;
        let factor = select(1.0, min(1.0, p.clip / (norm + 1e-6)), p.clip > 0.0);
        out[p.n_tensors + 1u] = factor;
        out[p.n_tensors + 2u] = factor * p.unscale;
    }
}
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
#include reduce

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let start = wid.x * CHUNK;
    var s = 0.0;
    for (var i = start + lid; i < min(start + CHUNK, p.n); i += WG) {
        let g = x[i] * p.unscale;
        s += g * g;
    }
    let total = workgroup_sum(s, lid);
    if (lid == 0u) { partials[p.first + wid.x] = total; }
}
#endif
