// Latent convergence modulation (methods.md section 1) at one block's residual output.
// One workgroup per sequence scans that sequence's rows in order (a causal scan: prefill
// passes many rows, decode one; natively decode runs it in the down projection's last
// workgroup instead, matvec.wgsl's LCM), pulling each state toward its anchors and updating
// them (each row's step: lcm_step.wgsl):
//   s_k = 1 - cos(h, a_k),  g_k = gamma_k * sigmoid(kappa * (s_k - tau))
//   h'  = h - sum_k g_k (h - a_k),  then |h'| := |h|  (KEEP_NORM, or always when NORMALIZED)
//   a_k = rho_k a_k + (1 - rho_k) h'
// Positions below `sink` are left alone; position `sink` starts the anchors. With
// NORMALIZED everything acts on directions h / |h| and the result is rescaled to |h|.
// SAVE (training) also writes the anchors each row saw into `history`.

#include lcm_io

// 256 threads: the scan is sequential over rows, so each row's work must spread wide (with
// 64 threads a 512-token prefill spent ~2 ms per modulated layer on an H200).
const WG: u32 = 256u;

fn stream_get(at: u32) -> f32 { return x[at]; }
fn stream_set(at: u32, v: f32) { x[at] = v; }

#include lcm_step

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let seq = wid.x;
    let lid = lid3.x;
    let d = p.d;
    let settings = LcmSettings(d, p.n_scales, p.sink, p.tau, p.kappa, p.keep_norm, p.normalized);
    for (var r = 0u; r < p.n_rows; r++) {
        let row = lcm_row(lid, r);
        let pos = row.y;
        if (row.x != seq || pos < p.sink) { continue; }
#if SAVE
        if (pos != p.sink) {
            let a_base = seq * p.n_scales * d;
            for (var i = lid; i < d * p.n_scales; i += WG) { history[r * p.n_scales * d + i] = anchor[a_base + i]; }
        }
#endif
        lcm_step(lid, r * d, seq, pos, settings);
    }
}
