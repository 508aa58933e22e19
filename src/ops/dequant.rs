//! Packed weights back to f32 on the GPU, `shaders/dequant.wgsl`: what fine-tuning a model
//! that keeps its weights packed (a GGUF loaded with `--weights auto`, the page's streamed
//! GGUF) starts from, with no host copy of the weights.

use super::{groups, matmul};
use crate::gpu::WeightFormat;
use crate::gpu::{shader::Define, DType, Gpu, Sharded, Step};
use anyhow::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    k: u32,
    b_off: u32,
    b_cs: u32,
    row0: u32,
    out_off: u32,
    _pad: [u32; 2],
}

/// The format defines of the packed weight (f16 is unpacked from u32 words everywhere: the
/// kernel runs once per fine-tuning, so shader-f16 would not pay).
fn defines(fmt: WeightFormat) -> Vec<Define> {
    matmul::format_flags(fmt, false)
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    WeightFormat::ALL.iter().filter(|&&f| f != WeightFormat::F32).map(|&f| ("dequant", defines(f))).collect()
}

/// A new f32 tensor with the values of `packed` (a packed `[n, k]` weight), recorded into
/// `step`. Its row shards are those of f32 (more than the packed weight's): each part of a
/// packed shard that falls in an f32 shard is one dispatch.
pub fn dequantize(gpu: &Gpu, step: &mut Step, what: &str, packed: &Sharded) -> Result<Sharded> {
    let DType::Packed(fmt) = packed.dtype else { panic!("dequantize: {what} is not packed") };
    let k = packed.shape[1];
    let out = gpu.zeros_sharded(what, &packed.shape, DType::F32)?;
    let pipeline = gpu.pipeline("dequant", &defines(fmt));
    for (out_first, o) in out.rows() {
        for (first, b) in packed.rows() {
            let (from, to) = (out_first.max(first), (out_first + o.shape[0]).min(first + b.shape[0]));
            if from >= to {
                continue;
            }
            let n = to - from;
            let (row0, out_off) = ((from - first) as u32, ((from - out_first) * k / 4) as u32);
            let params = Params { n: n as u32, k: k as u32, b_off: 0, b_cs: 0, row0, out_off, _pad: [0; 2] };
            step.dispatch(pipeline.clone(), &params, &bind![out = o, b = b], groups(n * k / 4, 64));
        }
    }
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
            let want = wfmt::dequantize(fmt, &words);
            // Whole, and in row shards (13 f32 rows of 256 columns a shard, which do not line
            // up with the packed weight's).
            for gpu in [gpu, gpu_with_binding(13 * 256 * 4 + 100)] {
                let packed = gpu.upload_sharded("w", &[n, k], fmt, &words).unwrap();
                let mut step = Step::new(gpu);
                let out = dequantize(gpu, &mut step, "w f32", &packed).unwrap();
                step.submit().unwrap();
                assert_eq!(out.shape, [n, k]);
                // Exactly the CPU's values: both decode the same f16 scales and integer quants.
                assert_eq!(gpu.read_sharded_f32(&out).unwrap(), want, "{fmt:?}");
            }
        }
    }
}
