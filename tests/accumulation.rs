//! The accumulation contract (DESIGN.md), rule by rule, on the GPU with a small GPT on Tiny
//! Shakespeare. Each test fails when its rule is broken: the broken normalizations are run
//! through the same checks and must differ.

mod common;

use gradscope::model::gpt::Normalization;
use gradscope::reference::gpt::gpt_forward_backward;
use gradscope::reference::layers as r;
use gradscope::train::config::ClipMode;
use gradscope::train::verify::{first_window_gradient, gradient_rel_diff};
use gradscope::train::{TrainConfig, Trainer};

/// A small GPT that still has every layer: 2 layers, 2 heads, C 32, T 16.
fn small(b: usize, k: usize) -> TrainConfig {
    TrainConfig { max_steps: 20, eval_windows: 16, ..common::small_gpt(b, k) }
}

fn with_e(b: usize, e: usize) -> TrainConfig {
    TrainConfig { effective_batch: e, ..small(b, 1) }
}

/// Rule 1 and 5: B x K (including a short last micro-batch) equals the true batch within 1e-5.
#[test]
fn accumulated_gradient_equals_true_batch_fixed_and_padded() {
    let g = common::gpu();
    for padded in [false, true] {
        let truth = first_window_gradient(&g, &TrainConfig { padded, ..small(12, 1) }).unwrap();
        // 4 x 3; 1 x 12; 5 + 5 + 2 (B*K not divisible: a short last micro-batch); 8 + 4
        for cfg in [small(4, 3), small(1, 12), with_e(5, 12), with_e(8, 12)] {
            let cfg = TrainConfig { padded, ..cfg };
            let acc = first_window_gradient(&g, &cfg).unwrap();
            let d = gradient_rel_diff(&acc, &truth);
            println!("padded {padded}: B {} x K {} (E {}): max rel diff {d:.2e}", cfg.micro_batch, cfg.windows_micro_batches(), cfg.effective());
            assert!(d < 1e-5, "accumulated gradient differs from the true batch by {d:.3e}");
        }
    }
}

/// Rule 1 has teeth: averaging per-micro-batch means on padded data is measurably wrong.
#[test]
fn per_micro_batch_mean_on_padded_data_differs() {
    let g = common::gpu();
    let truth = first_window_gradient(&g, &TrainConfig { padded: true, ..small(12, 1) }).unwrap();
    let broken = TrainConfig { padded: true, normalization: Normalization::PerMicroBatchMean, ..small(4, 3) };
    let d = gradient_rel_diff(&first_window_gradient(&g, &broken).unwrap(), &truth);
    println!("per-micro-batch mean, padded: max rel diff {d:.2e}");
    assert!(d > 1e-3, "the broken normalization should differ from the true batch, got {d:.3e}");
    // On fixed-length data with equal counts it coincides with the correct one (why the bug hid).
    let truth = first_window_gradient(&g, &small(12, 1)).unwrap();
    let same = TrainConfig { normalization: Normalization::PerMicroBatchMean, ..small(4, 3) };
    let d = gradient_rel_diff(&first_window_gradient(&g, &same).unwrap(), &truth);
    println!("per-micro-batch mean, fixed length: max rel diff {d:.2e}");
    assert!(d < 1e-5);
}

/// Rule 3 has teeth: clipping each micro-batch differs from clipping the global norm once.
#[test]
fn per_micro_batch_clipping_differs_from_global_clipping() {
    let g = common::gpu();
    let truth = first_window_gradient(&g, &small(12, 1)).unwrap();
    let norm = truth.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    // a threshold below each micro-batch's share of the norm, so per-micro-batch clipping acts
    let clip = norm * 0.15;
    // what the optimizer should see: the true gradient clipped once on its global norm
    let s = (clip / (norm + 1e-6)).min(1.0) as f32;
    let want: Vec<f32> = truth.iter().map(|x| x * s).collect();
    let broken = TrainConfig { clip_mode: ClipMode::PerMicroBatch, grad_clip: clip, ..small(4, 3) };
    let got = first_window_gradient(&g, &broken).unwrap();
    let got_norm = got.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let d = gradient_rel_diff(&got, &want);
    println!("global norm {norm:.4}, clip {clip:.4}: globally clipped norm {clip:.4}; per-micro-batch clipped sum norm {got_norm:.4}, rel diff {d:.2e}");
    assert!(d > 1e-2, "per-micro-batch clipping should change the update");
}

