//! Recording one submission exactly as gradscope makes it (buffers with their contents before and
//! after, clears, copies, dispatches with their bound ranges, uniforms and workgroup counts), to
//! replay it in another WebGPU implementation and compare (`tests/webgpu.rs` replays a training
//! step in Chromium's Dawn). For tests and diagnosis: arming it costs nothing until the next
//! submission, which then waits for the device.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::context::Gpu;
use super::ledger::GpuBuffer;
use super::program::Bound;
use super::registry::Kernel;

/// One recorded command.
pub(crate) enum Command {
    Clear(GpuBuffer),
    Copy { src: GpuBuffer, src_offset: u64, dst: GpuBuffer, dst_offset: u64, size: u64 },
    Dispatch { kernel: Arc<Kernel>, uniforms: GpuBuffer, uniform_offset: u32, bindings: Vec<Bound>, workgroups: [u32; 3] },
}

/// Commands of the submission being recorded.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) commands: Vec<Command>,
}

/// A recorded submission with the contents of every buffer it touches before and after.
pub struct Trace {
    commands: Vec<Command>,
    before: BTreeMap<usize, Vec<u8>>,
    after: BTreeMap<usize, Vec<u8>>,
    buffers: BTreeMap<usize, GpuBuffer>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("no submission was recorded (arm the trace before the work is submitted)")]
    Nothing,
    #[error(transparent)]
    Readback(#[from] super::readback::ReadbackError),
    #[error("writing the trace: {0}")]
    Io(#[from] std::io::Error),
}

impl Gpu {
    /// Record the next submission (`Submission::submit`): its commands, and the contents of every
    /// buffer it touches before and after it runs. Take it with `take_trace`.
    pub fn trace_next_submission(&self) {
        *self.tracer.lock().unwrap() = Some(Recorder::default());
    }

    /// The recorded submission, once it has been submitted.
    pub fn take_trace(&self) -> Result<Trace, TraceError> {
        self.traced.lock().unwrap().take().ok_or(TraceError::Nothing)
    }

    /// Whether submissions are being recorded.
    pub(crate) fn recording(&self) -> bool {
        self.tracer.lock().unwrap().is_some()
    }

    pub(crate) fn record(&self, command: Command) {
        if let Some(r) = self.tracer.lock().unwrap().as_mut() {
            r.commands.push(command);
        }
    }

    /// Submit `commands`, recorded: read every touched buffer before, submit, wait, read after.
    pub(crate) fn submit_traced(&self, commands: wgpu::CommandBuffer) -> Result<(), TraceError> {
        let recorder = self.tracer.lock().unwrap().take().unwrap_or_default();
        let mut buffers = BTreeMap::new();
        for c in &recorder.commands {
            match c {
                Command::Clear(b) => {
                    buffers.insert(b.id(), b.clone());
                }
                Command::Copy { src, dst, .. } => {
                    buffers.insert(src.id(), src.clone());
                    buffers.insert(dst.id(), dst.clone());
                }
                Command::Dispatch { uniforms, bindings, .. } => {
                    buffers.insert(uniforms.id(), uniforms.clone());
                    for b in bindings {
                        buffers.insert(b.buf.id(), b.buf.clone());
                    }
                }
            }
        }
        let mut before = BTreeMap::new();
        for (id, b) in &buffers {
            before.insert(*id, read_bytes(self, b)?);
        }
        self.submit_work(commands);
        let mut after = BTreeMap::new();
        for (id, b) in &buffers {
            after.insert(*id, read_bytes(self, b)?);
        }
        *self.traced.lock().unwrap() = Some(Trace { commands: recorder.commands, before, after, buffers });
        Ok(())
    }
}

fn read_bytes(gpu: &Gpu, b: &GpuBuffer) -> Result<Vec<u8>, super::readback::ReadbackError> {
    let words: Vec<u32> = gpu.read(b, 0, b.len())?;
    Ok(bytemuck::cast_slice(&words).to_vec())
}

impl Trace {
    /// Number of dispatches.
    pub fn dispatches(&self) -> usize {
        self.commands.iter().filter(|c| matches!(c, Command::Dispatch { .. })).count()
    }

    /// Write `trace.json` and its binary files into `dir` in the format of
    /// `tests/webgpu/runner.js`: shaders (as the registry compiles them, in the variant Tint
    /// accepts), kernels with their binding layouts, buffers with their contents before, the
    /// commands in order, and as outputs the buffers the submission writes, with their contents
    /// after: `rtol(label)` is the relative tolerance on max |a - b| / max |b| of the buffer of
    /// that label, or None to leave it out of the comparison.
    pub fn write(&self, dir: &Path, rtol: impl Fn(&str) -> Option<f64>) -> Result<(), TraceError> {
        use serde_json::json;
        std::fs::create_dir_all(dir)?;
        let ids: BTreeMap<usize, usize> = self.buffers.keys().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut kernels: Vec<Arc<Kernel>> = Vec::new();
        let mut shaders: BTreeMap<&str, String> = BTreeMap::new();
        let mut commands = Vec::new();
        let mut written: BTreeMap<usize, bool> = BTreeMap::new(); // buffer -> holds integers only
        let integer = |id: usize, int: bool, w: &mut BTreeMap<usize, bool>| {
            let e = w.entry(id).or_insert(int);
            *e = *e && int;
        };
        for c in &self.commands {
            commands.push(match c {
                Command::Clear(b) => {
                    integer(b.id(), true, &mut written);
                    json!({"op": "clear", "buffer": ids[&b.id()]})
                }
                Command::Copy { src, src_offset, dst, dst_offset, size } => {
                    integer(dst.id(), true, &mut written);
                    json!({"op": "copy", "src": ids[&src.id()], "src_offset": src_offset, "dst": ids[&dst.id()],
                           "dst_offset": dst_offset, "size": size})
                }
                Command::Dispatch { kernel, uniforms, uniform_offset, bindings, workgroups } => {
                    let k = match kernels.iter().position(|k| Arc::ptr_eq(k, kernel)) {
                        Some(k) => k,
                        None => {
                            kernels.push(kernel.clone());
                            kernels.len() - 1
                        }
                    };
                    shaders.entry(kernel.file).or_insert_with(|| super::registry::tint_source(kernel.file));
                    for (b, info) in bindings.iter().zip(&kernel.bindings) {
                        if !b.read_only && !unused(&b.buf) {
                            integer(b.buf.id(), !info.float, &mut written);
                        }
                    }
                    json!({
                        "op": "dispatch", "kernel": k, "label": kernel.entry,
                        "uniform": {"buffer": ids[&uniforms.id()], "offset": uniform_offset, "size": kernel.uniform_size},
                        "bindings": bindings.iter().map(|b| json!({"binding": b.binding, "buffer": ids[&b.buf.id()], "offset": b.offset, "size": b.size})).collect::<Vec<_>>(),
                        "workgroups": workgroups,
                    })
                }
            });
        }
        let mut buffers = Vec::new();
        for (id, b) in &self.buffers {
            let i = ids[id];
            let init = format!("buffer-{i}.bin");
            std::fs::write(dir.join(&init), &self.before[id])?;
            let usage = if b.buffer().usage().contains(wgpu::BufferUsages::UNIFORM) { "uniform" } else { "storage" };
            buffers.push(json!({"id": i, "label": b.label(), "size": b.size(), "usage": [usage, "copy_src", "copy_dst"], "init": init}));
        }
        let mut outputs = Vec::new();
        for (id, int) in &written {
            let b = &self.buffers[id];
            if unused(b) {
                continue;
            }
            let Some(rtol) = rtol(b.label()) else { continue };
            let i = ids[id];
            let expected = format!("expected-{i}.bin");
            std::fs::write(dir.join(&expected), &self.after[id])?;
            outputs.push(json!({"buffer": i, "label": b.label(), "offset": 0, "size": b.size(),
                                "dtype": if *int { "u32" } else { "f32" }, "expected": expected, "rtol": rtol}));
        }
        let kernels: Vec<_> = kernels
            .iter()
            .enumerate()
            .map(|(i, k)| {
                json!({"id": i, "shader": k.file, "entry": k.entry, "uniform_size": k.uniform_size,
                       "bindings": k.bindings.iter().map(|b| json!({"binding": b.binding, "read_only": b.read_only})).collect::<Vec<_>>()})
            })
            .collect();
        let shaders: Vec<_> = shaders
            .into_iter()
            .map(|(name, source)| json!({"name": name, "needs_f16": source.contains("enable f16;"), "source": source}))
            .collect();
        let trace = json!({"shaders": shaders, "kernels": kernels, "buffers": buffers, "commands": commands, "outputs": outputs});
        std::fs::write(dir.join("trace.json"), serde_json::to_vec_pretty(&trace).expect("json"))?;
        Ok(())
    }

}

/// The device's unused-binding stand-ins (`Gpu::unused_binding`): bound, never meaningfully
/// written, so not an output to compare.
fn unused(b: &GpuBuffer) -> bool {
    b.label().starts_with("unused ")
}
