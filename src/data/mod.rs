//! Data sets and seeded samplers.

pub mod idx;
pub mod text;
