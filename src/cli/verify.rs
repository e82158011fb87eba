//! `gradscope verify`: train the same model from the same seed as one true batch and as
//! micro-batch x K, and compare (exit 2 when the check fails). The GPT, or the CNN with
//! `--model cnn`.

use std::path::{Path, PathBuf};

use gradscope::gpu::{AdapterChoice, Gpu};
use gradscope::train::TrainConfig;
use gradscope::train::config::ModelKind;
use gradscope::train::verify::{VerifyReport, verify};

use super::config::profile;
use super::out::{Progress, out, outln};
use super::{ConfigFlags, EXIT_OK, EXIT_VERIFY_FAILED, device};

#[derive(clap::Args)]
#[command(after_help = "Profiles: default (reference GPT at n_embd 64, E = 32 = 8 x 4, 100 steps) and --quick \
    (a tiny model for tests); with --model cnn: MNIST B 4 x K 16, 40 steps, and --quick the digits, B 4 x K 8, 30 steps. \
    Config keys override either, e.g. --normalization per-micro-batch-mean --padded.")]
pub struct VerifyArgs {
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
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigFlags,
}

/// The profiles, under the config file and the flags. Default: the reference GPT's shape at
/// n_embd 64 (so 2 x 100 steps fit in a few minutes on a CPU adapter), E = 32 as 8 x 4. Quick: a
/// tiny model for tests.
const GPT_DEFAULT: &str = "n_embd = 64\nmicro_batch = 8\naccum_steps = 4\nmax_steps = 100\neval_every = 20\neval_windows = 128";
const GPT_QUICK: &str = "n_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 32\nmicro_batch = 4\naccum_steps = 4\n\
    max_steps = 100\neval_every = 25\neval_windows = 64";
/// The CNN's: default MNIST, B 4 x K 16 = 64, 40 steps; quick: the 8x8 digits, B 4 x K 8, 30 steps.
const CNN_DEFAULT: &str = "micro_batch = 4\naccum_steps = 16\nmax_steps = 40";
const CNN_QUICK: &str = "dataset = \"digits\"\nmicro_batch = 4\naccum_steps = 8\nmax_steps = 30";

/// The report files `verify` writes into its out_dir: the JSON of `--json` and, for the GPT, the
/// validation curves of both runs and their difference against the tolerance.
pub const REPORT_JSON: &str = "verify.json";
pub const REPORT_PNG: &str = "verify.png";
const REPORT_PNG_SIZE: (u32, u32) = (1200, 500);

fn write_report(path: &Path, doc: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create out_dir {}: {e}", dir.display()))?;
    }
    std::fs::write(path, doc).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

pub fn run(choice: &AdapterChoice, args: VerifyArgs) -> anyhow::Result<i32> {
    let VerifyArgs { quick, show_broken, tolerance, json, config } = args;
    let gpu = device(choice)?;
    if config.model()? == ModelKind::Cnn {
        let cfg = config.load_over(profile(if quick { CNN_QUICK } else { CNN_DEFAULT }))?;
        return verify_cnn_cli(&gpu, &cfg, json);
    }
    let profile_name = if quick { "quick" } else { "default" };
    let mut base = config.load_over(profile(if quick { GPT_QUICK } else { GPT_DEFAULT }))?;
    if base.precision == gradscope::gpu::Precision::F16 && !gpu.has_f16() {
        anyhow::bail!(
            "verify --precision f16: {} has no SHADER_F16 feature, so there is no mixed precision to check here \
             (`gradscope info` lists each adapter's features)",
            gpu.summary.name
        );
    }
    let tolerance = tolerance.unwrap_or_else(|| gradscope::train::verify::default_tolerance(&base));
    let report = run_verify(&gpu, &base, tolerance, &format!("{profile_name} profile"), json)?;
    let mut broken_reports = Vec::new();
    let mut broken_titles = Vec::new();
    if show_broken && base.precision == gradscope::gpu::Precision::F16 {
        use gradscope::train::config::LossScaleOrder;
        for (order, title) in [
            (LossScaleOrder::ScaleBeforeDivide, "broken: loss scaled before dividing by the count"),
            (LossScaleOrder::UnscalePerMicroBatch, "broken: gradient unscaled after every micro-batch"),
        ] {
            base.loss_scale_order = order;
            broken_reports.push(run_verify(&gpu, &base, tolerance, title, json)?);
            broken_titles.push(title.to_string());
        }
    } else if show_broken {
        let mut a = base.clone();
        a.padded = true;
        a.normalization = gradscope::model::gpt::Normalization::PerMicroBatchMean;
        broken_reports.push(run_verify(&gpu, &a, tolerance, "broken: per-micro-batch mean on padded data", json)?);
        broken_titles.push("broken: per-micro-batch mean".to_string());
        let mut b = base.clone();
        b.clip_mode = gradscope::train::config::ClipMode::PerMicroBatch;
        broken_reports.push(run_verify(&gpu, &b, tolerance, "broken: per-micro-batch clipping", json)?);
        broken_titles.push("broken: per-micro-batch clipping".to_string());
    }
    let doc = serde_json::to_string_pretty(&serde_json::json!({ "check": report, "broken": broken_reports }))?;
    let dir = PathBuf::from(&base.out_dir);
    let named: Vec<(String, VerifyReport)> = broken_titles.into_iter().zip(broken_reports.iter().cloned()).collect();
    let (json_path, png_path) = (dir.join(REPORT_JSON), dir.join(REPORT_PNG));
    write_report(&json_path, &doc)?;
    gradscope::plot::write_verify_png(&report, &named, &png_path, REPORT_PNG_SIZE)?;
    if json {
        outln!("{doc}");
    } else {
        outln!("wrote {} and {}", json_path.display(), png_path.display());
        for r in &broken_reports {
            outln!("{}", if r.passed { "NOT CAUGHT: a broken setting passed the check" } else { "caught, as expected" });
        }
    }
    Ok(if report.passed { EXIT_OK } else { EXIT_VERIFY_FAILED })
}

