//! Packed weights back to f32 on the GPU, `shaders/dequant.wgsl`: what fine-tuning a model
//! that keeps its weights packed (a GGUF loaded with `--weights auto`, the page's streamed
//! GGUF) starts from, with no host copy of the weights.

use super::{groups, matmul};
use crate::gpu::WeightFormat;
use crate::gpu::{shader::Define, DType, Gpu, Step, Tensor};
use anyhow::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    k: u32,
    b_off: u32,
    b_cs: u32,
}

/// The format defines of the packed weight (f16 is unpacked from u32 words everywhere: the
/// kernel runs once per fine-tuning, so shader-f16 would not pay).
fn defines(fmt: WeightFormat) -> Vec<Define> {
    matmul::format_flags(fmt, false)
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    WeightFormat::ALL.iter().filter(|&&f| f != WeightFormat::F32).map(|&f| ("dequant", defines(f))).collect()
}

/// A new f32 tensor with the values of `packed` (a packed `[n, k]` weight), recorded into `step`.
pub fn dequantize(gpu: &Gpu, step: &mut Step, what: &str, packed: &Tensor) -> Result<Tensor> {
    let DType::Packed(fmt) = packed.dtype else { panic!("dequantize: {what} is not packed") };
    let (n, k) = (packed.shape[0], packed.shape[1]);
    let out = gpu.zeros(what, &packed.shape, DType::F32)?;
    let params = Params { n: n as u32, k: k as u32, b_off: 0, b_cs: 0 };
    let pipeline = gpu.pipeline("dequant", &defines(fmt));
    step.dispatch(pipeline, &params, &bind![out = &out, b = packed], groups(n * k / 4, 64));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::wfmt;
    use crate::ops::test_util::*;

    #[test]
    fn dequantizes_as_the_cpu_does() {
        let gpu = gpu();
        let (n, k) = (70, 256);
        for fmt in WeightFormat::ALL.into_iter().filter(|&f| f != WeightFormat::F32) {
            let words = wfmt::random_packed(fmt, n, k, 3);
            let packed = gpu.upload_weight("w", &[n, k], fmt, &words).unwrap();
            let mut step = Step::new(gpu);
            let out = dequantize(gpu, &mut step, "w f32", &packed).unwrap();
            step.submit().unwrap();
            assert_eq!(out.shape, [n, k]);
            // Exactly the CPU's values: both decode the same f16 scales and integer quants.
            assert_eq!(gpu.read_f32(&out).unwrap(), wfmt::dequantize(fmt, &words), "{fmt:?}");
        }
    }
}
