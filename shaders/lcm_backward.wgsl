// Backward of lcm.wgsl: the reverse scan. One workgroup per sequence walks that sequence's
// rows from the last to `sink`, turning dy (the gradient at the modulated states, in place)
// into the gradient at the states before modulation, and carrying the gradient of each anchor
// (`d_anchor`, zero before the call) from later positions to earlier ones. It reads the
// unmodulated states `h` and the anchors each row saw (`history`, which lcm.wgsl writes with
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

const WG: u32 = 64u;
const MAX_SCALES: u32 = 4u;
var<workgroup> red: array<f32, 960>;  // (3 + 3 MAX_SCALES) * WG
var<workgroup> row_seq: u32;
var<workgroup> row_pos: u32;

fn reduce(lid: u32, n: u32) {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            for (var v = 0u; v < n; v++) { red[v * WG + lid] += red[v * WG + lid + s]; }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let seq = wid.x;
    let lid = lid3.x;
    let d = p.d;
    let ks = p.n_scales;
    let da_base = seq * ks * d;
    let normalized = p.normalized != 0u;
    for (var rr = 0u; rr < p.n_rows; rr++) {
        let r = p.n_rows - 1u - rr;
        if (lid == 0u) {
            row_seq = rows[2u * r];
            row_pos = rows[2u * r + 1u];
        }
        let this_seq = workgroupUniformLoad(&row_seq);
        let pos = workgroupUniformLoad(&row_pos);
        if (this_seq != seq || pos < p.sink) { continue; }
        let base = r * d;
        if (pos == p.sink) {
            // y = h and every anchor starts at v: the anchors' gradients land here.
            var hh = 0.0;
            var hs = 0.0;
            for (var i = lid; i < d; i += WG) {
                var s = 0.0;
                for (var k = 0u; k < ks; k++) { s += d_anchor[da_base + k * d + i]; }
                hh += h[base + i] * h[base + i];
                hs += h[base + i] * s;
            }
            red[lid] = hh;
            red[WG + lid] = hs;
            reduce(lid, 2u);
            let nh = sqrt(red[0]);
            let vs = red[WG] / nh;  // v . S when normalized
            for (var i = lid; i < d; i += WG) {
                var s = 0.0;
                for (var k = 0u; k < ks; k++) {
                    s += d_anchor[da_base + k * d + i];
                    d_anchor[da_base + k * d + i] = 0.0;
                }
                if (normalized) {
                    dy[base + i] += (s - h[base + i] / nh * vs) / nh;
                } else {
                    dy[base + i] += s;
                }
            }
            workgroupBarrier();
            continue;
        }
        let hist = r * ks * d;
        // Phase 1: |h|, h . a_k, |a_k|: the gates, as the forward pass computed them.
        var hh = 0.0;
        for (var i = lid; i < d; i += WG) { hh += h[base + i] * h[base + i]; }
        red[lid] = hh;
        for (var k = 0u; k < ks; k++) {
            var ha = 0.0;
            var aa = 0.0;
            for (var i = lid; i < d; i += WG) {
                let a = history[hist + k * d + i];
                ha += h[base + i] * a;
                aa += a * a;
            }
            red[(1u + 2u * k) * WG + lid] = ha;
            red[(2u + 2u * k) * WG + lid] = aa;
        }
        reduce(lid, 1u + 2u * ks);
        let nh = sqrt(red[0]);
        let v_scale = select(1.0, 1.0 / nh, normalized);
        let nv = nh * v_scale;
        var g = array<f32, MAX_SCALES>();
        var c = array<f32, MAX_SCALES>();
        var na = array<f32, MAX_SCALES>();
        var dg_ds = array<f32, MAX_SCALES>();
        var gate_sum = 0.0;
        for (var k = 0u; k < ks; k++) {
            na[k] = sqrt(red[(2u + 2u * k) * WG]);
            c[k] = red[(1u + 2u * k) * WG] * v_scale / (nv * na[k]);
            let sig = 1.0 / (1.0 + exp(-p.kappa * (1.0 - c[k] - p.tau)));
            g[k] = scales[2u * k + 1u] * sig;
            dg_ds[k] = scales[2u * k + 1u] * p.kappa * sig * (1.0 - sig);
            gate_sum += g[k];
        }
        workgroupBarrier();
        // Phase 2: |out|, out . dy, out . G, and (dy, G, out) . (a_k - v).
        var s_oo = 0.0;
        var s_oy = 0.0;
        var s_og = 0.0;
        var s_k = array<f32, 12>();  // 3 per scale
        for (var i = lid; i < d; i += WG) {
            let v = h[base + i] * v_scale;
            var out = v;
            var big_g = 0.0;
            for (var k = 0u; k < ks; k++) {
                out -= g[k] * (v - history[hist + k * d + i]);
                big_g += (1.0 - scales[2u * k]) * d_anchor[da_base + k * d + i];
            }
            let gy = dy[base + i];
            s_oo += out * out;
            s_oy += out * gy;
            s_og += out * big_g;
            for (var k = 0u; k < ks; k++) {
                let diff = history[hist + k * d + i] - v;
                s_k[3u * k] += gy * diff;
                s_k[3u * k + 1u] += big_g * diff;
                s_k[3u * k + 2u] += out * diff;
            }
        }
        red[lid] = s_oo;
        red[WG + lid] = s_oy;
        red[2u * WG + lid] = s_og;
        for (var j = 0u; j < 3u * ks; j++) { red[(3u + j) * WG + lid] = s_k[j]; }
        reduce(lid, 3u + 3u * ks);
        let no = sqrt(red[0]);
        let u_gy = red[WG] / no;
        let u_g = red[2u * WG] / no;
        let rescaled = normalized || p.keep_norm != 0u;
        // gu = a_y dy + a_g G is the gradient at u; gout = (gu - u (u . gu)) / |out|.
        let a_y = select(1.0, nh, rescaled);
        let a_g = select(1.0, select(nh, 1.0, normalized), rescaled);
        let ug = a_y * u_gy + a_g * u_g;
        let g_norm_h = select(0.0, select(u_gy + u_g, u_gy, normalized), rescaled);
        var gc = array<f32, MAX_SCALES>();
        for (var k = 0u; k < ks; k++) {
            let gu_diff = a_y * red[(3u + 3u * k) * WG] + a_g * red[(4u + 3u * k) * WG];
            let gout_diff = select(gu_diff, (gu_diff - ug * red[(5u + 3u * k) * WG] / no) / no, rescaled);
            gc[k] = -gout_diff * dg_ds[k];
        }
        workgroupBarrier();
        // Phase 3: with NORMALIZED a first sweep sums v . gv (the projection back through
        // h / |h| needs it); the last sweep writes the gradients.
        var v_gv = 0.0;
        for (var sweep = select(1u, 0u, normalized); sweep < 2u; sweep++) {
            var part = 0.0;
            for (var i = lid; i < d; i += WG) {
                let v = h[base + i] * v_scale;
                var out = v;
                var big_g = 0.0;
                for (var k = 0u; k < ks; k++) {
                    out -= g[k] * (v - history[hist + k * d + i]);
                    big_g += (1.0 - scales[2u * k]) * d_anchor[da_base + k * d + i];
                }
                let gu = a_y * dy[base + i] + a_g * big_g;
                let gout = select(gu, (gu - out / no * ug) / no, rescaled);
                var gv = (1.0 - gate_sum) * gout;
                for (var k = 0u; k < ks; k++) {
                    let a = history[hist + k * d + i];
                    gv += gc[k] * (a / (nv * na[k]) - c[k] * v / (nv * nv));
                }
                if (sweep == 0u) {
                    part += v * gv;
                    continue;
                }
                for (var k = 0u; k < ks; k++) {
                    let a = history[hist + k * d + i];
                    let ga = g[k] * gout + gc[k] * (v / (nv * na[k]) - c[k] * a / (na[k] * na[k]));
                    let at = da_base + k * d + i;
                    d_anchor[at] = scales[2u * k] * d_anchor[at] + ga;
                }
                var gh = gv + g_norm_h * h[base + i] / nh;
                if (normalized) {
                    gh = (gv - v * v_gv) / nh + g_norm_h * h[base + i] / nh;
                }
                dy[base + i] = gh;
            }
            if (sweep == 0u) {
                red[lid] = part;
                reduce(lid, 1u);
                v_gv = red[0];
                workgroupBarrier();
            }
        }
        workgroupBarrier();
    }
}
