//! Instance, adapter and device selection.
//!
//! gradscope prefers a real GPU, falls back to a software adapter (Mesa's lavapipe on Vulkan, or
//! llvmpipe through GL), and can be forced with `--adapter <name substring>` or `WGPU_BACKEND`.
//! The device is requested with the adapter's own limits: WebGPU's defaults (128 MiB bindings are
//! fine, but 8 storage buffers and 16 KiB workgroup memory are the guaranteed minimums) would hide
//! what the hardware can do.

use std::fmt;
use std::sync::Arc;

use super::ledger::{Category, GpuBuffer, Ledger};
use super::kernel_set::{KERNELS_ENV, KernelSet};
use super::kernels_gpu::{MATMUL_TILE_ENV, TilePolicy};
use super::registry::Registry;

/// What kind of device runs the kernels. Kernel variants are chosen by this: workgroup-memory
/// tiles are what make a real GPU fast, but barriers are expensive on a CPU adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A software adapter (lavapipe, llvmpipe, WARP): register-blocked kernels, no barriers.
    Cpu,
    /// A discrete, integrated or virtual GPU: workgroup-tiled kernels.
    Gpu,
}

/// How to choose the adapter.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    /// Case-insensitive substring of the adapter name (as printed by `gradscope info`).
    pub name: Option<String>,
}

/// One adapter as `gradscope info` prints it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamp_query: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

impl AdapterSummary {
    fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        Self {
            name: info.name,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver,
            driver_info: info.driver_info,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        }
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "{} ({}, {})", self.name, self.backend, self.device_type)?;
        writeln!(f, "  driver:                      {} {}", self.driver, self.driver_info)?;
        writeln!(f, "  shader f16:                  {}", yes(self.shader_f16))?;
        writeln!(f, "  subgroups:                   {}", yes(self.subgroups))?;
        writeln!(f, "  timestamp queries:           {}", yes(self.timestamp_query))?;
        writeln!(
            f,
            "  max storage binding:         {} MiB",
            self.max_storage_buffer_binding_size >> 20
        )?;
        writeln!(f, "  max buffer size:             {} MiB", self.max_buffer_size >> 20)?;
        writeln!(
            f,
            "  storage buffers per stage:   {}",
            self.max_storage_buffers_per_shader_stage
        )?;
        writeln!(
            f,
            "  workgroup memory:            {} KiB",
            self.max_compute_workgroup_storage_size >> 10
        )?;
        writeln!(
            f,
            "  invocations per workgroup:   {}",
            self.max_compute_invocations_per_workgroup
        )?;
        write!(
            f,
            "  workgroups per dimension:    {}",
            self.max_compute_workgroups_per_dimension
        )
    }
}

/// Errors of device selection.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no GPU or software adapter found.\n\
         On Debian/Ubuntu without a GPU driver install Mesa's software Vulkan driver:\n    \
         sudo apt-get install mesa-vulkan-drivers libvulkan1\n\
         (or the GL fallback: sudo apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri).\n\
         On other systems install your GPU vendor's Vulkan, Metal or DX12 driver."
    )]
    NoAdapter,
    #[error("no adapter's name contains {wanted:?}; adapters found:\n{found}")]
    NoMatchingAdapter { wanted: String, found: String },
    #[error("the adapter {adapter:?} refused a device")]
    RequestDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },
    #[error("the device has no {0}")]
    MissingFeature(&'static str),
    #[error("device error in {what}: {message}")]
    Device { what: String, message: String },
}

/// The environment variables that pick a backend (`WGPU_BACKEND=vulkan|gl|metal|dx12`).
fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu reaches on this machine (after `WGPU_BACKEND` filtering).
pub fn list_adapters() -> Vec<AdapterSummary> {
    let inst = instance();
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let adapters = pollster::block_on(inst.enumerate_adapters(backends));
    adapters.iter().map(AdapterSummary::of).collect()
}

/// Rank adapters: real GPUs first (discrete, integrated, virtual), then CPU adapters; among equals
/// prefer Vulkan/Metal/DX12 over GL, since GL lacks f16, subgroups and timestamp queries.
fn rank(adapter: &wgpu::Adapter) -> (u8, u8) {
    let info = adapter.get_info();
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (kind, backend)
}

