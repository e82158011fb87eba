//! The gradscope command line: a thin layer over the library.

use clap::{Parser, Subcommand};

use gradscope::bench::matmul::bench_matmul;
use gradscope::gpu::kernels::MatmulVariant;
use gradscope::gpu::{AdapterChoice, Gpu, list_adapters};

#[derive(Parser)]
#[command(name = "gradscope", version, about = "A WebGPU trainer with exact, visible gradient accumulation")]
struct Cli {
    /// Use the adapter whose name contains this (case-insensitive); see `gradscope info`.
    #[arg(long, global = true)]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu finds, with the limits and features that matter.
    Info,
    /// Measure kernel throughput on the selected adapter.
    Bench {
        /// Matrix sizes for the matmul benchmark.
        #[arg(long, value_delimiter = ',', default_value = "256,512,1024")]
        sizes: Vec<usize>,
        /// Seconds of timed work per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let choice = AdapterChoice { name: cli.adapter.clone() };
    match cli.command {
        Command::Info => {
            let adapters = list_adapters();
            if adapters.is_empty() {
                return Err(gradscope::gpu::GpuError::NoAdapter.into());
            }
            for a in &adapters {
                println!("{a}\n");
            }
            let gpu = Gpu::new(&choice)?;
            println!("selected: {} ({:?} kernels)", gpu.summary.name, gpu.kind);
        }
        Command::Bench { sizes, seconds, json } => {
            let gpu = Gpu::new(&choice)?;
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
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({
                    "adapter": gpu.summary.name, "matmul": results }))?);
            }
        }
    }
    Ok(())
}
