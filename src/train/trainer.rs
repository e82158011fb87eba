//! The one training loop, for every model (`Model`). One window = the micro-batches of one
//! optimizer step:
//!
//! 1. draw the window's E samples (the model's seeded sampler) and split them in order into
//!    micro-batches of B (the last may be short: its missing rows count for nothing);
//! 2. one submission holds the whole window: micro-step 0 zeroes the gradients and the window
//!    figures, every micro-batch runs forward, summed loss and backward with gradients
//!    accumulating (`+=`), then the gradient is divided once by the window's real count (read on
//!    the device), its global norm taken and clipped once, and AdamW steps with the step count
//!    and learning rate of this optimizer step (both advance per window, never per micro-batch);
//! 3. one readback: the window's loss sum, count, gradient norm and per-micro-batch figures
//!    (with `grad_stats`, each micro-batch's gradient statistics, from which the trainer updates
//!    the gradient noise scale's moving averages).
//!
//! Stepping by hand (the app) runs one micro-batch per submission (`run_micro`) and finishes
//! the window the same way; the deliberately broken settings kept for `verify` live in
//! `broken` and are never on this path. The trainer never imports egui: it reports through
//! `Event`s, and the live session drives it between windows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::gpu::{Gpu, MemorySnapshot, Precision};
use crate::model::memory::Plan;
use crate::model::grad_stats::NoiseScale;
use crate::model::optim::{StepSettings, WindowDivide, WindowFigures};

use super::broken::Mistake;
use super::checkpoint::{self, LossScaleState, OPT_M, OPT_V};
use super::cnn::CnnModel;
use super::config::{OnNonFinite, TrainConfig};
use super::events::{Event, StepReport};
use super::gpt::GptModel;
use super::health::{HealthMonitor, StepMetrics, step_metrics};
use super::loss_scale::{LossScaler, MAX_LOSS_SCALE};
use super::model::{EvalSize, Evaluation, MicroBatch, Model, ModelSummary, build, checkpoint_table, kind_of_format};

/// A window in progress: its packed micro-batches and how many have run.
pub struct Window {
    pub batches: Vec<MicroBatch>,
    pub next: usize,
    /// Counted items (tokens or images) of the whole window.
    pub count: usize,
    started: Instant,
}

impl Window {
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

/// Numbers derived from the config, reported at start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Derived {
    pub adapter: String,
    pub model: ModelSummary,
    pub params: usize,
    /// Vocabulary size (GPT) or classes (CNN).
    pub vocab_size: usize,
    pub micro_batch: usize,
    pub micro_batches_per_window: usize,
    pub effective_batch: usize,
    /// Counted items (tokens or images) per full micro-batch and per optimizer step.
    pub items_per_micro_batch: usize,
    pub items_per_step: usize,
    pub max_steps: usize,
    pub memory: MemorySnapshot,
    /// Activation precision actually used.
    pub precision: Precision,
    /// Something the user asked for that this device cannot do, and what was done instead.
    pub notice: Option<String>,
    /// How B and K were chosen under `memory_budget`.
    pub plan: Option<Plan>,
}

/// How `Trainer::run` ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    Finished { eval: Evaluation },
    /// Ctrl-C or SIGTERM: the state at `step` is in `checkpoint`.
    Interrupted { step: usize, checkpoint: PathBuf },
}

/// A complete training state in memory, as a checkpoint file holds it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub step: usize,
    pub meta: HashMap<String, String>,
    pub tensors: Vec<super::model::NamedTensor>,
}

impl Snapshot {
    /// Write it atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let views: Vec<(String, Vec<usize>, &[f32])> = self.tensors.iter().map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice())).collect();
        checkpoint::save_tensors(path, &views, self.meta.clone())?;
        Ok(())
    }
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: Box<dyn Model>,
    /// Windows completed (optimizer steps taken or skipped); drives the schedule and the logs.
    pub step: usize,
    /// AdamW's step count: steps actually applied (a skipped non-finite window does not count).
    pub adam_step: usize,
    pub health: HealthMonitor,
    /// Mixed precision's dynamic loss scale (None in f32).
    pub scaler: Option<LossScaler>,
    /// A host copy of the last good state, written out if the device is lost.
    last_good: Option<Snapshot>,
    /// When this trainer was created (the metrics' wall-clock column).
    started: Instant,
    /// The gradient noise scale's moving averages (`grad_stats`; restarts with the process).
    pub noise: NoiseScale,
}

