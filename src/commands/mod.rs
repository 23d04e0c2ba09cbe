//! Subcommands that work on the state directory, one module per group.

pub mod build;
pub mod cache_opts;
pub mod images;
pub mod progress;
pub mod registry;
pub mod run;
