//! nanoGPT's config names and `config/*.py` files: the names map to gradscope's keys (in TOML
//! files, `.py` files and flags), Python literals and arithmetic are evaluated as Python does,
//! anything else is refused with its line number, and the cosine schedule with `lr_decay_iters`
//! is nanoGPT's.

use std::path::Path;

use gradscope::train::TrainConfig;
use gradscope::train::config::{ConfigError, Schedule};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// nanoGPT's config/train_shakespeare_char.py, verbatim.
const SHAKESPEARE_CHAR: &str = r#"# train a miniature character-level shakespeare model
# good for debugging and playing on macbooks and such

out_dir = 'out-shakespeare-char'
eval_interval = 250 # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10 # don't print too too often

# we expect to overfit on this small dataset, so only save when val improves
always_save_checkpoint = False

wandb_log = False # override via command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

gradient_accumulation_steps = 1
batch_size = 64
block_size = 256 # context of 256 previous characters

# baby GPT model :)
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3 # with baby networks can afford to go a bit higher
max_iters = 5000
lr_decay_iters = 5000 # make equal to max_iters usually
min_lr = 1e-4 # learning_rate / 10 usually
beta2 = 0.99 # make a bit bigger because number of tokens per iter is small

warmup_iters = 100 # not super necessary potentially

# on macbook also add
# device = 'cpu'  # run on cpu only
# compile = False # do not torch compile the model
"#;

#[test]
fn nanogpt_py_configs_read_as_their_gradscope_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "train_shakespeare_char.py", SHAKESPEARE_CHAR);
    let c = TrainConfig::load(Some(&p), &[]).unwrap();
    let want = TrainConfig {
        out_dir: "out-shakespeare-char".into(),
        eval_every: 250,
        accum_steps: 1,
        micro_batch: 64,
        block_size: 256,
        n_layer: 6,
        n_head: 6,
        n_embd: 384,
        dropout: 0.2,
        lr: 1e-3,
        max_steps: 5000,
        decay_steps: 5000,
        min_lr: 1e-4,
        beta2: 0.99,
        warmup_steps: 100,
        ..TrainConfig::default()
    };
    assert_eq!(c, want);
    // decay_lr (nanoGPT's default True is not assumed: gradscope's default schedule is constant)
    let c = TrainConfig::load(Some(&p), &["--decay_lr=True".into()]).unwrap();
    assert_eq!(c.schedule, Schedule::Cosine);
    let c = TrainConfig::load(Some(&p), &["--decay_lr=False".into()]).unwrap();
    assert_eq!(c.schedule, Schedule::Constant);
    // a flag overrides the file's nanoGPT name with either name
    assert_eq!(TrainConfig::load(Some(&p), &["--micro_batch=12".into()]).unwrap().micro_batch, 12);
    assert_eq!(TrainConfig::load(Some(&p), &["--batch_size=12".into()]).unwrap().micro_batch, 12);

    // Python's literals and arithmetic
    let p = write(
        dir.path(),
        "arith.py",
        "batch_size = 8 * 2\nmax_iters = 10 ** 3\nlr_decay_iters = max_iters // 3 + 1\nwarmup_iters = -7 // 2 + 10\n\
         learning_rate = 6e-4 / 10\nn_embd = (64 * 4)\nn_head = 17 % 5 + 6 % -4 + 4\nout_dir = \"runs/\" + 'x y'\ndecay_lr = True\n\
         bias = True\ngrad_clip = 1_000.5 - 1e3\ninit_from = 'scratch'\n",
    );
    let c = TrainConfig::load(Some(&p), &[]).unwrap();
    assert_eq!((c.micro_batch, c.max_steps, c.decay_steps, c.warmup_steps), (16, 1000, 334, 6));
    assert_eq!((c.lr, c.n_embd, c.out_dir.as_str(), c.schedule), (6e-4 / 10.0, 256, "runs/x y", Schedule::Cosine));
    // 17 % 5 = 2, 6 % -4 = -2 in Python
    assert_eq!(c.n_head, 4);
    assert_eq!((c.grad_clip, c.init_from.as_str()), (0.5, ""));
}

