//! Latent convergence modulation (LCM): its settings, their parsing and checks, and the
//! per-sequence GPU state (anchors) that the kernel in [`crate::ops::lcm`] carries.
//!
//! Defaults: `gamma` 0 (off). `rho` 0.9, `tau` 0.05 and `kappa` 20 are the values of the
//! first measurement in methods.md; `sink` 0 and raw space keep the literal operator the
//! golden files check. See docs/lcm.md for what each does to the text.

use crate::gpu::{DType, Gpu, Step, Tensor};
use crate::ops::lcm::{lcm, lcm_backward, LcmShape, Modulation, ScanKernel, MAX_SCALES};
use anyhow::{anyhow, bail, Result};
use serde_json::Value;

/// Where LCM compares and pulls hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Space {
    /// The residual stream as it is
    Raw,
    /// Directions: the states divided by their norms
    Normalized,
}

/// Latent convergence modulation's settings (methods.md section 1; docs/lcm.md).
#[derive(Clone, Debug, PartialEq)]
pub struct LcmConfig {
    /// Strength of the pull; 0 turns LCM off.
    pub gamma: f32,
    /// Anchor decay.
    pub rho: f32,
    /// Divergence threshold of the gate.
    pub tau: f32,
    /// Sharpness of the gate.
    pub kappa: f32,
    /// Modulated blocks (0-based); None = the upper half.
    pub layers: Option<Vec<usize>>,
    /// Keep each modulated state's norm.
    pub keep_norm: bool,
    /// Multi-scale anchors as (rho, gamma); empty = one anchor with (rho, gamma) above.
    pub scales: Vec<(f32, f32)>,
    /// Positions 0..sink are neither modulated nor part of the anchor.
    pub sink: usize,
    /// Raw or normalized states.
    pub space: Space,
}

impl Default for LcmConfig {
    fn default() -> Self {
        LcmConfig {
            gamma: 0.0,
            rho: 0.9,
            tau: 0.05,
            kappa: 20.0,
            layers: None,
            keep_norm: true,
            scales: Vec::new(),
            sink: 0,
            space: Space::Raw,
        }
    }
}

/// Parses `"rho:gamma,rho:gamma,..."`.
pub fn parse_scales(s: &str) -> Result<Vec<(f32, f32)>> {
    let bad = || anyhow!("--lcm-scales: expected \"rho:gamma,rho:gamma,...\", got '{s}'");
    s.split(',')
        .map(|pair| {
            let (r, g) = pair.trim().split_once(':').ok_or_else(bad)?;
            Ok((r.trim().parse().map_err(|_| bad())?, g.trim().parse().map_err(|_| bad())?))
        })
        .collect()
}

/// Block indices `--lcm-layers` may name: far beyond any model, and small enough that a
/// range of them is cheap to list.
const MAX_BLOCKS: usize = 1 << 16;

/// Parses `"A-B"` (both ends included) or a single block `"A"`.
pub fn parse_layers(s: &str) -> Result<Vec<usize>> {
    let bad = || anyhow!("--lcm-layers: expected a block range like 15-29, got '{s}'");
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (usize, usize) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    if b >= MAX_BLOCKS {
        bail!("--lcm-layers: block {b} is out of range (Keel's models have fewer than {MAX_BLOCKS} blocks)");
    }
    Ok((a..=b).collect())
}

impl LcmConfig {
    /// True when the operator would do nothing (the plain model runs, bit for bit).
    pub fn is_off(&self) -> bool {
        self.scales().iter().all(|&(_, g)| g == 0.0)
    }

    /// The anchors: (rho, gamma) each.
    pub fn scales(&self) -> Vec<(f32, f32)> {
        if self.scales.is_empty() {
            vec![(self.rho, self.gamma)]
        } else {
            self.scales.clone()
        }
    }

    /// The modulated blocks of a model with `n_layers` blocks.
    pub fn layers_for(&self, n_layers: usize) -> Vec<usize> {
        self.layers.clone().unwrap_or_else(|| (n_layers / 2..n_layers).collect())
    }

