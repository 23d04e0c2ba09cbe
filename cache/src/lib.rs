//! # imgb-cache
//!
//! The state directory (`--root`): content-addressed blobs, unpacked layer snapshots, cache
//! records, image names, locks and garbage collection; deterministic layer tar writing and safe
//! layer application; later the remote cache backends (registry, `imgb serve`).
//!
//! Invariants:
//! - Every file is written to `tmp/`, fsynced and renamed into place: a reader never sees a
//!   partial blob, and a record is written only after everything it names is durable.
//! - It knows nothing of Dockerfiles.
//!
//! Not built yet: this crate is a placeholder for the store issue.
