//! The two kernel families train the same GPT: the GPU family (matmul_gpu.wgsl's workgroup
//! tiles, forced onto this adapter with `Gpu::with_kernels`) against the CPU family
//! (matmul_cpu.wgsl's register blocks), both on the same adapter, same seed and data: the first
//! window's gradient within f32 rounding, and the losses and weights of a few optimizer steps.
//! Each side's kernel profile must name its own matmuls, so the two sides cannot run one path.

mod common;

use common::{Rng, check, f64s};
use gradscope::gpu::kernels::MatmulVariant;
use gradscope::gpu::{Category, Gpu, KernelSet, MatmulTile, Precision, ProgramBuilder, TilePolicy, View};
use gradscope::reference::layers as r;
use gradscope::train::verify::{first_window_gradient, gradient_rel_diff};
use gradscope::train::{TrainConfig, Trainer};

/// A small GPT with every layer; `odd` gives shapes off the vec4 and tile grids (C 36, head
/// size 12, T 13: the GPU family's scalar loads and tile edges, the CPU family's fallbacks).
fn small(odd: bool) -> TrainConfig {
    let (n_embd, n_head, block_size) = if odd { (36, 3, 13) } else { (32, 2, 16) };
    TrainConfig {
        n_layer: 2,
        n_head,
        n_embd,
        block_size,
        micro_batch: 4,
        accum_steps: 3,
        max_steps: 20,
        eval_windows: 4,
        eval_every: 0,
        out_dir: std::env::temp_dir().join("gradscope-test-runs").display().to_string(),
        ..TrainConfig::default()
    }
}

fn families() -> (Gpu, Gpu) {
    let g = common::gpu();
    (g.clone().with_kernels(KernelSet::Cpu), g.with_kernels(KernelSet::Gpu))
}

/// The matmul entry points of one micro-batch's profile (None without timestamp queries).
fn matmul_kernels(t: &mut Trainer) -> Option<Vec<String>> {
    let names = t.model.profile_micro_batch().unwrap()?;
    let mut v: Vec<String> = names.into_iter().map(|(n, _)| n).filter(|n| n.starts_with("matmul_")).collect();
    v.sort();
    v.dedup();
    Some(v)
}

/// ... at both of the GPU family's matmul tiles.
#[test]
fn both_families_give_the_same_first_window_gradient() {
    let (cpu, gpu) = families();
    for odd in [false, true] {
        let cfg = small(odd);
        let a = first_window_gradient(&cpu, &cfg).unwrap();
        for tile in [MatmulTile::T64x64, MatmulTile::T128x64] {
            let b = first_window_gradient(&gpu.clone().with_matmul_tiles(TilePolicy::Fixed(tile)), &cfg).unwrap();
            let d = gradient_rel_diff(&b, &a);
            println!("C {} T {}: GPU family ({tile} tiles) against CPU family, max rel diff {d:.2e} over {} gradients", cfg.n_embd, cfg.block_size, a.len());
            assert!(d < 1e-5, "the GPU family's gradient ({tile} tiles) differs from the CPU family's by {d:.3e} (C {}, T {})", cfg.n_embd, cfg.block_size);
        }
    }
}

#[test]
fn both_families_train_the_same_gpt() {
    let (cpu, gpu) = families();
    let cfg = small(true);
    let mut runs = [Trainer::new(&cpu, cfg.clone()).unwrap(), Trainer::new(&gpu, cfg).unwrap()];
    // each family runs its own matmuls
    let profiles: Vec<Option<Vec<String>>> = runs.iter_mut().map(matmul_kernels).collect();
    match (&profiles[0], &profiles[1]) {
        (Some(c), Some(g)) => {
            println!("CPU family: {c:?}\nGPU family: {g:?}");
            assert!(c.iter().any(|k| k.ends_with("_cpu") || k.ends_with("_cpu_v4")), "{c:?}");
            assert!(!c.iter().any(|k| k.ends_with("_gpu")), "{c:?}");
            for k in ["matmul_forward_gpu", "matmul_backward_input_gpu", "matmul_backward_weight_gpu"] {
                assert!(g.iter().any(|n| n == k), "{k} missing from the GPU family's profile {g:?}");
            }
            assert!(!g.iter().any(|k| k.contains("_cpu")), "{g:?}");
        }
        _ => println!("skipped: timestamp queries missing (the kernel names are not checked)"),
    }
    let p0 = runs[0].model.slabs().read_params().unwrap();
    for step in 1..=5 {
        let la = runs[0].train_step().unwrap().0.train_loss;
        let lb = runs[1].train_step().unwrap().0.train_loss;
        println!("step {step}: loss {la:.6} (CPU family) {lb:.6} (GPU family)");
        assert!((la - lb).abs() <= 1e-4 * la.abs(), "step {step}: losses {la} and {lb} differ");
    }
    let pa = runs[0].model.slabs().read_params().unwrap();
    let pb = runs[1].model.slabs().read_params().unwrap();
    let d = gradient_rel_diff(&pb, &pa);
    println!("weights after 5 steps: max rel diff {d:.2e}");
    assert!(d < 1e-4, "weights after 5 steps differ by {d:.3e}");
    let moved = gradient_rel_diff(&pa, &p0);
    assert!(moved > 1e-3, "5 steps should move the weights (moved {moved:.3e})");
    // each checkpoint records the family that trained it, and the GPU family's tile policy
    let metas: Vec<_> = runs.iter().map(|t| t.snapshot().unwrap().meta).collect();
    assert_eq!(metas[0].get("kernels").map(String::as_str), Some("cpu"));
    assert_eq!(metas[0].get("matmul_tiles"), None);
    assert_eq!(metas[1].get("kernels").map(String::as_str), Some("gpu"));
    assert_eq!(metas[1].get("matmul_tiles"), Some(&gpu.matmul_tiles().to_string()));
}

