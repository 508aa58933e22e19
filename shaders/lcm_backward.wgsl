// Backward of lcm_scan.wgsl (and lcm.wgsl): the reverse scan. One workgroup per sequence walks
// that sequence's rows from the last to `sink`, turning dy (the gradient at the modulated
// states, in place) into the gradient at the states before modulation, and carrying the
// gradient of each anchor (`d_anchor`, zero before the call) from later positions to earlier
// ones. It reads the
// unmodulated states `h` and the anchors each row saw (`history`, which lcm_scan.wgsl writes with
// SAVE). Per row, with v = h (or h / |h| with NORMALIZED), u = out / |out|,
// G = sum_k (1 - rho_k) dA_k (what the anchors' update sends back):
//   y = out (plain), |h| u (KEEP_NORM or NORMALIZED); the anchors take y, or u (NORMALIZED);
//   gout from (dy, G) through that map; gv = (1 - sum g) gout + sum_k gc_k dcos_k/dv,
//   dA_k := rho_k dA_k + g_k gout + gc_k dcos_k/da_k,  gc_k = -gout.(a_k - v) g_k'(s_k).
// cpu::lcm::lcm_scan_backward is the same computation in plain loops.

struct Params {
    n_rows: u32, d: u32, n_scales: u32, sink: u32,
    tau: f32, kappa: f32, keep_norm: u32, normalized: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;            // [rows, d] before modulation
@group(0) @binding(2) var<storage, read> rows: array<u32>;         // (sequence, position) per row
@group(0) @binding(3) var<storage, read> history: array<f32>;      // [rows, n_scales, d]
@group(0) @binding(4) var<storage, read> scales: array<f32>;       // (rho, gamma) per scale
@group(0) @binding(5) var<storage, read_write> dy: array<f32>;     // [rows, d], in place
@group(0) @binding(6) var<storage, read_write> d_anchor: array<f32>;  // [seqs, n_scales, d]

// Each row's chain as in lcm_scan.wgsl: reductions through lcm_reduce.wgsl (subgroup sums and one
// barrier each with SUBGROUP) and no other barrier, a thread always handling hidden indices
// lid + j WG, j < PER; with PER each thread keeps its slice of d_anchor in registers across
// rows. Per row: 1 + 2 SCALES sums (the gates), then 3 + 3 SCALES, then with NORMALIZED one.
const N_SUMS: u32 = 3u + 3u * SCALES;
#include lcm_reduce

#if PER
var<private> d_anchor_slice: array<f32, SCALES * PER>;  // dA_k[lid + j WG] at k PER + j

fn d_anchor_at(k: u32, j: u32) -> f32 { return d_anchor_slice[k * PER + j]; }
fn set_d_anchor(k: u32, j: u32, v: f32) { d_anchor_slice[k * PER + j] = v; }
#else
var<private> da_base: u32;

fn d_anchor_at(k: u32, j: u32) -> f32 { return d_anchor[da_base + k * p.d + lid + j * WG]; }
fn set_d_anchor(k: u32, j: u32, v: f32) { d_anchor[da_base + k * p.d + lid + j * WG] = v; }
#endif

// The forward's modulated value at index `at` of the history row (x) and what the anchors'
// update sends back to it, G = sum_k (1 - rho_k) dA_k (y), for gates `g` and slice index `j`.
fn modulated_and_g(v: f32, g: array<f32, SCALES>, at: u32, j: u32) -> vec2<f32> {
    var out = v;
    var big_g = 0.0;
    for (var k = 0u; k < SCALES; k++) {
        out -= g[k] * (v - history[at + k * p.d]);
        big_g += (1.0 - scales[2u * k]) * d_anchor_at(k, j);
    }
    return vec2<f32>(out, big_g);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, at: Invocation) {
    let seq = wid.x;
    start(at);
    let d = p.d;
    let ks = SCALES;
    let seq_base = seq * ks * d;
    let normalized = p.normalized != 0u;
#if PER
    let per = PER;
    for (var k = 0u; k < ks; k++) {
        for (var j = 0u; j < PER; j++) {
            let i = lid + j * WG;
            if (i < d) { set_d_anchor(k, j, d_anchor[seq_base + k * d + i]); }
        }
    }
#else
    let per = (d + WG - 1u) / WG;
    da_base = seq_base;
#endif
    for (var rr = 0u; rr < p.n_rows; rr++) {
        let r = p.n_rows - 1u - rr;
        let pos = rows[2u * r + 1u];
        if (rows[2u * r] != seq || pos < p.sink) { continue; }
        let base = r * d;
        if (pos == p.sink) {
            // y = h and every anchor starts at v: the anchors' gradients land here.
            var sums = array<f32, N_SUMS>();
            for (var j = 0u; j < per; j++) {
                let i = lid + j * WG;
                if (i < d) {
                    var s = 0.0;
                    for (var k = 0u; k < ks; k++) { s += d_anchor_at(k, j); }
                    sums[0] += h[base + i] * h[base + i];
                    sums[1] += h[base + i] * s;
                }
            }
            sums = reduce(sums, 2u);
            let nh = sqrt(sums[0]);
            let vs = sums[1] / nh;  // v . S when normalized
            for (var j = 0u; j < per; j++) {
                let i = lid + j * WG;
                if (i < d) {
                    var s = 0.0;
                    for (var k = 0u; k < ks; k++) {
                        s += d_anchor_at(k, j);
                        set_d_anchor(k, j, 0.0);
                    }
                    if (normalized) {
                        dy[base + i] += (s - h[base + i] / nh * vs) / nh;
                    } else {
                        dy[base + i] += s;
                    }
                }
            }
            continue;
        }
        let hist = r * ks * d;
        // Phase 1: |h|, h . a_k, |a_k|: the gates, as the forward pass computed them.
        var sums = array<f32, N_SUMS>();
        for (var j = 0u; j < per; j++) {
            let i = lid + j * WG;
            if (i < d) {
                sums[0] += h[base + i] * h[base + i];
                for (var k = 0u; k < ks; k++) {
                    let a = history[hist + k * d + i];
                    sums[1u + 2u * k] += h[base + i] * a;
                    sums[2u + 2u * k] += a * a;
                }
            }
        }
        sums = reduce(sums, 1u + 2u * ks);
        let nh = sqrt(sums[0]);
        let v_scale = select(1.0, 1.0 / nh, normalized);
        let nv = nh * v_scale;
        var g = array<f32, SCALES>();
        var c = array<f32, SCALES>();
        var na = array<f32, SCALES>();
        var dg_ds = array<f32, SCALES>();
        var gate_sum = 0.0;
        for (var k = 0u; k < ks; k++) {
            na[k] = sqrt(sums[2u + 2u * k]);
            c[k] = sums[1u + 2u * k] * v_scale / (nv * na[k]);
            let sig = 1.0 / (1.0 + exp(-p.kappa * (1.0 - c[k] - p.tau)));
            g[k] = scales[2u * k + 1u] * sig;
            dg_ds[k] = scales[2u * k + 1u] * p.kappa * sig * (1.0 - sig);
            gate_sum += g[k];
        }
        // Phase 2: |out|, out . dy, out . G, and (dy, G, out) . (a_k - v).
        sums = array<f32, N_SUMS>();
        for (var j = 0u; j < per; j++) {
            let i = lid + j * WG;
            if (i < d) {
                let v = h[base + i] * v_scale;
                let og = modulated_and_g(v, g, hist + i, j);
                let out = og.x;
                let big_g = og.y;
                let gy = dy[base + i];
                sums[0] += out * out;
                sums[1] += out * gy;
                sums[2] += out * big_g;
                for (var k = 0u; k < ks; k++) {
                    let diff = history[hist + k * d + i] - v;
                    sums[3u + 3u * k] += gy * diff;
                    sums[4u + 3u * k] += big_g * diff;
                    sums[5u + 3u * k] += out * diff;
                }
            }
        }
        sums = reduce(sums, N_SUMS);
        let no = sqrt(sums[0]);
        let u_gy = sums[1] / no;
        let u_g = sums[2] / no;
        let rescaled = normalized || p.keep_norm != 0u;
        // gu = a_y dy + a_g G is the gradient at u; gout = (gu - u (u . gu)) / |out|.
        let a_y = select(1.0, nh, rescaled);
        let a_g = select(1.0, select(nh, 1.0, normalized), rescaled);
        let ug = a_y * u_gy + a_g * u_g;
        let g_norm_h = select(0.0, select(u_gy + u_g, u_gy, normalized), rescaled);
        var gc = array<f32, SCALES>();
        for (var k = 0u; k < ks; k++) {
            let gu_diff = a_y * sums[3u + 3u * k] + a_g * sums[4u + 3u * k];
            let gout_diff = select(gu_diff, (gu_diff - ug * sums[5u + 3u * k] / no) / no, rescaled);
            gc[k] = -gout_diff * dg_ds[k];
        }
        // Phase 3: with NORMALIZED a first sweep sums v . gv (the projection back through
        // h / |h| needs it); the last sweep writes the gradients.
        var v_gv = 0.0;
        for (var sweep = select(1u, 0u, normalized); sweep < 2u; sweep++) {
            var part_sum = array<f32, N_SUMS>();
            for (var j = 0u; j < per; j++) {
                let i = lid + j * WG;
                if (i >= d) { continue; }
                let v = h[base + i] * v_scale;
                let og = modulated_and_g(v, g, hist + i, j);
                let out = og.x;
                let big_g = og.y;
                let gu = a_y * dy[base + i] + a_g * big_g;
                let gout = select(gu, (gu - out / no * ug) / no, rescaled);
                var gv = (1.0 - gate_sum) * gout;
                for (var k = 0u; k < ks; k++) {
                    let a = history[hist + k * d + i];
                    gv += gc[k] * (a / (nv * na[k]) - c[k] * v / (nv * nv));
                }
                if (sweep == 0u) {
                    part_sum[0] += v * gv;
                    continue;
                }
                for (var k = 0u; k < ks; k++) {
                    let a = history[hist + k * d + i];
                    let ga = g[k] * gout + gc[k] * (v / (nv * na[k]) - c[k] * a / (na[k] * na[k]));
                    set_d_anchor(k, j, scales[2u * k] * d_anchor_at(k, j) + ga);
                }
                var gh = gv + g_norm_h * h[base + i] / nh;
                if (normalized) {
                    gh = (gv - v * v_gv) / nh + g_norm_h * h[base + i] / nh;
                }
                dy[base + i] = gh;
            }
            if (sweep == 0u) {
                v_gv = reduce(part_sum, 1u)[0];
            }
        }
    }
#if PER
    for (var k = 0u; k < ks; k++) {
        for (var j = 0u; j < PER; j++) {
            let i = lid + j * WG;
            if (i < d) { d_anchor[seq_base + k * d + i] = d_anchor_at(k, j); }
        }
    }
#endif
}
