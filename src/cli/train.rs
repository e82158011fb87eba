//! `gradscope train`: headless training of the GPT (or the CNN with `--model cnn`), rendered as
//! a progress bar on a terminal or as plain lines elsewhere, with metrics files and checkpoints.

use std::path::PathBuf;

use anyhow::Context;
use gradscope::gpu::{AdapterChoice, Category, Gpu};
use gradscope::train::metrics::MetricsWriter;
use gradscope::train::{Event, RunOutcome, TrainConfig, Trainer};

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
    #[command(flatten)]
    config: ConfigFlags,
}

pub fn run(choice: &AdapterChoice, args: TrainArgs) -> anyhow::Result<i32> {
    train(choice, args.config, args.resume, args.quiet)
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

/// `gradscope train --model cnn`: epochs over the images, test accuracy after each epoch.
fn train_cnn(gpu: &Gpu, cfg: TrainConfig, quiet: bool) -> anyhow::Result<i32> {
    let mut t = gradscope::train::cnn::CnnTrainer::new(gpu, cfg)?;
    let out = PathBuf::from(&t.cfg.out_dir);
    let mut metrics = MetricsWriter::create(&out, false).with_context(|| format!("cannot write metrics in {}", out.display()))?;
    let e = t.cfg.effective();
    let total = (t.cfg.epochs * t.steps_per_epoch) as u64;
    let bar = Progress::new(total, quiet);
    bar.line(format_args!("adapter          {} ({:?} kernels)", gpu.summary.name, gpu.kind));
    bar.line(format_args!("model            CNN ({:?} norm), {} parameters", t.ccfg.norm, t.ccfg.num_params()));
    bar.line(format_args!("data             {:?}: {} training images {}x{}, {} test images", t.cfg.dataset, t.data.train.n, t.data.train.h, t.data.train.w, t.data.test.n));
    bar.line(format_args!("window           B = {} x K = {} = E {} images; {} steps per epoch (the last window has {} images)",
        t.cfg.micro_batch, t.cfg.accum_steps, e, t.steps_per_epoch, t.data.train.n - (t.steps_per_epoch - 1) * e));
    print_plan(&bar, t.plan.as_ref());
    bar.line(format_args!("device memory (byte ledger):\n{}", gpu.ledger.snapshot()));
    let started = std::time::Instant::now();
    let mut images = 0.0;
    for epoch in 1..=t.cfg.epochs {
        for _ in 0..t.steps_per_epoch {
            let (m, _) = t.train_step()?;
            images += m.tokens;
            bar.set_message(format!("epoch {epoch} loss {:.4}  {:.0} images/s", m.train_loss, m.tokens_per_s));
            bar.set_position(t.step as u64);
            metrics.write(&m)?;
        }
        let ev = t.test()?;
        bar.line(format_args!("epoch {epoch:>3}  test accuracy {:.2}%  test loss {:.4}  ({:.0} training images/s so far)",
            100.0 * ev.accuracy, ev.loss, images / started.elapsed().as_secs_f64()));
        metrics.flush()?;
    }
    bar.finish();
    let ck = out.join("ckpt.safetensors");
    t.save(&ck)?;
    outln!("done: step {}, {:.0} training images/s overall; checkpoint {}", t.step, images / started.elapsed().as_secs_f64(), ck.display());
    Ok(EXIT_OK)
}

fn train(choice: &AdapterChoice, flags: ConfigFlags, resume: Option<PathBuf>, quiet: bool) -> anyhow::Result<i32> {
    let gpu = device(choice)?;
    let mut t = match &resume {
        Some(ck) => {
            anyhow::ensure!(flags.file.is_none(), "--resume takes its config from the checkpoint; pass overrides instead");
            Trainer::resume(&gpu, ck, &flags.overrides())?
        }
        None => {
            let cfg = flags.load()?;
            if cfg.model == gradscope::train::config::ModelKind::Cnn {
                return train_cnn(&gpu, cfg, quiet);
            }
            Trainer::new(&gpu, cfg)?
        }
    };
    let out = PathBuf::from(&t.cfg.out_dir);
    let mut metrics = MetricsWriter::create(&out, resume.is_some())
        .with_context(|| format!("cannot write metrics in {}", out.display()))?;
    let total = t.cfg.max_steps as u64;
    let bar = Progress::new(total, quiet).at(t.step as u64);
    let started = std::time::Instant::now();
    let first_step = t.step;
    // Ctrl-C and SIGTERM finish the current window, save a checkpoint and exit with code 3.
    static INTERRUPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    ctrlc::set_handler(|| INTERRUPT.store(true, std::sync::atomic::Ordering::SeqCst))
        .context("cannot install the Ctrl-C/SIGTERM handler")?;
    let (plan, checkpointing) = (t.plan.clone(), t.cfg.checkpoint_activations);
    let outcome = t.run(Some(&mut metrics), Some(&INTERRUPT), &mut |ev| match ev {
        Event::Started(d) => {
            bar.line(format_args!("adapter          {}", d.adapter));
            bar.line(format_args!("parameters       {}", d.params));
            bar.line(format_args!("vocabulary       {} characters", d.vocab_size));
            bar.line(format_args!("micro-batch      B = {} sequences = {} tokens", d.micro_batch, d.tokens_per_micro_batch));
            bar.line(format_args!("window           K = {} micro-batches, E = {} sequences = {} tokens per step", d.micro_batches_per_window, d.effective_batch, d.tokens_per_step));
            bar.line(format_args!("data             {} train tokens, {} validation tokens", d.train_tokens, d.val_tokens));
            print_plan(&bar, plan.as_ref());
            if checkpointing {
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
        Event::Step(m) => {
            let scale = m.loss_scale.map_or(String::new(), |s| format!("  scale {s}"));
            let skipped = if m.skipped { " (skipped)" } else { "" };
            bar.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tok/s  |g| {:.3}{}{scale}{skipped}", m.train_loss, m.lr, m.tokens_per_s, m.grad_norm, if m.clipped { " (clipped)" } else { "" }));
            bar.set_position(m.step as u64);
        }
        Event::Eval { step, val_loss } => bar.line(format_args!("step {step:>5}  validation loss {val_loss:.4}")),
        Event::Checkpoint { step, path } => bar.line(format_args!("step {step:>5}  saved {}", path.display())),
        Event::Finished { .. } => bar.finish(),
    })?;
    let val = match outcome {
        RunOutcome::Finished { val_loss } => val_loss,
        RunOutcome::Interrupted { step, checkpoint } => {
            bar.abandon();
            eprintln!(
                "interrupted at step {step}: saved {} and flushed the metrics; continue with\n  gradscope train --resume {}",
                checkpoint.display(), checkpoint.display()
            );
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let ck = out.join("ckpt.safetensors");
    t.save(&ck)?;
    let secs = started.elapsed().as_secs_f64();
    let steps = (t.step - first_step) as f64;
    let tok = steps * (t.cfg.effective() * t.cfg.block_size) as f64;
    outln!("done: step {}, validation loss {val:.4}, {:.0} tokens/s overall", t.step, tok / secs.max(1e-9));
    outln!("checkpoint {}  metrics {}/metrics.{{jsonl,csv}}", ck.display(), out.display());
    let mem = gpu.ledger.snapshot();
    outln!("device memory at end: {} parameters, {} activations", gradscope::gpu::human_bytes(mem.get(Category::Parameters)), gradscope::gpu::human_bytes(mem.get(Category::Activations)));
    Ok(EXIT_OK)
}
