//! Data sets and seeded samplers.

pub mod idx;
pub mod images;
pub mod text;
