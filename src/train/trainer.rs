//! The optimizer side of fine-tuning: gradients, AdamW moments and the update, all on the
//! GPU. One [`Trainer::step`] is zeroing the gradients, forward and backward of each
//! micro-batch, the gradient norms with the clip factor, and AdamW on every tensor; with
//! one micro-batch all of it is one command encoder, and only the per-row losses and the
//! per-tensor gradient norms are read back.

use super::graph::{ActivationMemory, TrainGraph};
use crate::cpu::optim::AdamW;
use crate::gpu::{DType, Gpu, Step, Tensor};
use crate::model::layout::Weights;
use crate::model::weights::HostTensor;
use crate::model::GpuModel;
use crate::ops::optim::{adamw, GradNorms};
use anyhow::{bail, Result};

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
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Per-tensor gradient norms, in [`Weights::named`] order.
    pub tensor_norms: Vec<f64>,
    pub tokens: usize,
}

pub struct Trainer<'g> {
    pub gpu: &'g Gpu,
    pub model: GpuModel,
    pub grads: Weights<Tensor>,
    m: Weights<Tensor>,
    v: Weights<Tensor>,
    graph: TrainGraph,
    norms: GradNorms,
    pub config: OptimConfig,
    /// Optimizer updates done so far (AdamW's bias correction uses it).
    pub updates: u32,
}

fn zeros_like(gpu: &Gpu, w: &Weights<Tensor>, what: &str) -> Result<Weights<Tensor>> {
    w.try_map(|name, t| gpu.zeros(&format!("{what} {name}"), &t.shape, DType::F32))
}

impl<'g> Trainer<'g> {
    pub fn new(
        gpu: &'g Gpu,
        model: GpuModel,
        (batch, seq_len): (usize, usize),
        memory: ActivationMemory,
        config: OptimConfig,
    ) -> Result<Trainer<'g>> {
        let graph = TrainGraph::new(gpu, &model, batch, seq_len, memory)?;
        let grads = zeros_like(gpu, &model.weights, "grad")?;
        let sizes: Vec<usize> = grads.named().iter().map(|(_, t)| t.numel()).collect();
        Ok(Trainer {
            gpu,
            m: zeros_like(gpu, &model.weights, "adam m")?,
            v: zeros_like(gpu, &model.weights, "adam v")?,
            norms: GradNorms::new(gpu, &sizes)?,
            grads,
            graph,
            model,
            config,
            updates: 0,
        })
    }

    pub fn graph(&self) -> &TrainGraph {
        &self.graph
    }

    /// GPU memory by purpose: (weights, gradients + AdamW moments, activations).
    pub fn memory_bytes(&self) -> (u64, u64, u64) {
        let sum = |w: &Weights<Tensor>| w.named().iter().map(|(_, t)| t.bytes()).sum::<u64>();
        let weights = sum(&self.model.weights);
        (weights, sum(&self.grads) + sum(&self.m) + sum(&self.v), self.graph.bytes())
    }

    /// One optimizer step over `micro_batches` (each `batch` rows of `seq_len + 1` ids;
    /// more than one is gradient accumulation) at learning rate `lr`.
    pub fn step(&mut self, micro_batches: &[Vec<&[u32]>], lr: f64) -> Result<StepReport> {
        let gpu = self.gpu;
        if micro_batches.is_empty() {
            bail!("a step needs at least one micro-batch");
        }
        // Every input has its next token as target; the loss is the mean over the step.
        let vocab = self.model.config.vocab;
        let targets = micro_batches.len() * self.graph.rows();
        let scale = 1.0 / targets as f32;
        let mut step = Step::new(gpu);
        for (_, g) in self.grads.named() {
            step.clear(g);
        }
        let mut loss_sum = 0.0;
        for (i, mb) in micro_batches.iter().enumerate() {
            // Written before the submit that runs this micro-batch's kernels.
            self.graph.write_batch(gpu, mb, vocab)?;
            self.graph.record(&mut step, &self.model, &self.grads, scale);
            if i + 1 < micro_batches.len() {
                std::mem::replace(&mut step, Step::new(gpu)).submit()?;
                loss_sum += self.graph.read_loss_sum(gpu)?;
            }
        }
        let grads = self.grads.named();
        self.norms.record(
            &mut step,
            &grads.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
            self.config.grad_clip,
        );
        let t = self.updates + 1;
        let params = self.model.weights.named();
        let (ms, vs) = (self.m.named(), self.v.named());
        for (i, (name, p)) in params.iter().enumerate() {
            let decay = if self.config.decay_norms_biases || p.shape.len() > 1 {
                self.config.adamw.weight_decay
            } else {
                0.0
            };
            let o = AdamW { lr, ..self.config.adamw };
            debug_assert_eq!(name, &grads[i].0);
            adamw(
                &mut step,
                &o,
                t,
                decay,
                (p, grads[i].1),
                (ms[i].1, vs[i].1),
                (&self.norms.out, self.norms.scale_at()),
            );
        }
        step.submit()?;
        loss_sum += self.graph.read_loss_sum(gpu)?;
        self.updates = t;
        let norms = gpu.read_f32(&self.norms.out)?;
        let n = params.len();
        Ok(StepReport {
            loss: loss_sum / targets as f64,
            grad_norm: norms[n] as f64,
            tensor_norms: norms[..n].iter().map(|&s| (s as f64).sqrt()).collect(),
            tokens: micro_batches.len() * self.graph.rows(),
        })
    }

    /// Copies a set of GPU tensors back to the host, named as Keel names them.
    pub fn download(&self, w: &Weights<Tensor>) -> Result<Weights<HostTensor>> {
        w.try_map(|name, t| Ok(HostTensor::new(name, t.shape.clone(), self.gpu.read_f32(t)?)))
    }

    /// The current weights and AdamW moments (m, v), for a checkpoint.
    pub fn state(&self) -> Result<[Weights<HostTensor>; 3]> {
        Ok([self.download(&self.model.weights)?, self.download(&self.m)?, self.download(&self.v)?])
    }

    /// Restores the AdamW moments and update count saved by a checkpoint.
    pub fn restore_moments(
        &mut self,
        m: &Weights<HostTensor>,
        v: &Weights<HostTensor>,
        updates: u32,
    ) -> Result<()> {
        for (dst, src) in [(&self.m, m), (&self.v, v)] {
            for ((name, t), (_, h)) in dst.named().into_iter().zip(src.named()) {
                if t.shape != h.shape {
                    bail!("optimizer state '{name}' has shape {:?}, the model needs {:?}", h.shape, t.shape);
                }
                self.gpu.write_f32(t, &h.data);
            }
        }
        self.updates = updates;
        Ok(())
    }
}
