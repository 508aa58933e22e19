//! Weights streamed into GPU buffers tensor by tensor (the browser's loader): each Keel
//! tensor is created empty, and each Hugging Face tensor (of a safetensors file, or of a
//! GGUF read by [`super::gguf::GgufReader`]) is written at its place ([`hf_layout`]) as it
//! arrives, then dropped, so the host never holds the whole model.

use super::config::ModelConfig;
use super::forward::{check_weight, packable};
use super::layout::{check_tensor, hf_layout, missing, HfPlace, Weights};
use super::weights::HostTensor;
use super::{GpuModel, WeightChoice};
use crate::gpu::wfmt::{self, WeightFormat};
use crate::gpu::{DType, Gpu, Sharded};
use anyhow::{anyhow, bail, Result};
use std::collections::{BTreeMap, HashMap};

pub struct Streamer {
    /// Named in errors about tensors that never arrived.
    source: String,
    weights: Weights<Sharded>,
    /// A packed copy of a tied embedding for the LM head (see [`GpuModel::upload_weights`]).
    head: Option<Sharded>,
    /// Keel's tensors by name (sharing `weights`' buffers).
    by_keel: HashMap<String, Sharded>,
    /// The places of the tensors still to come, and of those that came.
    waiting: HashMap<String, HfPlace>,
    arrived: HashMap<String, HfPlace>,
    /// Every place, in Keel's order (for the first missing tensor).
    order: Vec<String>,
}

impl Streamer {
    /// Creates `cfg`'s Keel tensors empty; every one is checked against the binding limit
    /// before any is created. `formats` gives the packed format of the Hugging Face tensors
    /// that will arrive packed (a GGUF's, see [`super::gguf::hf_formats`]; the others come as
    /// f32). Each matrix-product weight is held in the format `GpuModel::upload_with(..,
    /// choice)` gives it: under `Auto` the packed format all its parts come in, else f32;
    /// under a format that one where its rows fit it; and so is the LM head's copy of a tied
    /// embedding.
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        formats: &BTreeMap<String, WeightFormat>,
        choice: WeightChoice,
    ) -> Result<Streamer> {
        let (shapes, places) = hf_layout(cfg);
        shapes.try_map(|name, shape| check_weight(gpu, name, shape))?;
        let format = |hf: &str| formats.get(hf).copied().unwrap_or(WeightFormat::F32);
        let dtype = |f: WeightFormat| if f == WeightFormat::F32 { DType::F32 } else { DType::Packed(f) };
        // The format Keel tensor `keel` of `shape` is held in.
        let held = |keel: &str, shape: &[usize]| {
            let mut parts = places.iter().filter(|p| p.keel == keel).map(|p| format(&p.hf));
            let first = parts.next().unwrap_or(WeightFormat::F32);
            match choice {
                WeightChoice::Auto if parts.all(|f| f == first) => first,
                WeightChoice::Format(f) if f != WeightFormat::F32 && f.fits(shape[1]) => f,
                _ => WeightFormat::F32,
            }
        };
        let weights = shapes.try_map(|name, shape| {
            let f = if packable(name) { held(name, shape) } else { WeightFormat::F32 };
            gpu.zeros_sharded(name, shape, dtype(f))
        })?;
        let head_format = held("embed", &weights.embed.shape);
        let head = (weights.lm_head.is_none() && head_format != WeightFormat::F32)
            .then(|| gpu.zeros_sharded("lm_head (tied)", &weights.embed.shape, dtype(head_format)))
            .transpose()?;
        let by_keel = weights.named().into_iter().map(|(name, t)| (name, t.clone())).collect();
        let order = places.iter().map(|p| p.hf.clone()).collect();
        let waiting = places.into_iter().map(|p| (p.hf.clone(), p)).collect();
        let source = "the model's files".into();
        Ok(Streamer { source, weights, head, by_keel, waiting, arrived: HashMap::new(), order })
    }

    /// Names the source in errors about tensors that never arrived.
    pub fn named(self, source: &str) -> Streamer {
        Streamer { source: source.into(), ..self }
    }

    /// Writes one Hugging Face tensor of file `file` at its place.
    pub fn tensor(&mut self, gpu: &Gpu, file: &str, t: HostTensor) -> Result<()> {
        let Some(place) = self.waiting.get(&t.name) else {
            if self.arrived.contains_key(&t.name) {
                bail!("{file}: tensor '{}' came twice", t.name);
            }
            // Tensors the model has no place for (a tied model's lm_head.weight, buffers such
            // as rotary_emb.inv_freq that some checkpoints carry) are skipped, as
            // Weights::from_hf skips them, so a folder loads in the page as it does natively.
            return Ok(());
        };
        check_tensor(file, &t, &place.shape)?;
        let place = self.waiting.remove(&t.name).unwrap();
        let t = place.reorder.apply(t);
        let target = &self.by_keel[&place.keel];
        let cols = target.shape[1..].iter().product();
        write_rows(gpu, target, place.row, cols, &t);
        if let (Some(head), "embed") = (&self.head, place.keel.as_str()) {
            write_rows(gpu, head, 0, cols, &t);
        }
        // The writes' staging memory is freed once submitted: one tensor's at a time.
        gpu.queue.submit([]);
        self.arrived.insert(place.hf.clone(), place);
        Ok(())
    }

    /// The model, once every tensor has arrived; `cfg` is the final config (with
    /// generation_config.json's EOS), of the same shapes as the one given to [`Streamer::new`].
    pub fn finish(self, gpu: &'static Gpu, cfg: &ModelConfig) -> Result<GpuModel> {
        if let Some(name) = self.order.iter().find(|n| self.waiting.contains_key(*n)) {
            return Err(missing(&self.source, name, &self.waiting[name].shape));
        }
        let streamed: Vec<_> =
            self.weights.named().iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
        let (shapes, _) = hf_layout(cfg);
        let wanted: Vec<_> = shapes.named().iter().map(|(n, s)| (n.clone(), (*s).clone())).collect();
        if streamed != wanted {
            return Err(anyhow!("the config changed while the weights streamed"));
        }
        GpuModel::assemble(gpu, cfg, self.weights, self.head)
    }
}

