//! The only part of gradscope that knows wgpu: device selection, buffers with the byte ledger,
//! the kernel registry, dispatch helpers (programs), typed kernel launchers, and readback.

pub mod context;
pub mod kernels;
pub mod kernels_cnn;
pub mod ledger;
pub mod program;
pub mod readback;
pub mod registry;
pub mod submit;

pub use context::{AdapterChoice, AdapterSummary, DeviceKind, Gpu, GpuError, list_adapters};
pub use ledger::{Category, GpuBuffer, Ledger, MemorySnapshot, human_bytes};
pub use program::{Grid, Precision, Program, ProgramBuilder, ProgramError, Uniforms, View};
pub use registry::{ACT_ALIAS_F32, F16_SUFFIX, SHADERS, act_f16_source, is_act_typed, reflect};
