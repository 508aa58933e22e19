// The bindings of the LCM forward kernels (lcm.wgsl for a row per sequence, lcm_scan.wgsl for
// longer scans), pasted in by `#include lcm_io`: one host-side binding list serves both.
struct Params {
    n_rows: u32, d: u32, n_scales: u32, sink: u32,
    tau: f32, kappa: f32, keep_norm: u32, normalized: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;      // [rows, d], modified in place
@group(0) @binding(2) var<storage, read> rows: array<u32>;         // (sequence, position) per row
@group(0) @binding(3) var<storage, read_write> anchor: array<f32>; // [seqs, n_scales, d]
@group(0) @binding(4) var<storage, read> scales: array<f32>;       // (rho, gamma) per scale
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;  // per sequence: sum gate, sum divergence, count, 0
#if SAVE
// Training: the anchors each row saw, for lcm_backward.wgsl.
@group(0) @binding(6) var<storage, read_write> history: array<f32>;  // [rows, n_scales, d]
#endif
