//! Hierarchical gradient constriction over a model's gradients (methods.md section 2), on
//! the GPU between the backward pass and clipping: per weight kind (q, k, v, o, gate, up,
//! down; GPT-2's c_attn, c_proj, c_fc, mlp.c_proj) a λ per block from the distance to the
//! block below, then the mixed, scaled gradient. Only the λ table comes back, for the log.

use crate::gpu::{DType, Gpu, Step, Tensor};
use crate::model::adapter::{parse_targets, Slot};
use crate::model::layout::Weights;
use crate::model::ModelConfig;
use crate::ops::hgc::{distance, lambdas, mix, GradRange};
use anyhow::{bail, Result};

/// HGC's settings; alpha 0 and mu 0 leave the gradients as they are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HgcConfig {
    pub alpha: f32,
    pub mu: f32,
    pub depth_slope: f32,
    /// Divide the squared distance by the product of the two gradients' norms (scale-free α).
    pub normalized: bool,
}

impl HgcConfig {
    pub fn is_off(&self) -> bool {
        self.alpha == 0.0 && self.mu == 0.0
    }

    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            bail!("--hgc-alpha must be 0 or more, got {}", self.alpha);
        }
        if !(0.0..=1.0).contains(&self.mu) {
            bail!("--hgc-mu must be in [0, 1], got {}", self.mu);
        }
        if !(self.depth_slope.is_finite() && self.depth_slope >= 0.0) {
            bail!("--hgc-depth-slope must be 0 or more, got {}", self.depth_slope);
        }
        if !self.is_off() && cfg.layers < 2 {
            bail!("HGC needs at least two blocks; this model has {}", cfg.layers);
        }
        Ok(())
    }
}

/// λ per weight kind (Hugging Face module name), one value per block.
pub type LambdaTable = Vec<(&'static str, Vec<f32>)>;

pub struct Hgc {
    cfg: HgcConfig,
    slots: Vec<Slot>,
    n_layers: usize,
    dist: Tensor,
    lambda: Tensor,
}

impl Hgc {
    pub fn new(gpu: &Gpu, cfg: HgcConfig, model: &ModelConfig) -> Result<Hgc> {
        cfg.validate(model)?;
        let slots = parse_targets(model, "all")?;
        let n = slots.len() * model.layers;
        Ok(Hgc {
            cfg,
            n_layers: model.layers,
            dist: gpu.zeros("hgc distances", &[3 * n], DType::F32)?,
            lambda: gpu.zeros("hgc lambda", &[n], DType::F32)?,
            slots,
        })
    }

    /// The weight kinds, as Hugging Face names the modules (`self_attn.q_proj`, ...).
    pub fn kinds(&self) -> Vec<&'static str> {
        self.slots.iter().map(|s| s.module).collect()
    }

    /// Records the constriction of `grads` in place.
    pub fn record(&self, step: &mut Step, grads: &Weights<Tensor>) {
        let range = |slot: &Slot, l: usize| {
            let t = grads.blocks[l].linear(slot.linear);
            let cols = t.shape[1];
            GradRange { t, offset: slot.rows.start * cols, len: slot.rows.len() * cols }
        };
        let l_n = self.n_layers;
        for (k, slot) in self.slots.iter().enumerate() {
            for l in 1..l_n {
                distance(step, range(slot, l), range(slot, l - 1), &self.dist, k * l_n + l);
            }
        }
        lambdas(
            step,
            &self.dist,
            &self.lambda,
            l_n,
            (self.cfg.alpha, self.cfg.depth_slope, self.cfg.normalized),
        );
        for (k, slot) in self.slots.iter().enumerate() {
            // Top down: block l reads block l - 1's gradient before it changes.
            for l in (1..l_n).rev() {
                mix(step, range(slot, l), range(slot, l - 1), &self.lambda, k * l_n + l, self.cfg.mu);
            }
        }
    }

    /// λ per kind, one value per block (read back).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_lambda(&self, gpu: &Gpu) -> Result<LambdaTable> {
        let all = gpu.read_f32(&self.lambda)?;
        Ok(self.kinds().into_iter().zip(all.chunks(self.n_layers).map(<[f32]>::to_vec)).collect())
    }
}
