//! Training configuration: one flat, commented set of defaults (nanoGPT style); a TOML file, then
//! `--key value` overrides. Unknown keys are errors; values are validated before any GPU work.
//!
//! The field comments below are also the help of the command line's config flags (`gradscope
//! train --help`): `TrainConfig` derives `clap::Args`, and the CLI shows each key with its default.
//! The command line and the string overrides of the library (`load`) meet in one table of given
//! keys (`load_table`), so both are typed, layered and checked the same way.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::gpt::Normalization;

/// Learning-rate schedule; it advances once per optimizer step, never per micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    #[default]
    Constant,
    /// Linear warmup over `warmup_steps`, then cosine decay to `min_lr` at `decay_steps`
    /// (default `max_steps`).
    Cosine,
}

/// Where the global-norm clip is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClipMode {
    /// Correct: once, on the global norm of the whole accumulated gradient, before the step.
    #[default]
    Global,
    /// A known mistake kept for `verify`: each micro-batch's gradient clipped on its own.
    PerMicroBatch,
}

/// What to do when a window's loss or gradient is NaN or infinite (detected on the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnNonFinite {
    /// The device skips the AdamW step (weights and moments untouched); training goes on.
    #[default]
    Skip,
    /// Stop with a diagnosis naming the first tensor that went non-finite.
    Stop,
}

/// Where mixed precision's loss scale is applied and removed (precision = f16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LossScaleOrder {
    /// The contract: each counted target's loss weighs scale / window count (divide by the
    /// count, then scale), the scale is constant over the window, the gradient is unscaled once
    /// at the step, before the global norm and the clip.
    #[default]
    Contract,
    /// A mistake kept for tests: the loss is scaled before it is divided (weight = scale; the
    /// count divides at the step). The f16 activation gradients are then up to `count` times
    /// larger and overflow at scales the contract handles.
    ScaleBeforeDivide,
    /// A mistake kept for tests: the accumulated gradient is unscaled after every micro-batch
    /// (as calling a framework's unscale inside the accumulation loop does), so earlier
    /// micro-batches are divided by the scale again and again.
    UnscalePerMicroBatch,
}

/// Which model to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// The char-level GPT on a text file.
    #[default]
    Gpt,
    /// The CNN on MNIST or the 8x8 digits.
    Cnn,
}