impl Trainer {
    /// Load the model's data, check the config against it and the device, initialize (or load)
    /// the weights and allocate every slab.
    pub fn new(gpu: &Gpu, mut cfg: TrainConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let model = build(gpu, &mut cfg)?;
        let scaler = (cfg.precision == Precision::F16).then(|| LossScaler::new(cfg.loss_scale as f32, cfg.loss_scale_growth_interval));
        let mut t = Self {
            cfg, model, step: 0, adam_step: 0, health: HealthMonitor::default(), scaler, last_good: None,
            started: Instant::now(), noise: NoiseScale::default(),
        };
        t.set_grad_stats(t.cfg.grad_stats)?;
        Ok(t)
    }

    /// The gradient statistics' tensors: the checkpoint tensors (name, host offset, elements).
    pub fn stats_tensors(&self) -> Vec<(String, usize, usize)> {
        self.model.tensors().into_iter().map(|(n, shape, off)| (n, off, shape.iter().product())).collect()
    }

    /// Turn the per-micro-batch gradient statistics on or off (between windows). The
    /// deliberately broken modes of `verify` never measure them (their micro-batches do not
    /// accumulate into one slab).
    pub fn set_grad_stats(&mut self, on: bool) -> anyhow::Result<()> {
        let tensors = (on && Mistake::of(&self.cfg).is_none()).then(|| self.stats_tensors());
        self.model.slabs_mut().set_grad_stats(tensors.as_deref())?;
        self.cfg.grad_stats = on;
        Ok(())
    }

    pub fn gpu(&self) -> &Gpu {
        self.model.gpu()
    }

    /// The GPT behind this trainer (None for another model).
    pub fn gpt(&self) -> Option<&GptModel> {
        self.model.as_any().downcast_ref()
    }
    pub fn gpt_mut(&mut self) -> Option<&mut GptModel> {
        self.model.as_any_mut().downcast_mut()
    }
    /// The CNN behind this trainer (None for another model).
    pub fn cnn(&self) -> Option<&CnnModel> {
        self.model.as_any().downcast_ref()
    }
    pub fn cnn_mut(&mut self) -> Option<&mut CnnModel> {
        self.model.as_any_mut().downcast_mut()
    }

