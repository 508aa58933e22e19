//! The optimizer side of fine-tuning: gradients, AdamW moments and the update, all on the
//! GPU. One [`Trainer::step`] is zeroing the gradients, forward and backward of each
//! micro-batch, the gradient norms with the clip factor, and AdamW on every tensor; with
//! one micro-batch all of it is one command encoder, and only the per-row losses and the
//! per-tensor gradient norms are read back.

use super::constrict::{ConstrictConfig, Hgc, HgcOn};
use super::data::Row;
use super::graph::{ActivationMemory, TrainGraph, Trained};
use super::precision::{LossScaler, Precision};
use crate::gpu::WeightFormat;
use crate::gpu::{DType, Gpu, Sharded, Step, Tensor};
use crate::model::adapter::Lora;
use crate::model::layout::Weights;
use crate::model::lora::BlockLora;
use crate::model::weights::HostTensor;
use crate::model::GpuModel;
use crate::modulate::LcmConfig;
use crate::ops::cgfm::adaptive_lr;
use crate::ops::optim::AdamW;
use crate::ops::optim::{adamw, adamw_apply, adamw_direction, GradNorms};
use anyhow::{anyhow, bail, Result};

/// The optimizer's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    pub adamw: AdamW,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f32,
    /// Apply weight decay to norm weights and biases too (the default, as the golden's
    /// torch AdamW over all parameters does).
    pub decay_norms_biases: bool,
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Mean loss over the step's targets, from this step's forward pass (before its update).
    pub loss: f64,
    /// The alignment loss of the step (0 when off); the differentiated loss is the sum.
    pub align_loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate of the update: the one asked for, or CGFM's adaptive step.
    pub lr: f64,
    /// Per-tensor gradient norms, in [`Weights::named`] order.
    pub tensor_norms: Vec<f64>,
    pub tokens: usize,
    /// Mixed precision: the loss scale the step's gradients were computed with.
    pub loss_scale: Option<f64>,
    /// Mixed precision: the gradients were not finite, so nothing was updated (no weight, no
    /// AdamW moment, no update count) and the loss scale halved.
    pub skipped: bool,
}

/// What to fine-tune.
pub enum Method {
    /// Every weight.
    Full,
    /// Low-rank adapters over the frozen model.
    Lora(Lora),
}

/// One trained tensor with its gradient and AdamW moments, in the same row shards.
struct Param {
    name: String,
    value: Sharded,
    grad: Sharded,
    m: Sharded,
    v: Sharded,
}

impl Param {
    /// (value, gradient, m, v) of each row shard.
    fn shards(&self) -> impl Iterator<Item = (&Tensor, &Tensor, &Tensor, &Tensor)> {
        let parts = [&self.value, &self.grad, &self.m, &self.v].map(|t| &t.shards);
        (0..parts[0].len()).map(move |i| (&parts[0][i], &parts[1][i], &parts[2][i], &parts[3][i]))
    }
}

pub struct Trainer<'g> {
    pub gpu: &'g Gpu,
    pub model: GpuModel,
    /// Gradients of every weight (full fine-tuning).
    pub grads: Option<Weights<Sharded>>,
    /// Adapters per block (LoRA).
    pub lora: Vec<BlockLora>,
    /// LoRA's (rank, alpha) (read when saving adapters, which the browser does not do).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    lora_shape: Option<(usize, f32)>,
    params: Vec<Param>,
    graph: TrainGraph,
    norms: GradNorms,
    pub config: OptimConfig,
    /// Optimizer updates done so far (AdamW's bias correction uses it).
    pub updates: u32,
    /// Gradient constriction between the backward pass and clipping, when on.
    hgc: Option<Hgc>,
    /// CGFM's adaptive step size, when on.
    adaptive: Option<AdaptiveLr>,
    /// Mixed precision's loss scale (None: f32 training).
    pub scaler: Option<LossScaler>,
}

/// Why HGC and mixed precision do not combine.
const HGC_MIXED: &str = "--precision mixed does not combine with HGC (--hgc-alpha, --hgc-mu) yet: HGC's λ would read the loss-scaled gradients";

