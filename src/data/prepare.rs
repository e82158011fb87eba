//! `gradscope prepare`: text files to llm.c token shards, streaming (memory stays flat whatever
//! the corpus size).
//!
//! Each input file is one document (`assets/data/tinyshakespeare.txt` names the built-in copy from
//! any directory) (a folder's regular files, sorted by name, are its documents);
//! GPT-2's `<|endoftext|>` separates consecutive documents. The first `1 - val_fraction` of the
//! input bytes go to the training split (`train_NNNNNN.bin`), the rest to the validation split
//! (`val_NNNNNN.bin`), each in shards of at most `shard_tokens` tokens; `meta.json` names the
//! tokenizer and the token counts.
//!
//! The text is read in chunks and each chunk tokenized on its own. A chunk ends only where GPT-2's
//! pre-tokenizer would split anyway: after a `\n` with an ASCII non-space byte on each side (the
//! pattern's whitespace runs, letters, numbers and punctuation never cross such a newline), so the
//! tokens equal those of the whole text tokenized at once (tested on Tiny Shakespeare). The one
//! exception: when no such newline is within a chunk of the train/validation split, the split cuts
//! the text at the character boundary nearest after it.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::shards::{META_FILE, ShardMeta, ShardWriter};
use super::tokenizer::{GPT2_EOT, Tokenizer, TokenizerKind};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not UTF-8 text: invalid byte at offset {offset}")]
    NotText { path: PathBuf, offset: u64 },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// What to prepare.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Text files and folders of text files.
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub tokenizer: TokenizerKind,
    /// The share of the input bytes that goes to the validation split.
    pub val_fraction: f64,
    /// Tokens per shard at most (llm.c: 100M).
    pub shard_tokens: usize,
    /// Bytes read and tokenized at a time.
    pub chunk_bytes: usize,
    /// Replace token files already in `out`.
    pub overwrite: bool,
}

