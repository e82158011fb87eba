//! The shipped data sets load, and broken IDX files give clear errors (and never panic).

use std::path::{Path, PathBuf};

use gradscope::data::idx;

fn asset(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/data").join(p)
}

#[test]
fn mnist_and_digits_load_with_their_shapes() {
    let tr = idx::load_set(&asset("mnist/mnist5k-train-images-idx3-ubyte.gz"), &asset("mnist/mnist5k-train-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!((tr.n, tr.rows, tr.cols, tr.classes), (5000, 28, 28, 10));
    let per_class = (0..10).map(|c| tr.labels.iter().filter(|&&l| l == c).count()).collect::<Vec<_>>();
    assert_eq!(per_class, vec![500; 10], "500 images per class");
    let te = idx::load_set(&asset("mnist/t10k-images-idx3-ubyte.gz"), &asset("mnist/t10k-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!((te.n, te.rows, te.cols), (10000, 28, 28));
    let d = idx::load_set(&asset("digits/digits-images-idx3-ubyte.gz"), &asset("digits/digits-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!((d.n, d.rows, d.cols, d.classes), (1797, 8, 8, 10));
    assert!(d.pixels.iter().all(|&p| p <= 16));
}

#[test]
fn broken_idx_files_are_clear_errors() {
    let tmp = tempfile::Builder::new().prefix("gradscope-idx-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let good = std::fs::read(asset("digits/digits-images-idx3-ubyte.gz")).unwrap();
    // truncated gzip
    let p = dir.join("trunc.gz");
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    let e = idx::load(&p).unwrap_err().to_string();
    assert!(e.contains("trunc.gz"), "{e}");
    // labels that do not match the images
    let e = idx::load_set(&asset("digits/digits-images-idx3-ubyte.gz"), &asset("mnist/mnist5k-train-labels-idx1-ubyte.gz"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("5000 labels for 1797 images"), "{e}");
    // swapped files
    let e = idx::load_set(&asset("digits/digits-labels-idx1-ubyte.gz"), &asset("digits/digits-images-idx3-ubyte.gz"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 dimensions"), "{e}");
    // missing
    assert!(idx::load(&dir.join("none.gz")).unwrap_err().to_string().contains("none.gz"));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn idx_parser_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..64), dims in proptest::collection::vec(0u32..40, 0..5), tweak in any::<u8>()) {
            // half the cases get a plausible header so the size checks are reached
            if tweak % 2 == 0 {
                let mut h = vec![0, 0, 8, dims.len() as u8];
                for d in &dims { h.extend_from_slice(&d.to_be_bytes()); }
                h.extend_from_slice(&bytes);
                bytes = h;
            }
            let _ = idx::parse(&bytes, Path::new("fuzz.idx"));
        }

        #[test]
        fn gzip_idx_loader_never_panics(cut in 0usize..44_098, flips in proptest::collection::vec((0usize..44_098, any::<u8>()), 0..4)) {
            let mut b = std::fs::read(asset("digits/digits-images-idx3-ubyte.gz")).unwrap();
            for (i, v) in flips { let i = i % b.len(); b[i] = v; }
            b.truncate(cut.max(1));
            let tmp = tempfile::Builder::new().prefix("gradscope-idxfuzz-").tempdir().unwrap();
            let dir = tmp.path();
            let p = dir.join(format!("f{cut}.gz"));
            std::fs::write(&p, &b).unwrap();
            let _ = idx::load(&p);
            let _ = std::fs::remove_file(&p);
        }
    }
}
