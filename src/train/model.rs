//! The one interface every model implements for the trainer: a model on the device together
//! with its data set and sampler. The `Trainer` (window loop, schedule, loss scaling, health,
//! checkpoints, signals, `verify`) is written once against it; a third model is one file here
//! (its `Model` impl), its layers (reference and kernels) and one line in `build`/`resume`.
//!
//! The contract the trainer relies on: `record_micro_batches` adds micro-batches' summed-loss
//! gradients into the shared gradient slab (`Slabs`; micro-step 0 zeroes it), each counted item's
//! loss weighing `dloss`, and copies the running loss sum and count after each micro-batch into
//! the window figures. It records into an open submission and reads nothing back.

use std::any::Any;
use std::collections::HashMap;
use std::path::Path;

use crate::gpu::submit::Submission;
use crate::gpu::{Gpu, Precision};
use crate::model::memory::{ModelSpec, Plan};
use crate::model::optim::Slabs;

use super::config::{ModelKind, TrainConfig};

/// A micro-batch's inputs as the model's data set packs them.
#[derive(Clone, Debug)]
pub enum Inputs {
    /// [B,T] token ids.
    Tokens(Vec<u32>),
    /// [rows,1,H,W] pixels.
    Pixels(Vec<f32>),
}

/// One packed micro-batch: inputs, targets (the ignore index marks padding) and the number of
/// counted targets (tokens or images) it contributes to the window's count.
#[derive(Clone, Debug)]
pub struct MicroBatch {
    pub inputs: Inputs,
    pub targets: Vec<u32>,
    pub count: usize,
}

/// A named tensor with its shape and values (what a checkpoint stores).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// An evaluation: mean loss over `items` held-out items and, for classifiers, the accuracy.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub items: usize,
}

/// How much of the held-out set an evaluation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalSize {
    /// What the config asks for (`eval_windows` for text, the whole test set for images).
    Full,
    /// A bounded subset for the live app (evaluations between windows stay short).
    Live,
}

/// What a model reports at the start of a run (printed by the CLI, shown by the app).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelSummary {
    /// e.g. "GPT, 2 layers, 4 heads, 128 channels" or "CNN (Group norm) on 28x28 images".
    pub description: String,
    pub params: usize,
    /// "tokens" or "images": what is counted, normalized by and measured per second.
    pub unit: &'static str,
    /// Counted items per sample (T for text, 1 for images).
    pub items_per_sample: usize,
    /// Vocabulary size or number of classes.
    pub classes: usize,
    /// What `classes` counts: "characters", "GPT-2 tokens", "token ids" or "classes".
    pub classes_word: &'static str,
    /// e.g. "1,003,854 train tokens, 111,540 validation tokens".
    pub data: String,
}

pub trait Model: Send {
    fn kind(&self) -> ModelKind;
    fn gpu(&self) -> &Gpu;
    fn slabs(&self) -> &Slabs;
    fn slabs_mut(&mut self) -> &mut Slabs;
    fn summary(&self) -> ModelSummary;
    /// What is counted, normalized by and measured per second: "tokens" or "images".
    fn unit(&self) -> &'static str;
    /// The memory model's description of this model.
    fn spec(&self) -> ModelSpec;
    /// How B and K were chosen under `memory_budget`, if one was given.
    fn plan(&self) -> Option<&Plan>;
    /// Something the config asked for that this device cannot do, and what was done instead.
    fn notice(&self) -> Option<String> {
        None
    }
    /// Parameter tensors in slab order: (name, shape, offset in the slab). Checkpoint names.
    fn tensors(&self) -> Vec<(String, Vec<usize>, usize)>;

    fn micro_batch(&self) -> usize;
    /// Refuse a micro-batch size the device cannot run, with the numbers, before allocating.
    fn check_micro_batch(&self, b: usize, cfg: &TrainConfig) -> anyhow::Result<()>;
    /// Reallocate the activation slabs for B = `b` (parameters and optimizer state stay). On
    /// failure the previous micro-batch size stays in place.
    fn set_micro_batch(&mut self, b: usize, cfg: &TrainConfig) -> anyhow::Result<()>;
    fn set_activation_checkpointing(&mut self, on: bool, _cfg: &TrainConfig) -> anyhow::Result<()> {
        anyhow::ensure!(!on, "checkpoint_activations is for the GPT (the {:?} keeps every activation)", self.kind());
        Ok(())
    }
    /// Switch the activation precision (f32, or f16 mixed precision where the model has it).
    fn set_precision(&mut self, precision: Precision, _cfg: &TrainConfig) -> anyhow::Result<()> {
        anyhow::ensure!(precision == Precision::F32, "precision f16 is for the GPT (the {:?} trains in f32)", self.kind());
        Ok(())
    }

