// Latent convergence modulation (methods.md section 1) at one block's residual output.
// One workgroup per sequence scans that sequence's rows in order (a causal scan: prefill
// passes many rows, decode one), pulling each state toward its anchors and updating them:
//   s_k = 1 - cos(h, a_k),  g_k = gamma_k * sigmoid(kappa * (s_k - tau))
//   h'  = h - sum_k g_k (h - a_k),  then |h'| := |h|  (KEEP_NORM, or always when NORMALIZED)
//   a_k = rho_k a_k + (1 - rho_k) h'
// Positions below `sink` are left alone; position `sink` starts the anchors. With
// NORMALIZED everything acts on directions h / |h| and the result is rescaled to |h|.
// SAVE (training) also writes the anchors each row saw into `history`.

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

// 256 threads: the scan is sequential over rows, so each row's work must spread wide (with
// 64 threads a 512-token prefill spent ~2 ms per modulated layer on an H200).
const WG: u32 = 256u;
const MAX_SCALES: u32 = 4u;
const N_SUMS: u32 = 1u + 2u * MAX_SCALES;  // |h|^2, then (h.a_k, |a_k|^2) per scale
var<workgroup> red: array<f32, 2304>;      // N_SUMS * WG
var<workgroup> row_seq: u32;
var<workgroup> row_pos: u32;

// Sums `red[v * WG + lid]` over lid for the first `n` values v; the results land in red[v * WG].
fn reduce(lid: u32, n: u32) {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            for (var v = 0u; v < n; v++) { red[v * WG + lid] += red[v * WG + lid + s]; }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let seq = wid.x;
    let lid = lid3.x;
    let d = p.d;
    let a_base = seq * p.n_scales * d;
    for (var r = 0u; r < p.n_rows; r++) {
        if (lid == 0u) {
            row_seq = rows[2u * r];
            row_pos = rows[2u * r + 1u];
        }
        let this_seq = workgroupUniformLoad(&row_seq);
        let pos = workgroupUniformLoad(&row_pos);
        if (this_seq != seq || pos < p.sink) { continue; }
        let base = r * d;
        var hh = 0.0;
        for (var i = lid; i < d; i += WG) { hh += x[base + i] * x[base + i]; }
        if (pos == p.sink) {
            // The first position is never modulated; it starts every anchor.
            red[lid] = hh;
            reduce(lid, 1u);
            let inv = select(1.0, 1.0 / max(sqrt(red[0]), 1e-30), p.normalized != 0u);
            for (var i = lid; i < d; i += WG) {
                for (var k = 0u; k < p.n_scales; k++) { anchor[a_base + k * d + i] = x[base + i] * inv; }
            }
            workgroupBarrier();
            continue;
        }
#if SAVE
        for (var i = lid; i < d * p.n_scales; i += WG) { history[r * p.n_scales * d + i] = anchor[a_base + i]; }
#endif
        red[lid] = hh;
        for (var k = 0u; k < p.n_scales; k++) {
            var ha = 0.0;
            var aa = 0.0;
            for (var i = lid; i < d; i += WG) {
                let a = anchor[a_base + k * d + i];
                ha += x[base + i] * a;
                aa += a * a;
            }
            red[(1u + 2u * k) * WG + lid] = ha;
            red[(2u + 2u * k) * WG + lid] = aa;
        }
        reduce(lid, 1u + 2u * p.n_scales);
        let norm_h = sqrt(red[0]);
        // In normalized space the working vector is the direction of h.
        let v_scale = select(1.0, 1.0 / max(norm_h, 1e-30), p.normalized != 0u);
        var gates = array<f32, MAX_SCALES>();
        var gate_sum = 0.0;
        var div_sum = 0.0;
        for (var k = 0u; k < p.n_scales; k++) {
            let ha = red[(1u + 2u * k) * WG] * v_scale;
            let norm_a = sqrt(red[(2u + 2u * k) * WG]);
            let norm_v = norm_h * v_scale;
            let s = 1.0 - ha / max(norm_v * norm_a, 1e-8);
            let g = scales[2u * k + 1u] / (1.0 + exp(-p.kappa * (s - p.tau)));
            gates[k] = g;
            gate_sum += g;
            div_sum += s;
        }
        workgroupBarrier();
        // Pull toward the anchors; keep the result in x for now and sum its squared norm.
        var pp = 0.0;
        for (var i = lid; i < d; i += WG) {
            let v = x[base + i] * v_scale;
            var out = v;
            for (var k = 0u; k < p.n_scales; k++) { out -= gates[k] * (v - anchor[a_base + k * d + i]); }
            x[base + i] = out;
            pp += out * out;
        }
        red[lid] = pp;
        reduce(lid, 1u);
        let norm_out = max(sqrt(red[0]), 1e-30);
        let rescale = select(1.0, norm_h / norm_out, p.keep_norm != 0u || p.normalized != 0u);
        // Anchors follow the modulated state (its direction in normalized space).
        let anchor_scale = select(rescale, 1.0 / norm_out, p.normalized != 0u);
        for (var i = lid; i < d; i += WG) {
            let out = x[base + i];
            x[base + i] = out * rescale;
            for (var k = 0u; k < p.n_scales; k++) {
                let rho = scales[2u * k];
                let at = a_base + k * d + i;
                anchor[at] = rho * anchor[at] + (1.0 - rho) * out * anchor_scale;
            }
        }
        if (lid == 0u) {
            stats[4u * seq] += gate_sum;
            stats[4u * seq + 1u] += div_sum / f32(p.n_scales);
            stats[4u * seq + 2u] += 1.0;
        }
        workgroupBarrier();
    }
}
