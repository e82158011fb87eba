//! The app's state without a window: persisted settings, what the trainer has confirmed,
//! bounded histories for the plots, and the accumulation window being stepped. UI actions become
//! `Control`s here and trainer events become history here, so both are unit-tested headless.

use std::collections::VecDeque;

use crate::gpu::MemorySnapshot;
use crate::train::events::{Event, MicroReport, StepReport};
use crate::train::live::Control;
use crate::train::{Derived, TrainConfig};

/// Settings kept between launches (eframe storage). Runtime state is not persisted.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model: crate::train::config::ModelKind,
    pub norm: crate::reference::cnn_model::NormKind,
    pub dataset: crate::data::images::Dataset,
    pub micro_batch: usize,
    pub accum_steps: usize,
    pub lr: f64,
    pub grad_clip: f64,
    pub data: String,
    pub max_steps: usize,
    pub eval_every: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub block_size: usize,
    /// GPT activation checkpointing.
    pub checkpoint_activations: bool,
    /// GPT activation precision (f16: mixed precision with loss scaling).
    pub precision: crate::gpu::Precision,
}

impl Default for Settings {
    /// The training defaults, with a longer run and more frequent evaluation for watching.
    fn default() -> Self {
        Self { max_steps: 2000, eval_every: 25, ..Self::from_config(&TrainConfig::default()) }
    }
}

impl Settings {
    pub fn from_config(c: &TrainConfig) -> Self {
        Self {
            model: c.model,
            norm: c.norm,
            dataset: c.dataset,
            micro_batch: c.micro_batch,
            accum_steps: c.accum_steps,
            lr: c.lr,
            grad_clip: c.grad_clip,
            data: c.data.clone(),
            max_steps: c.max_steps,
            eval_every: c.eval_every,
            n_embd: c.n_embd,
            n_layer: c.n_layer,
            n_head: c.n_head,
            block_size: c.block_size,
            checkpoint_activations: c.checkpoint_activations,
            precision: c.precision,
        }
    }

    /// The training config of a new run with these settings.
    pub fn to_config(&self, base: &TrainConfig) -> TrainConfig {
        TrainConfig {
            model: self.model,
            norm: self.norm,
            dataset: self.dataset,
            micro_batch: self.micro_batch,
            accum_steps: self.accum_steps,
            effective_batch: 0,
            lr: self.lr,
            grad_clip: self.grad_clip,
            data: self.data.clone(),
            max_steps: self.max_steps,
            eval_every: self.eval_every,
            n_embd: self.n_embd,
            n_layer: self.n_layer,
            n_head: self.n_head,
            block_size: self.block_size,
            checkpoint_activations: self.checkpoint_activations && self.model == crate::train::config::ModelKind::Gpt,
            precision: if self.model == crate::train::config::ModelKind::Gpt { self.precision } else { crate::gpu::Precision::F32 },
            ..base.clone()
        }
    }
}

/// A plot series bounded in length: when full, the older half is merged pairwise (averaged), so
/// hours of training keep a fixed cost per frame while recent points stay at full resolution.
#[derive(Clone, Debug)]
pub struct History {
    pub points: Vec<[f64; 2]>,
    cap: usize,
}

impl History {
    pub fn new(cap: usize) -> Self {
        Self { points: Vec::new(), cap: cap.max(4) }
    }
    pub fn push(&mut self, x: f64, y: f64) {
        if !y.is_finite() {
            return;
        }
        if self.points.len() >= self.cap {
            let half = self.points.len() / 2;
            let merged: Vec<[f64; 2]> = self.points[..half]
                .chunks(2)
                .map(|c| {
                    let n = c.len() as f64;
                    [c.iter().map(|p| p[0]).sum::<f64>() / n, c.iter().map(|p| p[1]).sum::<f64>() / n]
                })
                .collect();
            let rest = self.points.split_off(half);
            self.points = merged;
            self.points.extend(rest);
        }
        self.points.push([x, y]);
    }
    pub fn last(&self) -> Option<[f64; 2]> {
        self.points.last().copied()
    }
    pub fn len(&self) -> usize {
        self.points.len()
    }
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
    pub fn clear(&mut self) {
        self.points.clear();
    }
}

const CAP: usize = 2000;

