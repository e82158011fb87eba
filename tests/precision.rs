//! Mixed precision (f16 activations and activation gradients, f32 weights, gradients and AdamW
//! state) with dynamic loss scaling in the order of the accumulation contract: divide by the
//! window's count, then scale; constant scale within a window; unscale once at the step; a
//! window that overflows is skipped and halves the scale; clean windows grow it.
//!
//! Every GPU figure is compared with the f32 path on fresh random weights and data (the f32
//! path itself equals the CPU reference, see tests/accumulation.rs).

mod common;

use gradscope::gpu::Precision;
use gradscope::train::config::LossScaleOrder;
use gradscope::train::gpt::resolve_precision;
use gradscope::train::loss_scale::LossScaler;
use gradscope::train::verify::{first_window_gradient, gradient_rel_diff, verify};
use gradscope::train::{TrainConfig, Trainer};

/// A small GPT with every layer, fresh seeds for its weights and its data.
fn small(rng: &mut common::Rng, b: usize, k: usize) -> TrainConfig {
    TrainConfig {
        max_steps: 20,
        eval_windows: 16,
        seed: rng.next_u64() % 1_000_000,
        data_seed: rng.next_u64() % 1_000_000,
        ..common::small_gpt(b, k)
    }
}

/// The device for tests that run f16 kernels: an adapter without SHADER_F16 fails them with a
/// message instead of letting them test the f32 fallback.
fn f16_gpu() -> gradscope::gpu::Gpu {
    let g = common::gpu();
    common::require_f16(&g);
    g
}

fn f16(cfg: &TrainConfig) -> TrainConfig {
    TrainConfig { precision: Precision::F16, ..cfg.clone() }
}

fn finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

/// The mixed-precision window gradient (unscaled) is the f32 one up to f16 rounding: close
/// (a wrong f16 kernel, a missing unscale or a wrong scale is off by O(1) or more), and not
/// identical (the activations really are f16).
#[test]
fn mixed_precision_gradient_matches_f32_within_f16_rounding() {
    let g = f16_gpu();
    let mut rng = common::Rng::fresh("mixed precision gradient");
    for (b, k, padded, ck) in [(4, 3, false, false), (3, 4, true, false), (4, 2, false, true)] {
        let cfg = TrainConfig { padded, checkpoint_activations: ck, ..small(&mut rng, b, k) };
        let want = first_window_gradient(&g, &cfg).unwrap();
        let got = first_window_gradient(&g, &f16(&cfg)).unwrap();
        let d = gradient_rel_diff(&got, &want);
        println!("B {b} x K {k}, padded {padded}, checkpointing {ck}: f16 vs f32 window gradient max rel diff {d:.2e}");
        assert!(finite(&got), "the mixed-precision gradient is not finite");
        assert!(d < 5e-3, "f16 gradient differs from f32 by {d:.3e}");
        assert!(d > 1e-7, "f16 gradient equals the f32 one ({d:.1e}): the activations are not f16");
    }
}

/// The wrong orders of the contract change the gradient; the contract's does not.
/// - scaling before dividing: the loss weight is the scale instead of scale / count, the f16
///   logit gradients reach scale x (1 - p) and overflow (at 2^17 here) where the contract's
///   stay at scale / count;
/// - unscaling after every micro-batch: micro-batch j of K is divided by the scale K - j more
///   times than it should be.
#[test]
fn wrong_loss_scale_orders_change_the_gradient() {
    let g = f16_gpu();
    let mut rng = common::Rng::fresh("loss scale orders");
    let cfg = small(&mut rng, 4, 4);
    let want = first_window_gradient(&g, &cfg).unwrap();
    let with = |order: LossScaleOrder| {
        let c = TrainConfig { loss_scale: 131072.0, loss_scale_order: order, ..f16(&cfg) };
        first_window_gradient(&g, &c).unwrap()
    };
    let contract = with(LossScaleOrder::Contract);
    let d = gradient_rel_diff(&contract, &want);
    println!("contract order at scale 2^17: max rel diff {d:.2e}");
    assert!(finite(&contract) && d < 5e-3, "the contract's order should match f32, got {d:.3e}");

    let scale_first = with(LossScaleOrder::ScaleBeforeDivide);
    let bad = scale_first.iter().filter(|x| !x.is_finite()).count();
    println!("scale before divide: {bad} of {} gradient values non-finite", scale_first.len());
    assert!(bad > 0, "scaling before dividing should overflow the f16 activation gradients at 2^17");

    let per_micro = with(LossScaleOrder::UnscalePerMicroBatch);
    let d = gradient_rel_diff(&per_micro, &want);
    println!("unscaled per micro-batch: max rel diff {d:.2e}");
    assert!(finite(&per_micro), "unscaling per micro-batch does not overflow, it shrinks");
    assert!(d > 0.2, "unscaling per micro-batch should change the gradient, got {d:.3e}");
}