/// Rule 2: gradients are zeroed at micro-step 0: the second window's gradient does not depend
/// on the first window.
#[test]
fn each_window_starts_from_zero_gradients() {
    let g = common::gpu();
    let mut a = Trainer::new(&g, small(4, 2)).unwrap();
    a.accumulate_window().unwrap();
    a.accumulate_window().unwrap();
    let ga = a.model.slabs_mut().normalized_window_gradient(gradscope::model::gpt::WindowDivide::Count).unwrap();
    let mut b = Trainer::new(&g, small(4, 2)).unwrap();
    b.begin_window(); // skip the first window's samples
    b.accumulate_window().unwrap();
    let gb = b.model.slabs_mut().normalized_window_gradient(gradscope::model::gpt::WindowDivide::Count).unwrap();
    assert_eq!(ga, gb, "the second window's gradient must not include the first window's");
}

fn settings_of(cfg: &TrainConfig, step: usize) -> (f64, f64, f64, f64, f64) {
    (cfg.lr_at(step), cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay)
}

/// One full optimizer step on the GPU equals the CPU reference: the window's summed loss and
/// count, the gradient normalized by the window count, one global clip, AdamW with per-tensor
/// weight decay and bias correction from the optimizer step (not the micro-batch count).
#[test]
fn gpu_training_step_equals_cpu_reference() {
    let g = common::gpu();
    let mut cfg = TrainConfig { padded: true, ..with_e(3, 7) }; // micro-batches 3 + 3 + 1
    // first window's gradient, to pick a clip threshold that acts
    let g0 = first_window_gradient(&g, &cfg).unwrap();
    let norm0 = g0.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    cfg.grad_clip = norm0 * 0.7;
    let mut t = Trainer::new(&g, cfg.clone()).unwrap();
    let params0 = t.model.slabs().read_params().unwrap();
    // the same samples as the GPU window, drawn from a copy of the sampler
    let gpt = t.gpt().unwrap();
    let mut sampler = gpt.sampler.clone();
    let samples = sampler.window(&gpt.data.train, cfg.effective());
    let (m, fig) = t.train_step().unwrap();
    let params1 = t.model.slabs().read_params().unwrap();

    let gc = t.gpt().unwrap().gcfg;
    let tt = cfg.block_size;
    let p64: Vec<f64> = params0.iter().map(|&x| x as f64).collect();
    let mut grads = vec![0.0f64; p64.len()];
    let (mut loss_sum, mut count) = (0.0f64, 0u32);
    for s in &samples {
        // reduction = sum: every counted target weighs 1
        let (l, c) = gpt_forward_backward(&gc, &p64, &s.inputs, &s.targets, 1, tt, &mut grads, 1.0);
        loss_sum += l;
        count += c;
    }
    println!("window: GPU loss sum {:.6} count {}, CPU {loss_sum:.6} {count}", fig.loss_sum, fig.count);
    assert_eq!(fig.count as u32, count, "window count of targets");
    assert!((fig.loss_sum - loss_sum).abs() <= 1e-4 * loss_sum.abs(), "window loss sum");
    let n = grads.len();
    r::scale(&mut grads, 1.0 / count as f64, n);
    let norm = r::grad_norm(&grads, n);
    assert!((fig.grad_norm - norm).abs() <= 1e-4 * norm, "grad norm {} vs {norm}", fig.grad_norm);
    assert!(m.clipped, "the threshold was chosen so that clipping acts");
    r::scale(&mut grads, (cfg.grad_clip / (norm + 1e-6)).min(1.0), n);
    let (lr, b1, b2, eps, wd) = settings_of(&cfg, 0);
    let mut want = p64.clone();
    let offs = gc.param_offsets();
    let sizes = gc.param_sizes();
    for i in 0..16 {
        let (o, len) = (offs[i], sizes[i]);
        let decay = if gradscope::model::gpt::decays(i) { wd } else { 0.0 };
        let (mut mm, mut vv) = (vec![0.0; len], vec![0.0; len]);
        r::adamw(&mut want[o..o + len], &grads[o..o + len], &mut mm, &mut vv, len, lr, b1, b2, eps, decay, 1);
    }
    // Compare the update (params1 - params0) with the reference update. AdamW's first step moves
    // each weight by about lr * sign(g), so a wrong gradient sign or a wrong bias correction
    // shows as an error of order lr; rounding stays far below.
    let mut worst = 0.0f64;
    for i in 0..n {
        let got = params1[i] as f64 - params0[i] as f64;
        let exp = want[i] - p64[i];
        // entries whose gradient is within rounding of zero can flip sign; skip those
        if grads[i].abs() < 1e-6 * norm {
            continue;
        }
        worst = worst.max((got - exp).abs());
    }
    println!("max |update - reference update| = {worst:.2e} (lr {lr})");
    assert!(worst < 1e-3 * lr, "the GPU step differs from the CPU reference step by {worst:.3e}");
}