    pub fn derived(&self) -> Derived {
        let summary = self.model.summary();
        let per = summary.items_per_sample;
        let gpu = self.gpu();
        Derived {
            adapter: format!("{} ({})", gpu.summary.name, gpu.kernels_label()),
            params: summary.params,
            vocab_size: summary.classes,
            micro_batch: self.cfg.micro_batch,
            micro_batches_per_window: self.cfg.windows_micro_batches(),
            effective_batch: self.cfg.effective(),
            items_per_micro_batch: self.cfg.micro_batch * per,
            items_per_step: self.cfg.effective() * per,
            max_steps: self.cfg.max_steps,
            memory: gpu.ledger.snapshot(),
            precision: self.cfg.precision,
            notice: self.model.notice(),
            plan: self.model.plan().cloned(),
            model: summary,
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

    /// Change the micro-batch size (between windows). Only the activation slabs are rebuilt; on
    /// failure the previous size stays.
    pub fn set_micro_batch(&mut self, b: usize) -> anyhow::Result<()> {
        self.model.set_micro_batch(b, &self.cfg)?;
        self.cfg.micro_batch = b;
        Ok(())
    }

    /// Turn activation checkpointing on or off (between windows; gradients are the same).
    pub fn set_activation_checkpointing(&mut self, on: bool) -> anyhow::Result<()> {
        self.model.set_activation_checkpointing(on, &self.cfg)?;
        self.cfg.checkpoint_activations = on;
        Ok(())
    }

    /// Switch between f32 and mixed precision (between windows). F16 on a device without
    /// SHADER_F16 is an error and nothing changes. The loss scale starts at `loss_scale`.
    pub fn set_precision(&mut self, precision: Precision) -> anyhow::Result<()> {
        if precision == self.cfg.precision {
            return Ok(());
        }
        let next = TrainConfig { precision, ..self.cfg.clone() };
        next.validate()?;
        self.model.set_precision(precision, &self.cfg)?;
        self.cfg.precision = precision;
        self.scaler = (precision == Precision::F16).then(|| LossScaler::new(self.cfg.loss_scale as f32, self.cfg.loss_scale_growth_interval));
        Ok(())
    }

    /// The weight of each counted item's loss in the gradient (contract rules 1 and 6): 1 in f32
    /// (reduction = sum; the window's count divides once at the step); in mixed precision the
    /// count divides first, then the scale multiplies, constant over the window.
    pub fn loss_weight(&self, window_count: usize) -> f32 {
        match &self.scaler {
            Some(sc) => sc.scale / window_count.max(1) as f32,
            None => 1.0,
        }
    }

    /// What the step does to the accumulated gradient before its norm: the count division, or
    /// the loss scale's single unscale.
    pub fn window_divide(&self) -> WindowDivide {
        if let Some(m) = Mistake::of(&self.cfg) {
            return m.divide(self.scaler.as_ref().map(|s| s.scale));
        }
        match &self.scaler {
            Some(sc) => WindowDivide::Unscale(sc.scale),
            None => WindowDivide::Count,
        }
    }

    /// Draw the next window and pack its micro-batches (nothing runs yet).
    pub fn begin_window(&mut self) -> Window {
        // the window makes step `step + 1` (dropout's masks are keyed by it)
        self.model.set_window_step(self.step as u64 + 1);
        let batches = self.model.draw_window(self.cfg.effective(), self.cfg.micro_batch);
        let count = batches.iter().map(|b| b.count).sum();
        Window { batches, next: 0, count, started: Instant::now() }
    }

    /// Run the next micro-batch of `w` in a submission of its own (stepping by hand, the broken
    /// modes), no readback.
    pub fn run_micro(&mut self, w: &mut Window) -> anyhow::Result<()> {
        anyhow::ensure!(!w.done(), "the window's micro-batches are all done");
        if let Some(m) = Mistake::of(&self.cfg) {
            m.run_micro(self, w)?;
        } else {
            let (j, k) = (w.next, w.len());
            let dloss = self.loss_weight(w.count);
            let mut s = self.gpu().submission();
            self.model.record_micro_batches(&mut s, &w.batches[j..j + 1], j, k, dloss)?;
            s.submit();
        }
        w.next += 1;
        Ok(())
    }

    /// Run the micro-batches of the next window (gradients accumulate on the device; nothing is
    /// read back, no step). Returns the number of micro-batches K of this window.
    pub fn accumulate_window(&mut self) -> anyhow::Result<usize> {
        let mut w = self.begin_window();
        while !w.done() {
            self.run_micro(&mut w)?;
        }
        Ok(w.len())
    }

    /// The normalized gradient of the window accumulated so far, read back without stepping
    /// (verify, tests); the gradient slab keeps it: start a new window after.
    pub fn window_gradient(&mut self) -> anyhow::Result<Vec<f32>> {
        let divide = self.window_divide();
        Ok(self.model.slabs_mut().normalized_window_gradient(divide)?)
    }

    /// Run one window and the optimizer step: one submission and one readback.
    pub fn train_step(&mut self) -> anyhow::Result<(StepMetrics, WindowFigures)> {
        let w = self.begin_window();
        self.finish_window(w)
    }

    /// Run what is left of `w`, then the optimizer step, in one submission: normalize once by the
    /// window count, clip once on the global norm, AdamW with this step's count and learning rate.
    pub fn finish_window(&mut self, mut w: Window) -> anyhow::Result<(StepMetrics, WindowFigures)> {
        let k = w.len();
        let mut st = self.settings();
        let adam_step = (self.adam_step + 1) as u32;
        let divide = self.window_divide();
        if let Some(m) = Mistake::of(&self.cfg) {
            while !w.done() {
                m.run_micro(self, &w)?;
                w.next += 1;
            }
            m.adjust(&mut st);
            self.model.slabs_mut().optimizer_step(&st, adam_step, divide)?;
        } else {
            let dloss = self.loss_weight(w.count);
            let mut s = self.gpu().submission();
            self.model.record_micro_batches(&mut s, &w.batches[w.next..], w.next, k, dloss)?;
            self.model.slabs_mut().record_optimizer_step(&mut s, &st, adam_step, divide)?;
            s.submit();
            w.next = k;
        }
        let mut fig = self.model.slabs().window_figures(k)?;
        // the statistics in the summed gradient's units (each counted item's loss weighing 1)
        let dloss = self.loss_weight(w.count) as f64;
        if let Some(gs) = &mut fig.grad_stats {
            gs.scale(1.0 / (dloss * dloss));
        }
        self.step += 1;
        let per_s = fig.count / w.started.elapsed().as_secs_f64().max(1e-9);
        let unit = self.model.unit();
        let memory = self.gpu().ledger.snapshot();
        let mut m = step_metrics(self.step, &fig, &st, &mut self.health, unit, per_s, self.cfg.micro_batch, k, memory);
        m.wall_s = self.started.elapsed().as_secs_f64();
        if let Some(sc) = &mut self.scaler {
            m.loss_scale = Some(sc.scale as f64);
            sc.update(!fig.grad_norm.is_finite());
        }
        if !m.skipped {
            self.adam_step += 1;
        }
        if let Some(est) = fig.grad_stats.as_ref().and_then(|gs| gs.noise(None)) {
            self.noise.update(&est);
            (m.noise_g2, m.noise_trace) = (Some(est.g2), Some(est.trace));
        }
        if fig.grad_stats.is_some() {
            m.b_simple_items = self.noise.b_simple();
            // in samples: counted items per sample of this window (T, fewer with padding; 1 image)
            let per = fig.count / (self.cfg.effective().max(1) as f64);
            m.b_simple = m.b_simple_items.filter(|_| per > 0.0).map(|b| b / per);
        }
        Ok((m, fig))
    }

    /// Held-out loss (and accuracy): the config's validation windows or the whole test set.
    pub fn evaluate(&mut self) -> anyhow::Result<Evaluation> {
        self.model.evaluate(&self.cfg, EvalSize::Full)
    }

    /// A bounded evaluation for the live app.
    pub fn evaluate_live(&mut self) -> anyhow::Result<Evaluation> {
        self.model.evaluate(&self.cfg, EvalSize::Live)
    }

    /// Validation (GPT) or test (CNN) loss.
    pub fn eval(&mut self) -> anyhow::Result<f64> {
        Ok(self.evaluate()?.loss)
    }

    /// Device time per kernel entry point of one micro-batch's train program (timestamp
    /// queries), largest first. Call between windows: the program adds into the gradient slab
    /// and the window figures, which the next window's first micro-batch zeroes.
    pub fn profile_kernels(&mut self) -> anyhow::Result<Vec<(String, f64)>> {
        let profile = self.model.profile_micro_batch()?;
        anyhow::ensure!(profile.is_some(), "this adapter has no timestamp queries (TIMESTAMP_QUERY): no per-kernel profile");
        Ok(crate::bench::gpt::by_kernel(profile))
    }
}

impl Trainer {
    /// The whole state as a checkpoint holds it (reads parameters and AdamW moments back).
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let slabs = self.model.slabs();
        let params = slabs.read_params()?;
        let (m, v) = slabs.read_adam()?;
        let mut tensors = Vec::new();
        for (name, shape, off) in self.model.tensors() {
            let n: usize = shape.iter().product();
            tensors.push((name, shape, params[off..off + n].to_vec()));
        }
        tensors.extend(self.model.checkpoint_extra()?);
        let n = m.len();
        tensors.push((OPT_M.to_string(), vec![n], m));
        tensors.push((OPT_V.to_string(), vec![n], v));
        let mut meta = self.model.checkpoint_meta()?;
        meta.insert("train_config".to_string(), serde_json::to_string(&self.cfg)?);
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("adam_step".to_string(), self.adam_step.to_string());
        // the kernel family that trained it (results of the two differ by float rounding)
        meta.insert("kernels".to_string(), self.gpu().kernels().name().to_string());
        if self.gpu().kernels() == crate::gpu::KernelSet::Gpu {
            meta.insert("matmul_tiles".to_string(), self.gpu().matmul_tiles().to_string());
        }
        if let Some(s) = &self.scaler {
            meta.insert("loss_scaler".to_string(), serde_json::to_string(&LossScaleState { scale: s.scale, clean: s.clean })?);
        }
        Ok(Snapshot { step: self.step, meta, tensors })
    }

    /// Save a checkpoint atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        self.snapshot()?.save(path)
    }

