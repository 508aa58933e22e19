//! Reference AdamW step (torch.optim.AdamW's arithmetic, in f64).

use crate::ops::optim::AdamW;

/// One AdamW update of `param` at step `t` (1-based) with gradient `grad` times `clip`.
pub fn adamw_step(
    o: &AdamW,
    t: u32,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    clip: f64,
) {
    let bc1 = 1.0 - o.beta1.powi(t as i32);
    let bc2 = 1.0 - o.beta2.powi(t as i32);
    for i in 0..param.len() {
        let g = grad[i] as f64 * clip;
        let mi = o.beta1 * m[i] as f64 + (1.0 - o.beta1) * g;
        let vi = o.beta2 * v[i] as f64 + (1.0 - o.beta2) * g * g;
        m[i] = mi as f32;
        v[i] = vi as f32;
        let p = param[i] as f64 * (1.0 - o.lr * o.weight_decay);
        param[i] = (p - o.lr / bc1 * mi / ((vi / bc2).sqrt() + o.eps)) as f32;
    }
}
