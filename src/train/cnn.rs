//! The CNN trainer: the same accumulation contract as the GPT's, over epochs of images.
//!
//! Each optimizer step takes the next E = B*K images of the epoch's shuffle, in micro-batches of
//! B; the epoch's last window is short (and its last micro-batch too): it is stepped, normalized
//! by its real count of images. Losses are summed and the gradient divided once by the window's
//! count on the device; the global norm is clipped once; AdamW's step count advances per step.
//! BatchNorm's running statistics are updated by every micro-batch (K times per step): the
//! drift `verify --model cnn --norm batch` measures.

use std::time::Instant;

use crate::data::images::{EpochSampler, ImageData, Images, pack};
use crate::gpu::Gpu;
use crate::model::cnn::GpuCnn;
use crate::model::gpt::{StepSettings, WindowFigures};
use crate::reference::cnn_model::{CnnConfig, init_cnn_params};

use super::trainer::{HealthMonitor, StepMetrics, step_metrics};
use super::TrainConfig;

/// A CNN window in progress: packed micro-batches (pixels, labels) and how many have run.
pub struct CnnWindow {
    pub batches: Vec<(Vec<f32>, Vec<u32>)>,
    pub next: usize,
    started: Instant,
}

impl CnnWindow {
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

pub struct CnnTrainer {
    pub cfg: TrainConfig,
    pub ccfg: CnnConfig,
    pub data: ImageData,
    pub model: GpuCnn,
    pub sampler: EpochSampler,
    /// Optimizer steps taken (windows).
    pub step: usize,
    pub adam_step: usize,
    /// Windows per epoch: ceil(n_train / E).
    pub steps_per_epoch: usize,
    health: HealthMonitor,
    /// How B and K were chosen under `memory_budget`, if one was given.
    pub plan: Option<crate::model::memory::Plan>,
}

/// Accuracy and mean loss over a set of images.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub images: usize,
}

/// Where the image data sets are: `assets/data` under the working directory, else the crate's.
pub fn image_dir() -> std::path::PathBuf {
    if std::path::Path::new("assets/data").exists() {
        std::path::PathBuf::from("assets/data")
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/data")
    }
}

