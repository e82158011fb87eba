//! The trainer: the accumulation loop, optimizer settings and schedule, metrics, checkpoints and
//! the verify procedure. It never imports egui; front ends (CLI, app) receive `Event`s.

pub mod any;
pub mod checkpoint;
pub mod cnn;
pub mod config;
pub mod live;
pub mod metrics;
pub mod plan;
pub mod sample;
pub mod trainer;
pub mod verify;
pub mod verify_cnn;

pub use config::TrainConfig;
pub use trainer::{Derived, RunOutcome, StepMetrics, Trainer};

/// What the training loop reports.
#[derive(Clone, Debug)]
pub enum Event {
    Started(Derived),
    Step(StepMetrics),
    Eval { step: usize, val_loss: f64 },
    Checkpoint { step: usize, path: std::path::PathBuf },
    Finished { step: usize, val_loss: f64 },
}
