//! The accumulation loop. One window = the micro-batches of one optimizer step:
//!
//! 1. draw the window's E samples (seeded sampler) and split them in order into micro-batches of B
//!    (the last may be short: its missing rows count for nothing);
//! 2. micro-step 0 zeroes the gradients and the window figures; every micro-batch runs forward,
//!    summed loss and backward in one submission, gradients accumulating with `+=`;
//! 3. at the end of the window the gradient is divided once by the window's real count of
//!    targets, its global norm taken and clipped once, and AdamW steps with the step count and
//!    learning rate of this optimizer step (both advance per window, never per micro-batch);
//! 4. one readback: the window's loss sum, count and gradient norm (the logged figures).
//!
//! The trainer never imports egui: it reports through `Event`s and is steered by `Control`s.

use std::time::Instant;

use anyhow::Context;

use crate::data::text::{Sample, TextData, TextSampler, count_targets, pack};
use crate::gpu::{Gpu, MemorySnapshot, Precision};
use crate::model::gpt::{GpuGpt, Normalization, StepSettings, WindowDivide, WindowFigures};
use crate::reference::gpt::{GptConfig, init_params};

use super::checkpoint::{self, TrainState};
use super::config::{ClipMode, LossScaleOrder, TrainConfig};
use super::metrics::MetricsWriter;
use super::Event;

/// Figures of one optimizer step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepMetrics {
    /// 1-based optimizer step.
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub lr: f64,
    /// Global L2 norm of the normalized window gradient, before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
    /// ||parameter update|| / ||gradient|| of the step (gradient after normalization, before clip).
    pub update_grad_ratio: f64,
    /// The window was non-finite and the device skipped the AdamW step.
    pub skipped: bool,
    /// Mixed precision: the loss scale this window used (None in f32).
    pub loss_scale: Option<f64>,
    pub tokens: f64,
    pub tokens_per_s: f64,
    pub micro_batch: usize,
    pub accum_steps: usize,
    pub memory: MemorySnapshot,
    pub health: Health,
}

/// A window in progress: its packed micro-batches and how many have run.
pub struct PendingWindow {
    pub batches: Vec<(Vec<u32>, Vec<u32>)>,
    pub next: usize,
    /// Counted targets of the whole window.
    pub count: usize,
    started: Instant,
}

impl PendingWindow {
    pub fn done(&self) -> bool {
        self.next >= self.batches.len()
    }
    pub fn len(&self) -> usize {
        self.batches.len()
    }
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// The figures of a finished optimizer step. The device skipped AdamW if the window's loss or
/// norm was non-finite (`skipped`); `work_per_s` is tokens or images per second.
#[allow(clippy::too_many_arguments)]
pub fn step_metrics(
    step: usize, fig: &WindowFigures, st: &StepSettings, health: &mut HealthMonitor, work_per_s: f64, b: usize, k: usize,
    memory: MemorySnapshot,
) -> StepMetrics {
    let skipped = !(fig.loss_sum.is_finite() && fig.grad_norm.is_finite());
    let train_loss = fig.mean_loss();
    StepMetrics {
        step,
        train_loss,
        val_loss: None,
        lr: st.lr as f64,
        grad_norm: fig.grad_norm,
        clipped: st.grad_clip > 0.0 && fig.grad_norm > st.grad_clip as f64,
        update_grad_ratio: if skipped { 0.0 } else { fig.update_norm / fig.grad_norm.max(1e-30) },
        skipped,
        loss_scale: None,
        tokens: fig.count,
        tokens_per_s: work_per_s,
        micro_batch: b,
        accum_steps: k,
        memory,
        health: health.observe(train_loss, fig.grad_norm),
    }
}

/// Gradient health of one step, judged against the recent history.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Health {
    /// The loss or the gradient norm is NaN or infinite.
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

/// Mixed precision's dynamic loss scale. The scale changes only between windows (constant within
/// one): a window whose gradient overflowed (non-finite norm after the unscale; the device then
/// skipped AdamW) halves it, `growth_interval` clean windows in a row double it.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f32,
    pub growth_interval: usize,
    /// Clean windows since the last change.
    pub clean: usize,
}

