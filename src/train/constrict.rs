//! Constricted fine-tuning's options (methods.md sections 2-3) and hierarchical gradient
//! constriction over the trained tensors, on the GPU: per weight kind (q, k, v, o, gate, up,
//! down; GPT-2's c_attn, c_proj, c_fc, mlp.c_proj; with LoRA each kind's A and B) a λ per
//! block from the distance to the block below, then the mixed, scaled gradient (or AdamW
//! update). Only the λ table comes back, for the log.

use crate::gpu::{DType, Gpu, Sharded, Step, Tensor};
use crate::model::adapter::{parse_targets, Slot};
use crate::model::layout::Weights;
use crate::model::lora::{BlockLora, LoraLayer};
use crate::model::ModelConfig;
use crate::ops::hgc::{distance, lambdas, mix, GradRange};
use anyhow::{bail, Result};

/// What HGC's λ and μ-mixing act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum HgcOn {
    /// The gradients, before clipping and AdamW (methods.md's reading; the golden runs)
    #[default]
    Gradient,
    /// AdamW's update direction m̂ / (sqrt(v̂) + ε) of each block, which AdamW's own
    /// per-element scaling cannot undo; λ still comes from the gradients
    Update,
}

/// HGC's settings; alpha 0 and mu 0 leave the gradients as they are.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct HgcConfig {
    pub alpha: f32,
    pub mu: f32,
    pub depth_slope: f32,
    /// Divide the squared distance by the product of the two gradients' norms (scale-free α).
    pub normalized: bool,
    pub on: HgcOn,
}

impl HgcConfig {
    pub fn is_off(&self) -> bool {
        self.alpha == 0.0 && self.mu == 0.0
    }

    /// Checks the values on their own (the flags).
    pub fn check(&self) -> Result<()> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            bail!("--hgc-alpha must be 0 or more, got {}", self.alpha);
        }
        if !(0.0..=1.0).contains(&self.mu) {
            bail!("--hgc-mu must be in [0, 1], got {}", self.mu);
        }
        if !(self.depth_slope.is_finite() && self.depth_slope >= 0.0) {
            bail!("--hgc-depth-slope must be 0 or more, got {}", self.depth_slope);
        }
        Ok(())
    }

    /// Checks the values and that `cfg` has blocks to constrict.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        self.check()?;
        if !self.is_off() && cfg.layers < 2 {
            bail!("HGC (--hgc-alpha, --hgc-mu) needs at least two blocks; this model has {}", cfg.layers);
        }
        Ok(())
    }
}

/// CGFM's settings (methods.md section 3); local = global = 1 without the adaptive step is off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CgfmConfig {
    /// Weight of each linear weight gradient's local part (the part the sequence means leave).
    pub local: f32,
    /// Weight of its global part, `Σ_b T · δ̄_b x̄_bᵀ`.
    pub global: f32,
    /// The adaptive step size `lr (1 + ‖G‖ / ‖G_ref‖)` clamped to `(lr_min, lr_max)`.
    pub adaptive_lr: Option<(f64, f64)>,
}

impl Default for CgfmConfig {
    fn default() -> CgfmConfig {
        CgfmConfig { local: 1.0, global: 1.0, adaptive_lr: None }
    }
}

impl CgfmConfig {
    /// Whether the gradients are re-weighted at all.
    pub fn splits(&self) -> bool {
        self.local != 1.0 || self.global != 1.0
    }

    pub fn check(&self) -> Result<()> {
        for (flag, w) in [("--cgfm-local", self.local), ("--cgfm-global", self.global)] {
            if !(w.is_finite() && w >= 0.0) {
                bail!("{flag} must be 0 or more, got {w}");
            }
        }
        if let Some((lo, hi)) = self.adaptive_lr {
            if !(lo.is_finite() && lo > 0.0) {
                bail!("--lr-min must be a positive number, got {lo}");
            }
            if !(hi.is_finite() && hi >= lo) {
                bail!("--lr-max must be at least --lr-min ({lo}), got {hi}");
            }
        }
        Ok(())
    }
}

/// Every constriction option of a fine-tune; the default changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct ConstrictConfig {
    pub hgc: HgcConfig,
    /// Weight of the alignment loss between adjacent block outputs (0: off).
    pub align_beta: f32,
    pub cgfm: CgfmConfig,
}

impl ConstrictConfig {
    /// Checks the values on their own (the flags).
    pub fn check(&self) -> Result<()> {
        self.hgc.check()?;
        if !(self.align_beta.is_finite() && self.align_beta >= 0.0) {
            bail!("--align-beta must be 0 or more, got {}", self.align_beta);
        }
        self.cgfm.check()
    }

    /// Checks the values and that they fit the model.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        self.check()?;
        self.hgc.validate(cfg)
    }

    /// Whether every option is at its neutral value (then the log keeps its plain keys).
    pub fn is_off(&self) -> bool {
        self.hgc.is_off() && self.align_beta == 0.0 && !self.cgfm.splits() && self.cgfm.adaptive_lr.is_none()
    }
}

