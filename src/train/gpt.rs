//! The GPT as a `Model`: the text corpus (characters or GPT-2 tokens), the window sampler and the GPT on the
//! device (`model::gpt::GpuGpt`). Checkpoint format `gradscope-gpt` (see `checkpoint`).

use std::any::Any;
use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;

use crate::data::text::{Sample, TextData, TextSampler, count_targets, pack};
use crate::gpu::submit::Submission;
use crate::gpu::{Gpu, Precision};
use crate::model::gpt::GpuGpt;
use crate::model::memory::{ModelSpec, Plan};
use crate::model::optim::Slabs;
use crate::reference::gpt::{GptConfig, init_params};

use super::checkpoint;
use super::config::{ModelKind, TrainConfig};
use super::model::{EvalSize, Evaluation, Inputs, MicroBatch, Model, ModelSummary, check_loop_limit};

/// Validation windows of the live app's evaluations (the config's `eval_windows` may be larger).
const LIVE_EVAL_WINDOWS: usize = 128;

pub struct GptModel {
    pub gcfg: GptConfig,
    pub data: TextData,
    pub gpu_model: GpuGpt,
    pub sampler: TextSampler,
    plan: Option<Plan>,
    notice: Option<String>,
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

impl GptModel {
    /// Load the data, check the config against it and the device, initialize (or load) the
    /// weights and allocate every slab. `cfg` receives what was resolved (precision, B and K
    /// under a memory budget).
    pub fn new(gpu: &Gpu, cfg: &mut TrainConfig) -> anyhow::Result<Self> {
        let data = TextData::open(Path::new(&cfg.data), cfg.tokenizer, cfg.vocab_size)?;
        data.check_block(cfg.block_size)?;
        Self::with_data(gpu, cfg, data)
    }

    /// The same with the corpus given (`sample` needs only a checkpoint's vocabulary).
    pub fn with_data(gpu: &Gpu, cfg: &mut TrainConfig, data: TextData) -> anyhow::Result<Self> {
        let gcfg = GptConfig {
            vocab_size: super::plan::model_vocab(cfg, data.vocab_size())?,
            block_size: cfg.block_size,
            n_layer: cfg.n_layer,
            n_head: cfg.n_head,
            n_embd: cfg.n_embd,
        };
        let (precision, notice) = resolve_precision(cfg.precision, gpu.has_f16(), &gpu.summary.name);
        cfg.precision = precision;
        let plan = super::plan::apply_memory_budget(gpu, cfg, &ModelSpec::Gpt(gcfg))?;
        check_device_limits(gpu, &gcfg, cfg.micro_batch, cfg.checkpoint_activations, cfg.precision, cfg.vocab_chunk)?;
        let params = if cfg.init_from.is_empty() {
            init_params(&gcfg, cfg.seed)
        } else {
            super::interop::load_weights(Path::new(&cfg.init_from), &gcfg).with_context(|| format!("init_from {}", cfg.init_from))?
        };
        let mut gpu_model = GpuGpt::new(gpu, gcfg, &params)?;
        gpu_model.set_vocab_chunk(cfg.vocab_chunk)?;
        gpu_model.set_activation_checkpointing(cfg.checkpoint_activations)?;
        gpu_model.set_precision(cfg.precision)?;
        // dropout's masks are keyed by the run's seed (and each window's step and positions)
        gpu_model.set_dropout(cfg.dropout, cfg.seed as u32)?;
        gpu_model.set_micro_batch(cfg.micro_batch)?;
        let sampler = TextSampler::new(cfg.data_seed, cfg.block_size, cfg.padded);
        Ok(Self { gcfg, data, gpu_model, sampler, plan, notice })
    }

    /// Mean loss over the first `n` non-overlapping validation windows.
    fn validation_loss(&mut self, n: usize) -> anyhow::Result<Evaluation> {
        let t = self.gcfg.block_size;
        let b = self.gpu_model.micro_batch();
        let n = n.min(self.data.val_windows(t));
        let mut batches = Vec::new();
        let mut i = 0;
        while i < n {
            let rows: Vec<Sample> = (i..(i + b).min(n))
                .map(|w| {
                    let (inputs, targets) = self.data.val_window(w, t);
                    Sample { inputs, targets }
                })
                .collect();
            batches.push(pack(&rows, b, t));
            i += b;
        }
        let (sum, count) = self.gpu_model.eval_loss(&batches)?;
        Ok(Evaluation { loss: sum / count.max(1.0), accuracy: None, items: count as usize })
    }