/// The loss scale stays within [1, 2^24].
pub const MAX_LOSS_SCALE: f32 = 16_777_216.0;

impl LossScaler {
    pub fn new(scale: f32, growth_interval: usize) -> Self {
        Self { scale, growth_interval: growth_interval.max(1), clean: 0 }
    }

    /// After a window: `overflow` when its unscaled gradient was non-finite.
    pub fn update(&mut self, overflow: bool) {
        if overflow {
            self.scale = (self.scale * 0.5).max(1.0);
            self.clean = 0;
        } else {
            self.clean += 1;
            if self.clean >= self.growth_interval {
                self.scale = (self.scale * 2.0).min(MAX_LOSS_SCALE);
                self.clean = 0;
            }
        }
    }
}

/// Numbers derived from the config, printed at start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Derived {
    pub adapter: String,
    pub params: usize,
    pub vocab_size: usize,
    pub micro_batch: usize,
    pub micro_batches_per_window: usize,
    pub effective_batch: usize,
    pub tokens_per_micro_batch: usize,
    pub tokens_per_step: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub memory: MemorySnapshot,
    /// Activation precision actually used.
    pub precision: Precision,
    /// Something the user asked for that this device cannot do, and what was done instead.
    pub notice: Option<String>,
}

/// A GPT trainer on one device.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub gcfg: GptConfig,
    pub data: TextData,
    pub model: GpuGpt,
    pub sampler: TextSampler,
    /// Windows completed (optimizer steps taken or skipped); drives the schedule and the logs.
    pub step: usize,
    /// AdamW's step count: steps actually applied (a skipped non-finite window does not count).
    pub adam_step: usize,
    pub health: HealthMonitor,
    /// A host copy of the last good state, written out if the device is lost.
    last_good: Option<TrainState>,
    /// How B and K were chosen under `memory_budget`, if one was given.
    pub plan: Option<crate::model::memory::Plan>,
    /// Mixed precision's dynamic loss scale (None in f32).
    pub scaler: Option<LossScaler>,
    /// Set when the config asked for something this device cannot do (f16 without SHADER_F16).
    pub notice: Option<String>,
}

/// Mixed precision without SHADER_F16: the message, and f32 instead.
pub fn resolve_precision(requested: Precision, has_f16: bool, adapter: &str) -> (Precision, Option<String>) {
    if requested == Precision::F16 && !has_f16 {
        let msg = format!(
            "precision f16 needs the SHADER_F16 feature, which {adapter} does not have; training in f32 instead \
             (`gradscope info` lists each adapter's features; Vulkan, Metal and DX12 adapters usually have it)"
        );
        (Precision::F32, Some(msg))
    } else {
        (requested, None)
    }
}

impl Trainer {
    /// Load the data, check the config against it and the device, initialize (or load) the
    /// weights and allocate every slab.
    pub fn new(gpu: &Gpu, mut cfg: TrainConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let data = TextData::load(std::path::Path::new(&cfg.data))?;
        data.check_block(cfg.block_size)?;
        let gcfg = GptConfig {
            vocab_size: data.vocab_size(),
            block_size: cfg.block_size,
            n_layer: cfg.n_layer,
            n_head: cfg.n_head,
            n_embd: cfg.n_embd,
        };
        let (precision, notice) = resolve_precision(cfg.precision, gpu.has_f16(), &gpu.summary.name);
        cfg.precision = precision;
        let plan = super::plan::apply_memory_budget(gpu, &mut cfg, &crate::model::memory::ModelSpec::Gpt(gcfg))?;
        check_device_limits(gpu, &gcfg, cfg.micro_batch, cfg.checkpoint_activations, cfg.precision)?;
        let params = if cfg.init_from.is_empty() {
            init_params(&gcfg, cfg.seed)
        } else {
            let ck = super::checkpoint::load_weights(std::path::Path::new(&cfg.init_from), &gcfg)
                .with_context(|| format!("--init-from {}", cfg.init_from))?;
            ck
        };
        let mut model = GpuGpt::new(gpu, gcfg, &params)?;
        model.set_activation_checkpointing(cfg.checkpoint_activations)?;
        model.set_precision(cfg.precision)?;
        model.set_micro_batch(cfg.micro_batch)?;
        let sampler = TextSampler::new(cfg.data_seed, cfg.block_size, cfg.padded);
        let scaler = (cfg.precision == Precision::F16)
            .then(|| LossScaler::new(cfg.loss_scale as f32, cfg.loss_scale_growth_interval));
        Ok(Self {
            cfg, gcfg, data, model, sampler, step: 0, adam_step: 0, health: HealthMonitor::default(), last_good: None, plan,
            scaler, notice,
        })
    }

