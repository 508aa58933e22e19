// Contextual gradient flow (methods.md section 3):
//   SEQ_SUM:     out[b, j] = scale · Σ_{t < T} x[b T + t, j], one thread per (b, j): the
//                per-sequence column sums (scale 1) or means (scale 1/T) of a layer's input
//                or output gradient, for the rank-B global part of its weight gradient;
//   ADAPTIVE_LR: one thread: the final gradient norm g = norm · clip factor (both left by
//                grad_norm.wgsl in `norms`), on the first step state[0] = g (G_ref), then
//                state[1] = clamp(lr (1 + g / G_ref), lr_min, lr_max), which AdamW reads.

struct Params {
    seq_len: u32, cols: u32, n_seqs: u32, scale: f32,
    lr: f32, lr_min: f32, lr_max: f32, first: u32,
    norm_at: u32, clip_at: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

#if SEQ_SUM
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n_seqs * p.cols) { return; }
    let b = i / p.cols;
    let j = i % p.cols;
    var s = 0.0;
    for (var t = 0u; t < p.seq_len; t++) { s += x[(b * p.seq_len + t) * p.cols + j]; }
    out[i] = p.scale * s;
}
#endif

#if ADAPTIVE_LR
@group(0) @binding(1) var<storage, read> norms: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;  // [G_ref, adjusted lr]

@compute @workgroup_size(1)
fn main() {
    let g = norms[p.norm_at] * norms[p.clip_at];
    if (p.first != 0u) { state[0] = g; }
    let reference = state[0];
    // A zero gradient at the first step leaves no scale: the step stays at lr.
    let ratio = select(0.0, g / reference, reference > 0.0);
    state[1] = clamp(p.lr * (1.0 + ratio), p.lr_min, p.lr_max);
}
#endif
