//! The per-kernel profile the app shows: every kernel of a micro-batch timed with timestamp
//! queries, and taking a profile between windows changes nothing about training (gradients,
//! window figures, BatchNorm running statistics).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gradscope::reference::cnn_model::NormKind;
use gradscope::train::Trainer;
use gradscope::train::live::{self, Control};
use gradscope::train::Event;
use gradscope::train::TrainConfig;

fn gpt() -> TrainConfig {
    TrainConfig {
        n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, micro_batch: 4, accum_steps: 2, max_steps: 100, eval_every: 0,
        eval_windows: 4, ..TrainConfig::default()
    }
}

fn cnn_batchnorm() -> TrainConfig {
    let ov: Vec<String> = ["--model", "cnn", "--dataset", "digits"].iter().map(|s| s.to_string()).collect();
    TrainConfig { norm: NormKind::Batch, micro_batch: 8, accum_steps: 2, ..TrainConfig::load(None, &ov).unwrap() }
}

#[test]
fn profiling_between_windows_changes_nothing() {
    let g = common::gpu();
    if !g.has_timestamps() {
        // the error path is the feature here: a clear message instead of a profile
        let mut t = Trainer::new(&g, gpt()).unwrap();
        let e = t.profile_kernels().unwrap_err().to_string();
        println!("skipped: timestamp queries missing ({e})");
        assert!(e.contains("no timestamp queries"), "{e}");
        return;
    }
    for cfg in [gpt(), cnn_batchnorm()] {
        let mut plain = Trainer::new(&g, cfg.clone()).unwrap();
        let mut profiled = Trainer::new(&g, cfg.clone()).unwrap();
        let mut names = Vec::new();
        for _ in 0..2 {
            let (a, _) = run_step(&mut plain);
            let kernels = profiled.profile_kernels().unwrap();
            let (b, _) = run_step(&mut profiled);
            assert_eq!(a.train_loss.to_bits(), b.train_loss.to_bits(), "a profile changed the window's loss");
            assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits(), "a profile changed the window's gradient");
            names = kernels.iter().map(|k| k.0.clone()).collect::<Vec<_>>();
            let total: f64 = kernels.iter().map(|k| k.1).sum();
            println!("{:?}: {} kernels, {:.2} ms; largest {:?}", cfg.model, kernels.len(), total * 1e3, &kernels[..3.min(kernels.len())]);
            assert!(kernels.iter().all(|k| k.1 >= 0.0 && k.1.is_finite()));
            assert!(kernels.windows(2).all(|w| w[0].1 >= w[1].1), "largest first");
            assert!(total > 0.0);
        }
        assert_eq!(plain.model.slabs().read_params().unwrap(), profiled.model.slabs().read_params().unwrap(), "weights after two steps");
        if let (Some(a), Some(b)) = (plain.cnn(), profiled.cnn()) {
            assert_eq!(a.gpu_model.read_running().unwrap(), b.gpu_model.read_running().unwrap(), "BatchNorm running statistics");
            assert!(names.iter().any(|n| n == "batchnorm_forward_train"), "{names:?}");
        } else {
            // (the kernel family's names: matmul_forward, matmul_forward_cpu or _gpu;
            // attention_forward, the attention_*_cpu blocks or flash_attention_*)
            for k in ["matmul_forward", "attention_", "layernorm_forward", "crossentropy_chunk_backward"] {
                assert!(names.iter().any(|n| n.starts_with(k) || n.starts_with(&format!("flash_{k}"))), "{k} missing from {names:?}");
            }
        }
    }
}

fn run_step(t: &mut Trainer) -> (gradscope::train::StepMetrics, ()) {
    let w = t.begin_window();
    let (m, _) = t.finish_window(w).unwrap();
    (m, ())
}

/// The app's path: `ProfileKernels` through the live session's channel.
#[test]
fn the_live_session_answers_a_profile_request() {
    let g = common::gpu();
    let s = live::spawn(g.clone(), gpt(), true, Arc::new(|| {}));
    s.controls.send(Control::StepOptimizer).unwrap();
    s.controls.send(Control::ProfileKernels).unwrap();
    let start = Instant::now();
    let answer = loop {
        match s.events.recv_timeout(Duration::from_secs(60)).expect("an answer") {
            Event::Profile { step, micro_batch, kernels } => break Ok((step, micro_batch, kernels)),
            Event::Error(e) => break Err(e),
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(60));
    };
    s.controls.send(Control::Shutdown).unwrap();
    s.thread.join().unwrap();
    match answer {
        Ok((step, b, kernels)) => {
            assert_eq!((step, b), (1, 4));
            assert!(!kernels.is_empty());
        }
        Err(e) => {
            assert!(!g.has_timestamps(), "profile failed on an adapter with timestamps: {e}");
            println!("skipped: timestamp queries missing ({e})");
        }
    }
}