    pub fn derived(&self) -> Derived {
        let t = self.cfg.block_size;
        Derived {
            adapter: format!("{} ({:?} kernels)", self.model.gpu.summary.name, self.model.gpu.kind),
            params: self.gcfg.num_params(),
            vocab_size: self.gcfg.vocab_size,
            micro_batch: self.cfg.micro_batch,
            micro_batches_per_window: self.cfg.windows_micro_batches(),
            effective_batch: self.cfg.effective(),
            tokens_per_micro_batch: self.cfg.micro_batch * t,
            tokens_per_step: self.cfg.effective() * t,
            train_tokens: self.data.train.len(),
            val_tokens: self.data.val.len(),
            memory: self.model.gpu.ledger.snapshot(),
            precision: self.cfg.precision,
            notice: self.notice.clone(),
        }
    }

    fn settings(&self) -> StepSettings {
        StepSettings {
            lr: self.cfg.lr_at(self.step) as f32,
            beta1: self.cfg.beta1 as f32,
            beta2: self.cfg.beta2 as f32,
            eps: self.cfg.eps as f32,
            weight_decay: self.cfg.weight_decay as f32,
            grad_clip: self.cfg.grad_clip as f32,
        }
    }

    /// Change the micro-batch size (between windows). Only the activation slabs are rebuilt.
    pub fn set_micro_batch(&mut self, b: usize) -> anyhow::Result<()> {
        check_device_limits(&self.model.gpu, &self.gcfg, b, self.cfg.checkpoint_activations, self.cfg.precision)?;
        self.model.set_micro_batch(b)?;
        self.cfg.micro_batch = b;
        Ok(())
    }

    /// Turn activation checkpointing on or off (between windows; gradients are the same).
    pub fn set_activation_checkpointing(&mut self, on: bool) -> anyhow::Result<()> {
        check_device_limits(&self.model.gpu, &self.gcfg, self.cfg.micro_batch, on, self.cfg.precision)?;
        self.model.set_activation_checkpointing(on)?;
        self.cfg.checkpoint_activations = on;
        Ok(())
    }

    /// Switch between f32 and mixed precision (between windows). F16 on a device without
    /// SHADER_F16 is an error and nothing changes. The loss scale starts at `loss_scale`.
    pub fn set_precision(&mut self, precision: Precision) -> anyhow::Result<()> {
        if precision == self.cfg.precision {
            return Ok(());
        }
        let (got, notice) = resolve_precision(precision, self.model.gpu.has_f16(), &self.model.gpu.summary.name);
        if let Some(n) = notice {
            anyhow::bail!(n);
        }
        let mut next = self.cfg.clone();
        next.precision = got;
        next.validate()?;
        check_device_limits(&self.model.gpu, &self.gcfg, self.cfg.micro_batch, self.cfg.checkpoint_activations, got)?;
        self.model.set_precision(got)?;
        self.cfg.precision = got;
        self.scaler = (got == Precision::F16)
            .then(|| LossScaler::new(self.cfg.loss_scale as f32, self.cfg.loss_scale_growth_interval));
        Ok(())
    }

