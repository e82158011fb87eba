//! `gradscope train`: headless training of any model (the GPT, or the CNN with `--model cnn`)
//! through the one trainer, its events rendered as a progress bar on a terminal or as plain
//! lines elsewhere, and as the metrics files; checkpoints and interrupts are the trainer's.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gradscope::gpu::{AdapterChoice, Category};
use gradscope::train::metrics::MetricsWriter;
use gradscope::train::model::Evaluation;
use gradscope::train::run_dir::{RunDir, Start};
use gradscope::train::{Derived, Event, RunOutcome, TrainConfig, Trainer};

use super::out::{Progress, outln};
use super::{ConfigFlags, EXIT_INTERRUPTED, EXIT_OK, device};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Continue from a checkpoint (its config, weights, AdamW state, step and sampler); config
    /// keys given as flags override its config.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar: plain progress lines, as when stdout is not a terminal.
    #[arg(long)]
    quiet: bool,
    /// Replace the checkpoints and metrics of an earlier run in out_dir (without it a fresh run
    /// refuses a directory that holds them).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    config: ConfigFlags,
}

pub fn run(choice: &AdapterChoice, args: TrainArgs) -> anyhow::Result<i32> {
    train(choice, args.config, args.resume, args.quiet, args.overwrite)
}

/// The line `train` prints when B was chosen under a memory budget.
fn print_plan(bar: &Progress, plan: Option<&gradscope::model::memory::Plan>) {
    if let Some(p) = plan {
        bar.line(format_args!(
            "memory budget    {}: B = {} is the largest micro-batch that fits (limited by {}), K = {}, predicted {}",
            gradscope::gpu::human_bytes(p.budget), p.micro_batch, p.limited_by, p.accum_steps,
            gradscope::gpu::human_bytes(p.predicted.total())
        ));
    }
}

/// What the run prints at its start (derived numbers first, nanoGPT style).
fn print_start(bar: &Progress, d: &Derived, config: &TrainConfig) {
    let unit = d.model.unit;
    // samples are sequences of tokens, or images
    let (samples, per_mb, per_step) = match unit {
        "tokens" => ("sequences", format!(" = {} tokens", d.items_per_micro_batch), format!(" = {} tokens", d.items_per_step)),
        _ => (unit, String::new(), String::new()),
    };
    bar.line(format_args!("adapter          {}", d.adapter));
    bar.line(format_args!("model            {}, {} parameters", d.model.description, d.params));
    bar.line(format_args!("vocabulary       {} {}", d.vocab_size, d.model.classes_word));
    bar.line(format_args!("data             {}", d.model.data));
    bar.line(format_args!("micro-batch      B = {} {samples}{per_mb}", d.micro_batch));
    bar.line(format_args!(
        "window           K = {} micro-batches, E = {} {samples}{per_step} per step; {} steps",
        d.micro_batches_per_window, d.effective_batch, d.max_steps
    ));
    print_plan(bar, d.plan.as_ref());
    if config.checkpoint_activations {
        bar.line("activations      checkpointed: block inputs kept, blocks recomputed in backward");
    }
    if let Some(n) = &d.notice {
        bar.line(format_args!("notice           {n}"));
    }
    if d.precision == gradscope::gpu::Precision::F16 {
        bar.line("precision        mixed: f16 activations and activation gradients; f32 weights, gradients and AdamW state; dynamic loss scaling");
    }
    bar.line(format_args!("device memory (byte ledger):\n{}", d.memory));
}

/// An evaluation line: validation loss, or test accuracy and loss for a classifier (after each
/// epoch for models that train in epochs).
fn eval_line(step: usize, epoch: Option<u64>, e: &Evaluation) -> String {
    let figures = match e.accuracy {
        Some(a) => format!("test accuracy {:.2}%  test loss {:.4}", 100.0 * a, e.loss),
        None => format!("validation loss {:.4}", e.loss),
    };
    match epoch {
        Some(n) => format!("epoch {n:>3}  {figures}  (step {step}, {} held-out items)", e.items),
        None => format!("step {step:>5}  {figures}"),
    }
}

