//! `gradscope bench`: the matmul ceiling, then end-to-end GPT and CNN steps on the selected
//! adapter; each figure printed as soon as it is measured (`src/bench/report.rs` formats them),
//! or one JSON document at the end.

use gradscope::bench::report::{self, BenchReport};
use gradscope::gpu::kernels::MatmulVariant;
use gradscope::gpu::{AdapterChoice, MatmulTile, Precision, TilePolicy};
use gradscope::model::memory::{MemoryOptions, activation_bytes};
use gradscope::train::TrainConfig;

use super::out::outln;
use super::{ConfigFlags, EXIT_OK, device};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Matrix sizes for the matmul benchmark (n for n x n x n), every variant at each
    /// [default: 256,512,1024 on CPU adapters, 1024,4096 on GPUs].
    #[arg(long, alias = "matmul-sizes", value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// The adapter's FP32 peak in TFLOP/s, for the matmul's percentage of peak (known GPUs are
    /// recognised by name: `gradscope::bench::peak`).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Also measure GPT-2 small's shape (12 layers, 12 heads, 768, block 1024, vocabulary
    /// 50,257) at B x K, e.g. `4x2`; `off` skips it [default: 4x2 on GPUs, off on CPU adapters,
    /// where one step takes minutes].
    #[arg(long, value_name = "BxK")]
    gpt2_small: Option<String>,
    /// Seconds of timed work per matmul measurement.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Timed optimizer steps per configuration, after one warm-up step; figures come from the
    /// median step, and the two shapes of the accumulation tax alternate step by step. 0 skips
    /// the GPT and the CNN.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure only the config's GPT at B x K: no matmul sizes, no accumulation-tax pair, no
    /// variants, no CNN, no phase or kernel timings; prints each step's time and the byte ledger
    /// (for large models: `--config configs/gpt2-small.toml --single --warmup 0 --steps 1`).
    #[arg(long)]
    single: bool,
    /// Warm-up optimizer steps before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The GPT to measure (B x K from micro_batch and accum_steps).
    #[command(flatten)]
    config: ConfigFlags,
}

pub fn run(choice: &AdapterChoice, args: BenchArgs) -> anyhow::Result<i32> {
    let BenchArgs { sizes, peak_tflops, gpt2_small, seconds, steps, json, single, warmup, config } = args;
    let base = config.load()?;
    let gpu = device(choice)?;
    let on_gpu = gpu.kind == gradscope::gpu::DeviceKind::Gpu;
    let sizes = sizes.unwrap_or_else(|| if on_gpu { vec![1024, 4096] } else { vec![256, 512, 1024] });
    let gpt2_small = parse_batch(gpt2_small.as_deref().unwrap_or(if on_gpu { "4x2" } else { "off" }))?;
    if peak_tflops.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
        anyhow::bail!("--peak-tflops must be a positive number of TFLOP/s");
    }
    if single {
        return single_run(&gpu, &base, warmup, steps, json);
    }
    let say = |line: String| {
        if !json {
            outln!("{line}");
        }
    };
    let mut rep = BenchReport {
        adapter: gpu.summary.name.clone(),
        kernels: gpu.kernels().name().into(),
        matmul_tiles: gpu.matmul_tiles().to_string(),
        fp32_peak: gradscope::bench::peak::fp32_peak(&gpu.summary.name, peak_tflops),
        ..Default::default()
    };
    say(report::header_line(&rep));
    for &n in &sizes {
        // the GPU family at each block tile, then the CPU family and the plain tiles
        let tiles = [MatmulTile::T64x64, MatmulTile::T128x64].map(|t| (MatmulVariant::GpuTiled, Some(t)));
        for (v, tile) in tiles.into_iter().chain([(MatmulVariant::RegisterBlocked, None), (MatmulVariant::Tiled, None)]) {
            let g = tile.map_or_else(|| gpu.clone(), |t| gpu.clone().with_matmul_tiles(TilePolicy::Fixed(t)));
            let mut r = gradscope::bench::matmul::bench_matmul_as(&g, gpu.matmul_tiles(), v, n, seconds)?;
            r.percent_of_peak = rep.fp32_peak.as_ref().map(|p| 100.0 * r.gflops / (p.tflops * 1e3));
            say(report::matmul_line(&r));
            rep.matmul.push(r);
        }
    }
    let ceiling = rep.ceiling();
    rep.matmul_ceiling_gflops = ceiling;
    if steps > 0 {
        let e = base.micro_batch * base.accum_steps;
        // the two shapes of the accumulation tax, their steps alternating
        let pair = [(base.micro_batch, base.accum_steps), (e, 1)];
        for r in gradscope::bench::gpt::bench_gpt_interleaved(&gpu, &base, &pair, 1, steps)? {
            say(report::gpt_lines(&r, ceiling));
            rep.gpt.push(r);
        }
        if let [accumulated, true_batch] = &rep.gpt[..] {
            say(report::gpt_tax_line(accumulated, true_batch));
        }
        let spec = gradscope::train::plan::model_spec(&base)?;
        let acts = |checkpoint_activations, precision| {
            let opts = MemoryOptions { checkpoint_activations, precision, kernels: gpu.kernels().matmul(), limits: gradscope::model::layout::SlabLimits::of(&gpu), vocab_chunk: base.vocab_chunk, dropout: base.dropout > 0.0, grad_stats: base.grad_stats };
            activation_bytes(&spec, base.micro_batch, opts)
        };
        // the time cost of activation checkpointing at B x K
        let ck = TrainConfig { checkpoint_activations: true, ..base.clone() };
        let r = gradscope::bench::gpt::bench_gpt(&gpu, &ck, base.micro_batch, base.accum_steps, 1, steps)?;
        say(report::gpt_variant_line("activation checkpointing", &r, &rep.gpt[0], (acts(false, base.precision), acts(true, base.precision))));
        rep.gpt_checkpointed = Some(r);
        // mixed precision at B x K, where the adapter has f16
        if gpu.has_f16() && base.precision == Precision::F32 {
            let mp = TrainConfig { precision: Precision::F16, ..base.clone() };
            let r = gradscope::bench::gpt::bench_gpt(&gpu, &mp, base.micro_batch, base.accum_steps, 1, steps)?;
            say(report::gpt_variant_line("mixed precision (f16 activations)", &r, &rep.gpt[0], (acts(false, Precision::F32), acts(false, Precision::F16))));
            rep.gpt_f16 = Some(r);
        }
        // what the per-micro-batch gradient statistics cost at B x K
        let r = gradscope::bench::gpt::bench_grad_stats(&gpu, &base, 1, steps.max(5))?;
        say(report::grad_stats_line(&r));
        rep.grad_stats.push(r);
        let cnn = TrainConfig::load_table(None, super::config::profile("model = \"cnn\""))?;
        // (B, K) and the same effective batch in one micro-batch (64 x 784 rows stay under a
        // CPU adapter's loop limit)
        for (b, k) in [(16, 4), (64, 1)] {
            let r = gradscope::bench::gpt::bench_cnn(&gpu, &cnn, b, k, 1, steps)?;
            say(report::cnn_lines(&r, ceiling));
            rep.cnn.push(r);
        }
        if let [accumulated, true_batch] = &rep.cnn[..] {
            say(report::cnn_tax_line(accumulated, true_batch));
        }
        let r = gradscope::bench::gpt::bench_grad_stats(&gpu, &TrainConfig { micro_batch: 16, accum_steps: 4, effective_batch: 0, ..cnn }, 1, steps.max(5))?;
        say(report::grad_stats_line(&r));
        rep.grad_stats.push(r);
    }
    if let (Some((b, k)), true) = (gpt2_small, steps > 0) {
        // the file and the flags, then the shape on top
        let mut keys = config.table();
        keys.extend(super::config::profile(GPT2_SMALL));
        let g2 = TrainConfig::load_table(config.file.as_deref(), keys)?;
        let r = gradscope::bench::gpt::bench_gpt(&gpu, &g2, b, k, 1, steps)?;
        say(report::gpt_lines(&r, ceiling));
        rep.gpt2_small = Some(r);
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&rep)?);
    }
    Ok(EXIT_OK)
}

