//! Data sets and seeded samplers.

pub mod text;
