//! Per-micro-batch gradient statistics (`grad_stats`) and the gradient noise scale: the device's
//! figures against the CPU reference on fresh random inputs (GPT fixed-length and padded, a short
//! last micro-batch, the CNN with GroupNorm and BatchNorm, slabs of several buffers), the fused
//! window against stepping by hand, the app's step-through Gram matrix, the memory model against
//! the ledger, and the noise scale on a linear regression with a known answer and on the GPT
//! against an estimate from many separate micro-batch gradients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use gradscope::gpu::{Category, MemorySnapshot};
use gradscope::model::cnn::BN_MOMENTUM;
use gradscope::model::grad_stats::{GradStats, NoiseScale};
use gradscope::model::memory::ModelSpec;
use gradscope::reference::cnn_model::{NormKind, cnn_forward_backward};
use gradscope::reference::gpt::gpt_forward_backward;
use gradscope::reference::linreg::LinReg;
use gradscope::reference::rng::Normal;
use gradscope::train::live::{self, Control};
use gradscope::train::model::{Inputs, MicroBatch};
use gradscope::train::plan::memory_options;
use gradscope::train::{Event, TrainConfig, Trainer};

/// A small GPT with every layer, statistics on.
fn gpt(b: usize, k: usize) -> TrainConfig {
    TrainConfig { max_steps: 50, eval_windows: 4, grad_stats: true, ..common::small_gpt(b, k) }
}

fn with_e(b: usize, e: usize) -> TrainConfig {
    TrainConfig { effective_batch: e, ..gpt(b, 1) }
}

fn digits(norm: NormKind, b: usize, e: usize) -> TrainConfig {
    let ov: Vec<String> = ["--model", "cnn", "--dataset", "digits"].iter().map(|s| s.to_string()).collect();
    TrainConfig { norm, micro_batch: b, accum_steps: 1, effective_batch: e, grad_stats: true, ..TrainConfig::load(None, &ov).unwrap() }
}

/// Fresh data order and weights for this run (the seed is printed).
fn fresh(cfg: TrainConfig, rng: &mut common::Rng) -> TrainConfig {
    TrainConfig { data_seed: rng.next_u64() >> 1, seed: rng.next_u64() >> 1, ..cfg }
}

/// The CPU reference's summed gradient (f64, each counted target weighing 1) of each micro-batch
/// of a window at `params`.
fn reference_micro_grads(t: &Trainer, params: &[f32], batches: &[MicroBatch]) -> Vec<Vec<f64>> {
    let p64: Vec<f64> = params.iter().map(|&x| x as f64).collect();
    batches
        .iter()
        .map(|mb| {
            let mut g = vec![0.0f64; p64.len()];
            match &mb.inputs {
                Inputs::Tokens(x) => {
                    let gc = t.gpt().unwrap().gcfg;
                    let (b, tt) = (t.cfg.micro_batch, gc.block_size);
                    let (_, c) = gpt_forward_backward(&gc, &p64, x, &mb.targets, b, tt, &mut g, 1.0);
                    assert_eq!(c as usize, mb.count);
                }
                Inputs::Pixels(x) => {
                    let cc = t.cnn().unwrap().ccfg;
                    let mut running: Vec<f64> = cc.running_init().iter().map(|&v| v as f64).collect();
                    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    let rows = mb.targets.len();
                    let (_, c, _) = cnn_forward_backward(&cc, &p64, &mut running, &x64, &mb.targets, rows, true, BN_MOMENTUM as f64, Some(&mut g), 1.0);
                    assert_eq!(c as usize, mb.count);
                }
            }
            g
        })
        .collect()
}

