// Backward of the embedding: d_table[index(r)] += dy[r] * scale for every row r, where index(r) is
// the row's token id, or with POS its position (GPT-2's learned positions). One thread per
// column walks the rows in order, so rows sharing an index add up without atomics and the
// sum is the same on every run. d_table may be one row shard of the gradient
// (src/gpu/sharded.rs), rows first .. first + table_rows; other rows' indices are skipped.

struct Params { n_rows: u32, d: u32, first: u32, table_rows: u32, scale: f32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> index: array<u32>;  // ids, or with POS the row table
@group(0) @binding(2) var<storage, read> dy: array<f32>;     // [n_rows, d]
@group(0) @binding(3) var<storage, read_write> d_table: array<f32>;  // [table_rows, d]

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.d) { return; }
    for (var r = 0u; r < p.n_rows; r++) {
#if POS
        let at = index[2u * r + 1u];
#else
        let at = index[r];
#endif
        if (at >= p.first && at - p.first < p.table_rows) {
            d_table[(at - p.first) * p.d + i] += dy[r * p.d + i] * p.scale;
        }
    }
}