impl PrepareOptions {
    pub fn new(inputs: Vec<PathBuf>, out: PathBuf) -> Self {
        Self { inputs, out, tokenizer: TokenizerKind::Gpt2, val_fraction: 0.1, shard_tokens: 100_000_000, chunk_bytes: 1 << 20, overwrite: false }
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub struct PrepareReport {
    pub documents: usize,
    pub bytes: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub shards: Vec<PathBuf>,
    pub seconds: f64,
}

/// The documents of `inputs`: files as given, a folder's regular files sorted by name (hidden
/// ones skipped); each with its size.
pub fn documents(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, u64)>, PrepareError> {
    let mut docs = Vec::new();
    let size = |p: &Path| -> Result<std::fs::Metadata, PrepareError> { std::fs::metadata(p).map_err(|source| PrepareError::Read { path: p.into(), source }) };
    for input in inputs {
        if is_built_in(input) {
            docs.push((input.clone(), super::text::TINY_SHAKESPEARE_TEXT.len() as u64));
            continue;
        }
        let m = size(input)?;
        if m.is_dir() {
            let rd = std::fs::read_dir(input).map_err(|source| PrepareError::Read { path: input.clone(), source })?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
                .collect();
            files.sort();
            for f in files {
                let len = size(&f)?.len();
                docs.push((f, len));
            }
        } else if m.is_file() {
            docs.push((input.clone(), m.len()));
        } else {
            return Err(PrepareError::Read { path: input.clone(), source: std::io::Error::other("not a regular file or a folder") });
        }
    }
    if docs.is_empty() {
        return Err(PrepareError::Invalid("no input files".into()));
    }
    Ok(docs)
}

/// `assets/data/tinyshakespeare.txt` names the copy built into the binary (as `data` does) when
/// there is no such file.
fn is_built_in(p: &Path) -> bool {
    p == Path::new(super::text::TINY_SHAKESPEARE) && !p.exists()
}

/// Whether a chunk may end just before `buf[p]`: after a `\n` with ASCII non-space bytes on both
/// sides.
fn safe(buf: &[u8], p: usize) -> bool {
    let plain = |b: u8| b.is_ascii() && !b.is_ascii_whitespace();
    p >= 2 && p < buf.len() && buf[p - 1] == b'\n' && plain(buf[p - 2]) && plain(buf[p])
}

/// Tokenize `opts.inputs` into shards under `opts.out`; `progress` gets the input bytes done.
pub fn prepare(opts: &PrepareOptions, progress: &mut dyn FnMut(u64)) -> Result<PrepareReport, PrepareError> {
    let start = std::time::Instant::now();
    if opts.tokenizer != TokenizerKind::Gpt2 {
        return Err(PrepareError::Invalid(
            "prepare writes GPT-2 tokens (--tokenizer gpt2); a char-level model trains from the text file itself (data = FILE)".into(),
        ));
    }
    if !(0.0..1.0).contains(&opts.val_fraction) || opts.val_fraction <= 0.0 {
        return Err(PrepareError::Invalid(format!("--val-fraction {} must be in (0, 1)", opts.val_fraction)));
    }
    let docs = documents(&opts.inputs)?;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PrepareError::Write { path, source }
    };
    std::fs::create_dir_all(&opts.out).map_err(werr(&opts.out))?;
    // token files already there would be read with the new ones
    let old: Vec<PathBuf> = std::fs::read_dir(&opts.out)
        .map_err(|source| PrepareError::Read { path: opts.out.clone(), source })?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| (n.ends_with(".bin") && (n.contains("train") || n.contains("val"))) || n == META_FILE))
        .collect();
    if !old.is_empty() {
        if !opts.overwrite {
            return Err(PrepareError::Invalid(format!(
                "{} already holds token files ({}); pass --overwrite to replace them",
                opts.out.display(), old[0].display()
            )));
        }
        for p in &old {
            std::fs::remove_file(p).map_err(werr(p))?;
        }
    }
    let total: u64 = docs.iter().map(|d| d.1).sum();
    let split_at = ((total as f64) * (1.0 - opts.val_fraction)).round() as u64;
    let bpe = super::tokenizer::gpt2_bpe();
    let mut train = ShardWriter::new(&opts.out, "train", opts.shard_tokens);
    let mut val = ShardWriter::new(&opts.out, "val", opts.shard_tokens);
    let result = (|| -> Result<(), PrepareError> {
        let mut done: u64 = 0;
        for (i, (path, _)) in docs.iter().enumerate() {
            let rerr = |source| PrepareError::Read { path: path.clone(), source };
            let f: Box<dyn Read> = if is_built_in(path) {
                Box::new(super::text::TINY_SHAKESPEARE_TEXT.as_bytes())
            } else {
                Box::new(std::fs::File::open(path).map_err(rerr)?)
            };
            let mut reader = std::io::BufReader::with_capacity(1 << 16, f);
            if i > 0 {
                let w = if done < split_at { &mut train } else { &mut val };
                w.push(&[GPT2_EOT]).map_err(werr(&opts.out))?;
            }
            let mut buf: Vec<u8> = Vec::new();
            // the file offset of buf[0]
            let mut pos: u64 = 0;
            let mut eof = false;
            let mut want = opts.chunk_bytes.max(16);
            loop {
                while !eof && buf.len() < want {
                    let have = buf.len();
                    buf.resize(want, 0);
                    let n = reader.read(&mut buf[have..]).map_err(rerr)?;
                    buf.truncate(have + n);
                    eof = n == 0;
                }
                if buf.is_empty() {
                    break;
                }
                // the chunk ends at the train/validation split when that falls inside it: the last
                // safe place before it, else the first after it
                let to_split = split_at.saturating_sub(done);
                let cut = if to_split > 0 && to_split < buf.len() as u64 {
                    let at = to_split as usize;
                    let near = (1..=at).rev().find(|&p| safe(&buf, p)).or_else(|| (at..buf.len()).find(|&p| safe(&buf, p)));
                    // no safe place in the buffer: the split cuts the text at the character
                    // boundary at or after it (the only place where the tokens may then differ
                    // from the whole text's)
                    Some(near.unwrap_or_else(|| (at..buf.len()).find(|&p| (buf[p] & 0xC0) != 0x80).unwrap_or(buf.len())))
                } else if eof {
                    Some(buf.len())
                } else {
                    (1..buf.len()).rev().find(|&p| safe(&buf, p))
                };
                let cut = match cut {
                    Some(c) => c,
                    // all that is left, at the end of the file
                    None if eof => buf.len(),
                    // no safe place yet (a very long line): read more
                    None => {
                        want = buf.len() * 2;
                        continue;
                    }
                };
                let w = if done < split_at { &mut train } else { &mut val };
                encode_chunk(&buf[..cut], path, pos, bpe, w, &opts.out)?;
                done += cut as u64;
                pos += cut as u64;
                progress(done);
                buf.drain(..cut);
                want = opts.chunk_bytes.max(16);
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        train.abandon();
        val.abandon();
        return Err(e);
    }
    let (mut shards, train_tokens) = train.finish().map_err(werr(&opts.out))?;
    let (val_shards, val_tokens) = val.finish().map_err(werr(&opts.out))?;
    if train_tokens == 0 || val_tokens == 0 {
        return Err(PrepareError::Invalid(format!(
            "the input is too small to split: {train_tokens} training and {val_tokens} validation tokens"
        )));
    }
    shards.extend(val_shards);
    let meta = ShardMeta { tokenizer: Tokenizer::Gpt2.name().into(), vocab: String::new(), train_tokens, val_tokens };
    let meta_path = opts.out.join(META_FILE);
    let json = serde_json::to_string_pretty(&meta).expect("plain data serializes");
    crate::train::checkpoint::write_atomic(&meta_path, json.as_bytes())
        .map_err(|e| PrepareError::Write { path: meta_path.clone(), source: std::io::Error::other(format!("{e:#}")) })?;
    Ok(PrepareReport { documents: docs.len(), bytes: total, train_tokens, val_tokens, shards, seconds: start.elapsed().as_secs_f64() })
}

fn encode_chunk(
    bytes: &[u8], path: &Path, pos: u64, bpe: &tiktoken_rs::CoreBPE, w: &mut ShardWriter, out: &Path,
) -> Result<(), PrepareError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| PrepareError::NotText { path: path.into(), offset: pos + e.valid_up_to() as u64 })?;
    let tokens = bpe.encode_ordinary(text);
    w.push(&tokens).map_err(|source| PrepareError::Write { path: out.into(), source })
}
