//! The memory model against the byte ledger, the planner, and activation checkpointing.

mod common;

use gradscope::gpu::{Category, MemorySnapshot, Precision};
use gradscope::gpu::kernels::MatmulVariant;
use gradscope::train::plan::memory_options;
use gradscope::model::memory::{DeviceLimits, MemoryOptions, ModelSpec, PlanError, parse_bytes, plan};
use gradscope::reference::cnn_model::NormKind;
use gradscope::reference::gpt::GptConfig;
use gradscope::train::verify::{first_window_gradient, gradient_rel_diff};
use gradscope::train::{TrainConfig, Trainer};

fn gpt(n_layer: usize, n_head: usize, n_embd: usize, block_size: usize, b: usize, k: usize, ck: bool) -> TrainConfig {
    TrainConfig {
        n_layer,
        n_head,
        n_embd,
        block_size,
        micro_batch: b,
        accum_steps: k,
        checkpoint_activations: ck,
        max_steps: 20,
        eval_windows: 4,
        eval_every: 0,
        out_dir: std::env::temp_dir().join("gradscope-test-runs").display().to_string(),
        ..TrainConfig::default()
    }
}

fn f16(cfg: TrainConfig) -> TrainConfig {
    TrainConfig { precision: Precision::F16, ..cfg }
}

fn digits(norm: NormKind, b: usize, k: usize) -> TrainConfig {
    let ov: Vec<String> = ["--model", "cnn", "--dataset", "digits"].iter().map(|s| s.to_string()).collect();
    TrainConfig { norm, micro_batch: b, accum_steps: k, ..TrainConfig::load(None, &ov).unwrap() }
}

fn minus(a: MemorySnapshot, b: MemorySnapshot) -> MemorySnapshot {
    let mut d = MemorySnapshot::default();
    for c in Category::ALL {
        d.bytes[c.index()] = a.get(c) - b.get(c);
    }
    d
}

fn assert_same(what: &str, predicted: MemorySnapshot, actual: MemorySnapshot) {
    println!("{what}:\n  predicted {:?}\n  ledger    {:?}", predicted.bytes, actual.bytes);
    for c in Category::ALL {
        assert_eq!(predicted.get(c), actual.get(c), "{what}: {} predicted {} bytes, the ledger has {}", c.name(), predicted.get(c), actual.get(c));
    }
}

/// One optimizer step of the GPT `cfg` on `g`: the trainer, the ledger before it, and what the
/// memory model predicts for the trainer's own config (f16 falls back to f32 on an adapter
/// without SHADER_F16) against what the step put in the ledger.
fn one_gpt_step(g: &gradscope::gpu::Gpu, cfg: &TrainConfig) -> (Trainer, MemorySnapshot, MemorySnapshot, MemorySnapshot) {
    let before = g.ledger.snapshot();
    let mut t = Trainer::new(g, cfg.clone()).unwrap();
    t.train_step().unwrap();
    let actual = minus(g.ledger.snapshot(), before);
    let spec = ModelSpec::Gpt(t.gpt().unwrap().gcfg);
    let predicted = spec.predict(cfg.micro_batch, cfg.accum_steps, 0, memory_options(&t.cfg, g));
    (t, before, predicted, actual)
}

/// Every category predicted to the byte, for several GPT shapes, micro-batches, K (the
/// per-micro-batch figures buffer grows past K = 16), with/without checkpointing, in f32 and with
/// f16 activations (mixed precision), with dropout.
#[test]
fn gpt_prediction_equals_the_byte_ledger() {
    let g = common::gpu();
    // a fresh device holds only its unused-binding stand-ins, in the ledger's scratch category
    let fresh = g.ledger.snapshot();
    assert_eq!((fresh.get(Category::Scratch), fresh.total()), (gradscope::gpu::UNUSED_BINDING_BYTES, gradscope::gpu::UNUSED_BINDING_BYTES));
    for cfg in [
        gpt(2, 2, 32, 16, 4, 3, false),
        gpt(2, 2, 32, 16, 4, 3, true),
        gpt(3, 3, 48, 24, 5, 20, true),
        gpt(1, 1, 20, 7, 1, 2, false),
        gpt(4, 4, 64, 32, 3, 1, true),
        f16(gpt(2, 2, 32, 16, 4, 3, false)),
        f16(gpt(3, 3, 48, 24, 5, 20, true)),
        f16(gpt(1, 1, 20, 7, 1, 2, false)),
        // dropout's dispatches, forward and backward (and in recomputed blocks)
        TrainConfig { dropout: 0.1, ..gpt(2, 2, 32, 16, 4, 3, false) },
        TrainConfig { dropout: 0.1, ..gpt(3, 3, 48, 24, 5, 2, true) },
    ] {
        let (mut t, before, predicted, actual) = one_gpt_step(&g, &cfg);
        let run = t.cfg.clone();
        assert_same(
            &format!(
                "GPT L{} C{} T{} B{} K{} checkpointing {} {}",
                cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.micro_batch, cfg.accum_steps, cfg.checkpoint_activations, run.precision
            ),
            predicted,
            actual,
        );
        // changing B live rebuilds the activations exactly as predicted for the new B
        t.set_micro_batch(cfg.micro_batch + 2).unwrap();
        t.train_step().unwrap();
        let actual = minus(g.ledger.snapshot(), before);
        let spec = ModelSpec::Gpt(t.gpt().unwrap().gcfg);
        let predicted = spec.predict(cfg.micro_batch + 2, cfg.accum_steps, 0, memory_options(&run, &g));
        assert_same("after a live change of B", predicted, actual);
        drop(t);
        assert_eq!(g.ledger.snapshot(), before, "every buffer of the run is released");
    }
}