#[allow(clippy::needless_range_loop)]
/// Every figure of `got` against `want`: counts exactly, |g_k|^2 per tensor relative to itself
/// (with a floor of 1e-6 of the micro-batch's total), <g_k, G_{k-1}> relative to |g_k| |G_{k-1}|.
fn assert_stats_close(what: &str, got: &GradStats, want: &GradStats, tol: f64) {
    assert_eq!(got.tensors, want.tensors, "{what}: tensor names");
    assert_eq!(got.counts, want.counts, "{what}: counts");
    let mut worst = (0.0f64, 0.0f64);
    for k in 0..want.k() {
        let total = want.micro_sq_norm(k, None);
        let prev = if k == 0 { vec![0.0; want.tensors.len()] } else {
            (0..want.tensors.len()).map(|t| want.running_sq_norms(Some(t))[k - 1]).collect()
        };
        for t in 0..want.tensors.len() {
            let (g, w) = (got.sq_norm[k][t], want.sq_norm[k][t]);
            let e = (g - w).abs() / (w + 1e-6 * total).max(1e-300);
            worst.0 = worst.0.max(e);
            assert!(e < tol, "{what}: |g_{k}|^2 of {}: {g} vs {w}", want.tensors[t]);
            let (g, w) = (got.dot_prev[k][t], want.dot_prev[k][t]);
            let scale = (want.sq_norm[k][t] * prev[t]).sqrt() + 1e-6 * total;
            let e = (g - w).abs() / scale.max(1e-300);
            worst.1 = worst.1.max(e);
            assert!(e < tol, "{what}: <g_{k}, G_{}> of {}: {g} vs {w}", k as i64 - 1, want.tensors[t]);
        }
    }
    println!("{what}: worst relative error |g_k|^2 {:.1e}, <g_k, G_k-1> {:.1e}", worst.0, worst.1);
}

/// One window through the trainer (fused, one submission) with the statistics checked against
/// the CPU reference; returns the device's statistics.
fn check_window(what: &str, t: &mut Trainer) -> GradStats {
    let params = t.model.slabs().read_params().unwrap();
    let w = t.begin_window();
    let batches = w.batches.clone();
    let (m, fig) = t.finish_window(w).unwrap();
    let got = fig.grad_stats.clone().expect("grad_stats on: the window's statistics");
    let grads = reference_micro_grads(t, &params, &batches);
    let refs: Vec<&[f64]> = grads.iter().map(|g| g.as_slice()).collect();
    let counts: Vec<f64> = batches.iter().map(|b| b.count as f64).collect();
    let want = GradStats::from_gradients(&t.stats_tensors(), &counts, &refs);
    assert_stats_close(what, &got, &want, 1e-4);
    // the window's own norm from the statistics is the logged gradient norm (before clipping)
    let n = got.window_grad_norm(None);
    assert!((n - m.grad_norm).abs() <= 1e-3 * m.grad_norm, "{what}: |G_K| / C {n} vs grad norm {}", m.grad_norm);
    got
}

#[test]
fn device_statistics_equal_the_cpu_reference_gpt() {
    let g = common::gpu();
    let mut rng = common::Rng::fresh("device_statistics_equal_the_cpu_reference_gpt");
    // fixed length; padded (random lengths); 3 + 3 + 1 (a short last micro-batch), padded
    for (name, cfg) in [
        ("GPT 4 x 3", gpt(4, 3)),
        ("GPT 4 x 3 padded", TrainConfig { padded: true, ..gpt(4, 3) }),
        ("GPT 3 + 3 + 1 padded", TrainConfig { padded: true, ..with_e(3, 7) }),
    ] {
        let mut t = Trainer::new(&g, fresh(cfg, &mut rng)).unwrap();
        for window in 0..2 {
            let s = check_window(&format!("{name}, window {window}"), &mut t);
            assert_eq!(s.k(), t.cfg.windows_micro_batches());
            assert_eq!(s.tensors.len(), 4 + 12 * t.cfg.n_layer, "per checkpoint tensor, a layer each");
        }
    }
}

#[test]
fn device_statistics_equal_the_cpu_reference_cnn() {
    let g = common::gpu();
    let mut rng = common::Rng::fresh("device_statistics_equal_the_cpu_reference_cnn");
    // 8 + 8 + 4 images: a short last micro-batch
    for norm in [NormKind::Group, NormKind::Batch] {
        let mut t = Trainer::new(&g, fresh(digits(norm, 8, 20), &mut rng)).unwrap();
        for window in 0..2 {
            let s = check_window(&format!("CNN {norm:?}, window {window}"), &mut t);
            assert_eq!(s.counts, vec![8.0, 8.0, 4.0]);
        }
    }
}

