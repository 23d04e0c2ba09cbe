//! Subcommands that work on the state directory, one module per group.

pub mod images;
pub mod run;
