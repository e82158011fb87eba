//! Slabs past one binding, exercised on small models with the binding knob
//! (`Gpu::set_binding_cap`, the `GRADSCOPE_MAX_BINDING` of the CLI): parameters, gradients,
//! AdamW state and activations in many buffers train like one buffer, the memory model still
//! equals the ledger, and a tensor past one binding is refused by name.

mod common;

use gradscope::gpu::{Category, MemorySnapshot, Precision};
use gradscope::model::memory::ModelSpec;
use gradscope::train::plan::memory_options;
use gradscope::train::verify::first_window_gradient;
use gradscope::train::{TrainConfig, Trainer};

fn small(b: usize, k: usize, ck: bool, precision: Precision) -> TrainConfig {
    let ov: Vec<String> = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--max_steps", "10"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    TrainConfig { micro_batch: b, accum_steps: k, checkpoint_activations: ck, precision, ..TrainConfig::load(None, &ov).unwrap() }
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max);
    let m = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    d / m.max(1e-30)
}

/// 32 KiB per binding and per buffer: the parameter slab of this GPT becomes 7 buffers, its
/// activations at B 2 as many.
const CAP: u64 = 32 << 10;

#[test]
fn many_buffers_train_like_one() {
    let one = common::gpu();
    let many = common::gpu();
    many.set_binding_cap(Some(CAP));
    for cfg in [small(2, 2, false, Precision::F32), small(2, 3, true, Precision::F32), small(3, 2, false, Precision::F16)] {
        let what = format!("B {} K {} checkpointing {} {}", cfg.micro_batch, cfg.accum_steps, cfg.checkpoint_activations, cfg.precision);
        let mut a = Trainer::new(&one, cfg.clone()).unwrap();
        let mut b = Trainer::new(&many, cfg.clone()).unwrap();
        let (pa, pb) = (a.model.slabs().params.len(), b.model.slabs().params.len());
        let (aa, ab) = (a.gpt().unwrap().gpu_model.activation_buffers(), b.gpt().unwrap().gpu_model.activation_buffers());
        println!("{what}: parameter slab {pa} -> {pb} buffers, activations {aa} -> {ab}");
        assert_eq!((pa, aa), (1, 1), "{what}");
        assert!(pb >= 3 && ab >= 3, "{what}: the cap must split the slabs");
        // every kernel computes the same sums in the same order: the window's gradient is
        // bit-identical (the global norm's partial sums per buffer are the only reordering)
        a.accumulate_window().unwrap();
        b.accumulate_window().unwrap();
        let (ga, gb) = (a.window_gradient().unwrap(), b.window_gradient().unwrap());
        assert!(ga.iter().any(|x| *x != 0.0) && ga.len() == gb.len());
        assert_eq!(ga, gb, "{what}: window gradient");
        let mut a = Trainer::new(&one, cfg.clone()).unwrap();
        let mut b = Trainer::new(&many, cfg).unwrap();
        for step in 0..3 {
            let (ma, _) = a.train_step().unwrap();
            let (mb, _) = b.train_step().unwrap();
            if step == 0 {
                assert_eq!(ma.train_loss.to_bits(), mb.train_loss.to_bits(), "{what}: first loss");
            }
            // the norm sums per-buffer partials: its last bits, and through clipping the
            // weights', may differ
            assert!((ma.grad_norm - mb.grad_norm).abs() <= 1e-6 * ma.grad_norm, "{what}: norm {} vs {}", ma.grad_norm, mb.grad_norm);
            assert!((ma.train_loss - mb.train_loss).abs() <= 1e-5 * ma.train_loss, "{what}: loss at step {step}");
        }
        let (wa, wb) = (a.model.slabs().read_params().unwrap(), b.model.slabs().read_params().unwrap());
        assert!(rel(&wb, &wa) < 1e-5, "{what}: weights after 3 steps differ by {}", rel(&wb, &wa));
        let ((ma, va), (mb, vb)) = (a.model.slabs().read_adam().unwrap(), b.model.slabs().read_adam().unwrap());
        assert!(rel(&mb, &ma) < 1e-4 && rel(&vb, &va) < 1e-4, "{what}: AdamW moments");
    }
    assert!(one.take_errors().is_empty() && many.take_errors().is_empty());
}

