//! Adapter choice, the device with the features and limits Keel asks for, and the
//! pipeline cache.

use super::shader::{self, Define};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which adapter to use: `--adapter` flag, else the `KEEL_ADAPTER` environment variable.
/// A number picks by index in `keel info`'s list; any other text picks the first adapter
/// whose name or backend (`[Vulkan]`, `[Gl]`) contains it (case-insensitive). `None`: wgpu's high-performance choice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdapterChoice(pub Option<String>);

/// What to try when no adapter is found, where Keel runs.
#[cfg(not(target_arch = "wasm32"))]
const NO_ADAPTER_HINT: &str =
    "on Linux without a GPU install Mesa's lavapipe (apt-get install mesa-vulkan-drivers)";
#[cfg(target_arch = "wasm32")]
const NO_ADAPTER_HINT: &str = "the browser offers none to this page";

/// An adapter as Keel lists it: its name and backend (`llvmpipe (LLVM 15.0.6, 256 bits) [Vulkan]`),
/// since one device can be offered by several backends under the same name.
pub fn adapter_label(info: &wgpu::AdapterInfo) -> String {
    format!("{} [{:?}]", info.name, info.backend)
}

impl AdapterChoice {
    /// The flag's choice, else `KEEL_ADAPTER`'s.
    pub fn from_flag_or_env(flag: Option<String>) -> Self {
        AdapterChoice(flag.or_else(|| std::env::var("KEEL_ADAPTER").ok().filter(|s| !s.is_empty())))
    }
}

/// Which engine computes the matrix products that the matrix-vector kernel does not take
/// (prefill, scoring, every training product): `KEEL_TIER`, else chosen per adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// 4×4 outputs per thread from registers (`shaders/matmul.wgsl`): the default on CPU
    /// adapters, which pay per element loaded and gain nothing from workgroup memory.
    Portable,
    /// Workgroup-memory tiles (`shaders/gemm.wgsl`): the default on GPUs.
    Tiled,
    /// The tiled engine on cooperative matrices (tensor cores: f16 inputs, f32 sums), native
    /// adapters with wgpu's experimental feature only; opt-in until measured.
    Coop,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Portable, Tier::Tiled, Tier::Coop];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Portable => "portable",
            Tier::Tiled => "tiled",
            Tier::Coop => "coop",
        }
    }

    /// `KEEL_TIER`, when set.
    fn from_env() -> Result<Option<Tier>> {
        let Ok(text) = std::env::var("KEEL_TIER") else { return Ok(None) };
        match Tier::ALL.into_iter().find(|t| t.name() == text.trim()) {
            Some(tier) => Ok(Some(tier)),
            None => bail!("KEEL_TIER must be portable, tiled or coop, got '{text}'"),
        }
    }
}

/// Whether the adapter multiplies 16×16 f16 cooperative matrices into f32 ones in 32-thread
/// subgroups, which the COOP variant of gemm.wgsl assumes.
fn has_f16_coop(adapter: &wgpu::Adapter) -> bool {
    let info = adapter.get_info();
    let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
    adapter.features().contains(needed)
        && info.subgroup_min_size == 32
        && info.subgroup_max_size == 32
        && adapter.cooperative_matrix_properties().iter().any(|c| {
            (c.m_size, c.n_size, c.k_size) == (16, 16, 16)
                && c.ab_type == wgpu::CooperativeScalarType::F16
                && c.cr_type == wgpu::CooperativeScalarType::F32
        })
}

type PipelineKey = (&'static str, Vec<Define>);

/// How [`Gpu::pipeline`] compiles kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KernelOptions {
    /// Keep WebGPU's runtime checks (bounds clamps, loop bounds, division guards) and
    /// zero-initialised workgroup memory natively too (`KEEL_CHECKED=1`): the page always has
    /// them; native builds otherwise drop them, as they cost serial work in every kernel.
    pub checked: bool,
    /// Every kernel returns as it starts, with its pipeline, bindings and grid unchanged
    /// (`KEEL_EMPTY_KERNELS=1`, read by `keel bench` only): what a step costs in dispatches alone.
    pub empty: bool,
}

impl KernelOptions {
    /// `KEEL_CHECKED=1` asks for checked modules; the empty-kernel switch is never read here,
    /// so that only `keel bench` can turn it on.
    pub fn from_env() -> Self {
        KernelOptions { checked: env_flag("KEEL_CHECKED"), empty: false }
    }
}

/// Whether an environment switch is set to 1.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "1")
}