/// Every key of the configuration. The derived `clap::Args` gives each field's type checks and
/// help; the CLI (src/cli/config.rs) makes each a `--kebab-case` flag with its default. Keys
/// whose type is an enum take its TOML names on the command line too (`enum_value`); a new enum
/// key needs the same `#[arg(value_parser = ...)]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[group(skip)]
pub struct TrainConfig {
    /// `gpt` or `cnn`. With `cnn` the defaults that differ are lr 2e-3, beta2 0.999,
    /// weight_decay 0.01, grad_clip 0 (off), micro_batch 32, accum_steps 4, eval_every 0,
    /// out_dir runs/cnn.
    #[arg(value_parser = enum_value::<ModelKind>)]
    pub model: ModelKind,
    // --- CNN ---
    /// CNN: `group` (GroupNorm(4)) or `batch` (BatchNorm).
    #[arg(value_parser = enum_value::<crate::reference::cnn_model::NormKind>)]
    pub norm: crate::reference::cnn_model::NormKind,
    /// CNN: `mnist` (5k train, 10k test) or `digits` (8x8, tiny); both are built into the binary.
    #[arg(value_parser = enum_value::<crate::data::images::Dataset>)]
    pub dataset: crate::data::images::Dataset,
    /// CNN: epochs over the training images (max_steps is derived from them).
    pub epochs: usize,
    // --- data ---
    /// GPT data: a UTF-8 text file (train = first 90% of its tokens, validation = the rest), a
    /// folder of token files (`gradscope prepare`'s shards, `*train*.bin` and `*val*.bin`), or one
    /// training token file (`train.bin`; its validation file has `val` for `train` in its name).
    /// Token files are llm.c shards or nanoGPT's headerless uint16 files, memory-mapped. The
    /// default names the copy of Tiny Shakespeare built into the binary; other paths are read
    /// relative to the working directory.
    pub data: String,
    /// GPT: `char` (the corpus's distinct characters) or `gpt2` (GPT-2's BPE, 50,257 tokens).
    /// Token files written by `prepare` name their own tokenizer.
    #[arg(value_parser = enum_value::<crate::data::tokenizer::TokenizerKind>)]
    pub tokenizer: crate::data::tokenizer::TokenizerKind,
    /// Train on random-length sequences padded to block_size with the ignore index.
    pub padded: bool,
    /// Seed of the window sampler (splitmix64).
    pub data_seed: u64,
    // --- model (GPT, pre-LN, tied lm_head, GELU tanh) ---
    /// GPT: transformer blocks L.
    pub n_layer: usize,
    /// GPT: attention heads NH (n_embd must be divisible by it).
    pub n_head: usize,
    /// GPT: channels C.
    pub n_embd: usize,
    /// Sequence length T (and the size of the position embedding).
    pub block_size: usize,
    /// GPT: entries of the output vocabulary V; 0 takes the data's (its tokenizer's: 65
    /// characters for Tiny Shakespeare, 50,257 for GPT-2's BPE). A larger V pads the embedding
    /// (nanoGPT's 50,304). Needed for token files that name no tokenizer (nanoGPT's train.bin of
    /// character ids).
    pub vocab_size: usize,
    /// GPT: vocabulary entries per chunk of the tied lm_head and the cross-entropy: the logits
    /// never exist whole, only B x T x vocab_chunk of them (an online log-sum-exp forward,
    /// recomputation in the backward). 0: the whole vocabulary in one chunk.
    pub vocab_chunk: usize,
    /// Seed of the parameter initialization.
    pub seed: u64,
    // --- batch ---
    /// B: sequences per forward/backward.
    pub micro_batch: usize,
    /// K: micro-batches per optimizer step.
    pub accum_steps: usize,
    /// E: sequences per optimizer step. 0 means B*K. When E is not a multiple of B the last
    /// micro-batch of each window is short (normalized by its real count).
    pub effective_batch: usize,
    /// GPT: dropout probability (nanoGPT's places: the embedding, attention probabilities, the
    /// residual branches), masks drawn on the device from a counter-based hash of (seed, step,
    /// window position, element), so B x K and B*K x 1 drop the same elements. Evaluation and
    /// sampling never drop.
    pub dropout: f64,
    /// GPT: biases in the Linear and LayerNorm layers. gradscope's GPT always has them: only
    /// `true` is accepted.
    pub bias: bool,
    // --- optimizer (AdamW) ---
    /// Optimizer steps (the CNN derives them from epochs).
    pub max_steps: usize,
    /// AdamW learning rate (the peak, with the cosine schedule).
    pub lr: f64,
    /// Cosine schedule: the learning rate at max_steps.
    pub min_lr: f64,
    /// `constant` or `cosine` (linear warmup over warmup_steps, then cosine decay to min_lr).
    #[arg(value_parser = enum_value::<Schedule>)]
    pub schedule: Schedule,
    /// Cosine schedule: steps of linear warmup.
    pub warmup_steps: usize,
    /// Cosine schedule: the step at which the learning rate reaches min_lr (and stays); 0 =
    /// max_steps.
    pub decay_steps: usize,
    /// AdamW: decay of the first moment.
    pub beta1: f64,
    /// AdamW: decay of the second moment.
    pub beta2: f64,
    /// AdamW: added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay, on 2-D weights only.
    pub weight_decay: f64,
    /// Global-norm clip threshold (0 = off).
    pub grad_clip: f64,
    /// `global` (the only correct one) or `per-micro-batch` (a mistake kept for `verify`).
    #[arg(value_parser = enum_value::<ClipMode>)]
    pub clip_mode: ClipMode,
    /// How the window's gradient is normalized: `window-count` (the only correct one) or
    /// `per-micro-batch-mean` (the Oct-2024 mistake, kept for `verify`).
    #[arg(value_parser = enum_value::<Normalization>)]
    pub normalization: Normalization,
    // --- evaluation and output ---
    /// Evaluate every N optimizer steps (and at the end); 0 = only at the end.
    pub eval_every: usize,
    /// Validation loss = mean over the first N non-overlapping validation windows.
    pub eval_windows: usize,
    /// Directory for metrics.jsonl, metrics.csv and checkpoints.
    pub out_dir: String,
    /// Start from these weights: a gradscope checkpoint, a safetensors file with nanoGPT's or
    /// Hugging Face GPT-2's names, or a Hugging Face folder (model.safetensors + config.json).
    /// A longer position embedding is cropped to block_size.
    pub init_from: String,
    /// Save `ckpt-stepNNNNNN.safetensors` (and the latest `ckpt.safetensors`) every N steps; 0 = only at the end.
    pub save_every: usize,
    /// Keep the last M periodic checkpoints.
    pub keep_last: usize,
    /// NaN/Inf in a window: `skip` the step (default) or `stop` with a diagnosis.
    #[arg(value_parser = enum_value::<OnNonFinite>)]
    pub on_nonfinite: OnNonFinite,
    /// Per-micro-batch gradient statistics, measured on the device inside each window: each
    /// micro-batch's gradient norm and its inner product with the sum so far (per tensor), hence
    /// cosines and the gradient noise scale B_simple (metrics `b_simple`, the progress line).
    /// Costs a copy of the gradient (its memory) and one reduction per micro-batch. On in the
    /// app.
    pub grad_stats: bool,
    // --- memory ---
    /// GPT: keep only each block's input in forward and recompute the block in backward
    /// (activation memory drops to the block inputs plus one block; costs one more forward).
    pub checkpoint_activations: bool,
    /// A device-memory budget such as "512MiB": micro_batch becomes the largest B whose
    /// predicted memory fits it (and the device's limits), K = ceil(E / B). "" = off.
    pub memory_budget: String,
    /// GPT: `f32`, or `f16` for mixed precision (f16 activations and activation gradients; f32
    /// weights, gradients and AdamW state; dynamic loss scaling). Adapters without SHADER_F16
    /// train in f32 with a notice.
    #[arg(value_parser = enum_value::<crate::gpu::Precision>)]
    pub precision: crate::gpu::Precision,
    /// Mixed precision: the initial loss scale (halved after a window whose gradient
    /// overflows, which is then skipped; doubled after `loss_scale_growth_interval` clean steps).
    pub loss_scale: f64,
    /// Mixed precision: clean steps after which the loss scale doubles.
    pub loss_scale_growth_interval: usize,
    /// Mixed precision: `contract` (the only correct one), or the mistakes `scale-before-divide`
    /// and `unscale-per-micro-batch`, kept to show what they do.
    #[arg(value_parser = enum_value::<LossScaleOrder>)]
    pub loss_scale_order: LossScaleOrder,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelKind::Gpt,
            norm: Default::default(),
            dataset: Default::default(),
            epochs: 1,
            data: crate::data::text::TINY_SHAKESPEARE.into(),
            tokenizer: Default::default(),
            padded: false,
            data_seed: 42,
            n_layer: 2,
            n_head: 4,
            n_embd: 128,
            block_size: 64,
            vocab_size: 0,
            vocab_chunk: 8192,
            seed: 1337,
            micro_batch: 16,
            accum_steps: 4,
            effective_batch: 0,
            dropout: 0.0,
            bias: true,
            max_steps: 200,
            lr: 3e-3,
            min_lr: 3e-4,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            decay_steps: 0,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            clip_mode: ClipMode::Global,
            normalization: Normalization::WindowCount,
            eval_every: 50,
            eval_windows: 512,
            out_dir: "runs/gpt".into(),
            init_from: String::new(),
            save_every: 0,
            keep_last: 3,
            on_nonfinite: OnNonFinite::Skip,
            grad_stats: false,
            checkpoint_activations: false,
            memory_budget: String::new(),
            precision: crate::gpu::Precision::F32,
            loss_scale: 65536.0,
            loss_scale_growth_interval: 200,
            loss_scale_order: LossScaleOrder::Contract,
        }
    }
}

