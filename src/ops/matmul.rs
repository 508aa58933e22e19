//! Matrix multiply. Linear layers store weights as `[out, in]` (Hugging Face's nn.Linear), so
//! the forward pass is `y = x · Wᵀ`; the same kernels compute the input gradient `dy · W` and
//! the weight gradient `dyᵀ · x` through strides. Products of a few rows with a weight (decode)
//! go to the matrix-vector kernel, `shaders/matvec.wgsl`; the rest to the adapter's
//! [`Tier`]: the register-blocked `shaders/matmul.wgsl` (portable, CPU adapters) or the
//! workgroup-tiled `shaders/gemm.wgsl` (GPUs; on cooperative matrices for the coop tier).
//! Weights may be packed (f16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K: `shaders/wfmt.wgsl`) when
//! they are the `W` of a forward x·Wᵀ or of an input gradient dy·W (LoRA over a frozen packed
//! base); the kernels dequantize them as they read them and accumulate in f32.
//! A [`Step`] with `f16_operands` (mixed-precision training) rounds every operand to f16 as
//! the kernels load it (`F16_OPERANDS`, shaders/operand.wgsl), accumulating in f32; such
//! products never take the matrix-vector kernel, which decode alone needs.
//! A [`Prologue`] (an RMSNorm, the SiLU gate) is applied as the kernel loads A, replacing the
//! dispatch that would have written it: by the matrix-vector kernel (decode) and, for x·Wᵀ,
//! by the tiled tiers' gemm.wgsl (prefill and scoring chunks); the portable kernel reads the
//! dispatch's output.

use crate::gpu::WeightFormat;
use crate::gpu::{shader::Define, Gpu, Step, Tensor, Tier};
use crate::ops::lcm::{EpilogueParams, Modulation};
use crate::ops::stats::{HeadPick, PickParams};

/// A matrix inside a tensor: element (i, j) is at `off + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub t: &'a Tensor,
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix starting at element `off`.
    pub fn rows(t: &'a Tensor, off: usize, cols: usize) -> Self {
        Mat { t, off, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(t: &'a Tensor, off: usize, cols: usize) -> Self {
        Mat { t, off, rs: 1, cs: cols }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    c_off: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    c_rs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    scale: f32,
    eps: f32,
}

/// matvec.wgsl's uniform block with its LCM epilogue.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LcmMatvecParams {
    product: Params,
    lcm: EpilogueParams,
}

/// matvec.wgsl's uniform block with its pick epilogue.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PickMatvecParams {
    product: Params,
    pick: PickParams,
}

/// What the matrix-vector kernel's last workgroups do after the product (natively; see
/// matvec.wgsl).
#[derive(Clone, Copy)]
enum Epilogue<'a> {
    None,
    /// LCM on C's rows, with the row table's index of A's first row.
    Lcm(Modulation<'a>, usize),
    /// Greedy decoding's pick from C's one row.
    Pick(HeadPick<'a>),
}

/// How the kernels load A: as stored, or through a prologue that replaces the dispatch which
/// would have computed it (see matvec.wgsl; gemm.wgsl takes [`Prologue::SiluGate`] and
/// [`Prologue::RmsNorm`]: [`tiled_applies`]).
#[derive(Clone, Copy)]
pub enum Prologue<'a> {
    None,
    /// The stored rows are `[gate | up]` pairs of k columns; A = silu(gate) · up.
    SiluGate,
    /// A = RMSNorm of the stored rows with this weight (`[k]`) and epsilon.
    RmsNorm(&'a Tensor, f32),
    /// [`Prologue::RmsNorm`] of the rows `ids[i]` of an embedding table (the stored A, f32):
    /// the first block's QKV product of a decode step gathers its input, and writes the
    /// gathered rows into the residual stream `stream` (laid out as A's rows would be).
    EmbedRmsNorm {
        norm: &'a Tensor,
        eps: f32,
        ids: &'a Tensor,
        stream: &'a Tensor,
    },
}

/// Whether the tier's kernel for more rows than the matrix-vector kernel's applies `prologue`
/// as it loads A (the tiled tiers: gemm.wgsl's SILU_GATE and RMSNORM; the embedding's gather
/// is decode's only).
pub fn tiled_applies(tier: Tier, prologue: Prologue) -> bool {
    match prologue {
        Prologue::None => true,
        Prologue::SiluGate | Prologue::RmsNorm(..) => tier != Tier::Portable,
        Prologue::EmbedRmsNorm { .. } => false,
    }
}

/// Up to this many rows of A, x·Wᵀ-shaped products use matvec.wgsl: it reads each weight
/// once for all rows, where the 4×4-blocked kernel idles 3/4 of its work at one row. On
/// lavapipe the two tie at 3–4 rows; on GPUs matvec's coalesced weight reads should still win.
pub(crate) const MATVEC_MAX_M: usize = 4;

/// Up to this many outputs, GPUs give each weight row two warps ([`Tile::GPU_NARROW`]).
const NARROW_MAX_N: usize = 1024;

/// How matvec.wgsl splits a workgroup (64 threads): `tpr` threads share each weight row and
/// each thread sums `rpt` rows.
#[derive(Clone, Copy, Debug)]
struct Tile {
    tpr: u32,
    rpt: u32,
    /// Strides whose loads a thread issues before their multiply-adds.
    u: u32,
}

impl Tile {
    const ALL: [Tile; 3] = [Tile::GPU, Tile::GPU_NARROW, Tile::CPU];
    /// GPUs: one warp (32 threads) per weight row, two rows per workgroup, so even n = 576
    /// fills 288 workgroups. Timed on an H200 (SmolLM2 shapes, f32 and Q4_1 decode) against
    /// tpr 8–64 × rpt 1–2: 32 × 1 was fastest (411 tok/s), 64 × 1 next (377); the earlier
    /// 16 × 2 made 269 (docs/bench.md).
    const GPU: Tile = Tile { tpr: 32, rpt: 1, u: 4 };
    /// GPUs, outputs of at most [`NARROW_MAX_N`]: two warps per row, so that SmolLM2's
    /// 576-wide O and down products still run 36,864 threads (18 warps per SM of an H100)
    /// with half as many serial strides each. Not yet timed on a GPU.
    const GPU_NARROW: Tile = Tile { tpr: 64, rpt: 1, u: 4 };
    /// CPU adapters (lavapipe) pay per element loaded, so each thread reuses its loads of A
    /// over 8 rows: the fastest of tpr 2–32 × rpt 1–16 on SmolLM2's shapes, where the GPU
    /// tiling is no faster than the 4×4 kernel. One stride at a time: CPU adapters gain nothing
    /// from loads in flight, and 4 × 8 weights per thread spilled (the LM head ran 4× slower).
    const CPU: Tile = Tile { tpr: 8, rpt: 8, u: 1 };

    /// The tiling for `n` outputs on this adapter.
    fn for_adapter(gpu: &Gpu, n: usize) -> Tile {
        if gpu.info.device_type == wgpu::DeviceType::Cpu {
            Tile::CPU
        } else if n <= NARROW_MAX_N {
            Tile::GPU_NARROW
        } else {
            Tile::GPU
        }
    }

    /// Whether a row's `tpr` threads are lanes of one subgroup on this adapter, so that
    /// matvec.wgsl can sum them with subgroup shuffles (SUBGROUP) instead of workgroup memory.
    /// Assumes subgroups are consecutive, aligned runs of a 1-D workgroup, as Vulkan drivers
    /// form them.
    fn subgroup_sums(self, gpu: &Gpu) -> bool {
        let size = gpu.info.subgroup_min_size;
        gpu.features.contains(wgpu::Features::SUBGROUP) && size >= self.tpr && size.is_multiple_of(self.tpr)
    }

    /// Weight rows per workgroup.
    fn rows(self) -> usize {
        (64 / self.tpr * self.rpt) as usize
    }
}

/// A workgroup tile of the tiled engine (gemm.wgsl): BM × BN outputs of C, BK deep, each
/// thread computing `per_thread` × `per_thread` of them (8, or 4 for small tiles).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmTile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub per_thread: u32,
}

impl GemmTile {
    /// 256 threads of 8×8 outputs (../shared/docs/speed-notes.md, section 5).
    pub const LARGE: GemmTile = GemmTile { bm: 128, bn: 128, bk: 16, per_thread: 8 };
    /// 64 threads of 8×8 outputs.
    pub const MEDIUM: GemmTile = GemmTile { bm: 64, bn: 64, bk: 16, per_thread: 8 };
    /// 64 threads of 4×4 outputs: the portable kernel's workgroups of C, staged.
    pub const SMALL: GemmTile = GemmTile { bm: 32, bn: 32, bk: 16, per_thread: 4 };
    /// Cooperative matrices: four 32-thread subgroups of 2×2 16×16 matrices (no per-thread
    /// share: 0).
    pub const COOP: GemmTile = GemmTile { bm: 64, bn: 64, bk: 32, per_thread: 0 };
    /// The SIMT tiles, largest first.
    pub const SIMT: [GemmTile; 3] = [GemmTile::LARGE, GemmTile::MEDIUM, GemmTile::SMALL];

    /// `128x128x16 8x8`: the tile and each thread's share (`coop`: cooperative matrices).
    pub fn label(self) -> String {
        let share = match self.per_thread {
            0 => "coop".to_string(),
            p => format!("{p}x{p}"),
        };
        format!("{}x{}x{} {share}", self.bm, self.bn, self.bk)
    }

    /// The largest SIMT tile that still makes 128 workgroups (about one per SM of an H100:
    /// prefill's 256-row products would leave most SMs idle on 128×128 tiles), else SMALL.
    /// A guess until measured on a GPU (`keel bench --matmul` times every tile).
    fn for_product(tier: Tier, m: usize, n: usize) -> GemmTile {
        let groups = |t: GemmTile| m.div_ceil(t.bm as usize) * n.div_ceil(t.bn as usize);
        match tier {
            Tier::Coop => GemmTile::COOP,
            _ => GemmTile::SIMT.into_iter().find(|&t| groups(t) >= 128).unwrap_or(GemmTile::SMALL),
        }
    }
}

/// How the products are computed: the matrix-vector tiling for a few rows, the tier for the
/// rest, and for the tiled tiers the workgroup tile (None: chosen per product).
#[derive(Clone, Copy, Debug)]
pub struct Engine {
    /// None: the adapter's tiling for the product's output count.
    matvec: Option<Tile>,
    pub tier: Tier,
    pub tile: Option<GemmTile>,
}

impl Engine {
    /// The adapter's own: its matrix-vector tiling and its device's tier.
    pub fn for_adapter(gpu: &Gpu) -> Engine {
        Engine { matvec: None, tier: gpu.tier, tile: None }
    }

    /// The adapter's matrix-vector tiling with the tier and tile given (the coop tier only on
    /// a device opened for it).
    pub fn with_tier(gpu: &Gpu, tier: Tier, tile: Option<GemmTile>) -> Engine {
        Engine { tier, tile, ..Engine::for_adapter(gpu) }
    }
}

/// The defines selecting how B is stored (none for f32, so f32 variants are unchanged).
pub(crate) fn format_flags(fmt: WeightFormat, native_f16: bool) -> Vec<Define> {
    let flag = match fmt {
        WeightFormat::F32 => return vec![],
        WeightFormat::F16 if native_f16 => return vec![("WQ", 1), ("W_F16", 1), ("W_F16_NATIVE", 1)],
        WeightFormat::F16 => "W_F16",
        WeightFormat::Q8_0 => "W_Q8_0",
        WeightFormat::Q4_0 => "W_Q4_0",
        WeightFormat::Q4_1 => "W_Q4_1",
        // Q4_K and Q5_K share their packing of scales and mins.
        WeightFormat::Q4_K => return vec![("WQ", 1), ("W_Q4_K", 1), ("W_K_SCALES", 1)],
        WeightFormat::Q5_K => return vec![("WQ", 1), ("W_Q5_K", 1), ("W_K_SCALES", 1)],
        WeightFormat::Q6_K => "W_Q6_K",
    };
    vec![("WQ", 1), (flag, 1)]
}

