//! The memory model: the bytes a training run holds on the device, per ledger category, computed
//! from the same layouts the models allocate. No probing: wgpu has no memory-usage query and a
//! driver may page instead of failing, so the numbers come from the layouts and the program
//! shapes, and `tests/memory.rs` proves them equal to the byte ledger of the buffers created.
//!
//! The prediction is the steady state of training: after the first optimizer step, with the
//! programs of micro-batch B recorded (and, for the CNN, those of the epoch's short remainder once
//! it has run: `Remainder`). Readback staging buffers live only during a read and are not counted,
//! nor are the device's own unused-binding stand-ins (`gpu::UNUSED_BINDING_BYTES`, 2.25 KiB of
//! scratch in the ledger from the moment the device exists, whatever runs on it).

use crate::gpu::kernels::MatmulVariant;
use crate::gpu::{Category, MemorySnapshot, Precision};
pub use crate::gpu::parse_bytes;
use crate::model::cnn::{CnnActs, GpuCnn};
use crate::model::gpt::{ActLayout, GpuGpt};
use crate::model::layout::{Packer, SlabLimits};
use crate::model::optim::Scratch;
use crate::reference::cnn_model::{CnnConfig, NormKind};
use crate::reference::gpt::GptConfig;

/// Bytes of one program's uniform arena slot (one per dispatch; `gpu::program`).
pub const UNIFORM_SLOT: u64 = 256;

/// A model whose memory can be predicted.
#[derive(Clone, Debug)]
pub enum ModelSpec {
    Gpt(GptConfig),
    Cnn(CnnConfig),
}

/// The memory choices of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// GPT activation checkpointing: keep block inputs only, recompute blocks in backward.
    pub checkpoint_activations: bool,
    /// Activation element type (GPT mixed precision: f16 activations and activation gradients).
    pub precision: Precision,
    /// The device's kernel family (it sets how many dispatches, hence uniform slots, a program has).
    pub kernels: MatmulVariant,
    /// The binding and buffer sizes the slabs are packed for (`layout::SlabLimits::of` the
    /// device; the default packs every slab into one buffer).
    pub limits: SlabLimits,
    /// GPT: vocabulary entries per lm_head chunk (`vocab_chunk`; 0: the whole vocabulary).
    pub vocab_chunk: usize,
    /// GPT: dropout is on (its dispatches are recorded only then).
    pub dropout: bool,
    /// Per-micro-batch gradient statistics (`grad_stats`): a copy of the gradient slab (G_{k-1},
    /// in the gradients' category), the partial sums, the table, the statistics of one
    /// micro-batch, their place in the figures readback, and the program's uniform slots.
    pub grad_stats: bool,
}

impl ModelSpec {
    pub fn num_params(&self) -> usize {
        match self {
            ModelSpec::Gpt(c) => c.num_params(),
            ModelSpec::Cnn(c) => c.num_params(),
        }
    }

    /// The parameter tensors as the slabs lay them out.
    pub fn tensor_specs(&self) -> Vec<crate::model::optim::TensorSpec> {
        match self {
            ModelSpec::Gpt(c) => crate::model::gpt::tensor_specs(c),
            ModelSpec::Cnn(c) => crate::model::cnn::tensor_specs(c),
        }
    }

    /// The statistics' tensors of `grad_stats`: the checkpoint tensors (name, host offset,
    /// elements), as `Trainer::stats_tensors` gives them.
    pub fn stat_tensors(&self) -> Vec<(String, usize, usize)> {
        let table = match self {
            ModelSpec::Gpt(c) => crate::train::checkpoint::tensor_table(c),
            ModelSpec::Cnn(c) => crate::train::cnn::tensor_table(c),
        };
        table.into_iter().map(|(n, shape, off)| (n, off, shape.iter().product())).collect()
    }

