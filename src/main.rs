//! The gradscope command line: a thin layer over the library. Each subcommand parses its
//! arguments, builds the device, and renders the trainer's events (progress bar, tables).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use gradscope::bench::matmul::bench_matmul;
use gradscope::gpu::kernels::MatmulVariant;
use gradscope::gpu::{AdapterChoice, Category, Gpu, list_adapters};
use gradscope::train::metrics::MetricsWriter;
use gradscope::train::verify::{VerifyReport, verify};
use gradscope::train::{Event, RunOutcome, TrainConfig, Trainer};

/// Exit code of a run stopped by Ctrl-C or SIGTERM after saving its checkpoint.
const EXIT_INTERRUPTED: i32 = 3;

#[derive(Parser)]
#[command(name = "gradscope", version, about = "A WebGPU trainer with exact, visible gradient accumulation")]
struct Cli {
    /// Use the adapter whose name contains this (case-insensitive); see `gradscope info`.
    /// `WGPU_BACKEND=vulkan|gl|metal|dx12` restricts the backends searched.
    #[arg(long, global = true)]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The desktop app (the default): live micro-batch and accumulation controls, stepping
    /// through a window, loss and memory plots. Trains the Tiny Shakespeare GPT by default.
    App {
        /// TOML file with config keys for the first run.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Ignore (and do not write) the settings saved by earlier launches.
        #[arg(long)]
        fresh: bool,
        /// Start paused (to step through the first window by hand).
        #[arg(long)]
        paused: bool,
        /// Scripted run: step the first window micro-batch by micro-batch, then train.
        #[arg(long)]
        step_first_window: bool,
        /// Scripted run: exit after this many optimizer steps.
        #[arg(long)]
        exit_after_steps: Option<usize>,
        /// Scripted run: save a screenshot of the window (PNG) before exiting.
        #[arg(long)]
        screenshot: Option<PathBuf>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overrides: Vec<String>,
    },
    /// List every adapter wgpu finds, with the limits and features that matter.
    Info,
    /// Train the GPT headless. Config: defaults, then --config FILE (TOML), then --key value.
    #[command(after_help = "Any config key can be overridden: --micro_batch 16 --accum_steps 4 --lr 3e-3 ... \
        (see README: Configuration). Unknown keys are errors.")]
    Train {
        /// TOML file with config keys.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Continue from a checkpoint (its config, weights, AdamW state, step and sampler).
        #[arg(long)]
        resume: Option<PathBuf>,
        /// No progress bar (log lines instead).
        #[arg(long)]
        quiet: bool,
        /// Config overrides: --key value or --key=value.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overrides: Vec<String>,
    },
    /// Print the validation loss of a checkpoint.
    Eval {
        checkpoint: PathBuf,
        /// Number of validation windows (default: the checkpoint's eval_windows).
        #[arg(long)]
        eval_windows: Option<usize>,
        /// Text file (default: the checkpoint's data).
        #[arg(long)]
        data: Option<String>,
    },
    /// Generate text from a checkpoint.
    Sample {
        checkpoint: PathBuf,
        /// Text to start from (characters must be in the vocabulary).
        #[arg(long, default_value = "\n")]
        prompt: String,
        /// Characters to generate.
        #[arg(long, default_value_t = 500)]
        tokens: usize,
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Check that micro-batch x K trains like the true batch (run it in CI).
    #[command(after_help = "Profiles: default (reference GPT at n_embd 64, E = 32 = 8 x 4, 100 steps) and --quick \
        (a tiny model for tests). Config keys override either, e.g. --normalization per-micro-batch-mean --padded true.")]
    Verify {
        /// A tiny profile that runs in seconds (for tests).
        #[arg(long)]
        quick: bool,
        /// Also run the broken settings (per-micro-batch mean on padded data, per-micro-batch clipping)
        /// and show that the check catches them.
        #[arg(long)]
        show_broken: bool,
        /// Final validation-loss tolerance [default: 0.02, or 0.05 with --precision f16].
        #[arg(long)]
        tolerance: Option<f64>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overrides: Vec<String>,
    },
    /// Predict device memory per category and choose the largest micro-batch under a budget.
    #[command(after_help = "Example: gradscope plan --effective-batch 64 --memory-budget 512MiB --checkpoint-activations. \
        Config keys select the model (--model cnn, --n_layer 6, ...). The numbers are the byte ledger's categories, \
        predicted from the layouts the trainer allocates (no probing).")]
    Plan {
        /// E: sequences (images) per optimizer step. Default: the config's (B x K).
        #[arg(long)]
        effective_batch: Option<usize>,
        /// Device-memory budget, e.g. 512MiB, 2GiB, 300MB. Default: the config's memory_budget,
        /// else the device's max buffer size.
        #[arg(long)]
        memory_budget: Option<String>,
        /// Plan with GPT activation checkpointing.
        #[arg(long)]
        checkpoint_activations: bool,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overrides: Vec<String>,
    },
    /// Measure the matmul kernels and end-to-end GPT training on the selected adapter.
    Bench {
        /// Matrix sizes for the matmul benchmark.
        #[arg(long, value_delimiter = ',', default_value = "256,512,1024")]
        sizes: Vec<usize>,
        /// Seconds of timed work per matmul measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Timed optimizer steps per configuration, after one warm-up step; figures come from the
        /// median step, and the two shapes of the accumulation tax alternate step by step. 0 skips
        /// the GPT.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overrides: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn device(choice: &AdapterChoice) -> anyhow::Result<Gpu> {
    Ok(Gpu::new(choice)?)
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let choice = AdapterChoice { name: cli.adapter.clone() };
    let command = cli.command.unwrap_or(Command::App {
        config: None, fresh: false, paused: false, step_first_window: false, exit_after_steps: None,
        screenshot: None, overrides: vec![],
    });
    match command {
        Command::App { config, fresh, paused, step_first_window, exit_after_steps, screenshot, overrides } => {
            let scripted = exit_after_steps.is_some();
            let mut cfg = TrainConfig::load(config.as_deref(), &overrides)?;
            if !overrides.iter().any(|o| o.contains("max_steps")) && config.is_none() {
                cfg.max_steps = 2000;
            }
            if !overrides.iter().any(|o| o.contains("eval_every")) && config.is_none() {
                cfg.eval_every = 25;
            }
            gradscope::app::run(gradscope::app::AppOptions {
                config: cfg,
                fresh: fresh || scripted,
                exit_after_steps,
                screenshot,
                step_first_window,
                paused,
                adapter: cli.adapter.clone(),
            })?;
        }
        Command::Info => {
            let adapters = list_adapters();
            if adapters.is_empty() {
                return Err(gradscope::gpu::GpuError::NoAdapter.into());
            }
            for a in &adapters {
                println!("{a}\n");
            }
            let gpu = device(&choice)?;
            println!("selected: {} ({:?} kernels)", gpu.summary.name, gpu.kind);
        }
        Command::Train { mut config, mut resume, mut quiet, overrides } => {
            // the subcommand's own flags may also come after the first --key value override
            let mut rest = Vec::new();
            let mut it = overrides.into_iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--quiet" => quiet = true,
                    "--resume" => resume = Some(it.next().context("--resume needs a checkpoint path")?.into()),
                    "--config" => config = Some(it.next().context("--config needs a file")?.into()),
                    _ => match (a.strip_prefix("--resume="), a.strip_prefix("--config=")) {
                        (Some(p), _) => resume = Some(p.into()),
                        (_, Some(p)) => config = Some(p.into()),
                        _ => rest.push(a),
                    },
                }
            }
            train(&choice, config, resume, quiet, &rest)?
        }
        Command::Eval { checkpoint, eval_windows, data } => {
            let gpu = device(&choice)?;
            let mut ov = vec![];
            if let Some(n) = eval_windows {
                ov.push(format!("--eval_windows={n}"));
            }
            if let Some(d) = data {
                ov.push("--data".into());
                ov.push(d);
            }
            let mut t = Trainer::resume(&gpu, &checkpoint, &ov)?;
            let ev = t.evaluate()?;
            let summary = t.model.summary();
            match ev.accuracy {
                Some(a) => println!(
                    "{}: step {}, {}, test accuracy {:.2}% and loss {:.4} over {} {} (running statistics)",
                    checkpoint.display(), t.step, summary.description, 100.0 * a, ev.loss, ev.items, summary.unit
                ),
                None => println!(
                    "{}: step {}, validation loss {:.4} over {} {} ({} windows of {})",
                    checkpoint.display(), t.step, ev.loss, ev.items, summary.unit, ev.items / t.cfg.block_size.max(1), t.cfg.block_size
                ),
            }
        }
        Command::Sample { checkpoint, prompt, tokens, temperature, seed } => {
            let gpu = device(&choice)?;
            let mut m = gradscope::train::sample::load(&gpu, &checkpoint)?;
            let text = gradscope::train::sample::sample(&mut m, &prompt, tokens, temperature, seed)?;
            println!("{prompt}{text}");
        }
        Command::Verify { quick, show_broken, tolerance, config, json, overrides } => {
            let gpu = device(&choice)?;
            if overrides.windows(2).any(|w| w[0] == "--model" && w[1] == "cnn") || overrides.iter().any(|o| o == "--model=cnn") {
                return verify_cnn_cli(&gpu, quick, config.as_deref(), &overrides, json);
            }
            let profile = if quick { "quick" } else { "default" };
            let mut base = verify_config(quick, config.as_deref(), &overrides)?;
            if base.precision == gradscope::gpu::Precision::F16 && !gpu.has_f16() {
                anyhow::bail!(
                    "verify --precision f16: {} has no SHADER_F16 feature, so there is no mixed precision to check here \
                     (`gradscope info` lists each adapter's features)",
                    gpu.summary.name
                );
            }
            let tolerance = tolerance.unwrap_or_else(|| gradscope::train::verify::default_tolerance(&base));
            let report = run_verify(&gpu, &base, tolerance, &format!("{profile} profile"), json)?;
            let mut broken_reports = Vec::new();
            if show_broken && base.precision == gradscope::gpu::Precision::F16 {
                use gradscope::train::config::LossScaleOrder;
                for (order, title) in [
                    (LossScaleOrder::ScaleBeforeDivide, "broken: loss scaled before dividing by the count"),
                    (LossScaleOrder::UnscalePerMicroBatch, "broken: gradient unscaled after every micro-batch"),
                ] {
                    base.loss_scale_order = order;
                    broken_reports.push(run_verify(&gpu, &base, tolerance, title, json)?);
                }
                if !json {
                    for r in &broken_reports {
                        println!("{}", if r.passed { "NOT CAUGHT: a broken setting passed the check" } else { "caught, as expected" });
                    }
                }
            } else if show_broken {
                let mut a = base.clone();
                a.padded = true;
                a.normalization = gradscope::model::gpt::Normalization::PerMicroBatchMean;
                broken_reports.push(run_verify(&gpu, &a, tolerance, "broken: per-micro-batch mean on padded data", json)?);
                let mut b = base.clone();
                b.clip_mode = gradscope::train::config::ClipMode::PerMicroBatch;
                broken_reports.push(run_verify(&gpu, &b, tolerance, "broken: per-micro-batch clipping", json)?);
                if !json {
                    for r in &broken_reports {
                        println!("{}", if r.passed { "NOT CAUGHT: a broken setting passed the check" } else { "caught, as expected" });
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "check": report, "broken": broken_reports }))?);
            }
            if !report.passed {
                std::process::exit(2);
            }
        }
        Command::Plan { mut effective_batch, mut memory_budget, mut checkpoint_activations, mut config, mut json, overrides } => {
            // the subcommand's own flags may also come after the first --key value override
            let mut rest = Vec::new();
            let mut it = overrides.into_iter();
            while let Some(a) = it.next() {
                let (flag, inline) = match a.split_once('=') {
                    Some((f, v)) => (f.to_string(), Some(v.to_string())),
                    None => (a.clone(), None),
                };
                let mut value = |name: &str| inline.clone().or_else(|| it.next()).with_context(|| format!("{name} needs a value"));
                match flag.as_str() {
                    "--checkpoint-activations" if inline.is_none() => checkpoint_activations = true,
                    "--json" if inline.is_none() => json = true,
                    "--effective-batch" => effective_batch = Some(value("--effective-batch")?.parse().context("--effective-batch")?),
                    "--memory-budget" => memory_budget = Some(value("--memory-budget")?),
                    "--config" => config = Some(value("--config")?.into()),
                    _ => rest.push(a),
                }
            }
            plan_cli(&choice, effective_batch, memory_budget, checkpoint_activations, config, json, &rest)?
        }
        Command::Bench { sizes, seconds, steps, json, overrides } => {
            let gpu = device(&choice)?;
            let mut results = Vec::new();
            for &n in &sizes {
                for v in [MatmulVariant::RegisterBlocked, MatmulVariant::Tiled] {
                    let r = bench_matmul(&gpu, v, n, seconds)?;
                    if !json {
                        println!(
                            "matmul {:>16} {:>5}^3  {:>8.2} GFLOP/s  {:>9.2} ms  max rel err {:.1e}",
                            r.variant, r.size, r.gflops, r.ms_per_matmul, r.max_rel_err
                        );
                    }
                    results.push(r);
                }
            }
            let ceiling = results.iter().map(|r| r.gflops).fold(0.0, f64::max);
            let mut gpt = Vec::new();
            let mut gpt_checkpointed = None;
            let mut gpt_f16 = None;
            if steps > 0 {
                let base = TrainConfig::load(None, &overrides)?;
                let e = base.micro_batch * base.accum_steps;
                // the two shapes of the accumulation tax, their steps alternating
                let pair = [(base.micro_batch, base.accum_steps), (e, 1)];
                for r in gradscope::bench::gpt::bench_gpt_interleaved(&gpu, &base, &pair, 1, steps)? {
                    let (b, k) = (r.micro_batch, r.accum_steps);
                    if !json {
                        let p = &r.phases;
                        println!(
                            "gpt B {:>3} x K {:>2}: {:>7.0} tokens/s  {:>6.2} GFLOP/s ({:.0}% of the matmul ceiling {:.2})  {:.3} s/step",
                            b, k, r.tokens_per_s, r.gflops, 100.0 * r.gflops / ceiling.max(1e-9), ceiling, r.seconds_per_step
                        );
                        println!(
                            "    per step: forward {:.3} s, backward {:.3} s, accumulate {:.3} s (fused: += in backward), clip {:.4} s, optimizer {:.4} s",
                            p.forward, p.backward, p.accumulate, p.clip, p.optimizer
                        );
                        if !r.kernels.is_empty() {
                            let total: f64 = r.kernels.iter().map(|k| k.1).sum();
                            println!("    kernels of one micro-batch (timestamp queries, {:.3} s):", total);
                            for (name, s) in r.kernels.iter().take(8) {
                                println!("      {name:<32} {:>8.2} ms  {:>5.1}%", s * 1e3, 100.0 * s / total);
                            }
                        }
                    }
                    gpt.push(r);
                }
                if !json && gpt.len() == 2 {
                    println!(
                        "accumulation tax: B {} x K {} takes {:.3}x the time of B {} x K 1 per effective batch",
                        gpt[0].micro_batch, gpt[0].accum_steps, gpt[0].seconds_per_step / gpt[1].seconds_per_step, e
                    );
                }
                // the time cost of activation checkpointing at B x K
                let ck = TrainConfig { checkpoint_activations: true, ..base.clone() };
                let r = gradscope::bench::gpt::bench_gpt(&gpu, &ck, base.micro_batch, base.accum_steps, 1, steps)?;
                if !json {
                    let spec = gradscope::train::plan::model_spec(&base)?;
                    let acts = |on: bool| {
                        let opts = gradscope::model::memory::MemoryOptions { checkpoint_activations: on, precision: base.precision, kernels: MatmulVariant::for_device(gpu.kind) };
                        gradscope::gpu::human_bytes(gradscope::model::memory::activation_bytes(&spec, base.micro_batch, opts))
                    };
                    println!(
                        "activation checkpointing, B {} x K {}: {:.0} tokens/s, {:.3}x the time per step; activations {} -> {}",
                        base.micro_batch, base.accum_steps, r.tokens_per_s, r.seconds_per_step / gpt[0].seconds_per_step, acts(false), acts(true)
                    );
                }
                gpt_checkpointed = Some(r);
                // mixed precision at B x K, where the adapter has f16
                if gpu.has_f16() && base.precision == gradscope::gpu::Precision::F32 {
                    let mp = TrainConfig { precision: gradscope::gpu::Precision::F16, ..base.clone() };
                    let r = gradscope::bench::gpt::bench_gpt(&gpu, &mp, base.micro_batch, base.accum_steps, 1, steps)?;
                    if !json {
                        let spec = gradscope::train::plan::model_spec(&base)?;
                        let acts = |precision| {
                            let opts = gradscope::model::memory::MemoryOptions { checkpoint_activations: false, precision, kernels: MatmulVariant::for_device(gpu.kind) };
                            gradscope::gpu::human_bytes(gradscope::model::memory::activation_bytes(&spec, base.micro_batch, opts))
                        };
                        println!(
                            "mixed precision (f16 activations), B {} x K {}: {:.0} tokens/s, {:.3}x the time per step; activations {} -> {}",
                            base.micro_batch, base.accum_steps, r.tokens_per_s, r.seconds_per_step / gpt[0].seconds_per_step,
                            acts(gradscope::gpu::Precision::F32), acts(gradscope::gpu::Precision::F16)
                        );
                    }
                    gpt_f16 = Some(r);
                }
            }
            let mut cnn = Vec::new();
            if steps > 0 {
                let base = TrainConfig::load(None, &["--model".to_string(), "cnn".to_string()])?;
                // (B, K) and the same effective batch in one micro-batch (64 x 784 rows stay under
                // a CPU adapter's loop limit)
                for (b, k) in [(16, 4), (64, 1)] {
                    let r = gradscope::bench::gpt::bench_cnn(&gpu, &base, b, k, 1, steps)?;
                    if !json {
                        println!(
                            "cnn B {:>3} x K {:>2}: {:>7.0} images/s  {:>6.2} GFLOP/s ({:.0}% of the matmul ceiling)  {:.3} s/step",
                            b, k, r.images_per_s, r.gflops, 100.0 * r.gflops / ceiling.max(1e-9), r.seconds_per_step
                        );
                        for (name, s) in r.kernels.iter().take(5) {
                            println!("      {name:<32} {:>8.2} ms", s * 1e3);
                        }
                    }
                    cnn.push(r);
                }
                if !json {
                    println!("accumulation tax (cnn): B 16 x K 4 takes {:.3}x the time of B 64 x K 1", cnn[0].seconds_per_step / cnn[1].seconds_per_step);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({
                    "adapter": gpu.summary.name, "matmul": results, "matmul_ceiling_gflops": ceiling, "gpt": gpt,
                    "gpt_checkpointed": gpt_checkpointed, "gpt_f16": gpt_f16, "cnn": cnn }))?);
            }
        }
    }
    Ok(())
}

