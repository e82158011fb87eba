//! Char-level text data: the vocabulary (sorted distinct characters), the 90/10 train/validation
//! split, the seeded sampler of training windows and the fixed validation windows.
//!
//! Sampler (documented so runs can be reproduced elsewhere): one splitmix64 stream seeded by
//! `data_seed`. Each optimizer step draws its E = B*K samples in order; sample i takes
//! `z = next()` and starts at `offset = z % (n_train - T)`; its inputs are train[offset..offset+T]
//! and its targets train[offset+1..offset+T+1]. With `padded` (variable-length sequences) a second
//! draw gives its length `len = 1 + next() % T`; positions >= len get the pad input 0 and the
//! ignore target, so they carry no loss and no count. The E samples are split in order into
//! micro-batches of B (the last may be short). A true batch of E and B x K = E see the same samples.
//!
//! Tiny Shakespeare is built into the binary: the path `TINY_SHAKESPEARE` (the default of the
//! `data` key, and what older checkpoints store) names that copy from any working directory.

use std::path::{Path, PathBuf};

use crate::reference::layers::IGNORE_INDEX;

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
}

/// splitmix64: the sampler's generator (Steele, Lea, Flood 2014).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A char-level corpus.
#[derive(Clone, Debug)]
pub struct TextData {
    /// Sorted distinct characters; token id = index.
    pub vocab: Vec<char>,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

/// The name of the built-in corpus (the project's `assets/data/tinyshakespeare.txt`).
pub const TINY_SHAKESPEARE: &str = "assets/data/tinyshakespeare.txt";

/// The built-in corpus: Tiny Shakespeare, 1,115,394 characters (see assets/data/README.md).
static TINY_SHAKESPEARE_TEXT: &str = include_str!("../../assets/data/tinyshakespeare.txt");

impl TextData {
    /// Load a text file, read relative to the working directory; `TINY_SHAKESPEARE` is the copy
    /// built into the binary.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        if path == Path::new(TINY_SHAKESPEARE) {
            return Self::from_text(TINY_SHAKESPEARE_TEXT, None);
        }
        let bytes = super::read_file(path, super::MAX_TEXT_BYTES).map_err(|source| DataError::Read { path: path.into(), source })?;
        let text = String::from_utf8(bytes)
            .map_err(|e| DataError::NotText { path: path.into(), offset: e.utf8_error().valid_up_to() })?;
        if text.is_empty() {
            return Err(DataError::Empty(path.into()));
        }
        Self::from_text(&text, None)
    }

    /// Build from text. `vocab` fixes the vocabulary (a checkpoint's); otherwise it is the
    /// text's sorted distinct characters.
    pub fn from_text(text: &str, vocab: Option<&[char]>) -> Result<Self, DataError> {
        let vocab: Vec<char> = match vocab {
            Some(v) => v.to_vec(),
            None => {
                let mut v: Vec<char> = text.chars().collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        };
        if vocab.len() > 65535 {
            return Err(DataError::VocabTooLarge(vocab.len()));
        }
        let tokens = encode(&vocab, text)?;
        let n_train = tokens.len() * 9 / 10;
        Ok(Self { train: tokens[..n_train].to_vec(), val: tokens[n_train..].to_vec(), vocab })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
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
        tokens.iter().map(|&t| self.vocab.get(t as usize).copied().unwrap_or('?')).collect()
    }

    /// Number of non-overlapping validation windows of `block` tokens.
    pub fn val_windows(&self, block: usize) -> usize {
        self.val.len().saturating_sub(1) / block
    }

    /// Validation window i: (inputs, targets), each `block` tokens.
    pub fn val_window(&self, i: usize, block: usize) -> (&[u32], &[u32]) {
        let o = i * block;
        (&self.val[o..o + block], &self.val[o + 1..o + block + 1])
    }
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
    pub fn sample(&mut self, train: &[u32]) -> Sample {
        let t = self.block;
        let z = splitmix64(&mut self.state);
        let o = (z % (train.len() - t) as u64) as usize;
        let mut inputs = train[o..o + t].to_vec();
        let mut targets = train[o + 1..o + t + 1].to_vec();
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
    pub fn window(&mut self, train: &[u32], e: usize) -> Vec<Sample> {
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
