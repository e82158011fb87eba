//! GPT weights in and out of the PyTorch ecosystem.
//!
//! Names: gradscope's checkpoints name tensors `wte.weight`, `blocks.{i}.c_attn.weight`, ...
//! (`checkpoint::tensor_table`). nanoGPT's state_dict names them `transformer.wte.weight`,
//! `transformer.h.{i}.attn.c_attn.weight`, ... with Linear weights stored [out, in], as gradscope
//! does, and `lm_head.weight` tied to `transformer.wte.weight`. Hugging Face's GPT-2
//! (GPT2LMHeadModel) uses the same names (with or without the `transformer.` prefix) but its
//! Conv1D layers (`c_attn`, `c_proj`, `c_fc`) store weights [in, out]: they are transposed on
//! the way in and out. Transposes and copies are exact: import(export(checkpoint)) gives the
//! checkpoint's weights bit for bit.
//!
//! Import (`init_from`) reads a gradscope checkpoint, a safetensors file with nanoGPT's or
//! Hugging Face's names (F32, F16 or BF16; which one is told by the shape of `c_attn.weight`:
//! [3C, C] Linear, [C, 3C] Conv1D), or a Hugging Face folder (`model.safetensors` +
//! `config.json`, whose sizes are checked against the config). A position embedding with more
//! rows than `block_size` is cropped to its first `block_size` rows (as nanoGPT's
//! `crop_block_size` does), so GPT-2 (1,024 positions) fine-tunes with a short block.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::data::tokenizer::Tokenizer;
use crate::reference::gpt::GptConfig;

use super::checkpoint::{self, CheckpointError};

/// Where exported weights go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// A folder: `config.json` (GPT2LMHeadModel) and `model.safetensors`.
    Hf,
    /// One safetensors file with nanoGPT's state_dict names.
    NanoGpt,
}

/// The ecosystem name (without `transformer.`) of a gradscope tensor, and whether it is a
/// Conv1D weight in Hugging Face's layout.
pub fn ecosystem_name(name: &str) -> (String, bool) {
    let Some(rest) = name.strip_prefix("blocks.") else { return (name.to_string(), false) };
    let (i, t) = rest.split_once('.').expect("blocks.{i}.{tensor}");
    let (hf, conv) = match t {
        "ln1.weight" => ("ln_1.weight", false),
        "ln1.bias" => ("ln_1.bias", false),
        "c_attn.weight" => ("attn.c_attn.weight", true),
        "c_attn.bias" => ("attn.c_attn.bias", false),
        "attn_proj.weight" => ("attn.c_proj.weight", true),
        "attn_proj.bias" => ("attn.c_proj.bias", false),
        "ln2.weight" => ("ln_2.weight", false),
        "ln2.bias" => ("ln_2.bias", false),
        "c_fc.weight" => ("mlp.c_fc.weight", true),
        "c_fc.bias" => ("mlp.c_fc.bias", false),
        "mlp_proj.weight" => ("mlp.c_proj.weight", true),
        "mlp_proj.bias" => ("mlp.c_proj.bias", false),
        other => unreachable!("a GPT tensor {other} without an ecosystem name"),
    };
    (format!("h.{i}.{hf}"), conv)
}

/// `m` [rows, cols] row-major, transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

/// The tensors of `params` under the format's names and layouts.
pub fn export_tensors(cfg: &GptConfig, params: &[f32], format: ExportFormat) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for (name, shape, off) in checkpoint::tensor_table(cfg) {
        let n: usize = shape.iter().product();
        let data = &params[off..off + n];
        let (eco, conv) = ecosystem_name(&name);
        let full = format!("transformer.{eco}");
        if conv && format == ExportFormat::Hf {
            out.push((full, vec![shape[1], shape[0]], transpose(data, shape[0], shape[1])));
        } else {
            out.push((full, shape.clone(), data.to_vec()));
        }
        if name == "wte.weight" && format == ExportFormat::NanoGpt {
            // nanoGPT's state_dict holds the tied lm_head under its own name too
            out.push(("lm_head.weight".into(), shape, data.to_vec()));
        }
    }
    out
}

/// Hugging Face's config.json for `cfg` (GPT2LMHeadModel; `gelu_new` is the tanh GELU).
pub fn hf_config(cfg: &GptConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": true,
        "scale_attn_weights": true,
        "use_cache": true,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float32"
    })
}

