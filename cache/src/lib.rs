//! # imgb-cache
//!
//! The state directory (`--root`): content-addressed blobs, unpacked layer snapshots, cache
//! records, image names and locks; deterministic layer tar writing and safe layer application.
//! It knows nothing of Dockerfiles.
//!
//! Modules:
//! - [`digest`]: the `sha256:<hex>` [`Digest`] type and a hashing writer.
//! - [`root`]: where the state directory is when `--root` is not given.
//! - [`store`]: the directory layout and the blob store (streaming, verified).
//! - [`lock`]: cross-process `flock` locks; the image name table uses them.
//!
//! Invariants:
//! - Every file is written to `tmp/`, fsynced and renamed into place: a reader never sees a
//!   partial blob, and a record is written only after everything it names is durable.
//! - Readers verify digests and sizes; corruption is an error naming the digest and the path.

pub mod digest;
mod images;
pub mod lock;
pub mod root;
pub mod store;

pub use digest::{Digest, DigestError};
pub use lock::FileLock;
pub use root::RootEnv;
pub use store::{BlobInfo, BlobReader, BlobWriter, Store, StoreError};