/// A compiled kernel and its name as profiles show it: the shader family and its defines.
#[derive(Clone)]
pub struct Pipeline {
    /// The compiled pipeline.
    pub raw: wgpu::ComputePipeline,
    /// Family and defines, as profiles show them.
    pub name: Arc<str>,
    /// What [`Step::dispatch`](super::Step::dispatch) checks each dispatch against (natively:
    /// the browser build has no WGSL parser of its own).
    pub contract: Option<Arc<shader::Contract>>,
}

/// One device and queue, shared by everything in a process.
pub struct Gpu {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter's name, backend and driver.
    pub info: wgpu::AdapterInfo,
    /// The limits Keel works within: what it asked the device for (and got), with
    /// `max_storage_buffer_binding_size` lowered by `KEEL_MAX_BINDING_BYTES` when set.
    pub limits: wgpu::Limits,
    /// The optional features Keel got (f16, subgroups, timestamps; cooperative matrices for
    /// [`Tier::Coop`]).
    pub features: wgpu::Features,
    /// The matrix engine (`KEEL_TIER`, else per adapter; [`Gpu::open`] may force one).
    pub tier: Tier,
    /// Whether the adapter offers what [`Tier::Coop`] needs (used only when asked for).
    pub coop_offered: bool,
    /// How kernels are compiled.
    pub kernels: KernelOptions,
    pipelines: Mutex<HashMap<PipelineKey, Pipeline>>,
    /// Free working buffers by byte size (see [`Gpu::scratch`] and [`Gpu::recycle`]).
    pub(super) pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Why the device can no longer be used (lost, or an error nothing caught), once known.
    lost: Arc<Mutex<Option<String>>>,
    /// Bytes of every tensor buffer created so far (see [`Gpu::allocated_bytes`]).
    pub(super) allocated: std::sync::atomic::AtomicU64,
}

fn instance() -> wgpu::Instance {
    quiet_window_system_probe();
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env())
}

/// Keel computes and never presents, yet Mesa's implicit Vulkan layer `device_select` probes
/// the Wayland and X11 displays to order the adapters, and without `XDG_RUNTIME_DIR` (a shell
/// over ssh, a container) libwayland prints an error line for each probe. The layer's own
/// switch turns it off; Keel picks its adapter itself. A user's explicit setting is kept.
fn quiet_window_system_probe() {
    #[cfg(all(unix, not(target_arch = "wasm32")))]
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // Before any Vulkan call, so no other thread of ours reads the environment yet.
        ONCE.call_once(|| std::env::set_var("NODEVICE_SELECT", "1"));
    }
}

/// The limits Keel needs: the defaults, with buffer sizes and storage bindings raised to
/// what the adapter offers (weights and KV caches are large).
fn wanted_limits(offered: &wgpu::Limits) -> wgpu::Limits {
    wgpu::Limits {
        max_buffer_size: offered.max_buffer_size,
        max_storage_buffer_binding_size: offered.max_storage_buffer_binding_size,
        max_storage_buffers_per_shader_stage: offered.max_storage_buffers_per_shader_stage.min(10),
        max_compute_workgroup_storage_size: offered.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: offered.max_compute_invocations_per_workgroup,
        ..wgpu::Limits::downlevel_defaults()
    }
}

/// `KEEL_MAX_BINDING_BYTES`: a largest binding smaller than the adapter's, so that what
/// happens to a model or cache over the limit can be tried (and tested) on any adapter.
fn binding_override() -> Result<Option<u64>> {
    let Ok(text) = std::env::var("KEEL_MAX_BINDING_BYTES") else { return Ok(None) };
    match text.trim().parse::<u64>() {
        Ok(n) if n >= 4 => Ok(Some(n)),
        _ => bail!("KEEL_MAX_BINDING_BYTES must be a number of bytes (at least 4), got '{text}'"),
    }
}

impl Gpu {
    /// Lists the adapters wgpu sees (for `keel info`).
    pub async fn adapters() -> Vec<wgpu::AdapterInfo> {
        instance().enumerate_adapters(wgpu::Backends::all()).await.iter().map(|a| a.get_info()).collect()
    }

    /// Opens the adapter `choice` picks with the limits and features Keel needs (the page and tools that want their own device; others share [`Gpu::shared`]).
    pub async fn new(choice: &AdapterChoice) -> Result<Gpu> {
        Gpu::open_with(choice, Tier::from_env()?, binding_override()?, KernelOptions::from_env()).await
    }

    /// [`Gpu::new`] with the largest storage binding lowered to `cap` bytes where given
    /// (tests that split weights into row shards without touching the environment).
    pub async fn with_max_binding(choice: &AdapterChoice, cap: Option<u64>) -> Result<Gpu> {
        Gpu::open_with(choice, Tier::from_env()?, cap, KernelOptions::from_env()).await
    }