/// Whether f16 weights are read as WGSL `f16` (the adapter has shader-f16) rather than
/// unpacked from u32 words: the same bytes, one conversion instead of an unpack.
fn native_f16(gpu: &Gpu) -> bool {
    #[cfg(test)]
    if tests::UNPACK_F16.get() {
        return false;
    }
    gpu.features.contains(wgpu::Features::SHADER_F16)
}

pub fn variants() -> Vec<(&'static str, Vec<Define>)> {
    let mut v = Vec::new();
    // Packed weights are only read through the vec4 path.
    let layouts = [(0, WeightFormat::F32, false)]
        .into_iter()
        .chain(WeightFormat::ALL.map(|f| (1, f, false)))
        .chain([(1, WeightFormat::F16, true)]);
    for (kvec4, fmt, native) in layouts {
        for bias in [0, 1] {
            for acc in [0, 1] {
                let flags = [vec![("KVEC4", kvec4), ("BIAS", bias), ("ACC", acc)], format_flags(fmt, native)]
                    .concat();
                for half in [0, 1] {
                    let flags = [&flags[..], &[("F16_OPERANDS", half)]].concat();
                    if kvec4 == 1 {
                        v.push(("matmul", flags));
                    } else {
                        for (avec4, bvec4) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            v.push(("matmul", [&flags[..], &[("AVEC4", avec4), ("BVEC4", bvec4)]].concat()));
                        }
                    }
                }
                for m in 1..=MATVEC_MAX_M as u32 {
                    for tile in Tile::ALL {
                        for subgroup in [0, 1] {
                            let shape = [
                                ("MR", m),
                                ("TPR", tile.tpr),
                                ("RPT", tile.rpt),
                                ("U", tile.u),
                                ("SUBGROUP", subgroup),
                            ];
                            v.push(("matvec", [&flags[..], &shape].concat()));
                            // Prologues: the gated MLP's down projection accumulates into the
                            // residual; the normed projections (qkv, up) write.
                            let prologue = if acc == 1 { ("SILU_GATE", 1) } else { ("RMSNORM", 1) };
                            v.push(("matvec", [&flags[..], &shape, &[prologue]].concat()));
                            // LCM after the down projection (gated or not), which adds
                            // into the residual stream.
                            if acc == 1 {
                                v.push(("matvec", [&flags[..], &shape, &[("LCM", 1)]].concat()));
                                v.push(("matvec", [&flags[..], &shape, &[prologue, ("LCM", 1)]].concat()));
                            }
                            // The first block's QKV product gathering the embedding.
                            if acc == 0 {
                                v.push(("matvec", [&flags[..], &shape, &[prologue, ("EMBED", 1)]].concat()));
                            }
                            // The greedy pick after the LM head (one row, no bias), its final
                            // RMSNorm fused or not.
                            if m == 1 && acc == 0 && bias == 0 {
                                v.push(("matvec", [&flags[..], &shape, &[("PICK", 1)]].concat()));
                                v.push(("matvec", [&flags[..], &shape, &[prologue, ("PICK", 1)]].concat()));
                            }
                        }
                    }
                }
            }
        }
    }
    // dy·W with a packed W (LoRA's backward over a packed base): W's rows read along N.
    let packed = WeightFormat::ALL.into_iter().filter(|&f| f != WeightFormat::F32).map(|f| (f, false));
    for (fmt, native) in packed.chain([(WeightFormat::F16, true)]) {
        for (acc, avec4) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            for half in [0, 1] {
                let flags = [("KVEC4", 0), ("BIAS", 0), ("ACC", acc), ("F16_OPERANDS", half)];
                let by_k = [("AVEC4", avec4), ("BVEC4", 1)];
                v.push(("matmul", [&flags[..], &format_flags(fmt, native), &by_k].concat()));
            }
        }
    }
    v.extend(gemm_variants());
    v
}

/// Every variant of gemm.wgsl: each tile, each way of loading A and B (B packed in every
/// format along K or N), with and without bias and accumulation.
fn gemm_variants() -> Vec<(&'static str, Vec<Define>)> {
    let packed = WeightFormat::ALL.into_iter().filter(|&f| f != WeightFormat::F32).map(|f| (f, false));
    let formats: Vec<(WeightFormat, bool)> =
        [(WeightFormat::F32, false)].into_iter().chain(packed).chain([(WeightFormat::F16, true)]).collect();
    let tiles: Vec<(GemmTile, bool)> =
        GemmTile::SIMT.map(|t| (t, false)).into_iter().chain([(GemmTile::COOP, true)]).collect();
    let mut v = Vec::new();
    for &(tile, coop) in &tiles {
        for (akvec4, avec4) in [(0, 0), (1, 0), (0, 1)] {
            for &(fmt, native) in &formats {
                // Packed weights are read as vec4 along K or along N; f32 also by scalars.
                let b_loads: &[(u32, u32)] =
                    if fmt == WeightFormat::F32 { &[(0, 0), (1, 0), (0, 1)] } else { &[(1, 0), (0, 1)] };
                for &(bkvec4, bvec4) in b_loads {
                    for (bias, acc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let loads = GemmLoads { akvec4, avec4, bkvec4, bvec4 };
                        // The cooperative tiles are staged in f16 already.
                        for half in if coop { &[false][..] } else { &[false, true] } {
                            let epilogue = (bias, acc);
                            let defines =
                                gemm_defines(tile, coop, loads, epilogue, (fmt, native), *half, &[]);
                            v.push(("gemm", defines));
                        }
                    }
                }
            }
        }
        // The prologues of inference's x·Wᵀ: A and B along K, or both by scalars (f32, K % 4
        // != 0). As matvec's: the normed products (QKV, gate|up) write, the gated down
        // projection adds into the residual stream.
        for &(fmt, native) in &formats {
            for kvec4 in if fmt == WeightFormat::F32 { &[0, 1][..] } else { &[1] } {
                let loads = GemmLoads { akvec4: *kvec4, avec4: 0, bkvec4: *kvec4, bvec4: 0 };
                for bias in [0, 1] {
                    for (prologue, acc) in [("RMSNORM", 0), ("SILU_GATE", 1)] {
                        let (epilogue, format) = ((bias, acc), (fmt, native));
                        let defines =
                            gemm_defines(tile, coop, loads, epilogue, format, false, &[(prologue, 1)]);
                        v.push(("gemm", defines));
                    }
                }
            }
        }
    }
    v
}

/// Which operands gemm.wgsl reads as vec4, and along which dimension (neither: scalars).
#[derive(Clone, Copy)]
struct GemmLoads {
    akvec4: u32,
    avec4: u32,
    bkvec4: u32,
    bvec4: u32,
}

/// gemm.wgsl's defines; `half`: f16 operands (not with `coop`, whose tiles are f16);
/// `prologue`: its flag, if any.
fn gemm_defines(
    tile: GemmTile,
    coop: bool,
    l: GemmLoads,
    (bias, acc): (u32, u32),
    (fmt, native_f16): (WeightFormat, bool),
    half: bool,
    prologue: &[Define],
) -> Vec<Define> {
    let out4 = (tile.per_thread == 4) as u32;
    let shape = [("BM", tile.bm), ("BN", tile.bn), ("BK", tile.bk), ("COOP", coop as u32), ("OUT4", out4)];
    let loads = [("AKVEC4", l.akvec4), ("AVEC4", l.avec4), ("BKVEC4", l.bkvec4), ("BVEC4", l.bvec4)];
    let epilogue = [("BIAS", bias), ("ACC", acc), ("F16_OPERANDS", (half && !coop) as u32)];
    [&shape[..], &loads, &epilogue, &format_flags(fmt, native_f16), prologue].concat()
}

/// `C[m×n] (+)= A[m×k] · B[k×n] (+ bias[n])`, C row-major with row stride `c.rs`.
pub fn matmul(
    step: &mut Step,
    a: Mat,
    b: Mat,
    c: Mat,
    mnk: (usize, usize, usize),
    bias: Option<&Tensor>,
    accumulate: bool,
) {
    let engine = Engine::for_adapter(step.gpu);
    matmul_on(step, engine, a, b, c, mnk, (1.0, bias), accumulate, Prologue::None);
}

/// `C (+)= scale · A · B` (LoRA's scaled low-rank products).
pub fn matmul_scaled(
    step: &mut Step,
    a: Mat,
    b: Mat,
    c: Mat,
    mnk: (usize, usize, usize),
    scale: f32,
    accumulate: bool,
) {
    let engine = Engine::for_adapter(step.gpu);
    matmul_on(step, engine, a, b, c, mnk, (scale, None), accumulate, Prologue::None);
}

/// [`matmul`] on the engine given (tests and `keel bench --matmul` compare them on one
/// device), A loaded through `prologue` (the matrix-vector kernel; for x·Wᵀ the tiled tiers
/// too, [`tiled_applies`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_on(
    step: &mut Step,
    engine: Engine,
    a: Mat,
    b: Mat,
    c: Mat,
    (m, n, k): (usize, usize, usize),
    (scale, bias): (f32, Option<&Tensor>),
    accumulate: bool,
    prologue: Prologue,
) {
    product(step, engine, a, b, c, (m, n, k), (scale, bias), accumulate, prologue, Epilogue::None);
}

