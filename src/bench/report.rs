//! `gradscope bench`'s report: the JSON document and the lines of its table, one function per
//! kind of measurement (the command line prints each as soon as it is measured).

use super::gpt::{CnnBench, GptBench, GradStatsBench};
use super::matmul::MatmulResult;
use super::peak::Peak;
use crate::gpu::human_bytes;

/// Everything one `bench` run measured (`--json` prints it).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchReport {
    pub adapter: String,
    /// The device's kernel set (`cpu` or `gpu`, see `gpu::kernel_set`).
    pub kernels: String,
    /// How the GPU family's matmuls pick their block tile on this device (`gpu::TilePolicy`).
    pub matmul_tiles: String,
    /// The adapter's FP32 peak, when known (table of known GPUs or `--peak-tflops`).
    pub fp32_peak: Option<Peak>,
    pub matmul: Vec<MatmulResult>,
    /// The fastest matmul measured: what the end-to-end figures are compared with.
    pub matmul_ceiling_gflops: f64,
    /// B x K, then the same effective batch as one micro-batch (the accumulation tax).
    pub gpt: Vec<GptBench>,
    pub gpt_checkpointed: Option<GptBench>,
    pub gpt_f16: Option<GptBench>,
    /// B 16 x K 4, then B 64 x K 1.
    pub cnn: Vec<CnnBench>,
    /// GPT-2 small's shape (12 layers, 12 heads, 768, block 1024, vocabulary 50,257).
    pub gpt2_small: Option<GptBench>,
    /// The cost of `grad_stats` (off against on, alternating steps): the GPT at B x K, the CNN
    /// at B 16 x K 4.
    pub grad_stats: Vec<GradStatsBench>,
}

impl BenchReport {
    /// The fastest matmul measured so far.
    pub fn ceiling(&self) -> f64 {
        self.matmul.iter().map(|r| r.gflops).fold(0.0, f64::max)
    }
}

/// The adapter, its kernel set and its FP32 peak.
pub fn header_line(rep: &BenchReport) -> String {
    let peak = match &rep.fp32_peak {
        Some(p) => format!("FP32 peak {:.1} TFLOP/s ({})", p.tflops, p.source),
        None => "FP32 peak unknown (--peak-tflops to give it)".into(),
    };
    let tiles = if rep.kernels == "gpu" { format!(", matmul tiles {}", rep.matmul_tiles) } else { String::new() };
    format!("adapter {} ({} kernels{tiles}), {peak}", rep.adapter, rep.kernels)
}

/// One matmul measurement; `*` marks the variant the device's kernel set runs.
pub fn matmul_line(r: &MatmulResult) -> String {
    let peak = r.percent_of_peak.map_or(String::new(), |p| format!("  {p:>5.1}% of peak"));
    let mark = if r.selected { "*" } else { " " };
    format!(
        "matmul {:>16}{mark} {:>5}^3  {:>9.2} GFLOP/s  {:>9.2} ms  max rel err {:.1e}{peak}",
        r.variant, r.size, r.gflops, r.ms_per_matmul, r.max_rel_err
    )
}

/// Throughput, the phases of a step and the largest kernels of one micro-batch.
pub fn gpt_lines(r: &GptBench, ceiling: f64) -> String {
    let p = &r.phases;
    let mut s = format!(
        "gpt {} B {:>3} x K {:>2}: {:>7.0} tokens/s  {:>6.2} GFLOP/s ({:.0}% of the matmul ceiling {:.2})  {:.3} s/step\n",
        shape(r), r.micro_batch, r.accum_steps, r.tokens_per_s, r.gflops, 100.0 * r.gflops / ceiling.max(1e-9), ceiling, r.seconds_per_step
    );
    s += &format!(
        "    per step: forward {:.3} s, backward {:.3} s, accumulate {:.3} s (fused: += in backward), clip {:.4} s, optimizer {:.4} s",
        p.forward, p.backward, p.accumulate, p.clip, p.optimizer
    );
    if !r.kernels.is_empty() {
        let total: f64 = r.kernels.iter().map(|k| k.1).sum();
        s += &format!("\n    kernels of one micro-batch (timestamp queries, {total:.3} s):");
        for (name, t) in r.kernels.iter().take(8) {
            s += &format!("\n      {name:<32} {:>8.2} ms  {:>5.1}%", t * 1e3, 100.0 * t / total);
        }
    }
    s
}

/// "L2 H4 C128 T64 V65": the GPT's layers, heads, channels, block size and vocabulary.
pub fn shape(r: &GptBench) -> String {
    let m = &r.model;
    format!("L{} H{} C{} T{} V{}", m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size)
}

/// The accumulation tax: B x K against the same effective batch in one micro-batch.
pub fn gpt_tax_line(accumulated: &GptBench, true_batch: &GptBench) -> String {
    format!(
        "accumulation tax: B {} x K {} takes {:.3}x the time of B {} x K 1 per effective batch",
        accumulated.micro_batch, accumulated.accum_steps, accumulated.seconds_per_step / true_batch.seconds_per_step, true_batch.micro_batch
    )
}

/// A variant of the B x K run (activation checkpointing, mixed precision): its speed against the
/// plain run and its activation bytes before -> after.
pub fn gpt_variant_line(what: &str, r: &GptBench, plain: &GptBench, activations: (u64, u64)) -> String {
    format!(
        "{what}, B {} x K {}: {:.0} tokens/s, {:.3}x the time per step; activations {} -> {}",
        r.micro_batch, r.accum_steps, r.tokens_per_s, r.seconds_per_step / plain.seconds_per_step,
        human_bytes(activations.0), human_bytes(activations.1)
    )
}

/// Throughput and the largest kernels of one micro-batch.
pub fn cnn_lines(r: &CnnBench, ceiling: f64) -> String {
    let mut s = format!(
        "cnn B {:>3} x K {:>2}: {:>7.0} images/s  {:>6.2} GFLOP/s ({:.0}% of the matmul ceiling)  {:.3} s/step",
        r.micro_batch, r.accum_steps, r.images_per_s, r.gflops, 100.0 * r.gflops / ceiling.max(1e-9), r.seconds_per_step
    );
    for (name, t) in r.kernels.iter().take(5) {
        s += &format!("\n      {name:<32} {:>8.2} ms", t * 1e3);
    }
    s
}

pub fn cnn_tax_line(accumulated: &CnnBench, true_batch: &CnnBench) -> String {
    format!(
        "accumulation tax (cnn): B {} x K {} takes {:.3}x the time of B {} x K 1",
        accumulated.micro_batch, accumulated.accum_steps, accumulated.seconds_per_step / true_batch.seconds_per_step, true_batch.micro_batch
    )
}

/// The time and memory `grad_stats` costs.
pub fn grad_stats_line(r: &GradStatsBench) -> String {
    format!(
        "gradient statistics (grad_stats), {} B {} x K {}: {:.3}x the time per step ({:.4} s on, {:.4} s off: medians of {} \
         alternating steps; median pair {:.3}x); the pass alone {:.3} ms per micro-batch ({:.2}% of its train program), \
         K passes {:.2}% of a step; +{} of device memory",
        r.model, r.micro_batch, r.accum_steps, r.ratio, r.seconds_on, r.seconds_off, r.steps, r.paired_ratio,
        r.pass_seconds * 1e3, 100.0 * r.pass_seconds / r.micro_train_seconds.max(1e-12), 100.0 * r.pass_share,
        human_bytes(r.extra_bytes)
    )
}
