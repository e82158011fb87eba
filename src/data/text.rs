//! Text data: a text file tokenized by the config's tokenizer (char or GPT-2) with the 90/10
//! train/validation split of its tokens, or token files (llm.c shards, nanoGPT's `.bin`; see
//! `shards`); the seeded sampler of training windows and the fixed validation windows.
//!
//! Sampler (documented so runs can be reproduced elsewhere): one splitmix64 stream seeded by
//! `data_seed`. Each optimizer step draws its E = B*K samples in order; sample i takes
//! `z = next()` and starts at `offset = z % (n_train - T)` (n_train: the training split's tokens; token files of a split are one
//! stream in file order); its inputs are train[offset..offset+T]
//! and its targets train[offset+1..offset+T+1]. With `padded` (variable-length sequences) a second
//! draw gives its length `len = 1 + next() % T`; positions >= len get the pad input 0 and the
//! ignore target, so they carry no loss and no count. The E samples are split in order into
//! micro-batches of B (the last may be short). A true batch of E and B x K = E see the same samples.
//!
//! Tiny Shakespeare is built into the binary: the path `TINY_SHAKESPEARE` (the default of the
//! `data` key, and what older checkpoints store) names that copy from any working directory.

use std::path::{Path, PathBuf};

use crate::reference::layers::IGNORE_INDEX;

use super::shards::{ShardMeta, TokenFile, Tokens};
use super::tokenizer::{Tokenizer, TokenizerKind};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read the text file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the text file {0} is empty")]
    Empty(PathBuf),
    #[error("the text file {path} is not UTF-8 text (byte {offset})")]
    NotText { path: PathBuf, offset: usize },
    #[error("the text has {chars} characters: too short for block_size {block} (the validation split needs at least {need})")]
    TooShort { chars: usize, block: usize, need: usize },
    #[error("the text has {0} distinct characters; at most 65535 are supported")]
    VocabTooLarge(usize),
    #[error("character {0:?} is not in the vocabulary")]
    UnknownChar(char),
    #[error("token file {path}: {detail}")]
    TokenFile { path: PathBuf, detail: String },
    #[error("these tokens have no tokenizer (token files without meta.json, tokenizer = \"char\"): they cannot be turned into text or made from it")]
    NoTokenizer,
    #[error("{0}")]
    Vocab(String),
}

/// splitmix64: the sampler's generator (Steele, Lea, Flood 2014).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A corpus: its tokenizer and its two splits.
#[derive(Clone, Debug)]
pub struct TextData {
    pub tokenizer: Tokenizer,
    pub train: Tokens,
    pub val: Tokens,
    /// The model's vocabulary V (at least the tokenizer's and every token id + 1).
    pub vocab_size: usize,
}

/// The name of the built-in corpus (the project's `assets/data/tinyshakespeare.txt`).
pub const TINY_SHAKESPEARE: &str = "assets/data/tinyshakespeare.txt";

/// The built-in corpus: Tiny Shakespeare, 1,115,394 characters (see assets/data/README.md).
pub static TINY_SHAKESPEARE_TEXT: &str = include_str!("../../assets/data/tinyshakespeare.txt");