fn werr(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Write { path: path.into(), source: std::io::Error::other(e.to_string()) }
}

/// The safetensors bytes of `tensors`, with `format = pt` (transformers requires it).
fn serialize(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], extra: HashMap<String, String>) -> Result<Vec<u8>, CheckpointError> {
    let mut meta = extra;
    meta.insert("format".into(), "pt".into());
    let views = tensors
        .iter()
        .map(|(n, s, d)| safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), checkpoint::f32_bytes(d)).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| werr(path, e))?;
    safetensors::serialize(views, Some(meta)).map_err(|e| werr(path, e))
}

/// Export the GPT checkpoint `ckpt` to `out` (a folder for `Hf`, a file for `NanoGpt`),
/// atomically: a temp file renamed, or a temp folder renamed into place. `overwrite` replaces
/// an existing `out`.
pub fn export(ckpt: &Path, format: ExportFormat, out: &Path, overwrite: bool) -> anyhow::Result<()> {
    let (cfg, tokenizer, train, _) = checkpoint::read_header(ckpt)?;
    let params = checkpoint::load_weights(ckpt, &cfg)?;
    if out.exists() && !overwrite {
        anyhow::bail!("{} exists; pass --overwrite to replace it", out.display());
    }
    let tensors = export_tensors(&cfg, &params, format);
    // what gradscope knows that the formats do not say: the tokenizer
    let mut extra = HashMap::new();
    extra.insert("gradscope_tokenizer".to_string(), tokenizer.name().to_string());
    extra.insert("gradscope_vocab".to_string(), serde_json::to_string(&tokenizer.chars())?);
    match format {
        ExportFormat::NanoGpt => {
            let args = serde_json::json!({
                "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
                "bias": true, "vocab_size": cfg.vocab_size, "dropout": train.dropout,
            });
            extra.insert("model_args".to_string(), args.to_string());
            let bytes = serialize(out, &tensors, extra)?;
            checkpoint::write_atomic(out, &bytes)?;
        }
        ExportFormat::Hf => {
            let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent).map_err(|e| werr(parent, e))?;
            let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("export");
            let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let written = (|| -> anyhow::Result<()> {
                std::fs::create_dir_all(&tmp).map_err(|e| werr(&tmp, e))?;
                let bytes = serialize(&tmp.join("model.safetensors"), &tensors, extra)?;
                checkpoint::write_atomic(&tmp.join("model.safetensors"), &bytes)?;
                let mut config = hf_config(&cfg);
                if tokenizer != Tokenizer::Gpt2 {
                    // not GPT-2's token ids: a GPT-2 tokenizer would read these weights wrongly,
                    // and its <|endoftext|> is no token here
                    config["gradscope_tokenizer"] = tokenizer.name().into();
                    config["bos_token_id"] = serde_json::Value::Null;
                    config["eos_token_id"] = serde_json::Value::Null;
                }
                let json = serde_json::to_string_pretty(&config)?;
                checkpoint::write_atomic(&tmp.join("config.json"), json.as_bytes())?;
                if out.exists() {
                    let old = parent.join(format!(".{name}.old{}", std::process::id()));
                    std::fs::rename(out, &old).map_err(|e| werr(out, e))?;
                    std::fs::rename(&tmp, out).map_err(|e| werr(out, e))?;
                    let _ = if old.is_dir() { std::fs::remove_dir_all(&old) } else { std::fs::remove_file(&old) };
                } else {
                    std::fs::rename(&tmp, out).map_err(|e| werr(out, e))?;
                }
                Ok(())
            })();
            if written.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            written?;
        }
    }
    Ok(())
}

/// A tensor of any float dtype as f32, its shape checked by `ok` (the message says what was
/// expected).
fn tensor_any(path: &Path, st: &SafeTensors, name: &str, want: &str, ok: impl Fn(&[usize]) -> bool) -> Result<(Vec<usize>, Vec<f32>), CheckpointError> {
    let t = st.tensor(name).map_err(|_| CheckpointError::Missing { path: path.into(), name: name.into() })?;
    let shape = t.shape().to_vec();
    let bad = |detail: String| CheckpointError::Values { path: path.into(), name: name.into(), detail };
    if !ok(&shape) {
        return Err(bad(format!("shape {shape:?} where {want} was expected (the config's model does not match these weights)")));
    }
    let d = t.data();
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(bad(format!("dtype {other:?}; F32, F16 or BF16 are read"))),
    };
    checkpoint::check_values(path, name, &v, false)?;
    Ok((shape, v))
}