/// The accumulation window as the stepping panel shows it.
#[derive(Clone, Debug, Default)]
pub struct WindowView {
    /// The optimizer step the window will make.
    pub step: usize,
    pub k: usize,
    /// One cell per micro-batch; filled as micro-batches run.
    pub cells: Vec<Option<MicroReport>>,
    /// The step that applied the last completed window.
    pub applied: Option<StepReport>,
}

impl WindowView {
    pub fn done(&self) -> usize {
        self.cells.iter().filter(|c| c.is_some()).count()
    }
}

/// Settings as confirmed by the trainer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Confirmed {
    pub micro_batch: usize,
    pub accum_steps: usize,
    pub lr: f64,
    pub grad_clip: f64,
    pub checkpoint_activations: bool,
    pub precision: crate::gpu::Precision,
}

#[derive(Clone, Debug)]
pub struct AppState {
    /// What the user asked for (persisted).
    pub settings: Settings,
    pub confirmed: Option<Confirmed>,
    pub base_config: TrainConfig,
    pub derived: Option<Derived>,
    pub paused: bool,
    pub finished: bool,
    pub step: usize,
    pub train_loss: History,
    pub micro_loss: History,
    pub val_loss: History,
    pub lr: History,
    pub grad_norm: History,
    pub update_ratio: History,
    pub tokens_per_s: History,
    /// (step, bytes per category), bounded like the histories.
    pub memory: VecDeque<(f64, MemorySnapshot)>,
    pub window: WindowView,
    /// (step, description) of gradient-health flags.
    pub health: Vec<(usize, String)>,
    pub log: VecDeque<String>,
    /// The last per-kernel profile: (after step, micro-batch, kernel -> seconds, largest first).
    pub profile: Option<(usize, usize, Vec<(String, f64)>)>,
}

impl AppState {
    pub fn new(settings: Settings, base_config: TrainConfig) -> Self {
        Self {
            settings,
            confirmed: None,
            base_config,
            derived: None,
            paused: false,
            finished: false,
            step: 0,
            train_loss: History::new(CAP),
            micro_loss: History::new(CAP),
            val_loss: History::new(CAP),
            lr: History::new(CAP),
            grad_norm: History::new(CAP),
            update_ratio: History::new(CAP),
            tokens_per_s: History::new(CAP),
            memory: VecDeque::new(),
            window: WindowView::default(),
            health: Vec::new(),
            log: VecDeque::new(),
            profile: None,
        }
    }

    /// The config of a new run from the current settings.
    pub fn run_config(&self) -> TrainConfig {
        self.settings.to_config(&self.base_config)
    }

    fn note(&mut self, s: String) {
        self.log.push_back(s);
        while self.log.len() > 200 {
            self.log.pop_front();
        }
    }

    // ---- UI actions -> controls ----

    pub fn set_micro_batch(&mut self, b: usize) -> Option<Control> {
        if b == 0 || b == self.settings.micro_batch {
            return None;
        }
        self.settings.micro_batch = b;
        Some(Control::SetMicroBatch(b))
    }
    pub fn set_accum_steps(&mut self, k: usize) -> Option<Control> {
        if k == 0 || k == self.settings.accum_steps {
            return None;
        }
        self.settings.accum_steps = k;
        Some(Control::SetAccumSteps(k))
    }
    pub fn set_lr(&mut self, lr: f64) -> Option<Control> {
        if !(lr > 0.0 && lr.is_finite()) || lr == self.settings.lr {
            return None;
        }
        self.settings.lr = lr;
        Some(Control::SetLr(lr))
    }
    pub fn set_grad_clip(&mut self, c: f64) -> Option<Control> {
        if !(c >= 0.0 && c.is_finite()) || c == self.settings.grad_clip {
            return None;
        }
        self.settings.grad_clip = c;
        Some(Control::SetGradClip(c))
    }
    pub fn set_activation_checkpointing(&mut self, on: bool) -> Option<Control> {
        if on == self.settings.checkpoint_activations {
            return None;
        }
        self.settings.checkpoint_activations = on;
        Some(Control::SetActivationCheckpointing(on))
    }
    pub fn set_precision(&mut self, p: crate::gpu::Precision) -> Option<Control> {
        if p == self.settings.precision {
            return None;
        }
        self.settings.precision = p;
        Some(Control::SetPrecision(p))
    }
    pub fn toggle_pause(&self) -> Control {
        if self.paused { Control::Resume } else { Control::Pause }
    }
    /// A new run: clears the histories.
    pub fn reset(&mut self) -> Control {
        self.clear();
        Control::Reset(Box::new(self.run_config()))
    }