#[test]
fn cnn_prediction_equals_the_byte_ledger() {
    let g = common::gpu();
    for cfg in [digits(NormKind::Group, 8, 2), digits(NormKind::Batch, 5, 17)] {
        let before = g.ledger.snapshot();
        let mut t = Trainer::new(&g, cfg.clone()).unwrap();
        t.train_step().unwrap();
        let actual = minus(g.ledger.snapshot(), before);
        let predicted = ModelSpec::Cnn(t.cnn().unwrap().ccfg).predict(cfg.micro_batch, cfg.accum_steps, 0, MemoryOptions::default());
        assert_same(&format!("CNN {:?} B{} K{}", cfg.norm, cfg.micro_batch, cfg.accum_steps), predicted, actual);
    }
}

/// Checkpointing recomputes each block from its kept input: the window gradient is the same as
/// without it (within 1e-6 relative), training continues identically, and activation memory drops
/// as predicted.
#[test]
fn activation_checkpointing_keeps_gradients_and_saves_memory() {
    let g = common::gpu();
    for (plain, ck) in [(gpt(3, 2, 32, 16, 4, 2, false), gpt(3, 2, 32, 16, 4, 2, true)), (gpt(2, 4, 64, 32, 2, 3, false), gpt(2, 4, 64, 32, 2, 3, true))] {
        let a = first_window_gradient(&g, &plain).unwrap();
        let b = first_window_gradient(&g, &ck).unwrap();
        let d = gradient_rel_diff(&b, &a);
        println!("L{} checkpointing: window gradient max rel diff {d:.2e}", plain.n_layer);
        assert!(d < 1e-6, "checkpointed gradient differs by {d:.3e}");

        // three optimizer steps each: same losses and weights
        let mut ta = Trainer::new(&g, plain.clone()).unwrap();
        let mut tb = Trainer::new(&g, ck.clone()).unwrap();
        for _ in 0..3 {
            let (ma, _) = ta.train_step().unwrap();
            let (mb, _) = tb.train_step().unwrap();
            assert!((ma.train_loss - mb.train_loss).abs() <= 1e-6 * ma.train_loss.abs(), "loss {} vs {}", ma.train_loss, mb.train_loss);
        }
        let (wa, wb) = (ta.model.slabs().read_params().unwrap(), tb.model.slabs().read_params().unwrap());
        let d = gradient_rel_diff(&wb, &wa);
        assert!(d < 1e-6, "weights after 3 steps differ by {d:.3e}");

        let spec = ModelSpec::Gpt(ta.gpt().unwrap().gcfg);
        let on = MemoryOptions { checkpoint_activations: true, ..Default::default() };
        let (full, less) = (spec.predict(4, 2, 0, MemoryOptions::default()), spec.predict(4, 2, 0, on));
        println!(
            "activations: {} without, {} with checkpointing",
            gradscope::gpu::human_bytes(full.get(Category::Activations)),
            gradscope::gpu::human_bytes(less.get(Category::Activations))
        );
        assert!(less.get(Category::Activations) < full.get(Category::Activations));
    }
}

fn roomy() -> DeviceLimits {
    DeviceLimits { max_binding: 1 << 40, max_buffer: 1 << 40, max_loop_rows: None }
}

fn reference_gpt() -> ModelSpec {
    ModelSpec::Gpt(GptConfig { vocab_size: 65, block_size: 64, n_layer: 2, n_head: 4, n_embd: 128 })
}

