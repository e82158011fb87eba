//! A live training session on its own thread, steered by `Control`s and reporting `Event`s:
//! the seam between the trainer and the desktop app (which never blocks on it). The trainer side
//! knows nothing of egui: the front end passes a `wake` callback that it calls after each event.
//!
//! When settings apply: B and K at the next optimizer-step boundary (a window always runs with
//! one B and one K, so what the panel shows is exactly what was stepped; normalization by the
//! real count would make a mid-window change exact too, but a boundary is easier to read);
//! learning rate and clip threshold at the next optimizer step. Each applied change is confirmed
//! with `Event::Settings`, so the front end can show changes as pending until then.
//!
//! Stepping (paused): `StepMicroBatch` runs one micro-batch of the current window and reads back
//! what the panel shows (loss and count of that micro-batch, the accumulated gradient's norm,
//! per-tensor norms, the cosine between the micro-batch's gradient and the accumulated one);
//! `StepOptimizer` runs what is left of the window and the step, and reports the global norm,
//! whether it was clipped and the update-to-weight ratio per tensor. These readbacks happen only
//! when stepping by hand; the running loop reads back once per window.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use crate::gpu::Gpu;

use super::config::ModelKind;
use super::events::{Event, MicroReport, StepReport};
use super::trainer::{Trainer, Window};
use super::TrainConfig;

/// Commands from a front end.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    SetMicroBatch(usize),
    SetAccumSteps(usize),
    SetLr(f64),
    SetGradClip(f64),
    /// GPT activation checkpointing on/off (at the next optimizer-step boundary).
    SetActivationCheckpointing(bool),
    /// GPT activation precision, f32 or f16 mixed precision (at the next optimizer-step boundary).
    SetPrecision(crate::gpu::Precision),
    /// Per-micro-batch gradient statistics and the noise scale on/off (at the next
    /// optimizer-step boundary).
    SetGradStats(bool),
    /// Time every kernel of one micro-batch (timestamp queries) between windows.
    ProfileKernels,
    Pause,
    Resume,
    /// Paused: run the next micro-batch of the current window.
    StepMicroBatch,
    /// Paused: run the rest of the window and the optimizer step.
    StepOptimizer,
    /// Start a new run with this config.
    Reset(Box<TrainConfig>),
    Save(PathBuf),
    Shutdown,
}

/// The front end's handle on a session.
pub struct Session {
    pub controls: Sender<Control>,
    pub events: Receiver<Event>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Start a session on `gpu` (the app passes the device eframe created).
pub fn spawn(gpu: Gpu, cfg: TrainConfig, paused: bool, wake: Arc<dyn Fn() + Send + Sync>) -> Session {
    let (ctx, crx) = channel();
    let (etx, erx) = channel();
    let thread = std::thread::Builder::new()
        .name("gradscope trainer".into())
        .spawn(move || {
            let mut w = Worker { gpu, tx: etx, wake, paused, pending_b: None, pending_k: None, pending_ck: None, pending_precision: None, pending_stats: None, window: None, hand: None, finished: false };
            w.run(cfg, crx);
        })
        .expect("spawn the trainer thread");
    Session { controls: ctx, events: erx, thread }
}

struct Worker {
    gpu: Gpu,
    tx: Sender<Event>,
    wake: Arc<dyn Fn() + Send + Sync>,
    paused: bool,
    pending_b: Option<usize>,
    pending_k: Option<usize>,
    pending_ck: Option<bool>,
    pending_precision: Option<crate::gpu::Precision>,
    pending_stats: Option<bool>,
    /// A window being stepped by hand, and the accumulated gradient after its last micro-batch.
    window: Option<(Window, Vec<f32>)>,
    /// Its gradient statistics measured on the host (`grad_stats` on).
    hand: Option<HandStats>,
    finished: bool,
}

/// The most host memory the micro-batch gradients of a window stepped by hand may take for the
/// exact Gram matrix (past it the Gram matrix, and so the cosine with the final gradient of any
/// but the last micro-batch, is not offered).
pub const GRAM_HOST_BYTES: usize = 512 << 20;

/// The statistics of a window stepped by hand: everything the device measures, plus the Gram
/// matrix of the micro-batch gradients (the host holds each g_k while the window lasts).
struct HandStats {
    stats: crate::model::grad_stats::GradStats,
    grads: Option<Vec<Vec<f32>>>,
}

enum Flow {
    Continue,
    Stop,
}

impl Worker {
    fn send(&self, e: Event) {
        let _ = self.tx.send(e);
        (self.wake)();
    }

