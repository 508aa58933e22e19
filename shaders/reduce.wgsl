// Workgroup reductions, pasted into the kernels that ask with `#include reduce`. The including
// shader defines WG, its workgroup size (a power of two); every thread of the workgroup must
// make the call, and every thread gets the result.

var<workgroup> red: array<f32, WG>;

fn workgroup_reduce(v: f32, lid: u32, is_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), is_max);
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn workgroup_sum(v: f32, lid: u32) -> f32 {
    return workgroup_reduce(v, lid, false);
}

fn workgroup_max(v: f32, lid: u32) -> f32 {
    return workgroup_reduce(v, lid, true);
}
