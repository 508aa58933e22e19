// Backward of RMSNorm / LayerNorm (LAYER), from the (mean, rstd) the forward pass saved.
// Default entry: the input gradient, one workgroup per row,
//   g = dy * (w + w_offset),  xhat = (x - mean) * rstd,
//   dx = rstd * (g - mean(g) [LayerNorm only] - xhat * mean(g * xhat)),
// added to dx with ACC (the residual stream's gradient is already there).
// The parameter gradients, dw += sum_r dy * xhat and db += sum_r dy, take two passes so that
// every GPU core has work (one thread per column walking every row left most of them idle):
// WEIGHTS sums each group of ROWS rows per column, one workgroup per (64 columns, group), into
// `part`; SUM adds the groups' sums per column into dw and db.
// Rows lie as in norm.wgsl (`heads` side by side from column `col` of token rows `stride`
// wide), in x (from row x_offset on), dy and dx alike.

// w_offset is 1 for Gemma's `(1 + w)` norms (whose weight gradient is the same), else 0.

struct Params { n_rows: u32, d: u32, x_offset: u32, heads: u32, stride: u32, col: u32, w_offset: f32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
const ROWS: u32 = 64u;
fn row_groups() -> u32 { return (p.n_rows + ROWS - 1u) / ROWS; }

#if SUM
@group(0) @binding(1) var<storage, read> part: array<f32>;  // [row groups, d] of dw's sums, then db's
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;
#if LAYER
@group(0) @binding(3) var<storage, read_write> db: array<f32>;
#endif

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.d) { return; }
    var sw = 0.0;
    var sb = 0.0;
    for (var g = 0u; g < row_groups(); g++) {
        sw += part[g * p.d + i];
#if LAYER
        sb += part[(row_groups() + g) * p.d + i];
#endif
    }
    dw[i] += sw;
#if LAYER
    db[i] += sb;
#endif
}
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;      // rows x_offset .. x_offset + n_rows
@group(0) @binding(2) var<storage, read> stats: array<f32>;  // (mean, rstd) per row
@group(0) @binding(3) var<storage, read> dy: array<f32>;     // [n_rows, d]

fn row_base(r: u32) -> u32 { return (r / p.heads) * p.stride + p.col + (r % p.heads) * p.d; }
#if WEIGHTS
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.d) { return; }
    var sw = 0.0;
    var sb = 0.0;
    for (var r = wid.y * ROWS; r < min(p.n_rows, (wid.y + 1u) * ROWS); r++) {
        let g = dy[row_base(r) + i];
        let xhat = (x[row_base(r + p.x_offset) + i] - stats[2u * r]) * stats[2u * r + 1u];
        sw += g * xhat;
        sb += g;
    }
    part[wid.y * p.d + i] = sw;
#if LAYER
    part[(row_groups() + wid.y) * p.d + i] = sb;
#endif
}
#else
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;  // [n_rows, d]

const WG: u32 = 64u;
#include reduce

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.n_rows) { return; }
    let lid = lid3.x;
    let xb = row_base(r + p.x_offset);
    let yb = row_base(r);
    let mean = stats[2u * r];
    let rstd = stats[2u * r + 1u];
    var sg = 0.0;
    var sgx = 0.0;
    for (var i = lid; i < p.d; i += WG) {
        let g = dy[yb + i] * (w[i] + p.w_offset);
        sg += g;
        sgx += g * (x[xb + i] - mean) * rstd;
    }
    let n = f32(p.d);
#if LAYER
    let mean_g = workgroup_sum(sg, lid) / n;
#else
    let mean_g = 0.0;
#endif
    let mean_gx = workgroup_sum(sgx, lid) / n;
    for (var i = lid; i < p.d; i += WG) {
        let g = dy[yb + i] * (w[i] + p.w_offset);
        let xhat = (x[xb + i] - mean) * rstd;
        let v = rstd * (g - mean_g - xhat * mean_gx);
#if ACC
        dx[yb + i] += v;
#else
        dx[yb + i] = v;
#endif
    }
}
#endif
#endif
