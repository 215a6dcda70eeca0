//! Run directories, manifests, plots and human-readable reports.
pub mod html;
pub mod manifest;
pub mod plots;