    /// The loss weight of each counted target of micro-batch `y` in a window of `k` micro-batches
    /// with `count` counted targets.
    fn micro_dloss(&self, y: &[u32], k: usize, count: usize) -> f32 {
        if let Some(sc) = &self.scaler {
            return match self.cfg.loss_scale_order {
                // divide by the count, then scale: the f16 gradients stay near the true ones x scale/count
                LossScaleOrder::Contract | LossScaleOrder::UnscalePerMicroBatch => sc.scale / count.max(1) as f32,
                LossScaleOrder::ScaleBeforeDivide => sc.scale,
            };
        }
        match self.cfg.normalization {
            // reduction = sum; the window's count divides once at the step
            Normalization::WindowCount => 1.0,
            // the bug: mean of this micro-batch, divided by K
            Normalization::PerMicroBatchMean => 1.0 / (count_targets(y).max(1) as f32 * k as f32),
        }
    }

    /// What the step does to the accumulated gradient before its norm (the f32 count division,
    /// or the loss scale's single unscale).
    pub fn window_divide(&self) -> WindowDivide {
        match (&self.scaler, self.cfg.loss_scale_order) {
            (None, _) => WindowDivide::count_if(self.divides_by_window_count()),
            (Some(sc), LossScaleOrder::Contract) => WindowDivide::Unscale(sc.scale),
            (Some(sc), LossScaleOrder::ScaleBeforeDivide) => WindowDivide::UnscaleAndCount(sc.scale),
            (Some(_), LossScaleOrder::UnscalePerMicroBatch) => WindowDivide::Nothing,
        }
    }

    /// The normalized gradient of the window accumulated so far, read back without stepping
    /// (verify, tests); the gradient slab keeps it: start a new window after.
    pub fn window_gradient(&mut self) -> anyhow::Result<Vec<f32>> {
        let divide = self.window_divide();
        Ok(self.model.slabs.normalized_window_gradient(divide)?)
    }

    /// The micro-batches of the next window: E samples split in order into chunks of B.
    pub fn draw_window(&mut self) -> Vec<Vec<Sample>> {
        let e = self.cfg.effective();
        let samples = self.sampler.window(&self.data.train, e);
        samples.chunks(self.cfg.micro_batch).map(|c| c.to_vec()).collect()
    }

    /// Draw the next window and pack its micro-batches (nothing runs yet).
    pub fn begin_window(&mut self) -> PendingWindow {
        let (b, t) = (self.cfg.micro_batch, self.cfg.block_size);
        let batches: Vec<(Vec<u32>, Vec<u32>)> = self.draw_window().iter().map(|mb| pack(mb, b, t)).collect();
        let count = batches.iter().map(|(_, y)| count_targets(y)).sum();
        PendingWindow { batches, next: 0, count, started: Instant::now() }
    }

    /// Run the next micro-batch of `w` (one submission, no readback).
    pub fn run_micro(&mut self, w: &mut PendingWindow) -> anyhow::Result<()> {
        let j = w.next;
        anyhow::ensure!(j < w.batches.len(), "the window's micro-batches are all done");
        let k = w.batches.len();
        if j == 0 {
            self.model.slabs.reserve_figures(k);
        }
        let (x, y) = &w.batches[j];
        if self.cfg.clip_mode == ClipMode::PerMicroBatch {
            // the per-micro-batch clipping mistake (for verify)
            self.model.micro_step_clipped(x, y, j, w.count.max(1) as f32, self.cfg.grad_clip as f32)?;
            if j + 1 == k {
                self.model.slabs.finish_clipped_window();
            }
        } else {
            let dloss = self.micro_dloss(y, k, w.count);
            self.model.micro_step(x, y, j, dloss);
            if let (Some(sc), LossScaleOrder::UnscalePerMicroBatch) = (&self.scaler, self.cfg.loss_scale_order) {
                // the mistake: the accumulator is unscaled after each micro-batch
                let scale = sc.scale;
                self.model.slabs.unscale_now(scale)?;
            }
        }
        w.next += 1;
        Ok(())
    }