/// `gradscope plan`: the memory table for the chosen B and a sweep of B.
#[allow(clippy::too_many_arguments)]
fn plan_cli(
    choice: &AdapterChoice, e: Option<usize>, budget: Option<String>, checkpoint: bool, config: Option<PathBuf>, json: bool,
    overrides: &[String],
) -> anyhow::Result<()> {
    use gradscope::model::memory::{parse_bytes, plan};
    use gradscope::train::plan::{device_limits, model_spec};
    let mut cfg = TrainConfig::load(config.as_deref(), overrides)?;
    if checkpoint {
        cfg.checkpoint_activations = true;
        cfg.validate()?;
    }
    let e = e.unwrap_or_else(|| cfg.effective());
    let gpu = device(choice)?;
    let limits = device_limits(&gpu);
    let budget_text = budget.unwrap_or_else(|| cfg.memory_budget.clone());
    let budget = if budget_text.is_empty() {
        limits.max_buffer
    } else {
        parse_bytes(&budget_text).map_err(|m| anyhow::anyhow!("--memory-budget: {m}"))?
    };
    let spec = model_spec(&cfg)?;
    let opts = gradscope::train::plan::memory_options(&cfg, MatmulVariant::for_device(gpu.kind));
    let p = plan(&spec, e, budget, &limits, opts)?;
    // a sweep of B: powers of two up to E, and the chosen B
    let mut bs: Vec<usize> = (0..).map(|i| 1usize << i).take_while(|&b| b <= e).collect();
    if !bs.contains(&p.micro_batch) {
        bs.push(p.micro_batch);
        bs.sort_unstable();
    }
    let sweep: Vec<_> = bs
        .iter()
        .map(|&b| {
            let k = e.div_ceil(b);
            let m = spec.predict(b, k, e - (k - 1) * b, opts);
            (b, k, m, b <= p.micro_batch)
        })
        .collect();
    if json {
        let rows: Vec<_> = sweep
            .iter()
            .map(|(b, k, m, fits)| serde_json::json!({ "micro_batch": b, "accum_steps": k, "bytes": m, "total": m.total(), "fits": fits }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "plan": p, "total": p.predicted.total(), "sweep": rows }))?);
        return Ok(());
    }
    let what = match &spec {
        gradscope::model::memory::ModelSpec::Gpt(c) => format!(
            "GPT: {} layers, n_embd {}, block_size {}, vocab {}, {} parameters", c.n_layer, c.n_embd, c.block_size, c.vocab_size, c.num_params()
        ),
        gradscope::model::memory::ModelSpec::Cnn(c) => {
            format!("CNN ({:?} norm) on {}x{} images, {} parameters", c.norm, c.h, c.w, c.num_params())
        }
    };
    println!("{what}");
    println!(
        "adapter {} ({:?}): max binding {}, max buffer {}{}",
        gpu.summary.name, gpu.kind, gradscope::gpu::human_bytes(limits.max_binding), gradscope::gpu::human_bytes(limits.max_buffer),
        limits.max_loop_rows.map_or(String::new(), |r| format!(", at most {r} rows per shader loop"))
    );
    println!(
        "effective batch E = {e}, budget {}, activation checkpointing {}, activations in {}",
        gradscope::gpu::human_bytes(budget), if opts.checkpoint_activations { "on" } else { "off" }, opts.precision
    );
    println!();
    let rem = if p.last_micro_batch == p.micro_batch {
        "B divides E".to_string()
    } else {
        format!("the last micro-batch of each window has {} of {} rows and is normalized by its real count", p.last_micro_batch, p.micro_batch)
    };
    println!("largest micro-batch that fits: B = {} (limited by {}), K = {} ({rem})", p.micro_batch, p.limited_by, p.accum_steps);
    println!("predicted device memory at B {} x K {} (byte ledger categories):\n{}", p.micro_batch, p.accum_steps, p.predicted);
    println!();
    println!("{:>6} {:>4} {:>14} {:>14} {:>14}  fits", "B", "K", "activations", "scratch", "total");
    for (b, k, m, fits) in &sweep {
        println!(
            "{b:>6} {k:>4} {:>14} {:>14} {:>14}  {}",
            gradscope::gpu::human_bytes(m.get(Category::Activations)), gradscope::gpu::human_bytes(m.get(Category::Scratch)),
            gradscope::gpu::human_bytes(m.total()), if *fits { "yes" } else { "no" }
        );
    }
    let mut args: Vec<String> = overrides.to_vec();
    args.push(format!("--memory_budget {}", if budget_text.is_empty() { budget.to_string() } else { budget_text.clone() }));
    args.push(format!("--effective_batch {e}"));
    if opts.checkpoint_activations {
        args.push("--checkpoint_activations true".into());
    }
    println!("\ntrain with: gradscope train {}", args.join(" "));
    Ok(())
}

