//! Image classification data for the CNN: MNIST (5k train / 10k test) or the 8x8 UCI digits,
//! standardized with the training set's mean and deviation, and a seeded per-epoch shuffle.
//!
//! Sampler: epoch e visits the training images in the order of a Fisher-Yates shuffle driven by
//! splitmix64 seeded with `data_seed + e`. Each optimizer step takes the next E = B*K images, split
//! in order into micro-batches of B; the epoch's last window may be short (its last micro-batch
//! too): it is stepped and normalized by its real count, no image is dropped.
//!
//! Both data sets are built into the binary (`ImageData::built_in`), so the CNN trains from any
//! working directory; `ImageData::load` reads the same files from a directory.

use std::path::{Path, PathBuf};

use super::idx::{Idx, IdxError, ImageSet};
use super::text::splitmix64;

/// The files of `assets/data/` built into the binary, by their path under it.
macro_rules! built_in_files {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("../../assets/data/", $name)) as &[u8])),*]
    };
}
static BUILT_IN: [(&str, &[u8]); 6] = built_in_files![
    "mnist/mnist5k-train-images-idx3-ubyte.gz",
    "mnist/mnist5k-train-labels-idx1-ubyte.gz",
    "mnist/t10k-images-idx3-ubyte.gz",
    "mnist/t10k-labels-idx1-ubyte.gz",
    "digits/digits-images-idx3-ubyte.gz",
    "digits/digits-labels-idx1-ubyte.gz",
];

/// Which image data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// MNIST 28x28: 5,000 training images, the 10,000 test images.
    #[default]
    Mnist,
    /// UCI digits 8x8 (1,797 images): the first 1,500 train, the rest test. Tiny, for tests.
    Digits,
}

/// Standardized images as f32, with labels.
#[derive(Clone, Debug)]
pub struct Images {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub classes: usize,
    /// [n, 1, h, w]
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
}

impl Images {
    pub fn image(&self, i: usize) -> &[f32] {
        let s = self.h * self.w;
        &self.pixels[i * s..(i + 1) * s]
    }
}

/// Train and test splits of a data set.
pub struct ImageData {
    pub train: Images,
    pub test: Images,
}

fn to_f32(set: &ImageSet, lo: usize, hi: usize, scale: f32, mean: f32, std: f32) -> Images {
    let s = set.rows * set.cols;
    Images {
        n: hi - lo,
        h: set.rows,
        w: set.cols,
        classes: set.classes,
        pixels: set.pixels[lo * s..hi * s].iter().map(|&p| (p as f32 / scale - mean) / std).collect(),
        labels: set.labels[lo..hi].iter().map(|&l| l as u32).collect(),
    }
}

fn mean_std(set: &ImageSet, n: usize, scale: f32) -> (f32, f32) {
    let s = set.rows * set.cols;
    let px = &set.pixels[..n * s];
    let m = px.iter().map(|&p| p as f64 / scale as f64).sum::<f64>() / px.len() as f64;
    let v = px.iter().map(|&p| (p as f64 / scale as f64 - m).powi(2)).sum::<f64>() / px.len() as f64;
    (m as f32, v.sqrt().max(1e-6) as f32)
}

impl ImageData {
    /// Load from `dir`, laid out as the project's `assets/data` (`mnist/`, `digits/`).
    pub fn load(dir: &Path, which: Dataset) -> Result<Self, IdxError> {
        Self::from_files(which, |name| {
            let path = dir.join(name);
            Ok((super::idx::load(&path)?, path))
        })
    }

    /// The copy built into the binary.
    pub fn built_in(which: Dataset) -> Result<Self, IdxError> {
        Self::from_files(which, |name| {
            let path = Path::new("(built in) assets/data").join(name);
            let (_, bytes) = BUILT_IN.iter().find(|(n, _)| *n == name).expect("every data set file is built in");
            Ok((super::idx::decode(bytes, &path)?, path))
        })
    }

