//! Native loading for inference: a model's files opened through memory maps, every header
//! checked before the GPU starts, then its weights streamed to the GPU tensor by tensor
//! ([`Streamer`], as the page streams them), so that host memory holds about one tensor at a
//! time instead of the file, its tensors and Keel's fused layout (`model::load`, which
//! training and saving use, builds all three).

use super::gguf::{self, GgufFile};
use super::layout::{hf_layout, missing};
use super::load::{
    check_safetensors, config_and_tokenizer, find, parse_shard_index, to_f32, Layout, ModelInfo,
};
use super::stream::Streamer;
use super::weights::HostTensor;
use super::{GpuModel, WeightChoice};
use crate::gpu::Gpu;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A model whose small files are read and whose weight files are mapped and checked up to
/// their tensor data.
pub struct OpenModel {
    pub info: ModelInfo,
    weights: WeightFiles,
}

impl std::ops::Deref for OpenModel {
    type Target = ModelInfo;
    fn deref(&self) -> &ModelInfo {
        &self.info
    }
}

/// The mapped weight files, each with its name as errors show it.
enum WeightFiles {
    Safetensors(Vec<(String, Mmap)>),
    Gguf(String, Mmap, GgufFile),
}

fn map(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    // SAFETY: the map is only read. A file changed under it while Keel runs gives wrong
    // weights (checked for finite values as they stream), not unsoundness Keel relies on.
    unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map into memory", path.display()))
}

/// Opens the model at `path` (a folder with config.json + safetensors, a folder holding one
/// `.gguf`, or a `.gguf` file): its config, tokenizer and generation defaults, and its weight
/// files mapped, with every tensor's name, type, shape and byte range checked against the
/// config (and a safetensors file's values for being finite, read in place), so that a broken
/// model is refused before the GPU starts. Then only the upload remains ([`OpenModel::upload`];
/// a GGUF's values are checked there).
pub fn open(path: &Path) -> Result<OpenModel> {
    let (dir, gguf_file) = match find(path)? {
        Layout::Safetensors(dir) => (dir, None),
        Layout::Gguf(file) => (file.parent().unwrap_or(Path::new(".")).to_path_buf(), Some(file)),
    };
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        let p = dir.join(name);
        match p.is_file() {
            true => std::fs::read(&p).map(Some).with_context(|| format!("{}: cannot read", p.display())),
            false => Ok(None),
        }
    };
    let shown = |name: &str| dir.join(name).display().to_string();
    let (info, weights) = match gguf_file {
        Some(file) => {
            let name = file.display().to_string();
            let bytes = map(&file)?;
            let fail = |e: anyhow::Error| anyhow!("{name}: {e:#}");
            let parsed = gguf::parse(&bytes).map_err(fail)?;
            let hf_config = gguf::whole_file_config(&parsed, &bytes).map_err(fail)?;
            // Each tensor's type and byte range before the tokenizer, as `load` checks them.
            for info in &parsed.tensors {
                gguf::tensor_data(&parsed, &bytes, info).map_err(fail)?;
            }
            let tok = gguf::tokenizer_json(&parsed).map_err(fail)?;
            let (config, generation, tokenizer) =
                config_and_tokenizer(&read, &shown, &hf_config, &name, tok, &name)?;
            let info = ModelInfo { config, tokenizer, generation, path: PathBuf::new() };
            (info, WeightFiles::Gguf(name, bytes, parsed))
        }
        None => {
            let config_bytes =
                read("config.json")?.ok_or_else(|| anyhow!("{}: cannot read", shown("config.json")))?;
            let hf_config = serde_json::from_slice(&config_bytes)
                .map_err(|e| anyhow!("{}: not valid JSON ({e})", shown("config.json")))?;
            let (config, generation, tokenizer) =
                config_and_tokenizer(&read, &shown, &hf_config, &shown("config.json"), None, "")?;
            let info = ModelInfo { config, tokenizer, generation, path: PathBuf::new() };
            (info, WeightFiles::Safetensors(safetensors_files(&dir, &read, &shown)?))
        }
    };
    let model = OpenModel { info: ModelInfo { path: path.to_path_buf(), ..info }, weights };
    model.check_headers()?;
    Ok(model)
}

