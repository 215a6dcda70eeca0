//! Model architectures, one file each.
pub mod bert;
pub mod decoder;
pub mod gemma;
