// Latent convergence modulation (methods.md section 1) at one block's residual output, for
// scans of many rows (prefill chunks, scoring, training; calls with at most a row per sequence
// take lcm.wgsl, whose step is bit for bit decode's). One workgroup per sequence scans that
// sequence's rows in order, pulling each state toward its anchors and updating them:
//   s_k = 1 - cos(h, a_k),  g_k = gamma_k * sigmoid(kappa * (s_k - tau))
//   h'  = h - sum_k g_k (h - a_k),  then |h'| := |h|  (KEEP_NORM, or always when NORMALIZED)
//   a_k = rho_k a_k + (1 - rho_k) h'
// Positions below `sink` are left alone; position `sink` starts the anchors. With
// NORMALIZED everything acts on directions h / |h| and the result is rescaled to |h|.
// SAVE (training) also writes the anchors each row saw into `history`.

#include lcm_io

// The scan is sequential over rows, so each row's chain is kept short: per row one reduction
// of 1 + 2 SCALES sums (|h|^2, h.a_k, |a_k|^2) and one of |h'|^2 (its expansion from the first
// sums loses the bits that cancel when h' is short), with subgroup sums and one barrier each
// where the adapter has SUBGROUP (lcm_reduce.wgsl), and no other barrier: a thread always
// handles hidden indices lid + j WG, j < PER, of every row and anchor. With PER (d <= PER WG)
// each thread keeps its slice of the anchors in registers across rows, reading and writing
// them in memory once per dispatch, and holds its slice of the row there too (h, then h'),
// loaded while the row before was reduced; with PER 0 (d too wide for the register budget)
// anchors and rows stay in memory. WG: 256 on GPUs (each row's work spread wide), 64 on CPU adapters
// (fewer idle lanes per barrier); SCALES: the number of anchors.
const N_SUMS: u32 = 1u + 2u * SCALES;
#include lcm_reduce

#if PER
var<private> anchor_slice: array<f32, SCALES * PER>;  // a_k[lid + j WG] at k PER + j

var<private> row_slice: array<f32, PER>;               // x[row, lid + j WG] at j

fn anchor_at(k: u32, j: u32) -> f32 { return anchor_slice[k * PER + j]; }
fn set_anchor(k: u32, j: u32, v: f32) { anchor_slice[k * PER + j] = v; }
fn row_at(j: u32) -> f32 { return row_slice[j]; }
fn set_row(j: u32, v: f32) { row_slice[j] = v; }

fn slice_of_row(r: u32) -> array<f32, PER> {
    var slice = array<f32, PER>();
    for (var j = 0u; j < PER; j++) {
        let i = lid + j * WG;
        if (i < p.d) { slice[j] = x[r * p.d + i]; }
    }
    return slice;
}
#else
var<private> a_base: u32;
var<private> row_base: u32;

