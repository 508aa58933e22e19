// One row's step of latent convergence modulation (methods.md section 1; the formulas are in
// lcm.wgsl), pasted by `#include lcm_step` into lcm.wgsl (a scan over a sequence's rows) and
// into matvec.wgsl's LCM epilogue (decode: the last workgroup of the down projection modulates
// the rows it finished, so LCM costs no dispatch of its own). The includer declares WG, its
// workgroup size (a power of two dividing LCM_LANES), the buffers `rows`, `anchor`, `scales` and
// `stats` as lcm.wgsl binds them, and `stream_get` / `stream_set`, its residual stream.
// Every sum is taken over LCM_LANES lanes, each thread standing for LCM_LANES / WG of them, and
// reduced by the same tree whatever WG is, so both kernels modulate a row bit for bit alike.

struct LcmSettings {
    d: u32, n_scales: u32, sink: u32, tau: f32, kappa: f32, keep_norm: u32, normalized: u32,
}

const LCM_LANES: u32 = 256u;
const LCM_MAX_SCALES: u32 = 4u;
// Up to three sums reduced at once: |h|^2 with (h.a_0, |a_0|^2), then (h.a_k, |a_k|^2) per scale.
var<workgroup> lcm_red: array<f32, 768>;  // 3 * LCM_LANES
var<workgroup> lcm_row_s: vec2<u32>;

// Sums `lcm_red[v * LCM_LANES + lane]` over the lanes for the first `n` values v; the results
// land in lcm_red[v * LCM_LANES].
fn lcm_reduce(lid: u32, n: u32) {
    workgroupBarrier();
    for (var s = LCM_LANES / 2u; s > 0u; s >>= 1u) {
        for (var lane = lid; lane < s; lane += WG) {
            for (var v = 0u; v < n; v++) { lcm_red[v * LCM_LANES + lane] += lcm_red[v * LCM_LANES + lane + s]; }
        }
        workgroupBarrier();
    }
}

// Row r's (sequence, position), uniform over the workgroup.
fn lcm_row(lid: u32, r: u32) -> vec2<u32> {
    if (lid == 0u) { lcm_row_s = vec2<u32>(rows[2u * r], rows[2u * r + 1u]); }
    return workgroupUniformLoad(&lcm_row_s);
}

// (h.a_k, |a_k|^2) of the row at `base`, lane by lane, into lcm_red[at ..] and lcm_red[at + LCM_LANES ..].
fn lcm_anchor_sums(lid: u32, base: u32, a_at: u32, d: u32, at: u32) {
    for (var lane = lid; lane < LCM_LANES; lane += WG) {
        var ha = 0.0;
        var aa = 0.0;
        for (var i = lane; i < d; i += LCM_LANES) {
            let a = anchor[a_at + i];
            ha += stream_get(base + i) * a;
            aa += a * a;
        }
        lcm_red[at + lane] = ha;
        lcm_red[at + LCM_LANES + lane] = aa;
    }
}

// Modulates the stream's row at `base`, sequence `seq`'s position `pos` (both uniform,
// pos >= sink), and updates that sequence's anchors and statistics. Element i is read and
// written by thread i % WG throughout, so the row needs no storage barrier between phases.
fn lcm_step(lid: u32, base: u32, seq: u32, pos: u32, s: LcmSettings) {
    let d = s.d;
    let a_base = seq * s.n_scales * d;
    for (var lane = lid; lane < LCM_LANES; lane += WG) {
        var hh = 0.0;
        for (var i = lane; i < d; i += LCM_LANES) { hh += stream_get(base + i) * stream_get(base + i); }
        lcm_red[lane] = hh;
    }
    if (pos == s.sink) {
        // The first position is never modulated; it starts every anchor.
        lcm_reduce(lid, 1u);
        let inv = select(1.0, 1.0 / max(sqrt(lcm_red[0]), 1e-30), s.normalized != 0u);
        for (var i = lid; i < d; i += WG) {
            for (var k = 0u; k < s.n_scales; k++) { anchor[a_base + k * d + i] = stream_get(base + i) * inv; }
        }
        workgroupBarrier();
        return;
    }
    var norm_h = 0.0;
    var v_scale = 1.0;
    var gates = array<f32, LCM_MAX_SCALES>();
    var gate_sum = 0.0;
    var div_sum = 0.0;
    for (var k = 0u; k < s.n_scales; k++) {
        // Scale 0's sums go next to |h|^2.
        let at = select(0u, LCM_LANES, k == 0u);
        if (k > 0u) { workgroupBarrier(); }  // the previous scale's results are read
        lcm_anchor_sums(lid, base, a_base + k * d, d, at);
        lcm_reduce(lid, select(2u, 3u, k == 0u));
        if (k == 0u) {
            norm_h = sqrt(lcm_red[0]);
            // In normalized space the working vector is the direction of h.
            v_scale = select(1.0, 1.0 / max(norm_h, 1e-30), s.normalized != 0u);
        }
        let ha = lcm_red[at] * v_scale;
        let norm_a = sqrt(lcm_red[at + LCM_LANES]);
        let norm_v = norm_h * v_scale;
        let div = 1.0 - ha / max(norm_v * norm_a, 1e-8);
        let g = scales[2u * k + 1u] / (1.0 + exp(-s.kappa * (div - s.tau)));
        gates[k] = g;
        gate_sum += g;
        div_sum += div;
    }
    workgroupBarrier();
    // Pull toward the anchors; keep the result in the stream for now and sum its squared norm.
    for (var lane = lid; lane < LCM_LANES; lane += WG) {
        var pp = 0.0;
        for (var i = lane; i < d; i += LCM_LANES) {
            let v = stream_get(base + i) * v_scale;
            var out = v;
            for (var k = 0u; k < s.n_scales; k++) { out -= gates[k] * (v - anchor[a_base + k * d + i]); }
            stream_set(base + i, out);
            pp += out * out;
        }
        lcm_red[lane] = pp;
    }
    lcm_reduce(lid, 1u);
    let norm_out = max(sqrt(lcm_red[0]), 1e-30);
    let rescale = select(1.0, norm_h / norm_out, s.keep_norm != 0u || s.normalized != 0u);
    // Anchors follow the modulated state (its direction in normalized space).
    let anchor_scale = select(rescale, 1.0 / norm_out, s.normalized != 0u);
    for (var i = lid; i < d; i += WG) {
        let out = stream_get(base + i);
        stream_set(base + i, out * rescale);
        for (var k = 0u; k < s.n_scales; k++) {
            let rho = scales[2u * k];
            let at = a_base + k * d + i;
            anchor[at] = rho * anchor[at] + (1.0 - rho) * out * anchor_scale;
        }
    }
    if (lid == 0u) {
        stats[4u * seq] += gate_sum;
        stats[4u * seq + 1u] += div_sum / f32(s.n_scales);
        stats[4u * seq + 2u] += 1.0;
    }
    workgroupBarrier();
}