/// Train any model: the trainer's events rendered as progress (a bar on a terminal, plain lines
/// elsewhere) and as the metrics files.
fn train(choice: &AdapterChoice, flags: ConfigFlags, resume: Option<PathBuf>, quiet: bool, overwrite: bool) -> anyhow::Result<i32> {
    let gpu = device(choice)?;
    // the run owns its out_dir from before the model is built until it ends
    let (t, dir) = match &resume {
        Some(ck) => {
            anyhow::ensure!(flags.file.is_none(), "--resume takes its config from the checkpoint; pass overrides instead");
            anyhow::ensure!(!overwrite, "--overwrite is for a fresh run; --resume continues the checkpoint's run");
            let t = Trainer::resume(&gpu, ck, &flags.overrides())?;
            let dir = RunDir::claim(Path::new(&t.cfg.out_dir), Start::Resume)?;
            (t, dir)
        }
        None => {
            let cfg = flags.load()?;
            let dir = RunDir::claim(Path::new(&cfg.out_dir), Start::Fresh { overwrite })?;
            let t = Trainer::new(&gpu, cfg)?;
            if overwrite {
                dir.clear_previous()?;
            }
            (t, dir)
        }
    };
    let mut t = t;
    let out = dir.path.clone();
    let mut metrics = MetricsWriter::create(&out, resume.is_some().then_some(t.step))
        .with_context(|| format!("cannot write metrics in {}", out.display()))?;
    let bar = Progress::new(t.cfg.max_steps as u64, quiet).at(t.step as u64);
    let started = std::time::Instant::now();
    let first_step = t.step;
    // Ctrl-C and SIGTERM finish the current window, save a checkpoint and exit with code 3.
    static INTERRUPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    ctrlc::set_handler(|| INTERRUPT.store(true, std::sync::atomic::Ordering::SeqCst))
        .context("cannot install the Ctrl-C/SIGTERM handler")?;
    // a closed stdout (`train | head`) stops the run the same way, with a checkpoint
    super::out::on_closed_pipe(|| INTERRUPT.store(true, std::sync::atomic::Ordering::SeqCst));
    let unit = t.model.unit();
    let outcome = t.run(Some(&INTERRUPT), &mut |ev| {
        metrics.on_event(ev).with_context(|| format!("cannot write metrics in {}", out.display()))?;
        match ev {
            Event::Started { derived, config } => print_start(&bar, derived, config),
            Event::Step(r) => {
                let m = &r.metrics;
                let scale = m.loss_scale.map_or(String::new(), |s| format!("  scale {s}"));
                let skipped = if m.skipped { " (skipped)" } else { "" };
                let clipped = if m.clipped { " (clipped)" } else { "" };
                let sample = if unit == "tokens" { "seq" } else { "img" };
                let noise = m.b_simple.map_or(String::new(), |b| format!("  B_simple~{} {sample}", gradscope::model::grad_stats::approx(b)));
                bar.set_message(format!(
                    "loss {:.4}  lr {:.2e}  {:.0} {unit}/s  |g| {:.3}{clipped}{scale}{noise}{skipped}",
                    m.train_loss, m.lr, m.per_s(), m.grad_norm
                ));
                bar.set_position(m.step as u64);
            }
            Event::Eval { step, epoch, eval } => bar.line(eval_line(*step, *epoch, eval)),
            Event::Checkpoint { step, path } => bar.line(format_args!("step {step:>5}  saved {}", path.display())),
            Event::Finished { .. } => bar.finish(),
            _ => {}
        }
        Ok(())
    })?;
    let eval = match outcome {
        RunOutcome::Finished { eval } => eval,
        RunOutcome::Interrupted { step, checkpoint } => {
            bar.abandon();
            let why = if super::out::pipe_closed() { "stdout was closed" } else { "interrupted" };
            eprintln!(
                "{why} at step {step}: saved {} and flushed the metrics; continue with\n  gradscope train --resume {}",
                checkpoint.display(), checkpoint.display()
            );
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let items = (t.step - first_step) as f64 * t.derived().items_per_step as f64;
    let what = match eval.accuracy {
        Some(a) => format!("test accuracy {:.2}%, test loss {:.4}", 100.0 * a, eval.loss),
        None => format!("validation loss {:.4}", eval.loss),
    };
    outln!("done: step {}, {what}, {:.0} {unit}/s overall", t.step, items / secs.max(1e-9));
    outln!("checkpoint {}  metrics {}/metrics.{{jsonl,csv}}", out.join("ckpt.safetensors").display(), out.display());
    let mem = gpu.ledger.snapshot();
    outln!("device memory at end: {} parameters, {} activations", gradscope::gpu::human_bytes(mem.get(Category::Parameters)), gradscope::gpu::human_bytes(mem.get(Category::Activations)));
    Ok(EXIT_OK)
}
