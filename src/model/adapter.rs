//! LoRA adapters on the host: which rows of Keel's fused matrices each target covers,
//! random initialisation, PEFT's file format (`adapter_model.safetensors` +
//! `adapter_config.json`) and merging into the weights.

use super::config::{Arch, ModelConfig};
use super::layout::{Linear, Reorder, Weights};
use super::load::read_safetensors;
use super::save::safetensors_bytes;
use super::weights::HostTensor;
use crate::atomic;
use crate::rng::Rng;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::ops::Range;
use std::path::Path;

/// Where one adapter sits: rows `rows` of a block's `linear`, Hugging Face module `module`
/// (relative to the block: `self_attn.q_proj`, `attn.c_attn`, ...). Keel keeps B's rows in
/// the order of its own fused matrix; `peft_rows` takes PEFT's lora_B rows there (GPT-NeoX's
/// `query_key_value` interleaves q, k and v per head) and back when an adapter is saved.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub linear: Linear,
    pub rows: Range<usize>,
    pub module: &'static str,
    pub peft_rows: Reorder,
}

/// One adapter: `a` `[rank, in]`, `b` `[rows, rank]` (PEFT's lora_A and lora_B).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    pub slot: Slot,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// Adapters for every block, scaled by `alpha / rank`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    pub rank: usize,
    pub alpha: f32,
    pub blocks: Vec<Vec<LoraPair>>,
}

/// Reads adapter_config.json text: the rank `r` and `lora_alpha` of a plain LoRA adapter;
/// variants Keel would merge wrongly are refused. `file` names it in errors.
pub fn parse_adapter_config(text: &str, file: &str) -> Result<(usize, f32)> {
    let v: Value = serde_json::from_str(text).map_err(|e| anyhow!("{file}: {e}"))?;
    if v.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        bail!("{file}: not a LoRA adapter (peft_type must be \"LORA\")");
    }
    let rank = v
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| anyhow!("{file}: 'r' must be a positive integer"))? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .map(|a| a as f32)
        .filter(|a| a.is_finite())
        .ok_or_else(|| anyhow!("{file}: 'lora_alpha' must be a finite number"))?;
    // Variants that change how the update is scaled or applied: merging them as plain
    // LoRA would be silently wrong.
    let set = |key: &str| match v.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    for key in
        ["use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "layers_to_transform", "modules_to_save"]
    {
        if set(key) {
            bail!("{file}: '{key}' is set; Keel supports plain LoRA adapters only");
        }
    }
    if let Some(bias) = v.get("bias").and_then(Value::as_str).filter(|b| *b != "none") {
        bail!("{file}: bias = \"{bias}\" is not supported (Keel's adapters train no biases)");
    }
    Ok((rank, alpha))
}

const TARGETS: &str = "q, k, v, o, gate, up, down, or all";