/// `gradscope verify --model cnn --norm group|batch`.
fn verify_cnn_cli(gpu: &Gpu, cfg: &TrainConfig, json: bool) -> anyhow::Result<i32> {
    let e = cfg.effective();
    if !json {
        outln!("== verify (cnn, {:?} norm, {:?}): true batch {e} x 1 vs micro-batch {} x {} = {e}, {} steps",
            cfg.norm, cfg.dataset, cfg.micro_batch, cfg.windows_micro_batches(), cfg.max_steps);
    }
    let r = gradscope::train::verify_cnn::verify_cnn(gpu, cfg, cfg.max_steps)?;
    let doc = serde_json::to_string_pretty(&r)?;
    let json_path = PathBuf::from(&cfg.out_dir).join(REPORT_JSON);
    write_report(&json_path, &doc)?;
    if json {
        outln!("{doc}");
    } else {
        outln!("wrote {}", json_path.display());
        outln!("first-window gradient: max relative difference {:.2e}", r.first_gradient_rel_diff);
        for (name, run) in [("true batch", &r.true_batch), ("accumulated", &r.accumulated)] {
            out!("{name:<12} B {:>3} x K {:>2}: test accuracy {:.2}% (running statistics)", run.micro_batch, run.accum_steps, 100.0 * run.test_accuracy);
            for d in &run.drift {
                out!("; BN{} running-mean error {:.4}, running-var ratio {:.3}", d.layer, d.running_mean_error, d.running_var_ratio);
            }
            outln!();
        }
        for (t, a) in r.true_batch.drift.iter().zip(&r.accumulated.drift) {
            outln!("BN{}: running-mean error {:.1}x the true batch's", t.layer, a.running_mean_error / t.running_mean_error.max(1e-12));
        }
        outln!("{}: {}", if r.passed { "PASS" } else { "FAIL" }, r.diagnosis);
    }
    Ok(if r.passed { EXIT_OK } else { EXIT_VERIFY_FAILED })
}

fn run_verify(gpu: &Gpu, cfg: &TrainConfig, tolerance: f64, title: &str, json: bool) -> anyhow::Result<VerifyReport> {
    let e = cfg.effective();
    // the table's rows show the progress off a terminal; on one a bar runs under them
    let lines = Progress::new(cfg.max_steps as u64, json).every(0);
    if !json {
        lines.line(format_args!(
            "\n== verify ({title}): true batch {e} x 1 vs micro-batch {} x {} = {e}, {} steps, normalization {:?}, clip {:?}, padded {}{}",
            cfg.micro_batch, cfg.windows_micro_batches(), cfg.max_steps, cfg.normalization, cfg.clip_mode, cfg.padded,
            if cfg.precision == gradscope::gpu::Precision::F16 {
                format!(", accumulated run in mixed precision (f16 activations, loss scale {}, order {:?}) against the f32 true batch", cfg.loss_scale, cfg.loss_scale_order)
            } else {
                String::new()
            }
        ));
        lines.line(format_args!("{:>6}  {:>12}  {:>12}  {:>9}", "step", "true batch", "accumulated", "|diff|"));
    }
    let report = verify(gpu, cfg, tolerance, &mut |p| {
        if !json {
            lines.line(format_args!("{:>6}  {:>12.4}  {:>12.4}  {:>9.4}", p.step, p.true_batch, p.accumulated, (p.true_batch - p.accumulated).abs()));
            lines.set_position(p.step as u64);
        }
    })?;
    lines.clear();
    if !json {
        outln!(
            "first-window gradient: max relative difference {:.2e} (tolerance {:.0e})",
            report.first_gradient_rel_diff, report.gradient_tolerance
        );
        outln!(
            "final validation loss difference {:.4} (max over the curve {:.4}, tolerance {}): {}",
            report.final_diff, report.max_diff, report.tolerance, if report.passed { "PASS" } else { "FAIL" }
        );
        if !report.passed {
            outln!("diagnosis: {}", report.diagnosis);
        }
    }
    Ok(report)
}
