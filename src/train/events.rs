//! The one protocol from the trainer to its renderers (progress bar, log lines, metrics files,
//! the app), as burn-train's event seam: `Trainer::run` emits these, the live session emits the
//! same ones (plus its own: settings, pausing, stepping by hand) and forwards them to the app.

use std::path::PathBuf;

use crate::gpu::Precision;

use super::config::TrainConfig;
use super::health::StepMetrics;
use super::model::Evaluation;
use super::trainer::Derived;

/// One micro-batch, as the stepping panel shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct MicroReport {
    /// The optimizer step this window will make (1-based).
    pub step: usize,
    pub index: usize,
    pub of: usize,
    /// Mean loss over this micro-batch's counted targets.
    pub loss: f64,
    pub tokens: f64,
    /// The window so far (micro-batches 0..=index) as gradient statistics, per tensor (the
    /// checkpoint tensors), measured on the host (it reads every gradient while stepping by
    /// hand), with the exact Gram matrix of the micro-batch gradients (None past
    /// `live::GRAM_HOST_BYTES`): the window view's figures.
    pub grad_stats: Option<crate::model::grad_stats::GradStats>,
}

/// One optimizer step with its micro-batches and, when stepped by hand, the details.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub metrics: StepMetrics,
    /// Per micro-batch: (mean loss, counted targets).
    pub micro: Vec<(f64, f64)>,
    /// Per tensor ||update|| / ||weight|| (stepping only).
    pub update_ratios: Option<Vec<(String, f64)>>,
    /// The window's per-micro-batch gradient statistics (`grad_stats` on; with the exact Gram
    /// matrix when the window was stepped by hand).
    pub grad_stats: Option<crate::model::grad_stats::GradStats>,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// A run started (or its B, K, checkpointing or precision changed): what it trains.
    Started { derived: Derived, config: TrainConfig },
    /// Settings in effect (confirms the app's pending changes).
    Settings {
        micro_batch: usize,
        accum_steps: usize,
        lr: f64,
        grad_clip: f64,
        checkpoint_activations: bool,
        precision: Precision,
    },
    Paused(bool),
    /// Stepping by hand: one micro-batch ran.
    MicroBatch(MicroReport),
    /// An optimizer step (emitted after the step's evaluation, whose figures it carries).
    Step(Box<StepReport>),
    /// Held-out evaluation after optimizer step `step` (`epoch`: completed epochs, for models
    /// that train in epochs).
    Eval { step: usize, epoch: Option<u64>, eval: Evaluation },
    /// A checkpoint was written.
    Checkpoint { step: usize, path: PathBuf },
    /// Device time per kernel entry point of one micro-batch (seconds), largest first, after
    /// optimizer step `step`.
    Profile { step: usize, micro_batch: usize, kernels: Vec<(String, f64)> },
    /// A control that could not be applied, or a failed run; the live session keeps going if it
    /// can.
    Error(String),
    /// `max_steps` reached (with the final evaluation, when the run made one).
    Finished { step: usize, eval: Option<Evaluation> },
}
