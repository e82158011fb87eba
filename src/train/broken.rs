//! The deliberately broken accumulation settings, kept in one place so that `verify` and the
//! tests can show what each one does and that the check catches it. None of them is on the
//! trainer's fused path: each runs its micro-batches one submission at a time, with the host
//! work between them that the mistake needs.
//!
//! - `normalization = per-micro-batch-mean`: each micro-batch's mean loss divided by K (the
//!   Oct-2024 bug; wrong when micro-batches have different counts);
//! - `clip_mode = per-micro-batch`: each micro-batch's gradient clipped on its own norm;
//! - `loss_scale_order = scale-before-divide` (f16): the loss scaled before it is divided by the
//!   window's count, so the f16 activation gradients are count times larger;
//! - `loss_scale_order = unscale-per-micro-batch` (f16): the accumulator unscaled after every
//!   micro-batch, so earlier micro-batches are divided by the scale again and again.

use crate::model::gpt::Normalization;
use crate::model::optim::{StepSettings, WindowDivide};

use super::config::{ClipMode, LossScaleOrder, TrainConfig};
use super::trainer::{Trainer, Window};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mistake {
    PerMicroBatchMean,
    PerMicroBatchClip,
    ScaleBeforeDivide,
    UnscalePerMicroBatch,
}

impl Mistake {
    /// The mistake a config asks for, if any (config validation allows one at a time).
    pub fn of(cfg: &TrainConfig) -> Option<Self> {
        if cfg.normalization == Normalization::PerMicroBatchMean {
            return Some(Self::PerMicroBatchMean);
        }
        if cfg.clip_mode == ClipMode::PerMicroBatch {
            return Some(Self::PerMicroBatchClip);
        }
        match cfg.loss_scale_order {
            LossScaleOrder::Contract => None,
            LossScaleOrder::ScaleBeforeDivide => Some(Self::ScaleBeforeDivide),
            LossScaleOrder::UnscalePerMicroBatch => Some(Self::UnscalePerMicroBatch),
        }
    }

    /// What the step does to the accumulated gradient before its norm; `scale` is the loss
    /// scale in mixed precision.
    pub fn divide(self, scale: Option<f32>) -> WindowDivide {
        match (self, scale) {
            // already weighted (or normalized and clipped) micro-batch by micro-batch
            (Self::PerMicroBatchMean | Self::PerMicroBatchClip | Self::UnscalePerMicroBatch, _) => WindowDivide::Nothing,
            (Self::ScaleBeforeDivide, Some(s)) => WindowDivide::UnscaleAndCount(s),
            (Self::ScaleBeforeDivide, None) => WindowDivide::Count,
        }
    }

    /// The step's settings: per-micro-batch clipping has clipped already.
    pub fn adjust(self, st: &mut StepSettings) {
        if self == Self::PerMicroBatchClip {
            st.grad_clip = 0.0;
        }
    }

    /// Run micro-batch `w.next` of `w` the mistaken way, in submissions of its own (the caller
    /// advances `w.next`).
    pub fn run_micro(self, t: &mut Trainer, w: &Window) -> anyhow::Result<()> {
        let (j, k) = (w.next, w.len());
        let scale = t.scaler.as_ref().map_or(1.0, |s| s.scale);
        let dloss = match self {
            // the bug: this micro-batch's mean, divided by K
            Self::PerMicroBatchMean => 1.0 / (w.batches[j].count.max(1) as f32 * k as f32),
            Self::PerMicroBatchClip => 1.0,
            Self::ScaleBeforeDivide => scale,
            Self::UnscalePerMicroBatch => scale / w.count.max(1) as f32,
        };
        let mut s = t.gpu().submission();
        t.model.record_micro_batches(&mut s, &w.batches[j..j + 1], j, k, dloss)?;
        s.submit();
        let slabs = t.model.slabs_mut();
        match self {
            Self::PerMicroBatchClip => {
                slabs.clip_micro_batch(j, w.count.max(1) as f32, t.cfg.grad_clip as f32)?;
                if j + 1 == k {
                    slabs.finish_clipped_window();
                }
            }
            Self::UnscalePerMicroBatch => slabs.unscale_now(scale)?,
            Self::PerMicroBatchMean | Self::ScaleBeforeDivide => {}
        }
        Ok(())
    }
}
