//! Shared test helpers: the device (a missing adapter fails loudly, it never skips), fresh random
//! inputs, tensors packed into one slab at offsets (as the model binds them) or into separate
//! buffers, NaN poisoning, and the error measure used against the CPU reference.
#![allow(dead_code)]

use gradscope::gpu::{AdapterChoice, Category, Gpu, GpuBuffer, ProgramBuilder, View};

/// The device for GPU tests. `GRADSCOPE_ADAPTER` picks one by name substring.
pub fn gpu() -> Gpu {
    let choice = AdapterChoice { name: std::env::var("GRADSCOPE_ADAPTER").ok() };
    match Gpu::new(&choice) {
        Ok(g) => g,
        Err(e) => panic!(
            "GPU tests need an adapter and none could be used: {e}\n\
             On Debian/Ubuntu without a GPU: sudo apt-get install mesa-vulkan-drivers libvulkan1"
        ),
    }
}

/// Record what `f` records into one program and run it (waits).
pub fn run(g: &Gpu, f: impl FnOnce(&mut ProgramBuilder)) {
    let mut pb = ProgramBuilder::new(g);
    f(&mut pb);
    pb.finish("test").run();
}

/// A small GPT that still has every layer (2 layers, 2 heads, C 32, T 16) at B x K, evaluating
/// only when asked, writing its runs under the temporary folder; tests set what else they need.
pub fn small_gpt(b: usize, k: usize) -> gradscope::train::TrainConfig {
    gradscope::train::TrainConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        block_size: 16,
        micro_batch: b,
        accum_steps: k,
        eval_every: 0,
        out_dir: std::env::temp_dir().join("gradscope-test-runs").display().to_string(),
        ..gradscope::train::TrainConfig::default()
    }
}

/// Fail, naming the adapter, when it has no SHADER_F16: the f16 tests need it and never pass
/// by skipping (lavapipe on Vulkan has it; GL adapters do not).
pub fn require_f16(g: &Gpu) {
    assert!(g.has_f16(), "{} has no SHADER_F16; the mixed-precision tests need it (lavapipe on Vulkan has it, GL adapters do not)", g.summary.name);
}

/// An f16 tensor's buffer: the values rounded to f16, packed two per 32-bit word.
pub fn f16_buffer(g: &Gpu, v: &[f32]) -> (View, Vec<f64>) {
    let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    let mut words = vec![0u32; h.len().div_ceil(2)];
    for (i, x) in h.iter().enumerate() {
        words[i / 2] |= u32::from(x.to_bits()) << (16 * (i % 2));
    }
    let buf = g.storage("f16 test tensor", Category::Activations, words.len());
    g.upload(&buf, 0, &words);
    (View::of(&buf), h.iter().map(|x| x.to_f64()).collect())
}

/// splitmix64, seeded per test run (printed, so a failure can be replayed with GRADSCOPE_SEED).
pub struct Rng(pub u64);