/// Rows of a tensor converted at a time into another format.
const CONVERTED_ROWS: usize = 256;

/// Writes `t` into `target` from row `row` on (rows of `cols` elements): its packed words
/// into a packed tensor of its format as they are, else converted a few rows at a time
/// (dequantized, then quantized to the target's format), so that no copy of the whole
/// tensor is made (SmolLM2's embedding is 113 MB as f32).
fn write_rows(gpu: &Gpu, target: &Sharded, row: usize, cols: usize, t: &HostTensor) {
    let fmt = target.format();
    let write = |row: usize, words: &[u32]| gpu.write_rows(target, row, words);
    let convert = |values: &[f32]| match fmt {
        WeightFormat::F32 => bytemuck::cast_slice(values).to_vec(),
        _ => wfmt::quantize(fmt, values, cols),
    };
    match t.packed_words() {
        Some((f, words)) if f == fmt => write(row, words),
        Some((f, words)) => {
            for (i, rows) in words.chunks(f.words(CONVERTED_ROWS, cols)).enumerate() {
                write(row + i * CONVERTED_ROWS, &convert(&wfmt::dequantize(f, rows)));
            }
        }
        None if fmt == WeightFormat::F32 => write(row, bytemuck::cast_slice(&t.values())),
        None => {
            for (i, rows) in t.values().chunks(CONVERTED_ROWS * cols.max(1)).enumerate() {
                write(row + i * CONVERTED_ROWS, &convert(rows));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::{self, GgufFile, GgufReader};
    use crate::model::load::streamed_tensor;
    use serde_json::Value;

    /// Each safetensors tensor cut from its header entry's byte range, streamed as the
    /// browser does, gives GPU weights bit-identical to uploading the loaded model.
    #[test]
    fn streamed_weights_match_the_upload() {
        let gpu = crate::ops::test_util::gpu();
        for name in ["stories260k", "tiny-qwen2", "tiny-gpt2"] {
            let Some(src) = crate::testing::model(name) else { continue };
            let loaded = crate::model::load(&src).unwrap();
            let uploaded = GpuModel::upload(gpu, &loaded).unwrap();
            let mut streamer =
                Streamer::new(gpu, &loaded.config, &BTreeMap::new(), WeightChoice::Auto).unwrap();
            let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            let file = "model.safetensors";
            for (tensor, v) in header.iter().filter(|(k, _)| *k != "__metadata__") {
                let at = |i: usize| 8 + n + v["data_offsets"][i].as_u64().unwrap() as usize;
                let shape =
                    v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                let dtype = v["dtype"].as_str().unwrap();
                let t = streamed_tensor(file, tensor, dtype, shape, &bytes[at(0)..at(1)]).unwrap();
                streamer.tensor(gpu, file, t).unwrap();
            }
            let streamed = streamer.finish(gpu, &loaded.config).unwrap();
            let (a, b) = (uploaded.weights.named(), streamed.weights.named());
            assert_eq!(a.len(), b.len(), "{name}");
            for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
                assert_eq!((na, &ta.shape), (nb, &tb.shape), "{name}");
                assert_eq!(gpu.read_u32(ta).unwrap(), gpu.read_u32(tb).unwrap(), "{name}: {na}");
            }
            // A fine-tune's start: a GPU copy of the same bits.
            let copy = streamed.duplicate_f32(gpu).unwrap();
            let first = |m: &GpuModel| gpu.read_u32(&m.weights.blocks[0].qkv).unwrap();
            assert_eq!(first(&copy), first(&streamed), "{name}");
        }
    }

    /// The SmolLM2 GGUF pushed through a [`GgufReader`] in odd chunk sizes, each tensor
    /// streamed as the page does, gives GPU weights bit-identical to the native
    /// `--weights auto` upload: Q4_1 linears and the Q8_0 head stay packed.
    #[test]
    fn streamed_gguf_matches_the_auto_upload() {
        let gpu = crate::ops::test_util::gpu();
        let Some(path) =
            crate::testing::fixture("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        else {
            return;
        };
        let loaded = crate::model::load(&path).unwrap();
        let uploaded = GpuModel::upload_with(gpu, &loaded, WeightChoice::Auto).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = "model.gguf";
        let mut reader = GgufReader::new(file, bytes.len() as u64);
        let mut streamer: Option<Streamer> = None;
        let mut rest = &bytes[..];
        for n in [1, 7, 4096, 1 << 20].into_iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, r) = rest.split_at(n.min(rest.len()));
            rest = r;
            let mut place = |header: &GgufFile, t| {
                let s = match &mut streamer {
                    Some(s) => s,
                    None => {
                        let cfg = ModelConfig::from_hf(&gguf::hf_config(header)?, file)?;
                        streamer.insert(Streamer::new(
                            gpu,
                            &cfg,
                            &gguf::hf_formats(header)?,
                            WeightChoice::Auto,
                        )?)
                    }
                };
                s.tensor(gpu, file, t)
            };
            reader.push(chunk, &mut place).unwrap();
        }
        reader.finish().unwrap();
        let streamed = streamer.unwrap().finish(gpu, &loaded.config).unwrap();
        assert_eq!(streamed.formats(), (WeightFormat::Q4_1, WeightFormat::Q8_0));
        assert_eq!(streamed.formats(), uploaded.formats());
        let same = |what: &str, a: &crate::gpu::Tensor, b: &crate::gpu::Tensor| {
            assert_eq!((&a.shape, a.dtype), (&b.shape, b.dtype), "{what}");
            assert_eq!(gpu.read_u32(a).unwrap(), gpu.read_u32(b).unwrap(), "{what}");
        };
        let (a, b) = (uploaded.weights.named(), streamed.weights.named());
        assert_eq!(a.len(), b.len());
        for ((name, ta), (_, tb)) in a.iter().zip(&b) {
            same(name, ta, tb);
        }
        same("the tied head", uploaded.head_weight(), streamed.head_weight());
    }

    #[test]
    fn streamed_tensors_are_checked() {
        let gpu = crate::ops::test_util::gpu();
        let Some(src) = crate::testing::model("stories260k") else { return };
        let cfg = crate::model::load(&src).unwrap().info.config;
        let mut s = Streamer::new(gpu, &cfg, &BTreeMap::new(), WeightChoice::Auto).unwrap();
        let norm = |name: &str, n: usize| HostTensor::new(name, vec![n], vec![1.0; n]);
        let err = s.tensor(gpu, "f", norm("model.norm.weight", cfg.hidden + 1)).unwrap_err().to_string();
        assert!(err.contains("f: tensor 'model.norm.weight' has shape"), "{err}");
        s.tensor(gpu, "f", norm("model.norm.weight", cfg.hidden)).unwrap();
        let err = s.tensor(gpu, "f", norm("model.norm.weight", cfg.hidden)).unwrap_err().to_string();
        assert!(err.contains("came twice"), "{err}");
        // Skipped, as the native loader skips it.
        s.tensor(gpu, "f", norm("model.layers.0.self_attn.rotary_emb.inv_freq", 4)).unwrap();
        let err = s.finish(gpu, &cfg).err().unwrap().to_string();
        assert!(err.contains("missing tensor 'model.embed_tokens.weight'"), "{err}");
    }
}