    /// Run the micro-batches of the next window (gradients accumulate on the device; nothing is
    /// read back). Returns the number of micro-batches K of this window.
    pub fn accumulate_window(&mut self) -> anyhow::Result<usize> {
        let mut w = self.begin_window();
        while !w.done() {
            self.run_micro(&mut w)?;
        }
        Ok(w.batches.len())
    }

    /// Whether the accumulated gradient still has to be divided by the window's count at the
    /// step (the correct normalization); the broken modes have already scaled it.
    pub fn divides_by_window_count(&self) -> bool {
        self.cfg.normalization == Normalization::WindowCount && self.cfg.clip_mode == ClipMode::Global
    }

    /// Whether a window's micro-batches all weigh their losses the same and need no host work
    /// between them (then the window and its step are one submission).
    fn one_submission(&self) -> bool {
        self.divides_by_window_count() && self.cfg.loss_scale_order != LossScaleOrder::UnscalePerMicroBatch
    }

    /// Run one window and the optimizer step; returns the step's figures (one readback).
    pub fn train_step(&mut self) -> anyhow::Result<(StepMetrics, WindowFigures)> {
        let mut w = self.begin_window();
        while !w.done() {
            self.run_micro(&mut w)?;
        }
        self.finish_window(w)
    }

    /// Run what is left of `w`, then the optimizer step: normalize once by the window count,
    /// clip once on the global norm, AdamW with this step's count and learning rate.
    ///
    /// With the correct normalization the remaining micro-batches and the step are one
    /// submission (the window's tokens uploaded once); the broken modes kept for `verify` need
    /// host work between micro-batches (a per-micro-batch loss weight, per-micro-batch clipping)
    /// and submit each micro-batch on its own.
    pub fn finish_window(&mut self, mut w: PendingWindow) -> anyhow::Result<(StepMetrics, WindowFigures)> {
        let k = w.batches.len();
        let (b, t) = (self.cfg.micro_batch, self.cfg.block_size);
        let mut st = self.settings();
        if self.cfg.clip_mode == ClipMode::PerMicroBatch {
            // already clipped micro-batch by micro-batch
            st.grad_clip = 0.0;
        }
        let adam_step = (self.adam_step + 1) as u32;
        let divide = self.window_divide();
        if self.one_submission() {
            // every micro-batch weighs its losses the same (not the per-micro-batch-mean bug)
            let dloss = self.micro_dloss(&[], k, w.count);
            let mut s = self.model.gpu.submission();
            self.model.record_micro_steps(&mut s, &w.batches[w.next..], w.next, k, dloss)?;
            self.model.slabs.record_optimizer_step(&mut s, &st, adam_step, divide)?;
            s.submit();
            w.next = k;
        } else {
            while !w.done() {
                self.run_micro(&mut w)?;
            }
            self.model.slabs.optimizer_step(&st, adam_step, divide)?;
        }
        let fig = self.model.slabs.window_figures(k)?;
        self.step += 1;
        let tokens_per_s = (k * b * t) as f64 / w.started.elapsed().as_secs_f64();
        let mut m = step_metrics(self.step, &fig, &st, &mut self.health, tokens_per_s, b, k, self.model.gpu.ledger.snapshot());
        if let Some(sc) = &mut self.scaler {
            m.loss_scale = Some(sc.scale as f64);
            sc.update(!fig.grad_norm.is_finite());
        }
        if !m.skipped {
            self.adam_step += 1;
        }
        Ok((m, fig))
    }

    /// Validation loss: mean over the first `eval_windows` non-overlapping validation windows.
    pub fn eval(&mut self) -> anyhow::Result<f64> {
        let t = self.cfg.block_size;
        let b = self.model.micro_batch();
        let n = self.cfg.eval_windows.min(self.data.val_windows(t));
        let mut batches = Vec::new();
        let mut i = 0;
        while i < n {
            let rows: Vec<Sample> = (i..(i + b).min(n))
                .map(|w| {
                    let (x, y) = self.data.val_window(w, t);
                    Sample { inputs: x.to_vec(), targets: y.to_vec() }
                })
                .collect();
            batches.push(pack(&rows, b, t));
            i += b;
        }
        let (sum, count) = self.model.eval_loss(&batches)?;
        Ok(sum / count.max(1.0))
    }
}

