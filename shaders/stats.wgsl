// Log-softmax statistics of logit rows: log-sum-exp, entropy (nats), the log-probability of
// a target token (when given) and the argmax. Two passes, so that one long row (a decode
// step's 49k-entry vocabulary) spreads over many workgroups instead of one:
// - SPLIT: workgroup (row, part) reduces its slice of the row to a partial
//   (max m, argmax, s = Σ exp(z - m), t = Σ exp(z - m)·(z - m));
// - COMBINE: one workgroup per row merges the row's partials and writes the statistics.
// Partials merge exactly (up to rounding) in any order: rescaling to a common max M gives
// s·e^(m-M) and e^(m-M)·(t + (m - M)·s). Ties of the argmax go to the lowest index, as
// torch.argmax; NaN logits are never the argmax.
// PICK (a COMBINE variant): greedy decoding's pick from row 0, as sampler::argmax makes it; it
// feeds the pick to the next step (ids[0], and row 0 of the row table at the next position)
// and writes [id, log-prob, entropy, lse] into `out` at that position.

struct Params { n_rows: u32, vocab: u32, parts: u32, row: u32 }

// A partial: (m, s, t, argmax as bits).
struct Partial { m: f32, s: f32, t: f32, arg: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;         // [rows, vocab]
#if SPLIT
@group(0) @binding(2) var<storage, read_write> partials: array<vec4<f32>>;  // [rows, parts]
#else
@group(0) @binding(2) var<storage, read> partials: array<vec4<f32>>;
#if PICK
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> rows: array<u32>;      // (sequence, position) per row
@group(0) @binding(5) var<storage, read_write> out: array<vec4<u32>>; // per position
#else
@group(0) @binding(3) var<storage, read> targets: array<u32>;         // per row; 0xffffffff = none
@group(0) @binding(4) var<storage, read_write> out: array<f32>;       // [rows, 4]: lse, entropy, target logprob, argmax
#endif
#endif

const WG: u32 = 64u;
const NEG_INF: f32 = -3.0e38;
var<workgroup> red: array<Partial, WG>;

fn merge(a: Partial, b: Partial) -> Partial {
    let m = max(a.m, b.m);
    let ea = exp(a.m - m);
    let eb = exp(b.m - m);
    // The lower index wins ties; a partial that saw no number keeps NEG_INF and loses.
    var arg = a.arg;
    if (b.m > a.m || (b.m == a.m && b.arg < a.arg)) { arg = b.arg; }
    return Partial(m, a.s * ea + b.s * eb, rescaled_t(a, m, ea) + rescaled_t(b, m, eb), arg);
}

// t of a partial rescaled to the max m (e = exp(a.m - m)); zero for an empty partial, whose
// (a.m - m) may overflow.
fn rescaled_t(a: Partial, m: f32, e: f32) -> f32 {
    return select(0.0, e * (a.t + (a.m - m) * a.s), a.s > 0.0);
}

// Tree-merges the workgroup's partials; every thread gets the result.
fn workgroup_merge(v: Partial, lid: u32) -> Partial {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = merge(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let idx = wid.x + wid.y * nwg.x;
    let lid = lid3.x;
#if SPLIT
    if (idx >= p.n_rows * p.parts) { return; }
    let r = idx / p.parts;
    let part = idx % p.parts;
    let len = (p.vocab + p.parts - 1u) / p.parts;
    let start = part * len;
    let end = min(start + len, p.vocab);
    // One pass per thread: a running partial updated by each logit.
    var acc = Partial(NEG_INF, 0.0, 0.0, 0xffffffffu);
    for (var i = start + lid; i < end; i += WG) {
        let z = logits[r * p.vocab + i];
        if (z > acc.m) {
            let e = exp(acc.m - z);
            acc = Partial(z, acc.s * e + 1.0, rescaled_t(acc, z, e), i);
        } else if (z <= acc.m) {  // false for NaN
            let e = exp(z - acc.m);
            acc.s += e;
            acc.t += e * (z - acc.m);
        }
    }
    let total = workgroup_merge(acc, lid);
    if (lid == 0u) {
        partials[idx] = vec4<f32>(total.m, total.s, total.t, bitcast<f32>(total.arg));
    }
#else
    if (idx >= p.n_rows) { return; }
    let r = idx;
    var acc = Partial(NEG_INF, 0.0, 0.0, 0xffffffffu);
    for (var j = lid; j < p.parts; j += WG) {
        let v = partials[r * p.parts + j];
        acc = merge(acc, Partial(v.x, v.y, v.z, bitcast<u32>(v.w)));
    }
    let total = workgroup_merge(acc, lid);
#if PICK
    if (lid == 0u) {
        var id = total.arg;
        if (id == 0xffffffffu) {
            // No logit above NEG_INF (rare): sampler::argmax's pick, -inf counting as a number,
            // 0 when nothing is one.
            id = 0u;
            var found = false;
            for (var i = 0u; i < p.vocab; i++) {
                let z = logits[i];
                let number = (bitcast<u32>(z) & 0x7fffffffu) <= 0x7f800000u;
                if (number && (!found || z > logits[id])) { id = i; found = true; }
            }
        }
        let log_s = log(total.s);
        let seq = rows[2u * p.row];
        let next = rows[2u * p.row + 1u] + 1u;
        ids[0] = id;
        rows[0] = seq;
        rows[1] = next;
        if (next < arrayLength(&out)) {
            // The pick is the max, so its log-prob is -log(s).
            out[next] = vec4<u32>(id, bitcast<u32>(-log_s), bitcast<u32>(log_s - total.t / total.s),
                                  bitcast<u32>(total.m + log_s));
        }
    }
#else
    if (lid == 0u) {
        let log_s = log(total.s);
        let lse = total.m + log_s;
        out[4u * r] = lse;
        out[4u * r + 1u] = log_s - total.t / total.s;
        let t = targets[r];
        out[4u * r + 2u] = select(0.0, logits[r * p.vocab + min(t, p.vocab - 1u)] - lse, t < p.vocab);
        out[4u * r + 3u] = f32(min(total.arg, p.vocab - 1u));
    }
#endif
#endif
}