/// The adaptive step size's clamps and GPU state `[G_ref, adjusted lr]`; `reference` is
/// G_ref once a step has set it (read back with the step's scalars, kept in checkpoints).
struct AdaptiveLr {
    clamp: (f64, f64),
    state: Tensor,
    reference: Option<f32>,
}

impl<'g> Trainer<'g> {
    pub fn new(
        gpu: &'g Gpu,
        model: GpuModel,
        (batch, seq_len): (usize, usize),
        memory: ActivationMemory,
        config: OptimConfig,
        method: Method,
    ) -> Result<Trainer<'g>> {
        // Full fine-tuning updates every weight in f32; LoRA reads a packed base as it is.
        let formats = model.formats();
        if matches!(method, Method::Full) && formats != (WeightFormat::F32, WeightFormat::F32) {
            bail!(
                "full fine-tuning trains f32 weights, not {} ones: use --weights f32 (or auto), or train LoRA adapters over the packed weights with --lora-rank",
                if formats.0 == WeightFormat::F32 { formats.1.name() } else { formats.0.name() }
            );
        }
        let graph = TrainGraph::new(gpu, &model, batch, seq_len, memory)?;
        let mut trained: Vec<(String, Sharded, Sharded)> = Vec::new();
        let mut lora_shape = None;
        let (grads, lora) = match method {
            Method::Full => {
                let grads = model
                    .weights
                    .try_map(|name, t| gpu.zeros_sharded(&format!("grad {name}"), &t.shape, DType::F32))?;
                for ((name, value), (_, grad)) in model.weights.named().into_iter().zip(grads.named()) {
                    trained.push((name, value.clone(), grad.clone()));
                }
                (Some(grads), Vec::new())
            }
            Method::Lora(lora) => {
                let c = &model.config;
                if lora.blocks.len() != c.layers {
                    bail!("LoRA adapters for {} blocks, the model has {}", lora.blocks.len(), c.layers);
                }
                let rows = graph.rows();
                let dt = gpu.zeros("lora dt", &[rows, lora.rank], DType::F32)?;
                let mut blocks = Vec::new();
                for (l, pairs) in lora.blocks.iter().enumerate() {
                    let b = BlockLora::new(gpu, pairs, (lora.rank, lora.scale()), rows, &dt)?;
                    for (i, layer) in b.layers.iter().enumerate() {
                        let (a, da) = (Sharded::one(layer.a.clone()), Sharded::one(layer.da.clone()));
                        let (b, db) = (Sharded::one(layer.b.clone()), Sharded::one(layer.db.clone()));
                        trained.push((format!("blocks.{l}.lora.{i}.A"), a, da));
                        trained.push((format!("blocks.{l}.lora.{i}.B"), b, db));
                    }
                    blocks.push(b);
                }
                lora_shape = Some((lora.rank, lora.alpha));
                (None, blocks)
            }
        };
        let mut params = Vec::new();
        for (name, value, grad) in trained {
            let moment =
                |what: &str| gpu.zeros_sharded(&format!("adam {what} {name}"), &value.shape, DType::F32);
            params.push(Param { m: moment("m")?, v: moment("v")?, name, value, grad });
        }
        let sizes: Vec<Vec<usize>> =
            params.iter().map(|p| p.grad.shards.iter().map(Tensor::numel).collect()).collect();
        Ok(Trainer {
            gpu,
            norms: GradNorms::new(gpu, &sizes)?,
            grads,
            lora,
            lora_shape,
            params,
            graph,
            model,
            config,
            updates: 0,
            hgc: None,
            adaptive: None,
            scaler: None,
        })
    }

    /// Trains in `precision` (see [`super::precision`]); mixed starts at the initial loss scale.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::Mixed && self.hgc.is_some() {
            bail!("{HGC_MIXED}");
        }
        self.scaler = (precision == Precision::Mixed).then(LossScaler::default);
        Ok(())
    }

    /// Restores the loss scale and its count of good steps (resuming a mixed-precision run).
    pub fn restore_loss_scale(&mut self, saved: LossScaler) -> Result<()> {
        let Some(scaler) = &mut self.scaler else { bail!("no loss scale to restore: the run is f32") };
        *scaler = saved;
        Ok(())
    }

    /// A step whose products take the run's precision.
    fn new_step(&self) -> Step<'g> {
        let mut step = Step::new(self.gpu);
        step.f16_operands = self.scaler.is_some();
        step
    }

    /// Names of the trained tensors, in the order of [`StepReport::tensor_norms`].
    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// Turns on the constriction options (methods.md sections 2-3); the default config
    /// leaves plain fine-tuning, bit for bit. CGFM's re-weighting needs full fine-tuning.
    pub fn set_constrict(&mut self, cfg: &ConstrictConfig) -> Result<()> {
        let gpu = self.gpu;
        let model = &self.model.config;
        cfg.validate(model)?;
        if cfg.cgfm.splits() && self.grads.is_none() {
            bail!("--cgfm-local / --cgfm-global re-weight the model's weight gradients: use them with full fine-tuning, not LoRA");
        }
        self.graph.set_cgfm(gpu, &self.model, (cfg.cgfm.local, cfg.cgfm.global))?;
        self.graph.set_align(gpu, &self.model, cfg.align_beta)?;
        if self.scaler.is_some() && !cfg.hgc.is_off() {
            bail!("{HGC_MIXED}");
        }
        self.hgc = match (&self.grads, cfg.hgc.is_off()) {
            (_, true) => None,
            (Some(g), false) => Some(Hgc::for_weights(gpu, cfg.hgc, model, g)?),
            (None, false) => Some(Hgc::for_lora(gpu, cfg.hgc, model, &self.lora)?),
        };
        self.adaptive = match cfg.cgfm.adaptive_lr {
            Some(clamp) => {
                let state = gpu.zeros("adaptive lr", &[2], DType::F32)?;
                Some(AdaptiveLr { clamp, state, reference: None })
            }
            None => None,
        };
        Ok(())
    }

    /// λ of the last step per weight kind and block, when HGC is on.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn hgc_lambda(&self) -> Result<Option<super::constrict::LambdaTable>> {
        self.hgc.as_ref().map(|h| h.read_lambda(self.gpu)).transpose()
    }

    /// The adaptive step size's reference norm G_ref, once the first step has set it.
    pub fn lr_reference(&self) -> Option<f32> {
        self.adaptive.as_ref().and_then(|a| a.reference)
    }

    /// Restores G_ref (resuming a run with the adaptive step size on).
    pub fn restore_lr_reference(&mut self, reference: f32) -> Result<()> {
        let Some(a) = &mut self.adaptive else { bail!("no adaptive step size to restore") };
        self.gpu.write_f32(&a.state, &[reference, 0.0]);
        a.reference = Some(reference);
        Ok(())
    }

    /// The LM head's chunk of rows ([`TrainGraph::set_head_chunk_rows`]).
    pub fn set_head_chunk_rows(&mut self, rows: usize) -> Result<()> {
        self.graph.set_head_chunk_rows(self.gpu, rows)
    }

    /// Trains with LCM on (a config that is off changes nothing).
    pub fn set_lcm(&mut self, cfg: &LcmConfig) -> Result<()> {
        self.graph.set_lcm(self.gpu, &self.model, cfg)
    }

    /// GPU memory by purpose: (model weights, trained tensors with their gradients and
    /// AdamW moments, activations and working space).
    pub fn memory_bytes(&self) -> (u64, u64, u64) {
        let weights = self.model.weights.named().iter().map(|(_, t)| t.bytes()).sum::<u64>();
        let mut trained: u64 = self.params.iter().map(|p| p.grad.bytes() + p.m.bytes() + p.v.bytes()).sum();
        // Adapters (and LoRA's per-block saved products) live beside the frozen model.
        trained += self.lora.iter().map(BlockLora::bytes).sum::<u64>();
        (weights, trained, self.graph.bytes())
    }

    /// One optimizer step over `micro_batches` (each `batch` rows of `seq_len + 1` ids, as
    /// slices or [`Row`]s; more than one is gradient accumulation) at learning rate `lr`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step<'r, R: Into<Row<'r>> + Copy>(
        &mut self,
        micro_batches: &[Vec<R>],
        lr: f64,
    ) -> Result<StepReport> {
        pollster::block_on(self.step_async(micro_batches, lr))
    }

    /// [`Trainer::step`], awaiting its read-backs (the browser cannot block).
    pub async fn step_async<'r, R: Into<Row<'r>> + Copy>(
        &mut self,
        micro_batches: &[Vec<R>],
        lr: f64,
    ) -> Result<StepReport> {
        let gpu = self.gpu;
        if micro_batches.is_empty() {
            bail!("a step needs at least one micro-batch");
        }
        let micro_batches: Vec<Vec<Row>> =
            micro_batches.iter().map(|mb| mb.iter().map(|&r| r.into()).collect()).collect();
        // Each input has its next token as target unless its row leaves it out; the loss is
        // the mean over the step's targets.
        let vocab = self.model.config.vocab;
        let targets: usize = micro_batches.iter().flatten().map(Row::targets).sum();
        if targets == 0 {
            bail!("a step needs at least one target");
        }
        let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
        // The loss's gradient is the mean's, times the loss scale (mixed precision).
        let scale = loss_scale / targets as f32;
        let mut step = self.new_step();
        for g in self.params.iter().flat_map(|p| &p.grad.shards) {
            step.clear(g);
        }
        let trained = match &self.grads {
            Some(g) => Trained::Full(g),
            None => Trained::Lora(&self.lora),
        };
        let mut loss_sum = 0.0;
        let mut align_sum = 0.0;
        for (i, mb) in micro_batches.iter().enumerate() {
            // Written before the submit that runs this micro-batch's kernels.
            self.graph.write_batch(gpu, mb, vocab)?;
            self.graph.record(&mut step, &self.model, trained, scale);
            if i + 1 < micro_batches.len() {
                std::mem::replace(&mut step, self.new_step()).submit()?;
                loss_sum += self.graph.read_loss_sum(gpu).await?;
                align_sum += self.graph.read_align_loss(gpu).await?;
            }
        }
        // Raw gradients (CGFM's re-weighting is in the backward pass) -> HGC -> clipping ->
        // adaptive step size -> AdamW (with HGC on the update: around AdamW's direction).
        let on_update = self.hgc.as_ref().filter(|h| h.cfg.on == HgcOn::Update);
        if let Some(hgc) = &self.hgc {
            hgc.record_lambda(&mut step);
            if on_update.is_none() {
                hgc.record_mix(&mut step);
            }
        }
        let grads: Vec<&[Tensor]> = self.params.iter().map(|p| &p.grad.shards[..]).collect();
        self.norms.record(&mut step, &grads, self.config.grad_clip, 1.0 / loss_scale);
        let n = self.params.len();
        // Mixed precision reads the norms before the update: non-finite gradients skip it.
        let mut skipped = false;
        if let Some(scaler) = &mut self.scaler {
            std::mem::replace(&mut step, Step::new(gpu)).submit()?;
            skipped = !gpu.read_f32_async(&self.norms.out).await?[n].is_finite();
            scaler.update(!skipped);
        }
        let clip = (&self.norms.out, self.norms.multiplier_at());
        if let Some(a) = self.adaptive.as_ref().filter(|_| !skipped) {
            let at = (clip.0, n, self.norms.scale_at());
            adaptive_lr(&mut step, at, &a.state, lr, a.clamp, a.reference.is_none());
        }
        let lr_on_gpu = self.adaptive.as_ref().map(|a| (&a.state, 1));
        let t = self.updates + 1;
        let o = AdamW { lr, ..self.config.adamw };
        let decay_of = |p: &Param| {
            // Norm weights and biases are the 1-D tensors.
            if self.config.decay_norms_biases || p.value.shape.len() > 1 {
                o.weight_decay
            } else {
                0.0
            }
        };
        let split = |p: &&Param| on_update.is_some_and(|h| p.grad.shards.iter().all(|g| h.covers(g)));
        for p in self.params.iter().filter(|_| !skipped) {
            for (value, grad, m, v) in p.shards() {
                if split(&p) {
                    adamw_direction(&mut step, &o, t, grad, (m, v), clip);
                } else {
                    adamw(&mut step, &o, t, decay_of(p), (value, grad), (m, v), clip, lr_on_gpu);
                }
            }
        }
        if let Some(hgc) = on_update {
            hgc.record_mix(&mut step);
            for p in self.params.iter().filter(split) {
                for (value, grad, _, _) in p.shards() {
                    adamw_apply(&mut step, &o, t, decay_of(p), (value, grad), lr_on_gpu);
                }
            }
        }
        step.submit()?;
        loss_sum += self.graph.read_loss_sum(gpu).await?;
        align_sum += self.graph.read_align_loss(gpu).await?;
        if !skipped {
            self.updates = t;
        }
        let norms = gpu.read_f32_async(&self.norms.out).await?;
        let mut lr_used = lr;
        if let Some(a) = self.adaptive.as_mut().filter(|_| !skipped) {
            let state = gpu.read_f32_async(&a.state).await?;
            a.reference = Some(state[0]);
            lr_used = state[1] as f64;
        }
        Ok(StepReport {
            loss: loss_sum / targets as f64,
            align_loss: align_sum,
            grad_norm: norms[n] as f64,
            lr: lr_used,
            tensor_norms: norms[..n].iter().map(|&s| (s as f64).sqrt()).collect(),
            tokens: micro_batches.len() * self.graph.rows(),
            loss_scale: self.scaler.map(|_| loss_scale as f64),
            skipped,
        })
    }

    /// Copies a set of GPU tensors back to the host, named as Keel names them.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download(&self, w: &Weights<Sharded>) -> Result<Weights<HostTensor>> {
        w.try_map(|name, t| Ok(HostTensor::new(name, t.shape.clone(), self.gpu.read_sharded_f32(t)?)))
    }

    /// The mean loss over the targets of `rows` (each `seq_len + 1` ids, as slices or
    /// [`Row`]s) without updating anything: validation. Rows go through in batches of the
    /// training batch size.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate<'r, R: Into<Row<'r>> + Copy>(&self, rows: &[R]) -> Result<f64> {
        pollster::block_on(self.evaluate_async(rows))
    }

    /// [`Trainer::evaluate`], awaiting its read-backs.
    pub async fn evaluate_async<'r, R: Into<Row<'r>> + Copy>(&self, rows: &[R]) -> Result<f64> {
        let rows: Vec<Row> = rows.iter().map(|&r| r.into()).collect();
        let gpu = self.gpu;
        let lora = if self.grads.is_some() { None } else { Some(&self.lora[..]) };
        let mut sum = 0.0;
        for chunk in rows.chunks(self.graph.batch) {
            self.graph.write_batch(gpu, chunk, self.model.config.vocab)?;
            let mut step = self.new_step();
            self.graph.record_forward(&mut step, &self.model, lora, 1.0, None);
            step.submit()?;
            sum += self.graph.read_loss_sum(gpu).await?;
        }
        Ok(sum / rows.iter().map(Row::targets).sum::<usize>().max(1) as f64)
    }

    /// The gradients of the last step, named as [`Trainer::param_names`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn gradients(&self) -> Result<Vec<HostTensor>> {
        let read = |p: &Param| {
            Ok(HostTensor::new(p.name.clone(), p.grad.shape.clone(), self.gpu.read_sharded_f32(&p.grad)?))
        };
        self.params.iter().map(read).collect()
    }

    /// The AdamW moments of every trained tensor, named `NAME.m` and `NAME.v`, for a checkpoint.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn moments(&self) -> Result<Vec<HostTensor>> {
        let mut out = Vec::new();
        for p in &self.params {
            for (suffix, t) in [("m", &p.m), ("v", &p.v)] {
                out.push(HostTensor::new(
                    format!("{}.{suffix}", p.name),
                    t.shape.clone(),
                    self.gpu.read_sharded_f32(t)?,
                ));
            }
        }
        Ok(out)
    }

    /// Restores the AdamW moments (as [`Trainer::moments`] gave them) and the update count.
    pub fn restore_moments(&mut self, saved: &[HostTensor], updates: u32) -> Result<()> {
        for p in &self.params {
            for (suffix, t) in [("m", &p.m), ("v", &p.v)] {
                let name = format!("{}.{suffix}", p.name);
                let h = saved
                    .iter()
                    .find(|h| h.name == name)
                    .ok_or_else(|| anyhow!("optimizer state lacks '{name}'"))?;
                if h.shape != t.shape {
                    bail!("optimizer state '{name}' has shape {:?}, the model needs {:?}", h.shape, t.shape);
                }
                self.gpu.write_rows(t, 0, bytemuck::cast_slice(&h.values()));
            }
        }
        self.updates = updates;
        Ok(())
    }

    /// The trained adapters, read back (None in full fine-tuning).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn adapters(&self) -> Result<Option<Lora>> {
        pollster::block_on(self.adapters_async())
    }

    /// The model with the trained adapters merged into its weights on the GPU (full
    /// fine-tuning: the trained model).
    pub fn into_merged(self) -> Result<GpuModel> {
        // LoRA over a packed base: the kernels write f32, never into packed blocks.
        let formats = self.model.formats();
        if !self.lora.is_empty() && formats != (WeightFormat::F32, WeightFormat::F32) {
            bail!(
                "the adapters merge into f32 weights, and this base is {}: merge on the host (keel merge) instead",
                formats.0.name()
            );
        }
        let mut step = crate::gpu::Step::new(self.gpu);
        for (lora, block) in self.lora.iter().zip(&self.model.weights.blocks) {
            lora.record_merge(&mut step, block);
        }
        step.submit()?;
        Ok(self.model)
    }

    pub async fn adapters_async(&self) -> Result<Option<Lora>> {
        let Some((rank, alpha)) = self.lora_shape else { return Ok(None) };
        let mut blocks = Vec::new();
        for b in &self.lora {
            blocks.push(b.download_async(self.gpu).await?);
        }
        Ok(Some(Lora { rank, alpha, blocks }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::wfmt::random_packed;
    use crate::model::adapter::parse_targets;
    use crate::model::WeightChoice;
    use crate::ops::test_util::{gpu, small_llama};

    /// A tied Llama whose every row is whole K-quant superblocks (256 columns).
    fn whole_superblocks() -> crate::model::ModelConfig {
        small_llama(256, 256, 512, true)
    }

    /// The losses of 10 LoRA steps (rank 4 on every linear) over `model`.
    fn lora_losses(model: GpuModel) -> Vec<f64> {
        let cfg = model.config.clone();
        let lora = Lora::init(&cfg, &parse_targets(&cfg, "all").unwrap(), 4, 8.0, 1).unwrap();
        let adamw = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let opt = OptimConfig { adamw, grad_clip: 1.0, decay_norms_biases: true };
        let mut t =
            Trainer::new(gpu(), model, (2, 16), ActivationMemory::Keep, opt, Method::Lora(lora)).unwrap();
        (0..10)
            .map(|s| {
                let rows: Vec<Vec<u32>> = (0..2)
                    .map(|r| (0..17).map(|i| ((s * 31 + r * 101 + i * 7) % 256) as u32).collect())
                    .collect();
                let batch: Vec<&[u32]> = rows.iter().map(|r| &r[..]).collect();
                t.step(&[batch], 1e-2).unwrap().loss
            })
            .collect()
    }

    /// LoRA over a packed frozen base (every format, the tied head a packed copy of the
    /// embedding) gives the losses of LoRA over the same weights dequantized to f32: the
    /// forward x·Wᵀ and the backward dy·W both read the packed blocks.
    #[test]
    fn lora_over_packed_base_matches_dequantized_f32() {
        let cfg = whole_superblocks();
        let host = crate::model::layout::Weights::random(&cfg, 0);
        for fmt in WeightFormat::ALL.into_iter().filter(|&f| f != WeightFormat::F32) {
            let mut seed = 0;
            let packed = host
                .try_map(|name, t| {
                    seed += 1;
                    Ok(match t.shape[..] {
                        [rows, cols] => HostTensor::packed(
                            name,
                            t.shape.clone(),
                            fmt,
                            random_packed(fmt, rows, cols, seed),
                        ),
                        _ => t.clone(),
                    })
                })
                .unwrap();
            let upload = |choice| GpuModel::upload_weights(gpu(), &cfg, &packed, choice).unwrap();
            let base = upload(WeightChoice::Auto);
            assert_eq!(base.formats(), (fmt, fmt));
            let want = lora_losses(upload(WeightChoice::Format(WeightFormat::F32)));
            let got = lora_losses(base);
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs() / w.abs()).fold(0.0, f64::max);
            eprintln!(
                "{fmt:?}: losses {:.5} -> {:.5}, largest relative difference {worst:.1e}",
                want[0], want[9]
            );
            for (s, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * w.abs(), "{fmt:?} step {s}: packed {g}, f32 {w}");
            }
        }
    }

    /// A tied Llama whose embedding, [1024, 64] f32 (256 KiB), splits into 4 row shards of 256
    /// rows under a 66,000-byte binding (and its Q8_0 head copy into 2), while every other
    /// tensor of a 16-row run fits one.
    fn sharded_vocabulary() -> crate::model::ModelConfig {
        small_llama(1024, 64, 64, true)
    }

    /// The losses of 10 steps (batch 1 × 16) of `method` over `model`.
    fn curve(model: GpuModel, method: Method) -> Vec<f64> {
        let adamw = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let opt = OptimConfig { adamw, grad_clip: 1.0, decay_norms_biases: true };
        let gpu = model.gpu();
        let mut t = Trainer::new(gpu, model, (1, 16), ActivationMemory::Keep, opt, method).unwrap();
        (0..10)
            .map(|s| {
                let row: Vec<u32> = (0..17).map(|i| ((s * 131 + i * 71) % 1024) as u32).collect();
                t.step(&[vec![&row[..]]], 1e-2).unwrap().loss
            })
            .collect()
    }

    /// With the embedding and LM head in row shards, generation, scores and 10-step
    /// fine-tunes (full; LoRA over f32 and over a packed Q8_0 head) give what one tensor each
    /// gives: tokens equal, log-probs and losses within 1e-6 relative.
    #[test]
    fn sharded_vocabulary_tables_match_whole_ones() {
        use crate::generate::{generate, score, GenerateOptions, SamplerConfig};
        let cfg = sharded_vocabulary();
        let host = crate::model::layout::Weights::random(&cfg, 3);
        let sharded = crate::ops::test_util::gpu_with_binding(66_000);
        let close = |what: &str, got: &[f64], want: &[f64]| {
            assert_eq!(got.len(), want.len());
            let worst =
                got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(1.0)).fold(0.0, f64::max);
            eprintln!(
                "{what}: {} values from {:.6} to {:.6}, largest difference {worst:.1e}",
                want.len(),
                want[0],
                want[want.len() - 1]
            );
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{what} {i}: sharded {g}, whole {w}");
            }
        };
        let upload =
            |gpu, fmt| GpuModel::upload_weights(gpu, &cfg, &host, WeightChoice::Format(fmt)).unwrap();
        let (whole, split) = (upload(gpu(), WeightFormat::F32), upload(sharded, WeightFormat::F32));
        assert_eq!((whole.weights.embed.shards.len(), split.weights.embed.shards.len()), (1, 4));
        let prompt = [5u32, 900, 17, 256, 511, 3];
        let sampler = SamplerConfig { seed: 7, ..Default::default() };
        let opts = GenerateOptions { max_tokens: 10, sampler, eos: vec![], lcm: None };
        let tokens = |m: &GpuModel| generate(m.gpu(), m, &prompt, &opts, &mut |_| Ok(())).unwrap();
        assert_eq!(tokens(&split), tokens(&whole), "sampled tokens");
        let greedy =
            GenerateOptions { sampler: SamplerConfig { temperature: 0.0, ..Default::default() }, ..opts };
        let greedy_tokens = |m: &GpuModel| generate(m.gpu(), m, &prompt, &greedy, &mut |_| Ok(())).unwrap();
        assert_eq!(greedy_tokens(&split), greedy_tokens(&whole), "greedy tokens");
        let text: Vec<u32> = (0..16).map(|i| (i * 263 % 1024) as u32).collect();
        let logprobs = |m: &GpuModel| {
            score(m.gpu(), m, &text, None)
                .unwrap()
                .next_logprobs
                .iter()
                .map(|&l| l as f64)
                .collect::<Vec<_>>()
        };
        close("log-prob", &logprobs(&split), &logprobs(&whole));
        close("full fine-tune loss", &curve(split, Method::Full), &curve(whole, Method::Full));
        let lora = || Lora::init(&cfg, &parse_targets(&cfg, "all").unwrap(), 4, 8.0, 1).unwrap();
        for fmt in [WeightFormat::F32, WeightFormat::Q8_0] {
            let (whole, split) = (upload(gpu(), fmt), upload(sharded, fmt));
            if fmt == WeightFormat::Q8_0 {
                assert_eq!(split.head_weight().shards.len(), 2, "the packed head copy");
            }
            let (got, want) = (curve(split, Method::Lora(lora())), curve(whole, Method::Lora(lora())));
            close(&format!("LoRA over {fmt:?} loss"), &got, &want);
        }
    }

    /// Mixed precision: a step whose loss-scaled gradients overflow f16 (the scale set to
    /// 2^40) is skipped: weights and AdamW moments bit for bit as they were, no update
    /// counted, the scale halved and its good steps reset; a step at the default scale updates.
    #[test]
    fn an_overflowing_mixed_precision_step_is_skipped() {
        use crate::train::precision::{LossScaler, Precision};
        let cfg = sharded_vocabulary();
        let host = crate::model::layout::Weights::random(&cfg, 5);
        let model =
            GpuModel::upload_weights(gpu(), &cfg, &host, WeightChoice::Format(WeightFormat::F32)).unwrap();
        let adamw = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let opt = OptimConfig { adamw, grad_clip: 1.0, decay_norms_biases: true };
        let mut t = Trainer::new(gpu(), model, (1, 16), ActivationMemory::Keep, opt, Method::Full).unwrap();
        t.set_precision(Precision::Mixed).unwrap();
        let row: Vec<u32> = (0..17).map(|i| (i * 71 % 1024) as u32).collect();
        let batch = [vec![&row[..]]];
        let first = t.step(&batch, 1e-2).unwrap();
        assert!(!first.skipped && first.grad_norm.is_finite());
        assert_eq!((first.loss_scale, t.updates), (Some(65536.0), 1));
        let state = |t: &Trainer| -> Vec<Vec<u32>> {
            let (weights, moments) = (t.download(&t.model.weights).unwrap(), t.moments().unwrap());
            let tensors = weights.named().into_iter().map(|(_, h)| h.clone()).chain(moments);
            tensors.map(|h| h.values().iter().map(|x| x.to_bits()).collect()).collect()
        };
        let huge = 2f32.powi(40);
        t.restore_loss_scale(LossScaler { scale: huge, good_steps: 7 }).unwrap();
        let before = state(&t);
        let skipped = t.step(&batch, 1e-2).unwrap();
        assert!(skipped.skipped && !skipped.grad_norm.is_finite(), "{skipped:?}");
        assert_eq!(skipped.loss_scale, Some(huge as f64));
        assert!(state(&t) == before, "a skipped step changed weights or AdamW moments");
        assert_eq!((t.updates, t.scaler), (1, Some(LossScaler { scale: huge / 2.0, good_steps: 0 })));
        t.restore_loss_scale(LossScaler::default()).unwrap();
        let next = t.step(&batch, 1e-2).unwrap();
        assert!(!next.skipped && next.grad_norm.is_finite());
        assert!(state(&t) != before && t.updates == 2);
        assert_eq!(t.scaler, Some(LossScaler { scale: 65536.0, good_steps: 1 }));
    }
}