fn anchor_at(k: u32, j: u32) -> f32 { return anchor[a_base + k * p.d + lid + j * WG]; }
fn set_anchor(k: u32, j: u32, v: f32) { anchor[a_base + k * p.d + lid + j * WG] = v; }
fn row_at(j: u32) -> f32 { return x[row_base + lid + j * WG]; }
fn set_row(j: u32, v: f32) { x[row_base + lid + j * WG] = v; }
#endif

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, at: Invocation) {
    let seq = wid.x;
    start(at);
    let d = p.d;
    let seq_base = seq * SCALES * d;
#if PER
    let per = PER;
    var ahead = array<f32, PER>();  // the slice of row `ahead_row`, loaded early
    var ahead_row = p.n_rows;
    for (var k = 0u; k < SCALES; k++) {
        for (var j = 0u; j < PER; j++) {
            let i = lid + j * WG;
            if (i < d) { set_anchor(k, j, anchor[seq_base + k * d + i]); }
        }
    }
#else
    let per = (d + WG - 1u) / WG;
    a_base = seq_base;
#endif
    var gate_total = 0.0;
    var div_total = 0.0;
    var count = 0.0;
    for (var r = 0u; r < p.n_rows; r++) {
        let pos = rows[2u * r + 1u];
        if (rows[2u * r] != seq || pos < p.sink) { continue; }
        let base = r * d;
#if PER
        if (ahead_row == r) { row_slice = ahead; } else { row_slice = slice_of_row(r); }
        // The next row's loads, in flight while this one is reduced (rows are only ever
        // written by their own step).
        ahead_row = r + 1u;
        if (ahead_row < p.n_rows) { ahead = slice_of_row(ahead_row); }
#else
        row_base = base;
#endif
        var sums = array<f32, N_SUMS>();
        for (var j = 0u; j < per; j++) {
            let i = lid + j * WG;
            if (i < d) { sums[0] += row_at(j) * row_at(j); }
        }
        if (pos == p.sink) {
            // The first position is never modulated; it starts every anchor.
            let hh = reduce(sums, 1u)[0];
            let inv = select(1.0, 1.0 / max(sqrt(hh), 1e-30), p.normalized != 0u);
            for (var k = 0u; k < SCALES; k++) {
                for (var j = 0u; j < per; j++) {
                    let i = lid + j * WG;
                    if (i < d) { set_anchor(k, j, row_at(j) * inv); }
                }
            }
            continue;
        }
        for (var k = 0u; k < SCALES; k++) {
            for (var j = 0u; j < per; j++) {
                let i = lid + j * WG;
                if (i < d) {
                    let a = anchor_at(k, j);
#if SAVE
                    history[(r * SCALES + k) * d + i] = a;
#endif
                    sums[1u + 2u * k] += row_at(j) * a;
                    sums[2u + 2u * k] += a * a;
                }
            }
        }
        sums = reduce(sums, N_SUMS);
        let norm_h = sqrt(sums[0]);
        // In normalized space the working vector is the direction of h.
        let v_scale = select(1.0, 1.0 / max(norm_h, 1e-30), p.normalized != 0u);
        var gates = array<f32, SCALES>();
        for (var k = 0u; k < SCALES; k++) {
            let ha = sums[1u + 2u * k] * v_scale;
            let norm_a = sqrt(sums[2u + 2u * k]);
            let norm_v = norm_h * v_scale;
            let s = 1.0 - ha / max(norm_v * norm_a, 1e-8);
            gates[k] = scales[2u * k + 1u] / (1.0 + exp(-p.kappa * (s - p.tau)));
            gate_total += gates[k];
            div_total += s / f32(SCALES);
        }
        count += 1.0;
        // Pull toward the anchors; keep the result in the row for now and sum its squared norm.
        var pp = array<f32, N_SUMS>();
        for (var j = 0u; j < per; j++) {
            let i = lid + j * WG;
            if (i < d) {
                let v = row_at(j) * v_scale;
                var out = v;
                for (var k = 0u; k < SCALES; k++) { out -= gates[k] * (v - anchor_at(k, j)); }
                set_row(j, out);
                pp[0] += out * out;
            }
        }
        let norm_out = max(sqrt(reduce(pp, 1u)[0]), 1e-30);
        let rescale = select(1.0, norm_h / norm_out, p.keep_norm != 0u || p.normalized != 0u);
        // Anchors follow the modulated state (its direction in normalized space).
        let anchor_scale = select(rescale, 1.0 / norm_out, p.normalized != 0u);
        for (var j = 0u; j < per; j++) {
            let i = lid + j * WG;
            if (i < d) {
                let out = row_at(j);
                x[base + i] = out * rescale;
                for (var k = 0u; k < SCALES; k++) {
                    let rho = scales[2u * k];
                    set_anchor(k, j, rho * anchor_at(k, j) + (1.0 - rho) * out * anchor_scale);
                }
            }
        }
    }
#if PER
    for (var k = 0u; k < SCALES; k++) {
        for (var j = 0u; j < PER; j++) {
            let i = lid + j * WG;
            if (i < d) { anchor[seq_base + k * d + i] = anchor_at(k, j); }
        }
    }
#endif
    if (lid == 0u) {
        stats[4u * seq] += gate_total;
        stats[4u * seq + 1u] += div_total;
        stats[4u * seq + 2u] += count;
    }
}
