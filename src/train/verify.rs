//! `gradscope verify`: the accumulation check every user should run in CI (contract rule 8).
//!
//! The same model is trained twice from the same seed and data: once with a true batch of E
//! sequences (B = E, K = 1) and once with micro-batches B x K = E. Both see the same samples in the
//! same order (the sampler draws E per step). Two figures are compared:
//! - the gradient of the first window, before any step: correct accumulation equals the true
//!   batch up to float rounding (relative difference ~1e-6);
//! - the validation-loss curves; after `steps` (100+) the final losses must differ by less than
//!   the tolerance (0.02).
//! Broken settings (`normalization = per-micro-batch-mean` on padded data, per-micro-batch
//! clipping) are applied to the accumulated run only (with K = 1 they coincide with the correct
//! ones), so the check shows what it catches.
//!
//! With `precision = f16` the accumulated run trains in mixed precision (f16 activations, loss
//! scaling) against the f32 true batch: f16 rounding moves the first gradient by ~1e-3 relative,
//! so its tolerance is 1e-2, and the final losses must agree within 0.05.

use crate::gpu::Gpu;

use super::config::TrainConfig;
use super::trainer::Trainer;

#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyPoint {
    pub step: usize,
    pub true_batch: f64,
    pub accumulated: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    pub effective_batch: usize,
    pub micro_batch: usize,
    pub accum_steps: usize,
    pub steps: usize,
    /// max_i |g_acc - g_true| / max_i |g_true| of the first window's normalized gradient.
    pub first_gradient_rel_diff: f64,
    pub gradient_tolerance: f64,
    pub curve: Vec<VerifyPoint>,
    pub final_diff: f64,
    pub max_diff: f64,
    pub tolerance: f64,
    pub passed: bool,
    pub diagnosis: String,
}

/// Relative difference of two gradients: max |a - b| over max |b|.
pub fn gradient_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64)).max(1e-30);
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs())) / scale
}

/// The first window's gradient tolerance: float rounding in f32, f16 rounding of the activations
/// in mixed precision.
pub fn gradient_tolerance(cfg: &TrainConfig) -> f64 {
    match cfg.precision {
        crate::gpu::Precision::F32 => 1e-4,
        crate::gpu::Precision::F16 => 1e-2,
    }
}

/// The default final-loss tolerance: 0.02, or 0.05 in mixed precision.
pub fn default_tolerance(cfg: &TrainConfig) -> f64 {
    match cfg.precision {
        crate::gpu::Precision::F32 => 0.02,
        crate::gpu::Precision::F16 => 0.05,
    }
}

