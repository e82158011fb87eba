//! `gradscope eval CHECKPOINT`: the validation loss of a GPT checkpoint, or the test accuracy of
//! a CNN checkpoint. The model comes from the checkpoint.

use std::path::PathBuf;

use gradscope::gpu::AdapterChoice;
use gradscope::train::Trainer;

use super::out::outln;
use super::{EXIT_OK, device};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint written by `gradscope train` (ckpt.safetensors).
    checkpoint: PathBuf,
    /// GPT: number of validation windows (default: the checkpoint's eval_windows).
    #[arg(long)]
    eval_windows: Option<usize>,
    /// GPT: text file (default: the checkpoint's data).
    #[arg(long)]
    data: Option<String>,
}

pub fn run(choice: &AdapterChoice, args: EvalArgs) -> anyhow::Result<i32> {
    let EvalArgs { checkpoint, eval_windows, data } = args;
    let gpu = device(choice)?;
    let mut ov = vec![];
    if let Some(n) = eval_windows {
        ov.push(format!("--eval_windows={n}"));
    }
    if let Some(d) = data {
        ov.push(format!("--data={d}"));
    }
    let mut t = Trainer::resume(&gpu, &checkpoint, &ov)?;
    let ev = t.evaluate()?;
    let summary = t.model.summary();
    match ev.accuracy {
        Some(a) => outln!(
            "{}: step {}, {}, test accuracy {:.2}% and loss {:.4} over {} {} (running statistics)",
            checkpoint.display(), t.step, summary.description, 100.0 * a, ev.loss, ev.items, summary.unit
        ),
        None => outln!(
            "{}: step {}, validation loss {:.4} over {} windows of {}",
            checkpoint.display(), t.step, ev.loss, ev.items / t.cfg.block_size.max(1), t.cfg.block_size
        ),
    }
    Ok(EXIT_OK)
}
