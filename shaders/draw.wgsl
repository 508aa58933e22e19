// Sampling one token on the GPU, as crate::generate::sampler::Sampler picks it from one logit
// row: repetition penalty on the tokens seen (prompt or generated), OpenAI's presence and
// frequency penalties on the generated ones (`counts`), then temperature, top-k, top-p and
// min-p, then the inverse CDF of the kept weights walked in id order at the draw `uniforms[pos]`
// (drawn on the host from the sampler's seeded stream, one per position). Temperature 0, an
// infinite best logit or no number at all give the argmax of the penalised logits instead.
// Like stats.wgsl's PICK (greedy decoding) it feeds the pick to the next step (ids[0], row 0
// of the row table at the next position), counts it, and writes [id, log-prob, entropy, lse]
// of the raw logits into `out` at that position. One workgroup does it all: the passes
// over the vocabulary are cheap next to a decode step, and no pass needs another's workgroups.
//
// Top-k and top-p become a threshold on the penalised logit's order key plus a count of the
// tokens tied at the threshold taken in id order (the host sampler's tie rule): top-k by a
// radix select on the key, top-p by a binary search on the key for the last mass >= top_p,
// over the (at most 1024) largest candidates in workgroup memory when they hold that mass,
// which keeps the passes over the vocabulary to about ten.

struct Params {
    vocab: u32,
    row: u32,
    top_k: u32,
    _p: u32,
    temperature: f32,
    top_p: f32,
    penalty: f32,
    min_p: f32,
    presence: f32,
    frequency: f32,
    _q: vec2<f32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> uniforms: array<f32>;      // one draw per position
// Per token: bit 0 = seen (prompt or generated), the bits above = times generated.
@group(0) @binding(3) var<storage, read_write> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;
@group(0) @binding(5) var<storage, read_write> rows: array<u32>;     // (sequence, position) per row
@group(0) @binding(6) var<storage, read_write> out: array<vec4<u32>>; // per position

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

var<workgroup> red: array<vec4<f32>, WG>;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> shared_f: vec4<f32>;
var<workgroup> shared_u: vec4<u32>;
// Top-p's candidates (order keys and weights): 8 KiB of the 16 KiB WebGPU guarantees.
const CAP: u32 = 1024u;
var<workgroup> candidate_key: array<u32, CAP>;
var<workgroup> candidate_w: array<f32, CAP>;
var<workgroup> n_candidates: atomic<u32>;

// Bit test: compilers may fold `z != z` away.
fn is_number(z: f32) -> bool {
    return (bitcast<u32>(z) & 0x7fffffffu) <= 0x7f800000u;
}

fn is_finite(z: f32) -> bool {
    return (bitcast<u32>(z) & 0x7fffffffu) < 0x7f800000u;
}

// An unsigned key with the order of the floats (for numbers).
fn key_of(a: f32) -> u32 {
    let b = bitcast<u32>(a);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn value_of(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// Hugging Face's penalty on seen tokens (positive logits divided, the others multiplied),
// then OpenAI's on generated ones.
fn penalised(i: u32) -> f32 {
    var z = logits[i];
    let c = counts[i];
    if (c == 0u) { return z; }
    if (p.penalty != 1.0) { z = select(z * p.penalty, z / p.penalty, z > 0.0); }
    let generated = c >> 1u;
    if (generated > 0u) { z -= f32(generated) * p.frequency + p.presence; }
    return z;
}

// Radix select over the penalised logits' order keys, 8 bits a round from the top: the k-th
// largest key (k below the count of numbers) and how many of the tokens at it the k largest
// take.
fn radix_select(lid: u32, k: u32) -> vec2<u32> {
    var t = 0u;
    var remaining = k;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        let above = select(0u, 0xffffffffu << (shift + 8u), round > 0u);
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var i = lid; i < p.vocab; i += WG) {
            if (!is_number(logits[i])) { continue; }
            let key = key_of(penalised(i));
            if ((key & above) == t) { atomicAdd(&hist[(key >> shift) & 255u], 1u); }
        }
        workgroupBarrier();
        if (lid == 0u) {
            var taken = 0u;
            var d = 255u;
            loop {
                let c = atomicLoad(&hist[d]);
                if (taken + c >= remaining || d == 0u) { break; }
                taken += c;
                d -= 1u;
            }
            shared_u = vec4<u32>(d, remaining - taken, 0u, 0u);
        }
        let r = workgroupUniformLoad(&shared_u);
        t |= r.x << shift;
        remaining = r.y;
    }
    return vec2<u32>(t, remaining);
}

// Token i's weight if the filters keep it (key above t, or at t among the first `ties` such
// tokens in id order, `rank` counting those met so far; and at least min-p of the best
// token's weight, 1), else -1.
fn kept_weight(i: u32, t: u32, ties: u32, rank: ptr<function, u32>, amax: f32, inv_t: f32) -> f32 {
    if (!is_number(logits[i])) { return -1.0; }
    let a = penalised(i);
    let k = key_of(a);
    var kept = k > t;
    if (k == t) {
        kept = *rank < ties;
        *rank += 1u;
    }
    let w = exp((a - amax) * inv_t);
    return select(-1.0, w, kept && w >= p.min_p);
}

// Whether candidate b = (value, index or -1 for none) beats a: as sampler::argmax.
fn beats(b: vec2<f32>, a: vec2<f32>) -> bool {
    return b.y >= 0.0 && (a.y < 0.0 || b.x > a.x || (b.x == a.x && b.y < a.y));
}

// Two (value, index) candidates per thread reduced to the best of each, in every thread.
fn best_of_all(lid: u32, v: vec4<f32>) -> vec4<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let a = red[lid];
            let b = red[lid + s];
            red[lid] = vec4<f32>(select(a.xy, b.xy, beats(b.xy, a.xy)), select(a.zw, b.zw, beats(b.zw, a.zw)));
        }
        workgroupBarrier();
    }
    if (lid == 0u) { shared_f = red[0]; }
    return workgroupUniformLoad(&shared_f);
}