    /// Checks every value against the model's block count; errors name the flag.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        let scales = self.scales();
        if scales.len() > MAX_SCALES {
            bail!("--lcm-scales: at most {MAX_SCALES} scales, got {}", scales.len());
        }
        for &(rho, gamma) in &scales {
            if !(0.0..=1.0).contains(&gamma) {
                bail!("--lcm-gamma must be in [0, 1], got {gamma}");
            }
            if !(0.0..1.0).contains(&rho) {
                bail!("--lcm-rho must be in [0, 1), got {rho}");
            }
        }
        if !self.tau.is_finite() || !self.kappa.is_finite() || self.kappa < 0.0 {
            bail!("--lcm-tau must be finite and --lcm-kappa finite and >= 0");
        }
        if let Some(bad) = self.layers_for(n_layers).iter().find(|&&l| l >= n_layers) {
            bail!("--lcm-layers: block {bad} is out of range (the model has blocks 0-{})", n_layers - 1);
        }
        Ok(())
    }

    /// The setting as a JSON object that [`LcmConfig::from_json`] reads back.
    pub fn to_json(&self) -> Value {
        // f32 through its shortest decimal, so 0.9 is written as 0.9, not 0.8999999761581421.
        let short = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::NAN);
        let mut v = serde_json::json!({
            "gamma": short(self.gamma), "rho": short(self.rho), "tau": short(self.tau), "kappa": short(self.kappa),
            "keep_norm": self.keep_norm, "sink": self.sink,
            "space": match self.space { Space::Raw => "raw", Space::Normalized => "normalized" },
        });
        if let Some(layers) = &self.layers {
            v["layers"] = serde_json::json!(layers);
        }
        if !self.scales.is_empty() {
            v["scales"] = self.scales.iter().map(|&(r, g)| serde_json::json!([short(r), short(g)])).collect();
        }
        v
    }

    /// Reads a JSON object with the golden files' `lcm_config` keys (`gamma`, `rho`, `tau`,
    /// `kappa`, `layers`, `keep_norm`, `scales`, `sink`, `space`).
    pub fn from_json(v: &Value, file: &str) -> Result<LcmConfig> {
        let obj = v.as_object().ok_or_else(|| anyhow!("{file}: expected a JSON object"))?;
        let mut c = LcmConfig::default();
        let num = |k: &str, x: &Value| {
            x.as_f64().map(|f| f as f32).ok_or_else(|| anyhow!("{file}: '{k}' must be a number, got {x}"))
        };
        let uint = |k: &str, x: &Value| {
            x.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| anyhow!("{file}: '{k}' must be a non-negative integer, got {x}"))
        };
        for (k, x) in obj {
            match k.as_str() {
                "gamma" => c.gamma = num(k, x)?,
                "rho" => c.rho = num(k, x)?,
                "tau" => c.tau = num(k, x)?,
                "kappa" => c.kappa = num(k, x)?,
                "keep_norm" => {
                    c.keep_norm =
                        x.as_bool().ok_or_else(|| anyhow!("{file}: 'keep_norm' must be true or false"))?
                }
                "sink" => c.sink = uint(k, x)?,
                "layers" => {
                    let list = x
                        .as_array()
                        .ok_or_else(|| anyhow!("{file}: 'layers' must be a list of block indices"))?;
                    c.layers = Some(list.iter().map(|l| uint("layers", l)).collect::<Result<_>>()?);
                }
                "scales" => {
                    let list = x
                        .as_array()
                        .ok_or_else(|| anyhow!("{file}: 'scales' must be [[rho, gamma], ...]"))?;
                    c.scales = list
                        .iter()
                        .map(|p| match p.as_array().map(|a| a.as_slice()) {
                            Some([r, g]) => Ok((num("scales", r)?, num("scales", g)?)),
                            _ => Err(anyhow!("{file}: 'scales' must be [[rho, gamma], ...], got {p}")),
                        })
                        .collect::<Result<_>>()?;
                }
                "space" => {
                    c.space = match x.as_str() {
                        Some("raw") => Space::Raw,
                        Some("normalized") => Space::Normalized,
                        _ => bail!("{file}: 'space' must be \"raw\" or \"normalized\", got {x}"),
                    }
                }
                other => bail!("{file}: unknown LCM key '{other}'"),
            }
        }
        Ok(c)
    }
}

/// Anchors and statistics of every modulated layer, for `seqs` sequences.
pub struct LcmState {
    shape: LcmShape,
    /// (block index, anchors `[seqs, scales, d]`, stats `[seqs, 4]`).
    layers: Vec<(usize, Tensor, Tensor)>,
    scales: Tensor,
    /// The arrival counter of the decode kernel that applies LCM in its last workgroup.
    arrived: Tensor,
}

/// LCM inside a training step: [`LcmState`] plus, per modulated layer, what its reverse
/// scan reads (the states before modulation and the anchors each row saw), and the anchors'
/// gradient, shared by the layers (each backward call leaves it at zero).
pub struct LcmTraining {
    state: LcmState,
    /// (states before modulation `[rows, d]`, anchor history `[rows, scales, d]`) per layer.
    saved: Vec<(Tensor, Tensor)>,
    d_anchor: Tensor,
}