/// A scale too large overflows: the window is skipped on the device (weights and AdamW state
/// untouched, AdamW's step count does not advance), the scale halves until windows are clean,
/// and it doubles after `loss_scale_growth_interval` clean windows.
#[test]
fn overflow_skips_the_step_and_halves_the_scale_then_it_grows() {
    let g = f16_gpu();
    let mut rng = common::Rng::fresh("dynamic loss scale");
    let cfg = TrainConfig { loss_scale: 16_777_216.0, loss_scale_growth_interval: 2, ..f16(&small(&mut rng, 4, 2)) };
    let mut t = Trainer::new(&g, cfg).unwrap();
    let w0 = t.model.slabs().read_params().unwrap();
    let (m, _) = t.train_step().unwrap();
    println!("step 1: scale {:?}, skipped {}, |g| {}", m.loss_scale, m.skipped, m.grad_norm);
    assert_eq!(m.loss_scale, Some(16_777_216.0));
    assert!(m.skipped && m.train_loss.is_finite(), "scale 2^24 overflows the f16 gradients; the loss itself is finite");
    assert_eq!(t.model.slabs().read_params().unwrap(), w0, "a skipped window leaves the weights untouched");
    assert_eq!(t.adam_step, 0);
    assert_eq!(t.scaler.as_ref().unwrap().scale, 8_388_608.0, "an overflow halves the scale");

    // halving until a window is clean, then two clean windows double it
    let mut scales = vec![m.loss_scale.unwrap()];
    let mut clean_run = 0;
    let mut grew = false;
    for _ in 0..30 {
        let before = t.scaler.as_ref().unwrap().scale;
        let (m, _) = t.train_step().unwrap();
        scales.push(m.loss_scale.unwrap());
        assert_eq!(m.loss_scale, Some(before as f64), "the window used the scale set before it");
        let after = t.scaler.as_ref().unwrap().scale;
        if m.skipped {
            clean_run = 0;
            assert_eq!(after, before / 2.0);
        } else {
            clean_run += 1;
            if clean_run == 2 {
                assert_eq!(after, before * 2.0, "two clean windows double the scale");
                grew = true;
                clean_run = 0;
            } else {
                assert_eq!(after, before);
            }
        }
    }
    println!("scales: {scales:?}");
    assert!(grew, "the scale never grew: {scales:?}");
    assert!(t.adam_step > 0 && t.adam_step < t.step, "some windows were applied, some skipped");
}

#[test]
fn loss_scaler_rules() {
    let mut s = LossScaler::new(1024.0, 3);
    s.update(false);
    s.update(false);
    assert_eq!(s.scale, 1024.0);
    s.update(false);
    assert_eq!(s.scale, 2048.0, "grows after 3 clean windows");
    s.update(false);
    s.update(true);
    assert_eq!((s.scale, s.clean), (1024.0, 0), "an overflow halves and restarts the count");
    let mut s = LossScaler::new(1.0, 1);
    s.update(true);
    assert_eq!(s.scale, 1.0, "never below 1");
}

