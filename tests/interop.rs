//! Checkpoints in and out: `export --format hf` gives a folder whose logits, computed by an
//! independent numpy GPT-2 forward pass (tests/gpt2_numpy.py, transformers' conventions), match
//! gradscope's within 1e-4; import(export(checkpoint)) is bit-exact for both formats and for
//! Hugging Face's unprefixed names; F16 weights, position cropping and mismatched configs.

mod common;

use std::collections::HashMap;
use std::path::Path;

use gradscope::data::text::TextSampler;
use gradscope::data::tokenizer::Tokenizer;
use gradscope::reference::gpt::GptConfig;
use gradscope::reference::layers::IGNORE_INDEX;
use gradscope::train::TrainConfig;
use gradscope::train::checkpoint::{self, TrainState};
use gradscope::train::interop::{self, ExportFormat};

const VOCAB: &str = "\n !,.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A checkpoint with random weights of a size that makes every tensor matter (std ~0.3 for the
/// matrices, LayerNorm gains around 1, biases non-zero).
fn random_checkpoint(dir: &Path, rng: &mut common::Rng) -> (std::path::PathBuf, GptConfig, Vec<f32>) {
    let gpt = GptConfig { vocab_size: VOCAB.chars().count(), block_size: 16, n_layer: 2, n_head: 4, n_embd: 32 };
    let n = gpt.num_params();
    let mut params = Vec::with_capacity(n);
    for (i, size) in gpt.param_sizes().iter().enumerate() {
        for _ in 0..*size {
            let u = rng.uniform();
            params.push(match i {
                2 | 8 | 14 => 1.0 + 0.3 * u, // LayerNorm gains
                3 | 5 | 7 | 9 | 11 | 13 | 15 => 0.2 * u, // biases
                _ => 0.5 * u,
            });
        }
    }
    let train = TrainConfig { n_layer: 2, n_head: 4, n_embd: 32, block_size: 16, ..TrainConfig::default() };
    let st = TrainState {
        gpt, train, tokenizer: Tokenizer::Char(VOCAB.chars().collect()), step: 1, adam_step: 1,
        sampler: TextSampler::new(1, 16, false), params: params.clone(), adam_m: vec![0.0; n], adam_v: vec![0.0; n], loss_scaler: None,
    };
    let p = dir.join("ckpt.safetensors");
    checkpoint::save(&p, &st).unwrap();
    (p, gpt, params)
}

fn python_has_numpy() -> bool {
    std::process::Command::new("python3").args(["-c", "import numpy, safetensors"]).status().is_ok_and(|s| s.success())
}

#[test]
fn hf_export_matches_a_numpy_gpt2_forward_pass() {
    if !python_has_numpy() {
        // CI installs them (.ci/run); elsewhere try once
        let s = std::process::Command::new("python3").args(["-m", "pip", "install", "--quiet", "numpy", "safetensors"]).status();
        assert!(s.is_ok_and(|s| s.success()) && python_has_numpy(), "this test needs python3 with numpy and safetensors: python3 -m pip install numpy safetensors");
    }
    let mut rng = common::Rng::fresh("hf_export_matches_a_numpy_gpt2_forward_pass");
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, gpt, _) = random_checkpoint(dir.path(), &mut rng);
    let out = dir.path().join("hf");
    interop::export(&ckpt, ExportFormat::Hf, &out, false).unwrap();

    // gradscope's logits (the device forward pass of `sample`) on fresh random sequences
    let g = common::gpu();
    let mut m = gradscope::train::sample::load(&g, &ckpt).unwrap();
    let (b, t, v) = (3, gpt.block_size, gpt.vocab_size);
    let ids: Vec<Vec<u32>> = (0..b).map(|_| (0..t).map(|_| (rng.next_u64() % v as u64) as u32).collect()).collect();
    let mut ours = Vec::new();
    for seq in &ids {
        m.gpu_model.forward_only(seq, &vec![IGNORE_INDEX; t]);
        ours.extend(m.gpu_model.read_logits().unwrap());
    }
    let ids_path = dir.path().join("ids.json");
    std::fs::write(&ids_path, serde_json::to_string(&ids).unwrap()).unwrap();
    let logits_path = dir.path().join("logits.f32");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gpt2_numpy.py");
    let o = std::process::Command::new("python3").arg(&script).arg(&out).arg(&ids_path).arg(&logits_path).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&logits_path).unwrap();
    let theirs: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(theirs.len(), ours.len());
    let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = theirs.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    println!("max |logit difference| {max:.3e} (logits up to {scale:.2})");
    assert!(scale > 1.0, "logits too small to test anything: {scale}");
    assert!(max < 1e-4, "gradscope's logits differ from the numpy GPT-2 by {max}");
}

