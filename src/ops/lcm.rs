//! Latent convergence modulation at a block's residual output: `shaders/lcm_scan.wgsl` for
//! scans, `shaders/lcm.wgsl` for a row per sequence (decode's step, bit for bit).
//! Host-side settings live in [`crate::modulate`].

use crate::gpu::{shader::Define, Gpu, Step, Tensor};
use anyhow::{anyhow, Result};

/// Most anchors (scales) per layer the kernel keeps.
pub const MAX_SCALES: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LcmParams {
    n_rows: u32,
    d: u32,
    n_scales: u32,
    sink: u32,
    tau: f32,
    kappa: f32,
    keep_norm: u32,
    normalized: u32,
}

/// Workgroup sizes the scans come in (WG).
const SCAN_WGS: [u32; 2] = [64, 256];
/// Hidden indices per thread the register path comes in (PER): powers of two, so that a few
/// variants cover every width.
const SLICES: [u32; 5] = [1, 2, 4, 8, 16];
/// Most anchor values (SCALES × PER) a thread keeps in registers; wider anchors stay in memory.
const MAX_REGISTER_ANCHORS: u32 = 64;

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    let mut v = vec![("lcm", vec![("SAVE", 0)]), ("lcm", vec![("SAVE", 1)])];
    for scales in 1..=MAX_SCALES as u32 {
        for wg in SCAN_WGS {
            for per in [0].into_iter().chain(SLICES).filter(|per| scales * per <= MAX_REGISTER_ANCHORS) {
                for subgroup in [0, 1] {
                    let shape = [("SUBGROUP", subgroup), ("SCALES", scales), ("WG", wg), ("PER", per)];
                    for save in [0, 1] {
                        v.push(("lcm_scan", [&shape[..], &[("SAVE", save)]].concat()));
                    }
                    v.push(("lcm_backward", shape.to_vec()));
                }
            }
        }
    }
    v
}

/// How the scans (lcm_scan.wgsl, lcm_backward.wgsl) run: the recurrence is serial over positions,
/// so what matters is the length of each row's chain of reductions and memory round trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanKernel {
    /// Threads per workgroup (one workgroup per sequence).
    pub wg: u32,
    /// Subgroup sums with one barrier per reduction (SUBGROUP), else the portable tree.
    pub subgroup: bool,
    /// Each thread keeps its slice of the anchors in registers across rows when it fits
    /// (PER), else they stay in memory.
    pub registers: bool,
}

impl ScanKernel {
    /// What this adapter runs: 256 threads on GPUs (each row's work spread wide), 64 on CPU
    /// adapters (a barrier costs them a pass over every lane); subgroup sums where the adapter
    /// has subgroups of at least 4 lanes; registers. `KEEL_LCM_SCAN` (comma-separated `tree`,
    /// `memory`, `wg64`, `wg256`) forces the portable tree, anchors in memory or a workgroup
    /// size, to compare them (benches) and to test them on one adapter.
    pub fn for_adapter(gpu: &Gpu) -> Result<ScanKernel> {
        static FORCED: std::sync::OnceLock<Result<Vec<String>, String>> = std::sync::OnceLock::new();
        let forced = FORCED.get_or_init(|| match std::env::var("KEEL_LCM_SCAN") {
            Err(_) => Ok(Vec::new()),
            Ok(text) => Self::parse(&text),
        });
        let forced = forced.clone().map_err(|e| anyhow!(e))?;
        let has = |word: &str| forced.iter().any(|w| w == word);
        let subgroups = gpu.features.contains(wgpu::Features::SUBGROUP) && gpu.info.subgroup_min_size >= 4;
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let wg = if has("wg64") {
            64
        } else if has("wg256") || !cpu {
            256
        } else {
            64
        };
        Ok(ScanKernel { wg, subgroup: subgroups && !has("tree"), registers: !has("memory") })
    }

    fn parse(text: &str) -> Result<Vec<String>, String> {
        let words: Vec<String> =
            text.split(',').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect();
        match words.iter().find(|w| !["tree", "memory", "wg64", "wg256"].contains(&w.as_str())) {
            Some(bad) => Err(format!(
                "KEEL_LCM_SCAN takes comma-separated tree, memory, wg64, wg256; got '{bad}' in '{text}'"
            )),
            None => Ok(words),
        }
    }