    /// [`Gpu::new`] with the matrix engine `tier` (None: the adapter's default), whatever
    /// `KEEL_TIER` says: tests that compare tiers in one process.
    pub async fn open(choice: &AdapterChoice, tier: Option<Tier>) -> Result<Gpu> {
        Gpu::open_with(choice, tier, binding_override()?, KernelOptions::from_env()).await
    }

    /// [`Gpu::new`] compiling kernels as `kernels` says.
    pub async fn with_options(choice: &AdapterChoice, kernels: KernelOptions) -> Result<Gpu> {
        Gpu::open_with(choice, Tier::from_env()?, binding_override()?, kernels).await
    }

    /// The device on the matrix engine `tier` (None: the adapter's default), with the largest
    /// binding capped at `cap` bytes where given, compiling kernels as `kernels` says.
    async fn open_with(
        choice: &AdapterChoice,
        tier: Option<Tier>,
        cap: Option<u64>,
        kernels: KernelOptions,
    ) -> Result<Gpu> {
        let instance = instance();
        let adapter = match &choice.0 {
            None => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("no GPU adapter found ({e}); {NO_ADAPTER_HINT}"))?,
            Some(want) => {
                let all = instance.enumerate_adapters(wgpu::Backends::all()).await;
                let names: Vec<String> = all.iter().map(|a| adapter_label(&a.get_info())).collect();
                let pick = match want.parse::<usize>() {
                    Ok(i) => all.into_iter().nth(i),
                    Err(_) => all
                        .into_iter()
                        .find(|a| adapter_label(&a.get_info()).to_lowercase().contains(&want.to_lowercase())),
                };
                pick.ok_or_else(|| {
                    anyhow!("--adapter/KEEL_ADAPTER '{want}' matches no adapter; available: {names:?}")
                })?
            }
        };
        let offered = adapter.limits();
        let limits = wanted_limits(&offered);
        let coop_offered = has_f16_coop(&adapter);
        let tier = match tier {
            Some(Tier::Coop) if !coop_offered => bail!(
                "the coop tier (KEEL_TIER=coop): the adapter '{}' has no 16×16×16 cooperative matrices with f16 inputs and \
                 f32 sums in 32-thread subgroups",
                adapter.get_info().name
            ),
            Some(tier) => tier,
            None if adapter.get_info().device_type == wgpu::DeviceType::Cpu => Tier::Portable,
            None => Tier::Tiled,
        };
        // Optional features: used when present, never required (timestamps for `bench --profile`);
        // the experimental cooperative matrices only when asked for.
        let coop = match tier {
            Tier::Coop => wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
            _ => wgpu::Features::empty(),
        };
        let features = adapter.features()
            & (wgpu::Features::SHADER_F16
                | wgpu::Features::SUBGROUP
                | wgpu::Features::TIMESTAMP_QUERY
                | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
                | coop);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("keel"),
                required_features: features,
                required_limits: limits.clone(),
                // SAFETY: only the cooperative-matrix feature is experimental, requested for
                // `Tier::Coop` alone, whose kernels the unit test validates and the GPU bench
                // checks against the tiled tier.
                experimental_features: match tier {
                    Tier::Coop => unsafe { wgpu::ExperimentalFeatures::enabled() },
                    _ => wgpu::ExperimentalFeatures::disabled(),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("could not open the GPU device '{}': {e}", adapter.get_info().name))?;
        let lost = Arc::new(Mutex::new(None));
        let lost_flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_flag.lock().unwrap() = Some(format!("the GPU device was lost ({reason:?}: {message})"));
        });
        // wgpu's default for an error no scope catches (out of memory, say) is a panic;
        // keep the first instead, for `check_lost` to report.
        let error_flag = lost.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut first = error_flag.lock().unwrap();
            if first.is_none() {
                *first = Some(format!("the GPU reported an error: {}", e.to_string().replace('\n', " ")));
            }
        }));
        let mut limits = limits;
        if let Some(cap) = cap {
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(cap);
        }
        Ok(Gpu {
            device,
            queue,
            info: adapter.get_info(),
            limits,
            features,
            tier,
            coop_offered,
            kernels,
            pipelines: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            lost,
            allocated: Default::default(),
        })
    }

    /// The process-wide device (tests and the CLI share one).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn shared() -> Result<&'static Gpu> {
        Gpu::shared_with(&AdapterChoice::from_flag_or_env(None))
    }

    /// The process-wide device, opened with `choice` if it is not open yet.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn shared_with(choice: &AdapterChoice) -> Result<&'static Gpu> {
        Gpu::shared_opened(choice, KernelOptions::from_env())
    }

    /// The process-wide device, opened with `choice` and `kernels` if it is not open yet; an
    /// error if it is already open with other kernel options.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn shared_with_options(choice: &AdapterChoice, kernels: KernelOptions) -> Result<&'static Gpu> {
        let gpu = Gpu::shared_opened(choice, kernels)?;
        if gpu.kernels != kernels {
            bail!("the shared GPU device is already open with kernel options {:?}", gpu.kernels);
        }
        Ok(gpu)
    }

    /// The process-wide device as first opened (with `choice` and `kernels` if not yet).
    #[cfg(not(target_arch = "wasm32"))]
    fn shared_opened(choice: &AdapterChoice, kernels: KernelOptions) -> Result<&'static Gpu> {
        static GPU: std::sync::OnceLock<std::result::Result<Gpu, String>> = std::sync::OnceLock::new();
        GPU.get_or_init(|| {
            pollster::block_on(Gpu::with_options(choice, kernels)).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
    }

    /// A process-wide device on the matrix engine `tier`, whatever `KEEL_TIER` says (tests
    /// that check a tier other than the adapter's default; one device per tier).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn shared_on_tier(tier: Tier) -> Result<&'static Gpu> {
        static GPUS: [std::sync::OnceLock<std::result::Result<Gpu, String>>; 3] =
            [const { std::sync::OnceLock::new() }; 3];
        let choice = AdapterChoice::from_flag_or_env(None);
        let at = Tier::ALL.iter().position(|&t| t == tier).expect("a tier");
        GPUS[at]
            .get_or_init(|| pollster::block_on(Gpu::open(&choice, Some(tier))).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    /// An error if the device was lost (driver reset, sleep, out of memory) or reported an
    /// error no one caught, so callers report it in words instead of crashing.
    pub fn check_lost(&self) -> Result<()> {
        match &*self.lost.lock().unwrap() {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }

    /// The pipeline for a kernel family and its defines, compiled once.
    pub fn pipeline(&self, name: &'static str, defines: &[Define]) -> Pipeline {
        let key = (name, defines.to_vec());
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        // Only the variants the naga test validates may run.
        let sorted = |d: &[Define]| {
            let mut d = d.to_vec();
            d.sort();
            d
        };
        assert!(
            crate::ops::all_variants().iter().any(|(n, d)| *n == name && sorted(d) == sorted(defines)),
            "shader {name} {defines:?} is not in ops::all_variants, so the naga test does not validate it"
        );
        // The page keeps WebGPU's checks (browsers apply them whatever wgpu asks).
        let checked = cfg!(target_arch = "wasm32") || self.kernels.checked;
        let mut text = shader::preprocess(shader::source(name), defines);
        // Unit tests check that no kernel reads workgroup memory it has not written.
        #[cfg(test)]
        if !checked {
            text = shader::poisoned_workgroup_memory(&text).unwrap_or_else(|e| panic!("shader {name}: {e}"));
        }
        if self.kernels.empty {
            text = shader::empty_bodies(&text);
        }
        #[cfg(not(target_arch = "wasm32"))]
        let contract =
            Some(Arc::new(shader::Contract::of(&text).unwrap_or_else(|e| panic!("shader {name}: {e}"))));
        #[cfg(target_arch = "wasm32")]
        let contract = None;
        let desc =
            wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(text.into()) };
        let module = if checked {
            self.device.create_shader_module(desc)
        } else {
            // SAFETY: Keel's kernels index within their buffers and arrays (the host checks
            // sizes before each dispatch, and every variant runs against a CPU reference
            // with checked modules and without); their loops are bounded by the parameters.
            unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        };
        // Every kernel writes each workgroup slot before reading it (the poisoned unit tests).
        let zero_init = checked;
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: None,
            compilation_options: wgpu::PipelineCompilationOptions {
                zero_initialize_workgroup_memory: zero_init,
                ..Default::default()
            },
            cache: None,
        });
        let label: String = std::iter::once(name.to_string())
            .chain(defines.iter().map(|(d, v)| format!("{d}={v}")))
            .collect::<Vec<_>>()
            .join(" ");
        let pipeline = Pipeline { raw: pipeline, name: label.into(), contract };
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        pipeline
    }

    /// Bytes of every tensor buffer this device has created (freed ones included): what a
    /// memory prediction is checked against.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Largest single binding, in f32 elements.
    pub fn max_binding_elems(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size / 4
    }
}