/// Mixed precision trains like f32: the accumulated f16 run against the f32 true batch, the
/// same check as `gradscope verify --precision f16` (tolerance 0.05 on the final validation
/// loss).
#[test]
fn verify_passes_in_mixed_precision() {
    let g = common::gpu();
    let cfg = TrainConfig {
        n_layer: 1, n_head: 2, n_embd: 32, block_size: 32, micro_batch: 4, accum_steps: 4, max_steps: 60, eval_every: 20,
        eval_windows: 64, precision: Precision::F16, ..TrainConfig::default()
    };
    let r = verify(&g, &cfg, 0.05, &mut |p| println!("{:>4} {:.4} {:.4}", p.step, p.true_batch, p.accumulated)).unwrap();
    println!("first gradient rel diff {:.2e}; final diff {:.4}; {}", r.first_gradient_rel_diff, r.final_diff, r.diagnosis);
    assert!(r.passed, "{}", r.diagnosis);
    assert!(r.curve.last().unwrap().accumulated < r.curve[0].accumulated - 0.5, "the f16 run learned");
}

/// The logits (the sampler reads them) come back from the f16 slab as f32 close to the f32 run's.
#[test]
fn f16_logits_read_back_close_to_f32() {
    let g = f16_gpu();
    let mut rng = common::Rng::fresh("f16 logits");
    let cfg = small(&mut rng, 2, 1);
    let logits = |cfg: TrainConfig| {
        let mut t = Trainer::new(&g, cfg).unwrap();
        let w = t.begin_window();
        let (x, y) = match &w.batches[0].inputs {
            gradscope::train::model::Inputs::Tokens(x) => (x.clone(), w.batches[0].targets.clone()),
            _ => unreachable!("the GPT's inputs are tokens"),
        };
        let gpt = t.gpt_mut().unwrap();
        gpt.gpu_model.forward_only(&x, &y);
        gpt.gpu_model.read_logits().unwrap()
    };
    let a = logits(cfg.clone());
    let b = logits(f16(&cfg));
    assert_eq!(a.len(), b.len());
    let d = gradient_rel_diff(&b, &a);
    println!("f16 vs f32 logits: max rel diff {d:.2e}");
    assert!(d < 1e-2 && d > 0.0, "logits differ by {d:.3e}");
}

/// Without SHADER_F16 the trainer says so and trains in f32.
#[test]
fn without_f16_the_trainer_falls_back_to_f32_with_a_message() {
    let (p, msg) = resolve_precision(Precision::F16, false, "Some GL adapter");
    assert_eq!(p, Precision::F32);
    let msg = msg.unwrap();
    assert!(msg.contains("SHADER_F16") && msg.contains("Some GL adapter") && msg.contains("f32"), "{msg}");
    assert_eq!(resolve_precision(Precision::F16, true, "x"), (Precision::F16, None));
    assert_eq!(resolve_precision(Precision::F32, false, "x"), (Precision::F32, None));
}

