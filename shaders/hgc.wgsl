// Hierarchical gradient constriction (methods.md section 2) over one weight kind's gradients
// G[l] (a range of rows of a block's fused weight gradient, contiguous in memory):
//   DIST:   dist[3 s] = (|G[l] - G[l-1]|^2, |G[l]|^2, |G[l-1]|^2), one workgroup per (kind, l);
//   LAMBDA: lambda[s] = 1 / (1 + alpha (1 + slope l / L) D), D the plain or normalized
//           distance, lambda = 1 for block 0; one thread per (kind, l);
//   MIX:    G[l] := lambda ((1 - mu) G[l] + mu G[l-1]), run from the top block down so that
//           G[l-1] is still the raw gradient when block l reads it.
// `s = kind * L + l` indexes the (kind, block) pairs.

struct Params {
    offset: u32, len: u32, slot: u32, n_layers: u32,
    n_slots: u32, alpha: f32, slope: f32, mu: f32,
    normalized: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
const WG: u32 = 256u;

#if DIST
@group(0) @binding(1) var<storage, read> g_hi: array<f32>;
@group(0) @binding(2) var<storage, read> g_lo: array<f32>;
@group(0) @binding(3) var<storage, read_write> dist: array<f32>;
#include reduce

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var dd = 0.0;
    var hh = 0.0;
    var ll = 0.0;
    for (var i = lid; i < p.len; i += WG) {
        let a = g_hi[p.offset + i];
        let b = g_lo[p.offset + i];
        dd += (a - b) * (a - b);
        hh += a * a;
        ll += b * b;
    }
    let total_d = workgroup_sum(dd, lid);
    let total_h = workgroup_sum(hh, lid);
    let total_l = workgroup_sum(ll, lid);
    if (lid == 0u) {
        dist[3u * p.slot] = total_d;
        dist[3u * p.slot + 1u] = total_h;
        dist[3u * p.slot + 2u] = total_l;
    }
}
#endif

#if LAMBDA
@group(0) @binding(1) var<storage, read> dist: array<f32>;
@group(0) @binding(2) var<storage, read_write> lambda: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    if (s >= p.n_slots) { return; }
    let l = s % p.n_layers;
    if (l == 0u) {
        lambda[s] = 1.0;
        return;
    }
    var d = dist[3u * s];
    if (p.normalized != 0u) {
        d = d / (sqrt(dist[3u * s + 1u]) * sqrt(dist[3u * s + 2u]) + 1e-12);
    }
    let alpha = p.alpha * (1.0 + p.slope * f32(l) / f32(p.n_layers));
    lambda[s] = 1.0 / (1.0 + alpha * d);
}
#endif

#if MIX
@group(0) @binding(1) var<storage, read_write> g_hi: array<f32>;
@group(0) @binding(2) var<storage, read> g_lo: array<f32>;
@group(0) @binding(3) var<storage, read> lambda: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.len) { return; }
    let at = p.offset + i;
    g_hi[at] = lambda[p.slot] * ((1.0 - p.mu) * g_hi[at] + p.mu * g_lo[at]);
}
#endif