/// In mixed precision (f16 activations) the two families agree within f16 rounding.
#[test]
fn both_families_agree_in_mixed_precision() {
    let (cpu, gpu) = families();
    common::require_f16(&cpu);
    for odd in [false, true] {
        let cfg = TrainConfig { precision: Precision::F16, ..small(odd) };
        let a = first_window_gradient(&cpu, &cfg).unwrap();
        let b = first_window_gradient(&gpu, &cfg).unwrap();
        let d = gradient_rel_diff(&b, &a);
        println!("f16, C {} T {}: max rel diff {d:.2e}", cfg.n_embd, cfg.block_size);
        assert!(d < 1e-2, "f16: the GPU family's gradient differs from the CPU family's by {d:.3e}");
    }
}

/// A tensor in a buffer of its own behind a NaN gap of `gap` elements (not a multiple of 4:
/// the GPU matmuls must read such operands with scalar loads, not vec4).
fn behind(g: &Gpu, v: &[f32], gap: usize) -> View {
    let mut data = vec![f32::NAN; gap];
    data.extend_from_slice(v);
    let buf = g.storage("test tensor behind an odd gap", Category::Activations, data.len());
    g.upload(&buf, 0, &data);
    View::at(&buf, gap)
}

fn read(g: &Gpu, v: &View, n: usize) -> Vec<f32> {
    g.read::<f32>(&v.buf, v.offset, n).unwrap()
}

/// matmul_gpu.wgsl's three products with every fused epilogue, at both block tiles (64x64 and
/// 128x64), on operands at offsets that are not multiples of 4 (scalar loads) and at offsets
/// that are (vec4 loads), shapes off both tiles and the 16-slice (rows past 128 and 256 for the
/// 128-row tile's second quad and second block): forward + bias + GELU, the input gradient with
/// GELU' fused into random initial values, the weight gradient accumulating into random values.
#[test]
fn gpu_matmuls_take_any_offset_and_shape() {
    for tile in [MatmulTile::T64x64, MatmulTile::T128x64] {
        matmuls_at_any_offset_and_shape(common::gpu().with_matmul_tiles(TilePolicy::Fixed(tile)));
    }
}

fn matmuls_at_any_offset_and_shape(g: Gpu) {
    let tile = g.matmul_tiles();
    let mut rng = Rng::fresh("matmul_gpu_offsets");
    const TOL: f64 = 1e-4;
    let shapes = [(3, (70, 36, 68)), (4, (70, 36, 68)), (1, (5, 17, 129)), (2, (64, 64, 64)), (8, (65, 48, 20)), (4, (260, 20, 136)), (5, (131, 40, 257))];
    for (gap, (m, k, n)) in shapes {
        let x = rng.vec(m * k, 1.0);
        let w = rng.vec(n * k, 1.0);
        let b = rng.vec(n, 1.0);
        let dy = rng.vec(m * n, 1.0);
        let (dpre0, dw0) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0));
        // the GELU input of the input gradient's epilogue: pre [M,K]
        let pre = rng.vec(m * k, 2.0);
        let (xv, wv, bv, dyv, prev) = (behind(&g, &x, gap), behind(&g, &w, gap + 1), behind(&g, &b, gap), behind(&g, &dy, gap + 2), behind(&g, &pre, gap));
        let (out, post) = (behind(&g, &vec![f32::NAN; m * n], gap), behind(&g, &vec![f32::NAN; m * n], gap + 3));
        let (dpre, dw) = (behind(&g, &dpre0, gap), behind(&g, &dw0, gap + 2));
        let mut pb = ProgramBuilder::new(&g);
        pb.matmul_forward_gelu_with(MatmulVariant::GpuTiled, &out, &post, &xv, &wv, Some(&bv), m, k, n).unwrap();
        pb.matmul_backward_input_gpu(&dpre, Some(&prev), &dyv, &wv, m, k, n).unwrap();
        pb.matmul_backward_weight_gpu(&dw, &dyv, &xv, m, k, n).unwrap();
        pb.finish("test").run();
        let bref = f64s(&b);
        let mut out_r = vec![0.0; m * n];
        r::matmul_forward(&mut out_r, &f64s(&x), &f64s(&w), Some(&bref[..]), m, k, n);
        let mut post_r = vec![0.0; m * n];
        r::gelu_forward(&mut post_r, &out_r, m * n);
        // dpre += GELU'(pre) * (dy . w)
        let mut dxw = vec![0.0; m * k];
        let mut dw_r = f64s(&dw0);
        r::matmul_backward(&mut dxw, &mut dw_r, None, &f64s(&dy), &f64s(&x), &f64s(&w), m, k, n);
        let mut dpre_r = f64s(&dpre0);
        r::gelu_backward(&mut dpre_r, &f64s(&pre), &dxw, m * k);
        let name = format!("matmul_gpu tiles {tile}, {m}x{k}x{n} at gap {gap}");
        check(&name, "out", &read(&g, &out, m * n), &out_r, TOL);
        check(&name, "post", &read(&g, &post, m * n), &post_r, TOL);
        check(&name, "dpre", &read(&g, &dpre, m * k), &dpre_r, TOL);
        check(&name, "dweight", &read(&g, &dw, n * k), &dw_r, TOL);
    }
}
