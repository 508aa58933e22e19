// The LCM scans' reductions, pasted in by `#include lcm_reduce`: every thread of the workgroup
// calls `reduce(v, n)` together and gets the sums over the workgroup of the first `n` values of
// its `v`. The including kernel defines WG (its workgroup size, a power of two) and N_SUMS (the
// most values one call sums), takes an `Invocation` as its entry point's input and calls
// `start` on it first. (The workgroup id stays a parameter of its own: WebGPU's uniformity
// analysis counts anything computed from a struct holding the thread's index as non-uniform,
// and the scans branch on the sequence around their barriers.)

var<private> lid: u32;

// Where a thread is in its workgroup: its index, and with SUBGROUP its lane.
struct Invocation {
    @builtin(local_invocation_id) local: vec3<u32>,
#if SUBGROUP
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
#endif
}
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

// Sets the thread's indices from `at`.
fn start(at: Invocation) {
    lid = at.local.x;
    sg_lane = at.lane;
    sg_size = at.lanes;
    sg_id = at.subgroup;
    n_subgroups = at.subgroups;
}

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

// Sets the thread's index from `at`.
fn start(at: Invocation) {
    lid = at.local.x;
}

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