/// GPT-2 small's shape (configs/gpt2-small.toml without its batch; the file's and the command
/// line's other keys still apply).
const GPT2_SMALL: &str = "n_layer = 12\nn_head = 12\nn_embd = 768\nblock_size = 1024\nvocab_size = 50257\n";

/// `4x2` -> Some((4, 2)); `off` -> None.
fn parse_batch(s: &str) -> anyhow::Result<Option<(usize, usize)>> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || anyhow::anyhow!("--gpt2-small {s:?}: expected BxK (e.g. 4x2) or off");
    let (b, k) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (b, k): (usize, usize) = (b.trim().parse().map_err(|_| bad())?, k.trim().parse().map_err(|_| bad())?);
    if b == 0 || k == 0 {
        return Err(bad());
    }
    Ok(Some((b, k)))
}

/// `bench --single`: one configuration, its steps and the ledger.
fn single_run(gpu: &gradscope::gpu::Gpu, base: &TrainConfig, warmup: usize, steps: usize, json: bool) -> anyhow::Result<i32> {
    let (b, k) = (base.micro_batch, base.accum_steps);
    let start = std::time::Instant::now();
    let mut run = gradscope::bench::gpt::GptRun::new(gpu, base, b, k, warmup)?;
    let built = start.elapsed().as_secs_f64();
    let g = run.trainer().gpt().ok_or_else(|| anyhow::anyhow!("--single measures the GPT"))?.gcfg;
    if !json {
        outln!(
            "gpt {} layers, n_embd {}, block_size {}, vocab {}: {} parameters on {}",
            g.n_layer, g.n_embd, g.block_size, g.vocab_size, g.num_params(), gpu.summary.name
        );
        outln!("B {b} x K {k}: set up and {warmup} warm-up steps in {built:.1} s");
    }
    for i in 0..steps.max(1) {
        run.step()?;
        if !json {
            outln!("step {}: {:.1} s", i + 1, run.step_seconds()[i]);
        }
    }
    let (secs, tokens_per_s, gflops) = run.figures()?;
    let ledger = gpu.ledger.snapshot();
    if json {
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({
            "micro_batch": b, "accum_steps": k, "parameters": g.num_params(), "seconds_per_step": secs,
            "step_seconds": run.step_seconds(), "tokens_per_s": tokens_per_s, "gflops": gflops, "ledger": ledger,
            "total_bytes": ledger.total(),
        }))?);
    } else {
        outln!("{tokens_per_s:.1} tokens/s, {gflops:.2} GFLOP/s, {secs:.1} s/step (median)");
        outln!("device memory (byte ledger):\n{ledger}");
    }
    Ok(EXIT_OK)
}
