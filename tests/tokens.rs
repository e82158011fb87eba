//! Tokenizers, token shards and `prepare`: GPT-2's known encodings, round trips on Unicode text,
//! prepare's chunked tokens equal to the whole text's, llm.c's header, nanoGPT's headerless files,
//! clear errors, and the sampler's documented stream over memory-mapped files.

use std::path::{Path, PathBuf};

use gradscope::data::prepare::{PrepareError, PrepareOptions, prepare};
use gradscope::data::shards::{HEADER_BYTES, SHARD_MAGIC, Tokens};
use gradscope::data::text::{TINY_SHAKESPEARE_TEXT, TextData, TextSampler, splitmix64};
use gradscope::data::tokenizer::{GPT2_EOT, Tokenizer, TokenizerKind};

fn tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("gradscope-tokens-{name}-")).tempdir().unwrap()
}

/// A shard's header and tokens, read by hand (llm.c's layout).
fn read_shard(p: &Path) -> (Vec<i32>, Vec<u32>) {
    let b = std::fs::read(p).unwrap();
    let header: Vec<i32> = b[..HEADER_BYTES].chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
    let tokens = b[HEADER_BYTES..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect();
    (header, tokens)
}

fn shards(dir: &Path, split: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(split)).collect();
    v.sort();
    v
}

#[test]
fn gpt2_known_encodings_and_unicode_round_trips() {
    let t = Tokenizer::Gpt2;
    assert_eq!(t.encode("Hello world").unwrap(), vec![15496, 995]);
    // tiktoken's r50k_base, checked by hand against GPT-2's encoder.json
    assert_eq!(t.encode(" the").unwrap(), vec![262]);
    assert_eq!(t.encode("\n").unwrap(), vec![198]);
    assert_eq!(t.decode(&[GPT2_EOT]), "<|endoftext|>");
    // a literal <|endoftext|> in text is ordinary text, not the separator
    assert!(!t.encode("a<|endoftext|>b").unwrap().contains(&GPT2_EOT));
    for s in ["Grüße, 世界! 🦀 naïve café — ½ ∑ x²\n\n\tend", "日本語のテキスト", "   spaces  \r\n", "", "e\u{301} ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"] {
        let ids = t.encode(s).unwrap();
        assert!(ids.iter().all(|&i| (i as usize) < 50257));
        assert_eq!(t.decode(&ids), s);
    }
    let c = Tokenizer::Char("abc".chars().collect());
    assert_eq!(c.encode("cab").unwrap(), vec![2, 0, 1]);
    assert!(c.encode("d").is_err());
}

#[test]
fn prepare_streams_the_same_tokens_as_the_whole_text() {
    let whole = Tokenizer::Gpt2.encode(TINY_SHAKESPEARE_TEXT).unwrap();
    let dir = tmpdir("prep");
    let input = dir.path().join("shakespeare.txt");
    std::fs::write(&input, TINY_SHAKESPEARE_TEXT).unwrap();
    // small chunks and shards: many chunk and shard boundaries
    for (chunk, shard) in [(4096, 50_000), (1 << 20, 100_000_000), (100, 7_777)] {
        let out = dir.path().join(format!("out{chunk}"));
        let mut opts = PrepareOptions::new(vec![input.clone()], out.clone());
        opts.chunk_bytes = chunk;
        opts.shard_tokens = shard;
        let mut last = 0;
        let r = prepare(&opts, &mut |d| last = d).unwrap();
        assert_eq!(last, TINY_SHAKESPEARE_TEXT.len() as u64);
        let mut got = Vec::new();
        let mut counts = [0u64; 2];
        for (i, split) in ["train", "val"].iter().enumerate() {
            for p in shards(&out, split) {
                let (h, t) = read_shard(&p);
                assert_eq!((h[0], h[1], h[2] as usize), (SHARD_MAGIC, 1, t.len()), "{}", p.display());
                assert!(h[3..].iter().all(|&x| x == 0));
                assert!(t.len() <= shard);
                counts[i] += t.len() as u64;
                got.extend(t);
            }
        }
        assert_eq!(got, whole, "chunk {chunk}: prepare's tokens differ from the whole text's");
        assert_eq!(counts, [r.train_tokens, r.val_tokens]);
        // the split is at 90% of the bytes (at a safe place near it)
        let frac = r.val_tokens as f64 / (r.train_tokens + r.val_tokens) as f64;
        assert!((0.09..0.12).contains(&frac), "validation share {frac}");
    }
}