/// `gradscope verify --model cnn --norm group|batch`. Profiles: default MNIST, B 4 x K 16 = 64,
/// 40 steps; quick: the 8x8 digits, B 4 x K 8, 30 steps.
fn verify_cnn_cli(gpu: &Gpu, quick: bool, file: Option<&std::path::Path>, overrides: &[String], json: bool) -> anyhow::Result<()> {
    let mut ov: Vec<String> = if quick {
        ["--dataset=digits", "--micro_batch=4", "--accum_steps=8", "--max_steps=30"].map(String::from).to_vec()
    } else {
        ["--micro_batch=4", "--accum_steps=16", "--max_steps=40"].map(String::from).to_vec()
    };
    ov.extend_from_slice(overrides);
    let cfg = TrainConfig::load(file, &ov)?;
    let e = cfg.effective();
    if !json {
        println!("== verify (cnn, {:?} norm, {:?}): true batch {e} x 1 vs micro-batch {} x {} = {e}, {} steps",
            cfg.norm, cfg.dataset, cfg.micro_batch, cfg.windows_micro_batches(), cfg.max_steps);
    }
    let r = gradscope::train::verify_cnn::verify_cnn(gpu, &cfg, cfg.max_steps)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("first-window gradient: max relative difference {:.2e}", r.first_gradient_rel_diff);
        for (name, run) in [("true batch", &r.true_batch), ("accumulated", &r.accumulated)] {
            print!("{name:<12} B {:>3} x K {:>2}: test accuracy {:.2}% (running statistics)", run.micro_batch, run.accum_steps, 100.0 * run.test_accuracy);
            for d in &run.drift {
                print!("; BN{} running-mean error {:.4}, running-var ratio {:.3}", d.layer, d.running_mean_error, d.running_var_ratio);
            }
            println!();
        }
        for (t, a) in r.true_batch.drift.iter().zip(&r.accumulated.drift) {
            println!("BN{}: running-mean error {:.1}x the true batch's", t.layer, a.running_mean_error / t.running_mean_error.max(1e-12));
        }
        println!("{}: {}", if r.passed { "PASS" } else { "FAIL" }, r.diagnosis);
    }
    if !r.passed {
        std::process::exit(2);
    }
    Ok(())
}

