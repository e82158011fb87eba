//! Checkpoints in safetensors, written atomically (temp file, fsync, rename, fsync directory).
//!
//! `NAME.safetensors` holds the model with PyTorch names and shapes (Linear weight = [out, in]):
//! `wte.weight` [V,C], `wpe.weight` [T,C], `blocks.{i}.ln1.weight|bias` [C],
//! `blocks.{i}.c_attn.weight` [3C,C], `blocks.{i}.c_attn.bias` [3C], `blocks.{i}.attn_proj.weight`
//! [C,C], `blocks.{i}.attn_proj.bias` [C], `blocks.{i}.ln2.weight|bias` [C], `blocks.{i}.c_fc.weight`
//! [4C,C], `blocks.{i}.c_fc.bias` [4C], `blocks.{i}.mlp_proj.weight` [C,4C], `blocks.{i}.mlp_proj.bias`
//! [C], `ln_f.weight|bias` [C]; its metadata holds the model config, the vocabulary, the training
//! config, the step, AdamW's step count and the sampler state. The same file holds the AdamW
//! moments `optimizer.adamw.m` and `optimizer.adamw.v` (flat, in the slab order), so that one
//! atomic rename publishes a complete state and `--resume` continues bit-exactly. Tools that want
//! only the weights skip the `optimizer.` tensors.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::data::text::TextSampler;
use crate::data::tokenizer::Tokenizer;
use crate::reference::gpt::GptConfig;

use super::config::TrainConfig;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write checkpoint {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: tensor {name} is missing")]
    Missing { path: PathBuf, name: String },
    #[error("{path}: tensor {name} has shape {got:?} and dtype {dtype}, expected {want:?} F32")]
    Shape { path: PathBuf, name: String, got: Vec<usize>, want: Vec<usize>, dtype: String },
    #[error("{path}: metadata {key} is missing or invalid{detail}")]
    Metadata { path: PathBuf, key: String, detail: String },
    #[error("{path}: tensor {name} holds {detail}")]
    Values { path: PathBuf, name: String, detail: String },
    #[error("{path} was saved for a different model: checkpoint {found:?}, asked for {wanted:?}")]
    ConfigMismatch { path: PathBuf, found: GptConfig, wanted: GptConfig },
}

/// The PyTorch name and shape of every tensor, with its offset in the flat slab.
pub fn tensor_table(cfg: &GptConfig) -> Vec<(String, Vec<usize>, usize)> {
    let (v, t, c, l) = (cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.n_layer);
    let off = cfg.param_offsets();
    let mut out = vec![
        ("wte.weight".to_string(), vec![v, c], off[0]),
        ("wpe.weight".to_string(), vec![t, c], off[1]),
    ];
    // per-layer tensors: (slab index, name, shape)
    let per: [(usize, &str, Vec<usize>); 12] = [
        (2, "ln1.weight", vec![c]),
        (3, "ln1.bias", vec![c]),
        (4, "c_attn.weight", vec![3 * c, c]),
        (5, "c_attn.bias", vec![3 * c]),
        (6, "attn_proj.weight", vec![c, c]),
        (7, "attn_proj.bias", vec![c]),
        (8, "ln2.weight", vec![c]),
        (9, "ln2.bias", vec![c]),
        (10, "c_fc.weight", vec![4 * c, c]),
        (11, "c_fc.bias", vec![4 * c]),
        (12, "mlp_proj.weight", vec![c, 4 * c]),
        (13, "mlp_proj.bias", vec![c]),
    ];
    for i in 0..l {
        for (slab, name, shape) in &per {
            let n: usize = shape.iter().product();
            out.push((format!("blocks.{i}.{name}"), shape.clone(), off[*slab] + i * n));
        }
    }
    out.push(("ln_f.weight".to_string(), vec![c], off[14]));
    out.push(("ln_f.bias".to_string(), vec![c], off[15]));
    out
}