    /// Continue from a checkpoint of any model. `overrides` (same syntax as the CLI) apply on
    /// top of the checkpoint's training config, e.g. a larger `max_steps`; the model shape
    /// cannot change.
    pub fn resume(gpu: &Gpu, path: &Path, overrides: &[String]) -> anyhow::Result<Self> {
        let bytes = checkpoint::read(path)?;
        let (st, meta) = checkpoint::parse(path, &bytes)?;
        let format = meta.get("format").map(String::as_str);
        let kind = kind_of_format(format)
            .ok_or_else(|| anyhow::anyhow!("{}: unknown checkpoint format {format:?}", path.display()))?;
        let saved: TrainConfig = checkpoint::meta_json(path, &meta, "train_config")?;
        anyhow::ensure!(saved.model == kind, "{}: a {format:?} checkpoint whose config names the {:?}", path.display(), saved.model);
        let cfg = config_with_overrides(&saved, overrides)?;
        anyhow::ensure!(cfg.model == kind, "{} holds a {kind:?}; the model cannot change on resume", path.display());
        cfg.validate()?;
        // the file's tensors against the shapes the config implies, before anything is allocated
        checkpoint::check_tensors(path, &st, &checkpoint_table(kind, path, &meta, &cfg)?).map_err(|e| {
            anyhow::anyhow!("{e} (for the resumed config; the model shape cannot change on resume)")
        })?;
        let step: usize = checkpoint::meta_json(path, &meta, "step")?;
        let adam_step: usize = checkpoint::meta_json(path, &meta, "adam_step")?;
        // AdamW's bias correction takes the step count as a u32 (1 - beta^t)
        anyhow::ensure!(
            adam_step < u32::MAX as usize && adam_step <= step,
            "{}: metadata adam_step {adam_step} is out of range (at most step {step}, below 2^32 - 1)", path.display()
        );
        let mut t = Trainer::new(gpu, TrainConfig { init_from: String::new(), ..cfg })?;
        t.model.restore(path, &meta, &st)?;
        let mut params = vec![0.0f32; t.model.slabs().n];
        for (name, shape, off) in t.model.tensors() {
            let v = checkpoint::tensor_f32(path, &st, &name, &shape)?;
            checkpoint::check_values(path, &name, &v, false)?;
            params[off..off + v.len()].copy_from_slice(&v);
        }
        let n = params.len();
        let m = checkpoint::tensor_f32(path, &st, OPT_M, &[n])?;
        let v = checkpoint::tensor_f32(path, &st, OPT_V, &[n])?;
        checkpoint::check_values(path, OPT_M, &m, false)?;
        checkpoint::check_values(path, OPT_V, &v, true)?;
        t.model.slabs().load_state(&params, &m, &v);
        t.step = step;
        t.adam_step = adam_step;
        // a mixed-precision run continues with its loss scale (an f32 checkpoint resumed in f16
        // starts at `loss_scale`)
        if meta.contains_key("loss_scaler") {
            let ls: LossScaleState = checkpoint::meta_json(path, &meta, "loss_scaler")?;
            anyhow::ensure!(
                ls.scale.is_finite() && (1.0..=MAX_LOSS_SCALE).contains(&ls.scale),
                "{}: metadata loss_scaler: scale {} outside [1, 2^24]", path.display(), ls.scale
            );
            if let Some(sc) = &mut t.scaler {
                sc.scale = ls.scale;
                sc.clean = ls.clean;
            }
        }
        Ok(t)
    }