    /// The layout of the `grad_stats` reduction over the slabs packed for `limits`.
    pub fn stats_layout(&self, limits: SlabLimits) -> crate::model::optim::StatsLayout {
        let (packer, parts) = self.slab_layout(limits);
        let specs = self.tensor_specs();
        let sizes: Vec<usize> = specs.iter().map(|t| t.size).collect();
        let offsets = match self {
            ModelSpec::Gpt(c) => c.param_offsets().to_vec(),
            ModelSpec::Cnn(c) => c.param_offsets().to_vec(),
        };
        crate::model::optim::StatsLayout::new(&parts, &offsets, &sizes, packer.buffers.len(), &self.stat_tensors())
    }

    /// The layout of the parameter, gradient and AdamW slabs (each as many buffers as `limits`
    /// need) and every tensor's parts.
    pub fn slab_layout(&self, limits: SlabLimits) -> (Packer, Vec<Vec<crate::model::layout::Part>>) {
        crate::model::optim::slab_layout(&self.tensor_specs(), limits)
    }

    /// Bytes of the largest single binding at micro-batch `b` (checked against the device's max
    /// binding and buffer sizes): the largest activation tensor or parameter part; the CNN's
    /// activation slab is one buffer, so its whole size.
    pub fn largest_binding(&self, b: usize, opts: MemoryOptions) -> u64 {
        let params = self.slab_layout(opts.limits).0.largest.1;
        let acts = match self {
            ModelSpec::Gpt(c) => {
                let a = ActLayout::new(c, b, c.block_size, opts.checkpoint_activations, opts.precision, opts.limits, opts.vocab_chunk, flash(c, opts));
                a.packer.largest.1
            }
            ModelSpec::Cnn(c) => CnnActs::new(c, b).len.max(1) as u64 * 4,
        };
        acts.max(params)
    }

    /// Rows one shader invocation loops over at micro-batch `b` (Mesa's CPU adapters stop
    /// loops after 65,535 iterations): B*T for the GPT, B*H*W for the CNN.
    pub fn loop_rows(&self, b: usize) -> usize {
        match self {
            ModelSpec::Gpt(c) => b * c.block_size,
            ModelSpec::Cnn(c) => b * c.h * c.w,
        }
    }

