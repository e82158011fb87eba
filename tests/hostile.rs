//! Reliability, round two: regression tests for what adversarial probing found (each failed
//! before its fix). A run owns its out_dir; pruning orders checkpoints by step; the metrics end
//! exactly at the last checkpoint after a crash; a closed stdout stops `train` with a checkpoint;
//! a failed atomic write leaves nothing behind; huge sizes, endless or special input files and
//! hostile checkpoints are clear errors (exit 1), never a panic, an abort or a hang; boundary
//! numbers for every numeric key never panic the config.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gradscope::train::{TrainConfig, Trainer, checkpoint};

fn tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("gradscope-hostile-{name}-")).tempdir().unwrap()
}

const TINY: [&str; 16] = [
    "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--micro_batch", "4", "--accum_steps",
    "2", "--eval_windows", "8", "--eval_every", "0",
];

fn gradscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gradscope"))
}

fn train(dir: &Path, extra: &[&str]) -> Command {
    let mut c = gradscope();
    c.args(["train", "--quiet"]).args(TINY).arg("--out_dir").arg(dir).args(extra);
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Run with a deadline: a hang is a failure, not a stuck test.
fn run_within(mut c: Command, secs: u64) -> Output {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("still running after {secs} s: {c:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Exit 1 with a message that contains `needle`, and no panic or abort.
fn fails_clearly(out: &Output, needle: &str) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(1), "exit code; output: {t}");
    assert!(t.contains(needle), "the message should name {needle:?}: {t}");
    assert!(!t.contains("panicked"), "{t}");
}

fn jsonl_steps(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect()
}

fn wait_for_steps(child: &mut Child, dir: &Path, n: usize) {
    let start = Instant::now();
    while jsonl_steps(dir).len() < n {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before step {n}");
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn checkpoint_step(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().as_ref().unwrap()["step"].parse().unwrap()
}

/// Two runs into one out_dir: the second is refused while the first holds it (naming that
/// process); a fresh run into a finished run's directory is refused unless `--overwrite`.
#[test]
fn a_run_owns_its_out_dir() {
    let tmp = tmpdir("owner");
    let dir = tmp.path();
    let mut first = train(dir, &["--max_steps", "400"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_steps(&mut first, dir, 1);
    let second = run_within(train(dir, &["--max_steps", "2", "--overwrite"]), 60);
    fails_clearly(&second, "in use by another gradscope run");
    assert!(text(&second).contains(&format!("process {}", first.id())), "names the holder: {}", text(&second));
    Command::new("kill").arg("-INT").arg(first.id().to_string()).status().unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(3));
    let steps = jsonl_steps(dir);
    // the first run's files are still its own
    let fresh = run_within(train(dir, &["--max_steps", "2"]), 60);
    fails_clearly(&fresh, "holds another run's files");
    assert_eq!(jsonl_steps(dir), steps, "a refused run leaves the metrics alone");
    let over = run_within(train(dir, &["--max_steps", "2", "--overwrite"]), 120);
    assert!(over.status.success(), "{}", text(&over));
    assert_eq!(jsonl_steps(dir), vec![1, 2], "--overwrite replaces the earlier run");
}

/// Pruning orders by the step in the name: past step 999,999 (a wider name) the file just
/// written is kept and the oldest ones go.
#[test]
fn pruning_keeps_the_newest_checkpoints_by_step() {
    let g = common::gpu();
    let tmp = tmpdir("prune");
    let dir = tmp.path();
    let cfg = TrainConfig {
        n_layer: 1, n_head: 2, n_embd: 32, block_size: 16, micro_batch: 2, accum_steps: 1, keep_last: 2,
        out_dir: dir.display().to_string(), ..TrainConfig::default()
    };
    let mut t = Trainer::new(&g, cfg).unwrap();
    for s in [999_998, 999_999] {
        std::fs::write(dir.join(format!("ckpt-step{s:06}.safetensors")), b"older").unwrap();
    }
    t.step = 1_000_000;
    let saved = t.save_periodic(dir).unwrap();
    assert!(saved.exists(), "the checkpoint just written was pruned");
    let mut left: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-step")).collect();
    left.sort();
    assert_eq!(left, ["ckpt-step1000000.safetensors", "ckpt-step999999.safetensors"]);
}

/// SIGKILL (no chance to flush) after periodic checkpoints: the metrics hold every step up to the
/// checkpoint; the resumed run drops the rows written after it and logs each step exactly once,
/// with the CSV header in place.
#[test]
fn metrics_match_the_checkpoint_after_a_kill() {
    let tmp = tmpdir("kill");
    let dir = tmp.path();
    let mut child = train(dir, &["--max_steps", "400", "--save_every", "2", "--eval_every", "1"])
        .stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_steps(&mut child, dir, 5);
    child.kill().unwrap();
    child.wait().unwrap();
    let ck = dir.join("ckpt.safetensors");
    let s = checkpoint_step(&ck);
    let logged = jsonl_steps(dir);
    assert!(s >= 2 && logged.len() >= s, "checkpoint at step {s}, metrics {logged:?}");
    let target = s + 3;
    let out = run_within(train(dir, &["--resume", ck.to_str().unwrap(), "--max_steps", &target.to_string()]), 120);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(jsonl_steps(dir), (1..=target as u64).collect::<Vec<_>>(), "each step once, none lost");
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("step,train_loss"), "{csv}");
    let rows: Vec<u64> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(rows, (1..=target as u64).collect::<Vec<_>>());
}

/// `train | head -3`: the reader goes away; the run stops after its window with a checkpoint
/// (exit 3), instead of panicking or vanishing with its steps.
#[test]
fn a_closed_stdout_stops_train_with_a_checkpoint() {
    let tmp = tmpdir("pipe");
    let dir = tmp.path();
    let cmd = format!(
        "{} train {} --max_steps 400 --out_dir {} | head -3 > /dev/null; echo \"status ${{PIPESTATUS[0]}}\"",
        env!("CARGO_BIN_EXE_gradscope"), TINY.join(" "), dir.display()
    );
    let out = run_within({ let mut c = Command::new("bash"); c.args(["-c", &cmd]); c }, 120);
    let t = text(&out);
    assert!(t.contains("status 3"), "gradscope's exit status: {t}");
    assert!(t.contains("stdout was closed") && !t.contains("panicked"), "{t}");
    // (the reader may go away during the start-up lines: then the checkpoint is of step 0)
    let s = checkpoint_step(&dir.join("ckpt.safetensors"));
    assert!(s < 400, "checkpoint at step {s}");
    assert_eq!(jsonl_steps(dir).len(), s);
}

/// A write that fails after its temp file was created (here: a directory where the checkpoint
/// goes) leaves no temp file behind.
#[test]
fn a_failed_atomic_write_leaves_no_temp_file() {
    let tmp = tmpdir("atomic");
    let target = tmp.path().join("ckpt.safetensors");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("inside"), b"x").unwrap();
    assert!(checkpoint::write_atomic(&target, b"payload").is_err());
    let names: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["ckpt.safetensors"], "only the directory that was in the way");
}

/// Sizes past what can be computed or allocated are errors naming the key: no panic, no abort,
/// no endless loop.
#[test]
fn huge_sizes_are_clear_errors() {
    let tmp = tmpdir("sizes");
    for (args, key) in [
        (vec!["--micro_batch", "4611686018427387904"], "micro_batch"),
        (vec!["--accum_steps", "1152921504606846976"], "accum_steps"),
        (vec!["--effective_batch", "100000000000"], "effective_batch"),
        (vec!["--micro_batch", "1", "--accum_steps", "50000000"], "accum_steps"),
        (vec!["--micro_batch", "4096", "--accum_steps", "4096"], "tokens"),
    ] {
        let out = run_within(train(tmp.path(), &args), 60);
        fails_clearly(&out, key);
    }
    let mut plan = gradscope();
    plan.args(["plan", "--effective-batch", "9223372036854775808"]);
    fails_clearly(&run_within(plan, 60), "effective_batch");
}

/// `/dev/zero` (endless) and a FIFO (blocks on open) as the data, the config or the initial
/// weights: refused at once as not regular files.
#[test]
fn special_files_are_refused() {
    let tmp = tmpdir("special");
    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for file in [Path::new("/dev/zero"), fifo.as_path()] {
        for key in ["--data", "--config", "--init_from"] {
            let out = run_within(train(tmp.path(), &[key, file.to_str().unwrap()]), 60);
            fails_clearly(&out, "not a regular file");
        }
    }
}

/// A real checkpoint with one thing changed: its metadata, or a tensor's values.
fn tampered(src: &Path, dst: &Path, meta_edit: impl Fn(&mut std::collections::HashMap<String, String>), tensor_edit: impl Fn(&str, &mut Vec<f32>)) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = md.metadata().clone().unwrap();
    meta_edit(&mut meta);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec(), t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()))
        .collect();
    for (n, _, v) in tensors.iter_mut() {
        tensor_edit(n, v);
    }
    let views: Vec<(String, Vec<usize>, &[f32])> = tensors.iter().map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice())).collect();
    checkpoint::save_tensors(dst, &views, meta).unwrap();
}

