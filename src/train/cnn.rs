//! The CNN as a `Model`: MNIST or the 8x8 digits, the per-epoch shuffle and the CNN on the
//! device (`model::cnn::GpuCnn`).
//!
//! Each optimizer step takes the next E = B*K images of the epoch's shuffle, in micro-batches of
//! B; the epoch's last window is short (and its last micro-batch too): it is stepped, normalized
//! by its real count of images (the trainer's contract). BatchNorm's running statistics are
//! updated by every micro-batch (K times per step): the drift `verify --model cnn --norm batch`
//! measures. Checkpoint format `gradscope-cnn`: PyTorch names (`conv1.weight` [16,1,3,3], ...,
//! `fc.weight` [10,F]) and BatchNorm's running statistics (`norm1.running_mean`, ...).

use std::any::Any;
use std::collections::HashMap;
use std::path::Path;

use crate::data::images::{EpochSampler, ImageData, Images, pack};
use crate::gpu::submit::Submission;
use crate::gpu::Gpu;
use crate::model::cnn::GpuCnn;
use crate::model::memory::{ModelSpec, Plan};
use crate::model::optim::Slabs;
use crate::reference::cnn_model::{CnnConfig, NormKind, init_cnn_params};

use super::checkpoint;
use super::config::{ModelKind, TrainConfig};
use super::model::{EvalSize, Evaluation, Inputs, MicroBatch, Model, ModelSummary, NamedTensor, check_loop_limit};

/// Test images of the live app's evaluations (the whole test set takes long on a CPU adapter;
/// `train` and `eval` use all of it).
const LIVE_TEST_IMAGES: usize = 1000;

pub struct CnnModel {
    pub ccfg: CnnConfig,
    pub data: ImageData,
    pub gpu_model: GpuCnn,
    pub sampler: EpochSampler,
    dataset: crate::data::images::Dataset,
    plan: Option<Plan>,
}

impl CnnModel {
    /// Load the images, check the config against them and the device, initialize the weights
    /// and allocate every slab. `cfg` receives B and K chosen under a memory budget, and
    /// `max_steps` from `epochs`.
    pub fn new(gpu: &Gpu, cfg: &mut TrainConfig) -> anyhow::Result<Self> {
        let data = ImageData::built_in(cfg.dataset)?;
        let ccfg = CnnConfig::new(data.train.h, data.train.w, data.train.classes.max(data.test.classes), cfg.norm);
        let plan = super::plan::apply_memory_budget(gpu, cfg, &ModelSpec::Cnn(ccfg))?;
        check_cnn_limits(gpu, &ccfg, cfg.micro_batch)?;
        cfg.max_steps = cfg.epochs * data.train.n.div_ceil(cfg.effective());
        let params = init_cnn_params(&ccfg, cfg.seed);
        let gpu_model = GpuCnn::new(gpu, ccfg, &params, cfg.micro_batch)?;
        let sampler = EpochSampler::new(cfg.data_seed);
        Ok(Self { ccfg, data, gpu_model, sampler, dataset: cfg.dataset, plan })
    }
}

/// A micro-batch whose activations do not fit one storage binding, or whose weight gradient
/// loops past a CPU adapter's limit, is refused with the numbers.
fn check_cnn_limits(gpu: &Gpu, ccfg: &CnnConfig, b: usize) -> anyhow::Result<()> {
    let bytes = GpuCnn::predicted_activation_bytes(ccfg, b) / 2;
    let max = gpu.limits().max_storage_buffer_binding_size;
    anyhow::ensure!(
        bytes <= max,
        "micro_batch {b} needs an activation slab of {} but this device's max storage binding is {}",
        crate::gpu::human_bytes(bytes), crate::gpu::human_bytes(max)
    );
    // conv2d_backward_weight sums over micro_batch x H x W in one invocation
    check_loop_limit(gpu, "micro_batch x height x width", b * ccfg.h * ccfg.w)
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
    let n = set.n.max(1) as f64;
    Ok(Evaluation { loss: loss / n, accuracy: Some(correct as f64 / n), items: set.n })
}

/// The first `n` images of `set`.
pub fn head(set: &Images, n: usize) -> Images {
    let mut s = set.clone();
    s.n = s.n.min(n);
    s.pixels.truncate(s.n * s.h * s.w);
    s.labels.truncate(s.n);
    s
}

/// The PyTorch name and shape of every parameter tensor, with its offset in the flat slab.
pub fn tensor_table(c: &CnnConfig) -> Vec<(String, Vec<usize>, usize)> {
    let off = c.param_offsets();
    CnnConfig::param_names().iter().zip(c.param_shapes()).zip(off).map(|((n, s), o)| (n.to_string(), s, o)).collect()
}

fn pixels(mb: &MicroBatch) -> anyhow::Result<&[f32]> {
    match &mb.inputs {
        Inputs::Pixels(x) => Ok(x),
        Inputs::Tokens(_) => anyhow::bail!("the CNN was given tokens"),
    }
}

const RUNNING: [&str; 4] = ["norm1.running_mean", "norm1.running_var", "norm2.running_mean", "norm2.running_var"];

impl CnnModel {
    fn running_sizes(&self) -> [usize; 4] {
        [self.ccfg.c1, self.ccfg.c1, self.ccfg.c2, self.ccfg.c2]
    }

    /// B test images, packed.
    fn test_batch(&self) -> (Vec<f32>, Vec<u32>) {
        let b = self.gpu_model.micro_batch();
        let idx: Vec<usize> = (0..b).map(|i| i % self.data.test.n.max(1)).collect();
        pack(&self.data.test, &idx, b)
    }
}

