//! The browser build's API (wasm-bindgen): the same engine as the CLI, with the read-backs
//! awaited instead of blocked on. `web/app.js` drives it:
//! `Engine.open()` → `engine.loader()` → `engine.load(loader)` (the [`Loader`] filled file by
//! file and tensor by tensor) → `model.generate(...)` / `model.finetune(...)`.
//! Settings and results cross as JSON strings so that the JS side needs no generated classes
//! beyond these three.

use crate::cpu::optim::AdamW;
use crate::generate::{generate_async, GenerateOptions, SamplerConfig};
use crate::gpu::{AdapterChoice, Gpu};
use crate::model::gguf::{self, GgufFile, GgufReader};
use crate::model::load::{
    gguf_config_and_tokenizer, load_config_and_tokenizer, load_files, parse_config, streamed_tensor,
};
use crate::model::stream::Streamer;
use crate::model::{GpuModel, ModelConfig};
use crate::modulate::LcmConfig;
use crate::tokenize::{TextStream, Tokenizer};
use crate::train::data::{pack_text, TrainData};
use crate::train::graph::ActivationMemory;
use crate::train::trainer::{Method, OptimConfig, Trainer};
use anyhow::{anyhow, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

fn js_err(e: anyhow::Error) -> JsValue {
    JsError::new(&format!("{e:#}")).into()
}

/// The WebGPU device (one per page).
#[wasm_bindgen]
pub struct Engine {
    gpu: &'static Gpu,
}

#[wasm_bindgen]
impl Engine {
    /// Opens the adapter and device; fails in words when WebGPU or an adapter is missing.
    pub async fn open() -> Result<Engine, JsValue> {
        let gpu = Gpu::new(&AdapterChoice(None)).await.map_err(js_err)?;
        // The page keeps one device for its lifetime; sessions borrow it.
        Ok(Engine { gpu: Box::leak(Box::new(gpu)) })
    }

    /// The adapter's name and the limits Keel got, as JSON.
    pub fn adapter(&self) -> String {
        let (i, l) = (&self.gpu.info, &self.gpu.limits);
        json!({
            "name": i.name, "backend": format!("{:?}", i.backend), "device_type": format!("{:?}", i.device_type),
            "driver": i.driver, "shader_f16": self.gpu.features.contains(wgpu::Features::SHADER_F16),
            "max_buffer_size": l.max_buffer_size,
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
            "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
            "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
        })
        .to_string()
    }

    /// A loader for one model's files.
    pub fn loader(&self) -> Loader {
        Loader { gpu: self.gpu, files: HashMap::new(), stream: None, gguf: None }
    }

    /// The model the loader was given: its streamed weights (safetensors tensors, or a
    /// GGUF's chunks), or its files given whole, read and uploaded.
    pub fn load(&self, loader: Loader) -> Result<Model, JsValue> {
        let (config, tokenizer, gpu_model) = match (loader.gguf, loader.stream) {
            (Some((name, reader)), stream) => {
                let header = reader.finish().map_err(js_err)?;
                let (config, tokenizer) =
                    gguf_config_and_tokenizer(&loader.files, &header, &name).map_err(js_err)?;
                let stream = match stream {
                    Some(stream) => stream,
                    None => gguf_streamer(self.gpu, &header, &name).map_err(js_err)?,
                };
                let gpu_model = stream.finish(self.gpu, &config).map_err(js_err)?;
                (config, tokenizer, gpu_model)
            }
            (None, Some(stream)) => {
                let (config, tokenizer) = load_config_and_tokenizer(&loader.files).map_err(js_err)?;
                let gpu_model = stream.finish(self.gpu, &config).map_err(js_err)?;
                (config, tokenizer, gpu_model)
            }
            (None, None) => {
                let host = load_files(&loader.files).map_err(js_err)?;
                let gpu_model =
                    GpuModel::upload(self.gpu, &host).map_err(|e| js_err(does_not_fit(e.into())))?;
                (host.config, host.tokenizer, gpu_model)
            }
        };
        self.gpu.check_lost().map_err(js_err)?;
        let gpu_model = Rc::new(gpu_model);
        Ok(Model {
            gpu: self.gpu,
            host: Rc::new(Host { config, tokenizer }),
            loaded: gpu_model.clone(),
            gpu_model: Rc::new(RefCell::new(gpu_model)),
        })
    }
}

/// A model's files as they arrive: whole small files (config.json, tokenizer.json), and the
/// weights tensor by tensor, each written into its GPU buffer as it comes, so that no weights
/// file is ever whole in memory: safetensors tensors one at a time (config.json must come
/// before them), or a .gguf's bytes in chunks, in order ([`GgufReader`]: its config and
/// vocabulary come from its header).
#[wasm_bindgen]
pub struct Loader {
    gpu: &'static Gpu,
    files: HashMap<String, Vec<u8>>,
    /// The GPU tensors being filled, from the first tensor on (a GGUF's: from its header on).
    stream: Option<Streamer>,
    /// The .gguf file being read, by name.
    gguf: Option<(String, GgufReader)>,
}

/// The empty GPU tensors of a GGUF model, from its header: packed where its file packs them.
fn gguf_streamer(gpu: &Gpu, header: &GgufFile, name: &str) -> Result<Streamer> {
    let hf_config = gguf::hf_config(header).map_err(|e| anyhow!("{name}: {e:#}"))?;
    let config = ModelConfig::from_hf(&hf_config, name)?;
    let formats = gguf::hf_formats(header).map_err(|e| anyhow!("{name}: {e:#}"))?;
    Streamer::new(gpu, &config, &formats).map_err(does_not_fit)
}

/// A model's GPU tensors refused by the adapter (their binding limit), said so.
fn does_not_fit(e: anyhow::Error) -> anyhow::Error {
    anyhow!("the model does not fit this adapter: {e:#}")
}

#[wasm_bindgen]
impl Loader {
    /// A whole file of the model's folder, by name.
    pub fn file(&mut self, name: String, bytes: Vec<u8>) {
        self.files.insert(name, bytes);
    }

    /// Starts .gguf file `name` of `size` bytes; its bytes then come through
    /// [`Loader::gguf_chunk`].
    pub fn gguf_begin(&mut self, name: String, size: f64) -> Result<(), JsValue> {
        if let Some((other, _)) = &self.gguf {
            return Err(js_err(anyhow!("several .gguf files ({other}, {name}); give one")));
        }
        if self.stream.is_some() {
            return Err(js_err(anyhow!("{name} and safetensors tensors: give one model's weights")));
        }
        self.gguf = Some((name.clone(), GgufReader::new(&name, size as u64)));
        Ok(())
    }

    /// The .gguf file's next bytes, in order: each tensor they complete is written into its
    /// GPU buffer and dropped.
    pub fn gguf_chunk(&mut self, bytes: &[u8]) -> Result<(), JsValue> {
        let (gpu, stream) = (self.gpu, &mut self.stream);
        let (name, reader) =
            self.gguf.as_mut().ok_or_else(|| js_err(anyhow!("GGUF bytes came before gguf_begin")))?;
        let mut place = |header: &GgufFile, t| {
            let stream = match stream {
                Some(stream) => stream,
                None => stream.insert(gguf_streamer(gpu, header, name)?),
            };
            stream.tensor(gpu, name, t)
        };
        reader.push(bytes, &mut place).map_err(js_err)?;
        // A header the model cannot load from is refused before its weights are read.
        if let (Some(header), None) = (reader.header(), &*stream) {
            *stream = Some(gguf_streamer(gpu, header, name).map_err(js_err)?);
        }
        Ok(())
    }

    /// One tensor of safetensors file `file`, as its header entry describes it.
    pub fn tensor(
        &mut self,
        file: &str,
        name: &str,
        dtype: &str,
        shape: Vec<u32>,
        bytes: &[u8],
    ) -> Result<(), JsValue> {
        let shape = shape.into_iter().map(|d| d as usize).collect();
        if let Some((gguf, _)) = &self.gguf {
            return Err(js_err(anyhow!("{file} and {gguf}: give one model's weights")));
        }
        let t = streamed_tensor(file, name, dtype, shape, bytes).map_err(js_err)?;
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let bytes = self.files.get("config.json").ok_or_else(|| {
                    js_err(anyhow!(
                        "{file}: tensor '{name}' arrived without config.json, which says where it goes (the page sends config.json first)"
                    ))
                })?;
                let config = parse_config(bytes, "config.json").map_err(js_err)?;
                let stream = Streamer::new(self.gpu, &config, &Default::default())
                    .map_err(|e| js_err(does_not_fit(e)))?;
                self.stream.insert(stream)
            }
        };
        stream.tensor(self.gpu, file, t).map_err(js_err)
    }
}

