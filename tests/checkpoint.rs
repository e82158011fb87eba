//! Checkpoints (names, shapes, atomic files, exact resume) and clear errors on bad input.

mod common;


use gradscope::train::checkpoint::{self, CheckpointError};
use gradscope::train::{TrainConfig, Trainer};

fn tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("gradscope-{name}-")).tempdir().unwrap()
}

fn small(dir: &std::path::Path) -> TrainConfig {
    TrainConfig { max_steps: 5, eval_windows: 8, padded: true, out_dir: dir.display().to_string(), ..common::small_gpt(3, 2) }
}

#[test]
fn resume_continues_bit_exactly() {
    let g = common::gpu();
    let dir_tmp = tmpdir("resume");
    let dir = dir_tmp.path().to_path_buf();
    let cfg = small(&dir);
    // N + M = 5 steps straight
    let mut straight = Trainer::new(&g, cfg.clone()).unwrap();
    for _ in 0..5 {
        straight.train_step().unwrap();
    }
    // N = 3, save, resume, M = 2
    let mut first = Trainer::new(&g, cfg.clone()).unwrap();
    for _ in 0..3 {
        first.train_step().unwrap();
    }
    let ck = dir.join("ck.safetensors");
    first.save(&ck).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&g, &ck, &[]).unwrap();
    assert_eq!(resumed.step, 3);
    while resumed.step < 5 {
        resumed.train_step().unwrap();
    }
    let (a, b) = (straight.model.slabs().read_params().unwrap(), resumed.model.slabs().read_params().unwrap());
    let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "parameters after resume differ from the straight run");
    assert_eq!(straight.model.slabs().read_adam().unwrap(), resumed.model.slabs().read_adam().unwrap());
    assert_eq!(straight.gpt().unwrap().sampler, resumed.gpt().unwrap().sampler);
}

#[test]
fn checkpoint_has_pytorch_names_and_shapes() {
    let g = common::gpu();
    let dir_tmp = tmpdir("names");
    let dir = dir_tmp.path().to_path_buf();
    let t = Trainer::new(&g, small(&dir)).unwrap();
    let ck = dir.join("ck.safetensors");
    t.save(&ck).unwrap();
    let bytes = std::fs::read(&ck).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (v, c, tt) = (t.gpt().unwrap().gcfg.vocab_size, 32, 16);
    let mut want: Vec<(String, Vec<usize>)> = vec![("wte.weight".into(), vec![v, c]), ("wpe.weight".into(), vec![tt, c])];
    for i in 0..2 {
        for (n, s) in [
            ("ln1.weight", vec![c]), ("ln1.bias", vec![c]), ("c_attn.weight", vec![3 * c, c]), ("c_attn.bias", vec![3 * c]),
            ("attn_proj.weight", vec![c, c]), ("attn_proj.bias", vec![c]), ("ln2.weight", vec![c]), ("ln2.bias", vec![c]),
            ("c_fc.weight", vec![4 * c, c]), ("c_fc.bias", vec![4 * c]), ("mlp_proj.weight", vec![c, 4 * c]), ("mlp_proj.bias", vec![c]),
        ] {
            want.push((format!("blocks.{i}.{n}"), s));
        }
    }
    want.push(("ln_f.weight".into(), vec![c]));
    want.push(("ln_f.bias".into(), vec![c]));
    let mut names: Vec<String> =
        st.names().into_iter().filter(|n| !n.starts_with("optimizer.")).map(String::from).collect();
    assert!(st.tensor(checkpoint::OPT_M).is_ok() && st.tensor(checkpoint::OPT_V).is_ok(), "AdamW state in the same file");
    names.sort();
    let mut wn: Vec<String> = want.iter().map(|(n, _)| n.clone()).collect();
    wn.sort();
    assert_eq!(names, wn);
    for (n, s) in &want {
        assert_eq!(st.tensor(n).unwrap().shape(), &s[..], "{n}");
    }
    // values round-trip: the flat slab rebuilt from the file equals the device's parameters
    let back = checkpoint::load_weights(&ck, &t.gpt().unwrap().gcfg).unwrap();
    assert_eq!(back, t.model.slabs().read_params().unwrap());
    // no temp files left behind
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        n.contains(".tmp").then_some(n)
    }).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn corrupt_truncated_foreign_and_mismatched_checkpoints_are_refused() {
    let g = common::gpu();
    let dir_tmp = tmpdir("corrupt");
    let dir = dir_tmp.path().to_path_buf();
    let t = Trainer::new(&g, small(&dir)).unwrap();
    let ck = dir.join("ck.safetensors");
    t.save(&ck).unwrap();
    let good = std::fs::read(&ck).unwrap();

    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, &good[..good.len() / 2]).unwrap();
    let e = checkpoint::load_weights(&bad, &t.gpt().unwrap().gcfg).unwrap_err();
    assert!(matches!(e, CheckpointError::Corrupt { .. }), "truncated: {e}");
    println!("truncated: {e}");

    std::fs::write(&bad, b"this is not a checkpoint at all").unwrap();
    let e = checkpoint::load_weights(&bad, &t.gpt().unwrap().gcfg).unwrap_err();
    assert!(matches!(e, CheckpointError::Corrupt { .. }), "garbage: {e}");

    // a valid safetensors file without our tensors (foreign)
    let data = vec![0u8; 16];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    std::fs::write(&bad, safetensors::serialize([("something.else", view)], None).unwrap()).unwrap();
    let e = checkpoint::load_weights(&bad, &t.gpt().unwrap().gcfg).unwrap_err();
    assert!(matches!(e, CheckpointError::Missing { .. }), "foreign: {e}");
    assert!(e.to_string().contains("wte.weight"), "{e}");

    // a checkpoint of another model shape
    let mut other = t.gpt().unwrap().gcfg;
    other.n_embd = 64;
    let e = checkpoint::load_weights(&ck, &other).unwrap_err();
    assert!(matches!(e, CheckpointError::ConfigMismatch { .. }), "mismatch: {e}");

    // resume with a block_size other than the model's
    let e = Trainer::resume(&g, &ck, &["--block_size".into(), "32".into()]).err().unwrap();
    assert!(e.to_string().contains("cannot change"), "{e}");

    let e = Trainer::resume(&g, &dir.join("missing.safetensors"), &[]).err().unwrap();
    assert!(e.to_string().contains("missing.safetensors"), "{e}");
}