/// The most samples a micro-batch, a window or an optimizer step may hold (2^24).
pub const MAX_BATCH: usize = 1 << 24;
/// The most tokens (samples x block_size) one window may hold: its inputs and targets are packed
/// on the host and uploaded as one buffer (2^28 tokens = 2 GiB of u32 pairs).
pub const MAX_WINDOW_TOKENS: usize = 1 << 28;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("unknown config key `{0}` (`gradscope train --help` lists every key)")]
    UnknownKey(String),
    #[error("invalid value for `{key}`: {message}")]
    Type { key: String, message: String },
    #[error("override {0:?} has no value (write --key value or --key=value)")]
    MissingValue(String),
    #[error("override {0:?} is not of the form --key value")]
    BadOverride(String),
    #[error("invalid value: {0}")]
    Invalid(String),
}

impl TrainConfig {
    /// Defaults, then the TOML file (if any), then `--key value` / `--key=value` overrides.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::load_table(file, parse_overrides(overrides)?)
    }

    /// Defaults, then the TOML file (if any), then the given keys (what the command line's
    /// config flags produce; see `override_value`).
    pub fn load_table(file: Option<&Path>, overrides: toml::Table) -> Result<Self, ConfigError> {
        Self::load_layers(toml::Table::new(), file, overrides)
    }

    /// Defaults, then `profile` (a command's own defaults, such as `verify --quick`'s), then
    /// the TOML file (if any), then the given keys.
    pub fn load_layers(profile: toml::Table, file: Option<&Path>, overrides: toml::Table) -> Result<Self, ConfigError> {
        // nanoGPT's names are resolved layer by layer, so that a file's `learning_rate` and a
        // flag's `--lr` layer like two `lr`s
        let mut table = resolve_aliases(profile)?;
        if let Some(p) = file {
            table.extend(resolve_aliases(read_file(p)?)?);
        }
        table.extend(resolve_aliases(overrides)?);
        Self::from_table(table)
    }

    /// The configuration a table of keys describes: the model's defaults for the keys not given,
    /// then type checks that name the key, then `validate`.
    pub fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let mut table = resolve_aliases(table)?;
        let defaults = default_table();
        for (key, value) in table.iter_mut() {
            match defaults.get(key) {
                None => return Err(ConfigError::UnknownKey(key.clone())),
                // a size such as memory_budget = 2147483647 written as a bare number
                Some(toml::Value::String(_)) if value.is_integer() => *value = toml::Value::String(value.to_string()),
                Some(_) => {}
            }
        }
        // the CNN's own defaults, for the keys not given
        if model_in(&table)? == ModelKind::Cnn {
            for (k, v) in [
                ("lr", toml::Value::Float(2e-3)),
                ("beta2", toml::Value::Float(0.999)),
                ("weight_decay", toml::Value::Float(0.01)),
                ("grad_clip", toml::Value::Float(0.0)),
                ("micro_batch", toml::Value::Integer(32)),
                ("accum_steps", toml::Value::Integer(4)),
                ("eval_every", toml::Value::Integer(0)),
                ("out_dir", toml::Value::String("runs/cnn".into())),
            ] {
                table.entry(k.to_string()).or_insert(v);
            }
        }
        let cfg: TrainConfig = match table.clone().try_into() {
            Ok(c) => c,
            // name the key: deserialize the keys one at a time (every other key has a default)
            Err(e) => return Err(table.into_iter().find_map(|(k, v)| key_error(k, v)).unwrap_or(ConfigError::Parse(message(&e)))),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that need no device (device limits are checked when the model is built).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_sizes()?;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.micro_batch == 0 {
            return bad("micro_batch (B) must be at least 1".into());
        }
        if self.accum_steps == 0 {
            return bad("accum_steps (K) must be at least 1".into());
        }
        if self.n_layer == 0 || self.n_head == 0 || self.n_embd == 0 || self.block_size == 0 {
            return bad("n_layer, n_head, n_embd and block_size must be at least 1".into());
        }
        if self.n_embd % self.n_head != 0 {
            return bad(format!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head));
        }
        validate_optimizer_floats(self)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.dropout != 0.0 && self.model == ModelKind::Cnn {
            return bad(format!("dropout = {}: dropout is for the GPT (the CNN has none)", self.dropout));
        }
        if !self.bias {
            return bad("bias = false: gradscope's GPT always has biases in its Linear and LayerNorm layers (bias = true)".into());
        }
        if self.decay_steps != 0 && self.decay_steps <= self.warmup_steps {
            return bad(format!("decay_steps {} must be larger than warmup_steps {}", self.decay_steps, self.warmup_steps));
        }
        if self.max_steps == 0 {
            return bad("max_steps must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.keep_last == 0 {
            return bad("keep_last must be at least 1".into());
        }
        if self.eval_windows == 0 {
            return bad("eval_windows must be at least 1".into());
        }
        if !self.memory_budget.is_empty() {
            crate::model::memory::parse_bytes(&self.memory_budget).map_err(|e| ConfigError::Invalid(format!("memory_budget: {e}")))?;
        }
        if self.model == ModelKind::Cnn && (self.normalization != Normalization::WindowCount || self.clip_mode != ClipMode::Global) {
            return bad("normalization and clip_mode: the broken settings are GPT demonstrations (the CNN trains with the correct ones)".into());
        }
        if self.checkpoint_activations && self.model == ModelKind::Cnn {
            return bad("checkpoint_activations is for the GPT (the CNN keeps every activation)".into());
        }
        if !(self.loss_scale.is_finite() && self.loss_scale >= 1.0 && self.loss_scale <= 16_777_216.0) {
            return bad(format!("loss_scale must be between 1 and 2^24, got {}", self.loss_scale));
        }
        if self.loss_scale_growth_interval == 0 {
            return bad("loss_scale_growth_interval must be at least 1".into());
        }
        if self.precision == crate::gpu::Precision::F16 {
            if self.model == ModelKind::Cnn {
                return bad("precision f16 is for the GPT (the CNN trains in f32)".into());
            }
            if self.normalization != Normalization::WindowCount || self.clip_mode != ClipMode::Global {
                return bad(
                    "precision f16 uses the correct normalization and global clipping only (the broken modes are f32 demonstrations)"
                        .into(),
                );
            }
        } else if self.loss_scale_order != LossScaleOrder::Contract {
            return bad("loss_scale_order applies to precision f16".into());
        }
        // under a memory budget micro_batch is chosen (<= E) when the model is built
        if self.memory_budget.is_empty() && self.effective_batch != 0 && self.effective_batch < self.micro_batch {
            return bad(format!(
                "effective_batch {} is smaller than micro_batch {}", self.effective_batch, self.micro_batch
            ));
        }
        Ok(())
    }

    /// The integer keys that size buffers and loops, bounded so that every size computed from
    /// them fits (no overflow past the checks, no allocation that cannot succeed): the error names
    /// the key.
    fn check_sizes(&self) -> Result<(), ConfigError> {
        let over = |key: &str, value: usize, max: usize, why: &str| {
            Err(ConfigError::Invalid(format!("{key} = {value} is larger than {max} ({why})")))
        };
        for (key, value, max, why) in [
            ("micro_batch", self.micro_batch, MAX_BATCH, "samples per forward/backward"),
            ("accum_steps", self.accum_steps, MAX_BATCH, "micro-batches per window"),
            ("effective_batch", self.effective_batch, MAX_BATCH, "samples per optimizer step"),
            ("block_size", self.block_size, 1 << 16, "positions"),
            ("vocab_size", self.vocab_size, 1 << 24, "vocabulary entries"),
            ("vocab_chunk", self.vocab_chunk, 1 << 24, "vocabulary entries"),
            ("n_embd", self.n_embd, 1 << 15, "channels"),
            ("n_layer", self.n_layer, 1 << 10, "layers"),
            ("n_head", self.n_head, 1 << 15, "heads"),
            ("epochs", self.epochs, 1 << 20, "epochs"),
        ] {
            if value > max {
                return over(key, value, max, why);
            }
        }
        // E = B x K when effective_batch is 0
        let e = self.effective();
        if e > MAX_BATCH {
            return over("micro_batch x accum_steps", e, MAX_BATCH, "samples per optimizer step");
        }
        if e.saturating_mul(self.block_size) > MAX_WINDOW_TOKENS {
            return Err(ConfigError::Invalid(format!(
                "a window of effective batch {e} x block_size {} = {} tokens is more than {MAX_WINDOW_TOKENS}: \
                 use fewer samples per step (effective_batch, or micro_batch x accum_steps)",
                self.block_size, e.saturating_mul(self.block_size)
            )));
        }
        Ok(())
    }

    /// E: sequences per optimizer step.
    pub fn effective(&self) -> usize {
        if self.effective_batch == 0 { self.micro_batch.saturating_mul(self.accum_steps) } else { self.effective_batch }
    }

    /// Micro-batches per window: K, or ceil(E / B) when E is given.
    pub fn windows_micro_batches(&self) -> usize {
        self.effective().div_ceil(self.micro_batch)
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                if step < self.warmup_steps {
                    return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
                }
                let end = if self.decay_steps == 0 { self.max_steps } else { self.decay_steps };
                let span = end.saturating_sub(self.warmup_steps).max(1);
                let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                self.min_lr + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (self.lr - self.min_lr)
            }
        }
    }
}

