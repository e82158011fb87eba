//! The kernel registry: WGSL from `shaders/`, compiled once into cached compute pipelines.
//!
//! Binding convention (every shader file follows it, `tests/shaders.rs` checks it with naga):
//! - `@group(0) @binding(0)` is a `var<uniform>` parameter struct, bound with a dynamic offset so
//!   that one uniform arena serves every dispatch of a program;
//! - `@binding(1..)` are `var<storage>` tensors, one per tensor argument, each bound as its own
//!   range of a buffer (`ProgramBuilder::call`). A binding is declared `read` when the kernel
//!   only reads it and no dispatch binds its buffer writable elsewhere: WebGPU forbids one buffer
//!   as read-only and writable storage in the same dispatch, so inputs that live in the slab the
//!   kernel writes (a forward kernel's activations) stay `read_write`, while parameters read by
//!   forward and backward kernels, activations read by backward kernels, and tokens are `read`.
//! - Each entry point uses at most 8 storage bindings (the WebGPU minimum every adapter has).
//!
//! The bind-group layout of each entry point is derived from the shader itself (naga reflection
//! of the bindings the entry point uses), so the Rust side never restates it: launchers pass the
//! buffers in binding order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The WGSL sources, embedded in the binary so the trainer runs from any directory.
pub const SHADERS: &[(&str, &str)] = &[
    ("encoder", include_str!("../../shaders/encoder.wgsl")),
    ("embedding_gpu", include_str!("../../shaders/embedding_gpu.wgsl")),
    ("layernorm", include_str!("../../shaders/layernorm.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("matmul_cpu", include_str!("../../shaders/matmul_cpu.wgsl")),
    // the GPU family's matmul at its two block tiles: TM rows per invocation in front of the file
    // (`gpu::kernels_gpu::MatmulTile`)
    ("matmul_gpu", concat!("const TM: u32 = 4u;\n", include_str!("../../shaders/matmul_gpu.wgsl"))),
    ("matmul_gpu_128x64", concat!("const TM: u32 = 8u;\n", include_str!("../../shaders/matmul_gpu.wgsl"))),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    ("attention_cpu", include_str!("../../shaders/attention_cpu.wgsl")),
    ("flash_attention", include_str!("../../shaders/flash_attention.wgsl")),
    // the row kernels with their row reduction appended: a workgroup tree, or subgroup sums
    // (compiled only on devices with SUBGROUP: `ProgramBuilder::rows_file`)
    ("rows", concat!(include_str!("../../shaders/rows.wgsl"), include_str!("../../shaders/reduce/workgroup.wgsl"), include_str!("../../shaders/reduce/tree.wgsl"))),
    ("rows_subgroup", concat!(include_str!("../../shaders/rows.wgsl"), include_str!("../../shaders/reduce/workgroup.wgsl"), include_str!("../../shaders/reduce/subgroup.wgsl"))),
    ("gelu", include_str!("../../shaders/gelu.wgsl")),
    ("residual", include_str!("../../shaders/residual.wgsl")),
    ("crossentropy", include_str!("../../shaders/crossentropy.wgsl")),
    ("accumulate", include_str!("../../shaders/accumulate.wgsl")),
    ("grad_norm", include_str!("../../shaders/grad_norm.wgsl")),
    ("grad_stats", include_str!("../../shaders/grad_stats.wgsl")),
    ("adamw", include_str!("../../shaders/adamw.wgsl")),
    ("conv2d", include_str!("../../shaders/conv2d.wgsl")),
    // like rows: the GPU family's one-workgroup-per-set kernels need a row reduction appended
    ("groupnorm", concat!(include_str!("../../shaders/groupnorm.wgsl"), include_str!("../../shaders/reduce/workgroup.wgsl"), include_str!("../../shaders/reduce/tree.wgsl"))),
    ("groupnorm_subgroup", concat!(include_str!("../../shaders/groupnorm.wgsl"), include_str!("../../shaders/reduce/workgroup.wgsl"), include_str!("../../shaders/reduce/subgroup.wgsl"))),
    ("batchnorm", include_str!("../../shaders/batchnorm.wgsl")),
    ("relu", include_str!("../../shaders/relu.wgsl")),
    ("maxpool", include_str!("../../shaders/maxpool.wgsl")),
];

/// The helpers every shader file shares (`flat`, GELU and its derivative, `dot4`, dropout's
/// counter-based random numbers), put in front of each file when it is compiled
/// (`with_prelude`). Not a shader file of its own: no bindings, no entry points. Every file
/// declares `const WG`, the workgroup size its 1-D kernels and `flat` use.
pub const PRELUDE: &str = include_str!("../../shaders/prelude.wgsl");

/// A shader source as it is compiled: its leading `enable` lines, then `PRELUDE`, then the rest.
pub fn with_prelude(source: &str) -> String {
    let mut head = 0;
    for line in source.split_inclusive('\n') {
        if !line.trim_start().starts_with("enable ") {
            break;
        }
        head += line.len();
    }
    format!("{}{PRELUDE}\n{}", &source[..head], &source[head..])
}

/// The source of one shader file by name (as written, without the prelude).
pub fn shader_source(file: &str) -> Option<&'static str> {
    SHADERS.iter().find(|(n, _)| *n == file).map(|(_, s)| *s)
}

/// The line by which a shader file declares its activation element type. Files that have it are
/// compiled twice: as written (f32 activations) and, for mixed precision, with the line replaced
/// by `alias act = f16;` and `enable f16;` in front (see `act_f16_source`).
pub const ACT_ALIAS_F32: &str = "alias act = f32;";

/// Suffix of the f16-activation instantiation of a file (`matmul_cpu` -> `matmul_cpu_f16`).
pub const F16_SUFFIX: &str = "_f16";

/// The f16-activation instantiation of a shader source, or None when the file does not declare
/// `alias act = f32;` (its bindings never hold activations).
pub fn act_f16_source(source: &str) -> Option<String> {
    source.contains(ACT_ALIAS_F32).then(|| format!("enable f16;\n{}", source.replace(ACT_ALIAS_F32, "alias act = f16;")))
}

/// Whether a shader file declares `alias act = f32;` (its activation bindings follow the
/// builder's precision).
pub fn is_act_typed(file: &str) -> bool {
    shader_source(file).is_some_and(|s| s.contains(ACT_ALIAS_F32))
}

/// The WGSL of `file` (a shader file or its `_f16` instantiation) as Tint, Chrome's compiler,
/// accepts it. The sources are written for naga; where the two compilers differ the variant is
/// derived here from the one source: Tint requires `enable subgroups;` before subgroup builtins,
/// which naga 30 rejects (`rows_subgroup` and `groupnorm_subgroup`, the GPU family's subgroup row
/// reductions, are the shaders that use them).
pub fn tint_source(file: &str) -> String {
    let source = all_sources().iter().find(|(n, _)| *n == file).map_or("", |(_, s)| *s);
    for_tint(source)
}

/// A naga-accepted WGSL source in the form Tint accepts (see `tint_source`).
pub fn for_tint(source: &str) -> String {
    const SUBGROUP_BUILTINS: &[&str] = &["subgroupAdd", "subgroupMax", "subgroupMin", "subgroupBroadcast", "subgroupShuffle",
        "subgroup_size", "subgroup_invocation_id", "subgroupBallot", "subgroupExclusiveAdd", "subgroupInclusiveAdd"];
    if SUBGROUP_BUILTINS.iter().any(|b| source.contains(b)) && !source.contains("enable subgroups;") {
        format!("enable subgroups;\n{source}")
    } else {
        source.to_string()
    }
}

/// Every shader file, and the f16 instantiation (`<file>_f16`) of each act-typed one, as compiled
/// (`with_prelude`). Built once per process.
pub fn all_sources() -> &'static [(&'static str, &'static str)] {
    static ALL: std::sync::OnceLock<Vec<(&'static str, &'static str)>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let mut v: Vec<(&'static str, &'static str)> = SHADERS.iter().map(|(n, s)| (*n, leak(with_prelude(s)))).collect();
        for (name, source) in SHADERS {
            if let Some(f16) = act_f16_source(source) {
                v.push((leak(format!("{name}{F16_SUFFIX}")), leak(with_prelude(&f16))));
            }
        }
        v
    })
}

