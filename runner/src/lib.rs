//! # imgb-runner
//!
//! Runs one command in one ephemeral container: namespaces (mount, pid, ipc, uts, network;
//! user when rootless), an overlay root filesystem over read-only layer directories, `/proc`,
//! `/dev`, `/sys`, the hosts files, the step's mounts and user, output streaming, and the
//! overlay's upper directory captured as a layer. It knows nothing of Dockerfiles: the caller
//! passes layer directories, a command and mounts ([`RunSpec`]).
//!
//! Modules:
//! - [`spec`]: what a step asks for. [`runner`]: the caller's side ([`Runner::run`]), async.
//! - [`init`]: the init stages the caller re-executes (imgb's hidden `__init` subcommand); all
//!   namespace and mount work happens there, in single-threaded processes.
//! - Internals: `resolve` (paths inside the root filesystem, stubs), `mounts` (the new mount
//!   API), `users` (passwd/group), `caps` (Docker's capability set), `netlink` (loopback up),
//!   `hosts` (provided files), `cgroup` (the step's
//!   process and memory limits), `diff` (upper directory → layer changes), `idmap` (rootless id
//!   maps), `protocol` (messages between the stages), `sys` (the crate's only `unsafe`).
//!
//! Invariants:
//! - Every path inside the container is resolved inside its root filesystem; no host
//!   descriptor or path is reachable from the command.
//! - Nothing is left behind after a step, whether it succeeds, fails, times out or is
//!   cancelled: no mounts (they live in the container's mount namespace, which dies with it),
//!   no processes (PID 1's death takes the pid namespace down), no run directory.
//! - The layer directories are never written to.

mod caps;
mod cgroup;
mod diff;
mod hosts;
mod idmap;
pub mod init;
mod mounts;
mod netlink;
mod protocol;
mod resolve;
pub mod runner;
pub mod spec;
mod sys;
mod users;

pub use runner::{
    ExceededLimit, InitProgram, OutputLine, OutputStream, RunError, RunOutcome, RunStatus, Runner,
};
pub use spec::{
    CommitTo, DEFAULT_HOSTNAME, DEFAULT_PATH, Limits, Mount, MountKind, Network, RunSpec,
};
