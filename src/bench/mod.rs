//! `gradscope bench`: measured figures, printed as a table or JSON.

pub mod gpt;
pub mod matmul;
pub mod peak;
pub mod report;