/// One storage binding of an entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingInfo {
    pub binding: u32,
    /// The WGSL variable's name.
    pub name: String,
    /// Declared `var<storage, read>`.
    pub read_only: bool,
    /// Bytes per scalar of its element type (2 for f16 and vec4<f16>, 4 otherwise): the unit of
    /// the element offsets in the uniform.
    pub scalar_bytes: u32,
    /// Floating-point elements (f32, f16), not integers (u32, atomics).
    pub float: bool,
}

/// What one compute entry point needs from the device.
#[derive(Clone, Debug)]
pub struct EntryPoint {
    pub name: String,
    /// The storage bindings it uses, in binding order.
    pub bindings: Vec<BindingInfo>,
    /// Invocations per workgroup (x * y * z of its @workgroup_size).
    pub invocations: u32,
    /// @workgroup_size per dimension.
    pub workgroup_size: [u32; 3],
    /// Bytes of workgroup memory (the `var<workgroup>` variables it uses).
    pub workgroup_bytes: u32,
}

/// What naga tells about one shader file's bindings.
#[derive(Clone, Debug)]
pub struct Reflection {
    /// Size in bytes of the uniform parameter struct at binding 0.
    pub uniform_size: u32,
    /// Compute entry points.
    pub entry_points: Vec<EntryPoint>,
}