/// Everything needed to resume.
#[derive(Clone, Debug)]
pub struct TrainState {
    pub gpt: GptConfig,
    pub train: TrainConfig,
    /// The tokenizer (metadata `tokenizer` and, for `char`, its characters in `vocab`).
    pub tokenizer: Tokenizer,
    pub step: u64,
    /// AdamW's step count (optimizer steps applied; skipped non-finite steps do not count).
    pub adam_step: u64,
    pub sampler: TextSampler,
    pub params: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    /// Mixed precision: the dynamic loss scale and the clean windows since its last change, so a
    /// resumed run continues with the scale it had (metadata `loss_scaler`; absent in f32 runs).
    pub loss_scaler: Option<LossScaleState>,
}

/// The state of the dynamic loss scaler (its growth interval comes from the config).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaleState {
    pub scale: f32,
    pub clean: usize,
}

pub(crate) fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Write `bytes` to `path` atomically: a temp file in the same directory, fsync, rename, fsync
/// of the directory. A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let err = |source| CheckpointError::Write { path: path.into(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        // fault injection for the crash test: GRADSCOPE_FAULT=abort-in-write-N dies with half of
        // the N-th checkpoint write on disk
        static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nth = WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if let Ok(fault) = std::env::var("GRADSCOPE_FAULT") {
            if fault.strip_prefix("abort-in-write-").and_then(|n| n.parse::<usize>().ok()) == Some(nth) {
                f.write_all(&bytes[..bytes.len() / 2])?;
                let _ = f.sync_all();
                std::process::abort();
            }
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // a failed write (disk full, a directory in the way) leaves no temp file behind
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub const OPT_M: &str = "optimizer.adamw.m";
pub const OPT_V: &str = "optimizer.adamw.v";

/// Save the whole training state in one file, atomically (the GPT format `Trainer::snapshot`
/// writes).
pub fn save(path: &Path, st: &TrainState) -> Result<(), CheckpointError> {
    // plain data: serializing it cannot fail
    fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
        serde_json::to_string(v).expect("plain data serializes")
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "gradscope-gpt".to_string());
    meta.insert("config".to_string(), json(&st.gpt));
    meta.insert("train_config".to_string(), json(&st.train));
    meta.insert("vocab".to_string(), json(&st.tokenizer.chars()));
    meta.insert("tokenizer".to_string(), st.tokenizer.name().to_string());
    meta.insert("step".to_string(), st.step.to_string());
    meta.insert("adam_step".to_string(), st.adam_step.to_string());
    meta.insert("sampler".to_string(), json(&st.sampler));
    if let Some(ls) = &st.loss_scaler {
        meta.insert("loss_scaler".to_string(), json(ls));
    }
    let n = st.params.len();
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = tensor_table(&st.gpt)
        .into_iter()
        .map(|(name, shape, off)| {
            let len: usize = shape.iter().product();
            (name, shape, &st.params[off..off + len])
        })
        .collect();
    tensors.push((OPT_M.to_string(), vec![n], &st.adam_m));
    tensors.push((OPT_V.to_string(), vec![n], &st.adam_v));
    save_tensors(path, &tensors, meta)
}

pub fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    crate::data::read_file(path, crate::data::MAX_CHECKPOINT_BYTES).map_err(|source| CheckpointError::Read { path: path.into(), source })
}

/// The tensor names of a safetensors header in file order, duplicates kept (a JSON map read into
/// a map keeps only the last of two equal keys).
fn header_names(bytes: &[u8]) -> Option<Vec<String>> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                keys.push(k);
            }
            Ok(keys)
        }
    }
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    let mut de = serde_json::Deserializer::from_slice(header);
    serde::Deserializer::deserialize_map(&mut de, Keys).ok()
}

pub fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(SafeTensors<'a>, HashMap<String, String>), CheckpointError> {
    let corrupt = |e: safetensors::SafeTensorError| CheckpointError::Corrupt { path: path.into(), message: e.to_string() };
    if let Some(names) = header_names(bytes) {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(CheckpointError::Corrupt { path: path.into(), message: format!("tensor {dup} appears twice") });
        }
    }
    let (_, md) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let meta = md.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(corrupt)?;
    Ok((st, meta))
}

