//! The app's state without a window: persisted settings, what the trainer has confirmed,
//! bounded histories for the plots, and the accumulation window being stepped. UI actions become
//! `Control`s here and trainer events become history here, so both are unit-tested headless.

use std::collections::VecDeque;

use crate::gpu::MemorySnapshot;
use crate::model::grad_stats::GradStats;
use crate::train::events::{Event, StepReport};
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
    /// The loss plot's y axis on a log scale (a view setting: no control is sent).
    pub log_loss: bool,
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
            log_loss: false,
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

/// The loss plot's lines, always these three (a line that has no points yet is drawn empty, so
/// the legend and the plot's layout do not jump when the first validation loss arrives).
pub const LOSS_LINES: [&str; 3] = ["train (per micro-batch)", "train (per step)", "validation"];

/// One stacked memory band: x (optimizer steps), its lower and upper edges (MiB).
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    pub name: &'static str,
    pub xs: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

/// The share of a plot's height its legend takes: `entries` rows of ~20 points and a margin,
/// in a plot `height` points tall (at most 70%, the rest stays for the data).
pub fn legend_fraction(entries: usize, height: f32) -> f64 {
    ((entries as f64 * 20.0 + 24.0) / height.max(1.0) as f64).clamp(0.1, 0.7)
}

/// The upper y bound that leaves the top `fraction` of a plot free for its legend (top right),
/// above every point of `lines`. None without points.
pub fn legend_headroom(lines: &[&[[f64; 2]]], fraction: f64) -> Option<f64> {
    let ys = lines.iter().flat_map(|l| l.iter().map(|p| p[1])).filter(|y| y.is_finite());
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    if !lo.is_finite() {
        return None;
    }
    let span = if hi > lo { hi - lo } else { hi.abs().max(1e-9) };
    let f = fraction.clamp(0.0, 0.9);
    Some(hi + span * f / (1.0 - f))
}

/// The accumulation window the window view shows: the one being stepped by hand, or the last
/// one the loop ran (with the statistics the device measured, when `grad_stats` is on).
#[derive(Clone, Debug, Default)]
pub struct WindowView {
    /// The optimizer step the window makes.
    pub step: usize,
    pub k: usize,
    /// Per micro-batch: (mean loss, counted items), filled as micro-batches run.
    pub cells: Vec<Option<(f64, f64)>>,
    /// The gradient statistics of the micro-batches run so far.
    pub stats: Option<GradStats>,
    /// Stepped by hand (the host measured it, with the Gram matrix while it fits).
    pub by_hand: bool,
    /// The step that applied the window, once it did.
    pub applied: Option<StepReport>,
}

/// One micro-batch's card in the window view.
#[derive(Clone, Debug, PartialEq)]
pub struct Card {
    /// 0-based micro-batch index.
    pub index: usize,
    /// Mean loss over its counted items, and their number.
    pub loss: f64,
    pub count: f64,
    /// |g_k| / c_k, the norm of its mean gradient.
    pub mean_grad_norm: Option<f64>,
    /// cos(g_k, G_{k-1}): with the sum of the micro-batches before it.
    pub cos_running: Option<f64>,
    /// cos(g_k, G_K): with the window's final gradient (once the window is complete).
    pub cos_final: Option<f64>,
}

/// The micro-batch gradients adding up, in the plane of the final gradient and the first
/// direction orthogonal to it, scaled by 1 / C (C the window's count) so the sum's length is the
/// step's gradient norm: arrow k runs from `origins[k]` to `tips[k]`, head to tail, and the true
/// sum from (0, 0) to `sum`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arrows {
    pub origins: Vec<[f64; 2]>,
    pub tips: Vec<[f64; 2]>,
    pub sum: [f64; 2],
}

impl WindowView {
    pub fn done(&self) -> usize {
        self.cells.iter().filter(|c| c.is_some()).count()
    }

    /// Every micro-batch has run.
    pub fn complete(&self) -> bool {
        self.k > 0 && self.done() == self.k
    }

    fn reset(&mut self, step: usize, k: usize, by_hand: bool) {
        *self = WindowView { step, k, cells: vec![None; k], stats: None, by_hand, applied: None };
    }