/// The weights file of `init_from` and, for a Hugging Face folder, its config.json checked.
fn weights_file(path: &Path, cfg: &GptConfig) -> Result<PathBuf, CheckpointError> {
    if !path.is_dir() {
        return Ok(path.into());
    }
    let file = path.join("model.safetensors");
    let cj = path.join("config.json");
    let bad = |key: &str, detail: String| CheckpointError::Metadata { path: cj.clone(), key: key.into(), detail };
    let bytes = crate::data::read_file(&cj, crate::data::MAX_CONFIG_BYTES).map_err(|source| CheckpointError::Read { path: cj.clone(), source })?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad("(the file)", format!(": {e}")))?;
    let get = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
    for (key, want) in [("n_embd", cfg.n_embd), ("n_layer", cfg.n_layer), ("n_head", cfg.n_head), ("vocab_size", cfg.vocab_size)] {
        match get(key) {
            Some(got) if got == want => {}
            got => return Err(bad(key, format!(": {got:?}; the config asks for {want} (set {key} = {})", got.map_or("?".into(), |g| g.to_string())))),
        }
    }
    if let Some(p) = get("n_positions")
        && p < cfg.block_size
    {
        return Err(bad("n_positions", format!(": {p} positions, fewer than block_size {}", cfg.block_size)));
    }
    if let Some(a) = v.get("activation_function").and_then(|a| a.as_str())
        && !["gelu_new", "gelu_pytorch_tanh"].contains(&a)
    {
        return Err(bad("activation_function", format!(": {a:?}; gradscope's GELU is the tanh approximation (gelu_new)")));
    }
    if let Some(eps) = v.get("layer_norm_epsilon").and_then(|a| a.as_f64())
        && eps != 1e-5
    {
        return Err(bad("layer_norm_epsilon", format!(": {eps}; gradscope's LayerNorm uses 1e-5")));
    }
    Ok(file)
}

/// The weights `init_from` names, in the flat slab of `cfg` (see the module comment).
pub fn load_weights(path: &Path, cfg: &GptConfig) -> Result<Vec<f32>, CheckpointError> {
    let file = weights_file(path, cfg)?;
    let bytes = checkpoint::read(&file)?;
    let (st, _) = checkpoint::parse(&file, &bytes)?;
    let names: std::collections::HashSet<String> = st.names().into_iter().map(String::from).collect();
    let prefix = if names.contains("transformer.h.0.ln_1.weight") {
        "transformer."
    } else if names.contains("h.0.ln_1.weight") {
        ""
    } else {
        drop(st);
        return checkpoint::load_weights(&file, cfg);
    };
    let c = cfg.n_embd;
    let attn = format!("{prefix}h.0.attn.c_attn.weight");
    let (shape, _) = tensor_any(&file, &st, &attn, &format!("[{}, {c}] or [{c}, {}]", 3 * c, 3 * c), |s| s == [3 * c, c] || s == [c, 3 * c])?;
    let conv1d = shape == [c, 3 * c];
    let mut params = vec![0.0f32; cfg.num_params()];
    for (name, want, off) in checkpoint::tensor_table(cfg) {
        let (eco, conv) = ecosystem_name(&name);
        let full = format!("{prefix}{eco}");
        let transposed = conv && conv1d;
        let stored: Vec<usize> = if transposed { vec![want[1], want[0]] } else { want.clone() };
        let v = if name == "wpe.weight" {
            let (s, v) = tensor_any(&file, &st, &full, &format!("[>= {}, {c}]", want[0]), |s| s.len() == 2 && s[1] == c && s[0] >= want[0])?;
            let _ = s;
            v[..want[0] * c].to_vec()
        } else {
            let (_, v) = tensor_any(&file, &st, &full, &format!("{stored:?}"), |s| s == stored.as_slice())?;
            if transposed { transpose(&v, stored[0], stored[1]) } else { v }
        };
        params[off..off + v.len()].copy_from_slice(&v);
    }
    Ok(params)
}