    fn start(&mut self, cfg: TrainConfig) -> Option<Trainer> {
        self.window = None;
        self.hand = None;
        self.finished = false;
        self.pending_b = None;
        self.pending_k = None;
        self.pending_ck = None;
        self.pending_precision = None;
        self.pending_stats = None;
        match Trainer::new(&self.gpu, cfg.clone()) {
            Ok(t) => {
                self.send(Event::Started { derived: t.derived(), config: t.cfg.clone() });
                self.send_settings(&t);
                self.send(Event::Paused(self.paused));
                Some(t)
            }
            Err(e) => {
                self.send(Event::Error(format!("{e:#}")));
                None
            }
        }
    }

    fn send_settings(&self, t: &Trainer) {
        let c = &t.cfg;
        self.send(Event::Settings {
            micro_batch: c.micro_batch, accum_steps: c.accum_steps, lr: c.lr, grad_clip: c.grad_clip,
            checkpoint_activations: c.checkpoint_activations, precision: c.precision,
        });
    }

    fn run(&mut self, cfg: TrainConfig, rx: Receiver<Control>) {
        let mut trainer = self.start(cfg);
        loop {
            // Wait for a control when there is nothing to do; poll while training.
            let idle = self.paused || self.finished || trainer.is_none();
            let ctl = if idle {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            };
            if let Some(c) = ctl {
                if let Flow::Stop = self.handle(c, &mut trainer) {
                    return;
                }
                continue;
            }
            if let Some(t) = trainer.as_mut() {
                if let Err(e) = self.step(t, false) {
                    self.send(Event::Error(format!("{e:#}")));
                    self.paused = true;
                    self.send(Event::Paused(true));
                }
            }
        }
    }