impl Reflection {
    pub fn entry(&self, entry: &str) -> Option<&EntryPoint> {
        self.entry_points.iter().find(|e| e.name == entry)
    }

    /// The binding numbers of an entry point's storage bindings.
    pub fn bindings(&self, entry: &str) -> Option<Vec<u32>> {
        self.entry(entry).map(|e| e.bindings.iter().map(|b| b.binding).collect())
    }

    pub fn workgroup_size(&self, entry: &str) -> Option<u32> {
        self.entry(entry).map(|e| e.invocations)
    }
}

/// Check an entry point against a device's limits; the error says what the kernel needs.
pub fn check_limits(file: &str, ep: &EntryPoint, limits: &wgpu::Limits) -> Result<(), ShaderError> {
    let mut needs = Vec::new();
    let storage = ep.bindings.len() as u32;
    if storage > limits.max_storage_buffers_per_shader_stage {
        needs.push(format!("{storage} storage buffers (the device allows {})", limits.max_storage_buffers_per_shader_stage));
    }
    if ep.invocations > limits.max_compute_invocations_per_workgroup {
        needs.push(format!("{} invocations per workgroup (the device allows {})", ep.invocations, limits.max_compute_invocations_per_workgroup));
    }
    let [x, y, z] = ep.workgroup_size;
    if x > limits.max_compute_workgroup_size_x || y > limits.max_compute_workgroup_size_y || z > limits.max_compute_workgroup_size_z {
        needs.push(format!(
            "a workgroup of {x}x{y}x{z} (the device allows {}x{}x{})",
            limits.max_compute_workgroup_size_x, limits.max_compute_workgroup_size_y, limits.max_compute_workgroup_size_z
        ));
    }
    if ep.workgroup_bytes > limits.max_compute_workgroup_storage_size {
        needs.push(format!(
            "{} bytes of workgroup memory (the device allows {})",
            ep.workgroup_bytes, limits.max_compute_workgroup_storage_size
        ));
    }
    if needs.is_empty() {
        Ok(())
    } else {
        Err(ShaderError::Limits { file: file.into(), entry: ep.name.clone(), needs: needs.join(", ") })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShaderError {
    #[error("shader {file}.wgsl does not parse:\n{message}")]
    Parse { file: String, message: String },
    #[error("shader {file}.wgsl does not validate:\n{message}")]
    Validate { file: String, message: String },
    #[error("shader {file}.wgsl breaks the binding convention: {message}")]
    Convention { file: String, message: String },
    #[error("no shader file named {0}")]
    Missing(String),
    #[error("{file}.wgsl {entry} needs more than this device offers: {needs}")]
    Limits { file: String, entry: String, needs: String },
    #[error("device error {what}: {message}")]
    Device { what: String, message: String },
}

/// Run `f` in validation and out-of-memory error scopes (no panic on a device error).
fn scoped<T>(device: &wgpu::Device, what: &str, f: impl FnOnce() -> T) -> Result<T, ShaderError> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = f();
    let v = pollster::block_on(val.pop());
    let o = pollster::block_on(oom.pop());
    match v.or(o) {
        None => Ok(out),
        Some(e) => Err(ShaderError::Device { what: what.into(), message: e.to_string() }),
    }
}

/// Parse, validate and reflect a WGSL source with naga (no device needed).
pub fn reflect(file: &str, source: &str) -> Result<Reflection, ShaderError> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| ShaderError::Parse { file: file.into(), message: e.emit_to_string(source) })?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    );
    let info = validator.validate(&module).map_err(|e| ShaderError::Validate {
        file: file.into(),
        message: format!("{:?}", e.into_inner()),
    })?;
    let conv = |message: String| ShaderError::Convention { file: file.into(), message };
    let mut uniform_size = None;
    let mut storage = Vec::new();
    for (handle, gv) in module.global_variables.iter() {
        let Some(binding) = &gv.binding else { continue };
        if binding.group != 0 {
            return Err(conv(format!("binding group {} (only group 0 is used)", binding.group)));
        }
        match gv.space {
            naga::AddressSpace::Uniform => {
                if binding.binding != 0 {
                    return Err(conv("the uniform must be binding 0".into()));
                }
                uniform_size = Some(module.types[gv.ty].inner.size(module.to_ctx()));
            }
            naga::AddressSpace::Storage { access } => {
                if binding.binding == 0 {
                    return Err(conv("binding 0 is reserved for the uniform".into()));
                }
                let read_only = !access.contains(naga::StorageAccess::STORE);
                let name = gv.name.clone().unwrap_or_default();
                let scalar = scalar_of(&module, gv.ty)
                    .ok_or_else(|| conv(format!("binding {} `{name}`: not an array of scalars or vectors", binding.binding)))?;
                let (scalar_bytes, float) = (u32::from(scalar.width), scalar.kind == naga::ScalarKind::Float);
                storage.push((handle, BindingInfo { binding: binding.binding, name, read_only, scalar_bytes, float }));
            }
            other => return Err(conv(format!("unexpected address space {other:?}"))),
        }
    }
    let uniform_size = uniform_size.ok_or_else(|| conv("no uniform at binding 0".into()))?;
    let mut entry_points = Vec::new();
    for (i, ep) in module.entry_points.iter().enumerate() {
        let uses = info.get_entry_point(i);
        let mut used: Vec<BindingInfo> =
            storage.iter().filter(|(h, _)| !uses[*h].is_empty()).map(|(_, b)| b.clone()).collect();
        used.sort_unstable_by_key(|b| b.binding);
        if used.windows(2).any(|w| w[0].binding == w[1].binding) {
            return Err(conv(format!("{}: two storage variables share a binding", ep.name)));
        }
        if used.len() > 8 {
            return Err(conv(format!(
                "{} uses {} storage bindings; WebGPU guarantees 8 per stage",
                ep.name,
                used.len()
            )));
        }
        let workgroup_bytes = module
            .global_variables
            .iter()
            .filter(|(h, gv)| gv.space == naga::AddressSpace::WorkGroup && !uses[*h].is_empty())
            .map(|(_, gv)| module.types[gv.ty].inner.size(module.to_ctx()))
            .sum();
        entry_points.push(EntryPoint {
            name: ep.name.clone(),
            bindings: used,
            invocations: ep.workgroup_size.iter().product::<u32>(),
            workgroup_size: ep.workgroup_size,
            workgroup_bytes,
        });
    }
    Ok(Reflection { uniform_size, entry_points })
}