/// Slabs cut into many buffers (a small binding cap): the per-buffer partial passes and the
/// embedding's row parts give the same statistics.
#[test]
fn device_statistics_over_many_buffers() {
    let g = common::gpu();
    g.set_binding_cap(Some(32 << 10));
    let mut rng = common::Rng::fresh("device_statistics_over_many_buffers");
    let mut t = Trainer::new(&g, fresh(TrainConfig { padded: true, ..gpt(2, 3) }, &mut rng)).unwrap();
    let buffers = t.model.slabs().grads.len();
    println!("gradient slab: {buffers} buffers");
    assert!(buffers >= 3, "the cap must split the slab");
    check_window("GPT, many buffers", &mut t);
}

/// The fused window (one submission) and stepping micro-batch by micro-batch (the app) measure
/// the same statistics, bit for bit; with K = 20 the figures buffer grows past 16 micro-batches.
#[test]
fn fused_and_stepped_windows_measure_the_same() {
    let g = common::gpu();
    for cfg in [gpt(4, 3), TrainConfig { padded: true, ..gpt(1, 20) }, digits(NormKind::Batch, 8, 20)] {
        let mut fused = Trainer::new(&g, cfg.clone()).unwrap();
        let mut stepped = Trainer::new(&g, cfg.clone()).unwrap();
        for _ in 0..2 {
            let (_, fa) = fused.train_step().unwrap();
            let mut w = stepped.begin_window();
            while !w.done() {
                stepped.run_micro(&mut w).unwrap();
            }
            let (_, fb) = stepped.finish_window(w).unwrap();
            let (a, b) = (fa.grad_stats.unwrap(), fb.grad_stats.unwrap());
            assert_eq!(a.k(), cfg.windows_micro_batches());
            assert_eq!(a, b, "{:?}: statistics of the fused and the stepped window", cfg.model);
        }
    }
}

/// Off: no statistics, no noise scale, and the memory of the statistics is released; K = 1: the
/// statistics but no noise scale (one micro-batch cannot tell noise from signal).
#[test]
fn switch_off_and_single_micro_batch() {
    let g = common::gpu();
    let mut t = Trainer::new(&g, TrainConfig { grad_stats: false, ..gpt(4, 2) }).unwrap();
    let (m, fig) = t.train_step().unwrap();
    assert!(fig.grad_stats.is_none() && m.b_simple.is_none() && m.noise_g2.is_none());
    let off = g.ledger.snapshot();
    t.set_grad_stats(true).unwrap();
    let (m, fig) = t.train_step().unwrap();
    assert!(fig.grad_stats.is_some() && m.b_simple.is_some() && m.noise_g2.is_some(), "{m:?}");
    t.set_grad_stats(false).unwrap();
    t.train_step().unwrap();
    assert_eq!(g.ledger.snapshot(), off, "turning the statistics off releases their buffers");
    let mut one = Trainer::new(&g, gpt(4, 1)).unwrap();
    let (m, fig) = one.train_step().unwrap();
    assert_eq!(fig.grad_stats.unwrap().k(), 1);
    assert!(m.b_simple.is_none() && m.noise_g2.is_none());
}

fn minus(a: MemorySnapshot, b: MemorySnapshot) -> MemorySnapshot {
    let mut d = MemorySnapshot::default();
    for c in Category::ALL {
        d.bytes[c.index()] = a.get(c) - b.get(c);
    }
    d
}