/// What the host keeps of a model: no weights.
struct Host {
    config: ModelConfig,
    tokenizer: Tokenizer,
}

/// A loaded model (its weights on the GPU, its tokenizer on the host).
#[wasm_bindgen]
pub struct Model {
    gpu: &'static Gpu,
    host: Rc<Host>,
    /// The weights as loaded: each fine-tune starts from a GPU copy of them.
    loaded: Rc<GpuModel>,
    /// Replaced by the fine-tuned weights after [`Model::finetune`].
    gpu_model: Rc<RefCell<Rc<GpuModel>>>,
}

/// One generation's settings as the page sends them.
#[derive(Deserialize)]
struct GenerateRequest {
    prompt: String,
    max_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    #[serde(default = "one")]
    repetition_penalty: f32,
    seed: u64,
    /// The golden files' `lcm_config` keys; null or absent: no modulation.
    #[serde(default)]
    lcm: Option<Value>,
}

fn one() -> f32 {
    1.0
}

/// Fine-tuning settings as the page sends them.
#[derive(Deserialize)]
struct FinetuneRequest {
    text: String,
    steps: usize,
    lr: f64,
    batch: usize,
    seq_len: usize,
}

#[wasm_bindgen]
impl Model {
    /// Sizes and names, as JSON.
    pub fn info(&self) -> String {
        let c = &self.host.config;
        let params: usize = self.loaded.weights.named().iter().map(|(_, t)| t.numel()).sum();
        json!({"arch": format!("{:?}", c.arch), "layers": c.layers, "hidden": c.hidden, "vocab": c.vocab,
               "context": c.max_positions, "params": params, "eos": c.eos})
        .to_string()
    }

