//! The init stages: the runner's caller re-executes a binary that calls [`main`] (imgb's hidden
//! `imgb __init` subcommand, or the `imgb-runner-init` program), so that all namespace work
//! happens in fresh single-threaded processes, never in the caller's multi-threaded runtime.
//!
//! ```text
//! caller ─▶ supervise ─▶ pidns ─▶ container (PID 1) ─▶ exec ─▶ the command
//! ```
//! - [`supervise`]: joins a user namespace when rootless, prepares the run directory, waits,
//!   turns the upper directory into a layer, removes everything. Talks to the caller.
//! - [`pidns`]: unshares the pid namespace (a process cannot enter one itself, only its
//!   children can) and holds the kill switch: when the supervisor's socket closes it kills
//!   PID 1, and with it the whole namespace.
//! - [`container`]: PID 1. Mount/UTS/IPC/network namespaces, the overlay root filesystem,
//!   `/proc`, `/dev`, `/sys`, the provided files and the step's mounts, `pivot_root`; then it
//!   starts the command, reaps every zombie, and reports how the command ended.
//! - [`exec`]: drops to the step's user and capabilities and `execve`s the command.
//!
//! Each stage's standard input is its control socket; stdout and stderr are the step's output
//! pipes, passed down unchanged, so the stages never write to them themselves.

mod container;
mod exec;
mod pidns;
mod supervise;

use std::ffi::OsString;
use std::fmt::Display;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, ExitCode};

use crate::protocol::Channel;

/// The exit code of a stage that could not do its job (as `docker run`'s 125).
const SETUP_FAILED: u8 = 125;

/// Runs the init stage named by `args[0]`; `args` are what follows the init subcommand.
pub fn main(args: &[OsString]) -> ExitCode {
    let stage = args.first().and_then(|arg| arg.to_str()).unwrap_or("");
    let result = match stage {
        "supervise" => supervise::main(),
        "pidns" => pidns::main(),
        "container" => container::main(),
        "exec" => return exec::main(),
        _ => Err(StageError(format!(
            "unknown init stage {stage:?}: this is imgb's internal entry point for containers, \
             not meant to be run by hand"
        ))),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("imgb init {stage}: {error}");
            ExitCode::from(SETUP_FAILED)
        }
    }
}

/// A stage's failure, as one line of text for the caller.
#[derive(Debug)]
pub(crate) struct StageError(pub String);

impl Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StageError>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StageError> {
        self.map_err(|error| StageError(format!("{}: {error}", what())))
    }
}

/// Takes the control socket from standard input (which then reads `/dev/null`), and makes sure
/// nothing else this stage inherited survives an `exec`.
fn take_control_socket() -> Result<Channel, StageError> {
    crate::sys::mark_cloexec_from(3).context(|| "marking inherited descriptors".into())?;
    let socket = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context(|| "taking the control socket".into())?;
    let null = std::fs::File::open("/dev/null").context(|| "opening /dev/null".into())?;
    rustix::stdio::dup2_stdin(&null).context(|| "replacing stdin".into())?;
    Ok(Channel::new(UnixStream::from(socket)))
}

/// The command that starts another stage: this same binary with the same arguments, the last
/// (this stage's name) replaced by `stage`.
fn sibling_stage(stage: &str) -> Command {
    sibling_stage_from(Path::new("/proc/self/exe"), stage)
}

/// [`sibling_stage`] with this binary reached through `binary` (another path to the same file).
fn sibling_stage_from(binary: &Path, stage: &str) -> Command {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.pop();
    let mut command = Command::new(binary);
    command.args(args).arg(stage).env_clear();
    command
}
