//! The command line end to end: `train` writes metrics and a checkpoint, `eval` and `sample` read
//! it, `verify --quick` passes with the correct settings and fails (exit 2, with a diagnosis)
//! with a broken normalization; every `--help`, the config keys as flags (kebab and snake case,
//! typed, named in errors), the exit codes, a closed pipe, `plan`'s suggested command, output
//! that reaches a redirected stdout, and runs from a directory outside the checkout.

mod common;

use std::process::{Command, Output};

use tempfile::TempDir;

/// The f16 command lines need an adapter with SHADER_F16 (without it they train in f32 and say so,
/// which tests/precision.rs checks): fail with that message rather than on a figure.
fn require_f16() {
    common::require_f16(&common::gpu());
}

fn gradscope() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gradscope"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// A temporary directory, removed when dropped.
fn tmpdir(name: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("gradscope-cli-{name}-")).tempdir().unwrap()
}

/// gradscope's exit codes (documented in `--help` and the README).
const EXIT_USAGE: i32 = 64;
const EXIT_ERROR: i32 = 1;

fn out_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const TINY: [&str; 12] = [
    "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--eval_windows", "32", "--eval_every", "3",
];

#[test]
fn train_writes_metrics_and_a_checkpoint_that_eval_and_sample_read() {
    let dir = tmpdir("train");
    let out = gradscope()
        .args(["train", "--quiet"])
        .args(TINY)
        .args(["--micro_batch", "4", "--accum_steps", "2", "--max_steps", "6", "--out_dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let dir = dir.path();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    // derived numbers at start
    assert!(stdout.contains("micro-batch      B = 4 sequences = 128 tokens"), "{stdout}");
    assert!(stdout.contains("K = 2 micro-batches, E = 8 sequences = 256 tokens per step"), "{stdout}");
    assert!(stdout.contains("parameters"));
    // one metrics line per optimizer step, in both formats
    let jsonl = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], i + 1);
        assert_eq!(l["micro_batch"], 4);
        assert_eq!(l["accum_steps"], 2);
        assert!(l["train_loss"].as_f64().unwrap().is_finite());
        assert!(l["memory"]["bytes"][0].as_u64().unwrap() > 0);
    }
    assert!(lines[2]["val_loss"].as_f64().is_some() && lines[1]["val_loss"].is_null());
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("step,train_loss,val_loss,lr,grad_norm,clipped,tokens_per_s,micro_batch,accum_steps,bytes_parameters"));
    assert_eq!(csv.lines().count(), 7);

    let ck = dir.join("ckpt.safetensors");
    let out = gradscope().arg("eval").arg(&ck).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.contains("validation loss"), "{s}");

    // eval's own flag in both spellings
    for flag in ["--eval-windows", "--eval_windows"] {
        let out = gradscope().arg("eval").arg(&ck).args([flag, "4"]).output().unwrap();
        assert!(out.status.success(), "{flag}: {}", err_text(&out));
        assert!(out_text(&out).contains("over 4 windows of 32"), "{flag}: {}", out_text(&out));
    }

    let out = gradscope().arg("sample").arg(&ck).args(["--tokens", "40", "--prompt", "ROMEO:"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.starts_with("ROMEO:"), "{s}");
    assert!(s.trim_end().chars().count() >= "ROMEO:".len() + 20, "{s}");
}

/// Errors (exit 1) and usage errors (exit 64) name what is wrong; an I/O error's cause is
/// printed once.
#[test]
fn bad_input_fails_with_a_clear_message_and_no_panic() {
    let dir = tmpdir("bad");
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "lr = \"abc\"\n").unwrap();
    let bad_toml = bad_toml.to_str().unwrap();
    for (args, code, want) in [
        (vec!["train", "--micro_batch", "0"], EXIT_ERROR, "micro_batch"),
        (vec!["train", "--max_steps", "0", "--checkpoint-activations"], EXIT_ERROR, "max_steps"),
        (vec!["eval", "/nonexistent/ck.safetensors"], EXIT_ERROR, "/nonexistent/ck.safetensors"),
        (vec!["train", "--data", "/nonexistent/x.txt"], EXIT_ERROR, "/nonexistent/x.txt"),
        (vec!["train", "--config", bad_toml], EXIT_ERROR, "`lr`"),
        (vec!["train", "--lr", "abc"], EXIT_USAGE, "--lr"),
        (vec!["plan", "--n-layer=-1"], EXIT_USAGE, "--n-layer"),
        (vec!["train", "--seed", "-1"], EXIT_USAGE, "--seed"),
        (vec!["verify", "--padded", "maybe"], EXIT_USAGE, "--padded"),
        (vec!["train", "--precision", "f8"], EXIT_USAGE, "f8"),
        (vec!["train", "--no_such_key", "1"], EXIT_USAGE, "--no_such_key"),
        (vec!["eval", "ck.safetensors", "--eval-windows", "many"], EXIT_USAGE, "--eval-windows"),
        (vec!["no-such-command"], EXIT_USAGE, "no-such-command"),
    ] {
        let out = gradscope().args(&args).output().unwrap();
        let err = err_text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // the cause of an I/O error once, not twice
    for args in [vec!["train", "--data", "/nonexistent/x.txt"], vec!["train", "--config", "/nonexistent/c.toml"]] {
        let err = err_text(&gradscope().args(&args).output().unwrap());
        assert_eq!(err.matches("No such file or directory").count(), 1, "{args:?}: {err}");
    }
}