/// The plan's B is the largest whose prediction fits: B fits, B+1 does not; K = ceil(E/B) and
/// the last micro-batch holds the remainder.
#[test]
fn plan_picks_the_largest_micro_batch_under_the_budget() {
    let spec = reference_gpt();
    let opts = MemoryOptions::default();
    for (e, budget) in [(64usize, 64u64 << 20), (64, 200 << 20), (50, 100 << 20), (7, 1 << 30)] {
        let p = plan(&spec, e, budget, &roomy(), opts).unwrap();
        let total = |b: usize| {
            let k = e.div_ceil(b);
            spec.predict(b, k, e - (k - 1) * b, opts).total()
        };
        println!("E {e} budget {}: B {} K {} last {} ({})", gradscope::gpu::human_bytes(budget), p.micro_batch, p.accum_steps, p.last_micro_batch, p.limited_by);
        assert!(total(p.micro_batch) <= budget);
        assert_eq!(p.predicted.total(), total(p.micro_batch));
        if p.micro_batch < e {
            assert!(total(p.micro_batch + 1) > budget, "B + 1 would fit too");
            assert_eq!(p.limited_by, "memory budget");
        } else {
            assert_eq!(p.limited_by, "effective batch");
        }
        assert_eq!(p.accum_steps, e.div_ceil(p.micro_batch));
        assert_eq!((p.accum_steps - 1) * p.micro_batch + p.last_micro_batch, e);
        assert!(p.last_micro_batch >= 1 && p.last_micro_batch <= p.micro_batch);
    }
    // checkpointing lets a larger B fit the same budget
    let plain = plan(&spec, 64, 64 << 20, &roomy(), opts).unwrap();
    let ck = plan(&spec, 64, 64 << 20, &roomy(), MemoryOptions { checkpoint_activations: true, ..Default::default() }).unwrap();
    assert!(ck.micro_batch > plain.micro_batch, "checkpointing: B {} vs {}", ck.micro_batch, plain.micro_batch);
}

/// The device's limits bound B as well as the budget: the max binding (each activation tensor
/// must fit one binding; the slab spans as many buffers as needed) and the CPU adapters' loop cap.
#[test]
fn plan_respects_device_limits() {
    let spec = reference_gpt();
    let opts = MemoryOptions::default();
    let limits = DeviceLimits { max_binding: 128 << 20, max_buffer: 1 << 31, max_loop_rows: None };
    // B 256: 46.6 MiB of activations per 16 sequences, a 0.7 GiB slab; its largest tensor (the
    // MLP's hidden activations, B x 64 x 512) is 32 MiB: it fits
    let p = plan(&spec, 256, 1 << 40, &limits, opts).unwrap();
    assert_eq!((p.micro_batch, p.limited_by), (256, "effective batch"));
    // past B 1024 that tensor alone (128 KiB per sequence) passes 128 MiB
    let p = plan(&spec, 4096, 1 << 40, &limits, opts).unwrap();
    assert_eq!((p.micro_batch, p.limited_by), (1024, "max binding"));
    assert!(spec.largest_binding(p.micro_batch, opts) <= 128 << 20);
    assert!(spec.largest_binding(p.micro_batch + 1, opts) > 128 << 20);
    let limits = DeviceLimits { max_loop_rows: Some(65_535), ..roomy() };
    let p = plan(&spec, 2048, 1 << 40, &limits, opts).unwrap();
    assert_eq!((p.micro_batch, p.limited_by), (1023, "loop limit"), "1023 x 64 = 65,472 rows");
    let e = plan(&spec, 64, 1 << 20, &roomy(), opts).unwrap_err();
    assert!(matches!(e, PlanError::NothingFits { why: "memory budget", .. }), "{e}");
    println!("{e}");
    assert_eq!(plan(&spec, 0, 1 << 30, &roomy(), opts).unwrap_err(), PlanError::NoEffectiveBatch);
}

#[test]
fn memory_budget_sizes() {
    assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
    assert_eq!(parse_bytes("1.5 GiB").unwrap(), 3 << 29);
    assert_eq!(parse_bytes("300MB").unwrap(), 300_000_000);
    assert_eq!(parse_bytes("65536").unwrap(), 65536);
    for bad in ["", "lots", "12 parsecs", "-5MiB", "0", "NaN GiB"] {
        assert!(parse_bytes(bad).is_err(), "{bad:?} should be refused");
    }
}

