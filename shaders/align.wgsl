// The alignment loss (methods.md section 2, eq. 3) at one block output h[l], from the RMS-
// normalised outputs n[l-1], n[l], n[l+1] of adjacent blocks: one workgroup per row adds
//   loss[r] += c · |n[l] - n[l-1]|²                     (HAS_LO: the pair (l, l-1))
// and writes the gradient at n[l]:
//   g = 2c (n[l] - n[l-1]) [HAS_LO] - 2c (n[l+1] - n[l]) [HAS_HI],
// which norm_backward then carries back through the normalisation to h[l].

struct Params { n_rows: u32, d: u32, coef: f32, flags: u32 }  // flags: 1 HAS_LO, 2 HAS_HI

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> n_lo: array<f32>;
@group(0) @binding(2) var<storage, read> n_mid: array<f32>;
@group(0) @binding(3) var<storage, read> n_hi: array<f32>;
@group(0) @binding(4) var<storage, read_write> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;

const WG: u32 = 64u;
#include reduce

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.n_rows) { return; }
    let lid = lid3.x;
    let has_lo = (p.flags & 1u) != 0u;
    let has_hi = (p.flags & 2u) != 0u;
    var sq = 0.0;
    for (var i = lid; i < p.d; i += WG) {
        let at = r * p.d + i;
        let below = select(0.0, n_mid[at] - n_lo[at], has_lo);
        let above = select(0.0, n_hi[at] - n_mid[at], has_hi);
        sq += below * below;
        g[at] = 2.0 * p.coef * (below - above);
    }
    let total = workgroup_sum(sq, lid);
    if (lid == 0u) { loss[r] += p.coef * total; }
}
