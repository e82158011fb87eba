//! The trainer: one window loop for every model (`trainer`, over the `Model` interface that
//! `gpt` and `cnn` implement), the deliberately broken settings kept for `verify` (`broken`),
//! health and metrics, mixed precision's loss scale, checkpoints and `verify`. It never imports
//! egui; front ends (CLI, app) receive `Event`s.

pub mod broken;
pub mod checkpoint;
pub mod cnn;
pub mod config;
pub mod events;
pub mod gpt;
pub mod health;
pub mod interop;
pub mod live;
pub mod loss_scale;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod pyconfig;
pub mod run_dir;
pub mod sample;
pub mod trainer;
pub mod verify;
pub mod verify_cnn;

pub use config::TrainConfig;
pub use events::Event;
pub use health::StepMetrics;
pub use trainer::{Derived, RunOutcome, Trainer};