    /// B validation windows (repeating if the split has fewer), packed.
    fn validation_batch(&self) -> (Vec<u32>, Vec<u32>) {
        let (b, t) = (self.gpu_model.micro_batch(), self.gcfg.block_size);
        let n = self.data.val_windows(t).max(1);
        let rows: Vec<Sample> = (0..b)
            .map(|i| {
                let (inputs, targets) = self.data.val_window(i % n, t);
                Sample { inputs, targets }
            })
            .collect();
        pack(&rows, b, t)
    }
}

fn tokens(mb: &MicroBatch) -> anyhow::Result<&[u32]> {
    match &mb.inputs {
        Inputs::Tokens(x) => Ok(x),
        Inputs::Pixels(_) => anyhow::bail!("the GPT was given images"),
    }
}

impl Model for GptModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Gpt
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
        let g = &self.gcfg;
        ModelSummary {
            description: format!(
                "GPT, {} layers, {} heads, {} channels, block {}, {} activations{}",
                g.n_layer, g.n_head, g.n_embd, g.block_size, self.gpu_model.precision(),
                if self.gpu_model.activation_checkpointing() { ", checkpointed (blocks recomputed in backward)" } else { "" }
            ),
            params: g.num_params(),
            unit: self.unit(),
            items_per_sample: g.block_size,
            classes: g.vocab_size,
            classes_word: match self.data.tokenizer {
                crate::data::tokenizer::Tokenizer::Char(_) => "characters",
                crate::data::tokenizer::Tokenizer::Gpt2 => "tokens (GPT-2 BPE)",
                crate::data::tokenizer::Tokenizer::Ids(_) => "token ids (no tokenizer)",
            },
            data: format!("{} train tokens, {} validation tokens", self.data.train.len(), self.data.val.len()),
        }
    }

    fn unit(&self) -> &'static str {
        "tokens"
    }

    fn spec(&self) -> ModelSpec {
        ModelSpec::Gpt(self.gcfg)
    }
    fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }
    fn notice(&self) -> Option<String> {
        self.notice.clone()
    }
    fn tensors(&self) -> Vec<(String, Vec<usize>, usize)> {
        checkpoint::tensor_table(&self.gcfg)
    }

    fn micro_batch(&self) -> usize {
        self.gpu_model.micro_batch()
    }

    fn check_micro_batch(&self, b: usize, cfg: &TrainConfig) -> anyhow::Result<()> {
        check_device_limits(self.gpu(), &self.gcfg, b, cfg.checkpoint_activations, cfg.precision, cfg.vocab_chunk)
    }

    fn set_micro_batch(&mut self, b: usize, cfg: &TrainConfig) -> anyhow::Result<()> {
        self.check_micro_batch(b, cfg)?;
        Ok(self.gpu_model.set_micro_batch(b)?)
    }

    fn set_activation_checkpointing(&mut self, on: bool, cfg: &TrainConfig) -> anyhow::Result<()> {
        check_device_limits(self.gpu(), &self.gcfg, cfg.micro_batch, on, cfg.precision, cfg.vocab_chunk)?;
        Ok(self.gpu_model.set_activation_checkpointing(on)?)
    }

    fn set_precision(&mut self, precision: Precision, cfg: &TrainConfig) -> anyhow::Result<()> {
        let (got, notice) = resolve_precision(precision, self.gpu().has_f16(), &self.gpu().summary.name);
        if let Some(n) = notice {
            anyhow::bail!(n);
        }
        check_device_limits(self.gpu(), &self.gcfg, cfg.micro_batch, cfg.checkpoint_activations, got, cfg.vocab_chunk)?;
        Ok(self.gpu_model.set_precision(got)?)
    }

    fn draw_window(&mut self, e: usize, b: usize) -> Vec<MicroBatch> {
        let t = self.gcfg.block_size;
        let samples = self.sampler.window(&self.data.train, e);
        samples
            .chunks(b)
            .map(|c| {
                let (x, y) = pack(c, b, t);
                let count = count_targets(&y);
                MicroBatch { inputs: Inputs::Tokens(x), targets: y, count }
            })
            .collect()
    }

    fn record_micro_batches(&mut self, s: &mut Submission, batches: &[MicroBatch], first: usize, k: usize, dloss: f32) -> anyhow::Result<()> {
        let pairs = batches.iter().map(|mb| Ok((tokens(mb)?, mb.targets.as_slice()))).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(self.gpu_model.record_micro_steps(s, &pairs, first, k, dloss)?)
    }

    fn set_window_step(&mut self, step: u64) {
        self.gpu_model.set_window_step(step);
    }

    fn evaluate(&mut self, cfg: &TrainConfig, size: EvalSize) -> anyhow::Result<Evaluation> {
        let n = match size {
            EvalSize::Full => cfg.eval_windows,
            EvalSize::Live => cfg.eval_windows.min(LIVE_EVAL_WINDOWS),
        };
        self.validation_loss(n)
    }

    fn profile_micro_batch(&mut self) -> anyhow::Result<Option<Vec<(String, f64)>>> {
        let (x, y) = self.validation_batch();
        Ok(self.gpu_model.profile_micro_batch(&x, &y))
    }

    fn time_micro_programs(&mut self, reps: usize) -> anyhow::Result<(f64, f64)> {
        let (x, y) = self.validation_batch();
        Ok(self.gpu_model.time_micro_programs(&x, &y, reps)?)
    }

    fn checkpoint_meta(&self) -> anyhow::Result<HashMap<String, String>> {
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "gradscope-gpt".to_string());
        meta.insert("config".to_string(), serde_json::to_string(&self.gcfg)?);
        meta.insert("vocab".to_string(), serde_json::to_string(&self.data.tokenizer.chars())?);
        meta.insert("tokenizer".to_string(), self.data.tokenizer.name().to_string());
        meta.insert("sampler".to_string(), serde_json::to_string(&self.sampler)?);
        Ok(meta)
    }

    fn restore(&mut self, path: &Path, meta: &HashMap<String, String>, _tensors: &safetensors::SafeTensors) -> anyhow::Result<()> {
        let found: GptConfig = checkpoint::meta_json(path, meta, "config")?;
        anyhow::ensure!(
            found == self.gcfg,
            "{} was saved for {found:?}; the resumed config asks for {:?} (the model shape cannot change on resume)",
            path.display(), self.gcfg
        );
        let tokenizer = checkpoint::tokenizer_meta(path, meta, self.gcfg.vocab_size)?;
        anyhow::ensure!(
            tokenizer == self.data.tokenizer,
            "{}: the data's tokenizer ({}) or vocabulary differs from the checkpoint's ({})",
            path.display(), self.data.tokenizer.name(), tokenizer.name()
        );
        let mut sampler: TextSampler = checkpoint::meta_json(path, meta, "sampler")?;
        // the sampler continues its stream with the config's block size and padding (a resumed
        // run may change `padded`)
        sampler.block = self.gcfg.block_size;
        sampler.padded = self.sampler.padded;
        self.sampler = sampler;
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A micro-batch whose activation slab does not fit one storage binding (or one buffer) of the
/// device is refused with the numbers, before anything is allocated.
pub fn check_device_limits(gpu: &Gpu, cfg: &GptConfig, b: usize, recompute: bool, precision: Precision, vocab_chunk: usize) -> anyhow::Result<()> {
    // the slabs may span several buffers; each tensor must fit one binding (the embedding may
    // be cut into vocabulary ranges)
    let limits = crate::model::layout::SlabLimits::of(gpu);
    let flash = crate::model::gpt::uses_flash_attention(cfg, gpu.kernels().matmul());
    let acts = crate::model::gpt::ActLayout::new(cfg, b, cfg.block_size, recompute, precision, limits, vocab_chunk, flash);
    if acts.packer.largest.1 > limits.max_binding {
        let per_seq = crate::model::gpt::ActLayout::new(cfg, 1, cfg.block_size, recompute, precision, limits, vocab_chunk, flash).packer.largest.1;
        anyhow::bail!(
            "micro_batch {b}: the activation tensor {} needs {} in one binding but this device's max storage binding is {}; \
             the largest micro_batch that fits is about {}. Use a smaller micro_batch and more accum_steps for the same \
             effective batch.",
            acts.packer.largest.0,
            crate::gpu::human_bytes(acts.packer.largest.1),
            crate::gpu::human_bytes(limits.max_binding),
            limits.max_binding / per_seq.max(1)
        );
    }
    check_loop_limit(gpu, "micro_batch x block_size", b * cfg.block_size)?;
    let (params, _) = crate::model::optim::slab_layout(&crate::model::gpt::tensor_specs(cfg), limits);
    params.check("the model's parameters")?;
    Ok(())
}
