//! Dispatch helpers: a `Program` is a list of kernel dispatches recorded once (pipelines, bind
//! groups and uniform values made at build time) and replayed into a compute pass each step.
//! Each step then only records dispatches and submits, as in wgpu's `repeated_compute`; values that
//! change (the AdamW step count, the learning rate) are rewritten with `set_dims`.
//!
//! All uniforms of a program live in one arena buffer, one 256-byte slot per dispatch, bound with
//! a dynamic offset.

use std::collections::HashMap;
use std::sync::Arc;

use super::context::Gpu;
use super::ledger::{Category, GpuBuffer};
use super::registry::{Kernel, ShaderError};

/// Bytes per uniform slot: the largest `min_uniform_buffer_offset_alignment` wgpu allows.
const SLOT: u32 = 256;

/// Tensors in a slab start at multiples of this many bytes: WebGPU's largest (and default)
/// `min_storage_buffer_offset_alignment`, so every device can bind each tensor as its own range.
pub const TENSOR_ALIGN: usize = 256;

/// A uniform parameter struct, written field by field in the order of the WGSL struct.
/// Every field is a 4-byte scalar (u32 or f32), so the layout is the field order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Uniforms(pub Vec<u32>);

impl Uniforms {
    pub fn new() -> Self {
        Self(Vec::with_capacity(16))
    }
    pub fn u(mut self, v: u32) -> Self {
        self.0.push(v);
        self
    }
    /// A usize field; panics on values past u32 (sizes are validated before kernels are built).
    pub fn n(self, v: usize) -> Self {
        self.u(u32::try_from(v).expect("kernel dimension exceeds u32"))
    }
    pub fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits());
        self
    }
    fn bytes(&self, size: u32) -> Vec<u8> {
        let mut b: Vec<u8> = bytemuck::cast_slice(&self.0).to_vec();
        b.resize(size as usize, 0);
        b
    }
}

/// A view into a buffer: the buffer and an offset in 4-byte elements.
#[derive(Clone)]
pub struct View {
    pub buf: GpuBuffer,
    pub offset: usize,
}

impl View {
    pub fn of(buf: &GpuBuffer) -> Self {
        Self { buf: buf.clone(), offset: 0 }
    }
    pub fn at(buf: &GpuBuffer, offset: usize) -> Self {
        Self { buf: buf.clone(), offset }
    }
    /// The same buffer, `delta` elements further.
    pub fn add(&self, delta: usize) -> Self {
        Self { buf: self.buf.clone(), offset: self.offset + delta }
    }
    pub fn off(&self) -> u32 {
        u32::try_from(self.offset).expect("offset exceeds u32")
    }
}

/// Split a 1-D workgroup count over x and y so no dimension passes the device limit.
pub fn grid_1d(workgroups: u32, max_per_dim: u32) -> [u32; 3] {
    let workgroups = workgroups.max(1);
    if workgroups <= max_per_dim {
        [workgroups, 1, 1]
    } else {
        let y = workgroups.div_ceil(max_per_dim);
        [workgroups.div_ceil(y), y, 1]
    }
}

/// How many invocations a dispatch launches.
#[derive(Clone, Copy, Debug)]
pub enum Grid {
    /// One invocation per item of a 1-D range (workgroups of the entry point's size, split over x and y).
    Threads(usize),
    /// Explicit workgroup counts.
    Groups([u32; 3]),
}

/// One storage binding of a dispatch: a byte range of a buffer (WebGPU binds ranges; the
/// offset is a multiple of the device's `min_storage_buffer_offset_alignment`).
#[derive(Clone)]
pub struct Bound {
    /// The WGSL binding number.
    pub binding: u32,
    /// The WGSL variable's name (for error messages).
    pub name: String,
    pub buf: GpuBuffer,
    pub offset: u64,
    pub size: u64,
    /// Declared `var<storage, read>`: the kernel never writes it.
    pub read_only: bool,
}

impl Bound {
    fn end(&self) -> u64 {
        self.offset + self.size
    }
    fn describe(&self) -> String {
        format!("binding {} `{}` ({} bytes {}..{} of {:?})", self.binding, self.name, self.size, self.offset, self.end(), self.buf.label())
    }
}

/// WebGPU's rules for the storage bindings of one dispatch (a usage scope), which wgpu's native
/// backends do not all enforce but browsers do: no writable binding may overlap another binding
/// of the same buffer, and a buffer bound read-only may not also be bound writable.
pub fn check_bindings(kernel: &str, bindings: &[Bound]) -> Result<(), ProgramError> {
    for (i, a) in bindings.iter().enumerate() {
        for b in &bindings[i + 1..] {
            if a.buf.id() != b.buf.id() {
                continue;
            }
            let overlap = a.offset < b.end() && b.offset < a.end();
            let message = if a.read_only != b.read_only {
                "a buffer bound read-only may not also be bound writable in one dispatch"
            } else if !a.read_only && overlap {
                "writable bindings overlap"
            } else {
                continue;
            };
            return Err(ProgramError::Aliasing {
                kernel: kernel.into(),
                message: format!("{message}: {} and {}", a.describe(), b.describe()),
            });
        }
    }
    Ok(())
}