/// The safetensors files of a folder, mapped, each one's framing and dtypes checked.
fn safetensors_files(
    dir: &Path,
    read: &dyn Fn(&str) -> Result<Option<Vec<u8>>>,
    shown: &dyn Fn(&str) -> String,
) -> Result<Vec<(String, Mmap)>> {
    let (single, index) = ("model.safetensors", "model.safetensors.index.json");
    let names = if dir.join(single).is_file() {
        vec![single.to_string()]
    } else {
        let Some(bytes) = read(index)? else {
            bail!("{}: no model.safetensors or model.safetensors.index.json", shown(""));
        };
        parse_shard_index(&bytes, &shown(index))?
    };
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            if !path.is_file() {
                bail!("{}: cannot read (listed in {index})", shown(&name));
            }
            let bytes = map(&path)?;
            check_safetensors(&bytes).map_err(|e| anyhow!("{}: {e}", shown(&name)))?;
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", shown(&name)))?;
            for (tensor, view) in st.iter() {
                if to_f32(view.dtype(), &[]).is_none() {
                    bail!(
                        "{}: tensor '{tensor}' has dtype {:?}; Keel reads F32, F16 and BF16",
                        shown(&name),
                        view.dtype()
                    );
                }
                if let Some((i, v)) = first_non_finite(view.dtype(), view.data()) {
                    bail!(
                        "{}: tensor '{tensor}' holds a non-finite value ({v}) at element {i}",
                        shown(&name)
                    );
                }
            }
            Ok((shown(&name), bytes))
        })
        .collect()
}

/// The first element of F32, F16 or BF16 `data` that is infinite or NaN (all exponent bits
/// set), found on the bits in place, with its value.
fn first_non_finite(dtype: Dtype, data: &[u8]) -> Option<(usize, f32)> {
    let (size, exponent) = match dtype {
        Dtype::F32 => (4, 0x7f80_0000),
        Dtype::F16 => (2, 0x7c00),
        Dtype::BF16 => (2, 0x7f80),
        _ => return None,
    };
    let bits = |c: &[u8]| c.iter().rev().fold(0u32, |acc, &b| acc << 8 | u32::from(b));
    let i = data.chunks_exact(size).position(|c| bits(c) & exponent == exponent)?;
    Some((i, to_f32(dtype, &data[i * size..(i + 1) * size])?[0]))
}

impl OpenModel {
    /// The weight file errors name: the one file, or the shard index.
    fn weights_name(&self) -> String {
        match &self.weights {
            WeightFiles::Gguf(name, ..) => name.clone(),
            WeightFiles::Safetensors(files) if files.len() == 1 => files[0].0.clone(),
            WeightFiles::Safetensors(_) => {
                self.path.join("model.safetensors.index.json").display().to_string()
            }
        }
    }

