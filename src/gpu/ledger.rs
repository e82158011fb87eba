//! The byte ledger: every GPU allocation carries a memory category, and the ledger knows the exact
//! bytes alive per category at any moment. It is the source of the memory breakdown (CLI and app),
//! so it counts the sizes passed to wgpu, not estimates: a buffer is added when it is created and
//! removed when its last handle is dropped.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Category {
    Parameters,
    Gradients,
    OptimizerState,
    Activations,
    /// Uniforms, reduction partials, upload and readback staging.
    Scratch,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::Parameters,
        Category::Gradients,
        Category::OptimizerState,
        Category::Activations,
        Category::Scratch,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Category::Parameters => "parameters",
            Category::Gradients => "gradients",
            Category::OptimizerState => "optimizer state",
            Category::Activations => "activations",
            Category::Scratch => "scratch",
        }
    }
}

/// Bytes per category at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemorySnapshot {
    pub bytes: [u64; 5],
}

impl MemorySnapshot {
    pub fn get(&self, c: Category) -> u64 {
        self.bytes[c.index()]
    }
    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }
}

impl fmt::Display for MemorySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in Category::ALL {
            writeln!(f, "  {:<16} {:>12} bytes  ({})", c.name(), self.get(c), human_bytes(self.get(c)))?;
        }
        write!(f, "  {:<16} {:>12} bytes  ({})", "total", self.total(), human_bytes(self.total()))
    }
}

/// "512MiB", "1.5 GiB", "300MB", "4096" (bytes) -> bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size (examples: 512MiB, 2GiB, 300MB, 65536)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => (1u64 << 20) as f64,
        "g" | "gb" => 1e9,
        "gib" => (1u64 << 30) as f64,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (use B, KB, KiB, MB, MiB, GB, GiB)")),
    };
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{s:?}: a size must be positive"));
    }
    Ok((v * mult).round() as u64)
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Shared counters; cloning shares them.
#[derive(Clone, Default)]
pub struct Ledger {
    bytes: Arc<[AtomicU64; 5]>,
}

impl Ledger {
    pub fn snapshot(&self) -> MemorySnapshot {
        let mut s = MemorySnapshot::default();
        for (i, b) in self.bytes.iter().enumerate() {
            s.bytes[i] = b.load(Ordering::SeqCst);
        }
        s
    }

    fn add(&self, c: Category, n: u64) {
        self.bytes[c.index()].fetch_add(n, Ordering::SeqCst);
    }

    fn sub(&self, c: Category, n: u64) {
        self.bytes[c.index()].fetch_sub(n, Ordering::SeqCst);
    }
}

/// A wgpu buffer registered in the ledger. Dropping the last clone removes its bytes.
#[derive(Clone)]
pub struct GpuBuffer {
    inner: Arc<Tracked>,
}

struct Tracked {
    buffer: wgpu::Buffer,
    label: String,
    category: Category,
    ledger: Ledger,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.ledger.sub(self.category, self.buffer.size());
        self.buffer.destroy();
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer({:?}, {} bytes)", self.category(), self.size())
    }
}

impl GpuBuffer {
    /// Create a buffer of `size` bytes (rounded up to 4) and register it. Storage buffers can also
    /// be copied from and to (uploads, readback, clears).
    pub fn new(
        device: &wgpu::Device,
        ledger: &Ledger,
        label: &str,
        category: Category,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Self {
        // wgpu rejects zero-sized bindings; keep at least one element.
        let size = size.max(4).next_multiple_of(4);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        ledger.add(category, buffer.size());
        Self { inner: Arc::new(Tracked { buffer, label: label.to_string(), category, ledger: ledger.clone() }) }
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.inner.buffer
    }
    pub fn size(&self) -> u64 {
        self.inner.buffer.size()
    }
    /// The name it was created with (error messages name buffers by it).
    pub fn label(&self) -> &str {
        &self.inner.label
    }
    pub fn category(&self) -> Category {
        self.inner.category
    }
    /// Number of f32 (or u32) elements the buffer holds.
    pub fn len(&self) -> usize {
        (self.size() / 4) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Identity for bind-group caching.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }
}