    /// Predicted bytes per category while training at micro-batch `b` with `k` micro-batches
    /// per window (`k` sizes the per-micro-batch figures buffer). `remainder`: the CNN's short
    /// last micro-batch of an epoch (its programs are recorded once it has run); 0 for none.
    pub fn predict(&self, b: usize, k: usize, remainder: usize, opts: MemoryOptions) -> MemorySnapshot {
        // the slabs: each tensor padded to TENSOR_ALIGN, in as many buffers as the limits need
        let (slab, parts) = self.slab_layout(opts.limits);
        let slab_bytes = slab.bytes();
        let buffers = slab.buffers.len() as u64;
        let mut m = MemorySnapshot::default();
        let mut add = |c: Category, bytes: u64| m.bytes[c.index()] += bytes;
        add(Category::Parameters, slab_bytes);
        add(Category::Gradients, slab_bytes);
        add(Category::OptimizerState, 2 * slab_bytes);
        // window machinery (`optim::Slabs`): the parameters before the step, the figures, the
        // norm partials (NORM_GROUPS per slab buffer), the figures readback
        let cap = if k <= 16 { 16 } else { k.next_power_of_two() } as u64;
        let partials = crate::model::optim::partials_len(slab.buffers.len()) as u64;
        add(Category::Scratch, slab_bytes + buf(Scratch::LEN as u64 * 4) + buf(partials * 4));
        let stats = if opts.grad_stats { Some(self.stats_layout(opts.limits)) } else { None };
        let s = stats.as_ref().map_or(0, |l| l.len());
        add(Category::Scratch, buf(crate::model::optim::figures_len(cap as usize, s) as u64 * 4));
        if let Some(l) = &stats {
            // G_{k-1}: a second gradient slab; the table, the partials, one micro-batch's figures
            add(Category::Gradients, slab_bytes);
            add(Category::Scratch, buf(l.table_len() as u64 * 4) + buf(2 * l.workgroups.max(1) as u64 * 4));
            add(Category::Scratch, buf(2 * s.max(1) as u64 * 4) + l.dispatches() as u64 * UNIFORM_SLOT);
        }
        let parts = parts.iter().map(|p| p.len() as u64).sum::<u64>();
        // normalize + norm (a scale and a partial norm per buffer, one final sum), norm only,
        // unscale and clip (one per buffer), AdamW (clear the update flag, a check and a step per
        // tensor part, update = params - prev per buffer, its norm)
        for dispatches in [2 * buffers + 1, buffers + 1, buffers, buffers, 1 + 2 * parts + 3 * buffers + 1] {
            add(Category::Scratch, dispatches * UNIFORM_SLOT);
        }
        match self {
            ModelSpec::Gpt(c) => {
                add(Category::Activations, GpuGpt::predicted_activation_bytes(c, b, opts.checkpoint_activations, opts.precision, opts.limits, opts.vocab_chunk, opts.kernels));
                // the window's tokens (inputs and targets of K micro-batches) and dropout keys,
                // uploaded once
                add(Category::Activations, buf(GpuGpt::window_tokens_len(c, b, k) as u64 * 4));
                let (train, eval) = gpt_dispatches(c, b, opts);
                // and one program per vocabulary chunk for `read_logits`, a dispatch each
                add(Category::Scratch, (train + eval + vocab_chunks(c, b, opts)) * UNIFORM_SLOT);
                // CPU kernels: the transposed block weights of the input gradients
                if crate::model::gpt::uses_transposed_weights(c, opts.kernels) {
                    add(Category::Scratch, crate::model::gpt::transposed_weights_layout(c, opts.limits).0.bytes());
                }
            }
            ModelSpec::Cnn(c) => {
                add(Category::Parameters, buf(GpuCnn::running_device_len(c) as u64 * 4));
                add(Category::Activations, GpuCnn::predicted_activation_bytes(c, b));
                // the window's images and labels, uploaded once
                add(Category::Activations, buf(GpuCnn::window_inputs_len(c, b, k) as u64 * 4));
                let (train, eval) = cnn_dispatches(c);
                let sets = if remainder > 0 && remainder != b { 2 } else { 1 };
                add(Category::Scratch, sets * (train + eval) * UNIFORM_SLOT);
            }
        }
        m
    }
}

/// Whether the GPT's attention runs as flash attention with these options' kernels.
fn flash(c: &GptConfig, opts: MemoryOptions) -> bool {
    crate::model::gpt::uses_flash_attention(c, opts.kernels)
}

/// wgpu buffer size of `bytes` as `GpuBuffer::new` creates it.
fn buf(bytes: u64) -> u64 {
    bytes.max(4).next_multiple_of(4)
}

/// The lm_head's vocabulary chunks (`GpuGpt::vocab_chunks`): each part of the embedding in
/// chunks of at most `ActLayout::chunk` entries.
pub fn vocab_chunks(c: &GptConfig, b: usize, opts: MemoryOptions) -> u64 {
    let chunk = ActLayout::new(c, b, c.block_size, false, opts.precision, opts.limits, opts.vocab_chunk, flash(c, opts)).chunk;
    let parts = &ModelSpec::Gpt(*c).slab_layout(opts.limits).1[crate::model::gpt::p::WTE];
    parts.iter().map(|p| (p.len / c.n_embd).div_ceil(chunk).max(1) as u64).sum()
}

