//! Readback and uploads: the only module that maps buffers or waits on the device.
//! Reading back costs a dispatch-and-wait round trip (~60-90 us on lavapipe), so the trainer
//! reads only the logged loss figures, never inside the recorded loop.

use super::context::Gpu;
use super::ledger::{Category, GpuBuffer};

#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    #[error("mapping a readback buffer failed: {0}")]
    Map(String),
    #[error("waiting for the device failed: {0}")]
    Poll(String),
    #[error("read of {len} elements at {offset} is past the end of a buffer of {size} bytes")]
    OutOfBounds { offset: usize, len: usize, size: u64 },
}

/// Standard usages of a storage buffer: bound by kernels, written by uploads, read back, cleared.
pub const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

impl Gpu {
    /// A storage buffer of `len` 4-byte elements, registered in the ledger under `category`.
    pub fn storage(&self, label: &str, category: Category, len: usize) -> GpuBuffer {
        GpuBuffer::new(&self.device, &self.ledger, label, category, len as u64 * 4, STORAGE)
    }

    /// A storage buffer of `bytes` bytes (rounded up to 4), in an error scope like `try_storage`
    /// (for f16 tensors).
    pub fn try_storage_bytes(&self, label: &str, category: Category, bytes: u64) -> Result<GpuBuffer, super::GpuError> {
        let max = self.limits().max_buffer_size;
        if bytes > max {
            return Err(super::GpuError::Device {
                what: format!("buffer {label:?}"),
                message: format!("{} exceeds the device's max buffer size {}", super::human_bytes(bytes), super::human_bytes(max)),
            });
        }
        self.scoped(&format!("allocating {label:?} ({})", super::human_bytes(bytes)), || {
            GpuBuffer::new(&self.device, &self.ledger, label, category, bytes, STORAGE)
        })
    }

    /// Read `len` f16 elements at f16-element `offset` (a multiple of 2) as f32.
    pub fn read_f16(&self, buf: &GpuBuffer, offset: usize, len: usize) -> Result<Vec<f32>, ReadbackError> {
        if offset % 2 != 0 || (offset + len) as u64 * 2 > buf.size() {
            return Err(ReadbackError::OutOfBounds { offset, len, size: buf.size() });
        }
        let words: Vec<u32> = self.read(buf, offset / 2, len.div_ceil(2))?;
        let halves: &[u16] = bytemuck::cast_slice(&words);
        Ok(halves[..len].iter().map(|&h| half::f16::from_bits(h).to_f32()).collect())
    }

    /// A storage buffer created inside an error scope: running out of device memory (or a size
    /// past the device's limits) is an error naming the buffer, not a panic.
    pub fn try_storage(&self, label: &str, category: Category, len: usize) -> Result<GpuBuffer, super::GpuError> {
        let bytes = len as u64 * 4;
        let max = self.limits().max_buffer_size;
        if bytes > max {
            return Err(super::GpuError::Device {
                what: format!("buffer {label:?}"),
                message: format!("{} exceeds the device's max buffer size {}", super::human_bytes(bytes), super::human_bytes(max)),
            });
        }
        self.scoped(&format!("allocating {label:?} ({})", super::human_bytes(bytes)), || self.storage(label, category, len))
    }

    /// Queue a write of `data` at element `offset` (executed before the next submit).
    pub fn upload<T: bytemuck::Pod>(&self, buf: &GpuBuffer, offset: usize, data: &[T]) {
        if !data.is_empty() {
            self.queue.write_buffer(buf.buffer(), offset as u64 * 4, bytemuck::cast_slice(data));
        }
    }

    /// Block until all submitted work is done.
    pub fn wait(&self) -> Result<(), ReadbackError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| ReadbackError::Poll(e.to_string()))
    }

    /// Copy `len` elements at element `offset` of `buf` to the host (waits for the device).
    pub fn read<T: bytemuck::Pod>(
        &self,
        buf: &GpuBuffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<T>, ReadbackError> {
        let bytes = len as u64 * 4;
        if (offset + len) as u64 * 4 > buf.size() {
            return Err(ReadbackError::OutOfBounds { offset, len, size: buf.size() });
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let staging = GpuBuffer::new(
            &self.device,
            &self.ledger,
            "readback",
            Category::Scratch,
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buf.buffer(), offset as u64 * 4, staging.buffer(), 0, bytes);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.buffer().map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| ReadbackError::Map(e.to_string()))?
            .map_err(|e| ReadbackError::Map(e.to_string()))?;
        let view = staging
            .buffer()
            .get_mapped_range(..)
            .map_err(|e| ReadbackError::Map(format!("{e:?}")))?;
        let out = bytemuck::cast_slice::<u8, T>(&view[..bytes as usize]).to_vec();
        drop(view);
        staging.buffer().unmap();
        Ok(out)
    }

    /// Read a whole buffer.
    pub fn read_all<T: bytemuck::Pod>(&self, buf: &GpuBuffer) -> Result<Vec<T>, ReadbackError> {
        self.read(buf, 0, buf.len())
    }
}