fn minus(a: MemorySnapshot, b: MemorySnapshot) -> MemorySnapshot {
    let mut d = MemorySnapshot::default();
    for c in Category::ALL {
        d.bytes[c.index()] = a.get(c) - b.get(c);
    }
    d
}

#[test]
fn the_memory_model_equals_the_ledger_with_many_buffers() {
    let g = common::gpu();
    g.set_binding_cap(Some(CAP));
    for cfg in [
        small(2, 2, false, Precision::F32),
        small(2, 20, true, Precision::F32),
        small(3, 2, true, Precision::F16),
        with_chunk(small(2, 2, false, Precision::F32), 7),
    ] {
        let before = g.ledger.snapshot();
        let mut t = Trainer::new(&g, cfg.clone()).unwrap();
        t.train_step().unwrap();
        let actual = minus(g.ledger.snapshot(), before);
        let spec = ModelSpec::Gpt(t.gpt().unwrap().gcfg);
        let predicted = spec.predict(cfg.micro_batch, cfg.accum_steps, 0, memory_options(&t.cfg, &g));
        for c in Category::ALL {
            assert_eq!(predicted.get(c), actual.get(c), "{}: B {} K {}", c.name(), cfg.micro_batch, cfg.accum_steps);
        }
        // a live change of B reallocates only the activations, as predicted
        t.set_micro_batch(cfg.micro_batch + 1).unwrap();
        t.train_step().unwrap();
        let actual = minus(g.ledger.snapshot(), before);
        let predicted = spec.predict(cfg.micro_batch + 1, cfg.accum_steps, 0, memory_options(&t.cfg, &g));
        assert_eq!(predicted, actual, "after B -> B + 1");
        drop(t);
        assert_eq!(g.ledger.snapshot(), before);
    }
}

#[test]
fn a_tensor_past_one_binding_is_refused_by_name() {
    let g = common::gpu();
    // 16 KiB: the MLP weights [2, 128, 32] (32 KiB) cannot be bound
    g.set_binding_cap(Some(16 << 10));
    let e = Trainer::new(&g, small(2, 2, false, Precision::F32)).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("fcw") && e.contains("32.0 KiB") && e.contains("16.0 KiB"), "{e}");
    // 32 KiB per binding fits the weights but not B 64's activations: the tensor is named
    g.set_binding_cap(Some(CAP));
    let e = Trainer::new(&g, small(64, 1, false, Precision::F32)).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("micro_batch 64") && e.contains("fch"), "{e}");
}

fn with_chunk(cfg: TrainConfig, vocab_chunk: usize) -> TrainConfig {
    TrainConfig { vocab_chunk, ..cfg }
}