/// A safetensors file's tensors with `rename` applied to names and `conv` to the data.
fn rewrite(src: &Path, dst: &Path, rename: impl Fn(&str) -> Option<String>, f16: bool) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, t) in st.tensors() {
        let Some(name) = rename(&n) else { continue };
        let data = if f16 {
            t.data().chunks_exact(4).flat_map(|c| half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()).collect()
        } else {
            t.data().to_vec()
        };
        owned.push((name, t.shape().to_vec(), data));
    }
    let dtype = if f16 { safetensors::Dtype::F16 } else { safetensors::Dtype::F32 };
    let views: Vec<_> = owned.iter().map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), d).unwrap())).collect();
    std::fs::write(dst, safetensors::serialize(views, Some(HashMap::from([("format".to_string(), "pt".to_string())]))).unwrap()).unwrap();
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn import_of_export_is_bit_exact_and_bad_weights_are_named() {
    let mut rng = common::Rng::fresh("import_of_export_is_bit_exact");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ckpt, gpt, params) = random_checkpoint(d, &mut rng);
    interop::export(&ckpt, ExportFormat::Hf, &d.join("hf"), false).unwrap();
    interop::export(&ckpt, ExportFormat::NanoGpt, &d.join("nano.safetensors"), false).unwrap();
    // the layouts: nanoGPT Linear [out, in] with lm_head, Hugging Face Conv1D [in, out]
    let nano = std::fs::read(d.join("nano.safetensors")).unwrap();
    let nano = safetensors::SafeTensors::deserialize(&nano).unwrap();
    assert_eq!(nano.tensor("transformer.h.1.attn.c_attn.weight").unwrap().shape(), [96, 32]);
    assert_eq!(nano.tensor("transformer.h.0.mlp.c_proj.weight").unwrap().shape(), [32, 128]);
    assert_eq!(nano.tensor("lm_head.weight").unwrap().data(), nano.tensor("transformer.wte.weight").unwrap().data());
    let hf = std::fs::read(d.join("hf/model.safetensors")).unwrap();
    let hf = safetensors::SafeTensors::deserialize(&hf).unwrap();
    assert_eq!(hf.tensor("transformer.h.1.attn.c_attn.weight").unwrap().shape(), [32, 96]);
    assert!(hf.tensor("lm_head.weight").is_err(), "tied: transformers' save_pretrained leaves it out");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("hf/config.json")).unwrap()).unwrap();
    assert_eq!((cfg["activation_function"].as_str(), cfg["n_positions"].as_u64(), cfg["n_ctx"].as_u64()), (Some("gelu_new"), Some(16), Some(16)));

    for path in [d.join("hf"), d.join("hf/model.safetensors"), d.join("nano.safetensors"), ckpt.clone()] {
        let got = interop::load_weights(&path, &gpt).unwrap();
        assert!(bits(&got) == bits(&params), "{}: not bit-exact", path.display());
    }
    // Hugging Face's hub files have no `transformer.` prefix
    rewrite(&d.join("hf/model.safetensors"), &d.join("bare.safetensors"), |n| Some(n.trim_start_matches("transformer.").to_string()), false);
    assert!(bits(&interop::load_weights(&d.join("bare.safetensors"), &gpt).unwrap()) == bits(&params));
    // F16 weights load as their f32 values
    rewrite(&d.join("nano.safetensors"), &d.join("half.safetensors"), |n| Some(n.to_string()), true);
    let h = interop::load_weights(&d.join("half.safetensors"), &gpt).unwrap();
    let want: Vec<f32> = params.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    assert!(bits(&h) == bits(&want));
    // a longer position embedding is cropped to block_size
    let short = GptConfig { block_size: 8, ..gpt };
    let cropped = interop::load_weights(&d.join("hf"), &short).unwrap();
    let (o_long, o_short) = (gpt.param_offsets(), short.param_offsets());
    assert_eq!(&cropped[o_short[1]..o_short[1] + 8 * 32], &params[o_long[1]..o_long[1] + 8 * 32]);
    assert_eq!(&cropped[o_short[2]..], &params[o_long[2]..]);

    // errors name the key or the tensor
    let e = interop::load_weights(&d.join("hf"), &GptConfig { n_layer: 3, ..gpt }).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("n_layer"), "{e}");
    let e = interop::load_weights(&d.join("hf"), &GptConfig { block_size: 32, ..gpt }).unwrap_err().to_string();
    assert!(e.contains("n_positions") && e.contains("block_size 32"), "{e}");
    rewrite(&d.join("nano.safetensors"), &d.join("holed.safetensors"), |n| (n != "transformer.h.1.ln_2.bias").then(|| n.to_string()), false);
    let e = interop::load_weights(&d.join("holed.safetensors"), &gpt).unwrap_err().to_string();
    assert!(e.contains("transformer.h.1.ln_2.bias") && e.contains("missing"), "{e}");
    let e = interop::load_weights(&d.join("nano.safetensors"), &GptConfig { n_embd: 64, n_head: 4, ..gpt }).unwrap_err().to_string();
    assert!(e.contains("transformer.h.0.attn.c_attn.weight") && e.contains("[96, 32] where [192, 64] or [64, 192]"), "{e}");
    // export refuses to overwrite unless asked, and leaves no temp folder
    let e = interop::export(&ckpt, ExportFormat::Hf, &d.join("hf"), false).unwrap_err().to_string();
    assert!(e.contains("--overwrite"), "{e}");
    interop::export(&ckpt, ExportFormat::Hf, &d.join("hf"), true).unwrap();
    let stray: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.contains(".tmp") || n.contains(".old")).collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// `train --init_from` an exported folder starts from the exported weights: its first
/// evaluation equals the checkpoint's.
#[test]
fn training_starts_from_an_exported_folder() {
    let mut rng = common::Rng::fresh("training_starts_from_an_exported_folder");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ckpt, _, params) = random_checkpoint(d, &mut rng);
    interop::export(&ckpt, ExportFormat::Hf, &d.join("hf"), false).unwrap();
    let g = common::gpu();
    let text: String = VOCAB.chars().cycle().take(3000).collect();
    let data = d.join("text.txt");
    std::fs::write(&data, &text).unwrap();
    let mut cfg = TrainConfig {
        n_layer: 2, n_head: 4, n_embd: 32, block_size: 16, micro_batch: 2, accum_steps: 1, max_steps: 1, eval_windows: 4,
        data: data.display().to_string(), init_from: d.join("hf").display().to_string(), out_dir: d.join("run").display().to_string(),
        ..TrainConfig::default()
    };
    let m = gradscope::train::gpt::GptModel::new(&g, &mut cfg).unwrap();
    let loaded = gradscope::train::model::Model::slabs(&m).read_params().unwrap();
    assert!(bits(&loaded) == bits(&params));
}