/// The slots `--lora-targets` names ("q,v", "all", ...) cover on this architecture.
pub fn parse_targets(cfg: &ModelConfig, spec: &str) -> Result<Vec<Slot>> {
    let (h, f) = (cfg.hidden, cfg.ffn);
    let (qd, kvd) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let names: Vec<&str> = if spec.trim() == "all" {
        vec!["q", "k", "v", "o", "gate", "up", "down"]
    } else {
        spec.split(',').map(str::trim).collect()
    };
    let mut slots: Vec<Slot> = Vec::new();
    for name in names {
        let slot = |linear, rows, module| Slot { linear, rows, module, peft_rows: Reorder::Keep };
        let s = match (cfg.arch, name) {
            (Arch::Gpt2, "q" | "k" | "v") => slot(Linear::Qkv, 0..3 * h, "attn.c_attn"),
            (Arch::Gpt2, "o") => slot(Linear::O, 0..h, "attn.c_proj"),
            (Arch::Gpt2, "up") => slot(Linear::Up, 0..f, "mlp.c_fc"),
            (Arch::Gpt2, "down") => slot(Linear::Down, 0..h, "mlp.c_proj"),
            (Arch::Gpt2, "gate") if spec.trim() == "all" => continue,
            (Arch::Gpt2, "gate") => bail!("--lora-targets: GPT-2 has no gate projection (use {TARGETS})"),
            // One adapter over the fused matrix, as PEFT sees it; its rows are interleaved
            // per head there, not in Keel's QKV.
            (Arch::GptNeoX, "q" | "k" | "v") => Slot {
                peft_rows: Reorder::HeadsInterleaved { heads: cfg.heads, dim: cfg.head_dim },
                ..slot(Linear::Qkv, 0..3 * qd, "attention.query_key_value")
            },
            (Arch::GptNeoX, "o") => slot(Linear::O, 0..h, "attention.dense"),
            (Arch::GptNeoX, "up") => slot(Linear::Up, 0..f, "mlp.dense_h_to_4h"),
            (Arch::GptNeoX, "down") => slot(Linear::Down, 0..h, "mlp.dense_4h_to_h"),
            (Arch::GptNeoX, "gate") if spec.trim() == "all" => continue,
            (Arch::GptNeoX, "gate") => {
                bail!("--lora-targets: GPT-NeoX has no gate projection (use q, k, v, o, up, down)")
            }
            // Phi-3's fused projections take one adapter each, as PEFT sees them.
            (Arch::Phi3, "q" | "k" | "v") => slot(Linear::Qkv, 0..qd + 2 * kvd, "self_attn.qkv_proj"),
            (Arch::Phi3, "gate" | "up") => slot(Linear::Up, 0..2 * f, "mlp.gate_up_proj"),
            (_, "q") => slot(Linear::Qkv, 0..qd, "self_attn.q_proj"),
            (_, "k") => slot(Linear::Qkv, qd..qd + kvd, "self_attn.k_proj"),
            (_, "v") => slot(Linear::Qkv, qd + kvd..qd + 2 * kvd, "self_attn.v_proj"),
            (_, "o") => slot(Linear::O, 0..h, "self_attn.o_proj"),
            (_, "gate") => slot(Linear::Up, 0..f, "mlp.gate_proj"),
            (_, "up") => slot(Linear::Up, f..2 * f, "mlp.up_proj"),
            (_, "down") => slot(Linear::Down, 0..h, "mlp.down_proj"),
            (_, other) => bail!("--lora-targets: unknown target '{other}' (expected {TARGETS})"),
        };
        if !slots.contains(&s) {
            slots.push(s);
        }
    }
    Ok(slots)
}

fn in_dim(cfg: &ModelConfig, linear: Linear) -> usize {
    match linear {
        Linear::Qkv | Linear::Up => cfg.hidden,
        Linear::O => cfg.heads * cfg.head_dim,
        Linear::Down => cfg.ffn,
    }
}

fn block_prefix(cfg: &ModelConfig, l: usize) -> String {
    if cfg.arch == Arch::Gpt2 {
        format!("transformer.h.{l}")
    } else if cfg.arch == Arch::GptNeoX {
        format!("gpt_neox.layers.{l}")
    } else {
        format!("model.layers.{l}")
    }
}

impl Lora {
    /// Fresh adapters as PEFT makes them: A uniform in ±1/sqrt(in) (kaiming-uniform with
    /// a = sqrt 5), B zero, so training starts from the base model exactly.
    pub fn init(cfg: &ModelConfig, slots: &[Slot], rank: usize, alpha: f32, seed: u64) -> Result<Lora> {
        if rank == 0 {
            bail!("--lora-rank must be at least 1");
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            bail!("--lora-alpha must be a positive number, got {alpha}");
        }
        let mut rng = Rng::seed_from_u64(seed);
        let blocks = (0..cfg.layers)
            .map(|_| {
                slots
                    .iter()
                    .map(|s| {
                        let inp = in_dim(cfg, s.linear);
                        let bound = 1.0 / (inp as f64).sqrt();
                        let a =
                            (0..rank * inp).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
                        LoraPair { slot: s.clone(), a, b: vec![0.0; s.rows.len() * rank] }
                    })
                    .collect()
            })
            .collect();
        Ok(Lora { rank, alpha, blocks })
    }

    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into the existing `dir`.
    pub fn write_files(&self, dir: &Path, cfg: &ModelConfig, base_model: &str) -> Result<()> {
        let (weights, config) = self.files(cfg, base_model)?;
        std::fs::write(dir.join("adapter_model.safetensors"), weights)?;
        std::fs::write(dir.join("adapter_config.json"), config)?;
        Ok(())
    }