#[test]
fn prepare_separates_documents_and_refuses_bad_input() {
    let dir = tmpdir("docs");
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    let texts = ["First document.\nWith two lines.\n", "Second one, ünïcödé.", &"Third line.\nand last, long enough to split.\n".repeat(20)];
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(docs.join(format!("{i}.txt")), t).unwrap();
    }
    std::fs::write(docs.join(".hidden"), "skipped").unwrap();
    let out = dir.path().join("out");
    prepare(&PrepareOptions::new(vec![docs.clone()], out.clone()), &mut |_| {}).unwrap();
    let mut want = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        if i > 0 {
            want.push(GPT2_EOT);
        }
        want.extend(Tokenizer::Gpt2.encode(t).unwrap());
    }
    let got: Vec<u32> = shards(&out, "train").iter().chain(shards(&out, "val").iter()).flat_map(|p| read_shard(p).1).collect();
    assert_eq!(got, want);
    // the folder trains: its meta.json names the tokenizer
    let d = TextData::open(&out, TokenizerKind::Char, 0).unwrap();
    assert_eq!(d.tokenizer, Tokenizer::Gpt2);
    assert_eq!(d.vocab_size(), 50257);
    // text with no newline to cut at is still split (at a character boundary near 90%)
    let flat = dir.path().join("flat.txt");
    std::fs::write(&flat, "ü word ".repeat(500)).unwrap();
    let r = prepare(&PrepareOptions::new(vec![flat], dir.path().join("flat")), &mut |_| {}).unwrap();
    assert!(r.val_tokens > 0 && r.train_tokens > 5 * r.val_tokens, "{r:?}");
    // a second prepare into the same folder needs --overwrite
    let e = prepare(&PrepareOptions::new(vec![docs.clone()], out.clone()), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("--overwrite"), "{e}");

    // non-UTF-8: the file and the byte offset
    let bad = dir.path().join("bad.txt");
    let mut bytes = "ok text\n".repeat(1000).into_bytes();
    bytes[5003] = 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let mut opts = PrepareOptions::new(vec![bad.clone()], dir.path().join("bad_out"));
    opts.chunk_bytes = 1000;
    match prepare(&opts, &mut |_| {}) {
        Err(PrepareError::NotText { path, offset }) => assert_eq!((path, offset), (bad.clone(), 5003)),
        other => panic!("{other:?}"),
    }
    // nothing half-written is left behind
    let left: Vec<_> = std::fs::read_dir(dir.path().join("bad_out")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // a multi-byte character cut by the end of the file
    std::fs::write(&bad, b"abc\n\xc3").unwrap();
    let e = prepare(&PrepareOptions::new(vec![bad.clone()], dir.path().join("bad2")), &mut |_| {}).unwrap_err();
    assert!(matches!(e, PrepareError::NotText { offset: 4, .. }), "{e}");
    assert!(e.to_string().contains("bad.txt") && e.to_string().contains("offset 4"), "{e}");
}

/// The documented stream (src/data/text.rs), written out: sample i starts at
/// splitmix64() % (n_train - T).
fn documented_offsets(seed: u64, n_train: usize, t: usize, n: usize) -> Vec<usize> {
    let mut s = seed;
    (0..n).map(|_| (splitmix64(&mut s) % (n_train - t) as u64) as usize).collect()
}