impl Model for CnnModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Cnn
    }
    fn gpu(&self) -> &Gpu {
        &self.gpu_model.gpu
    }
    fn slabs(&self) -> &Slabs {
        &self.gpu_model.slabs
    }
    fn slabs_mut(&mut self) -> &mut Slabs {
        &mut self.gpu_model.slabs
    }

    fn summary(&self) -> ModelSummary {
        let (tr, te) = (&self.data.train, &self.data.test);
        ModelSummary {
            description: format!("CNN ({:?} norm)", self.ccfg.norm),
            params: self.ccfg.num_params(),
            unit: self.unit(),
            items_per_sample: 1,
            classes: self.ccfg.classes,
            classes_word: "classes",
            data: format!("{:?}: {} training images {}x{}, {} test images", self.dataset, tr.n, tr.h, tr.w, te.n),
        }
    }

    fn unit(&self) -> &'static str {
        "images"
    }

    fn spec(&self) -> ModelSpec {
        ModelSpec::Cnn(self.ccfg)
    }
    fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }
    fn tensors(&self) -> Vec<(String, Vec<usize>, usize)> {
        tensor_table(&self.ccfg)
    }

    fn micro_batch(&self) -> usize {
        self.gpu_model.micro_batch()
    }
    fn check_micro_batch(&self, b: usize, _cfg: &TrainConfig) -> anyhow::Result<()> {
        anyhow::ensure!(b >= 1, "micro_batch must be at least 1");
        check_cnn_limits(self.gpu(), &self.ccfg, b)
    }
    fn set_micro_batch(&mut self, b: usize, cfg: &TrainConfig) -> anyhow::Result<()> {
        self.check_micro_batch(b, cfg)?;
        Ok(self.gpu_model.set_micro_batch(b)?)
    }

    fn epoch(&self) -> Option<u64> {
        Some(self.sampler.epoch)
    }

    fn draw_window(&mut self, e: usize, b: usize) -> Vec<MicroBatch> {
        let (idx, _) = self.sampler.window(self.data.train.n, e);
        idx.chunks(b)
            .map(|c| {
                let (x, y) = pack(&self.data.train, c, c.len());
                MicroBatch { inputs: Inputs::Pixels(x), targets: y, count: c.len() }
            })
            .collect()
    }

    fn record_micro_batches(&mut self, s: &mut Submission, batches: &[MicroBatch], first: usize, k: usize, dloss: f32) -> anyhow::Result<()> {
        // the CNN trains in f32 with the correct normalization only (config validation)
        anyhow::ensure!(dloss == 1.0, "the CNN weighs each image's loss 1 (got {dloss})");
        let pairs = batches.iter().map(|mb| Ok((pixels(mb)?, mb.targets.as_slice()))).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(self.gpu_model.record_micro_steps(s, &pairs, first, k)?)
    }

    fn evaluate(&mut self, _cfg: &TrainConfig, size: EvalSize) -> anyhow::Result<Evaluation> {
        let b = self.gpu_model.micro_batch();
        match size {
            EvalSize::Full => evaluate(&mut self.gpu_model, b, &self.data.test),
            EvalSize::Live => evaluate(&mut self.gpu_model, b, &head(&self.data.test, LIVE_TEST_IMAGES)),
        }
    }

    fn profile_micro_batch(&mut self) -> anyhow::Result<Option<Vec<(String, f64)>>> {
        let (x, y) = self.test_batch();
        let running = self.gpu_model.read_running()?;
        let p = self.gpu_model.profile_micro_batch(&x, &y);
        // the train program updated BatchNorm's running statistics: put them back
        self.gpu_model.load_running(&running);
        Ok(p)
    }

    fn time_micro_programs(&mut self, reps: usize) -> anyhow::Result<(f64, f64)> {
        let (x, y) = self.test_batch();
        let running = self.gpu_model.read_running()?;
        self.gpu_model.upload_inputs(&x, &y);
        let t = self.gpu_model.time_programs(y.len(), reps)?;
        self.gpu_model.load_running(&running);
        Ok(t)
    }

    fn checkpoint_meta(&self) -> anyhow::Result<HashMap<String, String>> {
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "gradscope-cnn".to_string());
        meta.insert("cnn_config".to_string(), serde_json::to_string(&self.ccfg)?);
        meta.insert("sampler".to_string(), serde_json::to_string(&self.sampler)?);
        Ok(meta)
    }

    fn checkpoint_extra(&self) -> anyhow::Result<Vec<NamedTensor>> {
        if self.ccfg.norm != NormKind::Batch {
            return Ok(Vec::new());
        }
        let running = self.gpu_model.read_running()?;
        let mut at = 0;
        Ok(RUNNING
            .iter()
            .zip(self.running_sizes())
            .map(|(name, c)| {
                at += c;
                (name.to_string(), vec![c], running[at - c..at].to_vec())
            })
            .collect())
    }

    fn restore(&mut self, path: &Path, meta: &HashMap<String, String>, tensors: &safetensors::SafeTensors) -> anyhow::Result<()> {
        let found: CnnConfig = checkpoint::meta_json(path, meta, "cnn_config")?;
        anyhow::ensure!(found == self.ccfg, "{} was saved for {found:?}; its data gives {:?}", path.display(), self.ccfg);
        if self.ccfg.norm == NormKind::Batch {
            let mut run = Vec::with_capacity(self.ccfg.running_len());
            for (name, c) in RUNNING.iter().zip(self.running_sizes()) {
                run.extend(checkpoint::tensor_f32(path, tensors, name, &[c])?);
            }
            self.gpu_model.load_running(&run);
        }
        self.sampler = checkpoint::meta_json(path, meta, "sampler")?;
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