/// Pick an adapter according to `choice`.
pub fn select_adapter(choice: &AdapterChoice) -> Result<wgpu::Adapter, GpuError> {
    let inst = instance();
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let adapters = pollster::block_on(inst.enumerate_adapters(backends));
    pick(&adapters, choice.name.as_deref())
}

/// Choose among `adapters`: the name filter if given, then real GPUs before CPU adapters.
pub fn pick(adapters: &[wgpu::Adapter], name: Option<&str>) -> Result<wgpu::Adapter, GpuError> {
    let mut adapters = adapters.to_vec();
    let choice = AdapterChoice { name: name.map(String::from) };
    if adapters.is_empty() {
        return Err(GpuError::NoAdapter);
    }
    if let Some(wanted) = &choice.name {
        let needle = wanted.to_lowercase();
        let found: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("  {} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        adapters.retain(|a| a.get_info().name.to_lowercase().contains(&needle));
        if adapters.is_empty() {
            return Err(GpuError::NoMatchingAdapter { wanted: wanted.clone(), found: found.join("\n") });
        }
    }
    adapters.sort_by_key(rank);
    Ok(adapters.swap_remove(0))
}

/// The features gradscope uses when the adapter has them.
fn wanted_features(adapter: &wgpu::Adapter) -> wgpu::Features {
    let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP;
    adapter.features() & wanted
}

/// The device description gradscope asks for: the adapter's own limits and the optional features
/// it has. The app gives the same description to eframe so that one device serves both.
pub fn device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
    wgpu::DeviceDescriptor {
        label: Some("gradscope"),
        required_features: wanted_features(adapter),
        required_limits: adapter.limits(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }
}

/// The device, its queue, the kernel registry and the byte ledger: everything kernels need.
/// Cloning is cheap (all members are shared).
#[derive(Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: Arc<AdapterSummary>,
    pub kind: DeviceKind,
    /// The kernel family this device runs, chosen once (`KernelSet::from_env`).
    kernels: KernelSet,
    /// How the GPU family's matmuls pick their block tile, chosen once (`TilePolicy::from_env`).
    matmul_tiles: TilePolicy,
    pub ledger: Ledger,
    pub registry: Arc<Registry>,
    /// Device errors wgpu reported outside an error scope (validation, out of memory), kept
    /// instead of panicking; the trainer checks them after each step.
    pub(crate) errors: Arc<std::sync::Mutex<Vec<String>>>,
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// Command buffers of work (dispatches, clears, copies) submitted so far; readbacks are not
    /// counted. Lets tests check that a window is one submission.
    submitted: Arc<std::sync::atomic::AtomicU64>,
    /// Stand-ins for storage bindings an entry point declares but a dispatch does not use
    /// (`ProgramBuilder::call` with extent 0): one slot shared by read-only bindings, and one
    /// slot per binding position for writable ones, which WebGPU forbids to overlap.
    unused: Arc<(GpuBuffer, GpuBuffer)>,
    /// Armed by `trace_next_submission`: the next submission's commands (`gpu::trace`).
    pub(crate) tracer: Arc<std::sync::Mutex<Option<super::trace::Recorder>>>,
    pub(crate) traced: Arc<std::sync::Mutex<Option<super::trace::Trace>>>,
    /// A cap on the bytes of one storage binding and of a slab's buffers, below the device's
    /// own limits (0: none). For testing multi-buffer layouts on small models:
    /// `GRADSCOPE_MAX_BINDING=64KiB` or `Gpu::set_binding_cap`.
    binding_cap: Arc<std::sync::atomic::AtomicU64>,
}

/// The environment variable that caps binding and slab-buffer sizes (for testing).
pub const MAX_BINDING_ENV: &str = "GRADSCOPE_MAX_BINDING";


/// Bytes of one unused-binding slot (the largest storage offset alignment WebGPU allows).
pub const UNUSED_SLOT: u64 = 256;

/// Bytes of the unused-binding buffers every device holds (in the ledger's scratch category):
/// one read-only slot and eight writable ones (WebGPU guarantees 8 storage buffers per stage).
pub const UNUSED_BINDING_BYTES: u64 = UNUSED_SLOT * (1 + 8);

impl Gpu {
    /// Select an adapter and create a device with the adapter's limits.
    pub fn new(choice: &AdapterChoice) -> Result<Self, GpuError> {
        Self::with_limits(choice, None)
    }