/// Run the check. `accumulated` is the B x K config (with any broken setting); the true-batch
/// run uses the same config with B = E, K = 1 and the correct settings.
pub fn verify(
    gpu: &Gpu,
    accumulated: &TrainConfig,
    tolerance: f64,
    on_point: &mut dyn FnMut(&VerifyPoint),
) -> anyhow::Result<VerifyReport> {
    let e = accumulated.effective();
    let truth = TrainConfig {
        micro_batch: e,
        accum_steps: 1,
        effective_batch: 0,
        normalization: Default::default(),
        clip_mode: Default::default(),
        precision: crate::gpu::Precision::F32,
        loss_scale_order: Default::default(),
        ..accumulated.clone()
    };
    let gradient_tolerance = gradient_tolerance(accumulated);
    // 1. the first window's gradient, on fresh trainers
    let g_true = first_window_gradient(gpu, &truth)?;
    let g_acc = first_window_gradient(gpu, accumulated)?;
    let grad_diff = gradient_rel_diff(&g_acc, &g_true);

    // 2. the validation curves
    let mut a = Trainer::new(gpu, truth)?;
    let mut b = Trainer::new(gpu, accumulated.clone())?;
    let steps = accumulated.max_steps;
    let every = if accumulated.eval_every == 0 { steps } else { accumulated.eval_every };
    let mut curve = Vec::new();
    let p0 = VerifyPoint { step: 0, true_batch: a.eval()?, accumulated: b.eval()? };
    on_point(&p0);
    curve.push(p0);
    while a.step < steps {
        a.train_step()?;
        b.train_step()?;
        if a.step % every == 0 || a.step == steps {
            let p = VerifyPoint { step: a.step, true_batch: a.eval()?, accumulated: b.eval()? };
            on_point(&p);
            curve.push(p);
        }
    }
    let last = curve.last().unwrap();
    let final_diff = (last.true_batch - last.accumulated).abs();
    let max_diff = curve.iter().map(|p| (p.true_batch - p.accumulated).abs()).fold(0.0, f64::max);
    let grad_ok = grad_diff <= gradient_tolerance;
    let loss_ok = final_diff < tolerance && final_diff.is_finite();
    let passed = grad_ok && loss_ok;
    let mut diagnosis = String::new();
    if !grad_ok {
        diagnosis.push_str(&format!(
            "the first window's accumulated gradient differs from the true batch's by {grad_diff:.2e} (relative; \
             correct accumulation gives ~1e-6 in f32, ~1e-3 with f16 activations). "
        ));
    }
    if !loss_ok {
        diagnosis.push_str(&format!(
            "final validation losses differ by {final_diff:.4} (tolerance {tolerance}). "
        ));
    }
    if !passed {
        diagnosis.push_str(&explain(accumulated));
    } else {
        diagnosis = "accumulation matches the true batch".into();
    }
    Ok(VerifyReport {
        effective_batch: e,
        micro_batch: accumulated.micro_batch,
        accum_steps: accumulated.windows_micro_batches(),
        steps,
        first_gradient_rel_diff: grad_diff,
        gradient_tolerance,
        curve,
        final_diff,
        max_diff,
        tolerance,
        passed,
        diagnosis,
    })
}

fn explain(cfg: &TrainConfig) -> String {
    use crate::model::gpt::Normalization;
    let mut s = String::new();
    if cfg.normalization == Normalization::PerMicroBatchMean {
        s.push_str(
            "Cause: each micro-batch's loss is averaged over its own token count and the means are divided by K; \
             micro-batches with fewer counted tokens weigh more. Sum the losses over the window and divide once by \
             the window's total count (normalization = window-count).",
        );
    }
    if cfg.clip_mode == super::config::ClipMode::PerMicroBatch {
        s.push_str(
            "Cause: each micro-batch's gradient is clipped on its own norm; clip once, on the global norm of the whole \
             accumulated gradient, just before the optimizer step (clip_mode = global).",
        );
    }
    if cfg.precision == crate::gpu::Precision::F16 {
        match cfg.loss_scale_order {
            super::config::LossScaleOrder::ScaleBeforeDivide => s.push_str(
                "Cause: the loss is scaled before it is divided by the window's count, so the f16 activation gradients are \
                 count times larger and overflow (skipped steps, a collapsing scale). Divide by the count first, then scale \
                 (loss_scale_order = contract).",
            ),
            super::config::LossScaleOrder::UnscalePerMicroBatch => s.push_str(
                "Cause: the accumulated gradient is unscaled after every micro-batch, so earlier micro-batches are divided by \
                 the scale again and again. Unscale once, at the step (loss_scale_order = contract).",
            ),
            super::config::LossScaleOrder::Contract => {}
        }
    }
    if s.is_empty() {
        s.push_str("Check the accumulation settings; with the defaults this check passes.");
    }
    s
}

/// The normalized gradient of the first window of a fresh trainer.
pub fn first_window_gradient(gpu: &Gpu, cfg: &TrainConfig) -> anyhow::Result<Vec<f32>> {
    let mut t = Trainer::new(gpu, cfg.clone())?;
    t.accumulate_window()?;
    t.window_gradient()
}
