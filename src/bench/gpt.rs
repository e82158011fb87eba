//! End-to-end GPT throughput: tokens/s and achieved model GFLOP/s (FLOPs counted analytically),
//! time per optimizer step split by phase, and the accumulation tax (B x K against one batch of
//! B*K with the same effective batch).

use std::time::Instant;

use crate::gpu::Gpu;
use crate::train::{TrainConfig, Trainer};

/// Model FLOPs per token of one training step (forward + backward = 3 x forward), counting
/// full (not causal-halved) attention: 24 C^2 L (the four linear layers) + 2 C V (lm_head)
/// + 4 T C L (scores and weighted sum), times 3.
pub fn flops_per_token(c: usize, l: usize, v: usize, t: usize) -> f64 {
    let fwd = 24.0 * (c * c * l) as f64 + 2.0 * (c * v) as f64 + 4.0 * (t * c * l) as f64;
    3.0 * fwd
}

/// Sum a per-dispatch profile by entry point, largest first (empty without timestamps).
pub fn by_kernel(profile: Option<Vec<(String, f64)>>) -> Vec<(String, f64)> {
    let mut kernels: Vec<(String, f64)> = Vec::new();
    for (name, secs) in profile.unwrap_or_default() {
        match kernels.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 += secs,
            None => kernels.push((name, secs)),
        }
    }
    kernels.sort_by(|a, b| b.1.total_cmp(&a.1));
    kernels
}