    /// One card per micro-batch (None for those not run yet).
    pub fn cards(&self) -> Vec<Option<Card>> {
        let st = self.stats.as_ref();
        let complete = self.complete() && st.is_some_and(|s| s.k() == self.k);
        self.cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (loss, count) = (*c)?;
                let known = st.filter(|s| i < s.k());
                Some(Card {
                    index: i,
                    loss,
                    count,
                    mean_grad_norm: known.and_then(|s| s.mean_grad_norm(i, None)),
                    cos_running: known.and_then(|s| s.cos_running(i, None)),
                    cos_final: if complete { known.and_then(|s| s.cos_final(i)) } else { None },
                })
            })
            .collect()
    }

    /// (micro-batch, |G_k| / (c_1 + .. + c_k)): the running mean gradient's norm, x from 1.
    pub fn running_mean_norms(&self) -> Vec<[f64; 2]> {
        let Some(s) = &self.stats else { return Vec::new() };
        s.running_mean_grad_norms(None).into_iter().enumerate().filter_map(|(i, v)| Some([(i + 1) as f64, v?])).collect()
    }

    /// The step's gradient norm (before clipping), once the window was applied.
    pub fn step_norm(&self) -> Option<f64> {
        self.applied.as_ref().filter(|r| r.metrics.step == self.step).map(|r| r.metrics.grad_norm)
    }

    /// The arrows picture (needs the Gram matrix: None without it).
    pub fn arrows(&self) -> Option<Arrows> {
        let s = self.stats.as_ref()?;
        let c = s.total_count();
        if c <= 0.0 {
            return None;
        }
        let proj = s.projection()?;
        let (mut x, mut y) = (0.0, 0.0);
        let mut origins = Vec::new();
        let mut tips = Vec::new();
        for (a, b) in proj {
            origins.push([x, y]);
            x += a / c;
            y += b / c;
            tips.push([x, y]);
        }
        Some(Arrows { origins, tips, sum: [s.window_sq_norm(None).max(0.0).sqrt() / c, 0.0] })
    }

    /// The heat map: tensor names, and per tensor per micro-batch the norm of the mean gradient
    /// |g_k,t| / c_k (None for a micro-batch without counted items).
    pub fn heat(&self) -> Option<Heat> {
        let s = self.stats.as_ref()?;
        let rows = (0..s.tensors.len()).map(|t| (0..s.k()).map(|k| s.mean_grad_norm(k, Some(t))).collect()).collect();
        Some((s.tensors.clone(), rows))
    }
}

/// The heat map's tensor names, and per tensor per micro-batch a value (None: not known).
pub type Heat = (Vec<String>, Vec<Vec<Option<f64>>>);

/// The main area: the history plots or the window view; `Auto` shows the window view while
/// paused (stepping) and the history while training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MainView {
    #[default]
    Auto,
    History,
    Window,
}

/// One row of the what-if table: the same effective batch E as another B x K.
#[derive(Clone, Debug, PartialEq)]
pub struct WhatIf {
    pub micro_batch: usize,
    pub accum_steps: usize,
    /// Device memory the memory model predicts.
    pub bytes: u64,
    /// Seconds per optimizer step from the measured speed (None before any measurement).
    pub step_s: Option<f64>,
    /// The speed was measured at this B (else taken from the nearest measured B).
    pub measured: bool,
    pub current: bool,
}