/// Mixed precision is refused where it does not apply, with the reason.
#[test]
fn mixed_precision_config_errors() {
    let load = |ov: &[&str]| TrainConfig::load(None, &ov.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let e = load(&["--model", "cnn", "--precision", "f16"]).unwrap_err().to_string();
    assert!(e.contains("GPT"), "{e}");
    let e = load(&["--precision", "f16", "--normalization", "per-micro-batch-mean"]).unwrap_err().to_string();
    assert!(e.contains("f16"), "{e}");
    let e = load(&["--loss_scale_order", "scale-before-divide"]).unwrap_err().to_string();
    assert!(e.contains("f16"), "{e}");
    let e = load(&["--precision", "f8"]).unwrap_err().to_string();
    assert!(e.contains("f8") || e.contains("precision"), "{e}");
    let e = load(&["--precision", "f16", "--loss_scale", "0.5"]).unwrap_err().to_string();
    assert!(e.contains("loss_scale"), "{e}");
    assert_eq!(load(&["--precision", "f16"]).unwrap().precision, Precision::F16);
}

/// The app's stepping view shows the same per-micro-batch figures in f16 as in f32: the
/// gradient slab holds the summed-loss gradient times scale / count in mixed precision, and the
/// view divides that weight out.
#[test]
fn stepping_view_figures_match_between_precisions() {
    use gradscope::train::events::{Event, MicroReport};
    use gradscope::train::live::{self, Control};
    let g = common::gpu();
    let mut rng = common::Rng::fresh("stepping view");
    let cfg = small(&mut rng, 3, 3);
    let reports = |cfg: TrainConfig| -> Vec<MicroReport> {
        let s = live::spawn(g.clone(), cfg, true, std::sync::Arc::new(|| {}));
        for _ in 0..3 {
            s.controls.send(Control::StepMicroBatch).unwrap();
        }
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        while out.len() < 3 {
            match s.events.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(Event::MicroBatch(r)) => out.push(r),
                Ok(Event::Error(e)) => panic!("{e}"),
                Ok(_) => {}
                Err(e) => panic!("no micro-batch report after {:?}: {e}", start.elapsed()),
            }
        }
        s.controls.send(Control::Shutdown).unwrap();
        s.thread.join().unwrap();
        out
    };
    let a = reports(cfg.clone());
    let b = reports(f16(&cfg));
    // the running mean gradient's norm |G_k| / (c_1 + .. + c_k) and the micro-batch's mean
    // gradient norm |g_k| / c_k
    let running = |r: &MicroReport| r.grad_stats.as_ref().unwrap().running_mean_grad_norms(None)[r.index].unwrap();
    let own = |r: &MicroReport| r.grad_stats.as_ref().unwrap().mean_grad_norm(r.index, None).unwrap();
    for (x, y) in a.iter().zip(&b) {
        let (gx, gy, mx, my) = (running(x), running(y), own(x), own(y));
        println!("micro-batch {}: |G| {gx:.4} vs {gy:.4}, |g| {mx:.4} vs {my:.4}, loss {:.4} vs {:.4}", x.index, x.loss, y.loss);
        for (p, q) in [(gx, gy), (mx, my), (x.loss, y.loss)] {
            assert!((p - q).abs() <= 5e-3 * p.abs(), "f32 {p} vs f16 {q}");
        }
    }
}

/// A mixed-precision checkpoint keeps the loss scale and its clean-window count: the resumed run
/// continues bit-exactly, where restarting at `loss_scale` would change the next windows.
#[test]
fn resume_keeps_the_loss_scale() {
    let g = f16_gpu();
    let mut rng = common::Rng::fresh("resume loss scale");
    // scale 2^24 overflows at first and halves; growth after 3 clean windows
    let cfg = TrainConfig { loss_scale: 16_777_216.0, loss_scale_growth_interval: 3, ..f16(&small(&mut rng, 4, 2)) };
    let mut straight = Trainer::new(&g, cfg.clone()).unwrap();
    for _ in 0..9 {
        straight.train_step().unwrap();
    }
    let mut first = Trainer::new(&g, cfg.clone()).unwrap();
    for _ in 0..5 {
        first.train_step().unwrap();
    }
    let saved = first.scaler.clone().unwrap();
    println!("after 5 windows: scale {} clean {}", saved.scale, saved.clean);
    assert!(saved.scale < cfg.loss_scale as f32, "the scale moved from its start: {saved:?}");
    let tmp = tempfile::Builder::new().prefix("gradscope-f16-resume-").tempdir().unwrap();
    let ck = tmp.path().join("ckpt.safetensors");
    first.save(&ck).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&g, &ck, &[]).unwrap();
    let _ = std::fs::remove_file(&ck);
    let r = resumed.scaler.clone().unwrap();
    assert_eq!((r.scale, r.clean), (saved.scale, saved.clean), "the loss scaler after resume");
    while resumed.step < 9 {
        resumed.train_step().unwrap();
    }
    let (a, b) = (straight.model.slabs().read_params().unwrap(), resumed.model.slabs().read_params().unwrap());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "parameters after resume differ from the straight run");
    let (s, r) = (straight.scaler.unwrap(), resumed.scaler.unwrap());
    assert_eq!((s.scale, s.clean), (r.scale, r.clean));
}