/// Every subcommand's `--help` exits 0; `train --help` lists every config key with its default
/// and its help, and help wins over other flags.
#[test]
fn every_help_exits_0_and_train_help_lists_every_config_key() {
    let helps: Vec<Vec<&str>> = vec![
        vec!["--help"], vec!["--version"], vec!["help"], vec!["app", "--help"], vec!["info", "--help"], vec!["train", "--help"],
        vec!["eval", "--help"], vec!["sample", "--help"], vec!["verify", "--help"], vec!["plan", "--help"],
        vec!["bench", "--help"], vec!["train", "--max_steps", "3", "--help"], vec!["help", "train"],
    ];
    for args in helps {
        let out = gradscope().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", err_text(&out));
        assert!(out_text(&out).contains("gradscope"), "{args:?}: {}", out_text(&out));
    }
    let top = out_text(&gradscope().arg("--help").output().unwrap());
    assert!(top.contains("64 usage error") && top.contains("2 `verify` failed"), "the exit codes are documented:\n{top}");
    let help = out_text(&gradscope().args(["train", "--help"]).output().unwrap());
    for key in gradscope::train::config::default_table().keys() {
        assert!(help.contains(&format!("--{} ", key.replace('_', "-"))), "--{key} missing from train --help:\n{help}");
    }
    let line_of = |flag: &str| help.lines().skip_while(|l| !l.trim_start().starts_with(flag)).nth(1).unwrap_or_default().to_string();
    assert!(line_of("--lr <LR>").contains("learning rate") && line_of("--lr <LR>").contains("[default: 0.003]"), "{help}");
    assert!(line_of("--micro-batch <MICRO_BATCH>").contains("[default: 16]"), "{help}");
    assert!(help.contains("--checkpoint-activations [<CHECKPOINT_ACTIVATIONS>]"), "a boolean's value is optional:\n{help}");
    // the subcommands that train or plan take the same keys
    for sub in ["app", "verify", "plan", "bench"] {
        let h = out_text(&gradscope().args([sub, "--help"]).output().unwrap());
        assert!(h.contains("--micro-batch <MICRO_BATCH>") && h.contains("--config <FILE>"), "{sub}:\n{h}");
    }
}

const PLAN_KEBAB: [&str; 16] = [
    "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--effective-batch", "24", "--memory-budget",
    "2MiB", "--precision", "f16", "--checkpoint-activations", "--json",
];
const PLAN_SNAKE: [&str; 15] = [
    "--n_layer=2", "--n_head", "2", "--n_embd=32", "--block_size", "32", "--effective_batch=24", "--memory_budget", "2MiB",
    "--precision=f16", "--checkpoint_activations", "true", "--json", "--n_layer", "2",
];

/// The same keys in kebab case, snake case, with `=`, and as bare or valued booleans give the
/// same plan; without them the plan differs (so they were read).
#[test]
fn kebab_and_snake_forms_of_a_key_are_the_same_key() {
    let plan = |args: &[&str]| {
        let out = gradscope().arg("plan").args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", err_text(&out));
        serde_json::from_str::<serde_json::Value>(&out_text(&out)).unwrap()
    };
    let (kebab, snake) = (plan(&PLAN_KEBAB), plan(&PLAN_SNAKE));
    assert_eq!(kebab, snake);
    // without the two keys the plan differs (so they were read)
    let plain = plan(&[&PLAN_KEBAB[..12], &["--json"]].concat());
    assert_ne!(kebab["plan"], plain["plan"], "precision and checkpoint_activations changed nothing");
    // a boolean given as `--key=false` after a bare `--key`: the last one wins
    let off = plan(&[&PLAN_KEBAB[..], &["--checkpoint_activations=false"]].concat());
    assert_eq!(off["plan"], plan(&[&PLAN_KEBAB[..14], &["--json"]].concat())["plan"]);
    assert_ne!(off["plan"], kebab["plan"]);
}

