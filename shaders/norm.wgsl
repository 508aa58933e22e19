// RMSNorm (Llama, Qwen2) or LayerNorm (GPT-2, with LAYER) over rows of width d.
// One workgroup per row; saves (mean, rstd) per row for the backward pass.
// Rows lie `heads` side by side from column `col` of token rows `stride` wide: dense rows
// have heads 1, stride d, col 0; Qwen3's per-head norms of q or k inside the fused QKV row
// have heads Hq (or Hkv), stride the QKV width.
// The scale is w + w_offset: w_offset 1 for Gemma's `(1 + w)` norms, else 0.
// ACC adds the result into `out` (Gemma's post-attention and post-MLP norms, whose output
// is added to the residual stream).

struct Params { n_rows: u32, d: u32, eps: f32, row_offset: u32, heads: u32, stride: u32, col: u32, w_offset: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;  // (mean, rstd) per row
#if LAYER
@group(0) @binding(5) var<storage, read> b: array<f32>;
#endif

const WG: u32 = 64u;
#include reduce

fn row_base(r: u32) -> u32 { return (r / p.heads) * p.stride + p.col + (r % p.heads) * p.d; }

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.n_rows) { return; }
    let lid = lid3.x;
    let base = row_base(r + p.row_offset);
    let out_base = row_base(r);
    let n = f32(p.d);
#if LAYER
    var s = 0.0;
    for (var i = lid; i < p.d; i += WG) { s += x[base + i]; }
    let mean = workgroup_sum(s, lid) / n;
#else
    let mean = 0.0;
#endif
    var sq = 0.0;
    for (var i = lid; i < p.d; i += WG) {
        let c = x[base + i] - mean;
        sq += c * c;
    }
    let rstd = 1.0 / sqrt(workgroup_sum(sq, lid) / n + p.eps);
    for (var i = lid; i < p.d; i += WG) {
        var v = (x[base + i] - mean) * rstd * (w[i] + p.w_offset);
#if LAYER
        v += b[i];
#endif
#if ACC
        out[out_base + i] += v;
#else
        out[out_base + i] = v;
#endif
    }
    if (lid == 0u) {
        stats[2u * r] = mean;
        stats[2u * r + 1u] = rstd;
    }
}