/// λ per weight kind (Hugging Face module name), one value per block.
pub type LambdaTable = Vec<(String, Vec<f32>)>;

/// One weight kind's tensor in block `l`: `len` elements from `offset` of `t`.
struct Range {
    t: Tensor,
    offset: usize,
    len: usize,
}

/// A weight kind: its name and its range in every block.
struct Kind {
    /// Read only by the host-side λ read-back (the log), which the page does not have.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    name: String,
    blocks: Vec<Range>,
}

pub struct Hgc {
    pub cfg: HgcConfig,
    kinds: Vec<Kind>,
    n_layers: usize,
    dist: Tensor,
    lambda: Tensor,
}

impl Hgc {
    fn new(gpu: &Gpu, cfg: HgcConfig, n_layers: usize, kinds: Vec<Kind>) -> Result<Hgc> {
        let n = kinds.len() * n_layers;
        Ok(Hgc {
            cfg,
            n_layers,
            dist: gpu.zeros("hgc distances", &[3 * n], DType::F32)?,
            lambda: gpu.zeros("hgc lambda", &[n], DType::F32)?,
            kinds,
        })
    }

    /// Over the linear weights' gradients of full fine-tuning: a fused linear's rows per
    /// Hugging Face weight (q, k, v of qkv; gate, up of up).
    pub fn for_weights(
        gpu: &Gpu,
        cfg: HgcConfig,
        model: &ModelConfig,
        grads: &Weights<Sharded>,
    ) -> Result<Hgc> {
        cfg.validate(model)?;
        let range = |slot: &Slot, l: usize| {
            let t = grads.blocks[l].linear(slot.linear);
            let cols = t.shape[1];
            Range { t: (**t).clone(), offset: slot.rows.start * cols, len: slot.rows.len() * cols }
        };
        let kinds = parse_targets(model, "all")?
            .iter()
            .map(|s| Kind {
                name: s.module.to_string(),
                blocks: (0..model.layers).map(|l| range(s, l)).collect(),
            })
            .collect();
        Hgc::new(gpu, cfg, model.layers, kinds)
    }

    /// Over LoRA adapters' gradients: each adapted module's A (`MODULE.lora_A`) and B
    /// (`MODULE.lora_B`) is a weight kind, block to block.
    pub fn for_lora(gpu: &Gpu, cfg: HgcConfig, model: &ModelConfig, lora: &[BlockLora]) -> Result<Hgc> {
        cfg.validate(model)?;
        let whole = |t: &Tensor| Range { t: t.clone(), offset: 0, len: t.numel() };
        let mut kinds = Vec::new();
        for (i, layer) in lora[0].layers.iter().enumerate() {
            let kind = |matrix: &str, grad: fn(&LoraLayer) -> &Tensor| Kind {
                name: format!("{}.lora_{matrix}", layer.slot.module),
                blocks: lora.iter().map(|b| whole(grad(&b.layers[i]))).collect(),
            };
            kinds.push(kind("A", |l| &l.da));
            kinds.push(kind("B", |l| &l.db));
        }
        Hgc::new(gpu, cfg, lora.len(), kinds)
    }

    /// Whether `t` is one of the constricted tensors (all of its elements are).
    pub fn covers(&self, t: &Tensor) -> bool {
        self.kinds.iter().flat_map(|k| &k.blocks).any(|r| r.t.buf == t.buf)
    }

    fn range(&self, k: usize, l: usize) -> GradRange<'_> {
        let r = &self.kinds[k].blocks[l];
        GradRange { t: &r.t, offset: r.offset, len: r.len }
    }

    /// Records λ per (kind, block) from the tensors as they are now (the gradients).
    pub fn record_lambda(&self, step: &mut Step) {
        let l_n = self.n_layers;
        for k in 0..self.kinds.len() {
            for l in 1..l_n {
                distance(step, self.range(k, l), self.range(k, l - 1), &self.dist, k * l_n + l);
            }
        }
        let c = &self.cfg;
        lambdas(step, &self.dist, &self.lambda, l_n, (c.alpha, c.depth_slope, c.normalized));
    }

    /// Records the λ-scaled μ-mixing of the tensors in place (gradients or update directions).
    pub fn record_mix(&self, step: &mut Step) {
        let l_n = self.n_layers;
        for k in 0..self.kinds.len() {
            // Top down: block l reads block l - 1's tensor before it changes.
            for l in (1..l_n).rev() {
                mix(step, self.range(k, l), self.range(k, l - 1), &self.lambda, k * l_n + l, self.cfg.mu);
            }
        }
    }

    /// λ per kind, one value per block (read back).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_lambda(&self, gpu: &Gpu) -> Result<LambdaTable> {
        let all = gpu.read_f32(&self.lambda)?;
        Ok(self
            .kinds
            .iter()
            .map(|k| k.name.clone())
            .zip(all.chunks(self.n_layers).map(<[f32]>::to_vec))
            .collect())
    }
}