/// Every key with its default value.
pub fn default_table() -> toml::Table {
    toml::Table::try_from(TrainConfig::default()).expect("the defaults serialize as a TOML table")
}

/// The keys of a config file: TOML, or a nanoGPT-style Python file (`.py`, see `pyconfig`).
pub fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let bytes = crate::data::read_file(path, crate::data::MAX_CONFIG_BYTES)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Parse(format!("{}: not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to())))?;
    if path.extension().is_some_and(|e| e == "py") {
        return super::pyconfig::parse(&text, &path.display().to_string());
    }
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))
}

/// nanoGPT's config names (train.py, config/*.py) accepted for gradscope's keys: (nanoGPT name,
/// gradscope key, meaning). `dropout`, `bias`, `min_lr`, `beta1`, `beta2`, `weight_decay`,
/// `grad_clip`, `n_layer`, `n_head`, `n_embd`, `block_size`, `out_dir` and `seed` are the same
/// name in both.
pub const NANOGPT_ALIASES: &[(&str, &str, &str)] = &[
    ("batch_size", "micro_batch", "sequences per forward/backward: B"),
    ("gradient_accumulation_steps", "accum_steps", "micro-batches per optimizer step: K (E = B x K)"),
    ("learning_rate", "lr", "the peak learning rate"),
    ("max_iters", "max_steps", "optimizer steps (an iteration is one optimizer step in both)"),
    ("eval_interval", "eval_every", "evaluate every N optimizer steps"),
    ("warmup_iters", "warmup_steps", "steps of linear warmup (cosine schedule)"),
    ("lr_decay_iters", "decay_steps", "the step at which the cosine schedule reaches min_lr"),
    ("decay_lr", "schedule", "True = cosine (warmup, then cosine decay to min_lr), False = constant"),
];

