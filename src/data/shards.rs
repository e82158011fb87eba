//! Token files, read through memory maps so a corpus larger than RAM trains:
//! - llm.c's shards: a header of 256 little-endian int32 (magic 20240520, version 1, the token
//!   count, the rest 0), then the tokens as little-endian uint16 (what `gradscope prepare` writes);
//! - nanoGPT's `train.bin`/`val.bin`: uint16 tokens, no header (the model's `vocab_size` must be
//!   given: the files do not say which tokenizer made them).
//!
//! A file is a shard when its first int32 is the magic. (A headerless file whose first two tokens
//! are 55,240 and 308 would read as a shard; GPT-2's vocabulary has no token 55,240.)
//!
//! `data` may name a folder (its `*train*.bin` files, sorted by name, are the training split and its
//! `*val*.bin` files the validation split; `meta.json`, written by `prepare`, names the tokenizer) or
//! one training file (`.../train.bin`, `fineweb_train_000001.bin`), whose validation file is the
//! same name with its last `train` replaced by `val`. The files of a split are one stream of
//! tokens, in order; the sampler draws windows from that stream as from a text file's tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::text::DataError;

/// llm.c's shard magic number.
pub const SHARD_MAGIC: i32 = 20240520;
/// llm.c's shard version for uint16 tokens.
pub const SHARD_VERSION: i32 = 1;
/// Header size: 256 int32.
pub const HEADER_BYTES: usize = 256 * 4;
/// The file `prepare` writes beside its shards, naming the tokenizer.
pub const META_FILE: &str = "meta.json";

/// One memory-mapped token file.
#[derive(Clone, Debug)]
pub struct TokenFile {
    pub path: PathBuf,
    map: Arc<Mmap>,
    /// Byte offset of the first token (HEADER_BYTES for a shard, 0 for a headerless file).
    start: usize,
    /// Tokens in the file.
    pub len: usize,
}

impl TokenFile {
    /// Map `path`, reading its header if it has one.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let err = |detail: String| DataError::TokenFile { path: path.into(), detail };
        let meta = std::fs::metadata(path).map_err(|source| DataError::Read { path: path.into(), source })?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        let f = std::fs::File::open(path).map_err(|source| DataError::Read { path: path.into(), source })?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped is the
        // one hazard, as with every reader of llm.c shards
        let map = unsafe { Mmap::map(&f) }.map_err(|source| DataError::Read { path: path.into(), source })?;
        let int = |i: usize| map.get(4 * i..4 * i + 4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let (start, len) = if int(0) == Some(SHARD_MAGIC) {
            if int(1) != Some(SHARD_VERSION) {
                return Err(err(format!("shard version {:?}; only version 1 (uint16 tokens) is read", int(1).unwrap_or(-1))));
            }
            let count = int(2).unwrap_or(-1);
            let have = map.len().saturating_sub(HEADER_BYTES) / 2;
            if count < 0 || map.len() < HEADER_BYTES || count as usize != have || map.len() % 2 != 0 {
                return Err(err(format!("its header says {count} tokens, the file holds {} bytes after the header", map.len().saturating_sub(HEADER_BYTES))));
            }
            (HEADER_BYTES, count as usize)
        } else {
            if map.len() % 2 != 0 {
                return Err(err(format!("{} bytes: not uint16 tokens (an odd size) and no llm.c header", map.len())));
            }
            (0, map.len() / 2)
        };
        if len == 0 {
            return Err(err("holds no tokens".into()));
        }
        Ok(Self { path: path.into(), map: Arc::new(map), start, len })
    }

    #[inline]
    fn get(&self, i: usize) -> u32 {
        let o = self.start + 2 * i;
        u16::from_le_bytes([self.map[o], self.map[o + 1]]) as u32
    }