/// Hostile checkpoints: a config whose sizes the tensors do not have (checked before anything is
/// allocated), non-finite weights, NaN or negative moments, an out-of-range AdamW count and
/// duplicate tensor names are refused with the tensor or key named; `--resume --padded true`
/// takes effect.
#[test]
fn hostile_checkpoints_are_refused_before_allocating() {
    let g = common::gpu();
    let tmp = tmpdir("ckpt");
    let dir = tmp.path();
    let out = run_within(train(dir, &["--max_steps", "1"]), 120);
    assert!(out.status.success(), "{}", text(&out));
    let ck = dir.join("ckpt.safetensors");
    let bad = dir.join("bad.safetensors");
    let set_train = |key: &'static str, value: serde_json::Value| {
        move |m: &mut std::collections::HashMap<String, String>| {
            let mut c: serde_json::Value = serde_json::from_str(&m["train_config"]).unwrap();
            c[key] = value.clone();
            m.insert("train_config".into(), c.to_string());
        }
    };
    let keep = |_: &str, _: &mut Vec<f32>| {};
    let cases: Vec<(Box<dyn Fn(&mut std::collections::HashMap<String, String>)>, Box<dyn Fn(&str, &mut Vec<f32>)>, &str)> = vec![
        (Box::new(set_train("n_embd", 100_000.into())), Box::new(keep), "n_embd"),
        (Box::new(set_train("n_embd", 1024.into())), Box::new(keep), "wte.weight"),
        (Box::new(|m: &mut std::collections::HashMap<String, String>| { m.insert("adam_step".into(), "4294967295".into()); }), Box::new(keep), "adam_step"),
        (Box::new(|_: &mut std::collections::HashMap<String, String>| {}), Box::new(|n: &str, v: &mut Vec<f32>| if n == "ln_f.weight" { v[3] = f32::NAN }), "ln_f.weight"),
        (Box::new(|_: &mut std::collections::HashMap<String, String>| {}), Box::new(|n: &str, v: &mut Vec<f32>| if n == "optimizer.adamw.v" { v[0] = -1.0 }), "optimizer.adamw.v"),
        (Box::new(|_: &mut std::collections::HashMap<String, String>| {}), Box::new(|n: &str, v: &mut Vec<f32>| if n == "optimizer.adamw.m" { v[7] = f32::INFINITY }), "optimizer.adamw.m"),
    ];
    for (meta, tensor, needle) in cases {
        tampered(&ck, &bad, meta, tensor);
        let e = Trainer::resume(&g, &bad, &[]).err().expect("refused");
        let msg = format!("{e:#}");
        assert!(msg.contains(needle), "should name {needle}: {msg}");
    }
    // duplicate tensor names: a header written by hand
    let header = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(&bad, &file).unwrap();
    let e = Trainer::resume(&g, &bad, &[]).err().expect("refused");
    assert!(format!("{e:#}").contains("tensor x appears twice"), "{e:#}");
    // `--padded true` on resume reaches the sampler
    let t = Trainer::resume(&g, &ck, &["--padded".into(), "true".into()]).unwrap();
    assert!(t.cfg.padded && t.gpt().unwrap().sampler.padded, "the resumed sampler pads");
}

