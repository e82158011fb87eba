//! The command line end to end: `train` writes metrics and a checkpoint, `eval` and `sample` read
//! it, `verify --quick` passes with the correct settings and fails (exit 2, with a diagnosis)
//! with a broken normalization.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// The f16 command lines need an adapter with SHADER_F16 (without it they train in f32 and say so,
/// which tests/precision.rs checks): fail with that message rather than on a figure.
fn require_f16() {
    let g = common::gpu();
    assert!(g.has_f16(), "{} has no SHADER_F16; the f16 command-line tests need it (lavapipe on Vulkan has it)", g.summary.name);
}

fn gradscope() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gradscope"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gradscope-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
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
        .arg(&dir)
        .output()
        .unwrap();
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

    let out = gradscope().arg("sample").arg(&ck).args(["--tokens", "40", "--prompt", "ROMEO:"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.starts_with("ROMEO:"), "{s}");
    assert!(s.trim_end().chars().count() >= "ROMEO:".len() + 20, "{s}");
}

#[test]
fn bad_input_fails_with_a_clear_message_and_no_panic() {
    for (args, want) in [
        (vec!["train", "--micro_batch", "0"], "micro_batch"),
        (vec!["train", "--no_such_key", "1"], "no_such_key"),
        (vec!["eval", "/nonexistent/ck.safetensors"], "/nonexistent/ck.safetensors"),
        (vec!["train", "--data", "/nonexistent/x.txt"], "/nonexistent/x.txt"),
    ] {
        let out = gradscope().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn verify_quick_passes_and_catches_the_broken_normalization() {
    let out = gradscope().args(["verify", "--quick"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    println!("{s}");
    assert!(out.status.success(), "{s}{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.contains("PASS"));

    let out = gradscope()
        .args(["verify", "--quick", "--normalization", "per-micro-batch-mean", "--padded", "true"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    println!("{s}");
    assert_eq!(out.status.code(), Some(2), "the broken normalization must fail the check");
    assert!(s.contains("FAIL") && s.contains("diagnosis"), "{s}");
}

#[test]
fn cnn_trains_and_evaluates_from_the_command_line() {
    let dir = tmpdir("cnn");
    let out = gradscope()
        .args(["train", "--quiet", "--model", "cnn", "--dataset", "digits", "--norm", "batch", "--epochs", "1", "--micro_batch", "16", "--out_dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    println!("{s}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(s.contains("test accuracy") && s.contains("images/s"), "{s}");
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
        .arg(&dir)
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
        .arg(&dir)
        .output()
        .unwrap();
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
        &["matmul_forward", "matmul_backward_input", "attention_forward", "gelu_forward"]
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