    /// The largest token id. Reads the whole file once, through read calls rather than the map,
    /// so that the pages stay out of this process's resident memory.
    pub fn max_token(&self) -> Result<u32, DataError> {
        use std::io::{Read, Seek, SeekFrom};
        let err = |source| DataError::Read { path: self.path.clone(), source };
        let mut f = std::fs::File::open(&self.path).map_err(err)?;
        f.seek(SeekFrom::Start(self.start as u64)).map_err(err)?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f).take(2 * self.len as u64);
        let mut buf = vec![0u8; 1 << 20];
        let mut max = 0u16;
        loop {
            let n = r.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            max = buf[..n & !1].chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).fold(max, u16::max);
        }
        Ok(max as u32)
    }
}

/// A split's tokens: in memory (a text file's) or mapped token files, one stream.
#[derive(Clone, Debug)]
pub enum Tokens {
    Owned(Vec<u32>),
    /// Files in order, with the stream index of each file's first token.
    Mapped(Vec<(usize, TokenFile)>),
}

impl From<Vec<u32>> for Tokens {
    fn from(v: Vec<u32>) -> Self {
        Tokens::Owned(v)
    }
}

impl Tokens {
    pub fn mapped(files: Vec<TokenFile>) -> Self {
        let mut first = 0;
        Tokens::Mapped(
            files
                .into_iter()
                .map(|f| {
                    let at = first;
                    first += f.len;
                    (at, f)
                })
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        match self {
            Tokens::Owned(v) => v.len(),
            Tokens::Mapped(fs) => fs.last().map(|(a, f)| a + f.len).unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens [o, o + n) of the stream (may span files). Panics past the end, as a slice does.
    pub fn copy(&self, o: usize, n: usize) -> Vec<u32> {
        match self {
            Tokens::Owned(v) => v[o..o + n].to_vec(),
            Tokens::Mapped(fs) => {
                assert!(o + n <= self.len(), "tokens {o}..{} past the end {}", o + n, self.len());
                let mut out = Vec::with_capacity(n);
                let mut k = fs.partition_point(|(a, _)| *a <= o) - 1;
                let mut i = o;
                while out.len() < n {
                    let (a, f) = &fs[k];
                    while i < a + f.len && out.len() < n {
                        out.push(f.get(i - a));
                        i += 1;
                    }
                    k += 1;
                }
                out
            }
        }
    }

    /// The largest token id (0 when empty).
    pub fn max_token(&self) -> Result<u32, DataError> {
        match self {
            Tokens::Owned(v) => Ok(v.iter().copied().max().unwrap_or(0)),
            Tokens::Mapped(fs) => fs.iter().try_fold(0, |m, (_, f)| Ok(m.max(f.max_token()?))),
        }
    }
}

/// What `prepare` writes beside its shards.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardMeta {
    /// `gpt2` or `char`.
    pub tokenizer: String,
    /// The characters of a char tokenizer ("" for gpt2).
    #[serde(default)]
    pub vocab: String,
    pub train_tokens: u64,
    pub val_tokens: u64,
}

/// A data folder's training files, validation files and `meta.json`.
pub type SplitFiles = (Vec<PathBuf>, Vec<PathBuf>, Option<ShardMeta>);

/// The token files `data` names: (train files, validation files, the folder's `meta.json`), or
/// None when `data` is a text file.
pub fn token_files(data: &Path) -> Result<Option<SplitFiles>, DataError> {
    let is_bin = data.extension().is_some_and(|e| e == "bin");
    if data.is_dir() {
        let rd = std::fs::read_dir(data).map_err(|source| DataError::Read { path: data.into(), source })?;
        let mut names: Vec<String> = rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().map(String::from)).collect();
        names.sort();
        let pick = |word: &str| -> Vec<PathBuf> {
            names.iter().filter(|n| n.ends_with(".bin") && n.contains(word)).map(|n| data.join(n)).collect()
        };
        let (train, val) = (pick("train"), pick("val"));
        if train.is_empty() || val.is_empty() {
            return Err(DataError::TokenFile {
                path: data.into(),
                detail: format!(
                    "a data folder needs *train*.bin and *val*.bin token files (found {} and {}); `gradscope prepare` writes them",
                    train.len(), val.len()
                ),
            });
        }
        let meta_path = data.join(META_FILE);
        let meta = if meta_path.is_file() {
            let bytes = super::read_file(&meta_path, super::MAX_CONFIG_BYTES).map_err(|source| DataError::Read { path: meta_path.clone(), source })?;
            Some(serde_json::from_slice(&bytes).map_err(|e| DataError::TokenFile { path: meta_path.clone(), detail: e.to_string() })?)
        } else {
            None
        };
        Ok(Some((train, val, meta)))
    } else if is_bin {
        let name = data.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(at) = name.rfind("train") else {
            return Err(DataError::TokenFile {
                path: data.into(),
                detail: "a token file named as `data` must be the training split, with `train` in its name (its validation file has `val` there)".into(),
            });
        };
        let val = data.with_file_name(format!("{}val{}", &name[..at], &name[at + 5..]));
        if !val.is_file() {
            return Err(DataError::TokenFile { path: data.into(), detail: format!("its validation file {} is missing", val.display()) });
        }
        Ok(Some((vec![data.into()], vec![val], None)))
    } else {
        Ok(None)
    }
}

/// Writes llm.c shards of at most `max_tokens` tokens, `{dir}/{split}_{NNNNNN}.bin`, streaming
/// (a buffered temp file whose header gets the count when the shard is complete, then a rename):
/// memory stays flat whatever the corpus size.
pub struct ShardWriter {
    dir: PathBuf,
    split: &'static str,
    max_tokens: usize,
    open: Option<(PathBuf, std::io::BufWriter<std::fs::File>, usize)>,
    index: usize,
    pub written: Vec<PathBuf>,
    pub total: u64,
}

impl ShardWriter {
    pub fn new(dir: &Path, split: &'static str, max_tokens: usize) -> Self {
        Self { dir: dir.into(), split, max_tokens: max_tokens.clamp(1, i32::MAX as usize), open: None, index: 0, written: Vec::new(), total: 0 }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}_{:06}.bin", self.split, self.index))
    }

