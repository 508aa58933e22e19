// AdamW with decoupled weight decay, in the order torch.optim.AdamW computes it:
//   p *= decay (= 1 - lr * wd);  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g²;
//   p -= step_size (= lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),
// with g the gradient times the clip factor the grad_norm kernel left in scale[scale_at].
// Scalars are computed on the host in f64, as torch computes them in Python; with LR_BUF
// the learning rate is lr_buf[lr_at] (CGFM's adaptive step, computed on the GPU) and
// decay = 1 - lr * wd, step_size = lr * inv_bc1 in f32.
// HGC on the update splits the kernel in two around the constriction of the update:
//   DIRECTION: the moments, then grad := m / (sqrt(v) / sqrt(bc2) + eps) (the Adam direction);
//   APPLY:     p = p * decay - step_size * grad.

struct Params {
    n: u32, scale_at: u32, decay: f32, step_size: f32,
    beta2: f32, one_minus_beta1: f32, one_minus_beta2: f32, eps: f32,
    bc2_sqrt: f32, wd: f32, inv_bc1: f32, lr_at: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

#if DIRECTION
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> scale: array<f32>;
#else
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
#if APPLY
#if LR_BUF
@group(0) @binding(3) var<storage, read> lr_buf: array<f32>;
#endif
#else
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> scale: array<f32>;
#if LR_BUF
@group(0) @binding(6) var<storage, read> lr_buf: array<f32>;
#endif
#endif
#endif

// (decay, step_size)
fn lr_terms() -> vec2<f32> {
#if LR_BUF
    let lr = lr_buf[p.lr_at];
    return vec2<f32>(1.0 - lr * p.wd, lr * p.inv_bc1);
#else
    return vec2<f32>(p.decay, p.step_size);
#endif
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) { return; }
#if APPLY
    let t = lr_terms();
    param[i] = param[i] * t.x - t.y * grad[i];
#else
    let g = grad[i] * scale[p.scale_at];
    let m_new = m[i] + p.one_minus_beta1 * (g - m[i]);
    let v_new = p.beta2 * v[i] + p.one_minus_beta2 * (g * g);
    m[i] = m_new;
    v[i] = v_new;
#if DIRECTION
    grad[i] = m_new / (sqrt(v_new) / p.bc2_sqrt + p.eps);
#else
    let t = lr_terms();
    param[i] = param[i] * t.x - t.y * (m_new / (sqrt(v_new) / p.bc2_sqrt + p.eps));
#endif
#endif
}