impl Trainer {
    /// The state a checkpoint holds (reads parameters and AdamW moments back).
    pub fn state(&self) -> anyhow::Result<TrainState> {
        let (adam_m, adam_v) = self.model.slabs.read_adam()?;
        Ok(TrainState {
            gpt: self.gcfg,
            train: self.cfg.clone(),
            vocab: self.data.vocab.clone(),
            step: self.step as u64,
            adam_step: self.adam_step as u64,
            sampler: self.sampler.clone(),
            params: self.model.slabs.read_params()?,
            adam_m,
            adam_v,
            loss_scaler: self.scaler.as_ref().map(|s| checkpoint::LossScaleState { scale: s.scale, clean: s.clean }),
        })
    }

    /// Save a checkpoint atomically.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        checkpoint::save(path, &self.state()?)?;
        Ok(())
    }

    /// Continue from a checkpoint. `overrides` (same syntax as the CLI) apply on top of the
    /// checkpoint's training config, e.g. a larger `max_steps`; the model shape cannot change.
    pub fn resume(gpu: &Gpu, path: &std::path::Path, overrides: &[String]) -> anyhow::Result<Self> {
        let st = checkpoint::load(path)?;
        let base = toml::to_string(&st.train)?;
        let tmp = std::env::temp_dir().join(format!("gradscope-resume-{}.toml", std::process::id()));
        std::fs::write(&tmp, base)?;
        let cfg = TrainConfig::load(Some(&tmp), overrides);
        let _ = std::fs::remove_file(&tmp);
        let cfg = cfg?;
        let mut t = Trainer::new(gpu, TrainConfig { init_from: String::new(), ..cfg })?;
        if t.gcfg != st.gpt {
            anyhow::bail!(
                "{} was saved for {:?}; the resumed config asks for {:?} (the model shape cannot change on resume)",
                path.display(), st.gpt, t.gcfg
            );
        }
        if t.data.vocab != st.vocab {
            anyhow::bail!("{}: the data's vocabulary differs from the checkpoint's", path.display());
        }
        t.model.slabs.load_state(&st.params, &st.adam_m, &st.adam_v);
        t.step = st.step as usize;
        t.adam_step = st.adam_step as usize;
        t.sampler = st.sampler;
        t.sampler.block = t.cfg.block_size;
        // a mixed-precision run continues with its loss scale (an f32 checkpoint resumed in f16
        // starts at `loss_scale`)
        if let (Some(sc), Some(ls)) = (&mut t.scaler, st.loss_scaler) {
            sc.scale = ls.scale;
            sc.clean = ls.clean;
        }
        Ok(t)
    }

    /// Name the first tensor (in forward order) whose parameters, else whose gradient, holds a
    /// NaN or infinity: the diagnosis of `on_nonfinite = "stop"`.
    pub fn diagnose_nonfinite(&self) -> anyhow::Result<String> {
        let params = self.model.slabs.read_params()?;
        let grads = self.model.slabs.read_grads()?;
        let bad = |v: &[f32]| v.iter().filter(|x| !x.is_finite()).count();
        for (name, shape, off) in checkpoint::tensor_table(&self.gcfg) {
            let n: usize = shape.iter().product();
            let k = bad(&params[off..off + n]);
            if k > 0 {
                return Ok(format!("parameter {name} has {k} non-finite values (of {n})"));
            }
        }
        for (name, shape, off) in checkpoint::tensor_table(&self.gcfg) {
            let n: usize = shape.iter().product();
            let k = bad(&grads[off..off + n]);
            if k > 0 {
                return Ok(format!("the gradient of {name} is the first to go non-finite ({k} of {n} values)"));
            }
        }
        Ok("the loss is non-finite but no parameter or gradient is (check the data)".into())
    }

    /// Periodic checkpoint: `ckpt-stepNNNNNN.safetensors` and the latest `ckpt.safetensors`,
    /// keeping the last `keep_last` periodic ones.
    pub fn save_periodic(&self, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
        let st = self.state()?;
        let p = dir.join(format!("ckpt-step{:06}.safetensors", self.step));
        checkpoint::save(&p, &st)?;
        checkpoint::save(&dir.join("ckpt.safetensors"), &st)?;
        let mut old: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                n.starts_with("ckpt-step") && n.ends_with(".safetensors")
            })
            .collect();
        old.sort();
        let excess = old.len().saturating_sub(self.cfg.keep_last);
        for p in &old[..excess] {
            let _ = std::fs::remove_file(p);
        }
        Ok(p)
    }

    /// Train to `max_steps`, evaluating every `eval_every` steps and at the end, reporting
    /// through `on_event` and writing metrics. `interrupt` (Ctrl-C, SIGTERM) stops after the
    /// current window with a checkpoint. Device errors stop the run with their message; a lost
    /// device stops it with a checkpoint of the last good step.
    pub fn run(
        &mut self,
        mut metrics: Option<&mut MetricsWriter>,
        interrupt: Option<&std::sync::atomic::AtomicBool>,
        on_event: &mut dyn FnMut(&Event),
    ) -> anyhow::Result<RunOutcome> {
        use std::sync::atomic::Ordering;
        let dir = std::path::PathBuf::from(&self.cfg.out_dir);
        on_event(&Event::Started(self.derived()));
        let mut last_val = f64::NAN;
        // a host copy each step is cheap for small models (it is 16 bytes per parameter)
        let snapshot_each_step = self.gcfg.num_params() * 16 <= 64 << 20;
        self.last_good = Some(self.state()?);
        while self.step < self.cfg.max_steps {
            if interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) {
                if let Some(w) = metrics.as_deref_mut() {
                    w.flush()?;
                }
                let path = dir.join("ckpt.safetensors");
                self.save(&path)?;
                on_event(&Event::Checkpoint { step: self.step, path: path.clone() });
                return Ok(RunOutcome::Interrupted { step: self.step, checkpoint: path });
            }
            let result = self.train_step();
            let errors = self.model.gpu.take_errors();
            if self.model.gpu.is_lost() || (result.is_err() && self.model.gpu.is_lost()) {
                let path = dir.join("ckpt-last-good.safetensors");
                let st = self.last_good.as_ref().expect("a snapshot is taken before the first step");
                checkpoint::save(&path, st)?;
                anyhow::bail!(
                    "the GPU device was lost at step {}; saved the last good state (step {}) to {}{}",
                    self.step + 1, st.step, path.display(),
                    if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
                );
            }
            if !errors.is_empty() {
                anyhow::bail!("device error at step {}: {}", self.step + 1, errors.join("; "));
            }
            let (mut m, _) = result?;
            // in mixed precision a finite loss with an overflowing gradient is the loss scaler's
            // business (the scale was halved), not a failure
            let overflow = m.loss_scale.is_some() && m.train_loss.is_finite();
            if m.skipped {
                if self.cfg.on_nonfinite == super::config::OnNonFinite::Stop && !overflow {
                    let why = self.diagnose_nonfinite()?;
                    anyhow::bail!(
                        "non-finite loss or gradient at step {} (loss {}, grad norm {}); the step was not applied. {why}",
                        m.step, m.train_loss, m.grad_norm
                    );
                }
            } else if snapshot_each_step {
                self.last_good = Some(self.state()?);
            }
            let at_end = self.step == self.cfg.max_steps;
            if at_end || (self.cfg.eval_every > 0 && self.step % self.cfg.eval_every == 0) {
                last_val = self.eval()?;
                m.val_loss = Some(last_val);
                on_event(&Event::Eval { step: self.step, val_loss: last_val });
            }
            if let Some(w) = metrics.as_deref_mut() {
                w.write(&m)?;
                if m.val_loss.is_some() {
                    w.flush()?;
                }
            }
            on_event(&Event::Step(m));
            if self.cfg.save_every > 0 && self.step % self.cfg.save_every == 0 {
                let path = self.save_periodic(&dir)?;
                if !snapshot_each_step {
                    self.last_good = Some(self.state()?);
                }
                on_event(&Event::Checkpoint { step: self.step, path });
            }
            if std::env::var("GRADSCOPE_FAULT").ok().and_then(|f| f.strip_prefix("lose-device-after-step-").and_then(|n| n.parse().ok())) == Some(self.step) {
                // fault injection for the device-loss test
                self.model.gpu.lose_device();
            }
        }
        if let Some(w) = metrics.as_deref_mut() {
            w.flush()?;
        }
        if last_val.is_nan() {
            last_val = self.eval()?;
        }
        on_event(&Event::Finished { step: self.step, val_loss: last_val });
        Ok(RunOutcome::Finished { val_loss: last_val })
    }
}

