//! Softmax cross-entropy fused with its gradient, `shaders/xent.wgsl`.

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    vocab: u32,
    scale: f32,
    first: u32,
    cap: f32,
    _p: [u32; 3],
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![("xent", vec![]), ("xent", vec![("SOFTCAP", 1)])]
}

/// Per row: `loss[r] = lse(z) - z[target]` (0 where the target is [`NO_TARGET`](super::stats::NO_TARGET)), and
/// `logits` replaced in place by `scale · (softmax(z) - onehot(target))`: with `scale` =
/// 1 / number of targets, the gradient of the mean loss. `logits` holds `n_rows` rows from
/// row 0: the rows `first ..` of `targets` and `loss` (a chunk of a batch). With `cap`, the
/// logits are the raw ones: the kernel caps them first (as [`super::softcap::softcap`] does,
/// bit for bit) and takes the gradient with respect to the raw logits.
pub fn cross_entropy(
    step: &mut Step,
    logits: &Tensor,
    (targets, loss, first): (&Tensor, &Tensor, usize),
    n_rows: usize,
    scale: f32,
    cap: Option<f32>,
) {
    let vocab = *logits.shape.last().unwrap();
    let end = first + n_rows;
    assert!(logits.numel() >= n_rows * vocab && targets.numel() >= end && loss.numel() >= end);
    let params = Params {
        n_rows: n_rows as u32,
        vocab: vocab as u32,
        scale,
        first: first as u32,
        cap: cap.unwrap_or(1.0),
        _p: [0; 3],
    };
    let defines: &[Define] = if cap.is_some() { &[("SOFTCAP", 1)] } else { &[] };
    let pipeline = step.gpu.pipeline("xent", defines);
    step.dispatch(pipeline, &params, &bind![logits, targets, loss], groups(n_rows, 1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::stats::NO_TARGET;
    use crate::ops::test_util::*;

    /// The batch's rows in two chunks (rows 0..1 and 1..4), each in its own logits buffer
    /// from row 0, their targets and losses at the batch's rows; plain, and soft-capped (the
    /// kernel caps the raw logits itself; the gradient with respect to the raw ones, whose CPU
    /// reference is checked by finite differences in `cpu::stats`).
    #[test]
    fn cross_entropy_matches_cpu() {
        let gpu = gpu();
        let (n, v) = (4, 1000);
        let z = rand_vec(1, n * v, 8.0);
        let targets = [Some(7u32), None, Some(999), Some(0)];
        let flat: Vec<u32> = targets.iter().map(|t| t.unwrap_or(NO_TARGET)).collect();
        let tt = gpu.upload_u32("t", &[n], &flat).unwrap();
        for cap in [None, Some(5.0)] {
            let loss = gpu.zeros("loss", &[n], DType::F32).unwrap();
            let (want_loss, want_grad) = cpu::stats::cross_entropy(&z, &targets, cap);
            for (first, rows) in [(0, 1), (1, 3)] {
                let zt = gpu.upload_f32("z", &[rows, v], &z[first * v..(first + rows) * v]).unwrap();
                let mut step = Step::new(gpu);
                cross_entropy(&mut step, &zt, (&tt, &loss, first), rows, 1.0 / 3.0, cap);
                step.submit().unwrap();
                let want = &want_grad[first * v..(first + rows) * v];
                let what = format!("dlogits of rows {first}.., cap {cap:?}");
                assert_close(&gpu.read_f32(&zt).unwrap(), want, 1e-6, &what);
            }
            assert_close(&gpu.read_f32(&loss).unwrap(), &want_loss, 1e-5, &format!("loss, cap {cap:?}"));
        }
    }
}