/// `table` with nanoGPT's names replaced by gradscope's keys (an error names both when one
/// table gives both).
pub fn resolve_aliases(table: toml::Table) -> Result<toml::Table, ConfigError> {
    let mut out = toml::Table::new();
    for (k, v) in table.iter() {
        let Some((alias, key, _)) = NANOGPT_ALIASES.iter().find(|a| a.0 == k) else {
            out.insert(k.clone(), v.clone());
            continue;
        };
        if table.contains_key(*key) {
            return Err(ConfigError::Invalid(format!("both `{key}` and its nanoGPT name `{alias}` are given")));
        }
        let v = if *key == "schedule" {
            let on = match v {
                toml::Value::Boolean(b) => *b,
                toml::Value::String(s) if ["True", "true"].contains(&s.as_str()) => true,
                toml::Value::String(s) if ["False", "false"].contains(&s.as_str()) => false,
                _ => return Err(ConfigError::Type { key: alias.to_string(), message: format!("expected True or False, found {v}") }),
            };
            toml::Value::String(if on { "cosine" } else { "constant" }.into())
        } else {
            v.clone()
        };
        out.insert(key.to_string(), v);
    }
    Ok(out)
}

/// The model a table of keys selects (the default when it names none).
pub fn model_in(table: &toml::Table) -> Result<ModelKind, ConfigError> {
    match table.get("model") {
        None => Ok(ModelKind::default()),
        Some(v) => ModelKind::deserialize(v.clone()).map_err(|e| ConfigError::Type { key: "model".into(), message: message(&e) }),
    }
}

