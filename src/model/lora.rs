//! LoRA on the GPU: a low-rank update `y[:, rows] += (alpha / rank) · (x · Aᵀ) · Bᵀ` added
//! to a linear layer's output rows, and its backward pass. `rows` picks a part of a fused
//! matrix (q, k or v of `qkv`; gate or up of `up`), so adapters follow Hugging Face's
//! per-module layout while the base model keeps Keel's fused one.

use super::adapter::{LoraPair, Slot};
use super::layout::{Block, Linear};
use crate::gpu::{DType, Gpu, Sharded, Step, Tensor};
use crate::ops::matmul::{matmul_scaled, Mat};
use anyhow::Result;

/// One adapter on the GPU: `a` `[rank, in]`, `b` `[rows, rank]` and their gradients.
pub struct LoraLayer {
    pub slot: Slot,
    pub a: Tensor,
    pub b: Tensor,
    pub da: Tensor,
    pub db: Tensor,
    /// `x · Aᵀ` `[n, rank]` from the forward pass, kept for the backward pass.
    t: Tensor,
}

/// The adapters of one block.
pub struct BlockLora {
    pub layers: Vec<LoraLayer>,
    pub scale: f32,
    /// Shared working space `[n, rank]` for the backward pass.
    dt: Tensor,
}

impl BlockLora {
    /// Uploads one block's adapters for `rows` batch rows.
    pub fn new(
        gpu: &Gpu,
        pairs: &[LoraPair],
        (rank, scale): (usize, f32),
        rows: usize,
        dt: &Tensor,
    ) -> Result<BlockLora> {
        let mut layers = Vec::new();
        for p in pairs {
            let (inp, out) = (p.a.len() / rank, p.slot.rows.len());
            layers.push(LoraLayer {
                a: gpu.upload_f32("lora A", &[rank, inp], &p.a)?,
                b: gpu.upload_f32("lora B", &[out, rank], &p.b)?,
                da: gpu.zeros("lora dA", &[rank, inp], DType::F32)?,
                db: gpu.zeros("lora dB", &[out, rank], DType::F32)?,
                t: gpu.zeros("lora t", &[rows, rank], DType::F32)?,
                slot: p.slot.clone(),
            });
        }
        Ok(BlockLora { layers, scale, dt: dt.clone() })
    }

    /// The adapters' current values, read back.
    pub async fn download_async(&self, gpu: &Gpu) -> Result<Vec<LoraPair>> {
        let mut pairs = Vec::new();
        for l in &self.layers {
            let (a, b) = (gpu.read_f32_async(&l.a).await?, gpu.read_f32_async(&l.b).await?);
            pairs.push(LoraPair { slot: l.slot.clone(), a, b });
        }
        Ok(pairs)
    }

    /// Adds every adapter into its rows of the block's weights, `W[rows] += (alpha / rank) ·
    /// B · A`, as [`super::adapter::Lora::merge_into`] does on the host (the weights must be f32).
    pub fn record_merge(&self, step: &mut Step, block: &Block<Sharded>) {
        for l in &self.layers {
            let (rank, inp) = (l.a.shape[0], l.a.shape[1]);
            let w = block.linear(l.slot.linear);
            let w_rows = Mat { t: w, off: l.slot.rows.start * inp, rs: inp, cs: 1 };
            let (b, a) = (Mat::rows(&l.b, 0, rank), Mat::rows(&l.a, 0, inp));
            matmul_scaled(step, b, a, w_rows, (l.slot.rows.len(), inp, rank), self.scale, true);
        }
    }

    /// GPU memory of the adapters and their saved products (gradients not included).
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.a.bytes() + l.b.bytes() + l.t.bytes()).sum::<u64>() + self.dt.bytes()
    }

    /// After `linear`'s output `y` (`[n, width]`) was computed from `x`: adds every
    /// adapter of that layer.
    pub fn record_forward(&self, step: &mut Step, linear: Linear, x: &Tensor, y: &Tensor, n: usize) {
        let width = y.numel() / y.shape[0];
        for l in self.layers.iter().filter(|l| l.slot.linear == linear) {
            let (rank, inp) = (l.a.shape[0], l.a.shape[1]);
            let t = Mat::rows(&l.t, 0, rank);
            matmul_scaled(
                step,
                Mat::rows(x, 0, inp),
                Mat::transposed(&l.a, 0, inp),
                t,
                (n, rank, inp),
                1.0,
                false,
            );
            let y_rows = Mat { t: y, off: l.slot.rows.start, rs: width, cs: 1 };
            let bt = Mat::transposed(&l.b, 0, rank);
            matmul_scaled(step, t, bt, y_rows, (n, l.slot.rows.len(), rank), self.scale, true);
        }
    }

    /// Backward of [`BlockLora::record_forward`] for `linear`, given the gradient `dy` of its
    /// output: adds into the adapters' gradients and into `dx` (the input's gradient).
    pub fn record_backward(
        &self,
        step: &mut Step,
        linear: Linear,
        x: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        n: usize,
    ) {
        let width = dy.numel() / dy.shape[0];
        for l in self.layers.iter().filter(|l| l.slot.linear == linear) {
            let (rank, inp, out) = (l.a.shape[0], l.a.shape[1], l.slot.rows.len());
            let dy_rows = Mat { t: dy, off: l.slot.rows.start, rs: width, cs: 1 };
            let dy_rows_t = Mat { t: dy, off: l.slot.rows.start, rs: 1, cs: width };
            let (t, dt) = (Mat::rows(&l.t, 0, rank), Mat::rows(&self.dt, 0, rank));
            // dB += scale · dyᵀ · t;  dt = scale · dy · B;  dA += dtᵀ · x;  dx += dt · A.
            matmul_scaled(step, dy_rows_t, t, Mat::rows(&l.db, 0, rank), (out, rank, n), self.scale, true);
            matmul_scaled(step, dy_rows, Mat::rows(&l.b, 0, rank), dt, (n, rank, out), self.scale, false);
            let dt_t = Mat::transposed(&self.dt, 0, rank);
            matmul_scaled(
                step,
                dt_t,
                Mat::rows(x, 0, inp),
                Mat::rows(&l.da, 0, inp),
                (rank, inp, n),
                1.0,
                true,
            );
            matmul_scaled(
                step,
                dt,
                Mat::rows(&l.a, 0, inp),
                Mat::rows(dx, 0, inp),
                (n, inp, rank),
                1.0,
                true,
            );
        }
    }
}