struct Pending {
    kernel: Arc<Kernel>,
    bindings: Vec<Bound>,
    uniforms: Uniforms,
    workgroups: [u32; 3],
}

/// The element type of activations and activation gradients. Parameters, parameter gradients
/// and optimizer state are always f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// f16 activations (mixed precision; needs SHADER_F16).
    F16,
}

impl Precision {
    /// Bytes per activation element.
    pub fn act_bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => Err(format!("unknown precision {other:?} (f32 or f16)")),
        }
    }
}

/// Collects dispatches; `finish` makes the uniform arena and the bind groups.
pub struct ProgramBuilder {
    gpu: Gpu,
    pending: Vec<Pending>,
    /// Activation element type: with F16, `call` uses the f16 instantiation of every shader
    /// file that declares `alias act = f32;`.
    precision: Precision,
    /// The partials buffer of the GPU family's two-stage column sums and its f32 elements
    /// (`set_column_partials`); None: single-stage column sums.
    column_partials: Option<(View, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Shader(#[from] ShaderError),
    #[error(transparent)]
    Device(#[from] super::context::GpuError),
    #[error("{kernel}: {message}")]
    Shape { kernel: String, message: String },
    /// A dispatch WebGPU would reject: overlapping writable ranges, or one buffer bound both
    /// read-only and writable.
    #[error("{kernel}: {message}")]
    Aliasing { kernel: String, message: String },
}

impl ProgramBuilder {
    pub fn new(gpu: &Gpu) -> Self {
        Self { gpu: gpu.clone(), pending: Vec::new(), precision: Precision::F32, column_partials: None }
    }

    /// A builder whose activation tensors are of `precision` (f16 needs the device's SHADER_F16).
    pub fn with_precision(gpu: &Gpu, precision: Precision) -> Result<Self, ProgramError> {
        if precision == Precision::F16 && !gpu.has_f16() {
            return Err(ProgramError::Shape {
                kernel: "f16 activations".into(),
                message: format!("the adapter {} has no SHADER_F16 feature", gpu.summary.name),
            });
        }
        Ok(Self { gpu: gpu.clone(), pending: Vec::new(), precision, column_partials: None })
    }

    /// Give the GPU family's column sums (bias and LayerNorm-parameter gradients) a partials
    /// buffer of `len` f32 elements at `view`, so they run in two stages over the whole grid
    /// (`gpu::kernels_rows::column_partials_len` sizes it). Every column sum the builder records
    /// afterwards reuses it; one that needs more is refused with an error.
    pub fn set_column_partials(&mut self, view: View, len: usize) {
        self.column_partials = Some((view, len));
    }

    /// The partials buffer of the two-stage column sums, if one was given.
    pub fn column_partials(&self) -> Option<&(View, usize)> {
        self.column_partials.as_ref()
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Add one dispatch of `kernel` with its storage bindings and `uniforms` at binding 0, after
    /// WebGPU's binding rules (`check_bindings`). Returns its index (for `Program::set_dims`).
    fn dispatch(&mut self, kernel: Arc<Kernel>, bindings: Vec<Bound>, uniforms: Uniforms, workgroups: [u32; 3]) -> Result<usize, ProgramError> {
        let entry = kernel.entry.as_str();
        if uniforms.0.len() * 4 > SLOT as usize {
            return Err(ProgramError::Shape { kernel: entry.into(), message: "uniform too large".into() });
        }
        let max = self.gpu.limits().max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            return Err(ProgramError::Shape {
                kernel: entry.into(),
                message: format!("{workgroups:?} workgroups exceed the device limit {max} per dimension"),
            });
        }
        check_bindings(entry, &bindings)?;
        self.pending.push(Pending { kernel, bindings, uniforms, workgroups });
        Ok(self.pending.len() - 1)
    }

    /// Dispatch `file`'s `entry` with the tensor arguments of the CPU reference function, in its
    /// order, each with the number of elements the kernel touches (0: the entry point does not
    /// use it; a small unused-binding buffer stands in). Each storage binding `b` the entry point
    /// uses receives `args[b - base]` (forward functions have base 1, backward functions base 9;
    /// see the shaders' header comments), bound as its own range: from the argument's offset
    /// rounded down to the device's storage offset alignment to the end of its extent. The
    /// uniform gets each argument's element offset inside its bound range (o0..o7; arguments the
    /// entry point does not bind keep their offset in the buffer) followed by `dims`.
    pub fn call(
        &mut self,
        file: &str,
        entry: &str,
        base: u32,
        args: &[(&View, usize)],
        dims: Uniforms,
        grid: Grid,
    ) -> Result<usize, ProgramError> {
        assert!(args.len() <= 8, "at most 8 tensor arguments");
        let f16_name;
        let file = if self.precision == Precision::F16 && super::registry::is_act_typed(file) {
            f16_name = format!("{file}{}", super::registry::F16_SUFFIX);
            f16_name.as_str()
        } else {
            file
        };
        let kernel = self.gpu.registry.kernel(file, entry)?;
        let align = u64::from(self.gpu.limits().min_storage_buffer_offset_alignment);
        let mut offsets: Vec<u32> = (0..8).map(|i| args.get(i).map_or(0, |(v, _)| v.off())).collect();
        let mut bindings = Vec::with_capacity(kernel.bindings.len());
        for (slot, info) in kernel.bindings.iter().enumerate() {
            let i = info.binding.checked_sub(base).map(|i| i as usize).filter(|&i| i < args.len());
            let Some(i) = i else {
                return Err(ProgramError::Shape {
                    kernel: entry.into(),
                    message: format!("binding {} has no argument (base {base}, {} args)", info.binding, args.len()),
                });
            };
            let (view, extent) = args[i];
            if extent == 0 {
                let (buf, offset) = self.gpu.unused_binding(info.read_only, slot);
                let size = super::context::UNUSED_SLOT;
                bindings.push(Bound { binding: info.binding, name: info.name.clone(), buf, offset, size, read_only: info.read_only });
                offsets[i] = 0;
                continue;
            }
            let w = u64::from(info.scalar_bytes);
            let start = view.offset as u64 * w;
            let end = (view.offset + extent) as u64 * w;
            if end > view.buf.size() {
                return Err(ProgramError::Shape {
                    kernel: entry.into(),
                    message: format!(
                        "binding {} `{}`: {extent} elements at {} pass the end of {:?} ({} bytes)",
                        info.binding, info.name, view.offset, view.buf.label(), view.buf.size()
                    ),
                });
            }
            let offset = start / align * align;
            let size = (end - offset).next_multiple_of(4).min(view.buf.size() - offset);
            let max_binding = self.gpu.binding_limit();
            if size > max_binding {
                return Err(ProgramError::Shape {
                    kernel: entry.into(),
                    message: format!(
                        "binding {} `{}` of {:?} needs {} in one binding; the device allows {}",
                        info.binding, info.name, view.buf.label(), super::human_bytes(size),
                        super::human_bytes(max_binding)
                    ),
                });
            }
            offsets[i] = u32::try_from((start - offset) / w).expect("offset within a binding");
            bindings.push(Bound { binding: info.binding, name: info.name.clone(), buf: view.buf.clone(), offset, size, read_only: info.read_only });
        }
        let mut u = Uniforms(offsets);
        u.0.extend_from_slice(&dims.0);
        let workgroups = match grid {
            Grid::Threads(n) => {
                let wg = u32::try_from(n.div_ceil(kernel.workgroup as usize)).expect("dispatch too large");
                grid_1d(wg, self.gpu.limits().max_compute_workgroups_per_dimension)
            }
            Grid::Groups(g) => g,
        };
        self.dispatch(kernel, bindings, u, workgroups)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Make the uniform arena and one bind group per distinct (layout, bound ranges).
    pub fn finish(self, label: &str) -> Program {
        let device = &self.gpu.device;
        let uniforms = GpuBuffer::new(
            device,
            &self.gpu.ledger,
            label,
            Category::Scratch,
            (self.pending.len().max(1) as u64) * SLOT as u64,
            // COPY_SRC: a recorded submission (`gpu::trace`) reads the arena back
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        );
        let mut arena = vec![0u8; self.pending.len() * SLOT as usize];
        // (kernel, [(buffer, offset, size)]) -> its bind group
        type Key = (usize, Vec<(usize, u64, u64)>);
        let mut cache: HashMap<Key, wgpu::BindGroup> = HashMap::new();
        let mut dispatches = Vec::with_capacity(self.pending.len());
        for (i, p) in self.pending.into_iter().enumerate() {
            let k = &p.kernel;
            let usize_ = k.uniform_size;
            let offset = i as u32 * SLOT;
            arena[offset as usize..(offset + usize_) as usize].copy_from_slice(&p.uniforms.bytes(usize_));
            let key = (Arc::as_ptr(k) as usize, p.bindings.iter().map(|b| (b.buf.id(), b.offset, b.size)).collect());
            let bind_group = cache
                .entry(key)
                .or_insert_with(|| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: uniforms.buffer(),
                            offset: 0,
                            size: wgpu::BufferSize::new(usize_ as u64),
                        }),
                    }];
                    for b in &p.bindings {
                        entries.push(wgpu::BindGroupEntry {
                            binding: b.binding,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: b.buf.buffer(),
                                offset: b.offset,
                                size: wgpu::BufferSize::new(b.size),
                            }),
                        });
                    }
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(&k.entry),
                        layout: &k.bind_group_layout,
                        entries: &entries,
                    })
                })
                .clone();
            dispatches.push(Dispatch { kernel: p.kernel, bind_group, offset, workgroups: p.workgroups, bindings: p.bindings });
        }
        self.gpu.queue.write_buffer(uniforms.buffer(), 0, &arena);
        Program { gpu: self.gpu, dispatches, uniforms }
    }
}