#[test]
fn one_text_file_keeps_the_documented_stream_and_mapped_shards_give_the_same_windows() {
    let t = 64;
    // the char corpus: 90% of the characters, the documented offsets
    let d = TextData::load(Path::new(gradscope::data::text::TINY_SHAKESPEARE)).unwrap();
    assert_eq!(d.train.len(), 1_115_394 * 9 / 10);
    let chars: Vec<char> = TINY_SHAKESPEARE_TEXT.chars().collect();
    let mut sampler = TextSampler::new(42, t, false);
    let samples = sampler.window(&d.train, 40);
    for (s, o) in samples.iter().zip(documented_offsets(42, d.train.len(), t, 40)) {
        assert_eq!(d.decode(&s.inputs), chars[o..o + t].iter().collect::<String>());
        assert_eq!(d.decode(&s.targets), chars[o + 1..o + t + 1].iter().collect::<String>());
    }

    // GPT-2 tokens, in memory (a text file) and memory-mapped (shards of a few tokens, so that
    // windows span files): the same windows from the same seed
    let tokens = Tokenizer::Gpt2.encode(TINY_SHAKESPEARE_TEXT).unwrap();
    let dir = tmpdir("mapped");
    let input = dir.path().join("s.txt");
    std::fs::write(&input, TINY_SHAKESPEARE_TEXT).unwrap();
    let mut opts = PrepareOptions::new(vec![input.clone()], dir.path().join("shards"));
    opts.shard_tokens = 1000;
    prepare(&opts, &mut |_| {}).unwrap();
    let mapped = TextData::open(&dir.path().join("shards"), TokenizerKind::Gpt2, 0).unwrap();
    assert!(matches!(mapped.train, Tokens::Mapped(ref f) if f.len() > 100));
    let n_train = mapped.train.len();
    let owned: Tokens = tokens[..n_train].to_vec().into();
    let (mut a, mut b) = (TextSampler::new(7, t, true), TextSampler::new(7, t, true));
    assert_eq!(a.window(&mapped.train, 200), b.window(&owned, 200));
    let mut s = TextSampler::new(9, t, false);
    for (x, o) in s.window(&mapped.train, 50).iter().zip(documented_offsets(9, n_train, t, 50)) {
        assert_eq!(x.inputs, tokens[o..o + t]);
        assert_eq!(x.targets, tokens[o + 1..o + t + 1]);
    }
    let (vx, vy) = mapped.val_window(3, t);
    assert_eq!((vx.as_slice(), vy.as_slice()), (&tokens[n_train + 3 * t..n_train + 4 * t], &tokens[n_train + 3 * t + 1..n_train + 4 * t + 1]));
}