#[test]
fn anything_else_is_refused_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("batch_size = 4\nimport time\n", ":2: not an assignment"),
        ("wandb_run_name = 'ft-' + str(time.time())\n", ":1: unexpected '.'"),
        ("n_layer = int(4)\n", ":1: a call (int(...))"),
        ("\n\nn_layer = [1, 2]\n", ":3: unexpected '['"),
        ("n_layer = 2 +\n", ":1: a value is missing"),
        ("out_dir = 'open\n", ":1: a string without its closing quote"),
        ("n_layer = nope\n", ":1: nope is not a literal nor a key set above"),
        ("n_layer = 1 / 0\n", ":1: division by zero"),
        ("n_layer = 2 3\n", ":1: more after the value"),
        ("dataset = 'shakespeare_char'\n", ":1: `dataset`"),
        ("init_from = 'gpt2-xl'\n", ":1: init_from = 'gpt2-xl'"),
    ] {
        let p = write(dir.path(), "bad.py", text);
        let e = TrainConfig::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains(&format!("bad.py{want}")), "{text:?}: {e}");
    }
    // known syntax, refused values: each names its key
    for (text, want) in [
        ("unknown_key = 3\n", "unknown config key `unknown_key`"),
        ("bias = False\n", "bias = false"),
        ("dropout = 1.0\n", "dropout must be in [0, 1), got 1"),
        ("batch_size = 'x'\n", "`micro_batch`"),
        ("decay_lr = 3\n", "`decay_lr`"),
        ("lr_decay_iters = 10\nwarmup_iters = 10\n", "decay_steps 10 must be larger than warmup_steps 10"),
    ] {
        let p = write(dir.path(), "bad.py", text);
        let e = TrainConfig::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    // one layer may not give a key under both names
    let p = write(dir.path(), "both.toml", "lr = 1e-3\nlearning_rate = 2e-3\n");
    let e = TrainConfig::load(Some(&p), &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Invalid(ref m) if m.contains("`lr`") && m.contains("`learning_rate`")), "{e}");
    // a TOML file takes nanoGPT's names too
    let p = write(dir.path(), "names.toml", "batch_size = 12\ngradient_accumulation_steps = 5\neval_interval = 7\n");
    let c = TrainConfig::load(Some(&p), &[]).unwrap();
    assert_eq!((c.micro_batch, c.accum_steps, c.eval_every), (12, 5, 7));
}

/// nanoGPT's get_lr (train.py) after warmup: cosine from learning_rate to min_lr between
/// warmup_iters and lr_decay_iters, min_lr after.
#[test]
fn lr_decay_iters_is_nanogpts_cosine() {
    let c = TrainConfig::load(None, &["--decay_lr", "True", "--learning_rate", "1e-3", "--min_lr", "1e-4", "--warmup_iters", "100", "--lr_decay_iters", "1500", "--max_iters", "2000"].map(String::from)).unwrap();
    for it in [100usize, 101, 500, 800, 1499, 1500, 1501, 1999] {
        let nanogpt = if it > 1500 {
            1e-4
        } else {
            let r = (it - 100) as f64 / 1400.0;
            1e-4 + 0.5 * (1.0 + (std::f64::consts::PI * r).cos()) * (1e-3 - 1e-4)
        };
        assert!((c.lr_at(it) - nanogpt).abs() < 1e-12, "step {it}: {} vs nanoGPT {nanogpt}", c.lr_at(it));
    }
}

#[test]
fn nanogpt_names_are_flags() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gradscope")).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // the value reaches the key's check, under the key's name
    let (code, err, _) = run(&["train", "--batch-size", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("micro_batch (B) must be at least 1"), "{err}");
    let (_, err, _) = run(&["train", "--gradient_accumulation_steps=0"]);
    assert!(err.contains("accum_steps (K) must be at least 1"), "{err}");
    let (_, err, _) = run(&["train", "--learning-rate", "1e-3", "--lr", "2e-3"]);
    assert!(err.contains("both `lr` and its nanoGPT name `learning_rate`"), "{err}");
    let (_, _, help) = run(&["train", "--help"]);
    for name in ["--batch-size", "--gradient-accumulation-steps", "--learning-rate", "--max-iters", "--eval-interval", "--warmup-iters", "--lr-decay-iters", "--decay-lr", "--dropout", "--bias"] {
        assert!(help.contains(name), "{name} missing from --help");
    }
}
