//! `gradscope export CKPT --format hf|nanogpt OUT`: a GPT checkpoint's weights for PyTorch
//! (see `gradscope::train::interop`).

use std::path::PathBuf;

use gradscope::train::interop::{ExportFormat, export};

use super::EXIT_OK;
use super::out::outln;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A GPT checkpoint written by `gradscope train` (ckpt.safetensors).
    checkpoint: PathBuf,
    /// `hf`: a folder with config.json and model.safetensors that transformers'
    /// GPT2LMHeadModel.from_pretrained loads; `nanogpt`: one safetensors file with nanoGPT's
    /// state_dict names (model.load_state_dict(safetensors.torch.load_file(OUT))).
    #[arg(long, value_parser = ["hf", "nanogpt"])]
    format: String,
    /// The folder (hf) or file (nanogpt) to write.
    out: PathBuf,
    /// Replace OUT if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: ExportArgs) -> anyhow::Result<i32> {
    let format = if args.format == "hf" { ExportFormat::Hf } else { ExportFormat::NanoGpt };
    export(&args.checkpoint, format, &args.out, args.overwrite)?;
    outln!("wrote {} ({} format)", args.out.display(), args.format);
    Ok(EXIT_OK)
}