impl CnnTrainer {
    pub fn new(gpu: &Gpu, mut cfg: TrainConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let data = ImageData::built_in(cfg.dataset)?;
        let ccfg = CnnConfig::new(data.train.h, data.train.w, data.train.classes.max(data.test.classes), cfg.norm);
        let plan = super::plan::apply_memory_budget(gpu, &mut cfg, &crate::model::memory::ModelSpec::Cnn(ccfg))?;
        let bytes = GpuCnn::predicted_activation_bytes(&ccfg, cfg.micro_batch) / 2;
        let max = gpu.limits().max_storage_buffer_binding_size;
        if bytes > max {
            anyhow::bail!(
                "micro_batch {} needs an activation slab of {} but this device's max storage binding is {}",
                cfg.micro_batch, crate::gpu::human_bytes(bytes), crate::gpu::human_bytes(max)
            );
        }
        // conv2d_backward_weight sums over micro_batch x H x W in one invocation
        super::trainer::check_loop_limit(gpu, "micro_batch x height x width", cfg.micro_batch * ccfg.h * ccfg.w)?;
        let params = init_cnn_params(&ccfg, cfg.seed);
        let model = GpuCnn::new(gpu, ccfg, &params, cfg.micro_batch)?;
        let e = cfg.effective();
        let steps_per_epoch = data.train.n.div_ceil(e);
        let sampler = EpochSampler::new(cfg.data_seed);
        Ok(Self { cfg, ccfg, data, model, sampler, step: 0, adam_step: 0, steps_per_epoch, health: HealthMonitor::default(), plan })
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

    /// Draw the next window (up to E images of the epoch) and pack its micro-batches.
    pub fn begin_window(&mut self) -> CnnWindow {
        let (idx, _) = self.sampler.window(self.data.train.n, self.cfg.effective());
        let batches = idx.chunks(self.cfg.micro_batch).map(|c| pack(&self.data.train, c, c.len())).collect();
        CnnWindow { batches, next: 0, started: Instant::now() }
    }

    /// Run the next micro-batch of `w` (one submission, no readback).
    pub fn run_micro(&mut self, w: &mut CnnWindow) -> anyhow::Result<()> {
        anyhow::ensure!(w.next < w.batches.len(), "the window's micro-batches are all done");
        let (x, y) = &w.batches[w.next];
        self.model.micro_step(x, y, w.next)?;
        w.next += 1;
        Ok(())
    }

    /// Run the micro-batches of the next window (no step). Returns K of the window.
    pub fn accumulate_window(&mut self) -> anyhow::Result<usize> {
        let mut w = self.begin_window();
        while w.next < w.batches.len() {
            self.run_micro(&mut w)?;
        }
        Ok(w.batches.len())
    }

    /// Change the micro-batch size (between windows).
    pub fn set_micro_batch(&mut self, b: usize) -> anyhow::Result<()> {
        anyhow::ensure!(b >= 1, "micro_batch must be at least 1");
        super::trainer::check_loop_limit(&self.model.gpu, "micro_batch x height x width", b * self.ccfg.h * self.ccfg.w)?;
        self.model.set_micro_batch(b)?;
        self.cfg.micro_batch = b;
        Ok(())
    }

    /// One window and its optimizer step.
    pub fn train_step(&mut self) -> anyhow::Result<(StepMetrics, WindowFigures)> {
        let w = self.begin_window();
        self.finish_window(w)
    }

    /// Run what is left of `w`, then the optimizer step.
    pub fn finish_window(&mut self, mut w: CnnWindow) -> anyhow::Result<(StepMetrics, WindowFigures)> {
        while w.next < w.batches.len() {
            self.run_micro(&mut w)?;
        }
        let k = w.batches.len();
        let st = self.settings();
        self.model.slabs.optimizer_step(&st, (self.adam_step + 1) as u32, crate::model::gpt::WindowDivide::Count)?;
        let fig = self.model.slabs.window_figures(k)?;
        self.step += 1;
        let images_per_s = fig.count / w.started.elapsed().as_secs_f64();
        let m = step_metrics(self.step, &fig, &st, &mut self.health, images_per_s, self.cfg.micro_batch, k, self.model.gpu.ledger.snapshot());
        if !m.skipped {
            self.adam_step += 1;
        }
        Ok((m, fig))
    }

    /// Test-set evaluation (BatchNorm in evaluation mode).
    pub fn test(&mut self) -> anyhow::Result<Evaluation> {
        evaluate(&mut self.model, self.cfg.micro_batch, &self.data.test)
    }

    /// Evaluation on the training images.
    pub fn train_eval(&mut self) -> anyhow::Result<Evaluation> {
        evaluate(&mut self.model, self.cfg.micro_batch, &self.data.train)
    }
}

impl CnnTrainer {
    /// Save weights (PyTorch names: `conv1.weight` [16,1,3,3], ..., `fc.weight` [10,F]), BatchNorm's
    /// running statistics (`norm1.running_mean`, ...), AdamW moments and the config, atomically.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use std::collections::HashMap;
        let params = self.model.slabs.read_params()?;
        let (m, v) = self.model.slabs.read_adam()?;
        let running = self.model.read_running()?;
        let (c1, c2) = (self.ccfg.c1, self.ccfg.c2);
        let off = self.ccfg.param_offsets();
        let mut t: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        for (i, (name, shape)) in CnnConfig::param_names().iter().zip(self.ccfg.param_shapes()).enumerate() {
            let n: usize = shape.iter().product();
            t.push((name.to_string(), shape, &params[off[i]..off[i] + n]));
        }
        if self.ccfg.norm == crate::reference::cnn_model::NormKind::Batch {
            t.push(("norm1.running_mean".into(), vec![c1], &running[..c1]));
            t.push(("norm1.running_var".into(), vec![c1], &running[c1..2 * c1]));
            t.push(("norm2.running_mean".into(), vec![c2], &running[2 * c1..2 * c1 + c2]));
            t.push(("norm2.running_var".into(), vec![c2], &running[2 * c1 + c2..]));
        }
        t.push((super::checkpoint::OPT_M.into(), vec![m.len()], &m));
        t.push((super::checkpoint::OPT_V.into(), vec![v.len()], &v));
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "gradscope-cnn".to_string());
        meta.insert("cnn_config".to_string(), serde_json::to_string(&self.ccfg)?);
        meta.insert("train_config".to_string(), serde_json::to_string(&self.cfg)?);
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("adam_step".to_string(), self.adam_step.to_string());
        meta.insert("sampler".to_string(), serde_json::to_string(&self.sampler)?);
        super::checkpoint::save_tensors(path, &t, meta)?;
        Ok(())
    }

    /// A trainer restored from a CNN checkpoint (weights, running statistics, AdamW state, step).
    pub fn load(gpu: &Gpu, path: &std::path::Path) -> anyhow::Result<Self> {
        use super::checkpoint::{meta_json, parse, read, tensor_f32};
        let bytes = read(path)?;
        let (st, meta) = parse(path, &bytes)?;
        let ccfg: CnnConfig = meta_json(path, &meta, "cnn_config")?;
        let cfg: TrainConfig = meta_json(path, &meta, "train_config")?;
        let mut t = CnnTrainer::new(gpu, cfg)?;
        if t.ccfg != ccfg {
            anyhow::bail!("{} was saved for {:?}; its data gives {:?}", path.display(), ccfg, t.ccfg);
        }
        let mut params = Vec::with_capacity(ccfg.num_params());
        for (name, shape) in CnnConfig::param_names().iter().zip(ccfg.param_shapes()) {
            params.extend(tensor_f32(path, &st, name, &shape)?);
        }
        let n = params.len();
        let m = tensor_f32(path, &st, super::checkpoint::OPT_M, &[n])?;
        let v = tensor_f32(path, &st, super::checkpoint::OPT_V, &[n])?;
        t.model.slabs.load_state(&params, &m, &v);
        if ccfg.norm == crate::reference::cnn_model::NormKind::Batch {
            let mut run = Vec::with_capacity(ccfg.running_len());
            for (name, c) in [("norm1.running_mean", ccfg.c1), ("norm1.running_var", ccfg.c1), ("norm2.running_mean", ccfg.c2), ("norm2.running_var", ccfg.c2)] {
                run.extend(tensor_f32(path, &st, name, &[c])?);
            }
            t.model.gpu.upload(&t.model.running, 0, &run);
        }
        t.step = meta_json(path, &meta, "step")?;
        t.adam_step = meta_json(path, &meta, "adam_step")?;
        t.sampler = meta_json(path, &meta, "sampler")?;
        Ok(t)
    }
}