/// `plan` prints a `train` command that runs: with a given budget, and with the default one
/// (the device's max buffer, a bare number of bytes).
#[test]
fn plans_suggested_command_runs() {
    for budget in [&["--memory_budget", "2MiB"][..], &[]] {
        let out = gradscope().args(["plan", "--effective-batch", "12"]).args(TINY).args(budget).output().unwrap();
        assert!(out.status.success(), "{}", err_text(&out));
        let text = out_text(&out);
        let line = text.lines().find_map(|l| l.strip_prefix("train with: ")).unwrap_or_else(|| panic!("no `train with:` line:\n{text}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[..2], ["gradscope", "train"], "{line}");
        assert!(line.contains("--memory-budget") && line.contains("--effective-batch 12"), "{line}");
        let dir = tmpdir("suggested");
        let out = gradscope().args(&words[1..]).args(["--max_steps", "1", "--quiet", "--out_dir"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{line}: {}", err_text(&out));
        assert!(dir.path().join("ckpt.safetensors").exists());
    }
}

/// A closed stdout pipe (`gradscope info | head -1`) ends gradscope quietly with exit code 0.
#[test]
fn a_closed_pipe_ends_quietly() {
    let bin = env!("CARGO_BIN_EXE_gradscope");
    for args in ["info", "train --help", "plan --model cnn --dataset digits"] {
        // pipefail: the pipeline's status is gradscope's when it fails
        let out = Command::new("bash").args(["-c", &format!("set -o pipefail; \"$0\" {args} | head -1")]).arg(bin).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args}: {}", err_text(&out));
        assert_eq!(out_text(&out).lines().count(), 1);
        assert!(!err_text(&out).contains("panicked"), "{args}: {}", err_text(&out));
    }
}

/// `RUST_LOG` reaches wgpu's log messages through the log backend; without it the default
/// filter keeps wgpu's debug messages out.
#[test]
fn rust_log_shows_wgpu_messages() {
    let out = gradscope().arg("info").env("RUST_LOG", "wgpu=debug").output().unwrap();
    assert!(out.status.success());
    assert!(err_text(&out).contains("wgpu_"), "no wgpu log lines:\n{}", err_text(&out));
    let out = gradscope().arg("info").env_remove("RUST_LOG").output().unwrap();
    assert!(!err_text(&out).contains("DEBUG"), "{}", err_text(&out));
}

/// From a directory outside the checkout: the built-in Tiny Shakespeare and image sets, files
/// given by the user read relative to the working directory, outputs written there.
#[test]
fn runs_from_a_directory_outside_the_checkout() {
    let dir = tmpdir("elsewhere");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gradscope")).current_dir(dir.path()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}{}", out_text(&out), err_text(&out));
        out_text(&out)
    };
    assert!(!dir.path().join("assets").exists());
    let s = run(&[&["train", "--max_steps", "1"][..], &TINY].concat());
    assert!(s.contains("vocabulary       65 characters"), "{s}");
    assert!(dir.path().join("runs/gpt/ckpt.safetensors").exists(), "the default out_dir is relative to the working directory");
    let s = run(&["eval", "runs/gpt/ckpt.safetensors", "--eval-windows", "2"]);
    assert!(s.contains("validation loss"), "{s}");
    assert!(run(&["sample", "runs/gpt/ckpt.safetensors", "--tokens", "5"]).len() >= 5);
    for dataset in ["mnist", "digits"] {
        let s = run(&["plan", "--model", "cnn", "--dataset", dataset]);
        assert!(s.contains("CNN") && s.contains("train with:"), "{s}");
    }
    let s = run(&[&["plan"][..], &TINY].concat());
    assert!(s.contains("vocab 65"), "{s}");
    // a user's text file, by a path relative to the working directory
    let text: String = "to be or not to be, that is the question. ".repeat(40);
    std::fs::write(dir.path().join("mine.txt"), text).unwrap();
    let s = run(&[&["train", "--max_steps", "1", "--data", "mine.txt", "--out_dir", "mine"][..], &TINY].concat());
    assert!(s.contains("vocabulary       15 characters"), "{s}");
}

#[test]
fn verify_quick_passes_and_catches_the_broken_normalization() {
    let dir = tmpdir("verify");
    let out = gradscope().args(["verify", "--quick", "--out_dir"]).arg(dir.path()).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    println!("{s}");
    assert!(out.status.success(), "{s}{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.contains("PASS"));
    // the report beside its picture: the JSON of --json and the two validation curves
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("verify.json")).unwrap()).unwrap();
    assert_eq!(report["check"]["passed"], serde_json::Value::Bool(true), "{report}");
    assert!(report["check"]["curve"].as_array().is_some_and(|c| c.len() >= 2), "{report}");
    let (w, h, colours) = png_size_and_colours(&dir.path().join("verify.png"));
    assert_eq!((w, h), (1200, 500), "verify.png size");
    assert!(colours > 8, "verify.png shows more than a blank page ({colours} colours)");

    let out = gradscope()
        .args(["verify", "--quick", "--normalization", "per-micro-batch-mean", "--padded", "true"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    println!("{s}");
    assert_eq!(out.status.code(), Some(2), "the broken normalization must fail the check");
    assert!(s.contains("FAIL") && s.contains("diagnosis"), "{s}");
}

/// Without `--quiet`, stdout redirected (as here): the test accuracy line and plain progress
/// lines reach it.
#[test]
fn cnn_trains_and_evaluates_from_the_command_line() {
    let dir = tmpdir("cnn");
    let out = gradscope()
        .args(["train", "--model", "cnn", "--dataset", "digits", "--norm", "batch", "--epochs", "1", "--micro_batch", "16", "--out_dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let dir = dir.path();
    let s = String::from_utf8_lossy(&out.stdout);
    println!("{s}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    // 1,500 images at E = 64: 24 steps, a progress line every 10 and at the last
    assert!(s.contains("epoch   1  test accuracy") && s.contains("images/s"), "{s}");
    assert!(s.contains("step    10/24") && s.contains("step    24/24"), "{s}");
    let out = gradscope().arg("eval").arg(dir.join("ckpt.safetensors")).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.contains("CNN (Batch norm), test accuracy"), "{s}");
}

/// `verify --precision f16`: the accumulated run in mixed precision against the f32 true batch
/// passes within 0.05; `--show-broken` runs the two wrong loss-scale orders and both are caught.
#[test]
fn verify_in_mixed_precision_passes_and_catches_the_wrong_orders() {
    require_f16();
    let out = gradscope().args(["verify", "--quick", "--show-broken", "--precision", "f16", "--max_steps", "40"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    println!("{s}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{s}");
    assert!(s.contains("mixed precision") && s.contains("tolerance 0.05): PASS"), "{s}");
    assert_eq!(s.matches("caught, as expected").count(), 2, "{s}");
    assert!(s.contains("Divide by the count first") && s.contains("Unscale once"), "{s}");
}

/// `plan` prints the category table and the largest B under the budget; `--json` agrees with the
/// library's plan; `train --memory_budget` then trains with that B and K.
#[test]
fn plan_and_train_under_a_memory_budget() {
    require_f16();
    let out = gradscope()
        .args(["plan", "--effective-batch", "24", "--memory-budget", "2MiB", "--json"])
        .args(TINY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let (b, k) = (v["plan"]["micro_batch"].as_u64().unwrap(), v["plan"]["accum_steps"].as_u64().unwrap());
    assert!(v["total"].as_u64().unwrap() <= 2 << 20);
    assert!((1..24).contains(&b), "B = {b} should be limited by the budget");
    assert_eq!(k, 24u64.div_ceil(b));

    let out = gradscope().args(["plan", "--effective-batch", "24", "--memory-budget", "2MiB"]).args(TINY).arg("--checkpoint-activations").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success());
    assert!(text.contains("activation checkpointing on"), "{text}");
    assert!(text.contains("largest micro-batch that fits: B = "), "{text}");
    for cat in ["parameters", "gradients", "optimizer state", "activations", "scratch", "total"] {
        assert!(text.contains(cat), "{cat} row missing:\n{text}");
    }

    let dir = tmpdir("budget");
    let out = gradscope()
        .args(["train", "--quiet"])
        .args(TINY)
        .args(["--memory-budget", "2MiB", "--effective_batch", "24", "--max_steps", "2", "--out_dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(stdout.contains(&format!("micro-batch      B = {b} sequences")), "train should use the planned B = {b}:\n{stdout}");
    assert!(stdout.contains("memory budget"), "{stdout}");

    // f16 activations: half the activation slabs, so a larger B fits the same budget
    let out = gradscope()
        .args(["plan", "--effective-batch", "24", "--memory-budget", "2MiB", "--json"])
        .args(TINY)
        .args(["--precision", "f16"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let b16 = v["plan"]["micro_batch"].as_u64().unwrap();
    println!("f32 B {b}, f16 B {b16}");
    assert!(b16 > b, "f16 activations should let a larger B fit: {b16} vs {b}");
    let dir = tmpdir("f16");
    let out = gradscope()
        .args(["train", "--quiet"])
        .args(TINY)
        .args(["--precision", "f16", "--max_steps", "2", "--out_dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let dir = dir.path();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(stdout.contains("precision        mixed"), "{stdout}");
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let col = csv.lines().next().unwrap().split(',').position(|c| c == "loss_scale").expect("a loss_scale column");
    assert_eq!(csv.lines().nth(1).unwrap().split(',').nth(col), Some("65536"), "{csv}");

    // bad budgets are clear errors
    for bad in [["--memory-budget", "lots"], ["--memory-budget", "1KiB"]] {
        let out = gradscope().args(["plan", "--effective-batch", "8"]).args(bad).args(TINY).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("error:"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `bench --json` on a tiny GPT: the matmul ceiling, both shapes of the accumulation tax with a
/// time for every step, checkpointing, the CNN, and a per-kernel profile naming the kernels the
/// adapter runs. No speed is asserted (figures belong to the benchmark, not to tests).
#[test]
fn bench_reports_every_figure_as_json() {
    let out = gradscope()
        .args(["bench", "--json", "--sizes", "64", "--seconds", "0.05", "--steps", "2"])
        .args(["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--micro_batch", "2", "--accum_steps", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}");
    let j: serde_json::Value = serde_json::from_str(&stdout).expect("bench --json prints one JSON document");
    assert!(j["matmul_ceiling_gflops"].as_f64().unwrap() > 0.0, "{j}");
    // every matmul variant measured, the one the device's kernel set runs marked
    let kernels = j["kernels"].as_str().unwrap();
    assert!(["cpu", "gpu"].contains(&kernels), "{j}");
    let matmuls = j["matmul"].as_array().unwrap();
    let variants: Vec<&str> = matmuls.iter().map(|m| m["variant"].as_str().unwrap()).collect();
    assert_eq!(variants, ["GpuTiled 64x64", "GpuTiled 128x64", "RegisterBlocked", "Tiled"], "{j}");
    let selected: Vec<&str> = matmuls.iter().filter(|m| m["selected"] == true).map(|m| m["variant"].as_str().unwrap()).collect();
    // the device's tile policy: a fixed tile, or by size (64x64 at 64^3)
    let tiles = j["matmul_tiles"].as_str().unwrap();
    let gpu_tile = if tiles == "128x64" { "GpuTiled 128x64" } else { "GpuTiled 64x64" };
    assert_eq!(selected, [if kernels == "cpu" { "RegisterBlocked" } else { gpu_tile }], "{j}");
    let gpt = j["gpt"].as_array().unwrap();
    let shapes: Vec<(u64, u64)> = gpt.iter().map(|r| (r["micro_batch"].as_u64().unwrap(), r["accum_steps"].as_u64().unwrap())).collect();
    assert_eq!(shapes, [(2, 2), (4, 1)]);
    for r in gpt.iter().chain([&j["gpt_checkpointed"]]).chain(j["cnn"].as_array().unwrap()) {
        let steps = r["step_seconds"].as_array().unwrap();
        assert_eq!(steps.len(), 2, "{r}");
        assert!(steps.iter().all(|s| s.as_f64().unwrap() > 0.0));
        assert!(r["seconds_per_step"].as_f64().unwrap() > 0.0);
        assert!(r["gflops"].as_f64().unwrap() > 0.0);
    }
    // lavapipe has timestamp queries: the profile lists the kernels of the adapter's family by name
    let kernels: Vec<&str> = gpt[0]["kernels"].as_array().unwrap().iter().map(|k| k[0].as_str().unwrap()).collect();
    let cpu = kernels.contains(&"matmul_forward_cpu");
    let expected: &[&str] = if cpu {
        &["matmul_backward_weight_cpu_v4", "transpose_cpu", "attention_scores_cpu", "attention_softmax_cpu", "attention_backward_key_value_cpu"]
    } else {
        // (head size 16: flash attention; two-stage column sums)
        &["matmul_forward_gpu", "matmul_backward_input_gpu", "matmul_backward_weight_gpu", "flash_attention_forward", "column_sums_finish"]
    };
    for k in expected {
        assert!(kernels.contains(k), "{k} missing from the profile {kernels:?}");
    }
    if cpu {
        // GELU rides in the MLP's matmuls, and the block input gradients run in the forward kernel
        for k in ["gelu_forward", "gelu_backward", "matmul_backward_input_cpu_v4"] {
            assert!(!kernels.contains(&k), "{k} in the profile of the CPU kernels: {kernels:?}");
        }
    }
}

/// The `gradscope ...` commands the README shows (in backticks or code blocks), in order.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_block = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            if let Some(c) = line.trim().strip_prefix("gradscope ") {
                out.push(c.split(" # ").next().unwrap().to_string());
            }
            continue;
        }
    }
    // inline spans may wrap a line: read them from the text with line breaks as spaces
    let flat = readme.replace('\n', " ");
    for (i, span) in flat.split('`').enumerate() {
        if i % 2 == 1 {
            if let Some(c) = span.strip_prefix("gradscope ") {
                out.push(c.to_string());
            }
        }
    }
    out
}

/// Every README command of the quick kind runs, as written, from a fresh working directory (its
/// outputs go there): optional `[...]` parts left out, `CKPT` the checkpoint the README's own
/// `train` wrote, and `train`/`verify` shortened (`--max-steps 1`, `--quick`: flags given later
/// win). Left out: `app` (tests/app.rs runs it under Xvfb), `bench` (slow; its own test), and
/// commands whose arguments are placeholders (`F.toml`, `COMMAND`, `--key value ...`).
#[test]
fn the_readme_commands_run() {
    let dir = tmpdir("readme");
    let mut ran: Vec<String> = Vec::new();
    let mut commands = readme_commands();
    // prepare first (its shards are trained on), then the train commands, so that the
    // checkpoints the others read exist
    commands.sort_by_key(|c| if c.starts_with("prepare") { 0 } else if c.starts_with("train") && !c.contains("--resume") { 1 } else { 2 });
    for c in commands {
        let mut c = c.split(" | ").next().unwrap().to_string();
        while let (Some(a), Some(b)) = (c.find('['), c.find(']')) {
            if b < a {
                break;
            }
            c.replace_range(a..=b, "");
        }
        let c = c.replace("CKPT", "runs/gpt/ckpt.safetensors");
        let c = c.split_whitespace().collect::<Vec<_>>().join(" ");
        if ran.contains(&c) {
            continue;
        }
        let words: Vec<String> = shell_words(&c);
        let Some(sub) = words.first().cloned() else { continue };
        if ["app", "bench"].contains(&sub.as_str()) || c.contains("F.toml") || c.contains("COMMAND") || c.contains("...") || c.contains('<') {
            continue;
        }
        let mut args = words.clone();
        let cnn = c.contains("--model cnn");
        match sub.as_str() {
            "train" => {
                args.extend(["--max-steps", "1", "--eval-windows", "8"].map(String::from));
                if c.contains("--resume") {
                    args.extend(["--max-steps", "2"].map(String::from));
                } else {
                    // several README commands train into the same default out_dir
                    args.push("--overwrite".into());
                }
                if cnn {
                    args.extend(["--dataset", "digits", "--epochs", "1"].map(String::from));
                }
            }
            "verify" => args.push("--quick".into()),
            "sample" => args.extend(["--tokens", "20"].map(String::from)),
            _ => {}
        }
        let start = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_gradscope")).current_dir(dir.path()).args(&args).output().unwrap();
        println!("{:>6.1} s  gradscope {}", start.elapsed().as_secs_f64(), args.join(" "));
        let code = out.status.code();
        // verify's documented outcomes: 0 pass, 2 the check failed (BatchNorm does, by design)
        let ok = code == Some(0) || (sub == "verify" && code == Some(2));
        assert!(ok, "README command `gradscope {c}` (run as {args:?}) exited {code:?}:\n{}{}", out_text(&out), err_text(&out));
        ran.push(c);
    }
    println!("ran {} README commands: {ran:#?}", ran.len());
    for must in ["info", "plan", "train --model cnn", "eval runs/cnn", "eval runs/gpt", "sample", "verify", "train --resume", "help", "prepare", "train --data shakespeare_gpt2", "export runs/gpt2/ckpt.safetensors --format hf", "export runs/gpt2/ckpt.safetensors --format nanogpt"] {
        assert!(ran.iter().any(|c| c.starts_with(must)), "no README command starting with `{must}` ran: {ran:?}");
    }
}

/// Words of a command line, with "double quotes" grouping.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// A PNG's size and how many distinct colours a sample of its pixels holds (1 for a blank page).
fn png_size_and_colours(path: &std::path::Path) -> (u32, u32, usize) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(f)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let distinct: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).step_by(7).collect();
    (info.width, info.height, distinct.len())
}

/// `plot` draws a trained run's metrics as PNG (of the asked size, not blank) and SVG; the noise
/// scale panel appears when the metrics carry B_simple; a directory without metrics, and a
/// malformed row, are errors that name the file (and line).
#[test]
fn plot_draws_a_runs_curves_as_png_and_svg() {
    let dir = tmpdir("plot");
    let run = dir.path().join("run");
    let out = gradscope()
        .args(["train", "--quiet"])
        .args(TINY)
        .args(["--micro_batch", "4", "--accum_steps", "2", "--max_steps", "6", "--out_dir"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", err_text(&out));
    let pics = dir.path().join("pics");
    let out = gradscope().arg("plot").arg(&run).args(["--width", "900", "--height", "640", "--out"]).arg(&pics).output().unwrap();
    println!("{}{}", out_text(&out), err_text(&out));
    assert!(out.status.success());
    assert!(out_text(&out).contains("curves.png") && out_text(&out).contains("curves.svg"));
    let (w, h, colours) = png_size_and_colours(&pics.join("curves.png"));
    assert_eq!((w, h), (900, 640), "the asked size");
    assert!(colours > 8, "curves.png shows more than a blank page ({colours} colours)");
    let svg = std::fs::read_to_string(pics.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("validation") && svg.contains("optimizer step"), "{}", &svg[..svg.len().min(400)]);
    assert!(!svg.contains("B_simple"), "no noise-scale panel for a run that did not measure it");

    // a run whose rows carry the noise scale (as `grad_stats` writes it): its panel appears, the
    // default size and place
    let fixture = dir.path().join("noisy");
    std::fs::create_dir_all(&fixture).unwrap();
    let rows: String = (1..=20)
        .map(|s| format!(
            "{{\"step\":{s},\"train_loss\":{},\"val_loss\":null,\"grad_norm\":{},\"lr\":0.003,\"b_simple\":{},\"micro_batch\":4,\
             \"accum_steps\":4,\"memory\":{{\"bytes\":[1000000,1000000,2000000,{},65536]}}}}\n",
            4.0 - 0.1 * s as f64, 1.0 / s as f64, 10.0 + s as f64, 3_000_000 + 1000 * s
        ))
        .collect();
    std::fs::write(fixture.join("metrics.jsonl"), rows).unwrap();
    let out = gradscope().arg("plot").arg(&fixture).output().unwrap();
    assert!(out.status.success(), "{}", err_text(&out));
    let (w, h, _) = png_size_and_colours(&fixture.join("curves.png"));
    assert_eq!((w, h), (1200, 800), "the default size");
    assert!(std::fs::read_to_string(fixture.join("curves.svg")).unwrap().contains("B_simple"));

    // errors name the file
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = gradscope().arg("plot").arg(&empty).output().unwrap();
    assert_eq!(out.status.code(), Some(EXIT_ERROR));
    assert!(err_text(&out).contains("metrics.jsonl"), "{}", err_text(&out));
    std::fs::write(fixture.join("metrics.jsonl"), "{\"step\":1,\"train_loss\":2}\n{\"step\":2,\n").unwrap();
    let out = gradscope().arg("plot").arg(&fixture).output().unwrap();
    assert_eq!(out.status.code(), Some(EXIT_ERROR));
    assert!(err_text(&out).contains("metrics.jsonl") && err_text(&out).contains("line 2"), "{}", err_text(&out));
}