    /// The defines for `n_scales` anchors of width `d`: PER is the slice each thread keeps in
    /// registers, 0 when the anchors stay in memory.
    fn defines(self, d: usize, n_scales: usize) -> [Define; 4] {
        let per = (d as u32).div_ceil(self.wg).next_power_of_two();
        let scales = n_scales as u32;
        let fits = self.registers && SLICES.contains(&per) && scales * per <= MAX_REGISTER_ANCHORS;
        [
            ("SUBGROUP", self.subgroup as u32),
            ("SCALES", scales),
            ("WG", self.wg),
            ("PER", if fits { per } else { 0 }),
        ]
    }
}

/// The per-layer operator settings the kernel needs.
#[derive(Clone, Copy, Debug)]
pub struct LcmShape {
    pub tau: f32,
    pub kappa: f32,
    pub keep_norm: bool,
    pub normalized: bool,
    pub sink: usize,
    pub kernel: ScanKernel,
}

impl LcmShape {
    fn params(&self, n_rows: usize, d: usize, n_scales: usize) -> LcmParams {
        LcmParams {
            n_rows: n_rows as u32,
            d: d as u32,
            n_scales: n_scales as u32,
            sink: self.sink as u32,
            tau: self.tau,
            kappa: self.kappa,
            keep_norm: self.keep_norm as u32,
            normalized: self.normalized as u32,
        }
    }
}

/// One modulated layer's state as the kernels that apply LCM bind it: the (sequence, position)
/// row table, the anchors `[seqs, n_scales, d]`, the (rho, gamma) pairs, the statistics
/// `[seqs, 4]`, and the arrival counter (one zeroed u32) of the matrix-vector kernel that
/// applies LCM in its last workgroup (see [`crate::ops::matmul::linear_spans_modulated`]).
#[derive(Clone, Copy)]
pub struct Modulation<'a> {
    pub rows: &'a Tensor,
    pub anchor: &'a Tensor,
    pub scales: &'a Tensor,
    pub stats: &'a Tensor,
    pub arrived: &'a Tensor,
    pub shape: LcmShape,
}

/// The settings matvec.wgsl's LCM epilogue reads after the product's own (its `Params` from
/// `first_row` on).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EpilogueParams {
    first_row: u32,
    n_seqs: u32,
    n_scales: u32,
    sink: u32,
    tau: f32,
    kappa: f32,
    keep_norm: u32,
    normalized: u32,
}

impl<'a> Modulation<'a> {
    /// Records lcm.wgsl over rows `0..n_rows` of `x` (see [`lcm`]).
    pub fn record(&self, step: &mut Step, x: &Tensor, n_rows: usize) {
        lcm(step, x, self.rows, self.anchor, self.scales, self.stats, self.shape, n_rows, None);
    }

    /// The epilogue's settings for rows `first_row ..` of the row table, each `d` wide, and
    /// its buffers in binding order.
    pub fn epilogue(&self, first_row: usize, d: usize) -> (EpilogueParams, [(&'static str, &'a Tensor); 5]) {
        let (seqs, n_scales) = (self.anchor.shape[0], self.anchor.shape[1]);
        assert!(self.anchor.shape[2] == d && (1..=MAX_SCALES).contains(&n_scales));
        assert!(self.scales.numel() >= 2 * n_scales && self.stats.numel() >= 4 * seqs);
        assert!(self.arrived.dtype == crate::gpu::DType::U32 && self.arrived.numel() >= 1);
        let p = self.shape.params(0, d, n_scales);
        let params = EpilogueParams {
            first_row: first_row as u32,
            n_seqs: seqs as u32,
            n_scales: p.n_scales,
            sink: p.sink,
            tau: p.tau,
            kappa: p.kappa,
            keep_norm: p.keep_norm,
            normalized: p.normalized,
        };
        let m = self;
        (
            params,
            bind![rows = m.rows, anchor = m.anchor, scales = m.scales, stats = m.stats, arrived = m.arrived],
        )
    }
}