/// The scalar of a storage variable's type: array<T> (or T) with T a scalar, a vector of
/// scalars or an atomic.
fn scalar_of(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Option<naga::Scalar> {
    match &module.types[ty].inner {
        naga::TypeInner::Array { base, .. } => scalar_of(module, *base),
        naga::TypeInner::Scalar(s) | naga::TypeInner::Atomic(s) => Some(*s),
        naga::TypeInner::Vector { scalar, .. } => Some(*scalar),
        _ => None,
    }
}

/// A compiled kernel: its pipeline and the layout its bind groups are made for.
pub struct Kernel {
    pub file: &'static str,
    pub entry: String,
    /// Storage bindings, in binding order.
    pub bindings: Vec<BindingInfo>,
    pub uniform_size: u32,
    /// Invocations per workgroup (1-D dispatches launch ceil(threads / workgroup) workgroups).
    pub workgroup: u32,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group_layout: wgpu::BindGroupLayout,
}

/// A parsed shader file.
struct ShaderFile {
    name: &'static str,
    reflection: Reflection,
    module: wgpu::ShaderModule,
}

/// Pipelines built once, on first use, and cached for the life of the device.
pub struct Registry {
    device: wgpu::Device,
    files: Mutex<HashMap<&'static str, Arc<ShaderFile>>>,
    kernels: Mutex<HashMap<(&'static str, String), Arc<Kernel>>>,
}

impl Registry {
    pub fn new(device: &wgpu::Device) -> Self {
        Self { device: device.clone(), files: Mutex::default(), kernels: Mutex::default() }
    }

    fn file(&self, file: &str) -> Result<Arc<ShaderFile>, ShaderError> {
        let (name, source) = all_sources()
            .iter()
            .find(|(n, _)| *n == file)
            .ok_or_else(|| ShaderError::Missing(format!("{file}.wgsl")))?;
        let mut files = self.files.lock().unwrap();
        if let Some(f) = files.get(name) {
            return Ok(f.clone());
        }
        let reflection = reflect(name, source)?;
        let module = scoped(&self.device, &format!("compiling {name}.wgsl"), || {
            self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl((*source).into()),
            })
        })?;
        let f = Arc::new(ShaderFile { name, reflection, module });
        files.insert(name, f.clone());
        Ok(f)
    }

    /// The pipeline of `file`'s entry point `entry`, compiled on first use.
    pub fn kernel(&self, file: &str, entry: &str) -> Result<Arc<Kernel>, ShaderError> {
        let f = self.file(file)?;
        let key = (f.name, entry.to_string());
        if let Some(k) = self.kernels.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        let ep = f
            .reflection
            .entry(entry)
            .ok_or_else(|| ShaderError::Missing(format!("{file}.wgsl entry point {entry}")))?
            .clone();
        check_limits(f.name, &ep, &self.device.limits())?;
        let bindings = ep.bindings.clone();
        let uniform_size = f.reflection.uniform_size;
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: wgpu::BufferSize::new(uniform_size as u64),
            },
            count: None,
        }];
        for b in &bindings {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: b.binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: b.read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let bind_group_layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(entry),
            entries: &entries,
        });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let pipeline = scoped(&self.device, &format!("building the pipeline of {file}.wgsl {entry}"), || {
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &f.module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        })?;
        let kernel = Arc::new(Kernel {
            file: f.name,
            entry: entry.into(),
            bindings,
            uniform_size,
            workgroup: ep.invocations.max(1),
            pipeline,
            bind_group_layout,
        });
        self.kernels.lock().unwrap().insert(key, kernel.clone());
        Ok(kernel)
    }

    /// Number of pipelines built so far (tests check that training steps build none).
    pub fn pipelines_built(&self) -> usize {
        self.kernels.lock().unwrap().len()
    }
}