fn load_err(ov: &[&str]) -> String {
    let ov: Vec<String> = ov.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(None, &ov).unwrap_err().to_string()
}

#[test]
fn bad_configs_give_clear_errors() {
    assert!(load_err(&["--micro_batch", "0"]).contains("micro_batch"));
    assert!(load_err(&["--accum_steps=0"]).contains("accum_steps"));
    let e = load_err(&["--micro_bach", "4"]);
    assert!(e.contains("micro_bach"), "unknown key must be named: {e}");
    assert!(load_err(&["--lr", "fast"]).contains("lr") || load_err(&["--lr", "fast"]).contains("invalid type"));
    assert!(load_err(&["--lr"]).contains("no value"));
    assert!(load_err(&["--n_embd", "100", "--n_head", "3"]).contains("divisible"));
    assert!(load_err(&["--beta2", "1.5"]).contains("beta2"));
    assert!(load_err(&["micro_batch", "4"]).contains("--key value"));
    // a TOML file with an unknown key
    let dir_tmp = tmpdir("badtoml");
    let dir = dir_tmp.path().to_path_buf();
    let f = dir.join("c.toml");
    std::fs::write(&f, "micro_batch = 4\nwarmup = 3\n").unwrap();
    let e = TrainConfig::load(Some(&f), &[]).unwrap_err().to_string();
    assert!(e.contains("warmup"), "{e}");
    // the file, then overrides win
    std::fs::write(&f, "micro_batch = 4\naccum_steps = 8\n").unwrap();
    let c = TrainConfig::load(Some(&f), &["--accum_steps".into(), "2".into()]).unwrap();
    assert_eq!((c.micro_batch, c.accum_steps), (4, 2));
}

#[test]
fn device_limits_and_data_errors_are_clear() {
    let g = common::gpu();
    let dir_tmp = tmpdir("limits");
    let dir = dir_tmp.path().to_path_buf();
    // a micro-batch whose activations cannot be bound
    let cfg = TrainConfig { micro_batch: 100_000, ..small(&dir) };
    let e = Trainer::new(&g, cfg).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("max storage binding"), "{e}");
    // rows past a CPU adapter's loop limit (Mesa stops shader loops after 65,535 iterations)
    if g.kind == gradscope::gpu::DeviceKind::Cpu {
        let cfg = TrainConfig { n_layer: 1, n_head: 1, n_embd: 8, micro_batch: 4200, ..small(&dir) };
        let e = Trainer::new(&g, cfg).err().unwrap().to_string();
        assert!(e.contains("65535 loop iterations"), "{e}");
    }
    // missing data
    let cfg = TrainConfig { data: "/nonexistent/text.txt".into(), ..small(&dir) };
    let e = Trainer::new(&g, cfg).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/text.txt"), "{e}");
    // empty text
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let cfg = TrainConfig { data: empty.display().to_string(), ..small(&dir) };
    assert!(Trainer::new(&g, cfg).err().unwrap().to_string().contains("empty"));
    // too short for the block
    let short = dir.join("short.txt");
    std::fs::write(&short, "abc").unwrap();
    let cfg = TrainConfig { data: short.display().to_string(), ..small(&dir) };
    assert!(Trainer::new(&g, cfg).err().unwrap().to_string().contains("too short"));
}

#[test]
fn init_from_starts_from_given_weights() {
    let g = common::gpu();
    let dir_tmp = tmpdir("initfrom");
    let dir = dir_tmp.path().to_path_buf();
    let mut a = Trainer::new(&g, small(&dir)).unwrap();
    a.train_step().unwrap();
    let ck = dir.join("a.safetensors");
    a.save(&ck).unwrap();
    let b = Trainer::new(&g, TrainConfig { init_from: ck.display().to_string(), seed: 999, ..small(&dir) }).unwrap();
    assert_eq!(b.model.slabs().read_params().unwrap(), a.model.slabs().read_params().unwrap(), "weights come from the file, not the seed");
    assert_eq!(b.step, 0, "a new run: step, optimizer state and sampler start fresh");
    let e = Trainer::new(&g, TrainConfig { init_from: ck.display().to_string(), n_embd: 64, ..small(&dir) }).err().unwrap();
    assert!(format!("{e:#}").contains("different model"), "{e:#}");
}
