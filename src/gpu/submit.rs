//! A submission: clears and program runs recorded into one command encoder and submitted once.
//! The trainer builds one per micro-batch (or per window) so it never touches wgpu itself.

use super::context::Gpu;
use super::ledger::GpuBuffer;
use super::program::Program;
use super::trace::Command;

pub struct Submission {
    gpu: Gpu,
    encoder: wgpu::CommandEncoder,
}

impl Gpu {
    pub fn submission(&self) -> Submission {
        let encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("gradscope") });
        Submission { gpu: self.clone(), encoder }
    }
}

impl Gpu {
    /// Wall-clock seconds per run of `program`, averaged over `reps` submissions each waited for
    /// (after waiting for earlier work); the `clear` buffers are zeroed before each run
    /// (activation gradients that the backward kernels accumulate into). For `gradscope bench`.
    pub fn time_program(&self, program: &Program, clear: &[GpuBuffer], reps: usize) -> Result<f64, super::readback::ReadbackError> {
        self.wait()?;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            let mut s = self.submission();
            for b in clear {
                s.clear(b);
            }
            s.run(program);
            s.submit();
            self.wait()?;
        }
        Ok(t.elapsed().as_secs_f64() / reps.max(1) as f64)
    }
}

impl Submission {
    /// Zero a whole buffer.
    pub fn clear(&mut self, buf: &GpuBuffer) -> &mut Self {
        self.encoder.clear_buffer(buf.buffer(), 0, None);
        if self.gpu.recording() {
            self.gpu.record(Command::Clear(buf.clone()));
        }
        self
    }

    /// Record every dispatch of `program` in a compute pass.
    pub fn run(&mut self, program: &Program) -> &mut Self {
        program.record(&mut self.encoder);
        if self.gpu.recording() {
            program.trace(&self.gpu);
        }
        self
    }

    /// Copy `len` elements between buffers (element offsets).
    pub fn copy(&mut self, src: &GpuBuffer, src_off: usize, dst: &GpuBuffer, dst_off: usize, len: usize) -> &mut Self {
        let (src_offset, dst_offset, size) = (src_off as u64 * 4, dst_off as u64 * 4, len as u64 * 4);
        self.encoder.copy_buffer_to_buffer(src.buffer(), src_offset, dst.buffer(), dst_offset, size);
        if self.gpu.recording() {
            self.gpu.record(Command::Copy { src: src.clone(), src_offset, dst: dst.clone(), dst_offset, size });
        }
        self
    }

    /// Submit (no wait). Uploads queued before this call are executed first. When the device's
    /// trace is armed (`Gpu::trace_next_submission`), the submission is recorded, which waits.
    pub fn submit(self) {
        if self.gpu.recording() {
            if let Err(e) = self.gpu.submit_traced(self.encoder.finish()) {
                self.gpu.errors.lock().unwrap().push(format!("recording a submission: {e}"));
            }
        } else {
            self.gpu.submit_work(self.encoder.finish());
        }
    }
}
