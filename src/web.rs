//! The browser build's API (wasm-bindgen): the same engine as the CLI, with the read-backs
//! awaited instead of blocked on. The npm package's `web/package/index.js` wraps it (and the
//! demo page uses that): `Engine.open()` → `engine.loader()` → `engine.load(loader)` (the
//! [`Loader`] filled file by file and tensor by tensor) → `model.generate(...)` /
//! `model.finetune(...)` / `model.release()`. Settings and results cross as plain JS objects
//! (through their JSON form: functions and signals stay on the JS side).

use crate::chat::ChatTemplate;
use crate::generate::{generate_async, GenerateOptions, SamplerConfig};
use crate::gpu::{AdapterChoice, Gpu};
use crate::model::adapter::{parse_targets, Lora};
use crate::model::gguf::{self, GgufFile, GgufReader};
use crate::model::load::{
    gguf_config_and_tokenizer, load_config_and_tokenizer, load_files, parse_config, parse_generation_config,
    streamed_tensor, GenerationDefaults,
};
use crate::model::stream::Streamer;
use crate::model::{GpuModel, ModelConfig, WeightChoice};
use crate::modulate::LcmConfig;
use crate::ops::optim::AdamW;
use crate::tokenize::{TextStream, Tokenizer};
use crate::train::data::{pack_text, TrainData};
use crate::train::graph::ActivationMemory;
use crate::train::trainer::{Method, OptimConfig, Trainer};
use anyhow::{anyhow, bail, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

fn js_err(e: anyhow::Error) -> JsValue {
    JsError::new(&format!("{e:#}")).into()
}

/// A plain JS object (settings) as `T`, through its JSON form; `what` names it in errors.
fn from_js<T: DeserializeOwned>(value: &JsValue, what: &str) -> Result<T> {
    let text = js_sys::JSON::stringify(value).map_err(|_| anyhow!("{what}: not a plain object"))?;
    serde_json::from_str(&String::from(text)).map_err(|e| anyhow!("{what}: {e}"))
}

/// A JSON value as a plain JS object.
fn to_js(value: &Value) -> Result<JsValue, JsValue> {
    js_sys::JSON::parse(&value.to_string())
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

    /// The adapter's name and the limits Keel got.
    pub fn adapter(&self) -> Result<JsValue, JsValue> {
        let (i, l) = (&self.gpu.info, &self.gpu.limits);
        to_js(&json!({
            "name": i.name, "backend": format!("{:?}", i.backend), "device_type": format!("{:?}", i.device_type),
            "driver": i.driver, "shader_f16": self.gpu.features.contains(wgpu::Features::SHADER_F16),
            "max_buffer_size": l.max_buffer_size,
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
            "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
            "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
        }))
    }

    /// A loader for one model's files.
    pub fn loader(&self) -> Loader {
        Loader { gpu: self.gpu, files: HashMap::new(), stream: None, gguf: None }
    }

    /// The model the loader was given: its streamed weights (safetensors tensors, or a
    /// GGUF's chunks), or its files given whole, read and uploaded. Its chat template comes
    /// from tokenizer_config.json when given, else from the GGUF's `tokenizer.chat_template`.
    pub fn load(&self, loader: Loader) -> Result<Model, JsValue> {
        let (config, tokenizer, gpu_model, gguf_header) = match (loader.gguf, loader.stream) {
            (Some((name, reader)), stream) => {
                let header = reader.finish().map_err(js_err)?;
                let (config, tokenizer) =
                    gguf_config_and_tokenizer(&loader.files, &header, &name).map_err(js_err)?;
                let stream = match stream {
                    Some(stream) => stream,
                    None => gguf_streamer(self.gpu, &header, &name).map_err(js_err)?,
                };
                let gpu_model = stream.finish(self.gpu, &config).map_err(js_err)?;
                (config, tokenizer, gpu_model, Some((name, header)))
            }
            (None, Some(stream)) => {
                let (config, tokenizer) = load_config_and_tokenizer(&loader.files).map_err(js_err)?;
                let gpu_model = stream.finish(self.gpu, &config).map_err(js_err)?;
                (config, tokenizer, gpu_model, None)
            }
            (None, None) => {
                let host = load_files(&loader.files).map_err(js_err)?;
                let gpu_model =
                    GpuModel::upload(self.gpu, &host).map_err(|e| js_err(does_not_fit(e.into())))?;
                (host.info.config, host.info.tokenizer, gpu_model, None)
            }
        };
        let loaded = Rc::new(Owned { model: gpu_model, base: None });
        let template = match loader.files.get("tokenizer_config.json") {
            Some(bytes) => ChatTemplate::from_tokenizer_config(bytes, "tokenizer_config.json"),
            None => Ok(None),
        };
        let template = match (template.map_err(js_err)?, gguf_header) {
            (None, Some((name, header))) => {
                ChatTemplate::from_gguf_header(&header, &name, &|id| tokenizer.token_text(id))
                    .map_err(js_err)?
            }
            (template, _) => template,
        };
        let generation = match loader.files.get("generation_config.json") {
            Some(bytes) => parse_generation_config(bytes, "generation_config.json").map_err(js_err)?.1,
            None => GenerationDefaults::default(),
        };
        self.gpu.check_lost().map_err(js_err)?;
        Ok(Model {
            gpu: self.gpu,
            host: Rc::new(Host { config, tokenizer, template, generation }),
            held: Rc::new(RefCell::new(Some(Held { current: loaded.clone(), loaded }))),
            adapter: Rc::new(RefCell::new(None)),
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
    Streamer::new(gpu, &config, &formats, WeightChoice::Auto).map_err(does_not_fit)
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
                let stream = Streamer::new(self.gpu, &config, &Default::default(), WeightChoice::Auto)
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
    /// The model's chat template, when it has one.
    template: Option<ChatTemplate>,
    /// generation_config.json's sampling defaults.
    generation: GenerationDefaults,
}

/// A model's GPU tensors, destroyed when the last user (the model, a running generation)
/// lets go: wgpu's WebGPU backend leaves a dropped buffer to the garbage collector, which may
/// keep the GPU memory long after.
struct Owned {
    model: GpuModel,
    /// The model this one was copied from, whose tensors it shares (the RoPE tables) and
    /// leaves to it.
    base: Option<Rc<Owned>>,
}

impl Owned {
    /// The tensors this model alone holds.
    fn own_tensors(&self) -> Vec<&crate::gpu::Tensor> {
        let shared = self.base.as_ref().map(|b| b.model.tensors()).unwrap_or_default();
        self.model.tensors().into_iter().filter(|t| !shared.iter().any(|s| s.buf == t.buf)).collect()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.own_tensors().iter().for_each(|t| t.buf.destroy());
    }
}

/// The weights a model holds until it is released.
struct Held {
    /// The weights as loaded: each fine-tune starts from a GPU copy of them.
    loaded: Rc<Owned>,
    /// What generation uses: the loaded weights, or the last fine-tune's.
    current: Rc<Owned>,
}

/// A loaded model (its weights on the GPU, its tokenizer on the host).
#[wasm_bindgen]
pub struct Model {
    gpu: &'static Gpu,
    host: Rc<Host>,
    /// None once [`Model::release`]d.
    held: Rc<RefCell<Option<Held>>>,
    /// The adapters of the last LoRA fine-tune, read back.
    adapter: Rc<RefCell<Option<Lora>>>,
}

/// One generation's settings as the page sends them: a `prompt`, or chat `messages` rendered
/// with the model's template. Absent sampler settings take the CLI's defaults (the model's
/// generation_config.json, else [`SamplerConfig::default`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateRequest {
    #[serde(default)]
    prompt: Option<String>,
    /// OpenAI-style `{"role", "content"}` messages.
    #[serde(default)]
    messages: Option<Vec<Value>>,
    /// A tool list for the template, with `messages`.
    #[serde(default)]
    tools: Option<Value>,
    max_tokens: usize,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    /// The golden files' `lcm_config` keys; null or absent: no modulation.
    #[serde(default)]
    lcm: Option<Value>,
}

impl GenerateRequest {
    fn sampler(&self, defaults: &GenerationDefaults) -> Result<SamplerConfig> {
        let d = SamplerConfig::for_model(defaults);
        let sampler = SamplerConfig {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: self.seed.unwrap_or(d.seed),
            ..d
        };
        sampler.validate()?;
        Ok(sampler)
    }

    /// The prompt's ids and the ids that stop the reply: a chat's through the model's template
    /// (as `keel generate --messages`), a prompt's as `keel generate --prompt`.
    fn prompt(&self, host: &Host) -> Result<(Vec<u32>, Vec<u32>)> {
        let tok = &host.tokenizer;
        match (&self.prompt, &self.messages) {
            (Some(prompt), None) => Ok((tok.encode(prompt)?, host.config.eos.clone())),
            (None, Some(messages)) => {
                let template = chat_template(host)?;
                crate::chat::check_messages(messages).map_err(|e| anyhow!("messages: {e:#}"))?;
                let text = template.render(messages, true, self.tools.as_ref())?;
                Ok((tok.encode_plain(&text)?, template.stop_ids(&host.config.eos, tok)))
            }
            _ => Err(anyhow!("give either 'prompt' (text) or 'messages' (a chat), not both or neither")),
        }
    }
}

fn chat_template(host: &Host) -> Result<&ChatTemplate> {
    host.template.as_ref().ok_or_else(|| {
        anyhow!(
            "the model has no chat template (no 'chat_template' in tokenizer_config.json nor \
             'tokenizer.chat_template' in a GGUF)"
        )
    })
}

/// Fine-tuning settings as the page sends them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinetuneRequest {
    text: String,
    steps: usize,
    lr: f64,
    batch: usize,
    seq_len: usize,
    /// LoRA adapters instead of every weight.
    #[serde(default)]
    lora: Option<LoraRequest>,
}

/// LoRA settings, with `keel finetune`'s defaults (alpha 2 × rank, targets "q,v", seed 0).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoraRequest {
    rank: usize,
    #[serde(default)]
    alpha: Option<f32>,
    #[serde(default)]
    targets: Option<String>,
}

impl LoraRequest {
    fn init(&self, config: &ModelConfig) -> Result<Lora> {
        let slots = parse_targets(config, self.targets.as_deref().unwrap_or("q,v"))?;
        Lora::init(config, &slots, self.rank, self.alpha.unwrap_or(2.0 * self.rank as f32), 0)
    }
}

impl Model {
    /// The weights, or the error that says the model was released.
    fn held<T>(&self, f: impl FnOnce(&Held) -> T) -> Result<T, JsValue> {
        match &*self.held.borrow() {
            Some(held) => Ok(f(held)),
            None => Err(js_err(anyhow!("this model was freed (model.free()); load it again to use it"))),
        }
    }
}

#[wasm_bindgen]
impl Model {
    /// Sizes and names: `{arch, layers, hidden, vocab, context, params, eos, chat_template}`.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let params =
            self.held(|h| h.loaded.model.weights.named().iter().map(|(_, t)| t.numel()).sum::<usize>())?;
        let c = &self.host.config;
        to_js(
            &json!({"arch": format!("{:?}", c.arch), "layers": c.layers, "hidden": c.hidden, "vocab": c.vocab,
               "context": c.max_positions, "params": params, "eos": c.eos,
               "chat_template": self.host.template.is_some()}),
        )
    }

    /// Bytes of GPU buffers this model holds (its weights as loaded and those of its last
    /// fine-tune); 0 once released.
    pub fn gpu_bytes(&self) -> f64 {
        let bytes = |m: &Owned| m.own_tensors().iter().map(|t| t.buf.size()).sum::<u64>();
        let held = self.held.borrow();
        let total = held.as_ref().map_or(0, |h| {
            bytes(&h.loaded) + if Rc::ptr_eq(&h.loaded, &h.current) { 0 } else { bytes(&h.current) }
        });
        total as f64
    }

    /// Gives the GPU buffers back (destroyed once a running generation or fine-tune, which
    /// keeps them until it ends, is done); every later call is refused.
    pub fn release(&self) {
        self.held.borrow_mut().take();
    }

    /// `messages` rendered with the model's chat template (the assistant turn opened):
    /// `{text, ids}`, as `keel template --json`.
    pub fn chat_prompt(&self, messages: JsValue) -> Result<JsValue, JsValue> {
        let run = || {
            let messages: Vec<Value> = from_js(&messages, "messages")?;
            crate::chat::check_messages(&messages).map_err(|e| anyhow!("messages: {e:#}"))?;
            let text = chat_template(&self.host)?.render(&messages, true, None)?;
            let ids = self.host.tokenizer.encode_plain(&text)?;
            Ok::<_, anyhow::Error>(json!({"text": text, "ids": ids}))
        };
        to_js(&run().map_err(js_err)?)
    }

    /// Generates from `request` (see [`GenerateRequest`]); calls `on_token({id, text,
    /// entropy, logprob, stop})` per token, where entropy and log-prob (nats) come from the
    /// distribution the token was picked from and `stop` marks a stop token (its text is
    /// empty). A callback that throws stops the generation (the page's abort signal). Resolves
    /// to `{prompt_ids, ids, text, finish_reason}`: `text` without the stop token,
    /// `finish_reason` "stop" or "length".
    pub fn generate(&self, request: JsValue, on_token: js_sys::Function) -> Result<js_sys::Promise, JsValue> {
        let model = self.held(|h| h.current.clone())?;
        let (gpu, host) = (self.gpu, self.host.clone());
        let request: GenerateRequest = from_js(&request, "generate").map_err(js_err)?;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let run = async {
                let r = request;
                let lcm = r.lcm.as_ref().map(|v| LcmConfig::from_json(v, "LCM settings")).transpose()?;
                if let Some(c) = &lcm {
                    c.validate(host.config.layers)?;
                }
                let sampler = r.sampler(&host.generation)?;
                let (prompt_ids, eos) = r.prompt(&host)?;
                let tok = &host.tokenizer;
                let opts = GenerateOptions { max_tokens: r.max_tokens, sampler, eos: eos.clone(), lcm };
                let mut stream = TextStream::new(tok);
                let ids = generate_async(gpu, &model.model, &prompt_ids, &opts, &mut |pick| {
                    let stop = eos.contains(&pick.id);
                    let text = if stop { String::new() } else { stream.push(pick.id)? };
                    let token = json!({"id": pick.id, "text": text, "entropy": pick.entropy,
                                       "logprob": pick.logprob, "stop": stop});
                    let token = to_js(&token).map_err(|e| anyhow!("{e:?}"))?;
                    on_token
                        .call1(&JsValue::NULL, &token)
                        .map_err(|e| anyhow!("the page's token callback failed: {e:?}"))?;
                    Ok(())
                })
                .await?;
                gpu.check_lost()?;
                let stopped = ids.last().is_some_and(|id| eos.contains(id));
                let reply = &ids[..ids.len() - usize::from(stopped)];
                Ok::<_, anyhow::Error>(
                    json!({"prompt_ids": prompt_ids, "ids": ids, "text": tok.decode(reply)?,
                                              "finish_reason": if stopped { "stop" } else { "length" }}),
                )
            };
            to_js(&run.await.map_err(js_err)?)
        }))
    }

    /// The last LoRA fine-tune's adapter in PEFT's format, naming `base_model`:
    /// `{config: adapter_config.json's text, weights: adapter_model.safetensors's bytes}`.
    pub fn adapter_files(&self, base_model: &str) -> Result<JsValue, JsValue> {
        let adapter = self.adapter.borrow();
        let lora =
            adapter.as_ref().ok_or_else(|| js_err(anyhow!("no LoRA fine-tune has run on this model")))?;
        let (weights, config) = lora.files(&self.host.config, base_model).map_err(js_err)?;
        let files = js_sys::Object::new();
        js_sys::Reflect::set(&files, &"config".into(), &config.into())?;
        js_sys::Reflect::set(&files, &"weights".into(), &js_sys::Uint8Array::from(&weights[..]))?;
        Ok(files.into())
    }

    /// Fine-tunes on `request.text` (see [`FinetuneRequest`]) with the CLI's trainer, from the
    /// weights as loaded: every weight, or LoRA adapters (`request.lora`); calls
    /// `on_step(step, loss)` after each step (one that throws stops it, keeping the model's
    /// weights). The model then generates with the trained weights (LoRA's merged into f32
    /// copies of the loaded ones, as `keel merge` does; the adapter is kept for
    /// [`Model::adapter_files`]). Resolves to the list of losses.
    pub fn finetune(&self, request: JsValue, on_step: js_sys::Function) -> Result<js_sys::Promise, JsValue> {
        let loaded = self.held(|h| h.loaded.clone())?;
        let (gpu, host, held, adapter) =
            (self.gpu, self.host.clone(), self.held.clone(), self.adapter.clone());
        let r: FinetuneRequest = from_js(&request, "finetune").map_err(js_err)?;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let run = async {
                let rows =
                    pack_text(&r.text, "the training text", &host.tokenizer, r.seq_len, host.config.vocab)?;
                let data = TrainData::from_rows(rows, r.seq_len)?;
                // Packed (GGUF) weights are trained as f32 copies, dequantized on the GPU.
                let start = loaded.model.duplicate_f32(gpu)?;
                let optim = OptimConfig {
                    adamw: AdamW { lr: r.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
                    grad_clip: 1.0,
                    decay_norms_biases: true,
                };
                let batch = r.batch.min(data.len()).max(1);
                let method = match &r.lora {
                    Some(lora) => Method::Lora(lora.init(&host.config)?),
                    None => Method::Full,
                };
                let mut trainer =
                    Trainer::new(gpu, start, (batch, r.seq_len), ActivationMemory::Keep, optim, method)?;
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
                if held.borrow().is_none() {
                    bail!("the model was freed while it was fine-tuned");
                }
                if let Some(lora) = trainer.adapters_async().await? {
                    *adapter.borrow_mut() = Some(lora);
                }
                let trained = Rc::new(Owned { model: trainer.into_merged()?, base: Some(loaded) });
                if let Some(held) = &mut *held.borrow_mut() {
                    held.current = trained;
                }
                Ok::<_, anyhow::Error>(json!(losses))
            };
            to_js(&run.await.map_err(js_err)?)
        }))
    }
}