impl TextData {
    /// Load a char-level text file, read relative to the working directory; `TINY_SHAKESPEARE`
    /// is the copy built into the binary.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        Self::open(path, TokenizerKind::Char, 0)
    }

    /// The text file or token files `data` names (see `shards`), with the config's tokenizer
    /// and `vocab_size` (0 = the tokenizer's). Token files carry their tokenizer in the
    /// `meta.json` that `prepare` writes; without one they are GPT-2 tokens under
    /// `tokenizer = "gpt2"`, and plain ids (with `vocab_size` given) otherwise.
    pub fn open(data: &Path, kind: TokenizerKind, vocab_size: usize) -> Result<Self, DataError> {
        if data != Path::new(TINY_SHAKESPEARE)
            && let Some((train, val, meta)) = super::shards::token_files(data)?
        {
            return Self::from_files(data, &train, &val, meta, kind, vocab_size);
        }
        let text = if data == Path::new(TINY_SHAKESPEARE) {
            TINY_SHAKESPEARE_TEXT.to_string()
        } else {
            let bytes = super::read_file(data, super::MAX_TEXT_BYTES).map_err(|source| DataError::Read { path: data.into(), source })?;
            String::from_utf8(bytes).map_err(|e| DataError::NotText { path: data.into(), offset: e.utf8_error().valid_up_to() })?
        };
        if text.is_empty() {
            return Err(DataError::Empty(data.into()));
        }
        let tokenizer = match kind {
            TokenizerKind::Char => Tokenizer::Char(char_vocab(&text)),
            TokenizerKind::Gpt2 => Tokenizer::Gpt2,
        };
        Self::from_text_with(&text, tokenizer, vocab_size)
    }

    fn from_files(
        data: &Path, train: &[PathBuf], val: &[PathBuf], meta: Option<ShardMeta>, kind: TokenizerKind, vocab_size: usize,
    ) -> Result<Self, DataError> {
        let tokenizer = match (&meta, kind) {
            (Some(m), _) => {
                let t = Tokenizer::from_meta(Some(&m.tokenizer), &m.vocab, 0).map_err(|e| DataError::TokenFile { path: data.join(super::shards::META_FILE), detail: e })?;
                if kind == TokenizerKind::Gpt2 && t != Tokenizer::Gpt2 {
                    return Err(DataError::Vocab(format!(
                        "tokenizer = \"gpt2\" but {} was written with the {} tokenizer", data.display(), t.name()
                    )));
                }
                t
            }
            (None, TokenizerKind::Gpt2) => Tokenizer::Gpt2,
            (None, TokenizerKind::Char) => {
                if vocab_size == 0 {
                    return Err(DataError::Vocab(format!(
                        "{} holds token files that name no tokenizer: set tokenizer = \"gpt2\" for GPT-2 tokens, or give vocab_size \
                         (nanoGPT's meta.pkl has it) to train on the ids",
                        data.display()
                    )));
                }
                Tokenizer::Ids(vocab_size)
            }
        };
        let open = |fs: &[PathBuf]| fs.iter().map(|f| TokenFile::open(f)).collect::<Result<Vec<_>, _>>().map(Tokens::mapped);
        let (train, val) = (open(train)?, open(val)?);
        // the ids of files that `prepare` wrote (meta.json) are its tokenizer's; other files are
        // read once to check them against vocab_size
        Self::checked(tokenizer, train, val, vocab_size, meta.is_none())
    }

    /// Build from text under `vocab` (a checkpoint's), or the text's own characters.
    pub fn from_text(text: &str, vocab: Option<&[char]>) -> Result<Self, DataError> {
        let vocab = vocab.map(|v| v.to_vec()).unwrap_or_else(|| char_vocab(text));
        Self::from_text_with(text, Tokenizer::Char(vocab), 0)
    }

    /// Tokenize `text`; train = the first 90% of its tokens.
    pub fn from_text_with(text: &str, tokenizer: Tokenizer, vocab_size: usize) -> Result<Self, DataError> {
        if let Tokenizer::Char(v) = &tokenizer
            && v.len() > 65535
        {
            return Err(DataError::VocabTooLarge(v.len()));
        }
        let mut tokens = tokenizer.encode(text)?;
        let n_train = tokens.len() * 9 / 10;
        let val = tokens.split_off(n_train);
        Self::with_tokens(tokenizer, tokens.into(), val.into(), vocab_size)
    }

    /// Check the vocabulary size against the tokenizer and the tokens.
    pub fn with_tokens(tokenizer: Tokenizer, train: Tokens, val: Tokens, vocab_size: usize) -> Result<Self, DataError> {
        Self::checked(tokenizer, train, val, vocab_size, true)
    }

    fn checked(tokenizer: Tokenizer, train: Tokens, val: Tokens, vocab_size: usize, scan: bool) -> Result<Self, DataError> {
        let natural = tokenizer.vocab_size();
        let v = if vocab_size == 0 { natural } else { vocab_size };
        if v < natural {
            return Err(DataError::Vocab(format!("vocab_size {v} is smaller than the {} tokenizer's {natural} tokens", tokenizer.name())));
        }
        if v > 65535 {
            return Err(DataError::VocabTooLarge(v));
        }
        let max = if scan { train.max_token()?.max(val.max_token()?) as usize } else { 0 };
        if max >= v {
            return Err(DataError::Vocab(format!("the data holds token id {max}, outside vocab_size {v}")));
        }
        Ok(Self { tokenizer, train, val, vocab_size: v })
    }

    /// A tokenizer with no tokens (generation from a checkpoint).
    pub fn empty(tokenizer: Tokenizer, vocab_size: usize) -> Result<Self, DataError> {
        Self::with_tokens(tokenizer, Vec::new().into(), Vec::new().into(), vocab_size)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Check that both splits can give windows of `block` tokens.
    pub fn check_block(&self, block: usize) -> Result<(), DataError> {
        let need = block + 2;
        if self.train.len() < need || self.val.len() < block + 1 {
            return Err(DataError::TooShort { chars: self.train.len() + self.val.len(), block, need: need * 10 });
        }
        Ok(())
    }

    pub fn decode(&self, tokens: &[u32]) -> String {
        self.tokenizer.decode(tokens)
    }

    /// Number of non-overlapping validation windows of `block` tokens.
    pub fn val_windows(&self, block: usize) -> usize {
        self.val.len().saturating_sub(1) / block
    }

    /// Validation window i: (inputs, targets), each `block` tokens.
    pub fn val_window(&self, i: usize, block: usize) -> (Vec<u32>, Vec<u32>) {
        let w = self.val.copy(i * block, block + 1);
        (w[..block].to_vec(), w[1..].to_vec())
    }
}

