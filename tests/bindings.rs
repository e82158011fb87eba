//! WebGPU's binding rules, checked where programs are recorded (so lavapipe catches what only a
//! browser would): each tensor bound as its own range, no writable range overlapping another
//! binding of its buffer, no buffer bound read-only and writable in one dispatch; and the whole
//! GPT and CNN train on a device that has only WebGPU's guaranteed limits.

mod common;

use gradscope::gpu::{AdapterChoice, Category, Gpu, ProgramBuilder, ProgramError, TENSOR_ALIGN, View};
use gradscope::train::{Trainer, TrainConfig};

fn aliasing(e: ProgramError) -> String {
    match e {
        ProgramError::Aliasing { .. } => e.to_string(),
        other => panic!("expected an aliasing error, got {other}"),
    }
}

#[test]
fn overlapping_writable_ranges_are_refused_with_the_kernel_and_bindings() {
    let g = common::gpu();
    let buf = g.storage("activations", Category::Activations, 4096);
    let other = g.storage("more activations", Category::Activations, 4096);
    let mut pb = ProgramBuilder::new(&g);
    // out [0, 1000) and inp1 [512, 1512): residual_forward declares both read_write
    let e = pb.residual_forward(&View::at(&buf, 0), &View::at(&buf, 512), &View::at(&other, 0), 1000).unwrap_err();
    let msg = aliasing(e);
    assert!(msg.contains("residual_forward") && msg.contains("writable bindings overlap"), "{msg}");
    assert!(msg.contains("`out`") && msg.contains("`inp1`") && msg.contains("\"activations\""), "{msg}");
    // tensors that do not overlap but share an alignment unit: the second one's bound range
    // starts at the aligned offset before it, inside the first
    let unit = g.limits().min_storage_buffer_offset_alignment as usize / 4;
    assert!(unit >= 4, "alignment {unit} elements");
    let e = pb.residual_forward(&View::at(&buf, 0), &View::at(&buf, unit + 3), &View::at(&other, 0), unit + 2).unwrap_err();
    assert!(aliasing(e).contains("overlap"));
    let f = TENSOR_ALIGN / 4;
    // tensors at aligned offsets are separate ranges: accepted
    pb.residual_forward(&View::at(&buf, 0), &View::at(&buf, 2 * f), &View::at(&buf, 4 * f), 2 * f).unwrap();
    assert_eq!(pb.len(), 1, "refused dispatches are not recorded");
}

#[test]
fn a_buffer_bound_read_only_and_writable_is_refused() {
    let g = common::gpu();
    let slab = g.storage("one slab", Category::Activations, 8192);
    let (m, k, n) = (8, 16, 8);
    let f = TENSOR_ALIGN / 4;
    let mut pb = ProgramBuilder::new(&g);
    // matmul_forward declares the weight read-only; here it lives in the slab the output is in
    let e = pb.matmul_forward(&View::at(&slab, 0), &View::at(&slab, 2 * f), &View::at(&slab, 4 * f), None, m, k, n).unwrap_err();
    let msg = aliasing(e);
    // (`weight`, or `weight4` in the GPU family's matmul: its vec4 binding of the weight)
    assert!(msg.contains("matmul_forward") && msg.contains("read-only") && msg.contains("`weight"), "{msg}");
    // the same with the weight in its own buffer is fine
    let w = g.storage("weights", Category::Parameters, n * k);
    pb.matmul_forward(&View::at(&slab, 0), &View::at(&slab, 2 * f), &View::of(&w), None, m, k, n).unwrap();
}

#[test]
fn every_program_of_the_models_follows_the_rules_and_binds_ranges() {
    // Recording is where the rules are checked; these configurations record every program the
    // trainer has (train, eval and the end-of-window programs; checkpointing; both norms of
    // the CNN). A violation would fail Trainer::new or the step with an aliasing error.
    let g = common::gpu();
    for extra in [&[][..], &["--checkpoint_activations", "true"][..], &["--grad_clip", "0.5"][..]] {
        let mut ov: Vec<String> = ["--n_layer", "2", "--n_embd", "32", "--n_head", "2", "--block_size", "16", "--micro_batch", "2",
            "--accum_steps", "2", "--max_steps", "1"].iter().map(|s| s.to_string()).collect();
        ov.extend(extra.iter().map(|s| s.to_string()));
        let cfg = TrainConfig::load(None, &ov).unwrap();
        let mut t = Trainer::new(&g, cfg).unwrap();
        t.train_step().unwrap();
    }
    for norm in ["group", "batch"] {
        let ov: Vec<String> = ["--model", "cnn", "--dataset", "digits", "--norm", norm, "--micro_batch", "8", "--accum_steps", "2"]
            .iter().map(|s| s.to_string()).collect();
        let mut t = Trainer::new(&g, TrainConfig::load(None, &ov).unwrap()).unwrap();
        t.train_step().unwrap();
    }
    assert!(g.take_errors().is_empty());
}

/// A device requested at `wgpu::Limits::default()`: WebGPU's guaranteed limits (128 MiB bindings,
/// 256 invocations and 16 KiB of workgroup memory per workgroup, 8 storage buffers per stage,
/// 256-byte storage offset alignment), what a browser grants without asking.
fn webgpu_default_device() -> Gpu {
    let choice = AdapterChoice { name: std::env::var("GRADSCOPE_ADAPTER").ok() };
    Gpu::with_limits(&choice, Some(wgpu::Limits::default())).unwrap_or_else(|e| {
        panic!("GPU tests need an adapter: {e}\nOn Debian/Ubuntu without a GPU: sudo apt-get install mesa-vulkan-drivers libvulkan1")
    })
}

#[test]
fn gpt_and_cnn_train_within_webgpus_guaranteed_limits() {
    let g = webgpu_default_device();
    let l = g.limits();
    assert_eq!(l.max_compute_invocations_per_workgroup, 256);
    assert_eq!(l.max_compute_workgroup_storage_size, 16384);
    assert_eq!(l.min_storage_buffer_offset_alignment, 256);
    let reference = common::gpu();
    // the reference GPT and the CNN: two windows each, the same losses and norms as on a
    // device with the adapter's own (larger) limits
    let gpt: Vec<String> = ["--micro_batch", "4", "--accum_steps", "2"].iter().map(|s| s.to_string()).collect();
    let cnn: Vec<String> = ["--model", "cnn", "--dataset", "digits", "--norm", "batch", "--micro_batch", "16", "--accum_steps", "2"]
        .iter().map(|s| s.to_string()).collect();
    for ov in [gpt, cnn] {
        let cfg = TrainConfig::load(None, &ov).unwrap();
        let mut small = Trainer::new(&g, cfg.clone()).unwrap();
        let mut full = Trainer::new(&reference, cfg).unwrap();
        for _ in 0..2 {
            let (a, _) = small.train_step().unwrap();
            let (b, _) = full.train_step().unwrap();
            assert!(a.train_loss.is_finite() && a.grad_norm > 0.0);
            assert_eq!((a.train_loss.to_bits(), a.grad_norm.to_bits()), (b.train_loss.to_bits(), b.grad_norm.to_bits()));
        }
    }
    assert!(g.take_errors().is_empty());
}