struct Dispatch {
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    offset: u32,
    workgroups: [u32; 3],
    /// The bound ranges; keeps the buffers (and their ledger entries) alive as long as the program.
    bindings: Vec<Bound>,
}

/// A recorded list of dispatches, replayable any number of times.
pub struct Program {
    gpu: Gpu,
    dispatches: Vec<Dispatch>,
    uniforms: GpuBuffer,
}

impl Program {
    /// Record every dispatch into an open compute pass.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            pass.set_pipeline(&d.kernel.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[d.offset]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Record into a new compute pass of `encoder`.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("gradscope program"),
            timestamp_writes: None,
        });
        self.encode(&mut pass);
    }

    /// Report every dispatch to the device's armed trace (`gpu::trace`).
    pub(crate) fn trace(&self, gpu: &Gpu) {
        for d in &self.dispatches {
            gpu.record(super::trace::Command::Dispatch {
                kernel: d.kernel.clone(),
                uniforms: self.uniforms.clone(),
                uniform_offset: d.offset,
                bindings: d.bindings.clone(),
                workgroups: d.workgroups,
            });
        }
    }

    /// Record and submit (no wait).
    pub fn run(&self) {
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        self.record(&mut encoder);
        self.gpu.submit_work(encoder.finish());
    }

    /// Rewrite the leading dimensions and scalars of dispatch `index`: its uniform after the
    /// eight recorded offsets, as many words as `dims` has (later fields keep their recorded
    /// values; takes effect at the next submit).
    pub fn set_dims(&self, index: usize, dims: &Uniforms) {
        let d = &self.dispatches[index];
        assert!(32 + 4 * dims.0.len() as u32 <= d.kernel.uniform_size, "{}: dims past the uniform", d.kernel.entry);
        self.gpu.queue.write_buffer(self.uniforms.buffer(), d.offset as u64 + 32, bytemuck::cast_slice(&dims.0));
    }

    pub fn len(&self) -> usize {
        self.dispatches.len()
    }
    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }

    /// Time every dispatch with timestamp queries (one compute pass per dispatch, so the
    /// timestamps bracket exactly one kernel). Returns (entry point, seconds) in dispatch order,
    /// or None when the device has no timestamp queries. Waits for the device: for profiling,
    /// never inside the training loop.
    pub fn profile(&self) -> Option<Vec<(String, f64)>> {
        if !self.gpu.has_timestamps() || self.dispatches.is_empty() {
            return None;
        }
        let n = self.dispatches.len() as u32;
        let device = &self.gpu.device;
        let qs = device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("profile"), ty: wgpu::QueryType::Timestamp, count: 2 * n });
        let bytes = 2 * n as u64 * 8;
        let resolve = GpuBuffer::new(device, &self.gpu.ledger, "profile resolve", Category::Scratch, bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let mut encoder = device.create_command_encoder(&Default::default());
        for (i, d) in self.dispatches.iter().enumerate() {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&d.kernel.entry),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &qs,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            pass.set_pipeline(&d.kernel.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[d.offset]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
        encoder.resolve_query_set(&qs, 0..2 * n, resolve.buffer(), 0);
        self.gpu.submit_work(encoder.finish());
        let words: Vec<u32> = self.gpu.read(&resolve, 0, 4 * n as usize).ok()?;
        let ticks: Vec<u64> = words.chunks_exact(2).map(|w| w[0] as u64 | (w[1] as u64) << 32).collect();
        let period = self.gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Some(
            self.dispatches
                .iter()
                .enumerate()
                .map(|(i, d)| (d.kernel.entry.clone(), ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period))
                .collect(),
        )
    }

    /// Entry-point names in dispatch order (for profiles and error reports).
    pub fn labels(&self) -> Vec<&str> {
        self.dispatches.iter().map(|d| d.kernel.entry.as_str()).collect()
    }
}