/// [`matmul_on`], with the matrix-vector kernel's `epilogue`.
#[allow(clippy::too_many_arguments)]
fn product(
    step: &mut Step,
    engine: Engine,
    a: Mat,
    b: Mat,
    c: Mat,
    (m, n, k): (usize, usize, usize),
    (scale, bias): (f32, Option<&Tensor>),
    accumulate: bool,
    prologue: Prologue,
    epilogue: Epilogue,
) {
    assert_eq!(c.cs, 1, "C must be row-major");
    if m == 0 || n == 0 {
        return;
    }
    let a_cols = if matches!(prologue, Prologue::SiluGate) { 2 * k } else { k };
    assert!(a.off + (m - 1) * a.rs + a_cols.saturating_sub(1) * a.cs < a.t.numel().max(1));
    assert!(b.off + k.saturating_sub(1) * b.rs + (n - 1) * b.cs < b.t.numel().max(1));
    assert!(c.off + (m - 1) * c.rs + n - 1 < c.t.numel());
    let kvec4 = a.cs == 1 && b.rs == 1 && k % 4 == 0 && [a.off, a.rs, b.off, b.cs].iter().all(|x| x % 4 == 0);
    let half = step.f16_operands;
    let matvec = !half && m <= MATVEC_MAX_M && a.cs == 1 && b.rs == 1;
    // The blocked kernel's column-of-A and row-of-B vec4 loads (backward products).
    let by_k = !kvec4 && !matvec;
    let avec4 = by_k && a.rs == 1 && [m, a.off, a.cs].iter().all(|x| x.is_multiple_of(4));
    let bvec4 = by_k && b.cs == 1 && [n, b.off, b.rs].iter().all(|x| x.is_multiple_of(4));
    let fmt = b.t.format();
    // Packed weights carry no strides: only a whole weight W, as the Wᵀ of x·Wᵀ (row-aligned A)
    // or as the W of dy·W.
    let forward = kvec4 && b.off == 0 && b.cs == k && b.t.shape == [n, k];
    let input_gradient = bvec4 && b.off == 0 && b.rs == n && b.t.shape == [k, n];
    assert!(
        fmt == WeightFormat::F32 || forward || input_gradient,
        "a {} weight can only be the W of x·Wᵀ or dy·W",
        fmt.name()
    );
    let unit = if kvec4 { 4 } else { 1 };
    let (a_unit, b_unit) = (if avec4 { 4 } else { 1 }, if bvec4 { 4 } else { 1 });
    let params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        c_off: c.off as u32,
        a_off: (a.off / unit / a_unit) as u32,
        a_rs: (a.rs / unit) as u32,
        a_cs: (a.cs / a_unit) as u32,
        c_rs: c.rs as u32,
        b_off: (b.off / unit / b_unit) as u32,
        b_rs: (b.rs / b_unit) as u32,
        b_cs: (b.cs / unit) as u32,
        scale,
        eps: match prologue {
            Prologue::RmsNorm(_, eps) | Prologue::EmbedRmsNorm { eps, .. } => eps,
            _ => 0.0,
        },
    };
    let flags = [("KVEC4", kvec4 as u32), ("BIAS", bias.is_some() as u32), ("ACC", accumulate as u32)];
    let flags = [&flags[..], &format_flags(fmt, native_f16(step.gpu))].concat();
    let mut buffers = bind![a = a.t, b = b.t, c = c.t].to_vec();
    let prologue_flag: &[Define] = match prologue {
        Prologue::None => &[],
        Prologue::SiluGate => &[("SILU_GATE", 1)],
        Prologue::RmsNorm(w, _) => {
            assert_eq!(w.numel(), k, "RMSNorm weight");
            buffers.push(("norm_w", w));
            &[("RMSNORM", 1)]
        }
        Prologue::EmbedRmsNorm { norm, ids, stream, .. } => {
            assert!(norm.numel() == k && a.t.dtype == crate::gpu::DType::F32 && a.rs == k);
            let first = a.off / k;
            assert!(ids.numel() >= first + m && stream.numel() >= (first + m) * k);
            buffers.push(("norm_w", norm));
            &[("RMSNORM", 1), ("EMBED", 1)]
        }
    };
    let tiled = !matvec && engine.tier != Tier::Portable && k > 0;
    assert!(
        matvec || prologue_flag.is_empty() || (tiled && tiled_applies(engine.tier, prologue) && !half),
        "this prologue is fused into the matrix-vector kernel only (or the tiled tiers' x·Wᵀ)"
    );
    assert!(matvec || matches!(epilogue, Epilogue::None), "epilogues are the matrix-vector kernel's only");
    buffers.extend(bias.map(|bias| ("bias", bias)));
    if let Prologue::EmbedRmsNorm { ids, stream, .. } = prologue {
        buffers.extend(bind![ids, stream]);
    }
    if matvec {
        let tile = engine.matvec.unwrap_or_else(|| Tile::for_adapter(step.gpu, n));
        let subgroup = tile.subgroup_sums(step.gpu) as u32;
        let shape =
            [("MR", m as u32), ("TPR", tile.tpr), ("RPT", tile.rpt), ("U", tile.u), ("SUBGROUP", subgroup)];
        let epilogue_flag: &[Define] = match epilogue {
            Epilogue::None => &[],
            Epilogue::Lcm(..) => &[("LCM", 1)],
            Epilogue::Pick(_) => &[("PICK", 1)],
        };
        let pipeline =
            step.gpu.pipeline("matvec", &[&flags[..], &shape, prologue_flag, epilogue_flag].concat());
        let groups = super::groups(n, tile.rows());
        match epilogue {
            Epilogue::Lcm(modulation, first_row) => {
                assert!(accumulate, "LCM follows a product that adds into the residual stream");
                let (lcm, lcm_buffers) = modulation.epilogue(first_row, n);
                buffers.extend(lcm_buffers);
                step.dispatch(pipeline, &LcmMatvecParams { product: params, lcm }, &buffers, groups);
            }
            Epilogue::Pick(pick) => {
                assert!(
                    m == 1 && !accumulate && bias.is_none(),
                    "the pick follows the LM head's product of one row"
                );
                let (pick, pick_buffers) = pick.epilogue(n);
                buffers.extend(pick_buffers);
                step.dispatch(pipeline, &PickMatvecParams { product: params, pick }, &buffers, groups);
            }
            Epilogue::None => step.dispatch(pipeline, &params, &buffers, groups),
        }
    } else if tiled {
        let epilogue = (bias.is_some(), accumulate);
        gemm(step, engine, (a, b, c), (m, n, k), params, &buffers, epilogue, prologue_flag);
    } else {
        let by_k_flags: &[Define] =
            if kvec4 { &[] } else { &[("AVEC4", avec4 as u32), ("BVEC4", bvec4 as u32)] };
        let half_flag = [("F16_OPERANDS", half as u32)];
        let pipeline = step.gpu.pipeline("matmul", &[&flags[..], &half_flag, by_k_flags].concat());
        let groups = [n.div_ceil(32) as u32, m.div_ceil(32) as u32, 1];
        step.dispatch(pipeline, &params, &buffers, groups);
    }
}

/// The tiled engine (gemm.wgsl) for a product that [`matmul_on`] has checked: `params` as the
/// register kernel's with scalar units, rescaled here to each operand's vec4 loads;
/// `prologue`: its flag, if any.
#[allow(clippy::too_many_arguments)]
fn gemm(
    step: &mut Step,
    engine: Engine,
    (a, b, c): (Mat, Mat, Mat),
    (m, n, k): (usize, usize, usize),
    params: Params,
    buffers: &[(&str, &Tensor)],
    (bias, accumulate): (bool, bool),
    prologue: &[Define],
) {
    let aligned = |xs: &[usize]| xs.iter().all(|x| x.is_multiple_of(4));
    let akvec4 = a.cs == 1 && aligned(&[k, a.off, a.rs]);
    let avec4 = !akvec4 && a.rs == 1 && aligned(&[m, a.off, a.cs]);
    let bkvec4 = b.rs == 1 && aligned(&[k, b.off, b.cs]);
    let bvec4 = !bkvec4 && b.cs == 1 && aligned(&[n, b.off, b.rs]);
    let fmt = b.t.format();
    assert!(fmt == WeightFormat::F32 || bkvec4 || bvec4, "a packed weight is read as vec4");
    assert!(
        prologue.is_empty() || (a.cs == 1 && akvec4 == bkvec4 && !bvec4),
        "the tiled prologues are x·Wᵀ's, A and B read along K"
    );
    let a4 = |x: usize, vec4: bool| (if vec4 { x / 4 } else { x }) as u32;
    let params = Params {
        a_off: a4(a.off, akvec4 || avec4),
        a_rs: a4(a.rs, akvec4),
        a_cs: a4(a.cs, avec4),
        b_off: a4(b.off, bkvec4 || bvec4),
        b_rs: a4(b.rs, bvec4),
        b_cs: a4(b.cs, bkvec4),
        c_off: c.off as u32,
        c_rs: c.rs as u32,
        ..params
    };
    let coop = engine.tier == Tier::Coop;
    let tile = engine.tile.unwrap_or(GemmTile::for_product(engine.tier, m, n));
    assert!(!coop || tile == GemmTile::COOP, "the coop tier has one tile");
    let loads =
        GemmLoads { akvec4: akvec4 as u32, avec4: avec4 as u32, bkvec4: bkvec4 as u32, bvec4: bvec4 as u32 };
    let epilogue = (bias as u32, accumulate as u32);
    let format = (fmt, native_f16(step.gpu));
    let defines = gemm_defines(tile, coop, loads, epilogue, format, step.f16_operands, prologue);
    let pipeline = step.gpu.pipeline("gemm", &defines);
    let groups = [n.div_ceil(tile.bn as usize) as u32, m.div_ceil(tile.bm as usize) as u32, 1];
    step.dispatch(pipeline, &params, buffers, groups);
}

/// A linear layer, `y (+)= x · Wᵀ + bias` with `W` of shape `[out, in]`, over consecutive spans
/// of rows (their lengths in `spans`), each span computed bit for bit as one [`matmul`] over that
/// span alone would: what lets a batch of sequences
/// reproduce each sequence's own run (prompt chunks, single decode rows). Neighbouring spans
/// share a dispatch where no bit changes: both kernels compute every row independently of the
/// others, so short spans (matrix-vector kernel) join up to `MATVEC_MAX_M` rows and long spans
/// (blocked kernel) join without limit.
pub fn linear_spans(
    step: &mut Step,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    spans: &[usize],
    accumulate: bool,
) {
    linear_spans_prologue(step, Prologue::None, (x, None), w, bias, y, spans, accumulate);
}

/// `y = prologue(src) · Wᵀ` over `spans` as [`linear_spans_prologue`], with `src`'s rows from
/// `first` on (`done`'s from 0), into the matrix `y` (its offset and row stride: a row shard of
/// the LM head writes its columns of the logits).
pub fn linear_spans_into(
    step: &mut Step,
    prologue: Prologue,
    (src, first, done): (&Tensor, usize, Option<&Tensor>),
    w: &Tensor,
    y: Mat,
    spans: &[usize],
) {
    spans_into(step, (prologue, Epilogue::None), (src, first, done), (w, None), y, spans, false);
}

/// `y = prologue(src) · Wᵀ` of `src`'s row `first` into `y`'s first row (`[1, out]`), where the
/// kernel's last workgroups then make greedy decoding's pick from that row: the LM head of a
/// decode step, natively only (the device must let a workgroup see the others' writes within
/// a dispatch: see matvec.wgsl).
pub fn linear_picked(
    step: &mut Step,
    prologue: Prologue,
    (src, first): (&Tensor, usize),
    w: &Tensor,
    y: &Tensor,
    pick: HeadPick,
) {
    let y = Mat::rows(y, 0, w.shape[0]);
    spans_into(step, (prologue, Epilogue::Pick(pick)), (src, first, None), (w, None), y, &[1], false);
}

/// [`linear_spans`] of `prologue(src)` without materialising it: the kernels apply the
/// prologue as they load `src` (one dispatch fewer), except that with `done` = prologue(src),
/// which the caller computes where [`prologue_needs_done`] says so, spans past the
/// matrix-vector kernel read that. `src` is `[rows, 2 × in]` for [`Prologue::SiluGate`].
#[allow(clippy::too_many_arguments)]
pub fn linear_spans_prologue(
    step: &mut Step,
    prologue: Prologue,
    (src, done): (&Tensor, Option<&Tensor>),
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    spans: &[usize],
    accumulate: bool,
) {
    let y = Mat::rows(y, 0, w.shape[0]);
    spans_into(step, (prologue, Epilogue::None), (src, 0, done), (w, bias), y, spans, accumulate);
}

/// [`linear_spans_prologue`] accumulating into the residual stream `y`, whose rows it then
/// modulates with LCM (`lcm`'s row table indexed as `y`'s rows) in the last workgroup of each
/// matrix-vector dispatch: LCM costs no dispatch of its own. Every span must go to that kernel
/// ([`matvec_only`]), and the device must let a workgroup see the others' writes within a
/// dispatch (native, not the page: see matvec.wgsl).
pub fn linear_spans_modulated(
    step: &mut Step,
    prologue: Prologue,
    src: &Tensor,
    (w, bias): (&Tensor, Option<&Tensor>),
    y: &Tensor,
    spans: &[usize],
    lcm: Modulation,
) {
    assert!(matvec_only(spans), "LCM is fused into the matrix-vector kernel only");
    let y = Mat::rows(y, 0, w.shape[0]);
    spans_into(step, (prologue, Epilogue::Lcm(lcm, 0)), (src, 0, None), (w, bias), y, spans, true);
}

/// [`linear_spans_prologue`] into the matrix `y`, `src`'s rows from `src_first` on; an LCM
/// epilogue's row index counts from its own (0 here).
fn spans_into(
    step: &mut Step,
    (prologue, epilogue): (Prologue, Epilogue),
    (src, src_first, done): (&Tensor, usize, Option<&Tensor>),
    (w, bias): (&Tensor, Option<&Tensor>),
    y: Mat,
    spans: &[usize],
    accumulate: bool,
) {
    let (out, inp) = (w.shape[0], w.shape[1]);
    let src_cols = if matches!(prologue, Prologue::SiluGate) { 2 * inp } else { inp };
    let engine = Engine::for_adapter(step.gpu);
    for (first, rows) in span_groups(spans) {
        let (a, prologue) = match done {
            Some(done) if rows > MATVEC_MAX_M => (Mat::rows(done, first * inp, inp), Prologue::None),
            _ => (Mat::rows(src, (src_first + first) * src_cols, src_cols), prologue),
        };
        let (w, y) = (Mat::transposed(w, 0, inp), Mat { off: y.off + first * y.rs, ..y });
        let epilogue = match epilogue {
            Epilogue::Lcm(m, _) => Epilogue::Lcm(m, first),
            other => other,
        };
        product(step, engine, a, w, y, (rows, out, inp), (1.0, bias), accumulate, prologue, epilogue);
    }
}

