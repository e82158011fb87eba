//! Models on the GPU: parameter layout, activation layout sized by the micro-batch, and
//! forward/backward recorded as dispatch lists.

pub mod cnn;
pub mod gpt;
pub mod grad_stats;
pub mod layout;
pub mod memory;
pub mod optim;