impl Rng {
    pub fn fresh(name: &str) -> Self {
        let seed = std::env::var("GRADSCOPE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        println!("{name}: seed {seed}");
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// Tensors of one test, each in its own buffer: at offset 0, or (`shared`) behind a NaN-filled
/// gap of 4 to 76 elements, so that its bound range starts before it (the range is aligned down
/// to the device's storage offset alignment) and the kernel's element offsets are really used.
/// (One buffer cannot hold them all: WebGPU forbids a buffer bound read-only and writable in one
/// dispatch, and the model's slabs keep inputs a kernel only reads apart from its outputs.)
pub struct Tensors {
    gpu: Gpu,
    data: Vec<Vec<u32>>,
    shared: bool,
    views: Vec<View>,
}

pub const POISON: f32 = f32::NAN;

impl Tensors {
    pub fn new(gpu: &Gpu, shared: bool) -> Self {
        Self { gpu: gpu.clone(), data: Vec::new(), shared, views: Vec::new() }
    }
    /// Add an f32 tensor; returns its index.
    pub fn f32(&mut self, v: &[f32]) -> usize {
        self.data.push(v.iter().map(|x| x.to_bits()).collect());
        self.data.len() - 1
    }
    /// Add an output tensor of n elements filled with NaN: an element the kernel fails to write
    /// stays NaN and fails the comparison.
    pub fn poisoned(&mut self, n: usize) -> usize {
        self.f32(&vec![POISON; n])
    }
    pub fn u32(&mut self, v: &[u32]) -> usize {
        self.data.push(v.to_vec());
        self.data.len() - 1
    }
    /// Upload everything and make the views.
    pub fn upload(&mut self) {
        if self.shared {
            for (i, d) in self.data.iter().enumerate() {
                let gap = 4 * (1 + i % 3) + 64 * (i % 2);
                let mut slab = vec![f32::NAN.to_bits(); gap];
                slab.extend_from_slice(d);
                let buf = self.gpu.storage("test tensor behind a gap", Category::Activations, slab.len());
                self.gpu.upload(&buf, 0, &slab);
                self.views.push(View::at(&buf, gap));
            }
        } else {
            for d in &self.data {
                let buf = self.gpu.storage("test tensor", Category::Activations, d.len());
                self.gpu.upload(&buf, 0, d);
                self.views.push(View::of(&buf));
            }
        }
    }
    pub fn view(&self, i: usize) -> &View {
        &self.views[i]
    }
    pub fn read(&self, i: usize) -> Vec<f32> {
        let v = &self.views[i];
        self.gpu.read::<f32>(&v.buf, v.offset, self.data[i].len()).expect("readback")
    }
    pub fn buffer(&self, i: usize) -> GpuBuffer {
        self.views[i].buf.clone()
    }
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Max over elements of |got - want| / (|want| + 0.1 rms(want)): relative, with a floor so that
/// entries that cancel to near zero (an f32 sum of 512 terms has rounding error ~1e-5 of its
/// terms' scale) are judged against the tensor's typical magnitude instead of their own. A wrong
/// kernel (a missed term, a wrong index, an unwritten element) errs by O(1) on this measure.
/// NaN is infinite.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len().max(1) as f64).sqrt().max(1e-30);
    let mut worst = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        let e = (*g as f64 - w).abs() / (w.abs() + 0.1 * rms);
        if !e.is_finite() || (*g).is_nan() {
            return f64::INFINITY;
        }
        worst = worst.max(e);
    }
    worst
}

/// Like `check`, for an output that is a sum of a few terms per element (AdamW's moments):
/// each element's error is judged against the magnitude of its terms (`terms[i]`, the sum of
/// their absolute values) when that is larger, since f32 rounding is relative to the terms, not
/// to a result that cancels to near zero. With one element the tensor's RMS is no floor at all.
pub fn check_terms(kernel: &str, what: &str, got: &[f32], want: &[f64], terms: &[f64], tol: f64) {
    assert_eq!((got.len(), want.len()), (terms.len(), terms.len()), "length mismatch");
    let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len().max(1) as f64).sqrt().max(1e-30);
    let mut worst = 0.0f64;
    for ((g, w), t) in got.iter().zip(want).zip(terms) {
        let e = (*g as f64 - w).abs() / (w.abs() + 0.1 * rms).max(*t);
        worst = if e.is_finite() && !g.is_nan() { worst.max(e) } else { f64::INFINITY };
    }
    println!("{kernel:<32} {what:<10} max rel err {worst:.2e}");
    assert!(worst <= tol, "{kernel} {what}: max relative error {worst:.3e} > {tol:.0e}");
}

/// Assert and print the error of one output.
pub fn check(kernel: &str, what: &str, got: &[f32], want: &[f64], tol: f64) {
    let e = rel_err(got, want);
    println!("{kernel:<32} {what:<10} max rel err {e:.2e}");
    assert!(e <= tol, "{kernel} {what}: max relative error {e:.3e} > {tol:.0e}");
}
