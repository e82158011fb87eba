//! The only part of gradscope that knows wgpu: device selection, buffers with the byte ledger,
//! the kernel registry, dispatch helpers (programs), typed kernel launchers, and readback.

pub mod context;
pub mod kernel_set;
pub mod kernels;
pub mod kernels_attention;
pub mod kernels_embedding;
pub mod kernels_gpu;
pub mod kernels_cnn;
pub mod kernels_rows;
pub mod ledger;
pub mod program;
pub mod readback;
pub mod registry;
pub mod submit;
pub mod trace;

pub use kernel_set::{KERNELS_ENV, KernelSet};
pub use kernels_gpu::{MATMUL_TILE_ENV, MatmulTile, TilePolicy};
pub use context::{AdapterChoice, AdapterSummary, DeviceKind, Gpu, GpuError, MAX_BINDING_ENV, UNUSED_BINDING_BYTES, list_adapters};
pub use ledger::{Category, GpuBuffer, Ledger, MemorySnapshot, human_bytes, parse_bytes};
pub use program::{Bound, TENSOR_ALIGN, Grid, Precision, Program, ProgramBuilder, ProgramError, Uniforms, View, check_bindings};
pub use registry::{ACT_ALIAS_F32, BindingInfo, EntryPoint, F16_SUFFIX, PRELUDE, SHADERS, act_f16_source, all_sources, check_limits, for_tint, is_act_typed, reflect, tint_source, with_prelude};
