// Backward of RMSNorm / LayerNorm (LAYER), from the (mean, rstd) the forward pass saved.
// Default entry: the input gradient, one workgroup per row,
//   g = dy * (w + w_offset),  xhat = (x - mean) * rstd,
//   dx = rstd * (g - mean(g) [LayerNorm only] - xhat * mean(g * xhat)),
// added to dx with ACC (the residual stream's gradient is already there).
// WEIGHTS: the parameter gradients instead, one thread per column summing over rows:
//   dw += sum_r dy * xhat,  db += sum_r dy.
// Rows lie as in norm.wgsl (`heads` side by side from column `col` of token rows `stride`
// wide), in x (from row x_offset on), dy and dx alike.

// w_offset is 1 for Gemma's `(1 + w)` norms (whose weight gradient is the same), else 0.

struct Params { n_rows: u32, d: u32, x_offset: u32, heads: u32, stride: u32, col: u32, w_offset: f32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;      // rows x_offset .. x_offset + n_rows
@group(0) @binding(2) var<storage, read> stats: array<f32>;  // (mean, rstd) per row
@group(0) @binding(3) var<storage, read> dy: array<f32>;     // [n_rows, d]

fn row_base(r: u32) -> u32 { return (r / p.heads) * p.stride + p.col + (r % p.heads) * p.d; }
#if WEIGHTS
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;
#if LAYER
@group(0) @binding(5) var<storage, read_write> db: array<f32>;
#endif

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.d) { return; }
    var sw = 0.0;
    var sb = 0.0;
    for (var r = 0u; r < p.n_rows; r++) {
        let g = dy[row_base(r) + i];
        let xhat = (x[row_base(r + p.x_offset) + i] - stats[2u * r]) * stats[2u * r + 1u];
        sw += g * xhat;
        sb += g;
    }
    dw[i] += sw;
#if LAYER
    db[i] += sb;
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