    /// Completed epochs, for models that train in epochs (then the trainer evaluates at each
    /// epoch's end).
    fn epoch(&self) -> Option<u64> {
        None
    }
    /// Draw the next window (E samples, advancing the sampler) and pack it into micro-batches of
    /// at most `b` samples, in order.
    fn draw_window(&mut self, e: usize, b: usize) -> Vec<MicroBatch>;
    /// Record micro-batches `first..first + batches.len()` of a window of `k` into `s` (see the
    /// module's contract); each counted item's loss weighs `dloss`.
    fn record_micro_batches(&mut self, s: &mut Submission, batches: &[MicroBatch], first: usize, k: usize, dloss: f32) -> anyhow::Result<()>;
    /// The optimizer step the next window makes (the key of dropout's masks; models without
    /// dropout ignore it).
    fn set_window_step(&mut self, _step: u64) {}
    /// Held-out loss (and accuracy). Clobbers the window figures: call between windows.
    fn evaluate(&mut self, cfg: &TrainConfig, size: EvalSize) -> anyhow::Result<Evaluation>;
    /// Device time per dispatch of one micro-batch's train program (timestamp queries) on
    /// held-out data, or None without timestamp queries. Call between windows; the model
    /// restores any state the run changed (BatchNorm's running statistics).
    fn profile_micro_batch(&mut self) -> anyhow::Result<Option<Vec<(String, f64)>>>;
    /// Wall-clock seconds of one micro-batch's forward program and train program, averaged over
    /// `reps` waited submissions (`gradscope bench`).
    fn time_micro_programs(&mut self, reps: usize) -> anyhow::Result<(f64, f64)>;

    /// Checkpoint metadata of the model's own (its `format`, its config, the sampler position).
    fn checkpoint_meta(&self) -> anyhow::Result<HashMap<String, String>>;
    /// Tensors a checkpoint stores besides the parameters and AdamW moments (BatchNorm's running
    /// statistics).
    fn checkpoint_extra(&self) -> anyhow::Result<Vec<NamedTensor>> {
        Ok(Vec::new())
    }
    /// Check a checkpoint's model metadata against this model and restore the model's own state
    /// (sampler position, running statistics); the trainer restores the common part.
    fn restore(&mut self, path: &Path, meta: &HashMap<String, String>, tensors: &safetensors::SafeTensors) -> anyhow::Result<()>;

    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Build the model a config names (registration: one line per model).
pub fn build(gpu: &Gpu, cfg: &mut TrainConfig) -> anyhow::Result<Box<dyn Model>> {
    Ok(match cfg.model {
        ModelKind::Gpt => Box::new(super::gpt::GptModel::new(gpu, cfg)?),
        ModelKind::Cnn => Box::new(super::cnn::CnnModel::new(gpu, cfg)?),
    })
}

/// The parameter tensors (name, shape) a checkpoint of `kind` must hold for the config `cfg`,
/// from its metadata alone (nothing is allocated): checked against the file before the model is
/// built, so a hostile shape is an error, not an allocation.
pub fn checkpoint_table(
    kind: ModelKind, path: &Path, meta: &HashMap<String, String>, cfg: &TrainConfig,
) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    use super::checkpoint::meta_json;
    let table = match kind {
        ModelKind::Gpt => {
            // the vocabulary size: a char tokenizer's characters, the stored config's otherwise
            let saved: crate::reference::gpt::GptConfig = meta_json(path, meta, "config")?;
            let vocab_size = match super::checkpoint::tokenizer_meta(path, meta, saved.vocab_size)? {
                crate::data::tokenizer::Tokenizer::Char(v) => v.len(),
                _ => saved.vocab_size,
            };
            let gcfg = crate::reference::gpt::GptConfig {
                vocab_size, block_size: cfg.block_size, n_layer: cfg.n_layer, n_head: cfg.n_head,
                n_embd: cfg.n_embd,
            };
            super::checkpoint::tensor_table(&gcfg)
        }
        ModelKind::Cnn => {
            let c: crate::reference::cnn_model::CnnConfig = meta_json(path, meta, "cnn_config")?;
            anyhow::ensure!(c.norm == cfg.norm, "{}: saved with {:?} norm, the config asks for {:?}", path.display(), c.norm, cfg.norm);
            super::cnn::tensor_table(&c)
        }
    };
    Ok(table.into_iter().map(|(n, s, _)| (n, s)).collect())
}

/// The checkpoint format each model writes (`format` metadata).
pub fn kind_of_format(format: Option<&str>) -> Option<ModelKind> {
    match format {
        Some("gradscope-gpt") | None => Some(ModelKind::Gpt),
        Some("gradscope-cnn") => Some(ModelKind::Cnn),
        _ => None,
    }
}

/// Mesa's CPU adapters (lavapipe, llvmpipe) stop a shader invocation's loops after 65,535
/// iterations in total, silently. Kernels that reduce over the rows of a micro-batch in one
/// invocation (deterministic sums without atomics) would then return wrong numbers, so larger
/// micro-batches are refused on such adapters (here, with the advice that fits; the launchers
/// check every other looped axis).
pub use crate::gpu::kernels::CPU_ADAPTER_MAX_LOOP;

pub fn check_loop_limit(gpu: &Gpu, what: &str, rows: usize) -> anyhow::Result<()> {
    if gpu.kind == crate::gpu::DeviceKind::Cpu && rows > CPU_ADAPTER_MAX_LOOP {
        anyhow::bail!(
            "{what} = {rows} rows is more than this CPU adapter's {CPU_ADAPTER_MAX_LOOP} loop iterations per shader \
             invocation (Mesa's limit): use a smaller micro_batch and more accum_steps for the same effective batch"
        );
    }
    Ok(())
}