/// Dispatches of the GPT's (train, eval) programs (`model::gpt`): forward 10 per block + 5,
/// backward 19 per block + 7; checkpointing replays L-1 blocks and clears the shared
/// block gradients before each. With the CPU-adapter kernels (`gpu::kernels`) attention is
/// 3 dispatches forward and 4 backward instead of 1 and 2, and GELU rides in the MLP's
/// matmuls (one dispatch fewer each way) when the shapes allow (C and the head size multiples of 4);
/// the backward then starts by transposing each block's four weight matrices.
pub fn gpt_dispatches(c: &GptConfig, b: usize, opts: MemoryOptions) -> (u64, u64) {
    let (recompute, kernels) = (opts.checkpoint_activations, opts.kernels);
    let l = c.n_layer as u64;
    // the embedding's vocabulary ranges (one per binding-sized part) each have an encoder
    // dispatch forward and backward; the recomputed blocks' gradient fills are one range or one
    // per tensor (`ActLayout::block_fill`)
    let wte_parts = ModelSpec::Gpt(*c).slab_layout(opts.limits).1[crate::model::gpt::p::WTE].len() as u64;
    let grads = ActLayout::new(c, b, c.block_size, true, opts.precision, opts.limits, opts.vocab_chunk, flash(c, opts));
    let fills = grads.block_fill.len() as u64;
    // the attention runs once per part of whole sequences of its T x T matrices (flash
    // attention stores none and runs once: one dispatch forward, two backward, as attention.wgsl)
    let parts = if grads.flash { 1 } else { grads.preatt.first().map_or(1, |p| p.len()) as u64 };
    // the CPU kernels' shapes: the same condition the model keeps transposed weights under
    let cpu = crate::model::gpt::uses_transposed_weights(c, kernels);
    let attention_blocks = cpu && c.n_head > 0 && (c.n_embd / c.n_head) % 4 == 0;
    // two more dispatches each way for attention, one fewer each way for GELU
    let attention = if attention_blocks { 2 } else { 0 };
    // (the GPU kernels fuse GELU into the MLP's matmuls whatever the shapes)
    let fused_gelu = if cpu || kernels == MatmulVariant::GpuTiled { 1 } else { 0 };
    let transposes = if cpu { 4 } else { 0 };
    let block_forward = 10 + attention - fused_gelu + (1 + attention) * (parts - 1);
    // the lm_head and the cross-entropy per vocabulary chunk: forward a matmul and an online
    // log-sum-exp each, then one finish; backward, last chunk first, the chunk's cross-entropy
    // backward and its matmul backward (input and weight), every chunk but the last recomputing
    // its logits first
    let chunks = vocab_chunks(c, b, opts);
    // dropout: the embedding's and both projections' masks, forward and backward
    let dropout = if opts.dropout { 1 } else { 0 };
    let block_forward = block_forward + 2 * dropout;
    let train_forward = block_forward * l + wte_parts + 1 + 2 * chunks + 1 + 1 + dropout;
    let forward = train_forward - (2 * l + 1) * dropout;
    // the GPU family sums columns in two stages: one more dispatch for each of a block's two
    // LayerNorms and four biases, and for the final LayerNorm
    let two_stage = if kernels == MatmulVariant::GpuTiled { 1 } else { 0 };
    let backward = (19 + 2 * dropout + attention - fused_gelu + transposes + (2 + attention) * (parts - 1) + 6 * two_stage) * l + 2
        + wte_parts + 1 + 3 * chunks + (chunks - 1) + dropout + two_stage;
    // before every block's backward but the first, the shared block gradients are zeroed
    // (`ActLayout::block_fill` of the gradients' layout); checkpointing also replays the block
    let replay = if recompute { block_forward * l.saturating_sub(1) } else { 0 } + fills * l.saturating_sub(1);
    (train_forward + backward + replay, forward)
}

/// Dispatches of the CNN's (train, eval) programs for one row count (`model::cnn`).
pub fn cnn_dispatches(c: &CnnConfig) -> (u64, u64) {
    let forward = 11;
    let norm_backward = match c.norm {
        NormKind::Group => 2,
        NormKind::Batch => 1,
    };
    (forward + 14 + 2 * norm_backward, forward)
}

/// Activation bytes as a function of B for a plot or a table (GPT or CNN).
pub fn activation_bytes(spec: &ModelSpec, b: usize, opts: MemoryOptions) -> u64 {
    spec.predict(b, 1, 0, opts).get(Category::Activations)
}

