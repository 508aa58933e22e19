// Greedy sampling on the GPU: the argmax of one logit row (ties to the lowest index, NaN
// never chosen, 0 when nothing is a number: as sampler::argmax) and its log-softmax
// statistics. FINAL 0: one workgroup per PART logits writes its (max, argmax, sum of
// exp(z - max), sum of exp(z - max) * (z - max)); FINAL 1: one workgroup merges them, feeds
// the pick to the next step (ids[0], and row 0 of the row table at the next position) and
// writes [id, log-prob, entropy, lse] into `out` at that position.

struct Params { vocab: u32, n_parts: u32, row: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
#if FINAL
@group(0) @binding(1) var<storage, read> parts: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> rows: array<u32>;     // (sequence, position) per row
@group(0) @binding(4) var<storage, read_write> out: array<vec4<u32>>; // per position
#else
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> parts: array<vec4<f32>>;
#endif

const WG: u32 = 256u;
const PART: u32 = 1024u;
// (max, index as f32 or -1 for none, sum, weighted sum) per thread.
var<workgroup> red: array<vec4<f32>, WG>;

// Bit test: compilers may fold `z != z` away.
fn is_number(z: f32) -> bool {
    return (bitcast<u32>(z) & 0x7fffffffu) <= 0x7f800000u;
}

// Whether candidate b beats a: a number, larger, or equal at a lower index.
fn beats(b: vec4<f32>, a: vec4<f32>) -> bool {
    return b.y >= 0.0 && (a.y < 0.0 || b.x > a.x || (b.x == a.x && b.y < a.y));
}

fn reduce_best(lid: u32) {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s && beats(red[lid + s], red[lid])) { red[lid] = red[lid + s]; }
        workgroupBarrier();
    }
}

fn reduce_sums(lid: u32) {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = vec4<f32>(red[lid].xy, red[lid].zw + red[lid + s].zw); }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
#if FINAL
    var best = vec4<f32>(0.0, -1.0, 0.0, 0.0);
    for (var j = lid; j < p.n_parts; j += WG) {
        let c = vec4<f32>(parts[j].x, parts[j].y, 0.0, 0.0);
        if (beats(c, best)) { best = c; }
    }
    red[lid] = best;
    workgroupBarrier();
    reduce_best(lid);
    let top = red[0];
    workgroupBarrier();
    // Each part's sums rescaled from its own max to the overall one.
    var se = 0.0;
    var sez = 0.0;
    for (var j = lid; j < p.n_parts; j += WG) {
        let c = parts[j];
        if (c.y >= 0.0) {
            let d = c.x - top.x;
            let w = exp(d);
            se += w * c.z;
            sez += w * (c.w + d * c.z);
        }
    }
    red[lid] = vec4<f32>(0.0, 0.0, se, sez);
    workgroupBarrier();
    reduce_sums(lid);
    if (lid == 0u) {
        let total = red[0].z;
        let log_total = log(total);
        let id = select(0u, u32(top.y), top.y >= 0.0);
        let seq = rows[2u * p.row];
        let next = rows[2u * p.row + 1u] + 1u;
        ids[0] = id;
        rows[0] = seq;
        rows[1] = next;
        if (next < arrayLength(&out)) {
            // The pick is the max, so its log-prob is -log(total).
            out[next] = vec4<u32>(id, bitcast<u32>(-log_total), bitcast<u32>(log_total - red[0].w / total),
                                  bitcast<u32>(top.x + log_total));
        }
    }
#else
    let start = wid.x * PART;
    let end = min(start + PART, p.vocab);
    var best = vec4<f32>(0.0, -1.0, 0.0, 0.0);
    for (var i = start + lid; i < end; i += WG) {
        let z = logits[i];
        if (is_number(z) && (best.y < 0.0 || z > best.x)) { best = vec4<f32>(z, f32(i), 0.0, 0.0); }
    }
    red[lid] = best;
    workgroupBarrier();
    reduce_best(lid);
    let top = red[0];
    workgroupBarrier();
    var se = 0.0;
    var sez = 0.0;
    for (var i = start + lid; i < end; i += WG) {
        let z = logits[i];
        if (is_number(z)) {
            let d = z - top.x;
            let e = exp(d);
            se += e;
            sez += e * d;
        }
    }
    red[lid] = vec4<f32>(0.0, 0.0, se, sez);
    workgroupBarrier();
    reduce_sums(lid);
    if (lid == 0u) { parts[wid.x] = vec4<f32>(top.x, top.y, red[0].z, red[0].w); }
#endif
}