/// The normalized gradient of the first window of a fresh CNN trainer (for `verify` and tests).
pub fn first_window_gradient(gpu: &Gpu, cfg: &TrainConfig) -> anyhow::Result<Vec<f32>> {
    let mut t = CnnTrainer::new(gpu, cfg.clone())?;
    t.accumulate_window()?;
    Ok(t.model.slabs.normalized_window_gradient(crate::model::gpt::WindowDivide::Count)?)
}

/// Loss and accuracy of `model` over `set`, in batches of `b`.
pub fn evaluate(model: &mut GpuCnn, b: usize, set: &Images) -> anyhow::Result<Evaluation> {
    let nc = model.cfg.classes;
    let (mut correct, mut loss) = (0usize, 0.0f64);
    let idx: Vec<usize> = (0..set.n).collect();
    for c in idx.chunks(b) {
        let (x, y) = pack(set, c, c.len());
        let logits = model.eval_logits(&x, &y)?;
        for (r, &label) in y.iter().enumerate() {
            let row = &logits[r * nc..(r + 1) * nc];
            let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
            correct += (best as u32 == label) as usize;
            let m = row.iter().fold(f32::MIN, |a, &v| a.max(v)) as f64;
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            loss += lse - row[label as usize] as f64;
        }
    }
    Ok(Evaluation { loss: loss / set.n as f64, accuracy: correct as f64 / set.n as f64, images: set.n })
}