/// The lm_head and the cross-entropy over vocabulary chunks (online log-sum-exp forward,
/// recomputed logits backward) against the whole vocabulary at once: the same window gradient
/// within f32 rounding (the sums are regrouped), at chunk sizes that do not divide V = 65.
#[test]
fn the_vocabulary_in_chunks_gives_the_gradient_of_the_whole() {
    let g = common::gpu();
    for base in [small(2, 2, false, Precision::F32), small(2, 2, true, Precision::F32)] {
        let whole = first_window_gradient(&g, &with_chunk(base.clone(), 0)).unwrap();
        assert!(whole.iter().any(|x| *x != 0.0));
        for chunk in [7, 16, 64] {
            let got = first_window_gradient(&g, &with_chunk(base.clone(), chunk)).unwrap();
            let r = rel(&got, &whole);
            println!("vocab_chunk {chunk}, checkpointing {}: window gradient within {r:.2e} of the whole vocabulary's", base.checkpoint_activations);
            assert!(r < 1e-5, "vocab_chunk {chunk}: {r}");
            // and training follows
            let mut a = Trainer::new(&g, with_chunk(base.clone(), 0)).unwrap();
            let mut b = Trainer::new(&g, with_chunk(base.clone(), chunk)).unwrap();
            for _ in 0..2 {
                let ((ma, _), (mb, _)) = (a.train_step().unwrap(), b.train_step().unwrap());
                assert!((ma.train_loss - mb.train_loss).abs() < 1e-5 * ma.train_loss, "{} vs {}", ma.train_loss, mb.train_loss);
            }
        }
    }
    // the logits' activation bytes: B x T x chunk instead of B x T x V (prediction = ledger is
    // tested with chunks below)
    let before = g.ledger.snapshot().get(Category::Activations);
    let t = Trainer::new(&g, with_chunk(small(2, 2, false, Precision::F32), 0)).unwrap();
    let whole = g.ledger.snapshot().get(Category::Activations) - before;
    drop(t);
    let t = Trainer::new(&g, with_chunk(small(2, 2, false, Precision::F32), 7)).unwrap();
    let chunked = g.ledger.snapshot().get(Category::Activations) - before;
    drop(t);
    println!("activations: whole vocabulary {whole} bytes, chunks of 7: {chunked} bytes");
    assert!(whole - chunked >= 2 * 2 * 16 * (65 - 7) * 4 - 2 * 256, "{whole} -> {chunked}");
}

/// The embedding cut across bindings (4 KiB per binding: 65 x 16 floats of wte become 64 rows
/// and 1), so the encoder runs per vocabulary range and the lm_head in two chunks, on a model
/// whose every other tensor fits: the same gradient and training as one buffer.
#[test]
fn the_embedding_split_across_bindings_trains_like_one_buffer() {
    let ov: Vec<String> = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "8", "--micro_batch", "1",
        "--accum_steps", "2", "--max_steps", "10"].iter().map(|s| s.to_string()).collect();
    let cfg = TrainConfig::load(None, &ov).unwrap();
    let one = common::gpu();
    let split = common::gpu();
    split.set_binding_cap(Some(4096));
    let mut a = Trainer::new(&one, cfg.clone()).unwrap();
    let mut b = Trainer::new(&split, cfg.clone()).unwrap();
    let parts = b.model.slabs().parts[0].len();
    println!("wte in {parts} parts, parameter slab in {} buffers", b.model.slabs().params.len());
    assert_eq!(parts, 2);
    a.accumulate_window().unwrap();
    b.accumulate_window().unwrap();
    let (ga, gb) = (a.window_gradient().unwrap(), b.window_gradient().unwrap());
    assert!(ga.iter().any(|x| *x != 0.0));
    let r = rel(&gb, &ga);
    println!("window gradient within {r:.2e}");
    assert!(r < 1e-5, "{r}");
    let mut a = Trainer::new(&one, cfg.clone()).unwrap();
    let mut b = Trainer::new(&split, cfg.clone()).unwrap();
    for _ in 0..3 {
        let ((ma, _), (mb, _)) = (a.train_step().unwrap(), b.train_step().unwrap());
        assert!((ma.train_loss - mb.train_loss).abs() < 1e-5 * ma.train_loss);
    }
    let r = rel(&b.model.slabs().read_params().unwrap(), &a.model.slabs().read_params().unwrap());
    assert!(r < 1e-5, "weights after 3 steps: {r}");
    // the memory model follows the split layout to the byte
    let before = split.ledger.snapshot();
    let mut t = Trainer::new(&split, cfg.clone()).unwrap();
    t.train_step().unwrap();
    let actual = minus(split.ledger.snapshot(), before);
    let predicted = ModelSpec::Gpt(t.gpt().unwrap().gcfg).predict(1, 2, 0, memory_options(&t.cfg, &split));
    assert_eq!(predicted, actual);
}
