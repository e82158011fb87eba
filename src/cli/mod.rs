//! The command line: the clap definitions, the dispatch to one module per subcommand, the exit
//! codes, and the output helpers every subcommand prints through.

pub mod out;

mod app;
mod bench;
mod config;
mod eval;
mod export;
mod info;
mod plan;
mod plot;
mod prepare;
mod sample;
mod train;
mod verify;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use gradscope::gpu::{AdapterChoice, Gpu};

pub use config::ConfigFlags;

/// Exit code: done (and `--help`, `--version`, or a closed stdout pipe).
pub const EXIT_OK: i32 = 0;
/// Exit code: an error (bad config value, missing file, device error, ...), printed on stderr.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: `verify` ran and the check failed.
pub const EXIT_VERIFY_FAILED: i32 = 2;
/// Exit code: a run stopped by Ctrl-C or SIGTERM after saving its checkpoint.
pub const EXIT_INTERRUPTED: i32 = 3;
/// Exit code: the command line could not be parsed (unknown flag, a value of the wrong type);
/// EX_USAGE of sysexits.h.
pub const EXIT_USAGE: i32 = 64;

const AFTER_HELP: &str = "\
Every flag may be written with - or _ (--max-steps 3, --max_steps=3); `gradscope train --help` lists
every config key with its default.

Exit codes: 0 done, 1 error, 2 `verify` failed, 3 interrupted (checkpoint saved; continue with
--resume), 64 usage error (unknown flag, invalid value).

Logging: RUST_LOG=wgpu=warn (or info, debug) shows wgpu's and naga's messages on stderr.";

#[derive(Parser)]
#[command(name = "gradscope", version, about = "A WebGPU trainer with exact, visible gradient accumulation", after_help = AFTER_HELP)]
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
    App(app::AppArgs),
    /// List every adapter wgpu finds, with the limits and features that matter.
    Info,
    /// Train headless (the GPT, or the CNN with --model cnn): defaults, then --config FILE
    /// (TOML), then the config keys given as flags.
    Train(train::TrainArgs),
    /// Print the validation loss (GPT) or the test accuracy (CNN) of a checkpoint.
    Eval(eval::EvalArgs),
    /// Generate text from a GPT checkpoint.
    Sample(sample::SampleArgs),
    /// Write a GPT checkpoint's weights for PyTorch: a Hugging Face GPT-2 folder or nanoGPT's
    /// state_dict as safetensors.
    Export(export::ExportArgs),
    /// Tokenize text files into llm.c token shards (GPT-2 BPE) for `--data DIR`.
    Prepare(prepare::PrepareArgs),
    /// Check that micro-batch x K trains like the true batch (run it in CI; exit 2 on failure);
    /// writes verify.json and (GPT) verify.png, the validation curves, into out_dir.
    Verify(verify::VerifyArgs),
    /// Predict device memory per category and choose the largest micro-batch under a budget.
    Plan(plan::PlanArgs),
    /// Draw a run's curves (loss, validation, gradient norm, noise scale, memory) from its
    /// metrics as PNG and SVG.
    Plot(plot::PlotArgs),
    /// Measure the matmul kernels and end-to-end GPT and CNN training on the selected adapter.
    Bench(bench::BenchArgs),
}

/// The command line's definition: the derived one, with every long flag also accepted with
/// underscores, and a flag given twice taking its last value.
fn command() -> clap::Command {
    fn adjust(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.args_override_self(true).mut_args(|arg| match arg.get_long().map(|l| l.replace('-', "_")) {
            Some(snake) if Some(snake.as_str()) != arg.get_long() => arg.alias(snake),
            _ => arg,
        });
        cmd.mut_subcommands(adjust)
    }
    adjust(Cli::command())
}

/// Parse, run, and return the exit code.
pub fn main() -> i32 {
    init_logging();
    let cli = match command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => {
            // help and version go to stdout with code 0; usage errors to stderr
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            out::flush();
            eprintln!("error: {e:#}");
            EXIT_ERROR
        }
    };
    out::flush();
    code
}

/// `RUST_LOG` as env_logger reads it; without it, warnings and errors of gradscope and errors of
/// the graphics stack (whose warnings on software adapters are many and harmless).
fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("warn,wgpu_core=error,wgpu_hal=error,naga=error");
    env_logger::Builder::from_env(env).format_timestamp(None).init();
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let choice = AdapterChoice { name: cli.adapter.clone() };
    match cli.command.unwrap_or(Command::App(Default::default())) {
        Command::App(args) => app::run(&cli.adapter, args),
        Command::Info => info::run(&choice),
        Command::Train(args) => train::run(&choice, args),
        Command::Eval(args) => eval::run(&choice, args),
        Command::Sample(args) => sample::run(&choice, args),
        Command::Prepare(args) => prepare::run(args),
        Command::Export(args) => export::run(args),
        Command::Verify(args) => verify::run(&choice, args),
        Command::Plan(args) => plan::run(&choice, &cli.adapter, args),
        Command::Bench(args) => bench::run(&choice, args),
        Command::Plot(args) => plot::run(args),
    }
}

/// The device of the selected adapter.
fn device(choice: &AdapterChoice) -> anyhow::Result<Gpu> {
    Ok(Gpu::new(choice)?)
}