/// Tensor `name` of the file, which must be F32 of shape `want`.
fn view<'a>(path: &Path, st: &'a SafeTensors, name: &str, want: &[usize]) -> Result<TensorView<'a>, CheckpointError> {
    let t = st.tensor(name).map_err(|_| CheckpointError::Missing { path: path.into(), name: name.into() })?;
    if t.shape() != want || t.dtype() != Dtype::F32 {
        return Err(CheckpointError::Shape {
            path: path.into(),
            name: name.into(),
            got: t.shape().to_vec(),
            want: want.to_vec(),
            dtype: format!("{:?}", t.dtype()),
        });
    }
    Ok(t)
}

pub fn tensor_f32(path: &Path, st: &SafeTensors, name: &str, want: &[usize]) -> Result<Vec<f32>, CheckpointError> {
    let t = view(path, st, name, want)?;
    // The data may be unaligned in the file buffer: copy bytewise.
    Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Check, before anything is allocated for it, that the file holds every tensor of `table`
/// (name, shape) as F32 and the AdamW moments of their total size; returns that size.
pub fn check_tensors(path: &Path, st: &SafeTensors, table: &[(String, Vec<usize>)]) -> Result<usize, CheckpointError> {
    let mut n = 0usize;
    for (name, shape) in table {
        view(path, st, name, shape)?;
        n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).and_then(|k| n.checked_add(k)).ok_or_else(|| {
            CheckpointError::Metadata { path: path.into(), key: "config".into(), detail: format!(": the size of {name} overflows") }
        })?;
    }
    view(path, st, OPT_M, &[n])?;
    view(path, st, OPT_V, &[n])?;
    Ok(n)
}

/// Refuse non-finite values in `v` (and negative ones where `nonnegative`), naming the tensor.
pub fn check_values(path: &Path, name: &str, v: &[f32], nonnegative: bool) -> Result<(), CheckpointError> {
    let bad = v.iter().filter(|x| !x.is_finite() || (nonnegative && **x < 0.0)).count();
    if bad > 0 {
        let what = if nonnegative { "non-finite or negative" } else { "non-finite" };
        return Err(CheckpointError::Values { path: path.into(), name: name.into(), detail: format!("{bad} {what} values of {}", v.len()) });
    }
    Ok(())
}

pub fn meta_json<T: serde::de::DeserializeOwned>(path: &Path, meta: &HashMap<String, String>, key: &str) -> Result<T, CheckpointError> {
    let raw = meta.get(key).ok_or_else(|| CheckpointError::Metadata { path: path.into(), key: key.into(), detail: String::new() })?;
    serde_json::from_str(raw).map_err(|e| CheckpointError::Metadata { path: path.into(), key: key.into(), detail: format!(": {e}") })
}

/// Load weights into the flat slab of `cfg`. Works for gradscope checkpoints and for any
/// safetensors file with the PyTorch names and shapes (e.g. exported from another framework).
pub fn load_weights(path: &Path, cfg: &GptConfig) -> Result<Vec<f32>, CheckpointError> {
    let bytes = read(path)?;
    let (st, meta) = parse(path, &bytes)?;
    if let Some(raw) = meta.get("config") {
        let found: GptConfig = serde_json::from_str(raw).map_err(|e| CheckpointError::Metadata {
            path: path.into(), key: "config".into(), detail: format!(": {e}"),
        })?;
        if found != *cfg {
            return Err(CheckpointError::ConfigMismatch { path: path.into(), found, wanted: *cfg });
        }
    }
    let mut params = vec![0.0f32; cfg.num_params()];
    for (name, shape, off) in tensor_table(cfg) {
        let v = tensor_f32(path, &st, &name, &shape)?;
        check_values(path, &name, &v, false)?;
        params[off..off + v.len()].copy_from_slice(&v);
    }
    Ok(params)
}

