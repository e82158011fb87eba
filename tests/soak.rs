//! Soak: 1,000 random live changes of B, K, learning rate, activation checkpointing, precision and pause / step through the same
//! `Control` channel the app uses, while training. Afterwards: no step lost or applied twice,
//! the byte ledger back to its exact expected value for the final B (no leaked buffers), and
//! every window ran with one B and one K and was normalized by its own real count.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gradscope::gpu::{Category, Precision};
use gradscope::model::gpt::GpuGpt;
use gradscope::reference::gpt::GptConfig;
use gradscope::train::events::{Event, StepReport};
use gradscope::train::live::{self, Control};
use gradscope::train::TrainConfig;

#[test]
fn a_thousand_live_changes_lose_nothing() {
    soak(None);
}

/// The same with every slab in many buffers (64 KiB per binding and buffer: the parameters in
/// 3 buffers, the activations in 3 to 8 as B changes).
#[test]
fn a_thousand_live_changes_lose_nothing_across_many_buffers() {
    soak(Some(64 << 10));
}

fn soak(cap: Option<u64>) {
    let g = common::gpu();
    g.set_binding_cap(cap);
    let tmp = tempfile::Builder::new().prefix("gradscope-soak-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cfg = TrainConfig {
        n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, micro_batch: 2, accum_steps: 2, max_steps: 1_000_000,
        eval_every: 0, eval_windows: 4, out_dir: dir.display().to_string(), ..TrainConfig::default()
    };
    let before = g.ledger.snapshot();
    let s = live::spawn(g.clone(), cfg.clone(), true, Arc::new(|| {}));
    let mut rng = common::Rng::fresh("soak");
    let mut events = Vec::new();
    let drain = |events: &mut Vec<Event>| {
        while let Ok(e) = s.events.try_recv() {
            events.push(e);
        }
    };

    // A change of B requested in the middle of a window applies after that window's step.
    for c in [Control::StepMicroBatch, Control::SetMicroBatch(3), Control::StepMicroBatch, Control::StepOptimizer] {
        s.controls.send(c).unwrap();
    }
    // 1,000 random changes, in bursts, while training runs between them
    for i in 0..1000 {
        let c = match rng.below(11) {
            0 | 1 => Control::SetMicroBatch(1 + rng.below(6) as usize),
            2 | 3 => Control::SetAccumSteps(1 + rng.below(4) as usize),
            4 => Control::SetLr(1e-4 + rng.below(100) as f64 * 1e-4),
            5 => Control::Pause,
            6 | 7 => Control::Resume,
            8 => Control::StepMicroBatch,
            9 if rng.below(2) == 0 => Control::SetPrecision(if rng.below(2) == 1 { Precision::F16 } else { Precision::F32 }),
            10 => Control::SetActivationCheckpointing(rng.below(2) == 1),
            _ => Control::StepOptimizer,
        };
        s.controls.send(c).unwrap();
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(15));
            drain(&mut events);
        }
    }
    // barrier: pause, then a marker setting; when it is confirmed every earlier control is done
    s.controls.send(Control::Pause).unwrap();
    s.controls.send(Control::SetLr(0.012345)).unwrap();
    let start = Instant::now();
    loop {
        drain(&mut events);
        if events.iter().any(|e| matches!(e, Event::Settings { lr, .. } if *lr == 0.012345)) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "the session stopped answering");
        std::thread::sleep(Duration::from_millis(10));
    }
    let errors: Vec<&String> = events.iter().filter_map(|e| if let Event::Error(m) = e { Some(m) } else { None }).collect();
    // the only expected errors: asking for a micro-batch while a complete window waits for its step
    assert!(errors.iter().all(|m| m.contains("window is complete")), "{errors:?}");

    let steps: Vec<&StepReport> = events.iter().filter_map(|e| if let Event::Step(r) = e { Some(r.as_ref()) } else { None }).collect();
    println!("{} steps, {} events, {} errors", steps.len(), events.len(), errors.len());
    assert!(steps.len() >= 5, "training advanced: {} steps", steps.len());
    for (i, r) in steps.iter().enumerate() {
        assert_eq!(r.metrics.step, i + 1, "optimizer steps are consecutive: none lost, none applied twice");
        // one B and one K per window, normalized by the window's own count
        let k = r.micro.len();
        assert_eq!(k, r.metrics.accum_steps);
        let tokens: f64 = r.micro.iter().map(|(_, c)| c).sum();
        assert!(tokens <= (r.metrics.micro_batch * k * cfg.block_size) as f64);
        assert_eq!(tokens, r.metrics.items, "the window's count is the sum of its micro-batches' counts");
        let mean = r.micro.iter().map(|(l, c)| l * c).sum::<f64>() / tokens;
        assert!((mean - r.metrics.train_loss).abs() <= 1e-4 * mean.abs(), "window loss = count-weighted micro-batch losses");
    }
    // the first window straddled the B change: it ran with the old B
    assert_eq!(steps[0].metrics.micro_batch, 2, "a B change mid-window waits for the step");
    let first_step = events.iter().position(|e| matches!(e, Event::Step(_))).unwrap();
    let b3 = events.iter().position(|e| matches!(e, Event::Settings { micro_batch: 3, .. })).unwrap();
    assert!(b3 > first_step, "B = 3 is confirmed only after the window it was requested in was stepped");

    // the ledger: exact bytes for the final B, nothing leaked by hundreds of reallocations
    let (final_b, final_ck, final_precision) = events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Settings { micro_batch, checkpoint_activations, precision, .. } => {
                Some((*micro_batch, *checkpoint_activations, *precision))
            }
            _ => None,
        })
        .unwrap();
    let precisions: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| if let Event::Settings { precision, .. } = e { Some(precision.to_string()) } else { None })
        .collect();
    assert_eq!(precisions.len(), 2, "both precisions were trained: {precisions:?}");
    let vocab = events.iter().find_map(|e| if let Event::Started { derived, .. } = e { Some(derived.vocab_size) } else { None }).unwrap();
    let gcfg = GptConfig { vocab_size: vocab, block_size: 16, n_layer: 2, n_head: 2, n_embd: 32 };
    // plus the tokens (2 K B T) and dropout keys (4 K) of the last window begun: one stepped by hand since the last
    // step (it runs with the current B), else the last stepped window
    let last_step = events.iter().rposition(|e| matches!(e, Event::Step(_))).unwrap();
    let last = &steps.last().unwrap().metrics;
    let window_tokens = match events[last_step..].iter().rev().find_map(|e| if let Event::MicroBatch(r) = e { Some(r.of) } else { None }) {
        Some(k) => GpuGpt::window_tokens_len(&gcfg, final_b, k) as u64 * 4,
        None => GpuGpt::window_tokens_len(&gcfg, last.micro_batch, last.accum_steps) as u64 * 4,
    };
    let now = g.ledger.snapshot();
    // the slabs as laid out on this device (each tensor padded to TENSOR_ALIGN bytes)
    let limits = gradscope::model::layout::SlabLimits::of(&g);
    let slab = gradscope::model::memory::ModelSpec::Gpt(gcfg).slab_layout(limits).0;
    if cap.is_some() {
        assert!(slab.buffers.len() >= 2, "the cap splits the parameter slab: {:?}", slab.buffers);
    }
    let n = slab.bytes();
    assert_eq!(now.get(Category::Parameters) - before.get(Category::Parameters), n);
    assert_eq!(now.get(Category::Gradients) - before.get(Category::Gradients), n);
    assert_eq!(now.get(Category::OptimizerState) - before.get(Category::OptimizerState), 2 * n);
    assert_eq!(
        now.get(Category::Activations) - before.get(Category::Activations),
        GpuGpt::predicted_activation_bytes(&gcfg, final_b, final_ck, final_precision, limits, cfg.vocab_chunk, g.kernels().matmul()) + window_tokens,
        "activation bytes for the final B = {final_b}, checkpointing {final_ck}, precision {final_precision}"
    );
    s.controls.send(Control::Shutdown).unwrap();
    s.thread.join().unwrap();
    assert_eq!(g.ledger.snapshot(), before, "after shutdown every buffer is released");
}
