//! The kernel registry: WGSL from `shaders/`, compiled once into cached compute pipelines.
//!
//! Binding convention (every shader file follows it, `tests/shaders.rs` checks it with naga):
//! - `@group(0) @binding(0)` is a `var<uniform>` parameter struct, bound with a dynamic offset so
//!   that one uniform arena serves every dispatch of a program;
//! - `@binding(1..)` are `var<storage, read_write>` tensors, one per tensor argument. Inputs are
//!   read_write too: wgpu forbids one buffer as read-only and writable storage in the same
//!   dispatch, and the model binds whole slabs (parameters, activations, ...) several times with
//!   element offsets in the uniform.
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
    ("layernorm", include_str!("../../shaders/layernorm.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("matmul_cpu", include_str!("../../shaders/matmul_cpu.wgsl")),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    ("attention_cpu", include_str!("../../shaders/attention_cpu.wgsl")),
    ("gelu", include_str!("../../shaders/gelu.wgsl")),
    ("residual", include_str!("../../shaders/residual.wgsl")),
    ("crossentropy", include_str!("../../shaders/crossentropy.wgsl")),
    ("accumulate", include_str!("../../shaders/accumulate.wgsl")),
    ("grad_norm", include_str!("../../shaders/grad_norm.wgsl")),
    ("adamw", include_str!("../../shaders/adamw.wgsl")),
    ("conv2d", include_str!("../../shaders/conv2d.wgsl")),
    ("groupnorm", include_str!("../../shaders/groupnorm.wgsl")),
    ("batchnorm", include_str!("../../shaders/batchnorm.wgsl")),
    ("relu", include_str!("../../shaders/relu.wgsl")),
    ("maxpool", include_str!("../../shaders/maxpool.wgsl")),
];

/// The source of one shader file by name.
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

/// Every shader file, and the f16 instantiation (`<file>_f16`) of each act-typed one. Built once
/// per process.
fn all_sources() -> &'static [(&'static str, &'static str)] {
    static ALL: std::sync::OnceLock<Vec<(&'static str, &'static str)>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut v: Vec<(&'static str, &'static str)> = SHADERS.to_vec();
        for (name, source) in SHADERS {
            if let Some(f16) = act_f16_source(source) {
                let name: &'static str = Box::leak(format!("{name}{F16_SUFFIX}").into_boxed_str());
                v.push((name, Box::leak(f16.into_boxed_str())));
            }
        }
        v
    })
}

/// What naga tells about one shader file's bindings.
#[derive(Clone, Debug)]
pub struct Reflection {
    /// Size in bytes of the uniform parameter struct at binding 0.
    pub uniform_size: u32,
    /// Compute entry points and the storage bindings each one uses, in binding order.
    pub entry_points: Vec<(String, Vec<u32>)>,
    /// Invocations per workgroup of each entry point (x * y * z of its @workgroup_size).
    pub workgroup_sizes: Vec<(String, u32)>,
}

impl Reflection {
    pub fn bindings(&self, entry: &str) -> Option<&[u32]> {
        self.entry_points.iter().find(|(e, _)| e == entry).map(|(_, b)| b.as_slice())
    }

    pub fn workgroup_size(&self, entry: &str) -> Option<u32> {
        self.workgroup_sizes.iter().find(|(e, _)| e == entry).map(|&(_, n)| n)
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
                if !access.contains(naga::StorageAccess::STORE) {
                    return Err(conv(format!(
                        "binding {} is read-only; declare every storage binding read_write",
                        binding.binding
                    )));
                }
                if binding.binding == 0 {
                    return Err(conv("binding 0 is reserved for the uniform".into()));
                }
                storage.push((handle, binding.binding));
            }
            other => return Err(conv(format!("unexpected address space {other:?}"))),
        }
    }
    let uniform_size = uniform_size.ok_or_else(|| conv("no uniform at binding 0".into()))?;
    let mut entry_points = Vec::new();
    let mut workgroup_sizes = Vec::new();
    for (i, ep) in module.entry_points.iter().enumerate() {
        workgroup_sizes.push((ep.name.clone(), ep.workgroup_size.iter().product::<u32>()));
        let uses = info.get_entry_point(i);
        let mut used: Vec<u32> =
            storage.iter().filter(|(h, _)| !uses[*h].is_empty()).map(|(_, b)| *b).collect();
        used.sort_unstable();
        if used.windows(2).any(|w| w[0] == w[1]) {
            return Err(conv(format!("{}: two storage variables share a binding", ep.name)));
        }
        if used.len() > 8 {
            return Err(conv(format!(
                "{} uses {} storage bindings; WebGPU guarantees 8 per stage",
                ep.name,
                used.len()
            )));
        }
        entry_points.push((ep.name.clone(), used));
    }
    Ok(Reflection { uniform_size, entry_points, workgroup_sizes })
}

/// A compiled kernel: its pipeline and the layout its bind groups are made for.
pub struct Kernel {
    pub file: &'static str,
    pub entry: String,
    /// Storage bindings, in the order launchers pass buffers.
    pub bindings: Vec<u32>,
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
        let bindings = f
            .reflection
            .bindings(entry)
            .ok_or_else(|| ShaderError::Missing(format!("{file}.wgsl entry point {entry}")))?
            .to_vec();
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
        for &b in &bindings {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: b,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: false },
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
            workgroup: f.reflection.workgroup_size(entry).unwrap_or(1).max(1),
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
