//! The CPU reference: a plain-Rust twin of every kernel (`layers`, same names and argument order
//! as the WGSL entry points) and of the whole GPT (`gpt`). It is the oracle of the tests and never
//! imports wgpu. Every function is generic over `num_traits::Float`, so finite-difference checks
//! run in f64 and GPU checks compare f32 kernels against f64 math.

pub mod cnn;
pub mod cnn_model;
pub mod gpt;
pub mod layers;
pub mod rng;