/// Rule 4: the step counter, the schedule and logged steps advance per optimizer step.
#[test]
fn schedule_and_step_counter_advance_per_window() {
    let g = common::gpu();
    let cfg = TrainConfig {
        schedule: gradscope::train::config::Schedule::Cosine,
        warmup_steps: 2,
        max_steps: 6,
        ..small(2, 4)
    };
    let mut t = Trainer::new(&g, cfg.clone()).unwrap();
    for s in 1..=3 {
        let (m, _) = t.train_step().unwrap();
        assert_eq!(m.step, s, "one logged step per window of K = 4 micro-batches");
        assert_eq!(t.step, s);
        assert!((m.lr - cfg.lr_at(s - 1)).abs() < 1e-6 * cfg.lr, "lr of step {s}: {} vs {}", m.lr, cfg.lr_at(s - 1));
        assert_eq!(m.accum_steps, 4);
    }
    // warmup then cosine to min_lr
    assert!((cfg.lr_at(0) - cfg.lr / 2.0).abs() < 1e-12);
    assert!((cfg.lr_at(1) - cfg.lr).abs() < 1e-12);
    assert!((cfg.lr_at(6) - cfg.min_lr).abs() < 1e-12);
}

#[test]
fn loss_decreases_on_tiny_shakespeare() {
    let g = common::gpu();
    let cfg = TrainConfig { max_steps: 60, lr: 1e-2, ..small(8, 2) };
    let mut t = Trainer::new(&g, cfg).unwrap();
    let before = t.eval().unwrap();
    let mut first = None;
    let mut last = 0.0;
    while t.step < 60 {
        let (m, _) = t.train_step().unwrap();
        first.get_or_insert(m.train_loss);
        last = m.train_loss;
    }
    let after = t.eval().unwrap();
    println!("validation loss {before:.4} -> {after:.4}; train loss {:.4} -> {last:.4}", first.unwrap());
    assert!((before - (65f64).ln()).abs() < 0.1, "an untrained model predicts ~uniformly: {before}");
    assert!(after < 3.5, "60 steps should bring the validation loss well below ln(65) = 4.17, got {after}");
}

/// `train`, `bench` and `verify` run a window and its step as one submission (the window's
/// inputs uploaded once, copied between runs), counted through the gpu layer, and it trains
/// bit for bit like one submission per micro-batch (the path the app's stepping takes), for
/// the GPT and the CNN.
#[test]
fn one_submission_per_window_equals_one_per_micro_batch() {
    let g = common::gpu();
    let cnn: Vec<String> = ["--model", "cnn", "--dataset", "digits", "--micro_batch", "8", "--accum_steps", "3"].map(String::from).to_vec();
    let cnn = TrainConfig::load(None, &cnn).unwrap();
    // K = 20 also checks that no micro-batch's figures are lost when the figures buffer grows
    for cfg in [small(4, 3), with_e(5, 12), TrainConfig { padded: true, ..small(3, 4) }, small(1, 20), cnn] {
        let mut fused = Trainer::new(&g, cfg.clone()).unwrap();
        let mut stepped = Trainer::new(&g, cfg.clone()).unwrap();
        for _ in 0..3 {
            let before = g.work_submissions();
            let (a, fa) = fused.train_step().unwrap();
            assert_eq!(g.work_submissions() - before, 1, "{:?}: a window and its step are one submission", cfg.model);
            let before = g.work_submissions();
            let mut w = stepped.begin_window();
            let k = w.len() as u64;
            while !w.done() {
                stepped.run_micro(&mut w).unwrap();
            }
            let (b, fb) = stepped.finish_window(w).unwrap();
            assert_eq!(g.work_submissions() - before, k + 1, "stepping: one submission per micro-batch, one for the step");
            assert_eq!(a.train_loss.to_bits(), b.train_loss.to_bits());
            assert_eq!(fa.micro, fb.micro, "per-micro-batch figures");
            assert_eq!(fa.micro.len(), cfg.windows_micro_batches());
            assert!(fa.micro.iter().all(|&(loss, count)| count > 0.0 && loss > 0.0), "{:?}", fa.micro);
            assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits());
        }
        assert_eq!(fused.model.slabs().read_params().unwrap(), stepped.model.slabs().read_params().unwrap());
    }
}
