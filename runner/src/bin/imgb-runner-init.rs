//! The runner's init stages as a program of their own, for the runner's integration tests and
//! for embedders without the imgb CLI: `imgb-runner-init STAGE [ARGS]` is what `imgb __init`
//! does. Not meant to be run by hand.

use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    imgb_runner::init::main(&args)
}