/// `train --memory_budget X --effective_batch E` trains with the planned B and K, and the
/// ledger stays within the budget.
#[test]
fn training_under_a_memory_budget_uses_the_plan() {
    let g = common::gpu();
    let base = gpt(2, 2, 32, 32, 16, 1, false);
    let spec = ModelSpec::Gpt(GptConfig { vocab_size: 65, block_size: 32, n_layer: 2, n_head: 2, n_embd: 32 });
    let opts = MemoryOptions { kernels: g.kernels().matmul(), ..Default::default() };
    let budget = spec.predict(5, 3, 3, opts).total() + 1000;
    let cfg = TrainConfig { memory_budget: format!("{budget}"), effective_batch: 13, ..base };
    let before = g.ledger.snapshot();
    let mut t = Trainer::new(&g, cfg).unwrap();
    let p = t.model.plan().cloned().expect("a plan");
    assert_eq!((p.micro_batch, p.accum_steps, p.last_micro_batch), (5, 3, 3), "{p:?}");
    assert_eq!((t.cfg.micro_batch, t.cfg.windows_micro_batches(), t.cfg.effective()), (5, 3, 13));
    let (m, _) = t.train_step().unwrap();
    assert_eq!(m.micro_batch, 5);
    let used = minus(g.ledger.snapshot(), before).total();
    println!("budget {budget} bytes, ledger {used} bytes, B {} K {}", p.micro_batch, p.accum_steps);
    assert!(used <= budget);
    // a budget nothing fits is a clear error before any allocation
    let cfg = TrainConfig { memory_budget: "10KiB".into(), ..gpt(2, 2, 32, 32, 4, 2, false) };
    let err = Trainer::new(&g, cfg).err().expect("refused").to_string();
    assert!(err.contains("not even micro_batch 1 fits"), "{err}");
}

/// A micro-batch whose slabs cannot be allocated leaves the previous one in place (the model
/// keeps training) and says what failed.
#[test]
fn a_failed_reallocation_keeps_the_previous_micro_batch() {
    let g = common::gpu();
    let mut t = Trainer::new(&g, gpt(2, 2, 32, 16, 4, 2, false)).unwrap();
    t.train_step().unwrap();
    let err = t.gpt_mut().unwrap().gpu_model.set_micro_batch(1 << 22).expect_err("far past the device's buffer size");
    println!("{err}");
    assert_eq!(t.model.micro_batch(), 4);
    let (m, _) = t.train_step().unwrap();
    assert!(m.train_loss.is_finite() && m.micro_batch == 4);
}

/// With the GPU kernel family (forced on whatever adapter runs the tests) attention is flash
/// attention: the activations hold a log-sum-exp per query row instead of the T x T matrices,
/// and the prediction still equals the ledger to the byte (f32 and f16, with and without
/// checkpointing). Activations then grow linearly in T: at a GPT-2-small shape, doubling T from
/// 512 to 1024 doubles them (the CPU family's T x T matrices make it about 3x).
#[test]
fn gpu_family_prediction_equals_the_byte_ledger_and_grows_with_t() {
    let g = common::gpu().with_kernels(gradscope::gpu::KernelSet::Gpu);
    for cfg in [gpt(2, 2, 32, 40, 3, 2, false), gpt(2, 2, 32, 40, 3, 2, true), f16(gpt(1, 4, 64, 70, 2, 1, true))] {
        let (t, before, predicted, actual) = one_gpt_step(&g, &cfg);
        assert_eq!(memory_options(&t.cfg, &g).kernels, MatmulVariant::GpuTiled);
        let what = format!("GPU family GPT C{} T{} checkpointing {} {}", cfg.n_embd, cfg.block_size, cfg.checkpoint_activations, t.cfg.precision);
        assert_same(&what, predicted, actual);
        drop(t);
        assert_eq!(g.ledger.snapshot(), before, "every buffer of the run is released");
    }
    let acts = |kernels: MatmulVariant, t: usize| {
        let spec = ModelSpec::Gpt(GptConfig { vocab_size: 50257, block_size: t, n_layer: 12, n_head: 12, n_embd: 768 });
        let opts = MemoryOptions { kernels, vocab_chunk: 8192, ..Default::default() };
        spec.predict(1, 1, 0, opts).get(Category::Activations) as f64
    };
    let (flash, cpu) = (acts(MatmulVariant::GpuTiled, 1024) / acts(MatmulVariant::GpuTiled, 512), acts(MatmulVariant::RegisterBlocked, 1024) / acts(MatmulVariant::RegisterBlocked, 512));
    println!("activations at T 1024 / at T 512: GPU family {flash:.3}, CPU family {cpu:.3}");
    assert!(flash < 2.01, "the GPU family's activations grow faster than T: {flash:.3}");
    assert!(cpu > 2.5, "the CPU family keeps the T x T matrices: {cpu:.3}");
}