/// The verify profiles. Default: the reference GPT's shape at n_embd 64 (so 2 x 100 steps fit in a
/// few minutes on a CPU adapter), E = 32 as 8 x 4. Quick: a tiny model for tests.
fn verify_config(quick: bool, file: Option<&std::path::Path>, overrides: &[String]) -> anyhow::Result<TrainConfig> {
    let mut ov: Vec<String> = if quick {
        ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--micro_batch=4", "--accum_steps=4",
            "--max_steps=100", "--eval_every=25", "--eval_windows=64"]
            .map(String::from).to_vec()
    } else {
        ["--n_embd=64", "--micro_batch=8", "--accum_steps=4", "--max_steps=100", "--eval_every=20", "--eval_windows=128"]
            .map(String::from).to_vec()
    };
    ov.extend_from_slice(overrides);
    Ok(TrainConfig::load(file, &ov)?)
}

fn run_verify(gpu: &Gpu, cfg: &TrainConfig, tolerance: f64, title: &str, json: bool) -> anyhow::Result<VerifyReport> {
    let e = cfg.effective();
    if !json {
        println!(
            "\n== verify ({title}): true batch {e} x 1 vs micro-batch {} x {} = {e}, {} steps, normalization {:?}, clip {:?}, padded {}{}",
            cfg.micro_batch, cfg.windows_micro_batches(), cfg.max_steps, cfg.normalization, cfg.clip_mode, cfg.padded,
            if cfg.precision == gradscope::gpu::Precision::F16 {
                format!(", accumulated run in mixed precision (f16 activations, loss scale {}, order {:?}) against the f32 true batch", cfg.loss_scale, cfg.loss_scale_order)
            } else {
                String::new()
            }
        );
        println!("{:>6}  {:>12}  {:>12}  {:>9}", "step", "true batch", "accumulated", "|diff|");
    }
    let report = verify(gpu, cfg, tolerance, &mut |p| {
        if !json {
            println!("{:>6}  {:>12.4}  {:>12.4}  {:>9.4}", p.step, p.true_batch, p.accumulated, (p.true_batch - p.accumulated).abs());
        }
    })?;
    if !json {
        println!(
            "first-window gradient: max relative difference {:.2e} (tolerance {:.0e})",
            report.first_gradient_rel_diff, report.gradient_tolerance
        );
        println!(
            "final validation loss difference {:.4} (max over the curve {:.4}, tolerance {}): {}",
            report.final_diff, report.max_diff, report.tolerance, if report.passed { "PASS" } else { "FAIL" }
        );
        if !report.passed {
            println!("diagnosis: {}", report.diagnosis);
        }
    }
    Ok(report)
}