    /// The data set from its files, each read by `file` (its IDX array and its path for errors).
    fn from_files(which: Dataset, file: impl Fn(&str) -> Result<(Idx, PathBuf), IdxError>) -> Result<Self, IdxError> {
        let set = |images: &str, labels: &str| -> Result<ImageSet, IdxError> {
            let ((im, im_path), (lb, lb_path)) = (file(images)?, file(labels)?);
            super::idx::to_set(im, &im_path, lb, &lb_path)
        };
        match which {
            Dataset::Mnist => {
                let tr = set("mnist/mnist5k-train-images-idx3-ubyte.gz", "mnist/mnist5k-train-labels-idx1-ubyte.gz")?;
                let te = set("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")?;
                let (mean, std) = mean_std(&tr, tr.n, 255.0);
                Ok(Self { train: to_f32(&tr, 0, tr.n, 255.0, mean, std), test: to_f32(&te, 0, te.n, 255.0, mean, std) })
            }
            Dataset::Digits => {
                let all = set("digits/digits-images-idx3-ubyte.gz", "digits/digits-labels-idx1-ubyte.gz")?;
                let split = 1500.min(all.n);
                let (mean, std) = mean_std(&all, split, 16.0);
                Ok(Self { train: to_f32(&all, 0, split, 16.0, mean, std), test: to_f32(&all, split, all.n, 16.0, mean, std) })
            }
        }
    }
}

/// The per-epoch shuffle; its whole state is (epoch, position) plus the seed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochSampler {
    pub seed: u64,
    pub epoch: u64,
    pub pos: usize,
    #[serde(skip)]
    order: Vec<usize>,
}

impl EpochSampler {
    pub fn new(seed: u64) -> Self {
        Self { seed, epoch: 0, pos: 0, order: Vec::new() }
    }

    fn shuffle(&mut self, n: usize) {
        let mut s = self.seed.wrapping_add(self.epoch);
        self.order = (0..n).collect();
        for i in (1..n).rev() {
            let j = (splitmix64(&mut s) % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
    }

    /// The next window: up to `e` image indices, never crossing an epoch boundary (the epoch's
    /// last window is short). Returns the indices and whether the window ends the epoch.
    pub fn window(&mut self, n: usize, e: usize) -> (Vec<usize>, bool) {
        if self.order.len() != n {
            self.shuffle(n);
        }
        let end = (self.pos + e).min(n);
        let idx = self.order[self.pos..end].to_vec();
        self.pos = end;
        let last = end == n;
        if last {
            self.epoch += 1;
            self.pos = 0;
            self.shuffle(n);
        }
        (idx, last)
    }
}

/// Pack images `idx` into a micro-batch of B rows: [B,1,H,W] pixels and [B] labels; missing
/// rows (a short micro-batch) get zero pixels and the ignore label.
pub fn pack(data: &Images, idx: &[usize], b: usize) -> (Vec<f32>, Vec<u32>) {
    let s = data.h * data.w;
    let mut x = vec![0.0f32; b * s];
    let mut y = vec![crate::reference::layers::IGNORE_INDEX; b];
    for (r, &i) in idx.iter().enumerate() {
        x[r * s..(r + 1) * s].copy_from_slice(data.image(i));
        y[r] = data.labels[i];
    }
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_visit_every_image_once_with_a_short_last_window() {
        let mut s = EpochSampler::new(7);
        let mut seen = vec![0; 10];
        let mut sizes = Vec::new();
        loop {
            let (idx, last) = s.window(10, 4);
            sizes.push(idx.len());
            for i in idx {
                seen[i] += 1;
            }
            if last {
                break;
            }
        }
        assert_eq!(sizes, vec![4, 4, 2]);
        assert!(seen.iter().all(|&c| c == 1));
        assert_eq!(s.epoch, 1);
        // the next epoch is shuffled differently
        let (a, _) = s.window(10, 10);
        let mut t = EpochSampler::new(7);
        let (b, _) = t.window(10, 10);
        assert_ne!(a, b);
    }

    #[test]
    fn the_built_in_data_sets_equal_the_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/data");
        for which in [Dataset::Mnist, Dataset::Digits] {
            let (a, b) = (ImageData::built_in(which).unwrap(), ImageData::load(&dir, which).unwrap());
            assert_eq!((a.train.pixels, a.train.labels), (b.train.pixels, b.train.labels), "{which:?}");
            assert_eq!((a.test.pixels, a.test.labels), (b.test.pixels, b.test.labels), "{which:?}");
        }
    }
}
