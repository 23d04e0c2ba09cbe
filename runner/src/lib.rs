//! # imgb-runner
//!
//! Runs one command in one ephemeral container: namespaces (mount, pid, ipc, uts, net; user when
//! rootless), an overlay rootfs over read-only layer snapshots, `/proc`, `/dev`, the hosts files,
//! the step's user, output streaming, and the captured upper dir as a diff.
//!
//! Invariants:
//! - Every kernel call (mounts, namespaces) goes through one narrow module, so everything else
//!   is testable without root.
//! - Nothing is left behind after a step: no mounts, no processes, no temp dirs.
//!
//! Not built yet: this crate is a placeholder for the runner issue.