impl LcmTraining {
    /// None when the config is off.
    pub fn new(
        gpu: &Gpu,
        cfg: &LcmConfig,
        n_layers: usize,
        d: usize,
        (seqs, rows): (usize, usize),
    ) -> Result<Option<Self>> {
        let Some(state) = LcmState::new(gpu, cfg, n_layers, d, seqs)? else { return Ok(None) };
        let k = state.scales.shape[0];
        let saved = state
            .layers
            .iter()
            .map(|(l, _, _)| {
                let h = gpu.zeros(&format!("lcm input {l}"), &[rows, d], DType::F32)?;
                Ok((h, gpu.zeros(&format!("lcm history {l}"), &[rows, k, d], DType::F32)?))
            })
            .collect::<Result<_>>()?;
        let d_anchor = gpu.zeros("lcm anchor gradient", &[seqs, k, d], DType::F32)?;
        Ok(Some(LcmTraining { state, saved, d_anchor }))
    }

    fn find(&self, layer: usize) -> Option<usize> {
        self.state.layers.iter().position(|(l, _, _)| *l == layer)
    }

    /// At `blocks.{layer}.resid_post`: keeps `x`, then modulates it, keeping the anchors.
    pub fn record_forward(&self, step: &mut Step, layer: usize, x: &Tensor, rows: &Tensor, n_rows: usize) {
        let Some(i) = self.find(layer) else { return };
        let (_, anchors, stats) = &self.state.layers[i];
        let (h, history) = &self.saved[i];
        step.copy(x, 0, h, 0, h.numel());
        let s = &self.state;
        lcm(step, x, rows, anchors, &s.scales, stats, s.shape, n_rows, Some(history));
    }

    /// Turns `dx`, the gradient at the modulated `blocks.{layer}.resid_post`, into the
    /// gradient before modulation.
    pub fn record_backward(&self, step: &mut Step, layer: usize, dx: &Tensor, rows: &Tensor, n_rows: usize) {
        let Some(i) = self.find(layer) else { return };
        let (h, history) = &self.saved[i];
        let s = &self.state;
        lcm_backward(step, (h, history), rows, &s.scales, dx, &self.d_anchor, s.shape, n_rows);
    }

    pub fn bytes(&self) -> u64 {
        let state: u64 = self.state.layers.iter().map(|(_, a, s)| a.bytes() + s.bytes()).sum();
        state
            + self.saved.iter().map(|(h, hist)| h.bytes() + hist.bytes()).sum::<u64>()
            + self.d_anchor.bytes()
    }
}

/// Mean gate and divergence of one modulated layer (what `score --json` reports).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerStats {
    pub layer: usize,
    pub mean_gate: f64,
    pub mean_divergence: f64,
}

impl LcmState {
    /// None when the config is off: the plain forward pass then runs untouched.
    pub fn new(
        gpu: &Gpu,
        cfg: &LcmConfig,
        n_layers: usize,
        d: usize,
        seqs: usize,
    ) -> Result<Option<LcmState>> {
        cfg.validate(n_layers)?;
        if cfg.is_off() {
            return Ok(None);
        }
        let scales = cfg.scales();
        let flat: Vec<f32> = scales.iter().flat_map(|&(r, g)| [r, g]).collect();
        let mut layers = Vec::new();
        for l in cfg.layers_for(n_layers) {
            let anchors = gpu.zeros(&format!("lcm anchors {l}"), &[seqs, scales.len(), d], DType::F32)?;
            let stats = gpu.zeros(&format!("lcm stats {l}"), &[seqs, 4], DType::F32)?;
            layers.push((l, anchors, stats));
        }
        Ok(Some(LcmState {
            shape: LcmShape {
                tau: cfg.tau,
                kappa: cfg.kappa,
                keep_norm: cfg.keep_norm,
                normalized: cfg.space == Space::Normalized,
                sink: cfg.sink,
                kernel: ScanKernel::for_adapter(gpu)?,
            },
            layers,
            scales: gpu.upload_f32("lcm scales", &[scales.len(), 2], &flat)?,
            arrived: gpu.zeros("lcm arrivals", &[1], DType::U32)?,
        }))
    }

    /// A state of the same shape (zeroed), for a forked session.
    pub fn duplicate(&self, gpu: &Gpu) -> Result<LcmState> {
        let layers = self
            .layers
            .iter()
            .map(|(l, a, s)| {
                Ok((
                    *l,
                    gpu.zeros("lcm anchors", &a.shape, DType::F32)?,
                    gpu.zeros("lcm stats", &s.shape, DType::F32)?,
                ))
            })
            .collect::<Result<_>>()?;
        let arrived = gpu.zeros("lcm arrivals", &[1], DType::U32)?;
        Ok(LcmState { shape: self.shape, layers, scales: self.scales.clone(), arrived })
    }