/// The statistics' memory in the memory model equals the byte ledger, GPT and CNN, f32 and f16,
/// K past 16, slabs of one and of several buffers.
#[test]
fn memory_prediction_with_statistics_equals_the_ledger() {
    let one = common::gpu();
    let many = common::gpu();
    many.set_binding_cap(Some(32 << 10));
    let f16 = |c: TrainConfig| TrainConfig { precision: gradscope::gpu::Precision::F16, ..c };
    for (g, cfg) in [
        (&one, gpt(4, 3)),
        (&one, TrainConfig { checkpoint_activations: true, ..gpt(2, 20) }),
        (&one, f16(gpt(4, 3))),
        (&many, gpt(2, 3)),
        (&one, digits(NormKind::Group, 8, 16)),
        (&one, digits(NormKind::Batch, 5, 85)),
    ] {
        let before = g.ledger.snapshot();
        let mut t = Trainer::new(g, cfg.clone()).unwrap();
        t.train_step().unwrap();
        let actual = minus(g.ledger.snapshot(), before);
        let spec = t.model.spec();
        let opts = memory_options(&t.cfg, g);
        assert!(opts.grad_stats);
        let predicted = spec.predict(t.cfg.micro_batch, t.cfg.windows_micro_batches(), 0, opts);
        let without = spec.predict(t.cfg.micro_batch, t.cfg.windows_micro_batches(), 0, gradscope::model::memory::MemoryOptions { grad_stats: false, ..opts });
        println!(
            "{:?} B{} K{}: predicted {:?}, ledger {:?}; the statistics take {} bytes",
            cfg.model, t.cfg.micro_batch, t.cfg.windows_micro_batches(), predicted.bytes, actual.bytes, predicted.total() - without.total()
        );
        for c in Category::ALL {
            assert_eq!(predicted.get(c), actual.get(c), "{:?}: {} predicted {} bytes, the ledger has {}", cfg.model, c.name(), predicted.get(c), actual.get(c));
        }
        assert_eq!(predicted.get(Category::Gradients), 2 * without.get(Category::Gradients), "G_(k-1) doubles the gradients");
        drop(t);
        assert_eq!(g.ledger.snapshot(), before);
    }
    let _ = ModelSpec::Gpt;
}