/// `--key value` / `--key=value` overrides as a table of keys (`-` and `_` alike in keys).
pub fn parse_overrides(overrides: &[String]) -> Result<toml::Table, ConfigError> {
    let mut table = toml::Table::new();
    let mut args = overrides.iter();
    while let Some(arg) = args.next() {
        let Some(kv) = arg.strip_prefix("--") else { return Err(ConfigError::BadOverride(arg.clone())) };
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, v),
            None => (kv, args.next().ok_or_else(|| ConfigError::MissingValue(arg.clone()))?.as_str()),
        };
        let key = key.replace('-', "_");
        table.insert(key.clone(), override_value(&key, value));
    }
    Ok(table)
}

/// The value of `--key text`: the text itself for a key whose value is a string (a path, a size
/// such as `512MiB` or `2147483647`), else TOML syntax (numbers, booleans), falling back to a
/// string (enum names such as `cnn`) that the type check then accepts or names.
pub fn override_value(key: &str, text: &str) -> toml::Value {
    let is_string = matches!(default_table().get(key), Some(toml::Value::String(_)));
    match format!("x = {text}").parse::<toml::Table>() {
        Ok(t) if !is_string => t["x"].clone(),
        _ => toml::Value::String(text.to_string()),
    }
}

/// The type error of one key, if its value does not fit.
fn key_error(key: String, value: toml::Value) -> Option<ConfigError> {
    let one = toml::Table::from_iter([(key.clone(), value)]);
    let e = one.try_into::<TrainConfig>().err()?;
    Some(ConfigError::Type { key, message: message(&e) })
}

fn message(e: &toml::de::Error) -> String {
    e.message().trim_end().to_string()
}