/// The shape of a measured GPT (for comparisons with other frameworks on the same shape).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct GptShape {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub vocab_size: usize,
    pub params: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GptBench {
    pub model: GptShape,
    pub micro_batch: usize,
    pub accum_steps: usize,
    pub steps: usize,
    /// From the median step time.
    pub tokens_per_s: f64,
    pub gflops: f64,
    /// The median of the timed steps.
    pub seconds_per_step: f64,
    /// Every timed step, in order.
    pub step_seconds: Vec<f64>,
    /// Per optimizer step: forward, backward, accumulate, clip (normalize + norm + clip), optimizer.
    pub phases: Phases,
    /// Device time per kernel entry point for one micro-batch (timestamp queries), largest first.
    pub kernels: Vec<(String, f64)>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Phases {
    pub forward: f64,
    pub backward: f64,
    /// Gradients accumulate with `+=` inside the backward kernels: no separate pass.
    pub accumulate: f64,
    pub clip: f64,
    pub optimizer: f64,
}

/// The median of `xs` (0 for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// One GPT configuration under measurement: a trainer at B x K after its warm-up steps, and
/// the wall time of each timed optimizer step.
pub struct GptRun {
    trainer: Trainer,
    b: usize,
    k: usize,
    step_seconds: Vec<f64>,
}

impl GptRun {
    pub fn new(gpu: &Gpu, base: &TrainConfig, b: usize, k: usize, warmup: usize) -> anyhow::Result<Self> {
        let cfg = TrainConfig { micro_batch: b, accum_steps: k, effective_batch: 0, max_steps: usize::MAX, ..base.clone() };
        let mut trainer = Trainer::new(gpu, cfg)?;
        for _ in 0..warmup {
            trainer.train_step()?;
        }
        Ok(Self { trainer, b, k, step_seconds: Vec::new() })
    }

    /// Train and time one optimizer step.
    pub fn step(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        self.trainer.train_step()?;
        self.step_seconds.push(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// The trainer under measurement.
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Wall seconds of each timed step so far.
    pub fn step_seconds(&self) -> &[f64] {
        &self.step_seconds
    }

    /// (seconds per step, tokens/s, model GFLOP/s) from the median timed step, without the
    /// phase and kernel timings of `finish` (which rerun programs: long for large models).
    pub fn figures(&self) -> anyhow::Result<(f64, f64, f64)> {
        let t = &self.trainer;
        let secs = median(&self.step_seconds);
        let tokens = (self.b * self.k * t.cfg.block_size) as f64;
        let g = t.gpt().ok_or_else(|| anyhow::anyhow!("the GPT benchmark needs the GPT"))?.gcfg;
        let flops = tokens * flops_per_token(g.n_embd, g.n_layer, g.vocab_size, g.block_size);
        Ok((secs, tokens / secs, flops / secs / 1e9))
    }

    /// Figures from the median step time, then the phase and kernel timings.
    pub fn finish(mut self) -> anyhow::Result<GptBench> {
        let (b, k) = (self.b, self.k);
        let t = &mut self.trainer;
        let secs = median(&self.step_seconds);
        let tokens = (b * k * t.cfg.block_size) as f64;
        let g = t.gpt().ok_or_else(|| anyhow::anyhow!("the GPT benchmark needs the GPT"))?.gcfg;
        let flops = tokens * flops_per_token(g.n_embd, g.n_layer, g.vocab_size, g.block_size);
        // phases, timed program by program with waits
        let reps = 3;
        let (fwd, train) = t.model.time_micro_programs(reps)?;
        let (norm, clip, adamw) = t.model.slabs_mut().time_step_programs(reps)?;
        let kernels = by_kernel(t.model.profile_micro_batch()?);
        let model = GptShape {
            n_layer: g.n_layer, n_head: g.n_head, n_embd: g.n_embd, block_size: g.block_size, vocab_size: g.vocab_size,
            params: g.num_params(),
        };
        Ok(GptBench {
            model,
            micro_batch: b,
            accum_steps: k,
            steps: self.step_seconds.len(),
            tokens_per_s: tokens / secs,
            gflops: flops / secs / 1e9,
            seconds_per_step: secs,
            step_seconds: self.step_seconds,
            phases: Phases {
                forward: fwd * k as f64,
                backward: (train - fwd).max(0.0) * k as f64,
                accumulate: 0.0,
                clip: norm + clip,
                optimizer: adamw,
            },
            kernels,
        })
    }
}

/// Train `steps` optimizer steps of the GPT of `base` at B x K after `warmup` steps.
pub fn bench_gpt(gpu: &Gpu, base: &TrainConfig, b: usize, k: usize, warmup: usize, steps: usize) -> anyhow::Result<GptBench> {
    let mut run = GptRun::new(gpu, base, b, k, warmup)?;
    for _ in 0..steps {
        run.step()?;
    }
    run.finish()
}

/// Several configurations measured together: their steps alternate, so a slower or faster
/// spell of the machine falls on all of them alike (the accumulation tax compares two of them).
pub fn bench_gpt_interleaved(
    gpu: &Gpu, base: &TrainConfig, configs: &[(usize, usize)], warmup: usize, steps: usize,
) -> anyhow::Result<Vec<GptBench>> {
    let mut runs = configs.iter().map(|&(b, k)| GptRun::new(gpu, base, b, k, warmup)).collect::<anyhow::Result<Vec<_>>>()?;
    for _ in 0..steps {
        for r in runs.iter_mut() {
            r.step()?;
        }
    }
    runs.into_iter().map(GptRun::finish).collect()
}

/// Model FLOPs per image of one CNN training step (3 x forward): the two convolutions and the
/// linear layer (2 multiply-adds per weight use); norms, ReLU and pooling are not counted.
pub fn cnn_flops_per_image(c: &crate::reference::cnn_model::CnnConfig) -> f64 {
    let (h, w) = (c.h, c.w);
    let conv1 = 2.0 * (h * w * c.c1 * 9) as f64;
    let conv2 = 2.0 * ((h / 2) * (w / 2) * c.c2 * c.c1 * 9) as f64;
    let fc = 2.0 * (c.features() * c.classes) as f64;
    3.0 * (conv1 + conv2 + fc)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CnnBench {
    pub micro_batch: usize,
    pub accum_steps: usize,
    pub steps: usize,
    /// From the median step time.
    pub images_per_s: f64,
    pub gflops: f64,
    /// The median of the timed steps.
    pub seconds_per_step: f64,
    pub step_seconds: Vec<f64>,
    /// Device time per kernel entry point for one micro-batch, largest first.
    pub kernels: Vec<(String, f64)>,
}

/// Train `steps` CNN steps at B x K after `warmup` steps (MNIST unless `base` says otherwise).
pub fn bench_cnn(gpu: &Gpu, base: &TrainConfig, b: usize, k: usize, warmup: usize, steps: usize) -> anyhow::Result<CnnBench> {
    let cfg = TrainConfig { micro_batch: b, accum_steps: k, effective_batch: 0, ..base.clone() };
    let mut t = Trainer::new(gpu, cfg)?;
    for _ in 0..warmup {
        t.train_step()?;
    }
    let mut step_seconds = Vec::with_capacity(steps);
    let mut images = Vec::with_capacity(steps);
    for _ in 0..steps {
        let start = Instant::now();
        images.push(t.train_step()?.0.items);
        step_seconds.push(start.elapsed().as_secs_f64());
    }
    // images of a full step (a short last window of an epoch has fewer)
    let per_step = images.iter().copied().fold(0.0, f64::max);
    let secs = median(&step_seconds);
    let kernels = by_kernel(t.model.profile_micro_batch()?);
    let ccfg = t.cnn().ok_or_else(|| anyhow::anyhow!("the CNN benchmark needs --model cnn"))?.ccfg;
    Ok(CnnBench {
        micro_batch: b,
        accum_steps: k,
        steps,
        images_per_s: per_step / secs,
        gflops: per_step * cnn_flops_per_image(&ccfg) / secs / 1e9,
        seconds_per_step: secs,
        step_seconds,
        kernels,
    })
}

/// The cost of `grad_stats`: the same model at the same B x K with the statistics off and on,
/// trained side by side, their steps alternating (off, on, on, off, ... so a drift of the machine
/// falls on both alike), compared by their median step times.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GradStatsBench {
    /// "gpt" or "cnn".
    pub model: String,
    pub micro_batch: usize,
    pub accum_steps: usize,
    pub steps: usize,
    pub seconds_off: f64,
    pub seconds_on: f64,
    /// seconds_on / seconds_off.
    pub ratio: f64,
    /// The median of each alternating pair's on / off (less sensitive to the machine's drift).
    pub paired_ratio: f64,
    pub step_seconds_off: Vec<f64>,
    pub step_seconds_on: Vec<f64>,
    /// Device bytes the statistics add (the ledger, on minus off).
    pub extra_bytes: u64,
    /// One micro-batch's statistics pass alone and its train program alone (seconds, each
    /// averaged over waited submissions): K passes against the step time are the cost the
    /// step times measure, without the noise of a busy machine.
    pub pass_seconds: f64,
    pub micro_train_seconds: f64,
    /// K statistics passes against the median step with the statistics off: the cost the step
    /// times measure, from the pass alone.
    pub pass_share: f64,
}

/// Measure `grad_stats` off against on for the model of `base` at its B x K.
pub fn bench_grad_stats(gpu: &Gpu, base: &TrainConfig, warmup: usize, steps: usize) -> anyhow::Result<GradStatsBench> {
    let cfg = |on: bool| TrainConfig { grad_stats: on, max_steps: usize::MAX, ..base.clone() };
    // each trainer's bytes after its warm-up (the first step records the step programs)
    let before = gpu.ledger.snapshot().total();
    let mut off = Trainer::new(gpu, cfg(false))?;
    for _ in 0..warmup.max(1) {
        off.train_step()?;
    }
    let mid = gpu.ledger.snapshot().total();
    let mut on = Trainer::new(gpu, cfg(true))?;
    for _ in 0..warmup.max(1) {
        on.train_step()?;
    }
    let extra_bytes = (gpu.ledger.snapshot().total() - mid).saturating_sub(mid - before);
    let (mut s_off, mut s_on) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    let time = |t: &mut Trainer, into: &mut Vec<f64>| -> anyhow::Result<()> {
        let start = Instant::now();
        t.train_step()?;
        into.push(start.elapsed().as_secs_f64());
        Ok(())
    };
    for i in 0..steps {
        if i % 2 == 0 {
            time(&mut off, &mut s_off)?;
            time(&mut on, &mut s_on)?;
        } else {
            time(&mut on, &mut s_on)?;
            time(&mut off, &mut s_off)?;
        }
    }
    let (a, b) = (median(&s_off), median(&s_on));
    let reps = 5;
    let pass_seconds = on.model.slabs().time_grad_stats(reps)?.unwrap_or(0.0);
    let micro_train_seconds = on.model.time_micro_programs(reps)?.1;
    Ok(GradStatsBench {
        model: if off.gpt().is_some() { "gpt" } else { "cnn" }.into(),
        micro_batch: base.micro_batch,
        accum_steps: base.windows_micro_batches(),
        steps,
        seconds_off: a,
        seconds_on: b,
        ratio: b / a.max(1e-12),
        paired_ratio: median(&s_on.iter().zip(&s_off).map(|(x, y)| x / y.max(1e-12)).collect::<Vec<_>>()),
        pass_share: base.windows_micro_batches() as f64 * pass_seconds / a.max(1e-12),
        step_seconds_off: s_off,
        step_seconds_on: s_on,
        extra_bytes,
        pass_seconds,
        micro_train_seconds,
    })
}
