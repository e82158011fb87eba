//! gradscope: a WebGPU trainer with exact, visible gradient accumulation.
//!
//! Layers (see README): `gpu` is the only code that knows wgpu; `reference` is the plain-Rust CPU
//! twin of every kernel and model (the test oracle).

pub mod bench;
pub mod gpu;
