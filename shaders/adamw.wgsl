// AdamW with decoupled weight decay, in the order torch.optim.AdamW computes it:
//   p *= decay (= 1 - lr * wd);  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g²;
//   p -= step_size (= lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),
// with g the gradient times the clip factor the grad_norm kernel left in scale[scale_at].
// Scalars are computed on the host in f64, as torch computes them in Python.

struct Params {
    n: u32, scale_at: u32, decay: f32, step_size: f32,
    beta2: f32, one_minus_beta1: f32, one_minus_beta2: f32, eps: f32,
    bc2_sqrt: f32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> scale: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) { return; }
    let g = grad[i] * scale[p.scale_at];
    let m_new = m[i] + p.one_minus_beta1 * (g - m[i]);
    let v_new = p.beta2 * v[i] + p.one_minus_beta2 * (g * g);
    m[i] = m_new;
    v[i] = v_new;
    param[i] = param[i] * p.decay - p.step_size * (m_new / (sqrt(v_new) / p.bc2_sqrt + p.eps));
}
