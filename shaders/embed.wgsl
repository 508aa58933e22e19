// Token embedding: out[r] = table[ids[r]] * scale (+ pos_table[position of row r] for
// learned positions, GPT-2). scale is 1, or Gemma's sqrt(hidden). One workgroup per row.
// The table is one row shard of the embedding (src/gpu/sharded.rs): rows first .. first +
// rows; rows whose id lies elsewhere are left to the other shards' dispatches.

struct Params { n_rows: u32, d: u32, first: u32, rows: u32, scale: f32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#if POS
@group(0) @binding(4) var<storage, read> rows: array<u32>;  // (sequence, position) per row
@group(0) @binding(5) var<storage, read> pos_table: array<f32>;
#endif

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.n_rows) { return; }
    // Ids are validated on the host; the bounds check also keeps a bad one in bounds.
    let id = ids[r] - p.first;
    if (ids[r] < p.first || id >= p.rows) { return; }
    for (var i = lid.x; i < p.d; i += 64u) {
        var v = table[id * p.d + i] * p.scale;
#if POS
        v += pos_table[rows[2u * r + 1u] * p.d + i];
#endif
        out[r * p.d + i] = v;
    }
}