mod fuzz {
    use gradscope::train::TrainConfig;
    use proptest::prelude::*;

    const NUMERIC: [&str; 28] = [
        "micro_batch", "accum_steps", "effective_batch", "max_steps", "n_layer", "n_head", "n_embd", "block_size",
        "epochs", "eval_every", "eval_windows", "save_every", "keep_last", "warmup_steps", "loss_scale_growth_interval",
        "seed", "data_seed", "lr", "min_lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip", "loss_scale",
        "memory_budget", "micro_batch", "block_size",
    ];
    const BOUNDARY: [&str; 18] = [
        "0", "1", "-1", "255", "65535", "65536", "4294967295", "4294967296", "9223372036854775807", "9223372036854775808",
        "18446744073709551615", "1e308", "1e-320", "1e-50", "-0.0", "nan", "inf", "0.99999999999",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

        /// Boundary numbers for every numeric key: never a panic, and a config that loads has
        /// sizes that compute without overflow.
        #[test]
        fn boundary_numbers_never_panic(pairs in proptest::collection::vec((0..NUMERIC.len(), 0..BOUNDARY.len()), 1..5)) {
            let args: Vec<String> = pairs.iter().flat_map(|&(k, v)| [format!("--{}", NUMERIC[k]), BOUNDARY[v].to_string()]).collect();
            if let Ok(cfg) = TrainConfig::load(None, &args) {
                let e = cfg.effective();
                prop_assert!(e >= 1 && e.checked_mul(cfg.block_size).is_some());
                prop_assert!(cfg.windows_micro_batches() >= 1);
            }
        }
    }
}