/// Whether every span of [`linear_spans`] goes to the matrix-vector kernel (whose epilogues
/// and embedding gather are its own).
pub fn matvec_only(spans: &[usize]) -> bool {
    span_groups(spans).iter().all(|&(_, rows)| rows <= MATVEC_MAX_M)
}

/// Whether [`linear_spans_prologue`] over `spans` on `gpu` needs `done`: where a span goes past
/// the matrix-vector kernel, to a tier that does not apply `prologue`.
pub fn prologue_needs_done(gpu: &Gpu, prologue: Prologue, spans: &[usize]) -> bool {
    !matvec_only(spans) && !tiled_applies(gpu.tier, prologue)
}

/// (first row, rows) of each dispatch of [`linear_spans`]. A group of short spans never passes
/// `MATVEC_MAX_M` rows and one long span alone already does, so the row count tells the kinds apart.
fn span_groups(spans: &[usize]) -> Vec<(usize, usize)> {
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    for &len in spans.iter().filter(|&&len| len > 0) {
        let short = len <= MATVEC_MAX_M;
        match groups.last_mut() {
            Some((_, rows)) if short && *rows + len <= MATVEC_MAX_M => *rows += len,
            Some((_, rows)) if !short && *rows > MATVEC_MAX_M => *rows += len,
            _ => groups.push((at, len)),
        }
        at += len;
    }
    groups
}