    /// Every tensor the config needs is in the files with its shape, in Keel's order (the
    /// first missing or misshapen one named, as [`super::layout::Weights::from_hf`] names it).
    fn check_headers(&self) -> Result<()> {
        let mut shapes: HashMap<String, (String, Vec<usize>)> = HashMap::new();
        match &self.weights {
            WeightFiles::Gguf(name, _, file) => {
                for info in file.tensors.iter().filter(|i| !gguf::is_rope_factors(&i.name)) {
                    let fail = |e: anyhow::Error| anyhow!("{name}: {e:#}");
                    let (hf, shape) = gguf::hf_name_and_shape(file, info).map_err(fail)?;
                    shapes.insert(hf, (name.clone(), shape));
                }
            }
            WeightFiles::Safetensors(files) => {
                for (name, bytes) in files {
                    let st = SafeTensors::deserialize(bytes).expect("checked when opened");
                    for (tensor, view) in st.iter() {
                        shapes.insert(tensor.to_string(), (name.clone(), view.shape().to_vec()));
                    }
                }
            }
        }
        for place in hf_layout(&self.config).1 {
            match shapes.get(&place.hf) {
                None => return Err(missing(&self.weights_name(), &place.hf, &place.shape)),
                Some((file, shape)) if *shape != place.shape => {
                    bail!("{file}: tensor '{}' has shape {shape:?}, expected {:?}", place.hf, place.shape)
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Streams the weights to `gpu` in the formats `choice` gives them, one tensor at a time
    /// (each checked again), each tensor's pages of the map released once it is written. Errors of the device are marked as such (`cannot load onto the GPU`); errors
    /// of the files name the file.
    pub fn upload(self, gpu: &'static Gpu, choice: WeightChoice) -> Result<(ModelInfo, GpuModel)> {
        let on_gpu = |e: anyhow::Error| {
            anyhow::Error::from(crate::Error::on_device(gpu, e))
                .context(format!("{}: cannot load onto the GPU", self.path.display()))
        };
        let formats = match &self.weights {
            WeightFiles::Gguf(name, _, file) => {
                gguf::hf_formats(file).map_err(|e| anyhow!("{name}: {e:#}"))?
            }
            WeightFiles::Safetensors(_) => BTreeMap::new(),
        };
        let mut streamer =
            Streamer::new(gpu, &self.config, &formats, choice).map_err(on_gpu)?.named(&self.weights_name());
        self.each_tensor(&mut |file, t| streamer.tensor(gpu, file, t))?;
        let model = streamer.finish(gpu, &self.config).map_err(on_gpu)?;
        Ok((self.info, model))
    }

    /// Hands each tensor, converted from the map, to `f` with its file's name; then tells
    /// the kernel its pages are no longer needed, so they leave this process's memory.
    fn each_tensor(&self, f: &mut dyn FnMut(&str, HostTensor) -> Result<()>) -> Result<()> {
        let release = |map: &Mmap, data: &[u8]| {
            let offset = data.as_ptr() as usize - map.as_ptr() as usize;
            // SAFETY: the map is read-only and shared: dropped pages are read again from
            // the file if touched, never lost.
            let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, data.len()) };
        };
        match &self.weights {
            WeightFiles::Gguf(name, bytes, file) => {
                for info in file.tensors.iter().filter(|i| !gguf::is_rope_factors(&i.name)) {
                    let data = gguf::tensor_data(file, bytes, info).map_err(|e| anyhow!("{name}: {e:#}"))?;
                    let t = gguf::hf_tensor(file, info, data).map_err(|e| anyhow!("{name}: {e:#}"))?;
                    f(name, t)?;
                    release(bytes, data);
                }
            }
            WeightFiles::Safetensors(files) => {
                for (name, bytes) in files {
                    let st = SafeTensors::deserialize(bytes).expect("checked when opened");
                    for (tensor, view) in st.iter() {
                        let values = to_f32(view.dtype(), view.data()).expect("dtypes checked when opened");
                        f(name, HostTensor::new(tensor, view.shape().to_vec(), values))?;
                        release(bytes, view.data());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::wfmt::WeightFormat;

    /// Streamed from the maps, the weights are bit for bit those `load` + upload give, in
    /// every choice of format, for safetensors (f32, tied and untied, fused QKV) and GGUF.
    #[test]
    fn streamed_upload_equals_the_loaded_upload() {
        let gpu = crate::ops::test_util::gpu();
        let gguf = "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
        let models = ["stories260k", "tiny-gpt2", "tiny-phi3", "tiny-gptneox"]
            .iter()
            .filter_map(|m| crate::testing::model(m))
            .chain(crate::testing::fixture(gguf));
        for path in models {
            let loaded = crate::model::load(&path).unwrap();
            let choices = [WeightChoice::Auto, WeightChoice::Format(WeightFormat::F32)]
                .into_iter()
                .chain([WeightFormat::F16, WeightFormat::Q8_0].map(WeightChoice::Format));
            for choice in choices {
                let what = format!("{} {choice:?}", path.display());
                let want = GpuModel::upload_with(gpu, &loaded, choice).unwrap();
                let (info, got) = open(&path).unwrap().upload(gpu, choice).unwrap();
                assert_eq!(info.config, loaded.config, "{what}");
                assert_eq!(got.formats(), want.formats(), "{what}");
                let (a, b) = (want.weights.named(), got.weights.named());
                for ((name, ta), (_, tb)) in a.iter().zip(&b) {
                    assert_eq!((&ta.shape, ta.dtype), (&tb.shape, tb.dtype), "{what}: {name}");
                    assert_eq!(gpu.read_u32(ta).unwrap(), gpu.read_u32(tb).unwrap(), "{what}: {name}");
                }
                assert_eq!(
                    gpu.read_u32(want.head_weight()).unwrap(),
                    gpu.read_u32(got.head_weight()).unwrap()
                );
            }
        }
    }
}
