//! One interface over the GPT and CNN trainers, for the live session (and so the app): the
//! window-by-window steps, settings, evaluation and checkpoints.

use crate::gpu::Gpu;
use crate::model::optim::{Slabs, WindowFigures};
use crate::reference::cnn_model::CnnConfig;
use crate::reference::gpt::GptConfig;

use super::cnn::{CnnTrainer, CnnWindow, evaluate};
use super::config::ModelKind;
use super::trainer::{Derived, PendingWindow, StepMetrics, Trainer};
use super::TrainConfig;

pub enum AnyTrainer {
    Gpt(Box<Trainer>),
    Cnn(Box<CnnTrainer>),
}

pub enum AnyWindow {
    Gpt(PendingWindow),
    Cnn(CnnWindow),
}

impl AnyWindow {
    pub fn done(&self) -> bool {
        match self {
            AnyWindow::Gpt(w) => w.done(),
            AnyWindow::Cnn(w) => w.done(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            AnyWindow::Gpt(w) => w.len(),
            AnyWindow::Cnn(w) => w.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Micro-batches run so far.
    pub fn next(&self) -> usize {
        match self {
            AnyWindow::Gpt(w) => w.next,
            AnyWindow::Cnn(w) => w.next,
        }
    }
}

/// Test images used for the CNN's evaluation in the live session (the full test set takes
/// long on a CPU adapter; `gradscope eval` uses all of it).
const LIVE_TEST_IMAGES: usize = 1000;

impl AnyTrainer {
    pub fn new(gpu: &Gpu, cfg: TrainConfig) -> anyhow::Result<Self> {
        Ok(match cfg.model {
            ModelKind::Gpt => AnyTrainer::Gpt(Box::new(Trainer::new(gpu, cfg)?)),
            ModelKind::Cnn => AnyTrainer::Cnn(Box::new(CnnTrainer::new(gpu, cfg)?)),
        })
    }

    pub fn cfg(&self) -> &TrainConfig {
        match self {
            AnyTrainer::Gpt(t) => &t.cfg,
            AnyTrainer::Cnn(t) => &t.cfg,
        }
    }

    pub fn cfg_mut(&mut self) -> &mut TrainConfig {
        match self {
            AnyTrainer::Gpt(t) => &mut t.cfg,
            AnyTrainer::Cnn(t) => &mut t.cfg,
        }
    }

    pub fn step(&self) -> usize {
        match self {
            AnyTrainer::Gpt(t) => t.step,
            AnyTrainer::Cnn(t) => t.step,
        }
    }

    pub fn slabs(&self) -> &Slabs {
        match self {
            AnyTrainer::Gpt(t) => &t.model.slabs,
            AnyTrainer::Cnn(t) => &t.model.slabs,
        }
    }

    /// Parameter tensor names in slab order (matching `slabs().offsets`).
    pub fn param_names(&self) -> Vec<&'static str> {
        match self {
            AnyTrainer::Gpt(_) => GptConfig::param_names().to_vec(),
            AnyTrainer::Cnn(_) => CnnConfig::param_names().to_vec(),
        }
    }

    pub fn derived(&self) -> Derived {
        match self {
            AnyTrainer::Gpt(t) => t.derived(),
            AnyTrainer::Cnn(t) => Derived {
                adapter: format!("{} ({:?} kernels)", t.model.gpu.summary.name, t.model.gpu.kind),
                params: t.ccfg.num_params(),
                vocab_size: t.ccfg.classes,
                micro_batch: t.cfg.micro_batch,
                micro_batches_per_window: t.cfg.windows_micro_batches(),
                effective_batch: t.cfg.effective(),
                tokens_per_micro_batch: t.cfg.micro_batch,
                tokens_per_step: t.cfg.effective(),
                train_tokens: t.data.train.n,
                val_tokens: t.data.test.n,
                memory: t.model.gpu.ledger.snapshot(),
                precision: crate::gpu::Precision::F32,
                notice: None,
            },
        }
    }

    /// Check a micro-batch size against the device before asking for it.
    pub fn check_micro_batch(&self, gpu: &Gpu, b: usize) -> anyhow::Result<()> {
        match self {
            AnyTrainer::Gpt(t) => super::trainer::check_device_limits(gpu, &t.gcfg, b, t.cfg.checkpoint_activations, t.cfg.precision),
            AnyTrainer::Cnn(t) => super::trainer::check_loop_limit(gpu, "micro_batch x height x width", b * t.ccfg.h * t.ccfg.w),
        }
    }

    pub fn set_micro_batch(&mut self, b: usize) -> anyhow::Result<()> {
        match self {
            AnyTrainer::Gpt(t) => t.set_micro_batch(b),
            AnyTrainer::Cnn(t) => t.set_micro_batch(b),
        }
    }

    pub fn begin_window(&mut self) -> AnyWindow {
        match self {
            AnyTrainer::Gpt(t) => AnyWindow::Gpt(t.begin_window()),
            AnyTrainer::Cnn(t) => AnyWindow::Cnn(t.begin_window()),
        }
    }

    pub fn run_micro(&mut self, w: &mut AnyWindow) -> anyhow::Result<()> {
        match (self, w) {
            (AnyTrainer::Gpt(t), AnyWindow::Gpt(w)) => t.run_micro(w),
            (AnyTrainer::Cnn(t), AnyWindow::Cnn(w)) => t.run_micro(w),
            _ => anyhow::bail!("a window of another model"),
        }
    }

    /// What the gradient slab holds per unit of the summed-loss gradient during window `w`: 1,
    /// except in mixed precision, where each counted target's loss weighs scale / count (the
    /// app's stepping view divides by it, so it shows the same figures in f32 and f16).
    pub fn gradient_weight(&self, w: &AnyWindow) -> f64 {
        match (self, w) {
            (AnyTrainer::Gpt(t), AnyWindow::Gpt(w)) => t.scaler.as_ref().map_or(1.0, |sc| sc.scale as f64 / w.count.max(1) as f64),
            _ => 1.0,
        }
    }

    pub fn finish_window(&mut self, w: AnyWindow) -> anyhow::Result<(StepMetrics, WindowFigures)> {
        match (self, w) {
            (AnyTrainer::Gpt(t), AnyWindow::Gpt(w)) => t.finish_window(w),
            (AnyTrainer::Cnn(t), AnyWindow::Cnn(w)) => t.finish_window(w),
            _ => anyhow::bail!("a window of another model"),
        }
    }

    /// GPT: validation loss. CNN: test loss on the first 1,000 test images (running statistics).
    pub fn eval(&mut self) -> anyhow::Result<f64> {
        match self {
            AnyTrainer::Gpt(t) => t.eval(),
            AnyTrainer::Cnn(t) => {
                let mut test = t.data.test.clone();
                let n = test.n.min(LIVE_TEST_IMAGES);
                test.n = n;
                test.pixels.truncate(n * test.h * test.w);
                test.labels.truncate(n);
                Ok(evaluate(&mut t.model, t.cfg.micro_batch, &test)?.loss)
            }
        }
    }

    /// Device time per kernel entry point of one micro-batch's train program (timestamp
    /// queries), largest first, on a micro-batch of validation (test) data. Call between windows:
    /// the program adds into the gradient slab and the window figures, which the next window's
    /// first micro-batch zeroes; BatchNorm's running statistics are restored afterwards.
    pub fn profile_kernels(&mut self) -> anyhow::Result<Vec<(String, f64)>> {
        let profile = match self {
            AnyTrainer::Gpt(t) => {
                let (b, bt) = (t.model.micro_batch(), t.cfg.block_size);
                let n = t.data.val_windows(bt).max(1);
                let rows: Vec<crate::data::text::Sample> = (0..b)
                    .map(|i| {
                        let (x, y) = t.data.val_window(i % n, bt);
                        crate::data::text::Sample { inputs: x.to_vec(), targets: y.to_vec() }
                    })
                    .collect();
                let (x, y) = crate::data::text::pack(&rows, b, bt);
                t.model.profile_micro_batch(&x, &y)
            }
            AnyTrainer::Cnn(t) => {
                let b = t.model.micro_batch();
                let idx: Vec<usize> = (0..b).map(|i| i % t.data.test.n.max(1)).collect();
                let (x, y) = crate::data::images::pack(&t.data.test, &idx, b);
                let running = t.model.read_running()?;
                let p = t.model.profile_micro_batch(&x, &y);
                t.model.gpu.upload(&t.model.running, 0, &running);
                p
            }
        };
        anyhow::ensure!(
            profile.is_some(),
            "this adapter has no timestamp queries (TIMESTAMP_QUERY): no per-kernel profile"
        );
        Ok(crate::bench::gpt::by_kernel(profile))
    }

    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        match self {
            AnyTrainer::Gpt(t) => t.save(path),
            AnyTrainer::Cnn(t) => t.save(path),
        }
    }
}