/// How `Trainer::run` ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    Finished { val_loss: f64 },
    /// Ctrl-C or SIGTERM: the state at `step` is in `checkpoint`.
    Interrupted { step: usize, checkpoint: std::path::PathBuf },
}

/// A micro-batch whose activation slab does not fit one storage binding (or one buffer) of the
/// device is refused with the numbers, before anything is allocated.
pub fn check_device_limits(gpu: &Gpu, cfg: &GptConfig, b: usize, recompute: bool, precision: Precision) -> anyhow::Result<()> {
    let bytes = GpuGpt::activation_slab_bytes(cfg, b, recompute, precision);
    let limits = gpu.limits();
    let max_bind = limits.max_storage_buffer_binding_size;
    let max_buf = limits.max_buffer_size;
    if bytes > max_bind || bytes > max_buf {
        let per_seq = GpuGpt::activation_slab_bytes(cfg, 1, recompute, precision);
        anyhow::bail!(
            "micro_batch {b} needs an activation slab of {} but this device's max storage binding is {} \
             (max buffer {}); the largest micro_batch that fits is about {}. Use a smaller micro_batch \
             and more accum_steps for the same effective batch.",
            crate::gpu::human_bytes(bytes),
            crate::gpu::human_bytes(max_bind),
            crate::gpu::human_bytes(max_buf),
            max_bind.min(max_buf) / per_seq.max(1)
        );
    }
    check_loop_limit(gpu, "micro_batch x block_size", b * cfg.block_size)?;
    let params_bytes = cfg.num_params() as u64 * 4;
    if params_bytes > max_bind {
        anyhow::bail!(
            "the model's {} parameters ({}) exceed the device's max storage binding {}",
            cfg.num_params(),
            crate::gpu::human_bytes(params_bytes),
            crate::gpu::human_bytes(max_bind)
        );
    }
    Ok(())
}

/// Mesa's CPU adapters (lavapipe, llvmpipe) stop a shader invocation's loops after 65,535
/// iterations in total, silently. Kernels that reduce over the rows of a micro-batch in one
/// invocation (deterministic sums without atomics) would then return wrong numbers, so larger
/// micro-batches are refused on such adapters.
pub const CPU_ADAPTER_MAX_LOOP: usize = 65_535;

pub fn check_loop_limit(gpu: &Gpu, what: &str, rows: usize) -> anyhow::Result<()> {
    if gpu.kind == crate::gpu::DeviceKind::Cpu && rows > CPU_ADAPTER_MAX_LOOP {
        anyhow::bail!(
            "{what} = {rows} rows is more than this CPU adapter's {CPU_ADAPTER_MAX_LOOP} loop iterations per shader \
             invocation (Mesa's limit): use a smaller micro_batch and more accum_steps for the same effective batch"
        );
    }
    Ok(())
}
