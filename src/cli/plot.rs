//! `gradscope plot RUN_DIR`: a run's curves (loss, validation, gradient norm, the noise scale
//! when the run measured it, memory) as PNG and SVG, without the app.

use std::path::PathBuf;

use gradscope::plot::{DEFAULT_SIZE, RunCurves, write_run_plots};

use super::EXIT_OK;
use super::out::outln;

#[derive(clap::Args)]
pub struct PlotArgs {
    /// A run's output directory (its out_dir, holding metrics.jsonl or metrics.csv).
    run_dir: PathBuf,
    /// Where to write curves.png and curves.svg [default: RUN_DIR].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Picture width in pixels.
    #[arg(long, default_value_t = DEFAULT_SIZE.0)]
    width: u32,
    /// Picture height in pixels.
    #[arg(long, default_value_t = DEFAULT_SIZE.1)]
    height: u32,
}

pub fn run(args: PlotArgs) -> anyhow::Result<i32> {
    let curves = RunCurves::load(&args.run_dir)?;
    let dir = args.out.unwrap_or_else(|| args.run_dir.clone());
    for p in write_run_plots(&curves, &dir.join("curves"), (args.width, args.height))? {
        outln!("wrote {}", p.display());
    }
    Ok(EXIT_OK)
}