    /// The bytes of `adapter_model.safetensors` and the text of `adapter_config.json`.
    pub fn files(&self, cfg: &ModelConfig, base_model: &str) -> Result<(Vec<u8>, String)> {
        let mut tensors = Vec::new();
        let mut modules: Vec<&str> = Vec::new();
        for (l, block) in self.blocks.iter().enumerate() {
            for p in block {
                let module = format!("base_model.model.{}.{}", block_prefix(cfg, l), p.slot.module);
                let inp = in_dim(cfg, p.slot.linear);
                tensors.push(HostTensor::new(
                    format!("{module}.lora_A.weight"),
                    vec![self.rank, inp],
                    p.a.clone(),
                ));
                let b = HostTensor::new(
                    format!("{module}.lora_B.weight"),
                    vec![p.slot.rows.len(), self.rank],
                    p.b.clone(),
                );
                tensors.push(p.slot.peft_rows.undo(b));
                // PEFT matches target_modules by suffix: GPT-2's two c_proj need their parent.
                let short = if cfg.arch == Arch::Gpt2 {
                    p.slot.module
                } else {
                    p.slot.module.rsplit('.').next().unwrap_or(p.slot.module)
                };
                if !modules.contains(&short) {
                    modules.push(short);
                }
            }
        }
        let config = json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.rank, "lora_alpha": self.alpha,
            "target_modules": modules, "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": cfg.arch == Arch::Gpt2, "base_model_name_or_path": base_model,
            "inference_mode": true,
        });
        Ok((safetensors_bytes(&tensors)?, serde_json::to_string_pretty(&config)?))
    }

    /// Saves the adapter folder atomically.
    pub fn save(&self, dir: &Path, cfg: &ModelConfig, base_model: &str) -> Result<()> {
        atomic::write_dir(dir, |tmp| self.write_files(tmp, cfg, base_model))
    }

    /// Reads a PEFT LoRA adapter folder for a model of config `cfg`.
    pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Lora> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let (rank, alpha) = parse_adapter_config(&text, &config_path.display().to_string())?;
        let weights_path = dir.join("adapter_model.safetensors");
        let wfile = weights_path.display().to_string();
        let bytes = std::fs::read(&weights_path).with_context(|| format!("reading {wfile}"))?;
        let mut tensors: std::collections::HashMap<String, HostTensor> =
            read_safetensors(&bytes, &wfile)?.into_iter().map(|t| (t.name.clone(), t)).collect();
        let all_slots = parse_targets(cfg, "all")?;
        let mut blocks = Vec::new();
        for l in 0..cfg.layers {
            let mut block = Vec::new();
            for slot in &all_slots {
                let module = format!("base_model.model.{}.{}", block_prefix(cfg, l), slot.module);
                let (a_name, b_name) = (format!("{module}.lora_A.weight"), format!("{module}.lora_B.weight"));
                let (Some(a), Some(b)) = (tensors.remove(&a_name), tensors.remove(&b_name)) else { continue };
                if a.shape.first() != Some(&rank) || b.shape.get(1) != Some(&rank) {
                    bail!(
                        "{wfile}: '{module}' has rank {:?} (lora_A {:?}, lora_B {:?}) but adapter_config.json says r = {rank}",
                        a.shape.first(),
                        a.shape,
                        b.shape
                    );
                }
                let (a_shape, b_shape) = (vec![rank, in_dim(cfg, slot.linear)], vec![slot.rows.len(), rank]);
                if a.shape != a_shape || b.shape != b_shape {
                    bail!(
                        "{wfile}: '{module}' has lora_A {:?} and lora_B {:?}; this model needs {a_shape:?} and {b_shape:?}",
                        a.shape,
                        b.shape
                    );
                }
                let b = slot.peft_rows.apply(b).into_values();
                block.push(LoraPair { slot: slot.clone(), a: a.into_values(), b });
            }
            blocks.push(block);
        }
        if let Some(name) = tensors.keys().min() {
            bail!("{wfile}: tensor '{name}' matches no module of this model");
        }
        if blocks.iter().all(Vec::is_empty) {
            bail!("{wfile}: holds no LoRA weights");
        }
        Ok(Lora { rank, alpha, blocks })
    }

    /// Adds `scale · B · A` into the weights' rows (f64 sums).
    pub fn merge_into(&self, weights: &mut Weights<HostTensor>) {
        let (r, s) = (self.rank, self.alpha as f64 / self.rank as f64);
        for (block, pairs) in weights.blocks.iter_mut().zip(&self.blocks) {
            for p in pairs {
                let w = match p.slot.linear {
                    Linear::Qkv => &mut block.qkv,
                    Linear::O => &mut block.o,
                    Linear::Up => &mut block.up,
                    Linear::Down => &mut block.down,
                };
                let inp = w.shape[1];
                let data = w.values_mut(); // the merged weights are f32
                for (i, row) in p.slot.rows.clone().enumerate() {
                    for j in 0..inp {
                        let ba: f64 = (0..r).map(|k| p.b[i * r + k] as f64 * p.a[k * inp + j] as f64).sum();
                        data[row * inp + j] = (data[row * inp + j] as f64 + s * ba) as f32;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load;

    fn stories() -> Option<crate::model::LoadedModel> {
        crate::testing::model("stories260k").map(|path| load(&path).unwrap())
    }

    #[test]
    fn targets_parse_and_refuse() {
        let Some(m) = stories() else { return };
        let c = &m.config;
        let qv = parse_targets(c, "q, v").unwrap();
        assert_eq!(qv.len(), 2);
        assert_eq!(qv[1].rows.len(), c.kv_heads * c.head_dim);
        assert_eq!(parse_targets(c, "all").unwrap().len(), 7);
        let err = parse_targets(c, "q,x").unwrap_err().to_string();
        assert!(err.contains("--lora-targets") && err.contains("'x'"), "{err}");
        // GPT-2 has two c_proj: target_modules must say which (PEFT matches by suffix).
        if let Some(gpt2) = crate::testing::model("tiny-gpt2") {
            let g = load(&gpt2).unwrap().info.config;
            let lora = Lora::init(&g, &parse_targets(&g, "o,down").unwrap(), 2, 4.0, 1).unwrap();
            let dir = std::env::temp_dir().join(format!("keel-adapter-gpt2-{}", std::process::id()));
            lora.save(&dir, &g, "tiny-gpt2").unwrap();
            let v: Value =
                serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
            assert_eq!(v["target_modules"], serde_json::json!(["attn.c_proj", "mlp.c_proj"]));
            assert_eq!(Lora::load(&dir, &g).unwrap(), lora);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// A PEFT adapter on GPT-NeoX's fused `query_key_value`, made by hand with random A and B
    /// (B's rows in PEFT's order: q, k, v interleaved per head), merges as the host computes
    /// it in that order, `W + s·B·A` on the file's rows, then de-interleaved into Keel's
    /// `[q; k; v]`; saved again, B's rows are PEFT's again, bit for bit.
    #[test]
    fn gptneox_qkv_adapter_merges_in_peft_row_order() {
        use crate::cpu::test_data::rand_vec;
        let Some(path) = crate::testing::model("tiny-gptneox") else { return };
        let m = load(&path).unwrap();
        let c = &m.config;
        let (h, heads, dim, rank) = (c.hidden, c.heads, c.head_dim, 2);
        let dir = std::env::temp_dir().join(format!("keel-adapter-neox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let module = |l: usize| format!("base_model.model.gpt_neox.layers.{l}.attention.query_key_value");
        let mut tensors = Vec::new();
        for l in 0..c.layers {
            let (a, b) =
                (rand_vec(2 * l as u64 + 1, rank * h, 0.5), rand_vec(2 * l as u64 + 2, 3 * h * rank, 0.5));
            tensors.push(HostTensor::new(format!("{}.lora_A.weight", module(l)), vec![rank, h], a));
            tensors.push(HostTensor::new(format!("{}.lora_B.weight", module(l)), vec![3 * h, rank], b));
        }
        std::fs::write(dir.join("adapter_model.safetensors"), safetensors_bytes(&tensors).unwrap()).unwrap();
        let config =
            json!({"peft_type": "LORA", "r": rank, "lora_alpha": 3.0, "target_modules": ["query_key_value"]});
        std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
        let lora = Lora::load(&dir, c).unwrap();
        let mut merged = m.weights.clone();
        lora.merge_into(&mut merged);
        let s = 3.0 / rank as f64;
        for l in 0..c.layers {
            let (a, b) = (tensors[2 * l].values(), tensors[2 * l + 1].values());
            let (base, got) = (m.weights.blocks[l].qkv.values(), merged.blocks[l].qkv.values());
            for r in 0..3 * h {
                // PEFT's row r is head r / 3d's q, k or v (r / d % 3), dimension r % d.
                let keel = (r / dim % 3 * heads + r / (3 * dim)) * dim + r % dim;
                for j in 0..h {
                    let ba: f64 = (0..rank).map(|k| b[r * rank + k] as f64 * a[k * h + j] as f64).sum();
                    let want = base[keel * h + j] as f64 + s * ba;
                    let g = got[keel * h + j] as f64;
                    assert!((g - want).abs() < 1e-6, "block {l} PEFT row {r} column {j}: {g} vs {want}");
                }
            }
        }
        let (bytes, _) = lora.files(c, "tiny-gptneox").unwrap();
        let saved = crate::model::load::read_safetensors(&bytes, "saved").unwrap();
        for t in &tensors {
            let back = saved.iter().find(|s| s.name == t.name).unwrap();
            assert_eq!((&back.shape, back.values()), (&t.shape, t.values()), "{}", t.name);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn adapters_round_trip_and_merge() {
        let Some(m) = stories() else { return };
        let c = &m.config;
        let mut lora = Lora::init(c, &parse_targets(c, "q,v,down").unwrap(), 2, 4.0, 7).unwrap();
        for (i, p) in lora.blocks.iter_mut().flatten().enumerate() {
            p.b.iter_mut().enumerate().for_each(|(j, x)| *x = ((i * 31 + j) % 7) as f32 * 0.01);
        }
        let dir = std::env::temp_dir().join(format!("keel-adapter-{}", std::process::id()));
        lora.save(&dir, c, "stories260k").unwrap();
        let back = Lora::load(&dir, c).unwrap();
        assert_eq!(back, lora);
        // Variants Keel cannot merge correctly are refused, naming the key.
        let config = dir.join("adapter_config.json");
        let plain = std::fs::read_to_string(&config).unwrap();
        let added = |key: &str| plain.replacen('{', &format!("{{\"{key}\": true,"), 1);
        let bias_all = plain.replace("\"bias\": \"none\"", "\"bias\": \"all\"");
        for (key, edited) in
            [("use_rslora", added("use_rslora")), ("use_dora", added("use_dora")), ("bias", bias_all)]
        {
            std::fs::write(&config, edited).unwrap();
            let err = Lora::load(&dir, c).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(key), "{key}: refused with {err:?}");
        }
        // A rank that disagrees with r.
        std::fs::write(&config, plain.replace("\"r\": 2", "\"r\": 3")).unwrap();
        let err = Lora::load(&dir, c).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("r = 3"), "refused with {err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        // Merging: one entry by hand.
        let mut w = m.weights.clone();
        lora.merge_into(&mut w);
        let p = &lora.blocks[1][1]; // v of block 1
        let (row, col, inp) = (p.slot.rows.start + 3, 5, c.hidden);
        let want = m.weights.blocks[1].qkv.values()[row * inp + col] as f64
            + 2.0 * (0..2).map(|k| p.b[3 * 2 + k] as f64 * p.a[k * inp + col] as f64).sum::<f64>();
        assert!((w.blocks[1].qkv.values()[row * inp + col] as f64 - want).abs() < 1e-6);
        assert_eq!(w.blocks[1].o.values(), m.weights.blocks[1].o.values(), "o untouched");
    }
}