/// The app's step-through path: every micro-batch's report carries the window so far with the
/// exact Gram matrix (host), and the step's report the device's statistics with it; the Gram
/// matrix's diagonal and upper sums are the device's |g_k|^2 and <g_k, G_{k-1}>.
#[test]
#[allow(clippy::needless_range_loop)]
fn stepping_by_hand_gives_the_exact_gram_matrix() {
    let g = common::gpu();
    let k = 3;
    let s = live::spawn(g.clone(), gpt(4, k), true, Arc::new(|| {}));
    for _ in 0..k {
        s.controls.send(Control::StepMicroBatch).unwrap();
    }
    s.controls.send(Control::StepOptimizer).unwrap();
    let mut micro = Vec::new();
    let report = loop {
        match s.events.recv_timeout(Duration::from_secs(120)).expect("an event") {
            Event::MicroBatch(m) => micro.push(m),
            Event::Step(r) => break r,
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    };
    s.controls.send(Control::Shutdown).unwrap();
    s.thread.join().unwrap();
    assert_eq!(micro.len(), k);
    for (j, m) in micro.iter().enumerate() {
        let st = m.grad_stats.as_ref().expect("statistics while stepping");
        assert_eq!(st.k(), j + 1);
        assert!(st.gram.is_some());
    }
    let st = report.grad_stats.expect("the step's statistics");
    let gram = st.gram.clone().expect("every micro-batch stepped by hand: the Gram matrix");
    let hand = micro.last().unwrap().grad_stats.clone().unwrap();
    for j in 0..k {
        let d = st.micro_sq_norm(j, None);
        assert!((gram[j][j] - d).abs() <= 1e-3 * d, "diagonal {j}: {} vs {d}", gram[j][j]);
        let up: f64 = (0..j).map(|i| gram[i][j]).sum();
        let dp = st.micro_dot_prev(j, None);
        let scale = (d * st.running_sq_norms(None)[j.max(1) - 1]).sqrt();
        assert!((up - dp).abs() <= 1e-3 * scale, "<g_{j}, G_{}>: {up} vs {dp}", j as i64 - 1);
        let host = hand.micro_sq_norm(j, None);
        assert!((host - d).abs() <= 1e-3 * d, "host {host} vs device {d}");
        let c = st.cos_final(j).expect("exact with the Gram matrix");
        assert!((-1.0..=1.0).contains(&c));
    }
    assert_eq!(st.projection().unwrap().len(), k);
    assert!(report.metrics.b_simple.is_some());
}

/// Linear regression with a known noise covariance (the CPU reference): |G|^2 and tr(Sigma)
/// exact, the window estimator (unequal counts: padding, an empty and a short micro-batch)
/// smoothed as a ratio of moving averages gives B_simple within 10%.
#[test]
fn noise_scale_on_linear_regression_within_ten_percent() {
    let mut seed = common::Rng::fresh("noise_scale_on_linear_regression_within_ten_percent");
    let mut rng = Normal::new(seed.next_u64());
    for (lr, counts) in [
        (LinReg { r: vec![0.2; 8], sigma: 1.0 }, vec![16usize, 16, 16, 16]),
        (LinReg { r: vec![0.5, -0.3, 0.1, 0.0, 0.4], sigma: 0.3 }, vec![32, 32, 9, 0, 32, 20]),
    ] {
        let tensors = vec![("w".to_string(), 0, lr.d())];
        let mut ns = NoiseScale::new(0.999);
        for _ in 0..6000 {
            let grads: Vec<Vec<f64>> = counts.iter().map(|&c| lr.summed_gradient(&mut rng, c)).collect();
            let refs: Vec<&[f64]> = grads.iter().map(|g| g.as_slice()).collect();
            let cf: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
            ns.update(&GradStats::from_gradients(&tensors, &cf, &refs).noise(None).unwrap());
        }
        let (b, exact) = (ns.b_simple().unwrap(), lr.b_simple());
        println!("counts {counts:?}: B_simple {b:.2}, exact {exact:.2} (|G|^2 {:.4}, tr {:.4})", lr.true_grad_sq(), lr.trace_sigma());
        assert!((b - exact).abs() < 0.1 * exact, "B_simple {b} vs exact {exact}");
    }
}

/// On the GPT at fixed weights: the device's per-window estimates, averaged over windows,
/// against tr(Sigma) and |G|^2 estimated from the same micro-batch gradients read one by one and
/// pooled (the sample covariance of N separate micro-batch mean gradients).
#[test]
fn gpt_noise_scale_against_separate_micro_batch_gradients() {
    let g = common::gpu();
    let (b, k, windows) = (2, 4, 24);
    let mut t = Trainer::new(&g, gpt(b, k)).unwrap();
    // train a few steps so the gradient is not the initialization's
    for _ in 0..5 {
        t.train_step().unwrap();
    }
    let names = t.stats_tensors();
    let (mut g2_dev, mut tr_dev) = (0.0, 0.0);
    let mut means: Vec<Vec<f64>> = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..windows {
        let mut w = t.begin_window();
        let mut prev = vec![0.0f32; t.model.slabs().n];
        let mut grads = Vec::new();
        while !w.done() {
            t.run_micro(&mut w).unwrap();
            let acc = t.model.slabs().read_grads().unwrap();
            grads.push(acc.iter().zip(&prev).map(|(a, p)| (*a - *p) as f64).collect::<Vec<f64>>());
            prev = acc;
        }
        // the window's figures, without stepping: the weights stay fixed
        let fig = t.model.slabs().window_figures(k).unwrap();
        let st = fig.grad_stats.unwrap();
        let refs: Vec<&[f64]> = grads.iter().map(|v| v.as_slice()).collect();
        let host = GradStats::from_gradients(&names, &st.counts, &refs);
        assert_stats_close("window", &st, &host, 1e-4);
        let e = st.noise(None).unwrap();
        g2_dev += e.g2 / windows as f64;
        tr_dev += e.trace / windows as f64;
        for (gk, c) in grads.iter().zip(&st.counts) {
            means.push(gk.iter().map(|v| v / c).collect());
            counts.push(*c);
        }
    }
    // pooled: N micro-batch means of c targets each (fixed length: equal counts)
    assert!(counts.iter().all(|&c| c == counts[0]));
    let (n, c) = (means.len() as f64, counts[0]);
    let p = means[0].len();
    let mean: Vec<f64> = (0..p).map(|i| means.iter().map(|m| m[i]).sum::<f64>() / n).collect();
    let var: f64 = means.iter().map(|m| m.iter().zip(&mean).map(|(a, b)| (a - b).powi(2)).sum::<f64>()).sum::<f64>() / (n - 1.0);
    let tr_ref = c * var;
    let g2_ref = mean.iter().map(|v| v * v).sum::<f64>() - tr_ref / (n * c);
    let (b_dev, b_ref) = (tr_dev / g2_dev, tr_ref / g2_ref);
    println!(
        "device (mean of {windows} windows of K {k}): |G|^2 {g2_dev:.4e} tr {tr_dev:.4e} B_simple {b_dev:.1} tokens; \
         {n} separate micro-batches: |G|^2 {g2_ref:.4e} tr {tr_ref:.4e} B_simple {b_ref:.1} tokens"
    );
    assert!((tr_dev - tr_ref).abs() < 0.1 * tr_ref, "tr(Sigma): {tr_dev} vs {tr_ref}");
    assert!((b_dev - b_ref).abs() < 0.15 * b_ref, "B_simple: {b_dev} vs {b_ref}");
}

/// Mixed precision: the slab holds the gradient times the loss weight (scale / window count);
/// the trainer divides it out, so the statistics match f32's up to f16 rounding (a missing or a
/// squared-wrong division would be off by orders of magnitude).
#[test]
fn mixed_precision_statistics_match_f32() {
    let g = common::gpu();
    common::require_f16(&g);
    let cfg = TrainConfig { padded: true, ..with_e(3, 7) };
    let mut a = Trainer::new(&g, cfg.clone()).unwrap();
    let mut b = Trainer::new(&g, TrainConfig { precision: gradscope::gpu::Precision::F16, ..cfg }).unwrap();
    let (_, fa) = a.train_step().unwrap();
    let (_, fb) = b.train_step().unwrap();
    let (sa, sb) = (fa.grad_stats.unwrap(), fb.grad_stats.unwrap());
    assert_eq!(sa.counts, sb.counts);
    for k in 0..sa.k() {
        let (x, y) = (sa.micro_sq_norm(k, None), sb.micro_sq_norm(k, None));
        println!("micro-batch {k}: |g_k|^2 f32 {x:.6e}, f16 {y:.6e}");
        assert!((x - y).abs() < 0.02 * x, "|g_{k}|^2: f32 {x} vs f16 {y}");
        if k > 0 {
            let (p, q) = (sa.cos_running(k, None).unwrap(), sb.cos_running(k, None).unwrap());
            assert!((p - q).abs() < 0.02, "cosine with the sum so far: {p} vs {q}");
        }
    }
}

/// Within WebGPU's guaranteed limits (what a browser grants without asking: 256-byte storage
/// offsets, 8 storage buffers per stage) the statistics record, run and measure the same as on
/// the adapter's own limits, with no device error.
#[test]
fn statistics_within_webgpus_guaranteed_limits() {
    let choice = gradscope::gpu::AdapterChoice { name: std::env::var("GRADSCOPE_ADAPTER").ok() };
    let small = gradscope::gpu::Gpu::with_limits(&choice, Some(wgpu::Limits::default())).unwrap();
    let full = common::gpu();
    for cfg in [TrainConfig { padded: true, ..gpt(4, 3) }, digits(NormKind::Batch, 8, 20)] {
        let mut a = Trainer::new(&small, cfg.clone()).unwrap();
        let mut b = Trainer::new(&full, cfg).unwrap();
        for _ in 0..2 {
            let (_, fa) = a.train_step().unwrap();
            let (_, fb) = b.train_step().unwrap();
            assert_eq!(fa.grad_stats, fb.grad_stats);
        }
    }
    assert!(small.take_errors().is_empty() && full.take_errors().is_empty());
}
