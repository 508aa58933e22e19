// A packed weight [n, k] (f16 or a ggml block format, shaders/wfmt.wgsl) written out as f32:
// fine-tuning starts from f32 copies of the weights a model keeps packed for inference.
// One thread per 4 consecutive elements of a row. The n rows from row0 of a packed shard go to
// out from vec4 out_off on (row shards of either, src/gpu/sharded.rs, need not line up).

struct Params { n: u32, k: u32, b_off: u32, b_cs: u32, row0: u32, out_off: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;  // [n, k]
#include wfmt

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let per_row = p.k / 4u;
    if (i >= p.n * per_row) { return; }
    out[p.out_off + i] = wload(p.row0 + i / per_row, i % per_row);
}
