// Softmax cross-entropy, fused with its gradient. Per row of logits: loss = lse - z[target]
// (0 for rows without a target), and the logits are replaced in place by
// d loss_total / d z = scale * (softmax(z) - onehot(target)), where scale = 1 / (number of
// targets in the batch) makes the total the mean. Rows without a target get zero gradient.
// One workgroup per row. The logits may be a chunk of the batch's rows: their row r is the
// batch's row first + r, whose target and loss these are.
// SOFTCAP: the logits are the raw ones; the first pass caps them in place, z = cap * tanh(raw /
// cap) (`#include cap`, softcap.wgsl's expression), each thread the elements it reads again in
// the later passes, so no other kernel reads or writes the chunk; the gradient is taken with
// respect to the raw logits: d/draw = d/dz * (1 - (z / cap)^2).

struct Params { n_rows: u32, vocab: u32, scale: f32, first: u32, cap: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;  // [n_rows, vocab]
@group(0) @binding(2) var<storage, read> targets: array<u32>;       // [batch rows], 0xffffffff = none
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;    // [batch rows]

const WG: u32 = 64u;
#include reduce
#include cap

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.n_rows) { return; }
    let lid = lid3.x;
    let base = r * p.vocab;
    let t = targets[p.first + r];
    let has_target = t < p.vocab;
    var m = -3.0e38;
    for (var i = lid; i < p.vocab; i += WG) {
#if SOFTCAP
        logits[base + i] = soft_cap(logits[base + i], p.cap);
#endif
        m = max(m, logits[base + i]);
    }
#if SOFTCAP
    // The target's capped logit, written by one thread, is read by all below.
    storageBarrier();
#endif
    m = workgroup_max(m, lid);
    var se = 0.0;
    for (var i = lid; i < p.vocab; i += WG) { se += exp(logits[base + i] - m); }
    let lse = m + log(workgroup_sum(se, lid));
    // Everyone reads the target logit before anyone overwrites the row.
    let zt = select(0.0, logits[base + min(t, p.vocab - 1u)], has_target);
    workgroupBarrier();
    let scale = select(0.0, p.scale, has_target);
    for (var i = lid; i < p.vocab; i += WG) {
        let z = logits[base + i];
        let dz = scale * (exp(z - lse) - select(0.0, 1.0, i == t));
#if SOFTCAP
        let tanh_raw = z / p.cap;
        logits[base + i] = dz * (1.0 - tanh_raw * tanh_raw);
#else
        logits[base + i] = dz;
#endif
    }
    if (lid == 0u) { loss[p.first + r] = select(0.0, lse - zt, has_target); }
}