/// Gradients of a linear layer (`y = x · Wᵀ + bias`) over `rows` rows, given `dy`, each only when its tensor is
/// given (frozen weights have none): `dx (+)= dy · W`, `dW += dyᵀ · x`, `db += Σ_rows dy`.
/// `ones` is a tensor of at least `rows` ones (the bias gradient is a product with it).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    step: &mut Step,
    (x, w): (&Tensor, &Tensor),
    dy: &Tensor,
    dx: Option<(&Tensor, bool)>,
    (dw, db): (Option<&Tensor>, Option<&Tensor>),
    ones: &Tensor,
    rows: usize,
) {
    let (out, inp) = (w.shape[0], w.shape[1]);
    if let Some((dx, accumulate)) = dx {
        let (a, b, c) = (Mat::rows(dy, 0, out), Mat::rows(w, 0, inp), Mat::rows(dx, 0, inp));
        matmul(step, a, b, c, (rows, inp, out), None, accumulate);
    }
    if let Some(dw) = dw {
        let (a, b, c) = (Mat::transposed(dy, 0, out), Mat::rows(x, 0, inp), Mat::rows(dw, 0, inp));
        matmul(step, a, b, c, (out, inp, rows), None, true);
    }
    if let Some(db) = db {
        let (a, b, c) = (Mat::rows(ones, 0, rows), Mat::rows(dy, 0, out), Mat::rows(db, 0, out));
        matmul(step, a, b, c, (1, out, rows), None, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear layer over `rows` rows: `y (+)= x · Wᵀ + bias`, with `W` of shape `[out, in]`.
    fn linear(
        step: &mut Step,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        rows: usize,
        accumulate: bool,
    ) {
        let (out, inp) = (w.shape[0], w.shape[1]);
        matmul(
            step,
            Mat::rows(x, 0, inp),
            Mat::transposed(w, 0, inp),
            Mat::rows(y, 0, out),
            (rows, out, inp),
            bias,
            accumulate,
        );
    }

    thread_local! {
        /// Makes [`native_f16`] say no, so that the unpacking path runs on adapters with shader-f16.
        pub(super) static UNPACK_F16: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    use crate::cpu;
    use crate::ops::test_util::*;

    /// The adapter's engine with the matrix-vector tiling `tile` (tests run both on any adapter).
    fn with_matvec(gpu: &Gpu, tile: Tile) -> Engine {
        Engine { matvec: Some(tile), ..Engine::for_adapter(gpu) }
    }

    /// The tiled engine with workgroup tile `tile`.
    fn tiled(gpu: &Gpu, tile: GemmTile) -> Engine {
        Engine::with_tier(gpu, Tier::Tiled, Some(tile))
    }

    /// `linear` through `matmul_on` (None: the adapter's own tiling) against the CPU.
    fn check_tiled(tile: Option<Tile>, m: usize, n: usize, k: usize, bias: bool, acc: bool) {
        let gpu = gpu();
        let x = rand_vec(1, m * k, 1.0);
        let w = rand_vec(2, n * k, 1.0);
        let b = rand_vec(3, n, 1.0);
        let y0 = rand_vec(4, m * n, 1.0);
        let xt = gpu.upload_f32("x", &[m, k], &x).unwrap();
        let wt = gpu.upload_f32("w", &[n, k], &w).unwrap();
        let bt = gpu.upload_f32("b", &[n], &b).unwrap();
        let yt = gpu.upload_f32("y", &[m, n], &y0).unwrap();
        let mut step = Step::new(gpu);
        match tile {
            None => linear(&mut step, &xt, &wt, bias.then_some(&bt), &yt, m, acc),
            Some(tile) => matmul_on(
                &mut step,
                with_matvec(gpu, tile),
                Mat::rows(&xt, 0, k),
                Mat::transposed(&wt, 0, k),
                Mat::rows(&yt, 0, n),
                (m, n, k),
                (1.0, bias.then_some(&bt)),
                acc,
                Prologue::None,
            ),
        }
        step.submit().unwrap();
        let got = gpu.read_f32(&yt).unwrap();
        let mut want = cpu::matmul::linear(&x, &w, bias.then_some(&b[..]), m, n, k);
        if acc {
            want.iter_mut().zip(&y0).for_each(|(w, y)| *w += y);
        }
        let what = format!("linear {m}x{n}x{k} bias={bias} acc={acc} tile={tile:?}");
        assert_close(&got, &want, 1e-4, &what);
    }

    fn check(m: usize, n: usize, k: usize, bias: bool, acc: bool) {
        check_tiled(None, m, n, k, bias, acc);
    }

    #[test]
    fn linear_matches_cpu() {
        check(1, 64, 64, false, false); // decode shape
        check(37, 45, 24, true, false); // ragged tiles, vec4 path
        check(33, 19, 23, true, true); // scalar path (k not a multiple of 4), accumulate
        check(70, 130, 172, false, true);
    }

    /// The matrix-vector kernel with both tilings, whatever the adapter: every row count it
    /// takes, vec4 and scalar (k % 4 != 0) loads, n not a multiple of the rows per workgroup.
    #[test]
    fn matvec_matches_cpu() {
        for tile in Tile::ALL {
            for m in 1..=MATVEC_MAX_M {
                check_tiled(Some(tile), m, 50, 64, m % 2 == 1, m > 2);
                check_tiled(Some(tile), m, 130, 23, m < 3, m % 2 == 0);
                check_tiled(Some(tile), m, 7, 172, true, true);
                // Past U strides of every tiling: the batched loads, then the strides left.
                check_tiled(Some(tile), m, 9, 1284, m == 1, m == 2);
            }
        }
    }

    /// Packed weights in every format, through both kernels (matvec: every row count and both
    /// tilings; blocked: m = 37, ragged in m and n) against the CPU on the dequantized weights:
    /// only the summation order differs.
    #[test]
    fn packed_weights_match_cpu_on_dequantized() {
        let gpu = gpu();
        // k: five K-quant superblocks, forty blocks of the others: every tiling takes its batched
        // loads (U strides at a time) and the strides left after them.
        let (n, k) = (45, 1280);
        let b = rand_vec(3, n, 1.0);
        let bt = gpu.upload_f32("b", &[n], &b).unwrap();
        // f16 twice where the adapter has shader-f16 (lavapipe does): read as f16, then unpacked.
        let unpacked = native_f16(gpu).then_some(WeightFormat::F16);
        for (i, fmt) in WeightFormat::ALL.into_iter().chain(unpacked).enumerate() {
            UNPACK_F16.set(i >= WeightFormat::ALL.len());
            let packed = crate::gpu::wfmt::random_packed(fmt, n, k, 2);
            let wq = crate::gpu::wfmt::dequantize(fmt, &packed);
            let wt = gpu.upload_weight("w", &[n, k], fmt, &packed).unwrap();
            assert_eq!(wt.format(), fmt);
            // Few rows: matvec with every tiling; 37 rows: the adapter's tier, then both tiled tiles.
            let cases = (1..=MATVEC_MAX_M).flat_map(|m| Tile::ALL.map(|tile| (m, with_matvec(gpu, tile))));
            let blocked =
                [Engine::for_adapter(gpu), tiled(gpu, GemmTile::LARGE), tiled(gpu, GemmTile::SMALL)];
            for (m, engine) in cases.chain(blocked.map(|e| (37, e))) {
                let x = rand_vec(m as u64, m * k, 1.0);
                let xt = gpu.upload_f32("x", &[m, k], &x).unwrap();
                let yt = gpu.upload_f32("y", &[m, n], &vec![0.5; m * n]).unwrap();
                let mut step = Step::new(gpu);
                let (xa, wa, ya) = (Mat::rows(&xt, 0, k), Mat::transposed(&wt, 0, k), Mat::rows(&yt, 0, n));
                matmul_on(
                    &mut step,
                    engine,
                    xa,
                    wa,
                    ya,
                    (m, n, k),
                    (1.0, Some(&bt)),
                    m % 2 == 0,
                    Prologue::None,
                );
                step.submit().unwrap();
                let mut want = cpu::matmul::linear(&x, &wq, Some(&b), m, n, k);
                if m % 2 == 0 {
                    want.iter_mut().for_each(|v| *v += 0.5);
                }
                let what = format!("{fmt:?} m={m} {engine:?} unpacked f16: {}", UNPACK_F16.get());
                assert_close(&gpu.read_f32(&yt).unwrap(), &want, 1e-4, &what);
            }
        }
        UNPACK_F16.set(false);
    }

    /// The input gradient dy·W over a packed W in every format (LoRA's backward over a packed
    /// base: a few rows and many, accumulating or not) against the CPU on the dequantized W.
    #[test]
    fn packed_input_gradient_matches_cpu_on_dequantized() {
        let gpu = gpu();
        let (out, inp) = (45, 256);
        let unpacked = native_f16(gpu).then_some(WeightFormat::F16);
        for (i, fmt) in WeightFormat::ALL.into_iter().chain(unpacked).enumerate() {
            UNPACK_F16.set(i >= WeightFormat::ALL.len());
            let packed = crate::gpu::wfmt::random_packed(fmt, out, inp, 5);
            let w = crate::gpu::wfmt::dequantize(fmt, &packed);
            let wt = gpu.upload_weight("w", &[out, inp], fmt, &packed).unwrap();
            // W transposed, so that the CPU's x·Wᵀ computes dy·W.
            let w_t: Vec<f32> = (0..inp * out).map(|i| w[(i % out) * inp + i / out]).collect();
            for (m, accumulate) in [(3, false), (37, true)] {
                let dy = rand_vec(m as u64, m * out, 1.0);
                let dx0 = rand_vec(9, m * inp, 1.0);
                let (dyt, dxt) = (
                    gpu.upload_f32("dy", &[m, out], &dy).unwrap(),
                    gpu.upload_f32("dx", &[m, inp], &dx0).unwrap(),
                );
                let ones = gpu.upload_f32("ones", &[m], &vec![1.0; m]).unwrap();
                let mut step = Step::new(gpu);
                linear_backward(
                    &mut step,
                    (&dyt, &wt),
                    &dyt,
                    Some((&dxt, accumulate)),
                    (None, None),
                    &ones,
                    m,
                );
                step.submit().unwrap();
                let mut want = cpu::matmul::linear(&dy, &w_t, None, m, inp, out);
                if accumulate {
                    want.iter_mut().zip(&dx0).for_each(|(w, d)| *w += d);
                }
                let what = format!("dy·W {fmt:?} m={m} unpacked f16: {}", UNPACK_F16.get());
                assert_close(&gpu.read_f32(&dxt).unwrap(), &want, 1e-4, &what);
            }
        }
        UNPACK_F16.set(false);
    }

    /// A vocabulary-sized n: thousands of workgroups, the last one partial.
    #[test]
    fn matvec_large_n_matches_cpu() {
        check_tiled(Some(Tile::GPU), 1, 50000, 64, true, false);
        check_tiled(Some(Tile::CPU), 3, 50000, 64, false, true);
    }

    /// Offsets and strides: A's rows inside a wider matrix (aligned: vec4 loads; not: scalar
    /// loads although k % 4 == 0), C written into a block of a wider one, accumulating, scaled.
    #[test]
    fn matvec_strided_matches_cpu() {
        let gpu = gpu();
        let (m, n, k, c_off, c_rs) = (3, 37, 16, 6, 45);
        let w = rand_vec(9, n * k, 1.0);
        let c0 = rand_vec(10, c_off + m * c_rs, 1.0);
        let wt = gpu.upload_f32("w", &[n, k], &w).unwrap();
        let ct = gpu.upload_f32("c", &[c0.len()], &c0).unwrap();
        for (a_off, a_rs) in [(4, 20), (5, 21)] {
            let a = rand_vec(8, a_off + m * a_rs, 1.0);
            let at = gpu.upload_f32("a", &[a.len()], &a).unwrap();
            let mut want = c0.clone();
            for i in 0..m {
                for j in 0..n {
                    let dot: f32 = (0..k).map(|l| a[a_off + i * a_rs + l] * w[j * k + l]).sum();
                    want[c_off + i * c_rs + j] += 0.5 * dot;
                }
            }
            for tile in Tile::ALL {
                gpu.write_f32(&ct, &c0);
                let mut step = Step::new(gpu);
                matmul_on(
                    &mut step,
                    with_matvec(gpu, tile),
                    Mat { t: &at, off: a_off, rs: a_rs, cs: 1 },
                    Mat::transposed(&wt, 0, k),
                    Mat { t: &ct, off: c_off, rs: c_rs, cs: 1 },
                    (m, n, k),
                    (0.5, None),
                    true,
                    Prologue::None,
                );
                step.submit().unwrap();
                let what = format!("strided a_off={a_off} {tile:?}");
                assert_close(&gpu.read_f32(&ct).unwrap(), &want, 1e-4, &what);
            }
        }
    }

    /// Spans group into dispatches by kind, and every row of [`linear_spans`] equals, bit for
    /// bit, the same row of `linear` over its span alone.
    #[test]
    fn linear_spans_match_each_span_alone() {
        assert_eq!(
            span_groups(&[1, 1, 3, 2, 2, 7, 9, 1, 0, 4]),
            vec![(0, 2), (2, 3), (5, 4), (9, 16), (25, 1), (26, 4)]
        );
        check_spans_alone(gpu(), &[1, 1, 1, 3, 7, 9, 2, 1, 1, 5], 70, Load::Plain);
        // The tiled engine picks its tile by the product's size: the joined rows take 64×64
        // tiles, the 400 and 120 rows alone 32×32, in the same order of sums.
        let tiled = Gpu::shared_on_tier(Tier::Tiled).unwrap();
        let joined = (1 + 1 + 3 + 7 + 400 + 2 + 1 + 120, 1100);
        assert_eq!(GemmTile::for_product(Tier::Tiled, joined.0, joined.1), GemmTile::MEDIUM);
        assert_eq!(GemmTile::for_product(Tier::Tiled, 400, joined.1), GemmTile::SMALL);
        for load in [Load::Plain, Load::Norm, Load::Gate] {
            check_spans_alone(tiled, &[1, 1, 3, 7, 400, 2, 1, 120], joined.1, load);
        }
    }

    /// How [`check_spans_alone`] loads x: as stored, or through a prologue (the tiled tier's
    /// for the long spans).
    #[derive(Clone, Copy, Debug)]
    enum Load {
        Plain,
        Norm,
        Gate,
    }

    fn check_spans_alone(gpu: &Gpu, spans: &[usize], n: usize, load: Load) {
        let (m, k): (usize, usize) = (spans.iter().sum(), 48);
        let cols = if matches!(load, Load::Gate) { 2 * k } else { k };
        let x = rand_vec(1, m * cols, 1.0);
        let w = rand_vec(2, n * k, 1.0);
        let b = rand_vec(3, n, 1.0);
        let t = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
        let (wt, bt, nwt) = (t("w", &[n, k], &w), t("b", &[n], &b), t("nw", &[k], &rand_vec(5, k, 1.0)));
        let prologue = match load {
            Load::Plain => Prologue::None,
            Load::Norm => Prologue::RmsNorm(&nwt, 1e-5),
            Load::Gate => Prologue::SiluGate,
        };
        // y = prologue(x) · Wᵀ + b over `spans` of rows of x (the gate's added to y = 0, as
        // the model adds the down projection into the residual stream).
        let accumulate = matches!(load, Load::Gate);
        let run = |x: &[f32], spans: &[usize]| {
            let rows: usize = spans.iter().sum();
            let (xt, yt) =
                (t("x", &[rows, cols], x), gpu.zeros("y", &[rows, n], crate::gpu::DType::F32).unwrap());
            let mut step = Step::new(gpu);
            linear_spans_prologue(&mut step, prologue, (&xt, None), &wt, Some(&bt), &yt, spans, accumulate);
            step.submit().unwrap();
            gpu.read_f32(&yt).unwrap()
        };
        let got = run(&x, spans);
        let mut first = 0;
        for &len in spans {
            let alone = run(&x[first * cols..(first + len) * cols], &[len]);
            let same = alone.iter().zip(&got[first * n..]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{:?} {load:?}: span of {len} rows at row {first} differs from its own run",
                gpu.tier
            );
            first += len;
        }
    }

    /// The adapter's device and one on the tiled tier: the long spans of a prologue read its
    /// dispatch's output on the portable tier, apply it in gemm.wgsl on the tiled one.
    fn both_tiers() -> [&'static Gpu; 2] {
        [gpu(), Gpu::shared_on_tier(Tier::Tiled).unwrap()]
    }

    /// The SiLU gate loaded by the matrix-vector kernel (short spans) and by the tiled
    /// engine, or `act` read by the portable kernel (the 7-row span), all give
    /// y + silu(gate) · up · Wᵀ + b.
    #[test]
    fn linear_spans_gated_matches_cpu() {
        let spans = [1, 3, 7, 1, 2];
        let (m, n, k): (usize, usize, usize) = (spans.iter().sum(), 70, 48);
        assert!(!matvec_only(&spans) && matvec_only(&[1, 1, 2]));
        let up = rand_vec(1, m * 2 * k, 2.0);
        let act = cpu::act::silu_gate(&up, k);
        let w = rand_vec(2, n * k, 1.0);
        let b = rand_vec(3, n, 1.0);
        let y0 = rand_vec(4, m * n, 1.0);
        for gpu in both_tiers() {
            let t = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
            let (upt, actt, wt, bt) =
                (t("up", &[m, 2 * k], &up), t("act", &[m, k], &act), t("w", &[n, k], &w), t("b", &[n], &b));
            let yt = t("y", &[m, n], &y0);
            let mut step = Step::new(gpu);
            let done = prologue_needs_done(gpu, Prologue::SiluGate, &spans).then_some(&actt);
            assert_eq!(done.is_none(), gpu.tier != Tier::Portable);
            linear_spans_prologue(
                &mut step,
                Prologue::SiluGate,
                (&upt, done),
                &wt,
                Some(&bt),
                &yt,
                &spans,
                true,
            );
            step.submit().unwrap();
            let mut want = cpu::matmul::linear(&act, &w, Some(&b), m, n, k);
            want.iter_mut().zip(&y0).for_each(|(w, y)| *w += y);
            assert_close(&gpu.read_f32(&yt).unwrap(), &want, 1e-4, &format!("gated linear {:?}", gpu.tier));
        }
    }

    /// The RMSNorm loaded by the matrix-vector kernel (short spans; vec4 and scalar loads)
    /// and by the tiled engine, or the normed rows read by the portable kernel, all give
    /// norm(x) · Wᵀ + b.
    #[test]
    fn linear_spans_normed_matches_cpu() {
        let spans = [1, 3, 7, 1, 2];
        for ((n, k), gpu) in [(70, 48), (33, 46)].into_iter().flat_map(|nk| both_tiers().map(|g| (nk, g))) {
            let m: usize = spans.iter().sum();
            let x = rand_vec(1, m * k, 2.0);
            let nw = rand_vec(5, k, 1.0);
            let normed = cpu::norm::rms_norm(&x, &nw, 1e-5);
            let w = rand_vec(2, n * k, 1.0);
            let b = rand_vec(3, n, 1.0);
            let t = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
            let (xt, donet, nwt) = (t("x", &[m, k], &x), t("normed", &[m, k], &normed), t("nw", &[k], &nw));
            let (wt, bt) = (t("w", &[n, k], &w), t("b", &[n], &b));
            let yt = gpu.zeros("y", &[m, n], crate::gpu::DType::F32).unwrap();
            let mut step = Step::new(gpu);
            let prologue = Prologue::RmsNorm(&nwt, 1e-5);
            let done = prologue_needs_done(gpu, prologue, &spans).then_some(&donet);
            linear_spans_prologue(&mut step, prologue, (&xt, done), &wt, Some(&bt), &yt, &spans, false);
            step.submit().unwrap();
            let want = cpu::matmul::linear(&normed, &w, Some(&b), m, n, k);
            let what = format!("normed linear k={k} {:?}", gpu.tier);
            assert_close(&gpu.read_f32(&yt).unwrap(), &want, 1e-4, &what);
        }
    }

    /// The LCM epilogue (the last workgroup modulates the rows the product wrote) in every
    /// tiling, gated or not, with and without bias: bit for bit the product then lcm.wgsl's
    /// dispatch, and within 1e-4 the CPU's product then scan. Four products of 3, 2, 4 and 1
    /// rows over two sequences (and a row of a sequence without anchors, left alone) carry the
    /// anchors as decode steps do.
    #[test]
    fn matvec_lcm_epilogue_equals_the_lcm_dispatch_and_cpu() {
        use crate::ops::lcm::{LcmShape, Modulation};
        let gpu = gpu();
        let (n, k) = (72, 40);
        let skip = u32::MAX;
        let calls: [&[(u32, u32)]; 4] =
            [&[(0, 0), (0, 1), (1, 0)], &[(0, 2), (1, 1)], &[(1, 2), (skip, 5), (0, 3), (1, 3)], &[(0, 4)]];
        let table: Vec<(u32, u32)> = calls.concat();
        let total = table.len();
        let src = rand_vec(1, total * 2 * k, 1.0);
        let w = rand_vec(2, n * k, 0.3);
        let b = rand_vec(3, n, 0.5);
        let h0 = rand_vec(4, total * n, 1.0);
        let t = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
        let (wt, bt) = (t("w", &[n, k], &w), t("b", &[n], &b));
        let cases = [
            (vec![(0.9f32, 0.6f32)], false, true, 0usize, Prologue::None, false),
            (vec![(0.5, 0.3), (0.9, 0.2), (0.99, 0.1)], false, false, 0, Prologue::SiluGate, true),
            (vec![(0.8, 0.5)], true, true, 2, Prologue::SiluGate, false),
            (vec![(0.7, 0.4), (0.95, 0.3)], true, false, 1, Prologue::None, true),
        ];
        for (scales, normalized, keep_norm, sink, prologue, bias) in cases {
            let gated = matches!(prologue, Prologue::SiluGate);
            let cols = if gated { 2 * k } else { k };
            let kernel = crate::ops::lcm::ScanKernel::for_adapter(gpu).unwrap();
            let shape = LcmShape { tau: 0.05, kappa: 20.0, keep_norm, normalized, sink, kernel };
            let flat: Vec<f32> = scales.iter().flat_map(|&(r, g)| [r, g]).collect();
            let scales_t = t("scales", &[scales.len(), 2], &flat);
            let bias = bias.then_some(&bt);
            // The stream after every product, the anchors, the statistics, the counter.
            let run = |tile: Tile, fused: bool| -> [Vec<u32>; 4] {
                let zeros = |name, shape: &[usize], dtype| gpu.zeros(name, shape, dtype).unwrap();
                let anchor = zeros("anchor", &[2, scales.len(), n], crate::gpu::DType::F32);
                let stats = zeros("stats", &[2, 4], crate::gpu::DType::F32);
                let arrived = zeros("arrived", &[1], crate::gpu::DType::U32);
                let mut stream = Vec::new();
                let mut first = 0;
                for rows in calls {
                    let m = rows.len();
                    let a: Vec<f32> =
                        (first..first + m).flat_map(|r| src[r * 2 * k..r * 2 * k + cols].to_vec()).collect();
                    let (at, xt) = (t("a", &[m, cols], &a), t("x", &[m, n], &h0[first * n..(first + m) * n]));
                    let flat_rows: Vec<u32> = rows.iter().flat_map(|&(s, p)| [s, p]).collect();
                    let rows = gpu.upload_u32("rows", &[m, 2], &flat_rows).unwrap();
                    let (scales, stats, anchor, arrived) = (&scales_t, &stats, &anchor, &arrived);
                    let modulation = Modulation { rows: &rows, anchor, scales, stats, arrived, shape };
                    let mut step = Step::new(gpu);
                    let (xa, wa, ya) =
                        (Mat::rows(&at, 0, cols), Mat::transposed(&wt, 0, k), Mat::rows(&xt, 0, n));
                    let engine = with_matvec(gpu, tile);
                    let lcm = if fused { Epilogue::Lcm(modulation, 0) } else { Epilogue::None };
                    product(&mut step, engine, xa, wa, ya, (m, n, k), (1.0, bias), true, prologue, lcm);
                    if !fused {
                        modulation.record(&mut step, &xt, m);
                    }
                    step.submit().unwrap();
                    stream.extend(gpu.read_f32(&xt).unwrap());
                    first += m;
                }
                let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
                let (anchor, stats) = (gpu.read_f32(&anchor).unwrap(), gpu.read_f32(&stats).unwrap());
                [bits(stream), bits(anchor), bits(stats), gpu.read_u32(&arrived).unwrap()]
            };
            let a: Vec<f32> = (0..total).flat_map(|r| src[r * 2 * k..r * 2 * k + cols].to_vec()).collect();
            let a = if gated { cpu::act::silu_gate(&a, k) } else { a };
            let mut want = cpu::matmul::linear(&a, &w, bias.map(|_| &b[..]), total, n, k);
            want.iter_mut().zip(&h0).for_each(|(y, h)| *y += h);
            let mut want_stats = Vec::new();
            for seq in [0, 1] {
                let mine: Vec<usize> = (0..total).filter(|&r| table[r].0 == seq).collect();
                let mut h: Vec<f32> = mine.iter().flat_map(|&r| want[r * n..(r + 1) * n].to_vec()).collect();
                want_stats.push(cpu::lcm::lcm_scan(
                    &mut h,
                    n,
                    &scales,
                    (0.05, 20.0),
                    keep_norm,
                    normalized,
                    sink,
                ));
                for (i, &r) in mine.iter().enumerate() {
                    want[r * n..(r + 1) * n].copy_from_slice(&h[i * n..(i + 1) * n]);
                }
            }
            for tile in Tile::ALL {
                let what = format!("{tile:?} scales={scales:?} normalized={normalized} keep_norm={keep_norm} sink={sink} gated={gated}");
                let fused = run(tile, true);
                assert_eq!(fused, run(tile, false), "{what}: the epilogue differs from lcm.wgsl");
                assert_eq!(fused[3], [0], "{what}: the counter is left at zero");
                let got: Vec<f32> = fused[0].iter().map(|&x| f32::from_bits(x)).collect();
                assert_close(&got, &want, 1e-4, &what);
                let stats: Vec<f32> = fused[2].iter().map(|&x| f32::from_bits(x)).collect();
                for (seq, (g, _, count)) in want_stats.iter().enumerate() {
                    assert!((stats[4 * seq] as f64 - g).abs() < 1e-4, "{what}: seq {seq} gates");
                    assert_eq!(stats[4 * seq + 2] as usize, *count, "{what}: seq {seq} count");
                }
            }
        }
    }

    /// The greedy pick in the LM head's last workgroups (PICK) in every tiling, with its final
    /// RMSNorm fused and without, vec4 and scalar loads, rows of one part to 48 (1025 logits:
    /// parts that workgroups straddle), the maximum tied between two parts: the same logits,
    /// pick, statistics and row table to the bit as the product then stats::greedy_pick's
    /// dispatches, the CPU's logits within 1e-4, its argmax (the lower of the tie) and its
    /// statistics within 1e-4, and the counters left at zero.
    #[test]
    fn matvec_pick_epilogue_equals_the_pick_dispatches_and_cpu() {
        use crate::gpu::DType;
        use crate::ops::stats::{self, HeadPick, Pick, PICK_ARRIVALS};
        let gpu = gpu();
        for (n, k) in [(512, 64), (1025, 21), (3000, 36), (49152, 8)] {
            // The pick reads row 1 of x.
            let x = rand_vec(1, 2 * k, 1.0);
            let nw = rand_vec(5, k, 1.0);
            let t = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
            let (xt, nwt) = (t("x", &[2, k], &x), t("nw", &[k], &nw));
            for norm in [false, true] {
                let a = if norm { cpu::norm::rms_norm(&x[k..], &nw, 1e-5) } else { x[k..].to_vec() };
                // Rows n / 3 and n - 1 (parts apart) give the largest logit, 2 |a|².
                let mut w = rand_vec(2, n * k, 0.3);
                for row in [n / 3, n - 1] {
                    w[row * k..(row + 1) * k].iter_mut().zip(&a).for_each(|(w, a)| *w = 2.0 * a);
                }
                let wt = t("w", &[n, k], &w);
                let want = cpu::matmul::linear(&a, &w, None, 1, n, k);
                let prologue = if norm { Prologue::RmsNorm(&nwt, 1e-5) } else { Prologue::None };
                // Logits, picks, ids, row table, counters; as bits.
                let run = |tile: Tile, fused: bool| -> [Vec<u32>; 5] {
                    let zeros = |name, shape: &[usize], dtype| gpu.zeros(name, shape, dtype).unwrap();
                    let yt = zeros("y", &[1, n], DType::F32);
                    let partials = zeros("partials", &[stats::partials_len(1, n)], DType::F32);
                    let arrived = zeros("arrived", &[PICK_ARRIVALS], DType::U32);
                    let ids = gpu.upload_u32("ids", &[2], &[7, 7]).unwrap();
                    let rows = gpu.upload_u32("rows", &[2, 2], &[9, 9, 0, 3]).unwrap();
                    let out = zeros("out", &[8, 4], DType::U32);
                    let pick = HeadPick {
                        partials: &partials,
                        arrived: &arrived,
                        input: (&ids, &rows, 1),
                        out: &out,
                    };
                    let epilogue = if fused { Epilogue::Pick(pick) } else { Epilogue::None };
                    let (xa, wa, ya) =
                        (Mat::rows(&xt, k, k), Mat::transposed(&wt, 0, k), Mat::rows(&yt, 0, n));
                    let mut step = Step::new(gpu);
                    let engine = with_matvec(gpu, tile);
                    product(&mut step, engine, xa, wa, ya, (1, n, k), (1.0, None), false, prologue, epilogue);
                    if !fused {
                        stats::greedy_pick(&mut step, &yt, &partials, (&ids, &rows, 1), &out);
                    }
                    step.submit().unwrap();
                    let logits = gpu.read_f32(&yt).unwrap().into_iter().map(f32::to_bits).collect();
                    let read = |t: &Tensor| gpu.read_u32(t).unwrap();
                    [logits, read(&out), read(&ids), read(&rows), read(&arrived)]
                };
                let (lse, entropy, _) = cpu::stats::logit_stats(&want);
                for tile in Tile::ALL {
                    let what = format!("n={n} k={k} norm={norm} {tile:?}");
                    let fused = run(tile, true);
                    assert_eq!(fused, run(tile, false), "{what}: the fused pick differs from the dispatches");
                    assert!(fused[4].iter().all(|&c| c == 0), "{what}: counters {:?}", fused[4]);
                    let logits: Vec<f32> = fused[0].iter().map(|&z| f32::from_bits(z)).collect();
                    assert_close(&logits, &want, 1e-4, &what);
                    let pick = Pick::parse(&fused[1][16..]);
                    assert_eq!(
                        (pick.id, fused[2][0], &fused[3][..2]),
                        (n as u32 / 3, n as u32 / 3, &[0, 4][..]),
                        "{what}"
                    );
                    assert_eq!(crate::generate::sampler::argmax(&want), pick.id, "{what}");
                    let logprob = want[pick.id as usize] as f64 - lse;
                    for (stat, got, want) in [
                        ("lse", pick.lse, lse),
                        ("entropy", pick.entropy, entropy),
                        ("logprob", pick.logprob, logprob),
                    ] {
                        assert!((got as f64 - want).abs() < 1e-4, "{what}: {stat} {got} vs {want}");
                    }
                }
            }
        }
    }

    /// Both decode prologues (RMSNorm, SiLU gate) in every tiling and row count, with k past
    /// U strides of each (vec4 and scalar loads), against the CPU's norm or gate then product.
    #[test]
    fn matvec_prologues_match_cpu_in_every_tiling() {
        let gpu = gpu();
        let n = 37;
        for k in [1280, 1283] {
            let w = rand_vec(2, n * k, 1.0);
            let nw = rand_vec(5, k, 1.0);
            let t = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
            let (wt, nwt) = (t("w", &[n, k], &w), t("nw", &[k], &nw));
            for m in 1..=MATVEC_MAX_M {
                let x = rand_vec(m as u64, m * 2 * k, 2.0);
                let normed = cpu::norm::rms_norm(&x[..m * k], &nw, 1e-5);
                let gated = cpu::act::silu_gate(&x, k);
                let cases = [(Prologue::RmsNorm(&nwt, 1e-5), k, normed), (Prologue::SiluGate, 2 * k, gated)];
                for ((prologue, cols, a), tile) in
                    cases.into_iter().flat_map(|c| Tile::ALL.map(|t| (c.clone(), t)))
                {
                    let xt = t("x", &[m, cols], &x[..m * cols]);
                    let yt = gpu.zeros("y", &[m, n], crate::gpu::DType::F32).unwrap();
                    let mut step = Step::new(gpu);
                    let (xa, wa, ya) =
                        (Mat::rows(&xt, 0, cols), Mat::transposed(&wt, 0, k), Mat::rows(&yt, 0, n));
                    // As the model runs them: the gated product accumulates (into zeros here).
                    let acc = matches!(prologue, Prologue::SiluGate);
                    let engine = with_matvec(gpu, tile);
                    matmul_on(&mut step, engine, xa, wa, ya, (m, n, k), (1.0, None), acc, prologue);
                    step.submit().unwrap();
                    let want = cpu::matmul::linear(&a, &w, None, m, n, k);
                    let what = format!("m={m} k={k} {tile:?} cols={cols}");
                    assert_close(&gpu.read_f32(&yt).unwrap(), &want, 1e-4, &what);
                }
            }
        }
    }

    /// The embedding gathered by the normed product (EMBED) in every tiling and row count,
    /// vec4 and scalar loads, with and without bias, rows from the second on: the product and
    /// the residual stream to the bit embed.wgsl's dispatch then the RMSNorm prologue give, and
    /// the CPU's gather, norm and product within 1e-4.
    #[test]
    fn matvec_embedding_gather_equals_the_embed_dispatch_and_cpu() {
        use crate::gpu::{DType, Sharded};
        let gpu = gpu();
        let (n, vocab) = (37, 50);
        for k in [64, 23] {
            let table = rand_vec(7, vocab * k, 1.0);
            let (w, nw, b) = (rand_vec(2, n * k, 1.0), rand_vec(5, k, 1.0), rand_vec(3, n, 1.0));
            let t = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
            let (tt, wt, nwt, bt) =
                (t("table", &[vocab, k], &table), t("w", &[n, k], &w), t("nw", &[k], &nw), t("b", &[n], &b));
            let sharded = Sharded::one(tt.clone());
            let ids: Vec<u32> = vec![3, 49, 0, 17, 3];
            let idt = gpu.upload_u32("ids", &[ids.len()], &ids).unwrap();
            for m in 1..=MATVEC_MAX_M {
                let rows: Vec<f32> = ids[1..=m]
                    .iter()
                    .flat_map(|&id| table[id as usize * k..(id as usize + 1) * k].to_vec())
                    .collect();
                let normed = cpu::norm::rms_norm(&rows, &nw, 1e-5);
                for (tile, bias) in Tile::ALL.into_iter().flat_map(|t| [(t, false), (t, true)]) {
                    let bias = bias.then_some(&bt);
                    let run = |gathered: bool| -> [Vec<u32>; 2] {
                        let stream = gpu.zeros("stream", &[ids.len(), k], DType::F32).unwrap();
                        let yt = gpu.zeros("y", &[m, n], DType::F32).unwrap();
                        let mut step = Step::new(gpu);
                        let (a, prologue) = if gathered {
                            let p =
                                Prologue::EmbedRmsNorm { norm: &nwt, eps: 1e-5, ids: &idt, stream: &stream };
                            (Mat::rows(&tt, k, k), p)
                        } else {
                            crate::ops::embed::embed(
                                &mut step,
                                &idt,
                                (&sharded, 1.0),
                                None,
                                &stream,
                                ids.len(),
                            );
                            (Mat::rows(&stream, k, k), Prologue::RmsNorm(&nwt, 1e-5))
                        };
                        let (wa, ya) = (Mat::transposed(&wt, 0, k), Mat::rows(&yt, 0, n));
                        matmul_on(
                            &mut step,
                            with_matvec(gpu, tile),
                            a,
                            wa,
                            ya,
                            (m, n, k),
                            (1.0, bias),
                            false,
                            prologue,
                        );
                        step.submit().unwrap();
                        let bits =
                            |t: &Tensor| gpu.read_f32(t).unwrap().into_iter().map(f32::to_bits).collect();
                        // The stream's rows past the product's are the dispatch's alone.
                        let mut stream: Vec<u32> = bits(&stream);
                        stream.truncate((m + 1) * k);
                        stream.drain(..k);
                        [bits(&yt), stream]
                    };
                    let what = format!("m={m} k={k} {tile:?} bias={}", bias.is_some());
                    let got = run(true);
                    assert_eq!(got, run(false), "{what}: the gather differs from the embed dispatch");
                    let want = cpu::matmul::linear(&normed, &w, bias.map(|_| &b[..]), m, n, k);
                    let y: Vec<f32> = got[0].iter().map(|&z| f32::from_bits(z)).collect();
                    assert_close(&y, &want, 1e-4, &what);
                    assert!(got[1].iter().zip(&rows).all(|(&g, &r)| g == r.to_bits()), "{what}: the stream");
                }
            }
        }
    }

    /// The strided forms used by backward: dX = dY · W and dW = dYᵀ · X.
    #[test]
    fn transposed_products_match_cpu() {
        let gpu = gpu();
        let (m, n, k) = (29, 18, 12); // dY is m×n, W is n×k, X is m×k
        let dy = rand_vec(5, m * n, 1.0);
        let w = rand_vec(6, n * k, 1.0);
        let x = rand_vec(7, m * k, 1.0);
        let (dyt, wt, xt) = (
            gpu.upload_f32("dy", &[m, n], &dy).unwrap(),
            gpu.upload_f32("w", &[n, k], &w).unwrap(),
            gpu.upload_f32("x", &[m, k], &x).unwrap(),
        );
        let dx = gpu.zeros("dx", &[m, k], crate::gpu::DType::F32).unwrap();
        let dw = gpu.zeros("dw", &[n, k], crate::gpu::DType::F32).unwrap();
        let mut step = Step::new(gpu);
        matmul(
            &mut step,
            Mat::rows(&dyt, 0, n),
            Mat::rows(&wt, 0, k),
            Mat::rows(&dx, 0, k),
            (m, k, n),
            None,
            false,
        );
        matmul(
            &mut step,
            Mat::transposed(&dyt, 0, n),
            Mat::rows(&xt, 0, k),
            Mat::rows(&dw, 0, k),
            (n, k, m),
            None,
            false,
        );
        step.submit().unwrap();
        let mut want_dx = vec![0.0; m * k];
        let mut want_dw = vec![0.0; n * k];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    want_dx[i * k + l] += dy[i * n + j] * w[j * k + l];
                    want_dw[j * k + l] += dy[i * n + j] * x[i * k + l];
                }
            }
        }
        assert_close(&gpu.read_f32(&dx).unwrap(), &want_dx, 1e-4, "dx");
        assert_close(&gpu.read_f32(&dw).unwrap(), &want_dw, 1e-4, "dw");
    }

    /// The gradients take every load pattern of the blocked kernel: (37, 20, 48) reads dyᵀ's
    /// rows and W's and x's columns as vec4 (AVEC4, BVEC4), (38, 21, 44) mostly scalar.
    #[test]
    fn linear_backward_matches_cpu() {
        check_backward(37, 20, 48);
        check_backward(38, 21, 44);
    }

    fn check_backward(m: usize, n: usize, k: usize) {
        let gpu = gpu();
        let x = rand_vec(1, m * k, 1.0);
        let w = rand_vec(2, n * k, 1.0);
        let dy = rand_vec(3, m * n, 1.0);
        let dx0 = rand_vec(4, m * k, 1.0);
        let up = |name, shape: &[usize], d: &[f32]| gpu.upload_f32(name, shape, d).unwrap();
        let (xt, wt, dyt, dxt) =
            (up("x", &[m, k], &x), up("w", &[n, k], &w), up("dy", &[m, n], &dy), up("dx", &[m, k], &dx0));
        let (dw, db) = (up("dw", &[n, k], &w), up("db", &[n], &dy[..n]));
        let ones = up("ones", &[m], &vec![1.0; m]);
        let mut step = Step::new(gpu);
        linear_backward(&mut step, (&xt, &wt), &dyt, Some((&dxt, true)), (Some(&dw), Some(&db)), &ones, m);
        step.submit().unwrap();
        // dx = dy · W, dW = dyᵀ · x, db = column sums of dy; the buffers held dx0, w, dy[..n].
        let t = |a: &[f32], rows: usize, cols: usize| -> Vec<f32> {
            (0..rows * cols).map(|i| a[(i % rows) * cols + i / rows]).collect()
        };
        let mut want_dx = cpu::matmul::linear(&dy, &t(&w, n, k), None, m, k, n);
        want_dx.iter_mut().zip(&dx0).for_each(|(a, b)| *a += b);
        let mut want_dw = cpu::matmul::linear(&t(&dy, m, n), &t(&x, m, k), None, n, k, m);
        want_dw.iter_mut().zip(&w).for_each(|(a, b)| *a += b);
        let want_db: Vec<f32> = (0..n).map(|o| dy[o] + (0..m).map(|r| dy[r * n + o]).sum::<f32>()).collect();
        assert_close(&gpu.read_f32(&dxt).unwrap(), &want_dx, 1e-4, "dx");
        assert_close(&gpu.read_f32(&dw).unwrap(), &want_dw, 1e-4, "dW");
        assert_close(&gpu.read_f32(&db).unwrap(), &want_db, 1e-4, "db");
    }

    /// A strided view for [`check_engine`]: offset, row stride, column stride.
    type View = (usize, usize, usize);

    /// `C (+)= 0.5 · A · B (+ bias)` on `engine`, A and B strided views of random buffers, C a
    /// block of a wider matrix, against the CPU's `linear` on the dense A and Bᵀ; with `half`,
    /// f16 operands against the CPU on A and B rounded to f16 (and f32 operands must miss that).
    #[allow(clippy::too_many_arguments)]
    fn check_engine(
        engine: Engine,
        half: bool,
        what: &str,
        av: View,
        bv: View,
        (m, n, k): (usize, usize, usize),
        bias: bool,
        acc: bool,
    ) {
        let gpu = gpu();
        let len = |(off, rs, cs): View, rows: usize, cols: usize| off + (rows - 1) * rs + (cols - 1) * cs + 1;
        let (a, b) = (rand_vec(11, len(av, m, k), 1.0), rand_vec(12, len(bv, k, n), 1.0));
        let bias_v = rand_vec(13, n, 1.0);
        let (c_off, c_rs) = (3, n + 5);
        let c0 = rand_vec(14, c_off + m * c_rs, 1.0);
        let dense_a: Vec<f32> = (0..m * k).map(|i| a[av.0 + i / k * av.1 + i % k * av.2]).collect();
        let dense_bt: Vec<f32> = (0..n * k).map(|i| b[bv.0 + i % k * bv.1 + i / k * bv.2]).collect();
        let round = |v: &[f32]| if half { cpu::matmul::round_f16(v) } else { v.to_vec() };
        let ab = cpu::matmul::linear(&round(&dense_a), &round(&dense_bt), None, m, n, k);
        if half {
            let exact = cpu::matmul::linear(&dense_a, &dense_bt, None, m, n, k);
            let off = exact.iter().zip(&ab).any(|(e, h)| (e - h).abs() > 2e-4 * h.abs().max(1.0));
            assert!(off, "{what}: f32 operands would pass too");
        }
        let mut want = c0.clone();
        for i in 0..m {
            for j in 0..n {
                let at = c_off + i * c_rs + j;
                let base = if acc { c0[at] } else { 0.0 };
                want[at] = base + 0.5 * ab[i * n + j] + if bias { bias_v[j] } else { 0.0 };
            }
        }
        let t = |name, data: &[f32]| gpu.upload_f32(name, &[data.len()], data).unwrap();
        let (at, bt, biast, ct) = (t("a", &a), t("b", &b), t("bias", &bias_v), t("c", &c0));
        let mut step = Step::new(gpu);
        step.f16_operands = half;
        matmul_on(
            &mut step,
            engine,
            Mat { t: &at, off: av.0, rs: av.1, cs: av.2 },
            Mat { t: &bt, off: bv.0, rs: bv.1, cs: bv.2 },
            Mat { t: &ct, off: c_off, rs: c_rs, cs: 1 },
            (m, n, k),
            (0.5, bias.then_some(&biast)),
            acc,
            Prologue::None,
        );
        step.submit().unwrap();
        let what = format!("{what} {m}x{n}x{k} bias={bias} acc={acc} half={half} {engine:?}");
        assert_close(&gpu.read_f32(&ct).unwrap(), &want, 1e-4, &what);
    }

    /// The tiled engine, every SIMT tile, on the three products of training (sizes no multiple of
    /// a tile, several K tiles, several workgroups each way), every load path: vec4 along K,
    /// M or N where the operand is contiguous and aligned, scalar otherwise.
    #[test]
    fn tiled_products_match_cpu() {
        let gpu = gpu();
        for engine in GemmTile::SIMT.map(|t| tiled(gpu, t)) {
            check_training_products(engine, false);
        }
    }

    /// The three products of training on `engine` (f16 operands with `half`) through every
    /// load path, with sizes no multiple of a tile, several K tiles and workgroups each way.
    fn check_training_products(engine: Engine, half: bool) {
        // x·Wᵀ: x rows (at an offset), W [n, k] read along K (AKVEC4, BKVEC4), then scalars.
        check_engine(engine, half, "x·Wᵀ", (4, 52, 1), (0, 1, 52), (131, 150, 52), true, false);
        check_engine(engine, half, "x·Wᵀ", (0, 23, 1), (0, 1, 23), (37, 45, 23), true, true);
        // dy·W: dy [m, out] along K (AKVEC4), W [out, in] along N (BVEC4), then scalars.
        check_engine(engine, half, "dy·W", (0, 44, 1), (0, 72, 1), (131, 72, 44), false, true);
        check_engine(engine, half, "dy·W", (0, 45, 1), (0, 70, 1), (37, 70, 45), false, false);
        // dyᵀ·x: dyᵀ along M (AVEC4), x along N (BVEC4), then scalars.
        check_engine(engine, half, "dyᵀ·x", (0, 1, 44), (0, 72, 1), (44, 72, 131), false, true);
        check_engine(engine, half, "dyᵀ·x", (0, 1, 45), (0, 70, 1), (45, 70, 37), true, false);
    }

    /// `norm(x) · Wᵀ + bias` (`gated`: `y + silu(gate) · up · Wᵀ + bias`, as the model runs
    /// them) with the prologue in gemm.wgsl on `engine`, W random in `fmt`, x random within
    /// ±`scale`, against the CPU's norm or gate then product on the dequantized W.
    fn check_tiled_prologue(
        engine: Engine,
        gated: bool,
        (m, n, k): (usize, usize, usize),
        fmt: WeightFormat,
        bias: bool,
        scale: f32,
    ) {
        let gpu = gpu();
        let cols = if gated { 2 * k } else { k };
        let x = rand_vec(m as u64, m * cols, scale);
        let nw = rand_vec(5, k, 1.0);
        let packed = crate::gpu::wfmt::random_packed(fmt, n, k, 2);
        let w = crate::gpu::wfmt::dequantize(fmt, &packed);
        let (b, y0) = (rand_vec(3, n, 1.0), rand_vec(4, m * n, 1.0));
        let t = |name, shape: &[usize], data: &[f32]| gpu.upload_f32(name, shape, data).unwrap();
        let (xt, nwt, bt, yt) =
            (t("x", &[m, cols], &x), t("nw", &[k], &nw), t("b", &[n], &b), t("y", &[m, n], &y0));
        let wt = gpu.upload_weight("w", &[n, k], fmt, &packed).unwrap();
        let (prologue, a) = match gated {
            true => (Prologue::SiluGate, cpu::act::silu_gate(&x, k)),
            false => (Prologue::RmsNorm(&nwt, 1e-5), cpu::norm::rms_norm(&x, &nw, 1e-5)),
        };
        let mut step = Step::new(gpu);
        let (xa, wa, ya) = (Mat::rows(&xt, 0, cols), Mat::transposed(&wt, 0, k), Mat::rows(&yt, 0, n));
        matmul_on(&mut step, engine, xa, wa, ya, (m, n, k), (1.0, bias.then_some(&bt)), gated, prologue);
        step.submit().unwrap();
        let mut want = cpu::matmul::linear(&a, &w, bias.then_some(&b[..]), m, n, k);
        if gated {
            want.iter_mut().zip(&y0).for_each(|(w, y)| *w += y);
        }
        let what = format!("gated={gated} {m}x{n}x{k} {fmt:?} bias={bias} scale={scale} {engine:?}");
        assert_close(&gpu.read_f32(&yt).unwrap(), &want, 1e-4, &what);
    }

    /// Both prologues of the tiled engine (prefill's RMSNorm and SiLU gate), every SIMT tile:
    /// sizes no multiple of a tile, several K tiles and workgroups, vec4 and scalar (K % 4 != 0)
    /// loads, with and without bias, a residual stream in the thousands, and every weight
    /// format through wload, against the CPU.
    #[test]
    fn tiled_prologues_match_cpu() {
        let gpu = gpu();
        let f32 = WeightFormat::F32;
        let unpacked = native_f16(gpu).then_some(WeightFormat::F16);
        for engine in GemmTile::SIMT.map(|t| tiled(gpu, t)) {
            // Normed: the stream's scale cancels.
            check_tiled_prologue(engine, false, (70, 33, 92), f32, true, 3000.0);
            for gated in [false, true] {
                check_tiled_prologue(engine, gated, (131, 150, 52), f32, true, 2.0);
                check_tiled_prologue(engine, gated, (37, 45, 46), f32, false, 2.0);
            }
            // The weights' loads do not depend on the prologue: each format with one.
            for (i, fmt) in WeightFormat::ALL.into_iter().chain(unpacked).enumerate() {
                UNPACK_F16.set(i >= WeightFormat::ALL.len());
                check_tiled_prologue(engine, i % 2 == 0, (37, 45, 256), fmt, i / 2 % 2 == 0, 2.0);
            }
            UNPACK_F16.set(false);
        }
    }

    /// Mixed precision's products (f16 operands, f32 accumulation) on the portable engine and
    /// every SIMT tile, the three products of training through every load path, against the
    /// CPU on operands rounded to f16; a few rows, where decode would take the matrix-vector
    /// kernel, stay on these. An operand past f16's range makes its outputs infinite.
    #[test]
    fn f16_operand_products_match_cpu_on_rounded_operands() {
        let gpu = gpu();
        let portable = Engine::with_tier(gpu, Tier::Portable, None);
        for engine in [portable].into_iter().chain(GemmTile::SIMT.map(|t| tiled(gpu, t))) {
            check_training_products(engine, true);
            check_engine(engine, true, "x·Wᵀ", (0, 64, 1), (0, 1, 64), (3, 40, 64), false, false);
        }
        let (m, n, k) = (8, 8, 8);
        let mut a = rand_vec(21, m * k, 1.0);
        // Row 0 holds f16's largest value; row 1 one that rounds past it.
        (a[0], a[k]) = (65504.0, 65520.0);
        let b = rand_vec(22, k * n, 1.0);
        let (at, bt) = (gpu.upload_f32("a", &[m, k], &a).unwrap(), gpu.upload_f32("b", &[k, n], &b).unwrap());
        for engine in [portable, tiled(gpu, GemmTile::SMALL)] {
            let ct = gpu.zeros("c", &[m, n], crate::gpu::DType::F32).unwrap();
            let mut step = Step::new(gpu);
            step.f16_operands = true;
            let (a, b, c) = (Mat::rows(&at, 0, k), Mat::rows(&bt, 0, n), Mat::rows(&ct, 0, n));
            matmul_on(&mut step, engine, a, b, c, (m, n, k), (1.0, None), false, Prologue::None);
            step.submit().unwrap();
            let c = gpu.read_f32(&ct).unwrap();
            assert!(c.iter().enumerate().all(|(i, v)| v.is_finite() == (i / n != 1)), "{engine:?}: {c:?}");
        }
    }

    /// Packed weights in every format through the tiled engine, every SIMT tile: as the Wᵀ of x·Wᵀ
    /// (read along K) and as the W of dy·W (read along N), against the CPU on the dequantized W.
    #[test]
    fn tiled_packed_weights_match_cpu_on_dequantized() {
        let gpu = gpu();
        let (out, inp, m) = (45, 256, 37);
        let unpacked = native_f16(gpu).then_some(WeightFormat::F16);
        for (i, fmt) in WeightFormat::ALL.into_iter().chain(unpacked).enumerate() {
            UNPACK_F16.set(i >= WeightFormat::ALL.len());
            let packed = crate::gpu::wfmt::random_packed(fmt, out, inp, 5);
            let w = crate::gpu::wfmt::dequantize(fmt, &packed);
            let w_t: Vec<f32> = (0..inp * out).map(|i| w[(i % out) * inp + i / out]).collect();
            let wt = gpu.upload_weight("w", &[out, inp], fmt, &packed).unwrap();
            let (x, dy) = (rand_vec(1, m * inp, 1.0), rand_vec(2, m * out, 1.0));
            let (xt, dyt) =
                (gpu.upload_f32("x", &[m, inp], &x).unwrap(), gpu.upload_f32("dy", &[m, out], &dy).unwrap());
            for engine in GemmTile::SIMT.map(|t| tiled(gpu, t)) {
                let y = gpu.zeros("y", &[m, out], crate::gpu::DType::F32).unwrap();
                let dx = gpu.zeros("dx", &[m, inp], crate::gpu::DType::F32).unwrap();
                let mut step = Step::new(gpu);
                let (xa, wa, ya) =
                    (Mat::rows(&xt, 0, inp), Mat::transposed(&wt, 0, inp), Mat::rows(&y, 0, out));
                matmul_on(&mut step, engine, xa, wa, ya, (m, out, inp), (1.0, None), false, Prologue::None);
                let (dya, wa, dxa) =
                    (Mat::rows(&dyt, 0, out), Mat::rows(&wt, 0, inp), Mat::rows(&dx, 0, inp));
                matmul_on(&mut step, engine, dya, wa, dxa, (m, inp, out), (1.0, None), false, Prologue::None);
                step.submit().unwrap();
                let what = format!("{fmt:?} {engine:?} unpacked f16: {}", UNPACK_F16.get());
                let want_y = cpu::matmul::linear(&x, &w, None, m, out, inp);
                assert_close(&gpu.read_f32(&y).unwrap(), &want_y, 1e-4, &format!("x·Wᵀ {what}"));
                let want_dx = cpu::matmul::linear(&dy, &w_t, None, m, inp, out);
                assert_close(&gpu.read_f32(&dx).unwrap(), &want_dx, 1e-4, &format!("dy·W {what}"));
            }
        }
        UNPACK_F16.set(false);
    }

    /// The coop tier runs only where the adapter has 16×16 f16 cooperative matrices: elsewhere
    /// (lavapipe) opening a device for it is refused in one line naming the adapter; where
    /// it is offered, its products match the tiled tier's within f16 rounding.
    #[test]
    fn coop_tier_is_refused_or_matches_tiled() {
        let choice = crate::gpu::AdapterChoice::from_flag_or_env(None);
        let coop = match pollster::block_on(Gpu::open(&choice, Some(Tier::Coop))) {
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("KEEL_TIER=coop") && e.contains(&gpu().info.name), "{e}");
                return;
            }
            Ok(coop) => coop,
        };
        let (m, n, k) = (130, 70, 96);
        let (x, w) = (rand_vec(1, m * k, 1.0), rand_vec(2, n * k, 1.0));
        let want = cpu::matmul::linear(&x, &w, None, m, n, k);
        let (xt, wt) =
            (coop.upload_f32("x", &[m, k], &x).unwrap(), coop.upload_f32("w", &[n, k], &w).unwrap());
        let y = coop.zeros("y", &[m, n], crate::gpu::DType::F32).unwrap();
        let mut step = Step::new(&coop);
        matmul(
            &mut step,
            Mat::rows(&xt, 0, k),
            Mat::transposed(&wt, 0, k),
            Mat::rows(&y, 0, n),
            (m, n, k),
            None,
            false,
        );
        step.submit().unwrap();
        // f16 inputs: each product is off by about 2⁻¹⁰ relative, the sum of 96 by about 1e-2.
        assert_close(&coop.read_f32(&y).unwrap(), &want, 5e-2, "coop x·Wᵀ");
    }
}
