//! Matmul throughput of every kernel variant on the current adapter, checked against f64.
//! This is the ceiling the end-to-end trainer is compared with.

use std::time::Instant;

use crate::gpu::kernels::MatmulVariant;
use crate::gpu::{Category, Gpu, ProgramBuilder, TilePolicy, View};

/// One measured size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MatmulResult {
    pub variant: String,
    pub size: usize,
    pub gflops: f64,
    pub ms_per_matmul: f64,
    /// Max relative error of sampled outputs against an f64 dot product.
    pub max_rel_err: f64,
    /// gflops as a percentage of the adapter's FP32 peak, when the peak is known.
    pub percent_of_peak: Option<f64>,
    /// Whether this is the variant the device's kernel set runs.
    pub selected: bool,
}

fn lcg(state: &mut u64) -> f32 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// out [n,n] = a [n,n] . w [n,n]^T, `reps` times, after one warm-up run.
pub fn bench_matmul(gpu: &Gpu, variant: MatmulVariant, n: usize, min_seconds: f64) -> anyhow::Result<MatmulResult> {
    bench_matmul_as(gpu, gpu.matmul_tiles(), variant, n, min_seconds)
}

/// `bench_matmul` on a device whose tile policy has been replaced (to measure every tile), with
/// `device_tiles` the device's own policy: the result is `selected` when the device would run it.
pub fn bench_matmul_as(gpu: &Gpu, device_tiles: TilePolicy, variant: MatmulVariant, n: usize, min_seconds: f64) -> anyhow::Result<MatmulResult> {
    let mut s = 0x5eed ^ n as u64;
    let a: Vec<f32> = (0..n * n).map(|_| lcg(&mut s)).collect();
    let w: Vec<f32> = (0..n * n).map(|_| lcg(&mut s)).collect();
    let ab = gpu.storage("bench a", Category::Scratch, n * n);
    let wb = gpu.storage("bench w", Category::Scratch, n * n);
    let ob = gpu.storage("bench out", Category::Scratch, n * n);
    gpu.upload(&ab, 0, &a);
    gpu.upload(&wb, 0, &w);
    let mut pb = ProgramBuilder::new(gpu);
    pb.matmul_forward_with(variant, &View::of(&ob), &View::of(&ab), &View::of(&wb), None, n, n, n)?;
    let prog = pb.finish("bench matmul");
    prog.run();
    gpu.wait()?;
    // time whole submissions until min_seconds have passed
    let start = Instant::now();
    let mut reps = 0usize;
    while start.elapsed().as_secs_f64() < min_seconds || reps < 2 {
        prog.run();
        gpu.wait()?;
        reps += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let out: Vec<f32> = gpu.read_all(&ob)?;
    let mut max_rel = 0.0f64;
    for k in 0..64 {
        let i = (k * 7919) % n;
        let j = (k * 104729 + 13) % n;
        let exact: f64 = (0..n).map(|r| a[i * n + r] as f64 * w[j * n + r] as f64).sum();
        let scale: f64 = (0..n).map(|r| (a[i * n + r] as f64 * w[j * n + r] as f64).abs()).sum();
        max_rel = max_rel.max((out[i * n + j] as f64 - exact).abs() / scale.max(1e-30));
    }
    let flops = 2.0 * (n as f64).powi(3) * reps as f64;
    // the GPU family's tile is part of its name (`GpuTiled 128x64`)
    let tile = gpu.matmul_tiles().pick(n, n);
    let gpu_family = variant == MatmulVariant::GpuTiled;
    Ok(MatmulResult {
        variant: if gpu_family { format!("{variant:?} {tile}") } else { format!("{variant:?}") },
        size: n,
        gflops: flops / secs / 1e9,
        ms_per_matmul: secs / reps as f64 * 1e3,
        max_rel_err: max_rel,
        percent_of_peak: None,
        selected: gpu.kernels().matmul() == variant && (!gpu_family || device_tiles.pick(n, n) == tile),
    })
}
