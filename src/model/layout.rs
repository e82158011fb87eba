//! Where tensors live on the device: slabs of as many buffers as the device's limits need.
//!
//! A slab is packed tensor after tensor into buffers of at most `max_buffer` bytes; no tensor is
//! split across two buffers, each starts at a multiple of `TENSOR_ALIGN` bytes (so each is bound
//! as its own range), and each must fit one storage binding (`max_binding`) except tensors placed
//! by rows (`take_rows`: the tied embedding), which are cut into parts of whole rows that do.
//! Offsets are virtual: the buffer's index in the high bits (`VIRTUAL_SHIFT`), the element offset
//! in it below, so a layout stays a list of numbers and `view` resolves one against the buffers.

use crate::gpu::{Gpu, GpuBuffer, TENSOR_ALIGN, View, human_bytes};

/// Bits of a virtual offset that hold the element offset inside its buffer.
pub const VIRTUAL_SHIFT: u32 = 40;
const MASK: usize = (1 << VIRTUAL_SHIFT) - 1;

/// (buffer index, element offset in it) of a virtual offset.
pub fn locate(v: usize) -> (usize, usize) {
    (v >> VIRTUAL_SHIFT, v & MASK)
}

/// The view of virtual offset `v` in a slab's buffers.
pub fn view(buffers: &[GpuBuffer], v: usize) -> View {
    let (b, o) = locate(v);
    View::at(&buffers[b], o)
}

/// The limits a layout is packed for, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabLimits {
    /// The largest range one binding may have (one tensor, or one part of a row-split tensor).
    pub max_binding: u64,
    /// The largest buffer (a slab's buffers are at most this large).
    pub max_buffer: u64,
}

impl Default for SlabLimits {
    /// No limit worth the name: every slab is one buffer (layouts without a device).
    fn default() -> Self {
        Self { max_binding: 1 << 40, max_buffer: 1 << 40 }
    }
}

impl SlabLimits {
    /// The device's limits, capped by its binding knob (`Gpu::binding_limit`). A slab's buffers
    /// are no larger than one binding, so the passes over a whole buffer (the global norm, the
    /// clip, the update's norm) can bind it.
    pub fn of(gpu: &Gpu) -> Self {
        Self::new(gpu.binding_limit(), gpu.limits().max_buffer_size)
    }

    /// Limits for a device's max binding and max buffer size.
    pub fn new(max_binding: u64, max_buffer: u64) -> Self {
        Self { max_binding, max_buffer: max_buffer.min(max_binding) }
    }
}

/// One part of a tensor: `len` elements from element `start` of the tensor, at virtual `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub at: usize,
    pub start: usize,
    pub len: usize,
}

/// Packs tensors into buffers.
#[derive(Clone, Debug)]
pub struct Packer {
    elem_bytes: u64,
    limits: SlabLimits,
    align: usize,
    /// Elements used in each buffer (including each tensor's padding to the alignment).
    pub buffers: Vec<usize>,
    /// The largest single binding placed: (tensor, bytes).
    pub largest: (String, u64),
}

impl Packer {
    pub fn new(elem_bytes: u64, limits: SlabLimits) -> Self {
        let align = TENSOR_ALIGN / elem_bytes as usize;
        Self { elem_bytes, limits, align, buffers: Vec::new(), largest: (String::new(), 0) }
    }

    /// Bytes of one element of this slab.
    pub fn elem_bytes(&self) -> u64 {
        self.elem_bytes
    }

    fn capacity(&self) -> usize {
        (self.limits.max_buffer / self.elem_bytes) as usize / self.align * self.align
    }

    fn note(&mut self, name: &str, n: usize) {
        let bytes = n as u64 * self.elem_bytes;
        if bytes > self.largest.1 {
            self.largest = (name.to_string(), bytes);
        }
    }

    /// Place `n` elements in the current buffer, or a new one when they do not fit; returns the
    /// virtual offset. A tensor larger than a buffer gets a buffer of its own (and
    /// `check` refuses the layout).
    pub fn take(&mut self, name: &str, n: usize) -> usize {
        self.note(name, n);
        let cap = self.capacity();
        match self.buffers.last() {
            Some(&used) if used == 0 || used + n <= cap => {}
            _ => self.buffers.push(0),
        }
        let b = self.buffers.len() - 1;
        let at = self.buffers[b];
        self.buffers[b] = (at + n).next_multiple_of(self.align);
        (b << VIRTUAL_SHIFT) | at
    }

    /// Place `rows` rows of `row` elements, cut into parts of whole rows that each fit one binding
    /// (and one buffer).
    pub fn take_rows(&mut self, name: &str, rows: usize, row: usize) -> Vec<Part> {
        let limit = self.limits.max_binding.min(self.limits.max_buffer) / self.elem_bytes;
        let per = ((limit as usize) / row.max(1)).max(1);
        let mut parts = Vec::new();
        let mut r = 0;
        loop {
            let n = per.min(rows - r);
            let at = self.take(name, n * row);
            parts.push(Part { at, start: r * row, len: n * row });
            r += n;
            if r >= rows {
                break;
            }
        }
        parts
    }

    /// Bytes of each buffer as allocated (at least 4, a multiple of 4).
    pub fn buffer_bytes(&self) -> Vec<u64> {
        self.buffers.iter().map(|&n| (n.max(1) as u64 * self.elem_bytes).next_multiple_of(4)).collect()
    }

    /// Total bytes of the slab's buffers.
    pub fn bytes(&self) -> u64 {
        self.buffer_bytes().iter().sum()
    }

    /// Refuse a layout with a binding past the limit, naming the tensor.
    pub fn check(&self, what: &str) -> Result<(), LayoutError> {
        let (name, bytes) = &self.largest;
        if *bytes > self.limits.max_binding || *bytes > self.limits.max_buffer {
            return Err(LayoutError {
                message: format!(
                    "{what}: tensor {name} needs {} in one binding; this device allows {} per binding and {} per buffer",
                    human_bytes(*bytes),
                    human_bytes(self.limits.max_binding),
                    human_bytes(self.limits.max_buffer)
                ),
            });
        }
        Ok(())
    }
}

/// A layout that cannot be bound on the device.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LayoutError {
    pub message: String,
}

/// Allocate a slab's buffers (named `label`, `label 2`, ... when there are several).
pub fn allocate(
    gpu: &Gpu, label: &str, category: crate::gpu::Category, packer: &Packer,
) -> Result<Vec<GpuBuffer>, crate::gpu::GpuError> {
    let bytes = packer.buffer_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for (i, b) in bytes.iter().enumerate() {
        let name = if i == 0 { label.to_string() } else { format!("{label} {}", i + 1) };
        out.push(gpu.try_storage_bytes(&name, category, *b)?);
    }
    Ok(out)
}