    /// Select an adapter and create a device with `limits` (None: the adapter's own). With
    /// `wgpu::Limits::default()`, WebGPU's guaranteed limits: what a browser gives a page that
    /// asks for nothing more.
    pub fn with_limits(choice: &AdapterChoice, limits: Option<wgpu::Limits>) -> Result<Self, GpuError> {
        let adapter = select_adapter(choice)?;
        let mut desc = device_descriptor(&adapter);
        if let Some(l) = limits {
            desc.required_limits = l;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|source| {
            GpuError::RequestDevice { adapter: adapter.get_info().name, source }
        })?;
        let gpu = Self::from_device(&adapter, device, queue);
        gpu.cap_from_env().map_err(|message| GpuError::Device { what: MAX_BINDING_ENV.into(), message })?;
        let kernels = KernelSet::from_env(gpu.kind).map_err(|message| GpuError::Device { what: KERNELS_ENV.into(), message })?;
        let discrete = adapter.get_info().device_type == wgpu::DeviceType::DiscreteGpu;
        let tiles = TilePolicy::from_env(discrete).map_err(|message| GpuError::Device { what: MATMUL_TILE_ENV.into(), message })?;
        Ok(gpu.with_kernels(kernels).with_matmul_tiles(tiles))
    }

    /// Wrap a device created elsewhere (the app gets its device from eframe).
    pub fn from_device(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let summary = AdapterSummary::of(adapter);
        let kind = match adapter.get_info().device_type {
            wgpu::DeviceType::Cpu => DeviceKind::Cpu,
            _ => DeviceKind::Gpu,
        };
        // an unreadable override is reported by `with_limits`; a device made elsewhere (the app's)
        // warns and keeps the default
        let kernels = KernelSet::from_env(kind).unwrap_or_else(|e| {
            eprintln!("gradscope: {e}; using the {} kernels", KernelSet::for_kind(kind));
            KernelSet::for_kind(kind)
        });
        let discrete = adapter.get_info().device_type == wgpu::DeviceType::DiscreteGpu;
        let matmul_tiles = TilePolicy::from_env(discrete).unwrap_or_else(|e| {
            eprintln!("gradscope: {e}; using the device's own ({})", TilePolicy::for_device(discrete));
            TilePolicy::for_device(discrete)
        });
        let registry = Arc::new(Registry::new(&device));
        let errors: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let lost: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let e = errors.clone();
        device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| {
            e.lock().unwrap().push(err.to_string());
        }));
        let l = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            l.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("gradscope: the GPU device was lost ({reason:?}): {msg}");
        });
        let ledger = Ledger::default();
        let usage = super::readback::STORAGE;
        let unused = Arc::new((
            GpuBuffer::new(&device, &ledger, "unused read-only binding", Category::Scratch, UNUSED_SLOT, usage),
            GpuBuffer::new(&device, &ledger, "unused writable bindings", Category::Scratch, UNUSED_BINDING_BYTES - UNUSED_SLOT, usage),
        ));
        Self {
            device, queue, summary: Arc::new(summary), kind, ledger, kernels, matmul_tiles, registry, errors, lost, submitted: Arc::default(),
            unused, tracer: Arc::default(), traced: Arc::default(), binding_cap: Arc::default(),
        }
    }

    /// The kernel family this device runs (see `gpu::kernel_set`).
    pub fn kernels(&self) -> KernelSet {
        self.kernels
    }

    /// The same device with another kernel family (tests run both families on one adapter).
    pub fn with_kernels(mut self, kernels: KernelSet) -> Self {
        self.kernels = kernels;
        self
    }

    /// The kernel family in words, with the matmul tiles where the family has them (the `train`
    /// header, `info`): `cpu kernels`, `gpu kernels, matmul tiles 64x64`.
    pub fn kernels_label(&self) -> String {
        match self.kernels {
            KernelSet::Cpu => format!("{} kernels", self.kernels),
            KernelSet::Gpu => format!("{} kernels, matmul tiles {}", self.kernels, self.matmul_tiles),
        }
    }

    /// How the GPU family's matmuls pick their block tile on this device (see `kernels_gpu`).
    pub fn matmul_tiles(&self) -> TilePolicy {
        self.matmul_tiles
    }

    /// The same device with another tile policy (tests and `bench` run every tile on one adapter).
    pub fn with_matmul_tiles(mut self, tiles: TilePolicy) -> Self {
        self.matmul_tiles = tiles;
        self
    }

    /// Submit recorded work (the one place that does; readbacks submit their copies themselves).
    pub(crate) fn submit_work(&self, commands: wgpu::CommandBuffer) {
        self.submitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.queue.submit([commands]);
    }

    /// Work submissions (dispatches, clears, copies) on this device so far, readbacks excluded.
    pub fn work_submissions(&self) -> u64 {
        self.submitted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Device errors since the last call (validation, out of memory).
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap())
    }

    /// Whether the device is lost (driver reset, removal, or `lose_device`).
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Destroy the device (fault injection for tests of device loss).
    pub fn lose_device(&self) {
        self.device.destroy();
        self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Run `f` inside validation and out-of-memory error scopes; an error becomes `Err` naming
    /// `what` (the kernel or buffer involved) instead of a panic.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, GpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        match (v, o) {
            (None, None) => Ok(out),
            (Some(e), _) | (None, Some(e)) => Err(GpuError::Device { what: what.to_string(), message: e.to_string() }),
        }
    }

    /// The device eframe created for the app (one device for the UI and the trainer).
    pub fn from_render_state(rs: &eframe::egui_wgpu::RenderState) -> Self {
        let gpu = Self::from_device(&rs.adapter, rs.device.clone(), rs.queue.clone());
        if let Err(e) = gpu.cap_from_env() {
            eprintln!("gradscope: {MAX_BINDING_ENV} ignored: {e}");
        }
        gpu
    }

    /// The buffer and byte offset that stand in for an unused storage binding at position `slot`
    /// of an entry point's bindings.
    pub(crate) fn unused_binding(&self, read_only: bool, slot: usize) -> (GpuBuffer, u64) {
        if read_only {
            (self.unused.0.clone(), 0)
        } else {
            assert!(slot < 8, "at most 8 storage bindings per entry point");
            (self.unused.1.clone(), slot as u64 * UNUSED_SLOT)
        }
    }

    /// The cap on binding and slab-buffer sizes, if any (`MAX_BINDING_ENV` or `set_binding_cap`).
    pub fn binding_cap(&self) -> Option<u64> {
        match self.binding_cap.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            c => Some(c),
        }
    }

    /// Cap the bytes of one storage binding and of a slab's buffers (testing: multi-buffer
    /// layouts with small models). Applies to what is laid out and recorded afterwards.
    pub fn set_binding_cap(&self, cap: Option<u64>) {
        let c = cap.map_or(0, |c| c.max(super::TENSOR_ALIGN as u64));
        self.binding_cap.store(c, std::sync::atomic::Ordering::SeqCst);
    }

    /// Apply `MAX_BINDING_ENV` when it is set.
    fn cap_from_env(&self) -> Result<(), String> {
        match std::env::var(MAX_BINDING_ENV) {
            Ok(v) => {
                self.set_binding_cap(Some(super::parse_bytes(&v)?));
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// The largest storage binding gradscope uses: the device's limit, or the cap below it.
    pub fn binding_limit(&self) -> u64 {
        let max = self.limits().max_storage_buffer_binding_size;
        self.binding_cap().map_or(max, |c| c.min(max))
    }

    /// The limits the device was created with.
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    pub fn has_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// Subgroup operations (the GPU family's row reductions use them where present).
    pub fn has_subgroups(&self) -> bool {
        self.device.features().contains(wgpu::Features::SUBGROUP)
    }

    pub fn has_timestamps(&self) -> bool {
        self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }
}

/// The wgpu setup for eframe: the same adapter preference and device description as the
/// headless runtime, so the app's one device serves both the UI and the trainer.
pub fn eframe_setup(adapter: Option<String>) -> eframe::egui_wgpu::WgpuSetup {
    let mut setup = eframe::egui_wgpu::WgpuSetupCreateNew::without_display_handle();
    setup.device_descriptor = Arc::new(device_descriptor);
    setup.native_adapter_selector = Some(Arc::new(move |adapters: &[wgpu::Adapter], _surface: Option<&wgpu::Surface<'_>>| {
        pick(adapters, adapter.as_deref()).map_err(|e| e.to_string())
    }));
    eframe::egui_wgpu::WgpuSetup::CreateNew(setup)
}