    /// Generates from `request` (JSON, see [`GenerateRequest`]); calls
    /// `on_token(id, text, entropy, logprob)` per token, where entropy and log-prob (nats)
    /// come from the distribution the token was picked from. Resolves to `{"prompt_ids", "ids", "text"}`.
    pub fn generate(&self, request: String, on_token: js_sys::Function) -> js_sys::Promise {
        let (gpu, host, model) = (self.gpu, self.host.clone(), self.gpu_model.borrow().clone());
        wasm_bindgen_futures::future_to_promise(async move {
            let run = async {
                let r: GenerateRequest = serde_json::from_str(&request)?;
                let lcm = r.lcm.as_ref().map(|v| LcmConfig::from_json(v, "LCM settings")).transpose()?;
                if let Some(c) = &lcm {
                    c.validate(host.config.layers)?;
                }
                let sampler = SamplerConfig {
                    temperature: r.temperature,
                    top_k: r.top_k,
                    top_p: r.top_p,
                    repetition_penalty: r.repetition_penalty,
                    seed: r.seed,
                    ..SamplerConfig::default()
                };
                sampler.validate()?;
                let tok = &host.tokenizer;
                let prompt_ids = tok.encode(&r.prompt)?;
                let opts =
                    GenerateOptions { max_tokens: r.max_tokens, sampler, eos: host.config.eos.clone(), lcm };
                let mut stream = TextStream::new(tok);
                let ids = generate_async(gpu, &model, &prompt_ids, &opts, &mut |pick| {
                    let text = stream.push(pick.id)?;
                    let (entropy, logprob) = (pick.entropy as f64, pick.logprob as f64);
                    let args: [JsValue; 4] = [pick.id.into(), text.into(), entropy.into(), logprob.into()];
                    on_token
                        .apply(&JsValue::NULL, &args.into_iter().collect::<js_sys::Array>())
                        .map_err(|e| anyhow!("the page's token callback failed: {e:?}"))?;
                    Ok(())
                })
                .await?;
                gpu.check_lost()?;
                let text = tok.decode(&ids)?;
                Ok::<_, anyhow::Error>(
                    json!({"prompt_ids": prompt_ids, "ids": ids, "text": text}).to_string(),
                )
            };
            run.await.map(JsValue::from).map_err(js_err)
        })
    }

    /// Fine-tunes every weight on `request.text` (JSON, see [`FinetuneRequest`]) with the
    /// CLI's trainer; calls `on_step(step, loss)` after each step. The model then generates
    /// with the trained weights. Resolves to the list of losses (JSON).
    pub fn finetune(&self, request: String, on_step: js_sys::Function) -> js_sys::Promise {
        let (gpu, host, loaded, slot) =
            (self.gpu, self.host.clone(), self.loaded.clone(), self.gpu_model.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            let run = async {
                let r: FinetuneRequest = serde_json::from_str(&request)?;
                let rows =
                    pack_text(&r.text, "the training text", &host.tokenizer, r.seq_len, host.config.vocab)?;
                let data = TrainData::from_rows(rows, r.seq_len)?;
                // Packed (GGUF) weights are trained as f32 copies, dequantized on the GPU.
                let start = loaded.duplicate_f32(gpu)?;
                let optim = OptimConfig {
                    adamw: AdamW { lr: r.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
                    grad_clip: 1.0,
                    decay_norms_biases: true,
                };
                let batch = r.batch.min(data.len()).max(1);
                let mut trainer = Trainer::new(
                    gpu,
                    start,
                    (batch, r.seq_len),
                    ActivationMemory::Keep,
                    optim,
                    Method::Full,
                )?;
                let mut losses = Vec::new();
                for step in 0..r.steps {
                    let rows = data.batch(step, batch, true, 0);
                    let report = trainer.step_async(&[rows], r.lr).await?;
                    losses.push(report.loss);
                    on_step
                        .call2(&JsValue::NULL, &(step as u32).into(), &report.loss.into())
                        .map_err(|e| anyhow!("the page's step callback failed: {e:?}"))?;
                }
                gpu.check_lost()?;
                *slot.borrow_mut() = Rc::new(trainer.model);
                Ok::<_, anyhow::Error>(json!(losses).to_string())
            };
            run.await.map(JsValue::from).map_err(js_err)
        })
    }
}