/// The B x K = `e` choices (every divisor B of E), memory from `memory(b, k)`, time per step
/// from `speed` (counted items per second by B, as measured): at an unmeasured B the nearest
/// measured B's speed (in log distance) stands in, and the row says so.
pub fn what_if(
    e: usize, items_per_sample: f64, current_b: usize, speed: &std::collections::BTreeMap<usize, f64>, memory: impl Fn(usize, usize) -> u64,
) -> Vec<WhatIf> {
    (1..=e)
        .filter(|b| e.is_multiple_of(*b))
        .map(|b| {
            let k = e / b;
            let nearest = speed.iter().filter(|(_, v)| **v > 0.0).min_by(|x, y| {
                let d = |q: usize| ((q as f64) / (b as f64)).ln().abs();
                d(*x.0).total_cmp(&d(*y.0))
            });
            WhatIf {
                micro_batch: b,
                accum_steps: k,
                bytes: memory(b, k),
                step_s: nearest.map(|(_, v)| e as f64 * items_per_sample / v),
                measured: speed.get(&b).is_some_and(|v| *v > 0.0),
                current: b == current_b,
            }
        })
        .collect()
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
    /// What the main area shows (runtime, not persisted).
    pub main_view: MainView,
    /// The smoothed gradient noise scale B_simple (samples) by optimizer step.
    pub noise_scale: History,
    /// Counted items per second by micro-batch size, the last measured by the loop (steps made
    /// by hand, with their readbacks, are not counted).
    pub speed: std::collections::BTreeMap<usize, f64>,
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
            main_view: MainView::Auto,
            noise_scale: History::new(CAP),
            speed: Default::default(),
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
    /// The loss plot's log scale on or off (a view setting); true when it changed.
    pub fn set_log_loss(&mut self, on: bool) -> bool {
        let changed = on != self.settings.log_loss;
        self.settings.log_loss = on;
        changed
    }

    /// The loss plot's lines (`LOSS_LINES` order), as drawn: log10 of the loss on a log scale
    /// (points whose loss is not positive are left out there).
    pub fn loss_lines(&self) -> [(&'static str, Vec<[f64; 2]>); 3] {
        let map = |h: &History| -> Vec<[f64; 2]> {
            if self.settings.log_loss {
                h.points.iter().filter(|p| p[1] > 0.0).map(|p| [p[0], p[1].log10()]).collect()
            } else {
                h.points.clone()
            }
        };
        let [a, b, c] = LOSS_LINES;
        [(a, map(&self.micro_loss)), (b, map(&self.train_loss)), (c, map(&self.val_loss))]
    }

    /// Device memory per category as stacked bands (MiB): each category's band lies on the ones
    /// before it, so the top of the last is the total.
    pub fn memory_bands(&self) -> Vec<Band> {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let xs: Vec<f64> = self.memory.iter().map(|(s, _)| *s).collect();
        let mut lower = vec![0.0; xs.len()];
        crate::gpu::Category::ALL
            .iter()
            .map(|&c| {
                let upper: Vec<f64> = self.memory.iter().zip(&lower).map(|((_, m), lo)| lo + mib(m.get(c))).collect();
                let band = Band { name: c.name(), xs: xs.clone(), lower: lower.clone(), upper: upper.clone() };
                lower = upper;
                band
            })
            .collect()
    }

    /// Choose what the main area shows (a view setting); true when it changed.
    pub fn set_main_view(&mut self, v: MainView) -> bool {
        let changed = v != self.main_view;
        self.main_view = v;
        changed
    }

    /// What the main area shows now: `Auto` is the window view while paused.
    pub fn shown_view(&self) -> MainView {
        match self.main_view {
            MainView::Auto if self.paused => MainView::Window,
            MainView::Auto => MainView::History,
            v => v,
        }
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
        for h in [&mut self.train_loss, &mut self.micro_loss, &mut self.val_loss, &mut self.lr, &mut self.grad_norm, &mut self.update_ratio, &mut self.tokens_per_s, &mut self.noise_scale] {
            h.clear();
        }
        self.speed.clear();
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
                let w = &mut self.window;
                if w.step != r.step || w.k != r.of || w.complete() || !w.by_hand {
                    w.reset(r.step, r.of, true);
                }
                if r.index < w.cells.len() {
                    w.cells[r.index] = Some((r.loss, r.tokens));
                }
                if r.grad_stats.is_some() {
                    w.stats = r.grad_stats;
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
                if let Some(b) = m.b_simple {
                    self.noise_scale.push(s, b);
                }
                if rep.update_ratios.is_none() && m.per_s() > 0.0 {
                    self.speed.insert(m.micro_batch, m.per_s());
                }
                // the window view: the window stepped by hand gets its step; a window the loop
                // ran replaces it
                let w = &mut self.window;
                if !(w.by_hand && w.step == m.step) {
                    w.reset(m.step, rep.micro.len(), false);
                }
                for (j, (l, c)) in rep.micro.iter().enumerate() {
                    if j < w.cells.len() && w.cells[j].is_none() {
                        w.cells[j] = Some((*l, *c));
                    }
                }
                if rep.grad_stats.is_some() {
                    w.stats = rep.grad_stats.clone();
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
    use crate::train::events::MicroReport;
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
            s.apply(Event::MicroBatch(MicroReport { step: 1, index: j, of: 2, loss: 4.0 - j as f64, tokens: 100.0, grad_stats: Some(GradStats::default()) }));
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
        s.apply(Event::MicroBatch(MicroReport { step: 2, index: 0, of: 2, loss: 3.0, tokens: 90.0, grad_stats: Some(GradStats::default()) }));
        assert_eq!((s.window.step, s.window.done()), (2, 1));
        // health flags are collected
        let mut m = metrics(2, f64::NAN);
        m.health.nonfinite = true;
        s.apply(Event::Step(Box::new(StepReport { metrics: m, micro: vec![], update_ratios: None, grad_stats: None })));
        assert_eq!(s.health, vec![(2, "non-finite".to_string())]);
        assert!(s.history_csv().starts_with("step,train_loss"));
    }

    #[test]
    fn history_plots_log_scale_fixed_lines_stacked_memory_and_legend_room() {
        let mut s = state();
        assert_eq!(s.loss_lines().map(|l| l.0), LOSS_LINES, "three lines before any evaluation");
        assert!(s.loss_lines()[2].1.is_empty());
        let mut m = metrics(1, 100.0);
        m.memory = MemorySnapshot { bytes: [1 << 20, 2 << 20, 3 << 20, 4 << 20, 0] };
        s.apply(Event::Step(Box::new(StepReport { metrics: m, micro: vec![(1000.0, 10.0), (10.0, 10.0)], update_ratios: None, grad_stats: None })));
        s.apply(Event::Eval { step: 1, epoch: None, eval: crate::train::model::Evaluation { loss: 0.1, accuracy: None, items: 10 } });
        let lines = s.loss_lines();
        assert_eq!(lines.clone().map(|l| l.0), LOSS_LINES, "the same three lines after the first evaluation: no layout jump");
        assert_eq!((lines[1].1.clone(), lines[2].1.clone()), (vec![[1.0, 100.0]], vec![[1.0, 0.1]]));
        // the log scale is a view setting: no control, the lines become log10
        assert!(s.set_log_loss(true), "turning it on changes the view");
        assert!(!s.set_log_loss(true), "asking again changes nothing");
        let lines = s.loss_lines();
        assert_eq!(lines[0].1, vec![[0.5, 3.0], [1.0, 1.0]]);
        assert_eq!(lines[1].1, vec![[1.0, 2.0]]);
        assert_eq!(lines[2].1, vec![[1.0, -1.0]]);
        s.micro_loss.push(1.5, 0.0);
        assert_eq!(s.loss_lines()[0].1.len(), 2, "a loss of 0 has no logarithm: left out, not -inf");
        assert!(s.set_log_loss(false));
        assert_eq!(s.loss_lines()[1].1, vec![[1.0, 100.0]]);
        // memory: each band lies on the one before, the last top is the total
        let bands = s.memory_bands();
        assert_eq!(bands.iter().map(|b| b.name).collect::<Vec<_>>(), crate::gpu::Category::ALL.map(|c| c.name()).to_vec());
        assert_eq!(bands[0].lower, vec![0.0]);
        for w in bands.windows(2) {
            assert_eq!(w[1].lower, w[0].upper, "{} lies on {}", w[1].name, w[0].name);
        }
        assert_eq!(bands.iter().map(|b| b.upper[0]).collect::<Vec<_>>(), vec![1.0, 3.0, 6.0, 10.0, 10.0]);
        // the legend's room: the data stay below the top `fraction` of the height
        let f = legend_fraction(3, 200.0);
        assert!((f - 84.0 / 200.0).abs() < 1e-9, "three rows and a margin of a 200-point plot: {f}");
        assert_eq!(legend_fraction(20, 100.0), 0.7, "the data keep 30% at least");
        let top = legend_headroom(&[&[[0.0, 1.0], [1.0, 3.0]], &[[2.0, 2.0]]], f).unwrap();
        assert!(((3.0 - 1.0) / (top - 1.0) - (1.0 - f)).abs() < 1e-9, "{top}");
        assert_eq!(legend_headroom(&[&[]], f), None);
    }

    /// Three micro-batch gradients over two tensors ("a" of 2 values, "b" of 1), their counts,
    /// and the statistics the stepping path builds from them.
    fn three_micro_batches() -> (Vec<Vec<f32>>, Vec<f64>, Vec<GradStats>) {
        let grads: Vec<Vec<f32>> = vec![vec![2.0, 0.0, 1.0], vec![0.0, 3.0, -1.0], vec![4.0, 1.0, 2.0]];
        let counts = vec![2.0, 4.0, 1.0];
        let names = vec![("a".to_string(), 0, 2), ("b".to_string(), 2, 1)];
        let mut st = GradStats { tensors: vec!["a".into(), "b".into()], gram: Some(Vec::new()), ..Default::default() };
        let mut sum = vec![0.0f32; 3];
        let mut snapshots = Vec::new();
        for (k, g) in grads.iter().enumerate() {
            crate::train::live::add_micro_batch(&mut st, &names, g, &sum, counts[k], Some(&grads[..k]));
            sum = sum.iter().zip(g).map(|(a, b)| a + b).collect();
            snapshots.push(st.clone());
        }
        (grads, counts, snapshots)
    }

    fn norm(v: &[f64]) -> f64 {
        v.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    #[test]
    fn the_window_view_fills_card_by_card_and_adds_up_at_the_step() {
        let (grads, counts, snaps) = three_micro_batches();
        let g: Vec<Vec<f64>> = grads.iter().map(|v| v.iter().map(|x| *x as f64).collect()).collect();
        let total: Vec<f64> = (0..3).map(|i| g.iter().map(|v| v[i]).sum()).collect();
        let c_all: f64 = counts.iter().sum();
        let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b));
        let mut s = state();
        s.apply(Event::Paused(true));
        assert_eq!(s.shown_view(), MainView::Window, "paused: the main area shows the window");
        for k in 0..2 {
            s.apply(Event::MicroBatch(MicroReport { step: 1, index: k, of: 3, loss: 2.0 + k as f64, tokens: counts[k], grad_stats: Some(snaps[k].clone()) }));
        }
        let cards = s.window.cards();
        assert_eq!(cards.len(), 3);
        assert!(cards[2].is_none(), "the third micro-batch has not run");
        let c1 = cards[1].clone().unwrap();
        assert_eq!((c1.index, c1.loss, c1.count), (1, 3.0, 4.0));
        assert!((c1.mean_grad_norm.unwrap() - norm(&g[1]) / 4.0).abs() < 1e-9, "|g_k| of the mean gradient: {c1:?}");
        assert!((c1.cos_running.unwrap() - cos(&g[1], &g[0])).abs() < 1e-9, "{c1:?}");
        assert!(cards[0].clone().unwrap().cos_running.is_none(), "nothing runs before the first");
        assert!(c1.cos_final.is_none(), "no final gradient before the window is complete");
        s.apply(Event::MicroBatch(MicroReport { step: 1, index: 2, of: 3, loss: 1.0, tokens: 1.0, grad_stats: Some(snaps[2].clone()) }));
        let cards: Vec<Card> = s.window.cards().into_iter().map(Option::unwrap).collect();
        for (k, c) in cards.iter().enumerate() {
            assert!((c.cos_final.unwrap() - cos(&g[k], &total)).abs() < 1e-9, "card {k}: {c:?}");
        }
        // the running mean gradient's norm ends at the window's mean gradient norm
        let run = s.window.running_mean_norms();
        assert_eq!(run.len(), 3);
        assert_eq!(run[0][0], 1.0, "x counts micro-batches from 1");
        assert!((run[0][1] - norm(&g[0]) / 2.0).abs() < 1e-9);
        assert!((run[2][1] - norm(&total) / c_all).abs() < 1e-9, "{run:?}");
        // the arrows add up head to tail to the true sum, which lies along x with the step's norm
        let a = s.window.arrows().expect("the stepping path keeps the Gram matrix");
        assert_eq!(a.origins[0], [0.0, 0.0]);
        for k in 1..3 {
            assert_eq!(a.origins[k], a.tips[k - 1], "head to tail");
        }
        assert!((a.sum[0] - norm(&total) / c_all).abs() < 1e-9 && a.sum[1] == 0.0, "{a:?}");
        assert!((a.tips[2][0] - a.sum[0]).abs() < 1e-9 && a.tips[2][1].abs() < 1e-9, "the last tip is the sum: {a:?}");
        for ((o, t), gk) in a.origins.iter().zip(&a.tips).zip(&g) {
            let len = ((t[0] - o[0]).powi(2) + (t[1] - o[1]).powi(2)).sqrt();
            assert!(len <= norm(gk) / c_all + 1e-9, "a projection is no longer than the gradient");
        }
        // the heat map: per tensor, per micro-batch, the norm of the mean gradient
        let (names, rows) = s.window.heat().unwrap();
        assert_eq!(names, vec!["a".to_string(), "b".to_string()]);
        for (k, (gk, ck)) in g.iter().zip(&counts).enumerate() {
            assert!((rows[0][k].unwrap() - norm(&gk[..2]) / ck).abs() < 1e-9);
            assert!((rows[1][k].unwrap() - gk[2].abs() / ck).abs() < 1e-9);
        }
        // the step: its norm against the running mean's end, the update ratios kept
        let mut m = metrics(1, 2.0);
        m.grad_norm = norm(&total) / c_all;
        let ur = vec![("a".to_string(), 0.01), ("b".to_string(), 0.02)];
        s.apply(Event::Step(Box::new(StepReport {
            metrics: m, micro: vec![(2.0, 2.0), (3.0, 4.0), (1.0, 1.0)], update_ratios: Some(ur.clone()), grad_stats: Some(snaps[2].clone()),
        })));
        assert!(s.window.by_hand && s.window.complete());
        assert!((s.window.step_norm().unwrap() - run[2][1]).abs() < 1e-9);
        assert_eq!(s.window.applied.as_ref().unwrap().update_ratios, Some(ur));
        assert!(s.speed.is_empty(), "a step made by hand (with its readbacks) is no speed measurement");
        // without the Gram matrix (the fused window): cards and heat map, no arrows, and only the
        // last card knows its cosine with the final gradient
        let mut fused = snaps[2].clone();
        fused.gram = None;
        let mut m = metrics(2, 1.5);
        m.b_simple = Some(40.0);
        s.apply(Event::Step(Box::new(StepReport { metrics: m, micro: vec![(2.0, 2.0), (3.0, 4.0), (1.0, 1.0)], update_ratios: None, grad_stats: Some(fused) })));
        assert_eq!((s.window.step, s.window.by_hand), (2, false), "the loop's window replaces the stepped one");
        assert!(s.window.arrows().is_none());
        let cards: Vec<Card> = s.window.cards().into_iter().map(Option::unwrap).collect();
        assert!(cards[0].cos_final.is_none() && cards[2].cos_final.is_some());
        assert_eq!(s.noise_scale.points, vec![[2.0, 40.0]]);
        assert_eq!(s.speed.get(&16), Some(&1000.0), "the loop's speed at its B");
    }

    #[test]
    fn the_main_view_follows_pausing_unless_chosen() {
        let mut s = state();
        assert_eq!(s.shown_view(), MainView::History, "training: the history");
        s.apply(Event::Paused(true));
        assert_eq!(s.shown_view(), MainView::Window);
        assert!(s.set_main_view(MainView::History));
        assert!(!s.set_main_view(MainView::History));
        assert_eq!(s.shown_view(), MainView::History, "chosen: kept while paused");
        assert!(s.set_main_view(MainView::Window));
        s.apply(Event::Paused(false));
        assert_eq!(s.shown_view(), MainView::Window, "chosen: kept while training (its own tab)");
        s.set_main_view(MainView::Auto);
        assert_eq!(s.shown_view(), MainView::History);
    }

    #[test]
    fn what_if_lists_every_b_x_k_of_the_same_e() {
        let speed: std::collections::BTreeMap<usize, f64> = [(4, 1000.0), (16, 4000.0)].into();
        let rows = what_if(16, 32.0, 4, &speed, |b, k| (b * 1000 + k) as u64);
        assert_eq!(rows.iter().map(|r| (r.micro_batch, r.accum_steps)).collect::<Vec<_>>(), vec![(1, 16), (2, 8), (4, 4), (8, 2), (16, 1)]);
        assert!(rows.iter().all(|r| r.bytes == (r.micro_batch * 1000 + r.accum_steps) as u64), "memory from the model");
        let r4 = &rows[2];
        assert!(r4.current && r4.measured);
        assert!((r4.step_s.unwrap() - 16.0 * 32.0 / 1000.0).abs() < 1e-12, "E x T items at the measured rate");
        assert!((rows[4].step_s.unwrap() - 16.0 * 32.0 / 4000.0).abs() < 1e-12);
        assert!(!rows[0].measured && (rows[0].step_s.unwrap() - 16.0 * 32.0 / 1000.0).abs() < 1e-12, "B 1 borrows the nearest measured B (4)");
        assert!(!rows[3].measured, "B 8 was not measured");
        assert!(what_if(6, 1.0, 2, &Default::default(), |_, _| 0).iter().all(|r| r.step_s.is_none()), "no speed before any measurement");
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
