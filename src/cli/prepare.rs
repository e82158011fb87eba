//! `gradscope prepare INPUT... --out DIR`: text files to llm.c token shards (see
//! `gradscope::data::prepare`), with a progress bar over the input bytes on a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;

use gradscope::data::prepare::{PrepareOptions, prepare};
use gradscope::data::tokenizer::TokenizerKind;

use super::EXIT_OK;
use super::out::outln;

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// Text files, or folders of text files; each file is one document (GPT-2's <|endoftext|>
    /// goes between documents).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The folder for the shards (train_000000.bin, ..., val_000000.bin) and meta.json.
    #[arg(long)]
    out: PathBuf,
    /// The tokenizer: gpt2 (GPT-2's BPE, 50,257 tokens).
    #[arg(long, default_value = "gpt2", value_parser = ["gpt2"])]
    tokenizer: String,
    /// The share of the input bytes (the last ones) that goes to the validation split.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Tokens per shard at most (llm.c's 100M).
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: usize,
    /// Replace the token files already in --out.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: PrepareArgs) -> anyhow::Result<i32> {
    let mut opts = PrepareOptions::new(args.inputs, args.out);
    opts.tokenizer = match args.tokenizer.as_str() {
        "gpt2" => TokenizerKind::Gpt2,
        _ => TokenizerKind::Char,
    };
    opts.val_fraction = args.val_fraction;
    opts.shard_tokens = args.shard_tokens;
    opts.overwrite = args.overwrite;
    let total: u64 = gradscope::data::prepare::documents(&opts.inputs)?.iter().map(|d| d.1).sum();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {binary_bytes}/{binary_total_bytes}  {binary_bytes_per_sec}  [{elapsed_precise} < {eta_precise}]")
                .expect("a valid template"),
        );
        b
    });
    let result = prepare(&opts, &mut |done| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let r = result?;
    let tokens = r.train_tokens + r.val_tokens;
    outln!(
        "{} documents, {} bytes -> {} tokens ({} train, {} validation) in {} shards under {}",
        r.documents, r.bytes, tokens, r.train_tokens, r.val_tokens, r.shards.len(), opts.out.display()
    );
    outln!("{:.2} s, {:.0} tokens/s", r.seconds, tokens as f64 / r.seconds.max(1e-9));
    Ok(EXIT_OK)
}
