//! The two kernel families train the same GPT: the GPU family (matmul_gpu.wgsl's workgroup
//! tiles, forced onto this adapter with `Gpu::with_kernels`) against the CPU family
//! (matmul_cpu.wgsl's register blocks), both on the same adapter, same seed and data: the first
//! window's gradient within f32 rounding, and the losses and weights of a few optimizer steps.
//! Each side's kernel profile must name its own matmuls, so the two sides cannot run one path.

mod common;

use gradscope::gpu::{Gpu, KernelSet};
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

#[test]
fn both_families_give_the_same_first_window_gradient() {
    let (cpu, gpu) = families();
    for odd in [false, true] {
        let cfg = small(odd);
        let a = first_window_gradient(&cpu, &cfg).unwrap();
        let b = first_window_gradient(&gpu, &cfg).unwrap();
        let d = gradient_rel_diff(&b, &a);
        println!("C {} T {}: GPU family against CPU family, max rel diff {d:.2e} over {} gradients", cfg.n_embd, cfg.block_size, a.len());
        assert!(d < 1e-5, "the GPU family's gradient differs from the CPU family's by {d:.3e} (C {}, T {})", cfg.n_embd, cfg.block_size);
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
}
