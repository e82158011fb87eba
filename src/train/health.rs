//! Per-step figures and gradient health: non-finite values, loss spikes and gradient-norm
//! outliers judged against the recent history.

use crate::gpu::MemorySnapshot;
use crate::model::optim::{StepSettings, WindowFigures};

/// Figures of one optimizer step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepMetrics {
    /// 1-based optimizer step.
    pub step: usize,
    pub train_loss: f64,
    /// The GPT's validation loss, when this step evaluated.
    pub val_loss: Option<f64>,
    /// The CNN's test loss and accuracy (running statistics), when this step evaluated.
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub lr: f64,
    /// Global L2 norm of the normalized window gradient, before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
    /// ||parameter update|| / ||gradient|| of the step (gradient after normalization, before clip).
    pub update_grad_ratio: f64,
    /// The device skipped the AdamW step: the window's loss or gradient norm was non-finite, or
    /// the update would have written a non-finite weight or moment.
    pub skipped: bool,
    /// Mixed precision: the loss scale this window used (None in f32).
    pub loss_scale: Option<f64>,
    /// Counted items of the window (tokens or images): what the gradient was divided by.
    pub items: f64,
    /// The GPT's throughput (None for the CNN).
    pub tokens_per_s: Option<f64>,
    /// The CNN's throughput (None for the GPT).
    pub images_per_s: Option<f64>,
    /// Seconds since the run started (wall clock).
    pub wall_s: f64,
    pub micro_batch: usize,
    pub accum_steps: usize,
    pub memory: MemorySnapshot,
    pub health: Health,
    /// The gradient noise scale B_simple (McCandlish et al. 2018) smoothed over the windows so
    /// far, in samples (sequences or images): `b_simple_items` / counted items per sample.
    /// SGD's critical batch, a guide for Adam (`grad_stats` on, K >= 2; else None).
    pub b_simple: Option<f64>,
    /// The same in counted items (tokens or images).
    pub b_simple_items: Option<f64>,
    /// This window's own unbiased estimates, in counted-item units: |G|^2 of the mean gradient
    /// and tr(Sigma) of one item's gradient (`model::grad_stats::NoiseEstimate`).
    pub noise_g2: Option<f64>,
    pub noise_trace: Option<f64>,
}

impl StepMetrics {
    /// Record an evaluation: validation loss, or test loss and accuracy for a classifier.
    pub fn set_eval(&mut self, e: &crate::train::model::Evaluation) {
        match e.accuracy {
            Some(a) => (self.test_loss, self.test_accuracy) = (Some(e.loss), Some(a)),
            None => self.val_loss = Some(e.loss),
        }
    }

    /// Counted items (tokens or images) per second.
    pub fn per_s(&self) -> f64 {
        self.tokens_per_s.or(self.images_per_s).unwrap_or(0.0)
    }
}

/// The figures of a finished optimizer step. The device skipped AdamW if the window's loss or
/// norm was non-finite or the update would have been (`skipped`, what the device decided: it
/// tests the same values); `per_s` is counted items (of `unit`) per second.
#[allow(clippy::too_many_arguments)]
pub fn step_metrics(
    step: usize, fig: &WindowFigures, st: &StepSettings, health: &mut HealthMonitor, unit: &str, per_s: f64, b: usize,
    k: usize, memory: MemorySnapshot,
) -> StepMetrics {
    let skipped = !(fig.loss_sum.is_finite() && fig.grad_norm.is_finite()) || fig.update_nonfinite;
    let train_loss = fig.mean_loss();
    StepMetrics {
        step,
        train_loss,
        val_loss: None,
        test_loss: None,
        test_accuracy: None,
        lr: st.lr as f64,
        grad_norm: fig.grad_norm,
        clipped: st.grad_clip > 0.0 && fig.grad_norm > st.grad_clip as f64,
        update_grad_ratio: if skipped { 0.0 } else { fig.update_norm / fig.grad_norm.max(1e-30) },
        skipped,
        loss_scale: None,
        items: fig.count,
        tokens_per_s: (unit == "tokens").then_some(per_s),
        images_per_s: (unit != "tokens").then_some(per_s),
        wall_s: 0.0,
        micro_batch: b,
        accum_steps: k,
        memory,
        health: {
            let h = health.observe(train_loss, fig.grad_norm);
            Health { nonfinite: h.nonfinite || fig.update_nonfinite, ..h }
        },
        b_simple: None,
        b_simple_items: None,
        noise_g2: None,
        noise_trace: None,
    }
}

/// Gradient health of one step, judged against the recent history.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Health {
    /// The loss or the gradient norm is NaN or infinite, or the step's update would have been.
    pub nonfinite: bool,
    /// The loss is more than 4 standard deviations above the recent mean.
    pub loss_spike: bool,
    /// The gradient norm's z-score against the recent history exceeds 4.
    pub grad_outlier: bool,
}

impl Health {
    pub fn any(&self) -> bool {
        self.nonfinite || self.loss_spike || self.grad_outlier
    }
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if self.nonfinite {
            v.push("non-finite");
        }
        if self.loss_spike {
            v.push("loss spike");
        }
        if self.grad_outlier {
            v.push("grad-norm outlier");
        }
        v.join("+")
    }
}

/// Rolling statistics of the last `HEALTH_WINDOW` steps.
#[derive(Clone, Debug, Default)]
pub struct HealthMonitor {
    losses: std::collections::VecDeque<f64>,
    norms: std::collections::VecDeque<f64>,
}

const HEALTH_WINDOW: usize = 50;

fn zscore(hist: &std::collections::VecDeque<f64>, x: f64) -> f64 {
    if hist.len() < 10 {
        return 0.0;
    }
    let n = hist.len() as f64;
    let mean = hist.iter().sum::<f64>() / n;
    let var = hist.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    if var <= 0.0 { 0.0 } else { (x - mean) / var.sqrt() }
}

impl HealthMonitor {
    pub fn observe(&mut self, loss: f64, norm: f64) -> Health {
        let nonfinite = !loss.is_finite() || !norm.is_finite();
        let h = Health {
            nonfinite,
            loss_spike: !nonfinite && zscore(&self.losses, loss) > 4.0,
            grad_outlier: !nonfinite && zscore(&self.norms, norm).abs() > 4.0,
        };
        if !nonfinite {
            for (q, v) in [(&mut self.losses, loss), (&mut self.norms, norm)] {
                q.push_back(v);
                if q.len() > HEALTH_WINDOW {
                    q.pop_front();
                }
            }
        }
        h
    }
}