/// Modulates rows `0..n_rows` of `x` in place, scanning each sequence's rows in order.
/// `anchor` is `[seqs, n_scales, d]` (carried between calls), `scales` holds (rho, gamma)
/// pairs, `stats` `[seqs, 4]` accumulates (gate, divergence, count). With `history`
/// `[rows, n_scales, d]` also writes the anchors each row saw there (training keeps them for
/// [`lcm_backward`]).
#[allow(clippy::too_many_arguments)]
pub fn lcm(
    step: &mut Step,
    x: &Tensor,
    rows: &Tensor,
    anchor: &Tensor,
    scales: &Tensor,
    stats: &Tensor,
    shape: LcmShape,
    n_rows: usize,
    history: Option<&Tensor>,
) {
    let (seqs, n_scales, d) = (anchor.shape[0], anchor.shape[1], anchor.shape[2]);
    assert!((1..=MAX_SCALES).contains(&n_scales) && scales.numel() >= 2 * n_scales);
    assert!(x.numel() >= n_rows * d && stats.numel() >= 4 * seqs);
    let params = shape.params(n_rows, d, n_scales);
    let save = ("SAVE", history.is_some() as u32);
    // Calls decode's epilogue could make (matvec.wgsl's LCM: up to MATVEC_MAX_M rows) and
    // batch decode steps (a row per sequence) take lcm.wgsl, whose step is bit for bit the
    // epilogue's (lcm_step.wgsl); longer scans take lcm_scan.wgsl.
    let pipeline = if n_rows <= seqs.max(crate::ops::matmul::MATVEC_MAX_M) {
        step.gpu.pipeline("lcm", &[save])
    } else {
        step.gpu.pipeline("lcm_scan", &[&shape.kernel.defines(d, n_scales)[..], &[save]].concat())
    };
    let mut buffers = bind![x, rows, anchor, scales, stats].to_vec();
    if let Some(h) = history {
        assert!(h.numel() >= n_rows * n_scales * d);
        buffers.push(("history", h));
    }
    step.dispatch(pipeline, &params, &buffers, [seqs as u32, 1, 1]);
}

