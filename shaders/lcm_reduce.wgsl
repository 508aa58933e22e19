// The LCM scans' reductions, pasted in by `#include lcm_reduce`: every thread of the workgroup
// calls `reduce(v, n)` together and gets the sums over the workgroup of the first `n` values of
// its `v`. The including kernel defines WG (its workgroup size, a power of two), N_SUMS (the
// most values one call sums) and the private `lid`, and with SUBGROUP sets `sg_lane`, `sg_size`,
// `sg_id` and `n_subgroups` from the built-ins as it starts.
#if SUBGROUP
// Each subgroup sums its lanes with subgroupAdd and its first lane leaves the sum in `part`;
// after one barrier every subgroup adds those up. Subgroups have at least 4 lanes (the host
// checks), and consecutive calls use alternate halves of `part`, so a call never waits for the
// readers of the one before: one barrier per reduction.
const MAX_SUBGROUPS: u32 = WG / 4u;
var<workgroup> part: array<f32, 2u * N_SUMS * MAX_SUBGROUPS>;
var<private> sg_lane: u32;
var<private> sg_size: u32;
var<private> sg_id: u32;
var<private> n_subgroups: u32;
var<private> half: u32;

fn reduce(v: array<f32, N_SUMS>, n: u32) -> array<f32, N_SUMS> {
    let at = half * N_SUMS * MAX_SUBGROUPS;
    half ^= 1u;
    for (var k = 0u; k < n; k++) {
        let s = subgroupAdd(v[k]);
        if (sg_lane == 0u) { part[at + k * MAX_SUBGROUPS + sg_id] = s; }
    }
    workgroupBarrier();
    var total = array<f32, N_SUMS>();
    for (var k = 0u; k < n; k++) {
        var t = 0.0;
        for (var j = sg_lane; j < n_subgroups; j += sg_size) { t += part[at + k * MAX_SUBGROUPS + j]; }
        total[k] = subgroupAdd(t);
    }
    return total;
}
#else
// The portable tree (the page, adapters without subgroups): log2(WG) halving steps.
var<workgroup> red: array<f32, N_SUMS * WG>;

fn reduce(v: array<f32, N_SUMS>, n: u32) -> array<f32, N_SUMS> {
    workgroupBarrier();  // every thread has read the last call's sums
    for (var k = 0u; k < n; k++) { red[k * WG + lid] = v[k]; }
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lid < s) {
            for (var k = 0u; k < n; k++) { red[k * WG + lid] += red[k * WG + lid + s]; }
        }
    }
    workgroupBarrier();
    var total = array<f32, N_SUMS>();
    for (var k = 0u; k < n; k++) { total[k] = red[k * WG]; }
    return total;
}
#endif