/// The line `train` prints when B was chosen under a memory budget.
fn print_plan(plan: Option<&gradscope::model::memory::Plan>) {
    if let Some(p) = plan {
        println!(
            "memory budget    {}: B = {} is the largest micro-batch that fits (limited by {}), K = {}, predicted {}",
            gradscope::gpu::human_bytes(p.budget), p.micro_batch, p.limited_by, p.accum_steps,
            gradscope::gpu::human_bytes(p.predicted.total())
        );
    }
}

/// `gradscope train` for every model: the trainer's events rendered as a progress bar (log
/// lines without a terminal or with --quiet) and as the metrics files.
fn train(choice: &AdapterChoice, config: Option<PathBuf>, resume: Option<PathBuf>, quiet: bool, overrides: &[String]) -> anyhow::Result<()> {
    let gpu = device(choice)?;
    let mut t = match &resume {
        Some(ck) => {
            anyhow::ensure!(config.is_none(), "--resume takes its config from the checkpoint; pass overrides instead");
            Trainer::resume(&gpu, ck, overrides)?
        }
        None => Trainer::new(&gpu, TrainConfig::load(config.as_deref(), overrides)?)?,
    };
    let out = PathBuf::from(&t.cfg.out_dir);
    let mut metrics = MetricsWriter::create(&out, resume.is_some())
        .with_context(|| format!("cannot write metrics in {}", out.display()))?;
    let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(t.cfg.max_steps as u64);
        b.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")?);
        b.set_position(t.step as u64);
        b
    };
    let plain = bar.is_hidden();
    let started = std::time::Instant::now();
    let first_step = t.step;
    // Ctrl-C and SIGTERM finish the current window, save a checkpoint and exit with code 3.
    static INTERRUPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    ctrlc::set_handler(|| INTERRUPT.store(true, std::sync::atomic::Ordering::SeqCst))
        .context("cannot install the Ctrl-C/SIGTERM handler")?;
    let mut unit = "tokens";
    let outcome = t.run(Some(&INTERRUPT), &mut |ev| {
        metrics.on_event(ev).with_context(|| format!("cannot write metrics in {}", out.display()))?;
        match ev {
            Event::Started { derived: d, config } => {
                unit = d.model.unit;
                println!("adapter          {}", d.adapter);
                println!("model            {}, {} parameters", d.model.description, d.params);
                println!("data             {}", d.model.data);
                // samples are sequences of tokens, or images
                let (per, samples) = if unit == "tokens" { (format!(" = {} tokens", d.items_per_micro_batch), "sequences") } else { (String::new(), unit) };
                let per_step = if unit == "tokens" { format!(" = {} tokens", d.items_per_step) } else { String::new() };
                println!("micro-batch      B = {} {samples}{per}", d.micro_batch);
                println!(
                    "window           K = {} micro-batches, E = {} {samples}{per_step} per step; {} steps",
                    d.micro_batches_per_window, d.effective_batch, d.max_steps
                );
                print_plan(d.plan.as_ref());
                if let Some(n) = &d.notice {
                    println!("notice           {n}");
                }
                if config.precision == gradscope::gpu::Precision::F16 {
                    println!("precision        mixed: f16 activations and activation gradients; f32 weights, gradients and AdamW state; dynamic loss scaling");
                }
                println!("device memory (byte ledger):\n{}", d.memory);
            }
            Event::Step(r) => {
                let m = &r.metrics;
                bar.set_position(m.step as u64);
                let scale = m.loss_scale.map_or(String::new(), |s| format!("  scale {s}"));
                let skipped = if m.skipped { " (skipped)" } else { "" };
                let clipped = if m.clipped { " (clipped)" } else { "" };
                let line = format!("loss {:.4}  {:.0} {unit}/s  |g| {:.3}{clipped}{scale}{skipped}", m.train_loss, m.per_s(), m.grad_norm);
                bar.set_message(line.clone());
                if plain && (m.step % 10 == 0 || m.val_loss.is_some() || m.step == 1) {
                    println!("step {:>5}  {line}  lr {:.2e}", m.step, m.lr);
                }
            }
            Event::Eval { step, epoch, eval } => {
                let at = match epoch {
                    Some(e) => format!("epoch {e:>3}  step {step:>5}"),
                    None => format!("step {step:>5}"),
                };
                let line = match eval.accuracy {
                    Some(a) => format!("{at}  test accuracy {:.2}%  test loss {:.4}  ({} images)", 100.0 * a, eval.loss, eval.items),
                    None => format!("{at}  validation loss {:.4}", eval.loss),
                };
                say(&bar, line);
            }
            Event::Checkpoint { step, path } => say(&bar, format!("step {step:>5}  saved {}", path.display())),
            Event::Finished { .. } => bar.finish(),
            _ => {}
        }
        Ok(())
    })?;
    let eval = match outcome {
        RunOutcome::Finished { eval } => eval,
        RunOutcome::Interrupted { step, checkpoint } => {
            bar.abandon();
            eprintln!(
                "interrupted at step {step}: saved {} and flushed the metrics; continue with\n  gradscope train --resume {}",
                checkpoint.display(), checkpoint.display()
            );
            std::process::exit(EXIT_INTERRUPTED);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let d = t.derived();
    let items = (t.step - first_step) as f64 * d.items_per_step as f64;
    let what = match eval.accuracy {
        Some(a) => format!("test accuracy {:.2}%, test loss {:.4}", 100.0 * a, eval.loss),
        None => format!("validation loss {:.4}", eval.loss),
    };
    println!("done: step {}, {what}, {:.0} {}/s overall", t.step, items / secs.max(1e-9), d.model.unit);
    println!("checkpoint {}  metrics {}/metrics.{{jsonl,csv}}", out.join("ckpt.safetensors").display(), out.display());
    let mem = gpu.ledger.snapshot();
    println!("device memory at end: {} parameters, {} activations", gradscope::gpu::human_bytes(mem.get(Category::Parameters)), gradscope::gpu::human_bytes(mem.get(Category::Activations)));
    Ok(())
}

/// A line above the progress bar (or plain when the bar is hidden, e.g. stdout redirected).
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() { println!("{line}") } else { bar.println(line) }
}
