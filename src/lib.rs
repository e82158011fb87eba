//! gradscope: a WebGPU trainer with exact, visible gradient accumulation.
//!
//! Layers (see README): `gpu` is the only code that knows wgpu; `reference` is the plain-Rust CPU
//! twin of every kernel and model (the test oracle, never importing wgpu); `model` records the
//! GPT's forward and backward as dispatch lists; `data` loads data sets and samples them;
//! `train` is the accumulation loop, checkpoints and `verify` (never importing egui).

pub mod app;
pub mod bench;
pub mod data;
pub mod gpu;
pub mod model;
pub mod plot;
pub mod reference;
pub mod train;
