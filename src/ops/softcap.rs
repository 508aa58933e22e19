//! Final-logit soft-capping, `shaders/softcap.wgsl`: Gemma's `final_logit_softcapping`,
//! applied in place to the LM head's logits before anything reads them (statistics, picks,
//! sampling). Training's loss caps its logits itself, the same expression (`shaders/cap.wgsl`),
//! and takes the backward through the cap: the cross-entropy's SOFTCAP variant ([`super::xent`]).

use super::groups;
use crate::gpu::{shader::Define, Step, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cap: f32,
    _p: [u32; 2],
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    vec![("softcap", vec![])]
}

/// `logits[i] = cap · tanh(logits[i] / cap)` for the first `n` elements.
pub fn softcap(step: &mut Step, logits: &Tensor, n: usize, cap: f32) {
    assert!(logits.numel() >= n && cap > 0.0);
    let params = Params { n: n as u32, cap, _p: [0; 2] };
    let pipeline = step.gpu.pipeline("softcap", &[]);
    step.dispatch(pipeline, &params, &bind![logits], groups(n, 64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::ops::test_util::*;

    /// Logits up to ±60 around a cap of 30: the tails bend, the middle stays near z; the
    /// elements past `n` are left alone. (Lavapipe's tanh is within about 1e-6 relative.)
    #[test]
    fn softcap_matches_cpu() {
        let gpu = gpu();
        let z = rand_vec(3, 1000, 60.0);
        let t = gpu.upload_f32("z", &[1000], &z).unwrap();
        let mut step = Step::new(gpu);
        softcap(&mut step, &t, 900, 30.0);
        step.submit().unwrap();
        let mut want = cpu::stats::softcap(&z[..900], 30.0);
        want.extend_from_slice(&z[900..]);
        assert_close(&gpu.read_f32(&t).unwrap(), &want, 1e-5, "soft-capped logits");
    }
}