    fn clear(&mut self) {
        for h in [&mut self.train_loss, &mut self.micro_loss, &mut self.val_loss, &mut self.lr, &mut self.grad_norm, &mut self.update_ratio, &mut self.tokens_per_s] {
            h.clear();
        }
        self.memory.clear();
        self.window = WindowView::default();
        self.health.clear();
        self.step = 0;
        self.finished = false;
        self.confirmed = None;
    }

    /// Which settings the trainer has not confirmed yet.
    pub fn pending(&self) -> Vec<&'static str> {
        let Some(c) = self.confirmed else { return vec!["all settings"] };
        let s = &self.settings;
        let mut v = Vec::new();
        if c.micro_batch != s.micro_batch {
            v.push("micro-batch");
        }
        if c.accum_steps != s.accum_steps {
            v.push("accumulation steps");
        }
        if c.lr != s.lr {
            v.push("learning rate");
        }
        if c.grad_clip != s.grad_clip {
            v.push("clip");
        }
        let gpt = self.base_config.model == crate::train::config::ModelKind::Gpt;
        if c.checkpoint_activations != (s.checkpoint_activations && gpt) {
            v.push("activation checkpointing");
        }
        let want = if gpt { s.precision } else { crate::gpu::Precision::F32 };
        if c.precision != want {
            v.push("precision");
        }
        v
    }

    // ---- trainer events -> state ----

    pub fn apply(&mut self, e: Event) {
        match e {
            Event::Started { derived, config } => {
                self.base_config = config;
                self.derived = Some(derived);
            }
            Event::Settings { micro_batch, accum_steps, lr, grad_clip, checkpoint_activations, precision } => {
                self.confirmed = Some(Confirmed { micro_batch, accum_steps, lr, grad_clip, checkpoint_activations, precision });
            }
            Event::Paused(p) => self.paused = p,
            Event::Profile { step, micro_batch, kernels } => self.profile = Some((step, micro_batch, kernels)),
            Event::MicroBatch(r) => {
                if self.window.step != r.step || self.window.k != r.of || self.window.done() == self.window.k {
                    self.window.step = r.step;
                    self.window.k = r.of;
                    self.window.cells = vec![None; r.of];
                }
                let i = r.index;
                if i < self.window.cells.len() {
                    self.window.cells[i] = Some(r);
                }
            }
            Event::Step(rep) => {
                let m = &rep.metrics;
                let s = m.step as f64;
                self.step = m.step;
                self.train_loss.push(s, m.train_loss);
                let k = rep.micro.len().max(1) as f64;
                for (j, (l, _)) in rep.micro.iter().enumerate() {
                    self.micro_loss.push(s - 1.0 + (j + 1) as f64 / k, *l);
                }
                self.lr.push(s, m.lr);
                self.grad_norm.push(s, m.grad_norm);
                self.update_ratio.push(s, m.update_grad_ratio);
                self.tokens_per_s.push(s, m.per_s());
                self.memory.push_back((s, m.memory));
                if self.memory.len() > CAP {
                    // keep every other old sample
                    let keep: VecDeque<_> = self.memory.iter().enumerate().filter(|(i, _)| i % 2 == 0 || *i >= CAP / 2).map(|(_, x)| *x).collect();
                    self.memory = keep;
                }
                if m.health.any() {
                    self.health.push((m.step, m.health.describe()));
                }
                // the stepped window is complete: show its micro-batches as filled cells
                if self.window.step == m.step && self.window.done() < self.window.k {
                    // run by the loop after some hand steps: mark the rest done from the step's figures
                    for (j, (l, c)) in rep.micro.iter().enumerate() {
                        if j < self.window.cells.len() && self.window.cells[j].is_none() {
                            self.window.cells[j] = Some(MicroReport {
                                step: m.step, index: j, of: rep.micro.len(), loss: *l, tokens: *c,
                                accumulated_norm: f64::NAN, micro_norm: f64::NAN, cosine: f64::NAN, tensor_norms: vec![], grad_stats: None,
                            });
                        }
                    }
                }
                self.window.applied = Some(*rep);
            }
            Event::Eval { step, eval, .. } => {
                self.val_loss.push(step as f64, eval.loss);
                match eval.accuracy {
                    Some(a) => self.note(format!("step {step}: test loss {:.4}, accuracy {:.2}%", eval.loss, 100.0 * a)),
                    None => self.note(format!("step {step}: validation loss {:.4}", eval.loss)),
                }
            }
            Event::Checkpoint { path, .. } => self.note(format!("saved {}", path.display())),
            Event::Error(e) => self.note(format!("error: {e}")),
            Event::Finished { step, .. } => {
                self.finished = true;
                self.note(format!("finished at step {step} (resume to continue)"));
            }
        }
    }

    /// Metrics history as CSV (what the plots show).
    pub fn history_csv(&self) -> String {
        let mut out = String::from("step,train_loss,val_loss,lr,grad_norm,tokens_per_s\n");
        let val: std::collections::HashMap<u64, f64> = self.val_loss.points.iter().map(|p| (p[0] as u64, p[1])).collect();
        for (i, p) in self.train_loss.points.iter().enumerate() {
            let step = p[0];
            let get = |h: &History| h.points.get(i).map(|q| q[1]).map(|v| v.to_string()).unwrap_or_default();
            let v = val.get(&(step as u64)).map(|v| v.to_string()).unwrap_or_default();
            out.push_str(&format!("{step},{},{v},{},{},{}\n", p[1], get(&self.lr), get(&self.grad_norm), get(&self.tokens_per_s)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::MemorySnapshot;
    use crate::train::health::{Health, StepMetrics};

    fn state() -> AppState {
        AppState::new(Settings::default(), TrainConfig::default())
    }

    fn metrics(step: usize, loss: f64) -> StepMetrics {
        StepMetrics {
            step,
            train_loss: loss,
            val_loss: None,
            test_loss: None,
            test_accuracy: None,
            lr: 3e-3,
            grad_norm: 0.5,
            clipped: false,
            update_grad_ratio: 0.01,
            skipped: false,
            loss_scale: None,
            items: 4096.0,
            tokens_per_s: Some(1000.0),
            images_per_s: None,
            wall_s: 1.0,
            micro_batch: 16,
            accum_steps: 2,
            memory: MemorySnapshot { bytes: [1, 2, 3, 4, 5] },
            health: Health::default(),
            b_simple: None,
            b_simple_items: None,
            noise_g2: None,
            noise_trace: None,
        }
    }

    #[test]
    fn controls_become_messages_and_stay_pending_until_confirmed() {
        let mut s = state();
        assert_eq!(s.set_micro_batch(8), Some(Control::SetMicroBatch(8)));
        assert_eq!(s.set_micro_batch(8), None, "no message when nothing changes");
        assert_eq!(s.set_micro_batch(0), None, "B = 0 is refused");
        assert_eq!(s.set_accum_steps(2), Some(Control::SetAccumSteps(2)));
        assert_eq!(s.set_lr(1e-3), Some(Control::SetLr(1e-3)));
        assert_eq!(s.set_lr(-1.0), None);
        assert_eq!(s.set_grad_clip(0.5), Some(Control::SetGradClip(0.5)));
        assert_eq!(s.toggle_pause(), Control::Pause);
        assert_eq!(s.pending(), vec!["all settings"]);
        s.apply(Event::Settings { micro_batch: 16, accum_steps: 2, lr: 1e-3, grad_clip: 0.5, checkpoint_activations: false, precision: crate::gpu::Precision::F32 });
        assert_eq!(s.pending(), vec!["micro-batch"], "B applies at the next step boundary");
        s.apply(Event::Settings { micro_batch: 8, accum_steps: 2, lr: 1e-3, grad_clip: 0.5, checkpoint_activations: false, precision: crate::gpu::Precision::F32 });
        assert!(s.pending().is_empty());
        assert_eq!(s.set_activation_checkpointing(true), Some(Control::SetActivationCheckpointing(true)));
        assert_eq!(s.set_activation_checkpointing(true), None);
        assert_eq!(s.pending(), vec!["activation checkpointing"]);
        s.apply(Event::Settings { micro_batch: 8, accum_steps: 2, lr: 1e-3, grad_clip: 0.5, checkpoint_activations: true, precision: crate::gpu::Precision::F32 });
        assert!(s.pending().is_empty());
        use crate::gpu::Precision;
        assert_eq!(s.set_precision(Precision::F16), Some(Control::SetPrecision(Precision::F16)));
        assert_eq!(s.set_precision(Precision::F16), None);
        assert_eq!(s.pending(), vec!["precision"], "f16 is pending until the trainer confirms it");
        s.apply(Event::Settings { micro_batch: 8, accum_steps: 2, lr: 1e-3, grad_clip: 0.5, checkpoint_activations: true, precision: Precision::F16 });
        assert!(s.pending().is_empty());
        s.apply(Event::Paused(true));
        assert_eq!(s.toggle_pause(), Control::Resume);
        match s.reset() {
            Control::Reset(cfg) => assert_eq!(
                (cfg.micro_batch, cfg.accum_steps, cfg.lr, cfg.checkpoint_activations, cfg.precision),
                (8, 2, 1e-3, true, Precision::F16)
            ),
            other => panic!("{other:?}"),
        }
        // a new run of the CNN with BatchNorm
        s.settings.model = crate::train::config::ModelKind::Cnn;
        s.settings.norm = crate::reference::cnn_model::NormKind::Batch;
        match s.reset() {
            Control::Reset(cfg) => {
                assert_eq!((cfg.model, cfg.norm), (crate::train::config::ModelKind::Cnn, crate::reference::cnn_model::NormKind::Batch));
                assert_eq!(cfg.precision, Precision::F32, "the CNN trains in f32");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_fill_histories_and_the_window_strip() {
        let mut s = state();
        for j in 0..2 {
            s.apply(Event::MicroBatch(MicroReport {
                step: 1, index: j, of: 2, loss: 4.0 - j as f64, tokens: 100.0, accumulated_norm: 1.0 + j as f64,
                micro_norm: 1.0, cosine: 0.9, tensor_norms: vec![], grad_stats: None,
            }));
        }
        assert_eq!((s.window.k, s.window.done()), (2, 2));
        s.apply(Event::Step(Box::new(StepReport { metrics: metrics(1, 3.5), micro: vec![(4.0, 100.0), (3.0, 100.0)], update_ratios: None, grad_stats: None })));
        assert_eq!(s.step, 1);
        assert_eq!(s.train_loss.points, vec![[1.0, 3.5]]);
        assert_eq!(s.micro_loss.points, vec![[0.5, 4.0], [1.0, 3.0]], "micro-batch losses at fractional steps");
        assert_eq!(s.memory.len(), 1);
        s.apply(Event::Eval { step: 1, epoch: None, eval: crate::train::model::Evaluation { loss: 3.6, accuracy: None, items: 100 } });
        assert_eq!(s.val_loss.last(), Some([1.0, 3.6]));
        // a new window starts a new strip
        s.apply(Event::MicroBatch(MicroReport {
            step: 2, index: 0, of: 2, loss: 3.0, tokens: 90.0, accumulated_norm: 1.0, micro_norm: 1.0, cosine: 1.0, tensor_norms: vec![], grad_stats: None,
        }));
        assert_eq!((s.window.step, s.window.done()), (2, 1));
        // health flags are collected
        let mut m = metrics(2, f64::NAN);
        m.health.nonfinite = true;
        s.apply(Event::Step(Box::new(StepReport { metrics: m, micro: vec![], update_ratios: None, grad_stats: None })));
        assert_eq!(s.health, vec![(2, "non-finite".to_string())]);
        assert!(s.history_csv().starts_with("step,train_loss"));
    }

    #[test]
    fn histories_stay_bounded() {
        let mut h = History::new(100);
        for i in 0..100_000 {
            h.push(i as f64, (i % 7) as f64);
        }
        assert!(h.len() <= 100, "{}", h.len());
        assert_eq!(h.last(), Some([99_999.0, (99_999 % 7) as f64]), "the newest point is kept exactly");
        let xs: Vec<f64> = h.points.iter().map(|p| p[0]).collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "x stays increasing after merging");
    }

    #[test]
    fn settings_round_trip_through_storage_format() {
        let s = Settings { micro_batch: 7, ..Settings::default() };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), s);
        // settings saved by an older version (missing keys) load with defaults
        let old: Settings = serde_json::from_str(r#"{"micro_batch": 3}"#).unwrap();
        assert_eq!(old.micro_batch, 3);
        assert_eq!(old.accum_steps, Settings::default().accum_steps);
    }
}
