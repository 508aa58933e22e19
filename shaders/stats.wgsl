// Log-softmax statistics of logit rows: log-sum-exp, entropy (nats), the log-probability of
// a target token (when given) and the argmax. Two passes, so that one long row (a decode
// step's 49k-entry vocabulary) spreads over many workgroups instead of one:
// - SPLIT: workgroup (row, part) reduces its slice of the row to a partial
//   (max m, argmax, s = Σ exp(z - m), t = Σ exp(z - m)·(z - m));
// - COMBINE: one workgroup per row merges the row's partials and writes the statistics.
// The partials and their merge are logit_merge.wgsl's.
// PICK (a COMBINE variant): greedy decoding's pick from row 0, as sampler::argmax makes it; it
// feeds the pick to the next step (ids[0], and row 0 of the row table at the next position)
// and writes [id, log-prob, entropy, lse] into `out` at that position. Natively the LM head's
// last workgroups make the same pick instead (matvec.wgsl with PICK).

struct Params { n_rows: u32, vocab: u32, parts: u32, row: u32 }

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
fn logit(at: u32) -> f32 { return logits[at]; }
#include logit_merge

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
    let total = span_partial(r * p.vocab, start, min(start + len, p.vocab), lid);
    if (lid == 0u) { partials[idx] = to_vec4(total); }
#else
    if (idx >= p.n_rows) { return; }
    let r = idx;
    let total = merge_partials(r * p.parts, p.parts, lid);
#if PICK
    if (lid == 0u) { write_pick(total, p.vocab, p.row); }
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