/// The tokenizer of a checkpoint: metadata `tokenizer` (`char`, `gpt2` or `ids`; absent in
/// checkpoints written before gradscope had BPE: `char`), with the characters of `char` in
/// `vocab`. A char vocabulary must have `vocab_size` characters; the others at most `vocab_size`
/// tokens.
pub fn tokenizer_meta(path: &Path, meta: &HashMap<String, String>, vocab_size: usize) -> Result<Tokenizer, CheckpointError> {
    let vocab: String = meta_json(path, meta, "vocab")?;
    let bad = |detail: String| CheckpointError::Metadata { path: path.into(), key: "tokenizer".into(), detail };
    let t = Tokenizer::from_meta(meta.get("tokenizer").map(String::as_str), &vocab, vocab_size).map_err(|e| bad(format!(": {e}")))?;
    match &t {
        Tokenizer::Char(v) if v.len() != vocab_size => Err(CheckpointError::Metadata {
            path: path.into(), key: "vocab".into(), detail: format!(": {} characters for vocab_size {vocab_size}", v.len()),
        }),
        t if t.vocab_size() > vocab_size => Err(bad(format!(": the {} tokenizer has {} tokens, more than vocab_size {vocab_size}", t.name(), t.vocab_size()))),
        _ => Ok(t),
    }
}

/// The model config, tokenizer and training config stored in a gradscope checkpoint.
pub fn read_header(path: &Path) -> Result<(GptConfig, Tokenizer, TrainConfig, u64), CheckpointError> {
    let bytes = read(path)?;
    let (_, meta) = parse(path, &bytes)?;
    let cfg: GptConfig = meta_json(path, &meta, "config")?;
    let train: TrainConfig = meta_json(path, &meta, "train_config")?;
    let step: u64 = meta_json(path, &meta, "step")?;
    let tokenizer = tokenizer_meta(path, &meta, cfg.vocab_size)?;
    Ok((cfg, tokenizer, train, step))
}

/// Load a full training state.
pub fn load(path: &Path) -> Result<TrainState, CheckpointError> {
    let (gpt, tokenizer, train, step) = read_header(path)?;
    let params = load_weights(path, &gpt)?;
    let bytes = read(path)?;
    let (st, meta) = parse(path, &bytes)?;
    let sampler: TextSampler = meta_json(path, &meta, "sampler")?;
    let adam_step: u64 = meta_json(path, &meta, "adam_step")?;
    let n = gpt.num_params();
    let adam_m = tensor_f32(path, &st, OPT_M, &[n])?;
    let adam_v = tensor_f32(path, &st, OPT_V, &[n])?;
    let loss_scaler =
        meta.contains_key("loss_scaler").then(|| meta_json::<LossScaleState>(path, &meta, "loss_scaler")).transpose()?;
    if let Some(ls) = loss_scaler {
        if !(ls.scale.is_finite() && (1.0..=super::loss_scale::MAX_LOSS_SCALE).contains(&ls.scale)) {
            return Err(CheckpointError::Metadata {
                path: path.into(), key: "loss_scaler".into(), detail: format!(": scale {} outside [1, 2^24]", ls.scale),
            });
        }
    }
    Ok(TrainState { gpt, train, tokenizer, step, adam_step, sampler, params, adam_m, adam_v, loss_scaler })
}

/// Write named f32 tensors and metadata as one safetensors file, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])], meta: HashMap<String, String>) -> Result<(), CheckpointError> {
    let werr = |e: safetensors::SafeTensorError| CheckpointError::Write { path: path.into(), source: std::io::Error::other(e.to_string()) };
    let mut views = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        views.push((name.clone(), TensorView::new(Dtype::F32, shape.clone(), f32_bytes(data)).map_err(werr)?));
    }
    let bytes = safetensors::serialize(views, Some(meta)).map_err(werr)?;
    write_atomic(path, &bytes)
}

/// The `format` metadata of a checkpoint (`gradscope-gpt`, `gradscope-cnn`), if any.
pub fn format_of(path: &Path) -> Result<Option<String>, CheckpointError> {
    let bytes = read(path)?;
    let (_, meta) = parse(path, &bytes)?;
    Ok(meta.get("format").cloned())
}
