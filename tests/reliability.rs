//! Reliability: interrupts save and resume bit-exactly, a crash mid-write never corrupts the
//! latest checkpoint, non-finite windows are skipped or stop with a diagnosis, device errors and
//! a lost device are reported (with the last good state saved), and the parsers survive fuzzing.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gradscope::train::checkpoint;
use gradscope::train::config::OnNonFinite;
use gradscope::train::{TrainConfig, Trainer};

fn tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("gradscope-rel-{name}-")).tempdir().unwrap()
}

const TINY: [&str; 16] = [
    "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--micro_batch", "4", "--accum_steps",
    "2", "--eval_windows", "8", "--eval_every", "0",
];

fn train(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gradscope"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).args(["train", "--quiet"]).args(TINY).arg("--out_dir").arg(dir).args(extra);
    c
}

fn steps_logged(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0)
}

fn wait_for_steps(child: &mut Child, dir: &Path, n: usize) {
    let start = Instant::now();
    while steps_logged(dir) < n {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before step {n}");
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn params_of(path: &Path) -> (u64, Vec<u32>, Vec<u32>) {
    let st = checkpoint::load(path).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    (st.step, bits(&st.params), bits(&st.adam_m))
}

#[test]
fn sigint_and_sigterm_save_a_checkpoint_and_resume_bit_exactly() {
    for signal in ["-INT", "-TERM"] {
        let dir_tmp = tmpdir(&format!("sig{signal}"));
    let dir = dir_tmp.path().to_path_buf();
        let mut child = train(&dir, &["--max_steps", "400"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        wait_for_steps(&mut child, &dir, 3);
        Command::new("kill").arg(signal).arg(child.id().to_string()).status().unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{signal}: distinct exit code; stderr: {err}");
        assert!(err.contains("interrupted at step"), "{err}");
        let ck = dir.join("ckpt.safetensors");
        let (step, _, _) = params_of(&ck);
        assert!(step >= 3, "checkpoint at step {step}");
        assert_eq!(steps_logged(&dir), step as usize, "metrics flushed up to the saved step");
        // resume two more steps, and compare with a straight run to the same step
        let target = (step + 2).to_string();
        let out = train(&dir, &[]).args(["--resume"]).arg(&ck).args(["--max_steps", &target]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let straight_tmp = tmpdir(&format!("straight{signal}"));
    let straight = straight_tmp.path().to_path_buf();
        let out = train(&straight, &["--max_steps", &target]).output().unwrap();
        assert!(out.status.success());
        let (a, b) = (params_of(&ck), params_of(&straight.join("ckpt.safetensors")));
        assert_eq!(a.0, b.0);
        assert!(a.1 == b.1 && a.2 == b.2, "{signal}: resumed run differs from the straight run");
        assert_eq!(steps_logged(&dir), step as usize + 2, "metrics continue after resume");
    }
}

/// Every tensor of a checkpoint (weights, running statistics, AdamW moments), by name.
fn tensors_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

/// The CNN runs through the same trainer: SIGINT mid-epoch writes a checkpoint (exit 3, metrics
/// flushed), and `--resume` finishes the run bit for bit like a run that was never stopped
/// (weights, BatchNorm running statistics, AdamW state, the epoch's shuffle position).
#[test]
fn the_cnn_resumes_bit_exactly_after_sigint() {
    let cnn = ["--model", "cnn", "--dataset", "digits", "--norm", "batch", "--micro_batch", "32", "--accum_steps", "4", "--epochs", "2"];
    let run = |dir: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gradscope"));
        c.args(["train", "--quiet"]).args(cnn).arg("--out_dir").arg(dir);
        c
    };
    let dir_tmp = tmpdir("cnn-sigint");
    let dir = dir_tmp.path().to_path_buf();
    let mut child = run(&dir).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_steps(&mut child, &dir, 3);
    Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {err}");
    let ck = dir.join("ckpt.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let step: usize = meta.metadata().as_ref().unwrap()["step"].parse().unwrap();
    println!("interrupted at step {step} of 24");
    assert!((3..24).contains(&step), "interrupted mid-run, at step {step}");
    assert_eq!(steps_logged(&dir), step, "metrics flushed up to the saved step");
    let out = run(&dir).arg("--resume").arg(&ck).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let straight_tmp = tmpdir("cnn-straight");
    let straight = straight_tmp.path().to_path_buf();
    let out = run(&straight).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (tensors_of(&ck), tensors_of(&straight.join("ckpt.safetensors")));
    assert!(a.iter().any(|(n, _)| n == "norm1.running_mean"));
    assert_eq!(a.len(), b.len());
    for ((na, da), (nb, db)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(da == db, "{na}: the resumed run differs from the straight run");
    }
    assert_eq!(steps_logged(&dir), 24, "metrics continue after resume");
}

#[test]
fn a_crash_mid_write_leaves_the_latest_checkpoint_intact() {
    let dir_tmp = tmpdir("crash");
    let dir = dir_tmp.path().to_path_buf();
    // save_every 2 writes ckpt-step000002 (write 1) and ckpt (write 2) at step 2, then at step 4
    // ckpt-step000004 (write 3) and ckpt (write 4): die half-way through write 4.
    let out = train(&dir, &["--max_steps", "10", "--save_every", "2", "--keep_last", "2"])
        .env("GRADSCOPE_FAULT", "abort-in-write-4")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the process was meant to die");
    let latest = dir.join("ckpt.safetensors");
    let (step, _, _) = params_of(&latest);
    assert_eq!(step, 2, "the latest checkpoint is the last complete one");
    assert_eq!(params_of(&dir.join("ckpt-step000004.safetensors")).0, 4);
    // and training resumes from it
    let out = train(&dir, &[]).arg("--resume").arg(&latest).args(["--max_steps", "6", "--save_every", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(params_of(&latest).0, 6);
    // keep_last 2: only the two newest periodic checkpoints remain
    let mut periodic: Vec<String> = std::fs::read_dir(&dir).unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-step") && n.ends_with(".safetensors"))
        .collect();
    periodic.sort();
    assert_eq!(periodic, vec!["ckpt-step000004.safetensors", "ckpt-step000006.safetensors"]);
}

#[test]
fn a_lost_device_stops_with_the_last_good_state_saved() {
    let dir_tmp = tmpdir("lost");
    let dir = dir_tmp.path().to_path_buf();
    let out = train(&dir, &["--max_steps", "10"]).env("GRADSCOPE_FAULT", "lose-device-after-step-3").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("device was lost"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (step, params, _) = params_of(&dir.join("ckpt-last-good.safetensors"));
    assert_eq!(step, 3, "the last good step");
    assert!(params.iter().all(|b| f32::from_bits(*b).is_finite()));
}

fn small(dir: &Path) -> TrainConfig {
    TrainConfig {
        n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, micro_batch: 4, accum_steps: 2, max_steps: 4,
        eval_windows: 4, eval_every: 0, out_dir: dir.display().to_string(), ..TrainConfig::default()
    }
}

#[test]
fn nonfinite_windows_are_skipped_on_the_device_or_stop_with_a_diagnosis() {
    let g = common::gpu();
    let dir_tmp = tmpdir("nan");
    let dir = dir_tmp.path().to_path_buf();
    let mut t = Trainer::new(&g, small(&dir)).unwrap();
    t.train_step().unwrap();
    // poison one weight of blocks.1.c_fc.weight
    let mut params = t.model.slabs().read_params().unwrap();
    let (_, _, off) = checkpoint::tensor_table(&t.gpt().unwrap().gcfg).into_iter().find(|(n, _, _)| n == "blocks.1.c_fc.weight").unwrap();
    params[off + 5] = f32::NAN;
    let (m, v) = t.model.slabs().read_adam().unwrap();
    t.model.slabs().load_state(&params, &m, &v);
    let adam_before = t.adam_step;
    let (metrics, _) = t.train_step().unwrap();
    assert!(metrics.skipped && metrics.health.nonfinite, "the window is flagged and skipped");
    assert_eq!(t.adam_step, adam_before, "AdamW's step count does not advance on a skipped step");
    assert_eq!(t.step, 2, "the window still counts as consumed");
    let after = t.model.slabs().read_params().unwrap();
    let same = after.iter().zip(&params).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "a skipped step leaves every weight as it was");
    assert_eq!(t.model.slabs().read_adam().unwrap(), (m, v), "and the moments");
    // the stop policy names the tensor
    t.cfg.on_nonfinite = OnNonFinite::Stop;
    t.cfg.max_steps = 10;
    let err = t.run(None, &mut |_| Ok(())).unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("blocks.1.c_fc.weight"), "{err}");
}

#[test]
fn device_errors_are_reported_with_what_was_involved() {
    let g = common::gpu();
    let err = g.try_storage("huge activations", gradscope::gpu::Category::Activations, 1 << 40).unwrap_err().to_string();
    assert!(err.contains("huge activations") && err.contains("max buffer size"), "{err}");
    // a validation error inside a scope becomes an error naming the operation
    let err = g
        .scoped("creating a mappable storage buffer", || {
            g.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("invalid usage"),
                size: 64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("creating a mappable storage buffer"), "{err}");
    assert!(g.take_errors().is_empty(), "scoped errors do not leak to the uncaptured handler");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn config_overrides_never_panic(args in proptest::collection::vec("(--)?[a-z_=0-9.\\-\\[\\]\"]{0,12}", 0..6)) {
            let _ = TrainConfig::load(None, &args);
        }

        #[test]
        fn config_files_never_panic(text in "[a-z_ =0-9.\\-\\[\\]\"\n#]{0,80}") {
            let tmp = tempfile::Builder::new().prefix("gradscope-fuzz-").tempdir().unwrap();
            let dir = tmp.path();
            let f = dir.join(format!("c{}.toml", text.len()));
            std::fs::write(&f, &text).unwrap();
            let _ = TrainConfig::load(Some(&f), &[]);
        }

        #[test]
        fn checkpoint_parser_never_panics(seed in any::<u64>(), cut in 0usize..4000, flips in proptest::collection::vec((0usize..4000, any::<u8>()), 0..8)) {
            let bytes = valid_checkpoint();
            let mut b = bytes.clone();
            for (i, v) in flips {
                let i = i % b.len();
                b[i] = v;
            }
            // also mutate the header length and truncate
            if seed % 3 == 0 { b[..8].copy_from_slice(&seed.to_le_bytes()); }
            if seed % 5 == 0 { b.truncate(cut % b.len()); }
            let tmp = tempfile::Builder::new().prefix("gradscope-fuzz-ck-").tempdir().unwrap();
            let dir = tmp.path();
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join(format!("f{seed}.safetensors"));
            std::fs::write(&p, &b).unwrap();
            let _ = checkpoint::load(&p);
            let _ = checkpoint::read_header(&p);
            let _ = std::fs::remove_file(&p);
        }
    }

    /// A small valid checkpoint, made once on the CPU (no device needed).
    fn valid_checkpoint() -> Vec<u8> {
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        BYTES
            .get_or_init(|| {
                let gpt = gradscope::reference::gpt::GptConfig { vocab_size: 5, block_size: 4, n_layer: 1, n_head: 1, n_embd: 4 };
                let n = gpt.num_params();
                let st = checkpoint::TrainState {
                    gpt,
                    train: TrainConfig::default(),
                    tokenizer: gradscope::data::tokenizer::Tokenizer::Char("abcde".chars().collect()),
                    step: 1,
                    adam_step: 1,
                    sampler: gradscope::data::text::TextSampler::new(1, 4, false),
                    params: gradscope::reference::gpt::init_params(&gpt, 1),
                    adam_m: vec![0.0; n],
                    adam_v: vec![0.0; n],
                    loss_scaler: Some(checkpoint::LossScaleState { scale: 1024.0, clean: 3 }),
                };
                let tmp = tempfile::Builder::new().prefix("gradscope-fuzz-valid-").tempdir().unwrap();
                let dir = tmp.path();
                let p = dir.join("valid.safetensors");
                checkpoint::save(&p, &st).unwrap();
                let b = std::fs::read(&p).unwrap();
                assert!(checkpoint::load(&p).is_ok());
                b
            })
            .clone()
    }
}
