// Log-softmax statistics of logit rows: log-sum-exp, entropy (nats), the log-probability of
// a target token (when given) and the argmax. One workgroup per row.

struct Params { n_rows: u32, vocab: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;   // [rows, vocab]
@group(0) @binding(2) var<storage, read> targets: array<u32>;  // per row; 0xffffffff = none
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // [rows, 4]: lse, entropy, target logprob, argmax

const WG: u32 = 64u;
var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.n_rows) { return; }
    let lid = lid3.x;
    let base = r * p.vocab;
    // Max and argmax (ties go to the lowest index, as torch.argmax does).
    var best = -3.0e38;
    var best_i = 0u;
    for (var i = lid; i < p.vocab; i += WG) {
        let z = logits[base + i];
        if (z > best) { best = z; best_i = i; }
    }
    red_v[lid] = best;
    red_i[lid] = best_i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = red_v[lid + s];
            let oi = red_i[lid + s];
            if (ov > red_v[lid] || (ov == red_v[lid] && oi < red_i[lid])) {
                red_v[lid] = ov;
                red_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let m = red_v[0];
    let arg = red_i[0];
    workgroupBarrier();
    // Sum of exp(z - m) and of exp(z - m) * (z - m), reduced together.
    var se = 0.0;
    var sez = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let z = logits[base + i] - m;
        let e = exp(z);
        se += e;
        sez += e * z;
    }
    red_v[lid] = se;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red_v[lid] += red_v[lid + s]; }
        workgroupBarrier();
    }
    let total = red_v[0];
    workgroupBarrier();
    red_v[lid] = sez;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red_v[lid] += red_v[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let log_total = log(total);
        out[4u * r] = m + log_total;
        out[4u * r + 1u] = log_total - red_v[0] / total;
        let t = targets[r];
        out[4u * r + 2u] = select(0.0, logits[base + min(t, p.vocab - 1u)] - m - log_total, t < p.vocab);
        out[4u * r + 3u] = f32(arg);
    }
}