/// Backward of [`lcm`] over rows `0..n_rows`: `dy` (the gradient at the modulated
/// states) becomes the gradient at `h`, the states before modulation, in place.
/// `d_anchor` `[seqs, n_scales, d]` must be zero; it is zero again afterwards.
#[allow(clippy::too_many_arguments)]
pub fn lcm_backward(
    step: &mut Step,
    (h, history): (&Tensor, &Tensor),
    rows: &Tensor,
    scales: &Tensor,
    dy: &Tensor,
    d_anchor: &Tensor,
    shape: LcmShape,
    n_rows: usize,
) {
    let (seqs, n_scales, d) = (d_anchor.shape[0], d_anchor.shape[1], d_anchor.shape[2]);
    assert!((1..=MAX_SCALES).contains(&n_scales) && scales.numel() >= 2 * n_scales);
    assert!(h.numel() >= n_rows * d && dy.numel() >= n_rows * d && history.numel() >= n_rows * n_scales * d);
    let params = shape.params(n_rows, d, n_scales);
    let pipeline = step.gpu.pipeline("lcm_backward", &shape.kernel.defines(d, n_scales));
    step.dispatch(pipeline, &params, &bind![h, rows, history, scales, dy, d_anchor], [seqs as u32, 1, 1]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::gpu::DType;
    use crate::ops::test_util::*;

    /// Every way the scans can run on this adapter: both workgroup sizes, subgroup sums (where
    /// the adapter has them) and the portable tree, anchors in registers and in memory.
    fn scan_kernels(gpu: &Gpu) -> Vec<ScanKernel> {
        let own = ScanKernel::for_adapter(gpu).unwrap();
        let mut kernels = Vec::new();
        for wg in SCAN_WGS {
            for subgroup in [false, true].into_iter().filter(|&s| !s || own.subgroup) {
                for registers in [true, false] {
                    kernels.push(ScanKernel { wg, subgroup, registers });
                }
            }
        }
        kernels
    }

    /// On an adapter with subgroups (lavapipe has them) the tests below run all eight ways;
    /// every width and number of scales gets a variant the naga test validates.
    #[test]
    fn scan_kernels_and_their_slices_per_width() {
        let gpu = gpu();
        let kernels = scan_kernels(gpu);
        if gpu.features.contains(wgpu::Features::SUBGROUP) {
            assert_eq!(kernels.len(), 8, "{kernels:?}");
        }
        let all = variants();
        for kernel in &kernels {
            for d in [64, 70, 576, 4096, 9000] {
                for k in 1..=MAX_SCALES {
                    let forward = [&kernel.defines(d, k)[..], &[("SAVE", 1)]].concat();
                    assert!(all.contains(&("lcm_scan", forward)), "{kernel:?} d={d} scales={k}");
                    assert!(
                        all.contains(&("lcm_backward", kernel.defines(d, k).to_vec())),
                        "{kernel:?} d={d}"
                    );
                }
            }
        }
        // A slice of 2 per thread at 64 threads, 1 at 256; 3 rounds up to 4; too wide: memory.
        let k = |wg, registers| ScanKernel { wg, subgroup: true, registers };
        assert_eq!(k(64, true).defines(70, 1)[3], ("PER", 2));
        assert_eq!(k(256, true).defines(70, 1)[3], ("PER", 1));
        assert_eq!(k(64, true).defines(150, 4)[3], ("PER", 4));
        assert_eq!(k(256, true).defines(4096, 4)[3], ("PER", 16));
        assert_eq!(k(256, true).defines(4097, 1)[3], ("PER", 0));
        assert_eq!(k(64, true).defines(1024, 4)[3], ("PER", 16));
        assert_eq!(k(64, false).defines(70, 1)[3], ("PER", 0));
        assert!(ScanKernel::parse("tree, wg64").is_ok());
        assert!(ScanKernel::parse("tree,registers").unwrap_err().contains("'registers'"));
    }

    /// A prefill of 9 positions split into two calls (7 rows, then 2 single decode rows)
    /// equals one reference scan, for each variant and each way the scan runs.
    #[test]
    fn lcm_scan_matches_cpu_across_calls() {
        let gpu = gpu();
        let t = 9;
        let cases = [
            (vec![(0.9f32, 0.6f32)], false, true, 0usize),
            (vec![(0.5, 0.3), (0.9, 0.2), (0.99, 0.1)], false, false, 0),
            (vec![(0.8, 0.5)], true, true, 2),
        ];
        let runs = scan_kernels(gpu).into_iter().flat_map(|k| [70, 150].map(|d| (k, d)));
        for ((scales, normalized, keep_norm, sink), (kernel, d)) in
            runs.flat_map(|run| cases.clone().map(|case| (case, run)))
        {
            let h = rand_vec(1, t * d, 1.0);
            let shape = LcmShape { tau: 0.05, kappa: 20.0, keep_norm, normalized, sink, kernel };
            let flat: Vec<f32> = scales.iter().flat_map(|&(r, g)| [r, g]).collect();
            let scales_t = gpu.upload_f32("scales", &[scales.len(), 2], &flat).unwrap();
            let anchor = gpu.zeros("anchor", &[1, scales.len(), d], DType::F32).unwrap();
            let stats = gpu.zeros("stats", &[1, 4], DType::F32).unwrap();
            let mut got = Vec::new();
            for (start, len) in [(0, 7), (7, 1), (8, 1)] {
                let x = gpu.upload_f32("x", &[len, d], &h[start * d..(start + len) * d]).unwrap();
                let rows: Vec<u32> = (start..start + len).flat_map(|p| [0, p as u32]).collect();
                let rows = gpu.upload_u32("rows", &[len, 2], &rows).unwrap();
                let mut step = Step::new(gpu);
                lcm(&mut step, &x, &rows, &anchor, &scales_t, &stats, shape, len, None);
                step.submit().unwrap();
                got.extend(gpu.read_f32(&x).unwrap());
            }
            let mut want = h.clone();
            let (g, s, n) =
                cpu::lcm::lcm_scan(&mut want, d, &scales, (0.05, 20.0), keep_norm, normalized, sink);
            let what = format!("lcm scales={scales:?} normalized={normalized} sink={sink} d={d} {kernel:?}");
            assert_close(&got, &want, 1e-5, &what);
            let st = gpu.read_f32(&stats).unwrap();
            assert!((st[0] as f64 - g).abs() < 1e-4 && (st[1] as f64 - s).abs() < 1e-4, "{what}: stats");
            assert_eq!(st[2] as usize, n, "{what}: count");
        }
    }

    /// The reverse scan on two training sequences (rows seq × T + t) against the CPU
    /// reference, for each variant and each way the scans run; the anchors' gradient buffer
    /// ends at zero.
    #[test]
    fn lcm_backward_matches_cpu() {
        let gpu = gpu();
        let (seqs, t, d) = (2, 9, 70);
        let h: Vec<f32> = rand_vec(1, seqs * t * d, 1.0).iter().map(|x| x + 0.2).collect();
        let dy = rand_vec(2, seqs * t * d, 1.0);
        let cases = [
            (vec![(0.9f32, 0.6f32)], false, true, 0usize),
            (vec![(0.5, 0.3), (0.9, 0.2), (0.99, 0.1)], false, false, 0),
            (vec![(0.8, 0.5)], true, true, 2),
            (vec![(0.7, 0.4), (0.95, 0.3)], false, true, 1),
        ];
        let rows: Vec<u32> = (0..seqs * t).flat_map(|r| [(r / t) as u32, (r % t) as u32]).collect();
        let rows = gpu.upload_u32("rows", &[seqs * t, 2], &rows).unwrap();
        for ((scales, normalized, keep_norm, sink), kernel) in
            scan_kernels(gpu).into_iter().flat_map(|k| cases.clone().map(|case| (case, k)))
        {
            let (tau, kappa) = (0.05, 4.0);
            let shape = LcmShape { tau, kappa, keep_norm, normalized, sink, kernel };
            let k = scales.len();
            let flat: Vec<f32> = scales.iter().flat_map(|&(r, g)| [r, g]).collect();
            let scales_t = gpu.upload_f32("scales", &[k, 2], &flat).unwrap();
            let anchor = gpu.zeros("anchor", &[seqs, k, d], DType::F32).unwrap();
            let d_anchor = gpu.zeros("d anchor", &[seqs, k, d], DType::F32).unwrap();
            let stats = gpu.zeros("stats", &[seqs, 4], DType::F32).unwrap();
            let history = gpu.zeros("history", &[seqs * t, k, d], DType::F32).unwrap();
            let x = gpu.upload_f32("x", &[seqs * t, d], &h).unwrap();
            let h_t = gpu.upload_f32("h", &[seqs * t, d], &h).unwrap();
            let dy_t = gpu.upload_f32("dy", &[seqs * t, d], &dy).unwrap();
            let mut step = Step::new(gpu);
            lcm(&mut step, &x, &rows, &anchor, &scales_t, &stats, shape, seqs * t, Some(&history));
            lcm_backward(&mut step, (&h_t, &history), &rows, &scales_t, &dy_t, &d_anchor, shape, seqs * t);
            step.submit().unwrap();
            let mut want = dy.clone();
            for s in 0..seqs {
                let span = s * t * d..(s + 1) * t * d;
                let params = (tau, kappa);
                cpu::lcm::lcm_scan_backward(
                    &h[span.clone()],
                    &mut want[span],
                    d,
                    &scales,
                    params,
                    keep_norm,
                    normalized,
                    sink,
                );
            }
            let what = format!(
                "lcm backward scales={scales:?} normalized={normalized} keep_norm={keep_norm} sink={sink} \
                 {kernel:?}"
            );
            assert_close(&gpu.read_f32(&dy_t).unwrap(), &want, 2e-4, &what);
            assert!(gpu.read_f32(&d_anchor).unwrap().iter().all(|&x| x == 0.0), "{what}: d_anchor reset");
        }
    }
}
