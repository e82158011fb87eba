//! `gradscope plan`: the memory table for the chosen B, a sweep of B, and a `train` command
//! that trains with them.

use gradscope::gpu::{AdapterChoice, Category};

use super::out::outln;
use super::{ConfigFlags, EXIT_OK, device};

#[derive(clap::Args)]
#[command(after_help = "Example: gradscope plan --effective-batch 64 --memory-budget 512MiB --checkpoint-activations. \
    Config keys select the model (--model cnn, --n-layer 6, ...); without memory_budget the budget is the device's \
    max buffer size. The numbers are the byte ledger's categories, predicted from the layouts the trainer allocates \
    (no probing).")]
pub struct PlanArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// A run directory trained with `grad_stats = true`: its last smoothed gradient noise scale
    /// (metrics.jsonl) is set against E as advice (a run without one is said so, not an error).
    #[arg(long, value_name = "RUN_DIR")]
    from_run: Option<std::path::PathBuf>,
    /// The model, E (effective_batch) and the budget (memory_budget) to plan for.
    #[command(flatten)]
    config: ConfigFlags,
}

pub fn run(choice: &AdapterChoice, adapter: &Option<String>, args: PlanArgs) -> anyhow::Result<i32> {
    use gradscope::model::memory::{parse_bytes, plan};
    use gradscope::train::plan::{device_limits, model_spec};
    let PlanArgs { json, from_run, config: flags } = args;
    let gpu = device(choice)?;
    let limits = device_limits(&gpu);
    // the budget defaults to the device's max buffer size (under the file and the flags)
    let mut device_budget = toml::Table::new();
    device_budget.insert("memory_budget".into(), toml::Value::String(limits.max_buffer.to_string()));
    let cfg = flags.load_over(device_budget)?;
    let e = cfg.effective();
    let budget = parse_bytes(&cfg.memory_budget).map_err(|m| anyhow::anyhow!("memory_budget: {m}"))?;
    let spec = model_spec(&cfg)?;
    let opts = gradscope::train::plan::memory_options(&cfg, &gpu);
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
    // the same model, E and budget, for `train`
    let mut command = vec!["gradscope".to_string()];
    if let Some(a) = adapter {
        command.extend(["--adapter".to_string(), a.clone()]);
    }
    command.push("train".into());
    command.extend(flags.command_line(&[("memory_budget", cfg.memory_budget.clone()), ("effective_batch", e.to_string())]));
    let command = command.join(" ");
    let sample = if matches!(spec, gradscope::model::memory::ModelSpec::Gpt(_)) { "sequences" } else { "images" };
    let noise = from_run.as_deref().and_then(gradscope::train::metrics::last_noise_scale);
    let advice = noise.map(|(_, b, _)| gradscope::model::grad_stats::noise_advice(b, e, sample));
    if json {
        let rows: Vec<_> = sweep
            .iter()
            .map(|(b, k, m, fits)| serde_json::json!({ "micro_batch": b, "accum_steps": k, "bytes": m, "total": m.total(), "fits": fits }))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({ "plan": p, "total": p.predicted.total(), "sweep": rows, "train": command,
            "noise_scale": noise.map(|(step, b, items)| serde_json::json!({ "step": step, "b_simple": b, "b_simple_items": items, "advice": advice })) }))?);
        return Ok(EXIT_OK);
    }
    let what = match &spec {
        gradscope::model::memory::ModelSpec::Gpt(c) => format!(
            "GPT: {} layers, n_embd {}, block_size {}, vocab {}, {} parameters", c.n_layer, c.n_embd, c.block_size, c.vocab_size, c.num_params()
        ),
        gradscope::model::memory::ModelSpec::Cnn(c) => {
            format!("CNN ({:?} norm) on {}x{} images, {} parameters", c.norm, c.h, c.w, c.num_params())
        }
    };
    outln!("{what}");
    outln!(
        "adapter {} ({:?}): max binding {}, max buffer {}{}",
        gpu.summary.name, gpu.kind, gradscope::gpu::human_bytes(limits.max_binding), gradscope::gpu::human_bytes(limits.max_buffer),
        limits.max_loop_rows.map_or(String::new(), |r| format!(", at most {r} rows per shader loop"))
    );
    outln!(
        "effective batch E = {e}, budget {}, activation checkpointing {}, activations in {}",
        gradscope::gpu::human_bytes(budget), if opts.checkpoint_activations { "on" } else { "off" }, opts.precision
    );
    outln!();
    let rem = if p.last_micro_batch == p.micro_batch {
        "B divides E".to_string()
    } else {
        format!("the last micro-batch of each window has {} of {} rows and is normalized by its real count", p.last_micro_batch, p.micro_batch)
    };
    outln!("largest micro-batch that fits: B = {} (limited by {}), K = {} ({rem})", p.micro_batch, p.limited_by, p.accum_steps);
    outln!("predicted device memory at B {} x K {} (byte ledger categories):\n{}", p.micro_batch, p.accum_steps, p.predicted);
    outln!();
    outln!("{:>6} {:>4} {:>14} {:>14} {:>14}  fits", "B", "K", "activations", "scratch", "total");
    for (b, k, m, fits) in &sweep {
        outln!(
            "{b:>6} {k:>4} {:>14} {:>14} {:>14}  {}",
            gradscope::gpu::human_bytes(m.get(Category::Activations)), gradscope::gpu::human_bytes(m.get(Category::Scratch)),
            gradscope::gpu::human_bytes(m.total()), if *fits { "yes" } else { "no" }
        );
    }
    match (&noise, &from_run) {
        (Some((step, _, items)), Some(dir)) => {
            let unit = if sample == "sequences" { "tokens" } else { "images" };
            outln!("\ngradient noise scale of the run in {} (smoothed up to its step {step}; {} {unit}):", dir.display(), gradscope::model::grad_stats::approx(*items));
            outln!("  {}", advice.as_deref().unwrap_or_default());
            outln!("  (B_simple under SGD assumptions, McCandlish et al. 2018; Adam's critical batch differs, and B_simple grows as the loss falls)");
        }
        (None, Some(dir)) => outln!(
            "\ngradient noise scale: none yet in {} (metrics.jsonl; it needs grad_stats = true, K >= 2 and a positive \
             estimate of |G|^2)",
            dir.display()
        ),
        _ => outln!("\ngradient noise scale: train with grad_stats = true, then plan --from-run RUN_DIR sets it against E"),
    }
    outln!("\ntrain with: {command}");
    Ok(EXIT_OK)
}
