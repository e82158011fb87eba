//! The kernel set: which family of kernels a device gets, chosen once when the `Gpu` is made.
//!
//! Barriers and workgroup memory are what make a matmul fast on a GPU, and what make it slow on a
//! CPU adapter (lavapipe, llvmpipe, WARP), whose invocations are SIMD lanes of a CPU core. So
//! each layer that needs it has two variants, both tested against the same CPU reference:
//! - `Cpu`: register blocks read straight from the buffers, no barriers (matmul_cpu.wgsl,
//!   attention_cpu.wgsl, conv2d's x4 kernels, the MLP's GELU fused through transposed weights);
//! - `Gpu`: 64x64 or 128x64 workgroup tiles with 4x4 or 8x4 register blocks and vec4 loads
//!   (matmul_gpu.wgsl; the tile per product from the device's `TilePolicy`), with the bias +
//!   GELU, accumulate and GELU-backward epilogues fused into the matmuls.
//!
//! The choice follows the adapter's kind; `GRADSCOPE_KERNELS=gpu|cpu` (or `Gpu::with_kernels`)
//! overrides it, so a CPU adapter can run and test the GPU family. Launchers read it from the
//! builder's device (`ProgramBuilder::kernels`); models, the planner and the app ask the device
//! (`Gpu::kernels`) instead of deciding themselves. The set is recorded in the run's metadata
//! (`gradscope train`'s header, checkpoints, `gradscope info`, `gradscope bench --json`).

use std::fmt;

use super::context::DeviceKind;
use super::kernels::MatmulVariant;

/// The environment variable that overrides the kernel set (`gpu` or `cpu`).
pub const KERNELS_ENV: &str = "GRADSCOPE_KERNELS";

/// The family of kernels a device runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelSet {
    /// Register-blocked kernels without barriers: what is fast on a CPU adapter.
    #[default]
    Cpu,
    /// Workgroup-tiled kernels: what is fast on a GPU.
    Gpu,
}

impl KernelSet {
    /// The set that is fast on this kind of device.
    pub fn for_kind(kind: DeviceKind) -> Self {
        match kind {
            DeviceKind::Cpu => KernelSet::Cpu,
            DeviceKind::Gpu => KernelSet::Gpu,
        }
    }

    /// The set for a device of `kind`, unless `value` (the override's text, e.g. the
    /// environment variable's) names one: `gpu`, `cpu`, or empty / `auto` for the default.
    pub fn choose(kind: DeviceKind, value: Option<&str>) -> Result<Self, String> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("auto") => Ok(Self::for_kind(kind)),
            Some(v) => v.parse(),
        }
    }

    /// `choose` with the value of `GRADSCOPE_KERNELS`.
    pub fn from_env(kind: DeviceKind) -> Result<Self, String> {
        Self::choose(kind, std::env::var(KERNELS_ENV).ok().as_deref())
    }

    /// The matmul implementation of this set (shapes it cannot take fall back to matmul.wgsl).
    pub fn matmul(self) -> MatmulVariant {
        match self {
            KernelSet::Cpu => MatmulVariant::RegisterBlocked,
            KernelSet::Gpu => MatmulVariant::GpuTiled,
        }
    }

    /// Whether the convolutions use the 4-channel x 4-column register-blocked kernels (x4) rather
    /// than one output per invocation. Both families do: a 4x4 register block without barriers
    /// is the better choice on CPU adapters and GPUs alike at the CNN's sizes (one output per
    /// invocation reads each input 16 times more often); the plain kernels stay as the tested
    /// simple twin.
    pub fn conv_blocked(self) -> bool {
        match self {
            KernelSet::Cpu | KernelSet::Gpu => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Cpu => "cpu",
            KernelSet::Gpu => "gpu",
        }
    }

    /// One line on what the set runs (for `gradscope info` and `bench`).
    pub fn describe(self) -> &'static str {
        match self {
            KernelSet::Cpu => "register blocks without barriers (matmul 4x8 per invocation, vec4 loads)",
            KernelSet::Gpu => "workgroup tiles (matmul 64x64 or 128x64 blocks, 4x4 or 8x4 per invocation, vec4 loads, fused epilogues)",
        }
    }
}

impl fmt::Display for KernelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KernelSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(KernelSet::Cpu),
            "gpu" => Ok(KernelSet::Gpu),
            other => Err(format!("{KERNELS_ENV}={other:?}: expected `gpu`, `cpu` or `auto`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_chooses_unless_overridden() {
        assert_eq!(KernelSet::choose(DeviceKind::Cpu, None), Ok(KernelSet::Cpu));
        assert_eq!(KernelSet::choose(DeviceKind::Gpu, None), Ok(KernelSet::Gpu));
        assert_eq!(KernelSet::choose(DeviceKind::Gpu, Some("auto")), Ok(KernelSet::Gpu));
        assert_eq!(KernelSet::choose(DeviceKind::Cpu, Some(" GPU ")), Ok(KernelSet::Gpu));
        assert_eq!(KernelSet::choose(DeviceKind::Gpu, Some("cpu")), Ok(KernelSet::Cpu));
        let e = KernelSet::choose(DeviceKind::Cpu, Some("tpu")).unwrap_err();
        assert!(e.contains(KERNELS_ENV) && e.contains("tpu"), "{e}");
        assert_eq!(KernelSet::Gpu.matmul(), MatmulVariant::GpuTiled);
        assert_eq!(KernelSet::Cpu.matmul(), MatmulVariant::RegisterBlocked);
    }
}