    /// Records copying the anchors and statistics into `other` (from [`LcmState::duplicate`]).
    pub fn record_copy(&self, step: &mut Step, other: &LcmState) {
        for ((_, a, s), (_, a2, s2)) in self.layers.iter().zip(&other.layers) {
            step.copy(a, 0, a2, 0, a.numel());
            step.copy(s, 0, s2, 0, s.numel());
        }
    }

    /// Per modulated layer: the anchors `[seqs, scales, d]` and statistics `[seqs, 4]` (a batch
    /// copies one sequence's onto another that shares its prefill).
    pub fn per_sequence(&self) -> impl Iterator<Item = (&Tensor, &Tensor)> {
        self.layers.iter().map(|(_, a, s)| (a, s))
    }

    /// Records the operator at `blocks.{layer}.resid_post` if that block is modulated.
    pub fn record(&self, step: &mut Step, layer: usize, x: &Tensor, rows: &Tensor, n_rows: usize) {
        if let Some(modulation) = self.at(layer, rows) {
            modulation.record(step, x, n_rows);
        }
    }

    /// Block `layer`'s modulation over the rows of `rows` ((sequence, position) each), or
    /// None if that block is not modulated.
    pub fn at<'a>(&'a self, layer: usize, rows: &'a Tensor) -> Option<Modulation<'a>> {
        let (_, anchor, stats) = self.layers.iter().find(|(l, _, _)| *l == layer)?;
        let (scales, arrived, shape) = (&self.scales, &self.arrived, self.shape);
        Some(Modulation { rows, anchor, scales, stats, arrived, shape })
    }

    /// Per modulated layer: mean gate and divergence over sequence `seq`'s positions so far.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn stats(&self, gpu: &Gpu, seq: usize) -> Result<Vec<LayerStats>> {
        self.layers
            .iter()
            .map(|(l, _, stats)| {
                let s = gpu.read_f32_range(stats, 4 * seq, 4)?;
                let n = (s[2] as f64).max(1.0);
                Ok(LayerStats { layer: *l, mean_gate: s[0] as f64 / n, mean_divergence: s[1] as f64 / n })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_flags_and_config_files() {
        assert_eq!(parse_scales("0.5:0.1, 0.99:0.05").unwrap(), vec![(0.5, 0.1), (0.99, 0.05)]);
        assert!(parse_scales("0.5").is_err() && parse_scales("a:b").is_err());
        assert_eq!(parse_layers("2-4").unwrap(), vec![2, 3, 4]);
        assert_eq!(parse_layers("3").unwrap(), vec![3]);
        assert!(parse_layers("4-2").is_err() && parse_layers("x").is_err());
        // A range that would list 2^64 blocks is refused before anything is allocated.
        let msg = parse_layers("0-18446744073709551615").unwrap_err().to_string();
        assert!(msg.contains("block 18446744073709551615 is out of range"), "{msg}");
        let c = LcmConfig::from_json(
            &json!({"gamma": 0.6, "rho": 0.9, "tau": 0.05, "kappa": 20.0, "layers": [2, 3, 4], "keep_norm": true}),
            "cfg.json",
        )
        .unwrap();
        assert_eq!(c.layers, Some(vec![2, 3, 4]));
        assert_eq!(c.scales(), vec![(0.9, 0.6)]);
        assert_eq!(c.to_json()["rho"], json!(0.9));
        assert_eq!(LcmConfig::from_json(&c.to_json(), "round trip").unwrap(), c);
        assert!(LcmConfig::from_json(&json!({"gama": 1}), "f")
            .unwrap_err()
            .to_string()
            .contains("unknown LCM key"));
        let multi = LcmConfig::from_json(
            &json!({"scales": [[0.5, 0.1], [0.9, 0.2]], "space": "normalized", "sink": 1}),
            "f",
        )
        .unwrap();
        assert_eq!((multi.scales().len(), multi.space, multi.sink), (2, Space::Normalized, 1));
        assert_eq!(LcmConfig::from_json(&multi.to_json(), "round trip").unwrap(), multi);
    }

    #[test]
    fn validation_names_the_flag() {
        let err = |c: LcmConfig| c.validate(5).unwrap_err().to_string();
        assert!(err(LcmConfig { gamma: 1.5, ..Default::default() }).contains("--lcm-gamma"));
        assert!(err(LcmConfig { gamma: -0.1, ..Default::default() }).contains("--lcm-gamma"));
        assert!(err(LcmConfig { rho: 1.0, ..Default::default() }).contains("--lcm-rho"));
        assert!(err(LcmConfig { layers: Some(vec![5]), ..Default::default() }).contains("out of range"));
        assert!(LcmConfig::default().is_off());
        assert_eq!(LcmConfig::default().layers_for(30), (15..30).collect::<Vec<_>>());
    }
}