/// The sorted distinct characters of `text`.
pub fn char_vocab(text: &str) -> Vec<char> {
    let mut v: Vec<char> = text.chars().collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Tokens of `text` under `vocab`.
pub fn encode(vocab: &[char], text: &str) -> Result<Vec<u32>, DataError> {
    let mut map = std::collections::HashMap::new();
    for (i, c) in vocab.iter().enumerate() {
        map.insert(*c, i as u32);
    }
    text.chars().map(|c| map.get(&c).copied().ok_or(DataError::UnknownChar(c))).collect()
}

/// One training sample: inputs and targets of T tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

/// The seeded sampler. Its whole state is `state` (saved in checkpoints for exact resume).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TextSampler {
    pub state: u64,
    pub block: usize,
    pub padded: bool,
}

impl TextSampler {
    pub fn new(data_seed: u64, block: usize, padded: bool) -> Self {
        Self { state: data_seed, block, padded }
    }

    /// The next sample from `train`.
    pub fn sample(&mut self, train: &Tokens) -> Sample {
        let t = self.block;
        let z = splitmix64(&mut self.state);
        let o = (z % (train.len() - t) as u64) as usize;
        let w = train.copy(o, t + 1);
        let mut inputs = w[..t].to_vec();
        let mut targets = w[1..].to_vec();
        if self.padded {
            let len = 1 + (splitmix64(&mut self.state) % t as u64) as usize;
            for i in len..t {
                inputs[i] = 0;
                targets[i] = IGNORE_INDEX;
            }
        }
        Sample { inputs, targets }
    }

    /// The E samples of one optimizer step, in order.
    pub fn window(&mut self, train: &Tokens, e: usize) -> Vec<Sample> {
        (0..e).map(|_| self.sample(train)).collect()
    }
}

/// Pack up to B samples into a micro-batch [B,T] of inputs and targets. Missing rows (a short
/// micro-batch) get pad inputs and ignore targets: they count for nothing.
pub fn pack(samples: &[Sample], b: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
    assert!(samples.len() <= b, "more samples than the micro-batch holds");
    let mut x = vec![0u32; b * t];
    let mut y = vec![IGNORE_INDEX; b * t];
    for (i, s) in samples.iter().enumerate() {
        x[i * t..(i + 1) * t].copy_from_slice(&s.inputs);
        y[i * t..(i + 1) * t].copy_from_slice(&s.targets);
    }
    (x, y)
}

/// Number of counted targets of a micro-batch.
pub fn count_targets(targets: &[u32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}
