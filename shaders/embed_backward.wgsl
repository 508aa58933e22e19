// Backward of the embedding: d_table[at] += scale * (sum of dy[r] over the rows r whose index
// is at), where a row's index is its token id, or with POS its position (GPT-2's learned
// positions). Parallel over rows, without float atomics, and the same bits on every run:
//   SORT:  order[2 s], order[2 s + 1] = (row, index) of the s-th row of the rows sorted by
//          index, ties in row order: each row counts the rows that come before it (O(rows²)
//          integer comparisons, spread over 16 threads a row);
//   HEADS: heads[c, i] = sum of dy[., i] over the sorted rows that open chunk c (CHUNK sorted
//          rows) with the index of the chunk before's last row: the part of a run of an index
//          that started in an earlier chunk; one thread per (column, chunk);
//   SUM:   each run starting in chunk c sums its rows there, then the heads of the chunks it
//          goes on into, and adds once into d_table; one thread per (column, chunk).
// So no thread sums more than CHUNK rows plus one head per chunk, however often an index
// repeats. d_table may be one row shard of the gradient (src/gpu/sharded.rs), rows first ..
// first + table_rows; SUM skips other indices.

struct Params { n_rows: u32, d: u32, first: u32, table_rows: u32, scale: f32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
const CHUNK: u32 = 64u;

#if SORT
@group(0) @binding(1) var<storage, read> index: array<u32>;  // ids, or with POS the row table
@group(0) @binding(2) var<storage, read_write> order: array<u32>;  // [n_rows, 2]

fn index_of(r: u32) -> u32 {
#if POS
    return index[2u * r + 1u];
#else
    return index[r];
#endif
}

// A workgroup ranks SORT_ROWS rows, each split over SORT_PARTS threads that count every
// SORT_PARTS-th row (integer counts: any order gives the same sum).
const SORT_ROWS: u32 = 16u;
const SORT_PARTS: u32 = 16u;
var<workgroup> counts: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % SORT_ROWS;
    let part = lid / SORT_ROWS;
    let r = (wid.x + wid.y * nwg.x) * SORT_ROWS + lane;
    var rank = 0u;
    var at = 0u;
    if (r < p.n_rows) {
        at = index_of(r);
        for (var j = part; j < p.n_rows; j += SORT_PARTS) {
            let other = index_of(j);
            rank += u32(other < at || (other == at && j < r));
        }
    }
    counts[lid] = rank;
    workgroupBarrier();
    if (part == 0u && r < p.n_rows) {
        for (var q = 1u; q < SORT_PARTS; q++) {
            rank += counts[q * SORT_ROWS + lane];
        }
        order[2u * rank] = r;
        order[2u * rank + 1u] = at;
    }
}
#else
@group(0) @binding(1) var<storage, read> order: array<u32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;  // [n_rows, d]

// The first sorted row from `begin` (before `limit`) whose index is not `at`.
fn run_end(begin: u32, limit: u32, at: u32) -> u32 {
    var s = begin;
    while (s < limit && order[2u * s + 1u] == at) { s++; }
    return s;
}

// Column i of dy summed over the sorted rows begin .. limit, in order.
fn rows_sum(begin: u32, limit: u32, i: u32) -> f32 {
    var sum = 0.0;
    for (var s = begin; s < limit; s++) {
        sum += dy[order[2u * s] * p.d + i];
    }
    return sum;
}

// Whether the sorted row `s` (> 0) has the index of the row before it.
fn continues_run(s: u32) -> bool {
    return order[2u * s + 1u] == order[2u * s - 1u];
}
#endif

#if HEADS
@group(0) @binding(3) var<storage, read_write> heads: array<f32>;  // [chunks, d]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = wid.x * 64u + lid.x;
    let c = wid.y + 1u;  // chunk 0 continues no run
    let start = c * CHUNK;
    if (i >= p.d || start >= p.n_rows || !continues_run(start)) { return; }
    let end = run_end(start, min(start + CHUNK, p.n_rows), order[2u * start + 1u]);
    heads[c * p.d + i] = rows_sum(start, end, i);
}
#endif

#if SUM
@group(0) @binding(3) var<storage, read> heads: array<f32>;
@group(0) @binding(4) var<storage, read_write> d_table: array<f32>;  // [table_rows, d]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = wid.x * 64u + lid.x;
    let c = wid.y;
    let start = c * CHUNK;
    if (i >= p.d || start >= p.n_rows) { return; }
    let end = min(start + CHUNK, p.n_rows);
    var s = start;
    // A run going on from the chunk before is summed by the chunk it started in.
    if (c > 0u && continues_run(start)) {
        s = run_end(start, end, order[2u * start + 1u]);
    }
    while (s < end) {
        let at = order[2u * s + 1u];
        let stop = run_end(s, end, at);
        if (at >= p.first && at - p.first < p.table_rows) {
            var sum = rows_sum(s, stop, i);
            if (stop == end) {
                // The chunks after that open with this index hold the rest of the run.
                for (var next = end; next < p.n_rows && order[2u * next + 1u] == at; next += CHUNK) {
                    sum += heads[next / CHUNK * p.d + i];
                }
            }
            d_table[(at - p.first) * p.d + i] += sum * p.scale;
        }
        s = stop;
    }
}
#endif
