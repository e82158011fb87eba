//! `gradscope info`: every adapter wgpu finds, and the one gradscope selects.

use gradscope::gpu::{AdapterChoice, list_adapters};

use super::out::outln;
use super::{EXIT_OK, device};

pub fn run(choice: &AdapterChoice) -> anyhow::Result<i32> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        return Err(gradscope::gpu::GpuError::NoAdapter.into());
    }
    for a in &adapters {
        outln!("{a}\n");
    }
    let gpu = device(choice)?;
    let k = gpu.kernels();
    outln!("selected: {} ({k} kernels: {}; {} to choose)", gpu.summary.name, k.describe(), gradscope::gpu::KERNELS_ENV);
    if k == gradscope::gpu::KernelSet::Gpu {
        outln!("matmul tiles: {} ({} to choose: 64x64, 128x64 or auto)", gpu.matmul_tiles(), gradscope::gpu::MATMUL_TILE_ENV);
    }
    Ok(EXIT_OK)
}