    /// Name the first tensor (in slab order) whose parameters, else whose gradient, holds a
    /// NaN or infinity: the diagnosis of `on_nonfinite = "stop"`.
    pub fn diagnose_nonfinite(&self) -> anyhow::Result<String> {
        let params = self.model.slabs().read_params()?;
        let grads = self.model.slabs().read_grads()?;
        let bad = |v: &[f32]| v.iter().filter(|x| !x.is_finite()).count();
        let table = self.model.tensors();
        for (name, shape, off) in &table {
            let n: usize = shape.iter().product();
            let k = bad(&params[*off..off + n]);
            if k > 0 {
                return Ok(format!("parameter {name} has {k} non-finite values (of {n})"));
            }
        }
        for (name, shape, off) in &table {
            let n: usize = shape.iter().product();
            let k = bad(&grads[*off..off + n]);
            if k > 0 {
                return Ok(format!("the gradient of {name} is the first to go non-finite ({k} of {n} values)"));
            }
        }
        let (m, v) = self.model.slabs().read_adam()?;
        // values this large overflow the update's arithmetic in f32
        let bad = |x: &f32| !x.is_finite() || x.abs() > f32::MAX / 2.0;
        for (name, state) in [("optimizer.adamw.m", &m), ("optimizer.adamw.v", &v)] {
            let k = state.iter().filter(|x| bad(x) || (name.ends_with(".v") && **x < 0.0)).count();
            if k > 0 {
                return Ok(format!("the AdamW state {name} holds {k} non-finite, negative or overflowing values (of {})", state.len()));
            }
        }
        Ok("no parameter, gradient or AdamW moment is non-finite (check the data and the learning rate)".into())
    }