#[test]
fn nanogpt_bins_need_vocab_size_and_bad_token_files_are_clear_errors() {
    let dir = tmpdir("nanogpt");
    let write = |name: &str, ids: &[u16]| std::fs::write(dir.path().join(name), ids.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let train: Vec<u16> = (0..5000).map(|i| (i * 7 % 65) as u16).collect();
    write("train.bin", &train);
    write("val.bin", &train[..600]);
    let e = TextData::open(&dir.path().join("train.bin"), TokenizerKind::Char, 0).unwrap_err().to_string();
    assert!(e.contains("vocab_size"), "{e}");
    let d = TextData::open(&dir.path().join("train.bin"), TokenizerKind::Char, 65).unwrap();
    assert_eq!((d.train.len(), d.val.len(), d.vocab_size()), (5000, 600, 65));
    assert_eq!(d.train.copy(10, 5), train[10..15].iter().map(|&x| x as u32).collect::<Vec<_>>());
    assert_eq!(d.tokenizer, Tokenizer::Ids(65));
    // the folder form, and GPT-2 tokens without meta.json
    let g = TextData::open(dir.path(), TokenizerKind::Gpt2, 0).unwrap();
    assert_eq!((&g.tokenizer, g.vocab_size()), (&Tokenizer::Gpt2, 50257));
    // a token past vocab_size names the id
    let e = TextData::open(&dir.path().join("train.bin"), TokenizerKind::Char, 60).unwrap_err().to_string();
    assert!(e.contains("token id 64") && e.contains("vocab_size 60"), "{e}");
    // an odd size, a wrong header count, a missing validation file
    std::fs::write(dir.path().join("odd_train.bin"), [1u8, 2, 3]).unwrap();
    std::fs::write(dir.path().join("odd_val.bin"), [1u8, 2]).unwrap();
    let e = TextData::open(&dir.path().join("odd_train.bin"), TokenizerKind::Gpt2, 0).unwrap_err().to_string();
    assert!(e.contains("odd_train.bin") && e.contains("odd size"), "{e}");
    let mut h = vec![0u8; HEADER_BYTES];
    h[..4].copy_from_slice(&SHARD_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&1i32.to_le_bytes());
    h[8..12].copy_from_slice(&10i32.to_le_bytes());
    h.extend([0u8; 8]);
    std::fs::write(dir.path().join("short_train.bin"), &h).unwrap();
    std::fs::write(dir.path().join("short_val.bin"), &h).unwrap();
    let e = TextData::open(&dir.path().join("short_train.bin"), TokenizerKind::Gpt2, 0).unwrap_err().to_string();
    assert!(e.contains("short_train.bin") && e.contains("header says 10 tokens"), "{e}");
    let e = TextData::open(&dir.path().join("lonely_train.bin"), TokenizerKind::Gpt2, 0);
    assert!(e.is_err());
    std::fs::write(dir.path().join("lonely_train.bin"), [0u8; 8]).unwrap();
    let e = TextData::open(&dir.path().join("lonely_train.bin"), TokenizerKind::Gpt2, 0).unwrap_err().to_string();
    assert!(e.contains("lonely_val.bin") && e.contains("missing"), "{e}");
}

fn gradscope(dir: &Path, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gradscope")).current_dir(dir).args(args).output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "gradscope {args:?} exited {:?}:\n{o}{e}", out.status.code());
    (o, e)
}

const TINY: [&str; 16] = [
    "--n_layer", "1", "--n_head", "1", "--n_embd", "16", "--block_size", "8", "--micro_batch", "2", "--accum_steps", "1",
    "--eval_windows", "2", "--eval_every", "0",
];

/// prepare -> train on the shards (GPT-2 tokens) -> sample decodes GPT-2 text; a checkpoint
/// written before checkpoints named their tokenizer samples characters.
#[test]
fn gpt2_shards_train_and_sample_and_old_checkpoints_mean_char() {
    let dir = tmpdir("cli");
    let d = dir.path();
    std::fs::write(d.join("a.txt"), &TINY_SHAKESPEARE_TEXT[..200_000]).unwrap();
    let (o, _) = gradscope(d, &["prepare", "a.txt", "--tokenizer", "gpt2", "--out", "shards"]);
    assert!(o.contains("tokens/s"), "{o}");
    let mut args = vec!["train", "--data", "shards", "--max_steps", "2", "--out_dir", "gpt2run"];
    args.extend(TINY);
    let (o, _) = gradscope(d, &args);
    assert!(o.contains("vocabulary       50257 tokens (GPT-2 BPE)"), "{o}");
    let (meta, _) = checkpoint_meta(&d.join("gpt2run/ckpt.safetensors"));
    assert_eq!(meta.get("tokenizer").map(String::as_str), Some("gpt2"));
    let (o, _) = gradscope(d, &["sample", "gpt2run/ckpt.safetensors", "--prompt", "ROMEO: ünï", "--tokens", "12", "--temperature", "0"]);
    // the prompt goes through GPT-2's BPE (a char vocabulary of Shakespeare has no ü), and the
    // continuation is GPT-2 text: 12 tokens, most of them several characters long
    assert!(o.starts_with("ROMEO: ünï"), "{o}");
    let cont = &o["ROMEO: ünï".len()..];
    assert!(cont.chars().count() > 14, "{o:?}");

    // a char run, its checkpoint rewritten without the tokenizer metadata
    let mut args = vec!["train", "--max_steps", "1", "--out_dir", "charrun"];
    args.extend(TINY);
    gradscope(d, &args);
    let p = d.join("charrun/ckpt.safetensors");
    let (mut meta, tensors) = checkpoint_meta(&p);
    assert_eq!(meta.remove("tokenizer").as_deref(), Some("char"));
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        tensors.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())).collect();
    std::fs::write(&p, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    let (o, _) = gradscope(d, &["sample", "charrun/ckpt.safetensors", "--prompt", "ROMEO:", "--tokens", "30"]);
    let cont = &o["ROMEO:".len()..o.len() - 1];
    assert_eq!(cont.chars().count(), 30, "{o:?}");
    assert!(cont.chars().all(|c| TINY_SHAKESPEARE_TEXT.contains(c)), "{o:?}");
}

type Tensors = Vec<(String, Vec<usize>, Vec<u8>)>;

fn checkpoint_meta(p: &Path) -> (std::collections::HashMap<String, String>, Tensors) {
    let bytes = std::fs::read(p).unwrap();
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    (md.metadata().clone().unwrap_or_default(), tensors)
}