    pub fn push(&mut self, tokens: &[u32]) -> std::io::Result<()> {
        use std::io::Write;
        for &t in tokens {
            if self.open.is_none() {
                let tmp = self.path().with_extension(format!("tmp{}", std::process::id()));
                let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
                w.write_all(&[0u8; HEADER_BYTES])?;
                self.open = Some((tmp, w, 0));
            }
            let (_, w, n) = self.open.as_mut().expect("opened above");
            let t = u16::try_from(t).map_err(|_| std::io::Error::other(format!("token {t} does not fit uint16")))?;
            w.write_all(&t.to_le_bytes())?;
            *n += 1;
            if *n == self.max_tokens {
                self.close()?;
            }
        }
        Ok(())
    }

    /// Complete the open shard: header, fsync, rename.
    fn close(&mut self) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let Some((tmp, w, n)) = self.open.take() else { return Ok(()) };
        let done = (|| -> std::io::Result<()> {
            let mut f = w.into_inner().map_err(|e| e.into_error())?;
            let mut header = [0u8; 12];
            header[0..4].copy_from_slice(&SHARD_MAGIC.to_le_bytes());
            header[4..8].copy_from_slice(&SHARD_VERSION.to_le_bytes());
            header[8..12].copy_from_slice(&(n as i32).to_le_bytes());
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&header)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.path())
        })();
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.written.push(self.path());
        self.total += n as u64;
        self.index += 1;
        Ok(())
    }

    /// Remove a half-written shard (after an error elsewhere).
    pub fn abandon(&mut self) {
        if let Some((tmp, _, _)) = self.open.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }

    pub fn finish(mut self) -> std::io::Result<(Vec<PathBuf>, u64)> {
        self.close()?;
        Ok((std::mem::take(&mut self.written), self.total))
    }
}