/// clap's parser for a key whose type is an enum: the kebab-case names of the TOML file.
fn enum_value<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    T::deserialize(toml::Value::String(text.to_string())).map_err(|e| message(&e))
}

/// The AdamW and clipping hyper-parameters, checked as the f32 values the kernels receive
/// (they are read as f64 but cast once per step, see `AdamW` in src/gpu/kernels.rs):
/// - finite after the cast, and a nonzero value not rounded to 0 or to a subnormal (devices
///   may flush subnormals to 0): `--lr 1e-50` would otherwise train with lr 0, `--eps 1e-50`
///   would divide 0 by 0 wherever a gradient is 0;
/// - betas < 1 after rounding: at 1 the bias correction 1 - beta^t is 0 (a division by 0);
/// - lr <= MAX_LR: AdamW moves each weight by about lr per step at most (|m_hat / (sqrt(v_hat)
///   + eps)| <= 1 at step 1), so this bounds the first step's change; no schedule needs more;
/// - lr x weight_decay < 1 (the larger of lr and min_lr, in f32): the decoupled decay
///   multiplies each weight by (1 - lr wd) per step; at 1 it zeroes the weights, beyond it
///   flips their sign, from 2 on it makes them grow every step. `--weight_decay 1e30` made
///   step 1 write NaN weights.
///
/// loss_scale is already bounded to [1, 2^24] (exact in f32).
fn validate_optimizer_floats(c: &TrainConfig) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    let lr = f32_value("lr", c.lr)?;
    if !(lr > 0.0 && lr <= MAX_LR) {
        return bad(format!("lr must be a positive number at most {MAX_LR:e}, got {}", c.lr));
    }
    let min_lr = f32_value("min_lr", c.min_lr)?;
    if !(min_lr >= 0.0 && min_lr <= MAX_LR) {
        return bad(format!("min_lr must be >= 0 and at most {MAX_LR:e}, got {}", c.min_lr));
    }
    for (name, b) in [("beta1", c.beta1), ("beta2", c.beta2)] {
        let b32 = f32_value(name, b)?;
        if !(0.0..1.0).contains(&b) {
            return bad(format!("{name} must be in [0, 1), got {b}"));
        }
        if b32 >= 1.0 {
            return bad(format!(
                "{name} {b} rounds to 1 in f32 (the precision AdamW runs in): the bias correction 1 - {name}^t \
                 would divide by 0; use at most {}",
                f32::from_bits(1.0f32.to_bits() - 1)
            ));
        }
    }
    let eps = f32_value("eps", c.eps)?;
    if !(eps > 0.0) {
        return bad(format!("eps must be positive, got {}", c.eps));
    }
    let wd = f32_value("weight_decay", c.weight_decay)?;
    if !(wd >= 0.0) {
        return bad(format!("weight_decay must be >= 0, got {}", c.weight_decay));
    }
    let decay = lr.max(min_lr) * wd;
    if !(decay < 1.0) {
        return bad(format!(
            "weight_decay {} times lr {} is {decay:e}: AdamW's decoupled decay multiplies every weight by \
             (1 - lr x weight_decay) each step, so the product must stay below 1",
            c.weight_decay,
            c.lr.max(c.min_lr)
        ));
    }
    let clip = f32_value("grad_clip", c.grad_clip)?;
    if !(clip >= 0.0) {
        return bad(format!("grad_clip must be >= 0 (0 = off), got {}", c.grad_clip));
    }
    Ok(())
}

/// The largest learning rate `validate` accepts (see `validate_optimizer_floats`).
const MAX_LR: f32 = 1e3;