/// What a micro-batch must fit besides a memory budget: the device's largest storage binding and
/// buffer, and (CPU adapters) the loop-iteration cap of one shader invocation.
#[derive(Clone, Copy, Debug)]
pub struct DeviceLimits {
    pub max_binding: u64,
    pub max_buffer: u64,
    pub max_loop_rows: Option<usize>,
}

/// The micro-batch and accumulation chosen for an effective batch under a budget.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    /// B: the largest micro-batch that fits.
    pub micro_batch: usize,
    /// K = ceil(E / B).
    pub accum_steps: usize,
    /// E.
    pub effective_batch: usize,
    /// Rows of the window's last micro-batch (= B when B divides E; otherwise E - (K-1)B, and
    /// that micro-batch is normalized by its real count like any other).
    pub last_micro_batch: usize,
    pub predicted: MemorySnapshot,
    pub budget: u64,
    /// What stopped B from growing: "effective batch", "memory budget", "max binding",
    /// "loop limit".
    pub limited_by: &'static str,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("effective batch must be at least 1")]
    NoEffectiveBatch,
    #[error(
        "not even micro_batch 1 fits: it needs {needed} ({why}) against {limit}. Lower the model size{hint}"
    )]
    NothingFits { needed: String, limit: String, why: &'static str, hint: &'static str },
}

/// Why micro-batch `b` does not fit, or None when it does.
fn misfit(spec: &ModelSpec, b: usize, e: usize, budget: u64, limits: &DeviceLimits, opts: MemoryOptions) -> Option<(&'static str, u64, u64)> {
    let k = e.div_ceil(b);
    let rem = e - (k - 1) * b;
    let largest = spec.largest_binding(b, opts);
    let bind = limits.max_binding.min(limits.max_buffer);
    if largest > bind {
        return Some(("max binding", largest, bind));
    }
    if let Some(max) = limits.max_loop_rows.filter(|&max| spec.loop_rows(b) > max) {
        return Some(("loop limit", spec.loop_rows(b) as u64, max as u64));
    }
    let total = spec.predict(b, k, rem, opts).total();
    if total > budget {
        return Some(("memory budget", total, budget));
    }
    None
}

/// The largest micro-batch B <= E whose predicted memory fits `budget` and whose buffers fit the
/// device, and the K that reaches E with it.
pub fn plan(spec: &ModelSpec, e: usize, budget: u64, limits: &DeviceLimits, opts: MemoryOptions) -> Result<Plan, PlanError> {
    if e == 0 {
        return Err(PlanError::NoEffectiveBatch);
    }
    // the slabs are packed for this device's binding and buffer sizes
    let opts = MemoryOptions { limits: SlabLimits::new(limits.max_binding, limits.max_buffer), ..opts };
    // memory and buffer sizes grow with B: binary search for the largest B that fits
    if let Some((why, needed, limit)) = misfit(spec, 1, e, budget, limits, opts) {
        let hint = match why {
            "memory budget" => " or raise the memory budget",
            "loop limit" => " (block_size or image size)",
            _ => "",
        };
        let (needed, limit) = if why == "loop limit" {
            (format!("{needed} rows"), format!("{limit} loop iterations"))
        } else {
            (crate::gpu::human_bytes(needed), crate::gpu::human_bytes(limit))
        };
        return Err(PlanError::NothingFits { needed, limit, why, hint });
    }
    let (mut fits, mut over) = (1usize, e + 1);
    while over - fits > 1 {
        let mid = fits + (over - fits) / 2;
        match misfit(spec, mid, e, budget, limits, opts) {
            None => fits = mid,
            Some(_) => over = mid,
        }
    }
    let stop = if fits == e { "effective batch" } else { misfit(spec, fits + 1, e, budget, limits, opts).map_or("effective batch", |m| m.0) };
    let best = Some(fits);
    let b = best.expect("b = 1 fits");
    let k = e.div_ceil(b);
    let last = e - (k - 1) * b;
    Ok(Plan {
        micro_batch: b, accum_steps: k, effective_batch: e, last_micro_batch: last,
        predicted: spec.predict(b, k, last, opts), budget, limited_by: stop,
    })
}

