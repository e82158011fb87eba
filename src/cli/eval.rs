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
    if gradscope::train::checkpoint::format_of(&checkpoint)?.as_deref() == Some("gradscope-cnn") {
        let mut t = gradscope::train::cnn::CnnTrainer::load(&gpu, &checkpoint)?;
        let ev = t.test()?;
        outln!("{}: step {}, CNN ({:?} norm), test accuracy {:.2}% and loss {:.4} over {} images (running statistics)",
            checkpoint.display(), t.step, t.ccfg.norm, 100.0 * ev.accuracy, ev.loss, ev.images);
        return Ok(EXIT_OK);
    }
    let mut ov = vec![];
    if let Some(n) = eval_windows {
        ov.push(format!("--eval_windows={n}"));
    }
    if let Some(d) = data {
        ov.push("--data".into());
        ov.push(d);
    }
    let mut t = Trainer::resume(&gpu, &checkpoint, &ov)?;
    let n = t.cfg.eval_windows.min(t.data.val_windows(t.cfg.block_size));
    let loss = t.eval()?;
    outln!("{}: step {}, validation loss {loss:.4} over {n} windows of {}", checkpoint.display(), t.step, t.cfg.block_size);
    Ok(EXIT_OK)
}
