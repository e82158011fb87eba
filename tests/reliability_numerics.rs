//! Numerical reliability of whole training steps: a GPT-2-sized vocabulary gives the right first
//! loss on CPU adapters (whose shader loops stop silently after 65,535 iterations), and a step
//! whose update would write a non-finite weight or moment is skipped on the device, flagged, and
//! leaves the weights and moments as they were.

mod common;

use gradscope::train::{TrainConfig, Trainer};

/// A text of `v` distinct characters (code points from U+4E00 up, surrogates left out), each at
/// least once, then a second pass in a scrambled order so both splits hold whole windows.
fn corpus(v: usize) -> String {
    let chars: Vec<char> = (0x4E00u32..).filter_map(char::from_u32).take(v).collect();
    let mut text: String = chars.iter().collect();
    // a fixed permutation: i -> (i * 7919) mod v (7919 is prime and does not divide 50,257)
    text.extend((0..v).map(|i| chars[i * 7919 % v]));
    text
}

fn tiny(data: &std::path::Path, out: &std::path::Path) -> TrainConfig {
    TrainConfig {
        n_layer: 1, n_head: 2, n_embd: 32, block_size: 8, micro_batch: 2, accum_steps: 1, max_steps: 4,
        eval_windows: 1, eval_every: 0, data: data.display().to_string(), out_dir: out.display().to_string(),
        ..TrainConfig::default()
    }
}

/// A tiny GPT on a 300-character corpus after one step (so AdamW's moments are non-zero), with
/// the temporary directory that holds its data and output.
fn stepped_once(g: &gradscope::gpu::Gpu, name: &str) -> (tempfile::TempDir, Trainer) {
    let tmp = tempfile::Builder::new().prefix(&format!("gradscope-relnum-{name}-")).tempdir().unwrap();
    let data = tmp.path().join("corpus.txt");
    std::fs::write(&data, corpus(300)).unwrap();
    let mut t = Trainer::new(g, tiny(&data, tmp.path())).unwrap();
    t.train_step().unwrap();
    (tmp, t)
}

/// Issue 19: with 50,257 characters the cross-entropy kernels looped over V in one invocation
/// and lavapipe cut the loops short (first loss ~1.2 below ln V). At initialization (weights
/// N(0, 0.02)) the logits are nearly equal, so the first loss is ln V within a few hundredths.
#[test]
fn a_gpt2_sized_vocabulary_starts_at_ln_v() {
    let g = common::gpu();
    let v = 50_257;
    let tmp = tempfile::Builder::new().prefix("gradscope-relnum-vocab-").tempdir().unwrap();
    let data = tmp.path().join("corpus.txt");
    std::fs::write(&data, corpus(v)).unwrap();
    let mut t = Trainer::new(&g, tiny(&data, tmp.path())).unwrap();
    assert_eq!(t.gpt().unwrap().gcfg.vocab_size, v);
    let (m, fig) = t.train_step().unwrap();
    let ln_v = (v as f64).ln();
    println!("first loss {:.4} vs ln V {ln_v:.4} ({} targets)", m.train_loss, fig.count);
    assert!(!m.skipped && m.train_loss.is_finite());
    assert!((m.train_loss - ln_v).abs() < 0.1, "first loss {} vs ln V {ln_v}", m.train_loss);
}

/// Moments that make AdamW's update non-finite while the window's loss and gradient norm stay
/// finite: the device skips the step for every tensor, `skipped` and the health flag say so,
/// and AdamW's step count does not advance. A clean state then steps again (the flag is not
/// sticky).
#[test]
fn a_step_that_would_write_a_nonfinite_weight_is_skipped_and_flagged() {
    let g = common::gpu();
    let (_tmp, mut t) = stepped_once(&g, "update");
    let slabs = t.model.slabs();
    let params = slabs.read_params().unwrap();
    let (m, v) = slabs.read_adam().unwrap();
    let n = params.len();
    // m / (1 - beta1^2) past f32's range; a negative second moment (sqrt -> NaN); a NaN moment
    let poisons: [(&str, usize, f32); 3] = [("m", n / 3, 3e38), ("v", n / 2, -1.0), ("m", n - 1, f32::NAN)];
    for (which, i, value) in poisons {
        let (mut m1, mut v1) = (m.clone(), v.clone());
        if which == "m" { m1[i] = value } else { v1[i] = value }
        t.model.slabs().load_state(&params, &m1, &v1);
        let adam_before = t.adam_step;
        let (metrics, fig) = t.train_step().unwrap();
        let what = format!("{which}[{i}] = {value}");
        assert!(metrics.train_loss.is_finite() && metrics.grad_norm.is_finite(), "{what}: the window itself is finite");
        assert!(fig.update_nonfinite, "{what}: the device flags the update");
        assert!(metrics.skipped && metrics.health.nonfinite, "{what}: the step is reported as skipped");
        assert_eq!(t.adam_step, adam_before, "{what}: AdamW's step count does not advance");
        let after = t.model.slabs().read_params().unwrap();
        assert!(after.iter().zip(&params).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: every weight as it was");
        let (m2, v2) = t.model.slabs().read_adam().unwrap();
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&m2, &m1) && same(&v2, &v1), "{what}: every moment as it was");
    }
    t.model.slabs().load_state(&params, &m, &v);
    let (metrics, fig) = t.train_step().unwrap();
    assert!(!fig.update_nonfinite && !metrics.skipped, "a clean state steps again");
    assert_ne!(t.model.slabs().read_params().unwrap(), params, "and changes the weights");
}

/// With `on_nonfinite = "stop"`, a step whose update would be non-finite (the window itself is
/// finite) stops the run with that diagnosis, naming the AdamW state that caused it.
#[test]
fn the_stop_policy_names_a_nonfinite_update() {
    let g = common::gpu();
    let (_tmp, mut t) = stepped_once(&g, "stop");
    let params = t.model.slabs().read_params().unwrap();
    let (mut m, v) = t.model.slabs().read_adam().unwrap();
    m[5] = 3e38;
    t.model.slabs().load_state(&params, &m, &v);
    t.cfg.on_nonfinite = gradscope::train::config::OnNonFinite::Stop;
    t.cfg.max_steps = t.step + 3;
    let err = t.run(None, &mut |_| Ok(())).unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("update at step 2 would have written non-finite"), "{err}");
    assert!(err.contains("optimizer.adamw.m"), "{err}");
}
