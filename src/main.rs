//! The `imgb` command line: a thin layer over the crates. The only place that uses `anyhow`.

mod check;
mod cli;
mod commands;
mod serve;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