fn sum_of_all(lid: u32, v: vec4<f32>) -> vec4<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u) { shared_f = red[0]; }
    return workgroupUniformLoad(&shared_f);
}

// Inclusive prefix sums of v.x over the threads (Hillis-Steele); red[WG - 1].x is the total.
fn prefix_sum(lid: u32, v: f32) -> f32 {
    red[lid].x = v;
    workgroupBarrier();
    for (var s = 1u; s < WG; s <<= 1u) {
        var add = 0.0;
        if (lid >= s) { add = red[lid - s].x; }
        workgroupBarrier();
        red[lid].x += add;
        workgroupBarrier();
    }
    return red[lid].x;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let vocab = p.vocab;

    // The best penalised logit (the greedy pick), the raw maximum, how many are numbers.
    var best = vec4<f32>(0.0, -1.0, 0.0, -1.0);
    var numbers = 0.0;
    for (var i = lid; i < vocab; i += WG) {
        let z = logits[i];
        if (!is_number(z)) { continue; }
        numbers += 1.0;
        let c = vec4<f32>(penalised(i), f32(i), z, f32(i));
        best = vec4<f32>(select(best.xy, c.xy, beats(c.xy, best.xy)), select(best.zw, c.zw, beats(c.zw, best.zw)));
    }
    let top = best_of_all(lid, best);
    let n_numbers = sum_of_all(lid, vec4<f32>(numbers, 0.0, 0.0, 0.0)).x;
    let amax = top.x;
    let raw_max = top.z;
    let inv_t = select(0.0, 1.0 / p.temperature, p.temperature > 0.0);

    // The raw logits' sums for the statistics, and the total weight of the penalised ones.
    var sums = vec4<f32>(0.0);
    for (var i = lid; i < vocab; i += WG) {
        let z = logits[i];
        if (!is_number(z)) { continue; }
        let d = z - raw_max;
        let e = exp(d);
        sums += vec4<f32>(e, e * d, exp((penalised(i) - amax) * inv_t), 0.0);
    }
    let s = sum_of_all(lid, sums);

    var id = select(0u, u32(top.y), top.y >= 0.0);
    if (p.temperature > 0.0 && top.y >= 0.0 && is_finite(amax)) {
        // Kept: key > t, or key == t among the first `ties` such tokens in id order.
        var t = 0u;
        var ties = NONE;
        var total = s.z;
        let top_k_on = p.top_k > 0u && f32(p.top_k) < n_numbers;
        if (top_k_on) {
            let r = radix_select(lid, p.top_k);
            t = r.x;
            ties = r.y;
        }
        // Top-p's candidates: the tokens above `floor` (the top-k threshold, or the CAP-th
        // largest key when that is higher), gathered into workgroup memory with their weights,
        // so that its search runs there whenever they hold the mass it needs.
        var floor = t;
        if (p.top_p < 1.0 && (!top_k_on || p.top_k > CAP) && f32(CAP) < n_numbers) {
            floor = max(floor, radix_select(lid, CAP).x);
        }
        if (lid == 0u) { atomicStore(&n_candidates, 0u); }
        workgroupBarrier();
        var above = vec2<f32>(0.0);  // weight above floor, above t
        for (var i = lid; i < vocab; i += WG) {
            if (!is_number(logits[i])) { continue; }
            let a = penalised(i);
            let k = key_of(a);
            let w = exp((a - amax) * inv_t);
            if (k > t) { above.y += w; }
            if (k > floor) {
                above.x += w;
                let slot = atomicAdd(&n_candidates, 1u);
                if (slot < CAP) {
                    candidate_key[slot] = k;
                    candidate_w[slot] = w;
                }
            }
        }
        let mass_floor = sum_of_all(lid, vec4<f32>(above, 0.0, 0.0));
        if (top_k_on) {
            total = mass_floor.y + f32(ties) * exp((value_of(t) - amax) * inv_t);
        }
        if (p.top_p < 1.0) {
            // The largest key whose mass (kept weight at or above it) still reaches top_p of
            // the total; keys above the top-k threshold are all kept.
            let goal = p.top_p * total;
            var lo = t;
            var hi = key_of(amax);
            var mass_above = 0.0;
            if (mass_floor.x >= goal) {
                lo = floor + 1u;  // (floor < the best key: the mass above it is not empty)
            } else {
                hi = floor;
                mass_above = mass_floor.x;
            }
            // At most CAP candidates when the search is above floor (see above).
            let n_cand = min(atomicLoad(&n_candidates), CAP);
            while (lo < hi) {
                let mid = lo + (hi - lo + 1u) / 2u;
                var m = 0.0;
                if (lo > floor) {
                    for (var j = lid; j < n_cand; j += WG) {
                        if (candidate_key[j] >= mid) { m += candidate_w[j]; }
                    }
                } else {
                    for (var i = lid; i < vocab; i += WG) {
                        if (!is_number(logits[i])) { continue; }
                        let a = penalised(i);
                        if (key_of(a) >= mid) { m += exp((a - amax) * inv_t); }
                    }
                }
                let mass = sum_of_all(lid, vec4<f32>(m, 0.0, 0.0, 0.0)).x;
                if (mass >= goal) { lo = mid; } else { hi = mid - 1u; mass_above = mass; }
            }
            // The tied tokens at the threshold needed to reach the goal, at least one.
            let need = ceil((goal - mass_above) / exp((value_of(lo) - amax) * inv_t));
            var n = select(NONE, u32(max(need, 1.0)), need < 1e9);
            if (lo == t) { n = min(n, ties); }
            t = lo;
            ties = n;
        }

        // The inverse CDF in id order: each thread a contiguous chunk of ids.
        let chunk = (vocab + WG - 1u) / WG;
        let start = min(lid * chunk, vocab);
        let end = min(start + chunk, vocab);
        var tied = 0.0;
        for (var i = start; i < end; i++) {
            if (is_number(logits[i]) && key_of(penalised(i)) == t) { tied += 1.0; }
        }
        let tied_before = u32(prefix_sum(lid, tied) - tied);
        var rank = tied_before;
        var mass = 0.0;
        var last = -1.0;
        for (var i = start; i < end; i++) {
            let w = kept_weight(i, t, ties, &rank, amax, inv_t);
            if (w >= 0.0) {
                mass += w;
                last = f32(i);
            }
        }
        // Past every bucket (rounding): the last kept token, as the host sampler does.
        let last_kept = best_of_all(lid, vec4<f32>(last, last, 0.0, -1.0)).y;
        if (lid == 0u) { shared_u.x = u32(last_kept); }
        let upto = prefix_sum(lid, mass);
        var before = 0.0;
        if (lid > 0u) { before = red[lid - 1u].x; }
        let aim = uniforms[rows[2u * p.row + 1u] + 1u] * red[WG - 1u].x;
        if (before <= aim && aim < upto) {
            // This chunk holds the aim: walk it as the host sampler walks its candidates.
            var cumulative = before;
            var pick = u32(last);
            rank = tied_before;
            for (var i = start; i < end; i++) {
                let w = kept_weight(i, t, ties, &rank, amax, inv_t);
                if (w >= 0.0) {
                    cumulative += w;
                    if (aim < cumulative) { pick = i; break; }
                }
            }
            shared_u.x = pick;
        }
        id = workgroupUniformLoad(&shared_u).x;
    }

    if (lid == 0u) {
        let log_total = log(s.x);
        let lse = raw_max + log_total;
        let seq = rows[2u * p.row];
        let next = rows[2u * p.row + 1u] + 1u;
        ids[0] = id;
        rows[0] = seq;
        rows[1] = next;
        counts[id] = (counts[id] | 1u) + 2u;
        if (next < arrayLength(&out)) {
            out[next] = vec4<u32>(id, bitcast<u32>(logits[id] - lse), bitcast<u32>(log_total - s.y / s.x),
                                  bitcast<u32>(lse));
        }
    }
}