    /// Periodic checkpoint: `ckpt-stepNNNNNN.safetensors` and the latest `ckpt.safetensors`,
    /// keeping the last `keep_last` periodic ones. Pruning orders by the step in the name (as a
    /// number: widths differ past step 999,999) and never removes the file just written.
    pub fn save_periodic(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let st = self.snapshot()?;
        let p = dir.join(periodic_name(self.step));
        st.save(&p)?;
        st.save(&dir.join("ckpt.safetensors"))?;
        let mut old: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| periodic_step(&p).map(|s| (s, p)))
            .filter(|(_, q)| *q != p)
            .collect();
        old.sort();
        let excess = (old.len() + 1).saturating_sub(self.cfg.keep_last);
        for (_, q) in &old[..excess.min(old.len())] {
            let _ = std::fs::remove_file(q);
        }
        Ok(p)
    }

    /// Evaluate after this step? Every `eval_every` steps, at the end of an epoch (models with
    /// epochs), and at the end of the run.
    fn evaluates_now(&self, epoch_before: Option<u64>) -> bool {
        self.step == self.cfg.max_steps
            || (self.cfg.eval_every > 0 && self.step.is_multiple_of(self.cfg.eval_every))
            || self.model.epoch() != epoch_before
    }

    /// Train to `max_steps`, reporting through `on_event` (progress, log lines, metrics files:
    /// an error from a renderer stops the run). `interrupt` (Ctrl-C, SIGTERM) stops after the
    /// current window with a checkpoint. Device errors stop the run with their message; a lost
    /// device stops it with a checkpoint of the last good step.
    pub fn run(
        &mut self,
        interrupt: Option<&AtomicBool>,
        on_event: &mut dyn FnMut(&Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<RunOutcome> {
        let dir = PathBuf::from(&self.cfg.out_dir);
        on_event(&Event::Started { derived: self.derived(), config: self.cfg.clone() })?;
        let mut last: Option<Evaluation> = None;
        // a host copy each step is cheap for small models (it is 16 bytes per parameter)
        let snapshot_each_step = self.model.slabs().n * 16 <= 64 << 20;
        self.last_good = Some(self.snapshot()?);
        while self.step < self.cfg.max_steps {
            if interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) {
                let path = dir.join("ckpt.safetensors");
                self.save(&path)?;
                on_event(&Event::Checkpoint { step: self.step, path: path.clone() })?;
                return Ok(RunOutcome::Interrupted { step: self.step, checkpoint: path });
            }
            let epoch_before = self.model.epoch();
            let result = self.train_step();
            let gpu = self.gpu().clone();
            let errors = gpu.take_errors();
            if gpu.is_lost() {
                let path = dir.join("ckpt-last-good.safetensors");
                let st = self.last_good.as_ref().expect("a snapshot is taken before the first step");
                st.save(&path)?;
                anyhow::bail!(
                    "the GPU device was lost at step {}; saved the last good state (step {}) to {}{}",
                    self.step + 1, st.step, path.display(),
                    if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
                );
            }
            if !errors.is_empty() {
                anyhow::bail!("device error at step {}: {}", self.step + 1, errors.join("; "));
            }
            let (mut m, fig) = result?;
            // in mixed precision a finite loss with an overflowing gradient is the loss scaler's
            // business (the scale was halved), not a failure
            let overflow = m.loss_scale.is_some() && m.train_loss.is_finite();
            if m.skipped {
                if self.cfg.on_nonfinite == OnNonFinite::Stop && !overflow {
                    let why = self.diagnose_nonfinite()?;
                    if m.train_loss.is_finite() && m.grad_norm.is_finite() {
                        anyhow::bail!(
                            "the AdamW update at step {} would have written non-finite weights or moments (loss {}, grad \
                             norm {}, both finite); the step was not applied. {why}",
                            m.step, m.train_loss, m.grad_norm
                        );
                    }
                    anyhow::bail!(
                        "non-finite loss or gradient at step {} (loss {}, grad norm {}); the step was not applied. {why}",
                        m.step, m.train_loss, m.grad_norm
                    );
                }
            } else if snapshot_each_step {
                self.last_good = Some(self.snapshot()?);
            }
            if self.evaluates_now(epoch_before) {
                let ev = self.evaluate()?;
                m.set_eval(&ev);
                on_event(&Event::Eval { step: self.step, epoch: self.model.epoch(), eval: ev })?;
                last = Some(ev);
            }
            let micro = fig.micro_means();
            on_event(&Event::Step(Box::new(StepReport { metrics: m, micro, update_ratios: None, grad_stats: fig.grad_stats.clone() })))?;
            if self.cfg.save_every > 0 && self.step.is_multiple_of(self.cfg.save_every) {
                let path = self.save_periodic(&dir)?;
                if !snapshot_each_step {
                    self.last_good = Some(self.snapshot()?);
                }
                on_event(&Event::Checkpoint { step: self.step, path })?;
            }
            if std::env::var("GRADSCOPE_FAULT").ok().and_then(|f| f.strip_prefix("lose-device-after-step-").and_then(|n| n.parse().ok())) == Some(self.step) {
                // fault injection for the device-loss test
                self.gpu().lose_device();
            }
        }
        let eval = match last {
            Some(e) => e,
            None => self.evaluate()?,
        };
        let path = dir.join("ckpt.safetensors");
        self.save(&path)?;
        on_event(&Event::Checkpoint { step: self.step, path })?;
        on_event(&Event::Finished { step: self.step, eval: Some(eval) })?;
        Ok(RunOutcome::Finished { eval })
    }
}

/// The file name of the periodic checkpoint of `step`.
pub fn periodic_name(step: usize) -> String {
    format!("ckpt-step{step:06}.safetensors")
}

/// The step of a periodic checkpoint's file name (`ckpt-stepNNNNNN.safetensors`, any width).
pub fn periodic_step(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("ckpt-step")?.strip_suffix(".safetensors")?.parse().ok()
}

/// The checkpoint's training config with `overrides` (CLI syntax) applied on top (in memory:
/// resumes on several threads at once must not share a file).
fn config_with_overrides(saved: &TrainConfig, overrides: &[String]) -> anyhow::Result<TrainConfig> {
    let base = toml::Table::try_from(saved)?;
    Ok(TrainConfig::load_layers(base, None, super::config::parse_overrides(overrides)?)?)
}
