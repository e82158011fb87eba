//! The statistics the window view shows for a window stepped by hand (`train::live`): the host
//! reads each micro-batch's gradient, so its figures must agree with what the device computes
//! on its own path (the step's global gradient norm, from the fused grad-norm reduction), and
//! with themselves (the Gram matrix's diagonal is each micro-batch's squared norm; the
//! projected arrows add up to the final gradient). On padded data, whose micro-batches count
//! different numbers of tokens.

mod common;

use gradscope::train::TrainConfig;
use gradscope::train::events::Event;
use gradscope::train::live::{self, Control};

#[test]
fn a_window_stepped_by_hand_agrees_with_the_device_step() {
    let g = common::gpu();
    let mut rng = common::Rng::fresh("window view");
    let k = 4;
    let cfg = TrainConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 32,
        block_size: 16,
        micro_batch: 3,
        accum_steps: k,
        padded: true,
        grad_clip: 0.0,
        max_steps: 5,
        eval_windows: 8,
        eval_every: 0,
        seed: rng.next_u64() % 1_000_000,
        data_seed: rng.next_u64() % 1_000_000,
        out_dir: std::env::temp_dir().join("gradscope-test-runs").display().to_string(),
        ..TrainConfig::default()
    };
    let s = live::spawn(g.clone(), cfg, true, std::sync::Arc::new(|| {}));
    // one micro-batch by hand, then the optimizer step runs the rest micro-batch by micro-batch
    s.controls.send(Control::StepMicroBatch).unwrap();
    s.controls.send(Control::StepOptimizer).unwrap();
    let mut micro = Vec::new();
    let report = loop {
        match s.events.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(Event::MicroBatch(r)) => micro.push(r),
            Ok(Event::Step(r)) => break r,
            Ok(Event::Error(e)) => panic!("{e}"),
            Ok(_) => {}
            Err(e) => panic!("no step: {e}"),
        }
    };
    s.controls.send(Control::Shutdown).unwrap();
    s.thread.join().unwrap();
    assert_eq!(micro.len(), k, "every micro-batch of the window is reported");
    for (i, r) in micro.iter().enumerate() {
        assert_eq!((r.index, r.of, r.grad_stats.as_ref().map(|s| s.k())), (i, k, Some(i + 1)), "the statistics of the window so far");
    }
    let st = report.grad_stats.as_ref().expect("a window stepped by hand carries its statistics");
    assert_eq!(st.k(), k);
    let counts: Vec<f64> = micro.iter().map(|r| r.tokens).collect();
    assert_eq!(st.counts, counts);
    assert!(counts.iter().any(|c| *c != counts[0]), "padded micro-batches count different tokens: {counts:?}");
    // the host's window gradient norm against the device's
    let host = st.window_grad_norm(None);
    let device = report.metrics.grad_norm;
    println!("grad norm: host {host:.6}, device {device:.6}; counts {counts:?}");
    assert!((host - device).abs() <= 1e-4 * device, "host {host} vs device {device}");
    // per tensor adds up to the total, the Gram diagonal is each |g_k|^2
    let gram = st.gram.as_ref().expect("the Gram matrix of a small window is kept");
    for (j, row) in gram.iter().enumerate() {
        let total = st.micro_sq_norm(j, None);
        let per: f64 = (0..st.tensors.len()).map(|t| st.micro_sq_norm(j, Some(t))).sum();
        assert!((per - total).abs() <= 1e-9 * total);
        assert!((row[j] - total).abs() <= 1e-6 * total, "gram[{j}][{j}] {} vs |g|^2 {total}", row[j]);
        for (i, other) in gram.iter().enumerate() {
            assert_eq!(row[i], other[j], "symmetric");
        }
    }
    // the running sum's norm from the inner products equals the norm of the summed Gram matrix
    let sum_gram: f64 = gram.iter().flatten().sum();
    assert!((st.window_sq_norm(None) - sum_gram).abs() <= 1e-6 * sum_gram);
    // the arrows add up to (|G|, 0)
    let proj = st.projection().unwrap();
    let (x, y) = proj.iter().fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
    let gn = st.window_sq_norm(None).sqrt();
    assert!((x - gn).abs() <= 1e-6 * gn && y.abs() <= 1e-6 * gn, "({x}, {y}) vs ({gn}, 0)");
    let names = report.update_ratios.as_ref().expect("a step by hand measures the update per tensor");
    assert_eq!(names.iter().map(|n| n.0.clone()).collect::<Vec<_>>(), st.tensors, "the same named tensors");
}
