//! The `imgb` command line: a thin layer over the crates.

fn main() {}