    fn handle(&mut self, c: Control, trainer: &mut Option<Trainer>) -> Flow {
        match c {
            Control::Shutdown => return Flow::Stop,
            Control::Reset(cfg) => *trainer = self.start(*cfg),
            Control::Pause => {
                self.paused = true;
                self.send(Event::Paused(true));
            }
            Control::Resume => {
                if let Some(t) = trainer.as_mut() {
                    if self.finished {
                        let step = t.step;
                        let c = &mut t.cfg;
                        c.max_steps = step + c.max_steps.max(1);
                        self.finished = false;
                    }
                }
                self.paused = false;
                self.send(Event::Paused(false));
            }
            Control::SetMicroBatch(b) => {
                if b == 0 {
                    self.send(Event::Error("micro-batch size must be at least 1".into()));
                } else if let Some(t) = trainer.as_mut() {
                    match t.model.check_micro_batch(b, &t.cfg) {
                        Ok(()) => self.pending_b = Some(b),
                        Err(e) => self.send(Event::Error(format!("{e:#}"))),
                    }
                    self.apply_at_boundary(t);
                }
            }
            Control::SetAccumSteps(k) => {
                if k == 0 {
                    self.send(Event::Error("accumulation steps must be at least 1".into()));
                } else if let Some(t) = trainer.as_mut() {
                    self.pending_k = Some(k);
                    self.apply_at_boundary(t);
                }
            }
            Control::SetLr(lr) => {
                if let Some(t) = trainer.as_mut() {
                    if lr.is_finite() && lr > 0.0 {
                        t.cfg.lr = lr;
                        self.send_settings(t);
                    } else {
                        self.send(Event::Error(format!("learning rate must be positive, got {lr}")));
                    }
                }
            }
            Control::SetGradClip(c) => {
                if let Some(t) = trainer.as_mut() {
                    if c.is_finite() && c >= 0.0 {
                        t.cfg.grad_clip = c;
                        self.send_settings(t);
                    } else {
                        self.send(Event::Error(format!("clip threshold must be >= 0, got {c}")));
                    }
                }
            }
            Control::SetActivationCheckpointing(on) => {
                if let Some(t) = trainer.as_mut() {
                    if on && t.model.kind() != ModelKind::Gpt {
                        self.send(Event::Error("activation checkpointing is for the GPT".into()));
                    } else {
                        self.pending_ck = Some(on);
                        self.apply_at_boundary(t);
                    }
                }
            }
            Control::SetPrecision(p) => {
                if let Some(t) = trainer.as_mut() {
                    if p == crate::gpu::Precision::F16 && t.model.kind() != ModelKind::Gpt {
                        self.send(Event::Error("precision f16 is for the GPT (the CNN trains in f32)".into()));
                    } else {
                        self.pending_precision = Some(p);
                        self.apply_at_boundary(t);
                    }
                }
            }
            Control::SetGradStats(on) => {
                if let Some(t) = trainer.as_mut() {
                    self.pending_stats = Some(on);
                    self.apply_at_boundary(t);
                }
            }
            Control::ProfileKernels => {
                if let Some(t) = trainer.as_mut() {
                    if self.window.is_some() {
                        self.send(Event::Error("finish the window being stepped first: profiling runs a whole micro-batch".into()));
                    } else {
                        match t.profile_kernels() {
                            Ok(kernels) => self.send(Event::Profile { step: t.step, micro_batch: t.cfg.micro_batch, kernels }),
                            Err(e) => self.send(Event::Error(format!("{e:#}"))),
                        }
                    }
                }
            }
            Control::StepMicroBatch => {
                if let Some(t) = trainer.as_mut() {
                    if let Err(e) = self.step_micro(t) {
                        self.send(Event::Error(format!("{e:#}")));
                    }
                }
            }
            Control::StepOptimizer => {
                if let Some(t) = trainer.as_mut() {
                    if let Err(e) = self.step(t, true) {
                        self.send(Event::Error(format!("{e:#}")));
                    }
                }
            }
            Control::Save(path) => {
                if let Some(t) = trainer.as_ref() {
                    match t.save(&path) {
                        Ok(()) => self.send(Event::Checkpoint { step: t.step, path }),
                        Err(e) => self.send(Event::Error(format!("saving {}: {e:#}", path.display()))),
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Apply pending B and K if no window is in progress.
    fn apply_at_boundary(&mut self, t: &mut Trainer) {
        if self.window.is_some() {
            return;
        }
        let mut changed = false;
        if let Some(b) = self.pending_b.take() {
            if b != t.cfg.micro_batch {
                if let Err(e) = t.set_micro_batch(b) {
                    self.send(Event::Error(format!("{e:#}")));
                }
                changed = true;
            }
        }
        if let Some(on) = self.pending_ck.take() {
            if on != t.cfg.checkpoint_activations {
                if let Err(e) = t.set_activation_checkpointing(on) {
                    self.send(Event::Error(format!("{e:#}")));
                }
                changed = true;
            }
        }
        if let Some(p) = self.pending_precision.take() {
            if p != t.cfg.precision {
                if let Err(e) = t.set_precision(p) {
                    self.send(Event::Error(format!("{e:#}")));
                }
                changed = true;
            }
        }
        if let Some(on) = self.pending_stats.take() {
            if on != t.cfg.grad_stats {
                if let Err(e) = t.set_grad_stats(on) {
                    self.send(Event::Error(format!("{e:#}")));
                }
                changed = true;
            }
        }
        if let Some(k) = self.pending_k.take() {
            t.cfg.accum_steps = k;
            t.cfg.effective_batch = 0;
            changed = true;
        }
        if changed {
            self.send_settings(t);
            self.send(Event::Started { derived: t.derived(), config: t.cfg.clone() });
        }
    }

    /// Finish the current window (or run a whole one) and step.
    fn step(&mut self, t: &mut Trainer, by_hand: bool) -> anyhow::Result<()> {
        if t.step >= t.cfg.max_steps {
            self.finished = true;
            self.send(Event::Finished { step: t.step, eval: None });
            return Ok(());
        }
        let w = match self.window.take() {
            Some((w, _)) => w,
            None => t.begin_window(),
        };
        let hand = self.hand.take();
        let before = if by_hand { Some(t.model.slabs().read_params()?) } else { None };
        let (mut metrics, mut fig) = t.finish_window(w)?;
        // every micro-batch stepped by hand: the exact Gram matrix joins the device's figures
        if let (Some(gs), Some(h)) = (fig.grad_stats.as_mut(), hand)
            && h.stats.k() == gs.k()
        {
            gs.gram = h.stats.gram;
        }
        let names = param_names(t);
        let update_ratios = match before {
            Some(before) => Some(update_ratios(&names, &before, &t.model.slabs().read_params()?)),
            None => None,
        };
        let micro = fig.micro_means();
        let step = metrics.step;
        if t.cfg.eval_every > 0 && step % t.cfg.eval_every == 0 {
            let eval = t.evaluate_live()?;
            metrics.set_eval(&eval);
            self.send(Event::Eval { step, epoch: t.model.epoch(), eval });
        }
        self.send(Event::Step(Box::new(StepReport { metrics, micro, update_ratios, grad_stats: fig.grad_stats })));
        // apply pending settings at the boundary
        self.apply_at_boundary(t);
        if t.step >= t.cfg.max_steps {
            self.finished = true;
            self.send(Event::Finished { step: t.step, eval: None });
        }
        Ok(())
    }

    /// Run one micro-batch of the current window and report it (stepping mode).
    fn step_micro(&mut self, t: &mut Trainer) -> anyhow::Result<()> {
        if self.window.as_ref().is_some_and(|(w, _)| w.done()) {
            anyhow::bail!("the window is complete: press \"optimizer step\" to apply it");
        }
        let (mut w, prev) = match self.window.take() {
            Some(x) => x,
            None => (t.begin_window(), vec![0.0; t.model.slabs().n]),
        };
        let (l0, c0) = if w.next == 0 { (0.0, 0.0) } else { t.model.slabs().running_figures()? };
        t.run_micro(&mut w)?;
        let (l1, c1) = t.model.slabs().running_figures()?;
        // the summed-loss gradient so far (mixed precision holds it times scale / count)
        let weight = t.loss_weight(w.count) as f64;
        let g: Vec<f32> = t.model.slabs().read_grads()?.into_iter().map(|x| (x as f64 / weight) as f32).collect();
        let micro: Vec<f32> = g.iter().zip(&prev).map(|(a, b)| a - b).collect();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let (gn, mn) = (norm(&g), norm(&micro));
        let dot: f64 = g.iter().zip(&micro).map(|(a, b)| *a as f64 * *b as f64).sum();
        let report = MicroReport {
            step: t.step + 1,
            index: w.next - 1,
            of: w.len(),
            loss: (l1 - l0) / (c1 - c0).max(1.0),
            tokens: c1 - c0,
            accumulated_norm: gn,
            micro_norm: mn,
            cosine: if gn > 0.0 && mn > 0.0 { dot / (gn * mn) } else { 0.0 },
            tensor_norms: tensor_norms(&param_names(t), &g),
            grad_stats: None,
        };
        let mut report = report;
        if t.cfg.grad_stats {
            let first = report.index == 0;
            if first {
                self.hand = None;
            }
            let k = report.index;
            let h = self.hand.get_or_insert_with(|| HandStats {
                stats: crate::model::grad_stats::GradStats {
                    tensors: param_names(t).into_iter().map(|n| n.0).collect(),
                    gram: Some(Vec::new()),
                    ..Default::default()
                },
                grads: (w.len() * micro.len() * 4 <= GRAM_HOST_BYTES).then(Vec::new),
            });
            if h.stats.k() == k {
                let (sq, dp) = host_stats(&param_names(t), &micro, &prev);
                h.stats.counts.push(report.tokens);
                h.stats.sq_norm.push(sq);
                h.stats.dot_prev.push(dp);
                match (&mut h.grads, &mut h.stats.gram) {
                    (Some(gs), Some(gram)) => {
                        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
                        let row: Vec<f64> = gs.iter().map(|gj| dot(gj, &micro)).chain([dot(&micro, &micro)]).collect();
                        for (j, r) in gram.iter_mut().enumerate() {
                            r.push(row[j]);
                        }
                        gram.push(row);
                        gs.push(micro.clone());
                    }
                    _ => h.stats.gram = None,
                }
                report.grad_stats = Some(h.stats.clone());
            }
        }
        self.window = Some((w, g));
        self.send(Event::MicroBatch(report));
        Ok(())
    }
}

/// Parameter tensors (checkpoint names, per layer) with their offsets in the slab.
fn param_names(t: &Trainer) -> Vec<(String, usize, usize)> {
    t.model.tensors().into_iter().map(|(n, shape, off)| (n, off, shape.iter().product())).collect()
}

/// Per-tensor L2 norms of `v` (laid out like the parameter slab): (name, offset, length).
pub fn tensor_norms(names: &[(String, usize, usize)], v: &[f32]) -> Vec<(String, f64)> {
    names
        .iter()
        .map(|(n, off, len)| (n.clone(), v[*off..off + len].iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()))
        .collect()
}

/// Per tensor (name, offset, length): (|micro|^2, <micro, prev>) in f64.
pub fn host_stats(names: &[(String, usize, usize)], micro: &[f32], prev: &[f32]) -> (Vec<f64>, Vec<f64>) {
    names
        .iter()
        .map(|(_, off, len)| {
            let r = *off..off + len;
            let sq = micro[r.clone()].iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
            let dp = micro[r.clone()].iter().zip(&prev[r]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
            (sq, dp)
        })
        .unzip()
}

/// Per-tensor ||after - before|| / ||before||.
pub fn update_ratios(names: &[(String, usize, usize)], before: &[f32], after: &[f32]) -> Vec<(String, f64)> {
    let d: Vec<f32> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    tensor_norms(names, &d)
        .into_iter()
        .zip(tensor_norms(names, before))
        .map(|((n, du), (_, w))| (n, if w > 0.0 { du / w } else { du }))
        .collect()
}
