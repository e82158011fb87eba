//! Tokenizers: `char` (the sorted distinct characters of the corpus; token id = index), `gpt2`
//! (GPT-2's byte-level BPE, r50k_base, 50,257 tokens; its ranks are built into the binary by
//! tiktoken-rs, nothing is downloaded), and `ids` (token files with no tokenizer: the model sees
//! ids, `sample` cannot turn them into text).

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use super::text::DataError;

/// GPT-2's vocabulary size.
pub const GPT2_VOCAB: usize = 50257;
/// GPT-2's `<|endoftext|>`, the separator of documents.
pub const GPT2_EOT: u32 = 50256;

/// The config's `tokenizer` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// Characters: the vocabulary is the corpus's sorted distinct characters.
    #[default]
    Char,
    /// GPT-2's byte-level BPE (r50k_base, 50,257 tokens).
    Gpt2,
}

/// A tokenizer with its vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    /// Sorted distinct characters; token id = index.
    Char(Vec<char>),
    /// GPT-2's BPE.
    Gpt2,
    /// Token ids of files that name no tokenizer, with the vocabulary size given.
    Ids(usize),
}

/// The BPE tables, built once per process (~0.2 s).
pub fn gpt2_bpe() -> &'static CoreBPE {
    static BPE: OnceLock<CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::r50k_base().expect("r50k_base's ranks are built into tiktoken-rs"))
}

impl Tokenizer {
    /// The name stored in checkpoints (`tokenizer` metadata): `char`, `gpt2` or `ids`.
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Char(_) => "char",
            Tokenizer::Gpt2 => "gpt2",
            Tokenizer::Ids(_) => "ids",
        }
    }

    /// The tokenizer a checkpoint's metadata names (`vocab` holds the characters of `char`);
    /// a checkpoint without `tokenizer` is char-level (what gradscope wrote before it had BPE).
    pub fn from_meta(name: Option<&str>, vocab: &str, vocab_size: usize) -> Result<Self, String> {
        match name.unwrap_or("char") {
            "char" => Ok(Tokenizer::Char(vocab.chars().collect())),
            "gpt2" => Ok(Tokenizer::Gpt2),
            "ids" => Ok(Tokenizer::Ids(vocab_size)),
            other => Err(format!("unknown tokenizer {other:?} (known: char, gpt2, ids)")),
        }
    }

    /// Tokens the tokenizer can produce (the model's vocabulary may be larger, e.g. GPT-2's
    /// 50,257 padded to 50,304).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(v) => v.len(),
            Tokenizer::Gpt2 => GPT2_VOCAB,
            Tokenizer::Ids(n) => *n,
        }
    }

    /// The characters of a char tokenizer ("" for the others), as checkpoints store them.
    pub fn chars(&self) -> String {
        match self {
            Tokenizer::Char(v) => v.iter().collect(),
            _ => String::new(),
        }
    }

    /// Tokens of `text`. GPT-2 encodes it as ordinary text (a literal `<|endoftext|>` in it is
    /// not the special token).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Char(v) => super::text::encode(v, text),
            Tokenizer::Gpt2 => Ok(gpt2_bpe().encode_ordinary(text)),
            Tokenizer::Ids(_) => Err(DataError::NoTokenizer),
        }
    }

    /// The text of `tokens`. GPT-2 tokens are bytes: a sequence that ends inside a UTF-8
    /// character (possible when sampled) shows U+FFFD for the incomplete bytes. Ids with no
    /// tokenizer are written as `[id]`.
    pub fn decode(&self, tokens: &[u32]) -> String {
        match self {
            Tokenizer::Char(v) => tokens.iter().map(|&t| v.get(t as usize).copied().unwrap_or('?')).collect(),
            Tokenizer::Gpt2 => {
                let bpe = gpt2_bpe();
                // ids past the vocabulary (a padded model) decode as U+FFFD
                let mut bytes = Vec::new();
                for &t in tokens {
                    match bpe.decode_bytes(&[t]) {
                        Ok(b) => bytes.extend_from_slice(&b),
                        Err(_) => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Tokenizer::Ids(_) => tokens.iter().map(|t| format!("[{t}]")).collect(),
        }
    }
}