/// `x` as the f32 a kernel receives, or an error naming `key` when it is not finite there or
/// when a nonzero `x` becomes 0 or a subnormal (which devices may flush to 0).
fn f32_value(key: &str, x: f64) -> Result<f32, ConfigError> {
    let v = x as f32;
    if !v.is_finite() {
        return Err(ConfigError::Invalid(format!(
            "{key} {x} is not a finite f32 (the precision it is used in; at most {:e} in magnitude)",
            f32::MAX
        )));
    }
    if x != 0.0 && !v.is_normal() {
        return Err(ConfigError::Invalid(format!(
            "{key} {x} becomes {v:e} in f32 (the precision it is used in), which devices may flush to 0: \
             use 0 or a magnitude of at least {:e}",
            f32::MIN_POSITIVE
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<TrainConfig, ConfigError> {
        TrainConfig::load(None, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Values that pass as f64 but break AdamW in f32 are refused, naming the key.
    #[test]
    fn optimizer_floats_are_checked_in_f32() {
        let mut wrong = Vec::new();
        let mut refused = |args: &[&str], key: &str, why: &str| match load(args) {
            Ok(_) => wrong.push(format!("{args:?} accepted")),
            Err(e) if !(e.to_string().contains(&format!("{key} ")) && e.to_string().contains(why)) => {
                wrong.push(format!("{args:?}: {e} (should name {key} and say {why:?})"))
            }
            Err(_) => {}
        };
        refused(&["--lr", "1e300"], "lr", "not a finite f32");
        refused(&["--lr", "1e-50"], "lr", "becomes 0e0 in f32");
        refused(&["--lr", "1e-40"], "lr", "flush to 0");
        refused(&["--lr", "1e4"], "lr", "at most 1e3");
        refused(&["--beta1", "0.99999999999"], "beta1", "rounds to 1 in f32");
        refused(&["--beta2", "0.999999999"], "beta2", "rounds to 1 in f32");
        refused(&["--weight_decay", "1e30"], "weight_decay", "below 1");
        refused(&["--weight_decay", "1e300"], "weight_decay", "not a finite f32");
        refused(&["--lr", "0.5", "--weight_decay", "2"], "weight_decay", "below 1");
        refused(&["--min_lr", "2e3"], "min_lr", "at most 1e3");
        refused(&["--eps", "1e-50"], "eps", "becomes 0e0 in f32");
        refused(&["--eps", "1e39"], "eps", "not a finite f32");
        refused(&["--grad_clip", "1e39"], "grad_clip", "not a finite f32");
        refused(&["--grad_clip", "1e-45"], "grad_clip", "flush to 0");
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // the edges that stay representable pass
        let c = load(&["--beta1", "0.99999994", "--lr", "1e3", "--weight_decay", "9.9e-4", "--eps", "1.2e-38"]).unwrap();
        assert_eq!((c.beta1 as f32, c.lr as f32), (0.99999994, 1e3));
        load(&["--min_lr", "0", "--weight_decay", "0", "--grad_clip", "0"]).unwrap();
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = load(&["--lr", "abc"]).unwrap_err().to_string();
        assert!(e.contains("`lr`") && e.contains("f64"), "{e}");
        let e = load(&["--n_layer", "-1"]).unwrap_err().to_string();
        assert!(e.contains("`n_layer`"), "{e}");
        let e = load(&["--precision", "f8"]).unwrap_err().to_string();
        assert!(e.contains("`precision`") && e.contains("f8"), "{e}");
        let e = load(&["--model", "rnn"]).unwrap_err().to_string();
        assert!(e.contains("`model`"), "{e}");
        let e = TrainConfig::from_table("padded = 3".parse().unwrap()).unwrap_err().to_string();
        assert!(e.contains("`padded`"), "{e}");
        let e = load(&["--micro-bach", "4"]).unwrap_err().to_string();
        assert!(e.contains("`micro_bach`") && e.contains("unknown"), "{e}");
    }

    #[test]
    fn string_keys_take_numbers_and_kebab_keys_equal_snake_keys() {
        let c = load(&["--memory_budget", "2147483647"]).unwrap();
        assert_eq!(c.memory_budget, "2147483647");
        let c = TrainConfig::from_table("memory_budget = 2147483647".parse().unwrap()).unwrap();
        assert_eq!(c.memory_budget, "2147483647");
        // a string key keeps its text exactly (TOML would read 1e3 as 1000.0)
        assert_eq!(load(&["--out-dir", "1e3"]).unwrap().out_dir, "1e3");
        assert_eq!(load(&["--max-steps", "7", "--checkpoint-activations=true"]).unwrap(), load(&["--max_steps=7", "--checkpoint_activations", "true"]).unwrap());
    }

    #[test]
    fn layers_apply_in_order() {
        let profile: toml::Table = "max_steps = 5\nlr = 0.5".parse().unwrap();
        let c = TrainConfig::load_layers(profile, None, "max_steps = 9".parse().unwrap()).unwrap();
        assert_eq!((c.max_steps, c.lr), (9, 0.5));
        let c = TrainConfig::load_table(None, "model = \"cnn\"".parse().unwrap()).unwrap();
        assert_eq!((c.model, c.micro_batch, c.out_dir.as_str()), (ModelKind::Cnn, 32, "runs/cnn"));
    }
}
