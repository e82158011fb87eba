//! Choosing B and K under a memory budget (`gradscope plan`, `train --memory-budget`): the
//! device's limits plus the memory model of `model::memory`.

use crate::gpu::{DeviceKind, Gpu};
use crate::model::memory::{DeviceLimits, MemoryOptions, ModelSpec, Plan, parse_bytes, plan};

use super::config::TrainConfig;
use super::model::CPU_ADAPTER_MAX_LOOP;

/// The limits a micro-batch must fit on `gpu`.
pub fn device_limits(gpu: &Gpu) -> DeviceLimits {
    DeviceLimits {
        max_binding: gpu.binding_limit(),
        max_buffer: gpu.limits().max_buffer_size,
        max_loop_rows: (gpu.kind == DeviceKind::Cpu).then_some(CPU_ADAPTER_MAX_LOOP),
    }
}

/// The memory options a config asks for on `gpu` (its kernel family and slab limits).
pub fn memory_options(cfg: &TrainConfig, gpu: &Gpu) -> MemoryOptions {
    MemoryOptions {
        checkpoint_activations: cfg.checkpoint_activations,
        precision: cfg.precision,
        kernels: gpu.kernels().matmul(),
        limits: crate::model::layout::SlabLimits::of(gpu),
        vocab_chunk: cfg.vocab_chunk,
        dropout: cfg.dropout > 0.0,
        grad_stats: cfg.grad_stats,
    }
}

/// With `memory_budget` set: plan B and K for the config's effective batch (E, or B*K when E is
/// 0) and write them into the config (micro_batch = B, effective_batch = E). Without: None.
pub fn apply_memory_budget(gpu: &Gpu, cfg: &mut TrainConfig, spec: &ModelSpec) -> anyhow::Result<Option<Plan>> {
    if cfg.memory_budget.is_empty() {
        return Ok(None);
    }
    let budget = parse_bytes(&cfg.memory_budget).map_err(|e| anyhow::anyhow!("memory_budget: {e}"))?;
    let e = cfg.effective();
    let p = plan(spec, e, budget, &device_limits(gpu), memory_options(cfg, gpu))?;
    cfg.micro_batch = p.micro_batch;
    cfg.effective_batch = e;
    cfg.accum_steps = p.accum_steps;
    Ok(Some(p))
}

/// The model a config describes, with the data-dependent sizes (vocabulary, image size) read
/// from its data set.
/// The GPT's vocabulary: `vocab_size`, or the data's when it is 0; never smaller than the data's.
pub fn model_vocab(cfg: &TrainConfig, data_vocab: usize) -> anyhow::Result<usize> {
    match cfg.vocab_size {
        0 => Ok(data_vocab),
        v if v < data_vocab => anyhow::bail!("vocab_size = {v} is smaller than the {data_vocab} tokens of the data {}", cfg.data),
        v => Ok(v),
    }
}

pub fn model_spec(cfg: &TrainConfig) -> anyhow::Result<ModelSpec> {
    use super::config::ModelKind;
    Ok(match cfg.model {
        ModelKind::Gpt => {
            let data = crate::data::text::TextData::open(std::path::Path::new(&cfg.data), cfg.tokenizer, cfg.vocab_size)?;
            ModelSpec::Gpt(crate::reference::gpt::GptConfig {
                vocab_size: model_vocab(cfg, data.vocab_size())?,
                block_size: cfg.block_size,
                n_layer: cfg.n_layer,
                n_head: cfg.n_head,
                n_embd: cfg.n_embd,
            })
        }
        ModelKind::Cnn => {
            let data = crate::data::images::ImageData::built_in(cfg.dataset)?;
            let classes = data.train.classes.max(data.test.classes);
            ModelSpec::Cnn(crate::reference::cnn_model::CnnConfig::new(data.train.h, data.train.w, classes, cfg.norm))
        }
    })
}
