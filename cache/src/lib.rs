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
//! - [`layer`]: a directory plus deletions (listed, or in overlayfs form) → a byte-identical
//!   tar, compressed ([`compress`]) and hashed (diffID and blob digest) in one streaming pass.
//! - [`apply`]: a layer tar (any compression) → a directory, never touching anything outside it;
//!   also ADD's archives, onto the upper layer of a stack.
//! - [`decompress`]: gzip, bzip2, xz and zstd detected by content; the "is this a tar" test.
//! - [`snapshot`]: one unpacked tree per layer (overlayfs lower directories), made once from a
//!   blob, or adopted as it is from the directory a build step wrote.
//! - [`layer_source`]: a layer's blob, stored or rebuilt from its snapshot, verified either way.
//! - [`oci`]: the image model (index, manifest, config) and canonical JSON.
//! - [`mod@reference`]: image names normalized as Docker does.
//! - [`image`]: images in the store (manifest + config + layers, named).
//! - [`import`]: OCI layout and docker-archive tars → the store, verified.
//! - [`registry`]: the OCI distribution client (pull, push, auth, login).
//! - [`registry_index`]: the tags and manifests `imgb serve`'s registry keeps in a store.
//! - [`lease`]: what running processes use, kept from [`prune`], which removes build cache.
//! - [`output`] and [`mod@export`]: the `-o type=...` syntax and the exporters.
//! - [`build_cache`]: the `--cache-to`/`--cache-from` exchange format and its locations.
//!
//! Internals: `tar_format` encodes headers, `tar_reader` parses untrusted archives, `confined`
//! resolves paths inside a directory as if it were `/`.
//!
//! Storage model (BuildKit's): a layer a build step makes is stored once, as its snapshot. Its
//! diffID is the hash of its deterministic tar, streamed and not kept; manifests name it as an
//! uncompressed layer (digest = diffID, size = tar length), so an image's manifest digest never
//! depends on whether or when a blob was written. The tar is rebuilt from the snapshot when an
//! export, `imgb save` or a push reads the layer, and compressed there (gzip unless the output
//! says otherwise; once per diffID and compression, the blob kept). Base image layers keep the
//! blobs they were loaded as unless `force-compression=true`.
//!
//! Invariants:
//! - Every file is written to `tmp/`, fsynced and renamed into place: a reader never sees a
//!   partial blob, and a record is written only after everything it names is durable.
//!   Snapshots are directories completed (and the filesystem synced) before that rename.
//! - Readers verify digests and sizes; corruption is an error naming the digest and the path
//!   (a snapshot that no longer gives its layer's tar, too).
//! - Layer bytes depend only on the tree's content and metadata (and `SOURCE_DATE_EPOCH`),
//!   never on the clock, the host's user names, walk order or thread count.

pub mod apply;
pub mod build_cache;
pub mod compress;
mod confined;
pub mod decompress;
pub mod digest;
pub mod export;
pub mod image;
mod images;
pub mod import;
pub mod layer;
pub mod layer_source;
pub mod lease;
pub mod lock;
pub mod oci;
pub mod output;
pub mod prune;
pub mod reference;
pub mod registry;
pub mod registry_index;
pub mod root;
pub mod seal;
pub mod snapshot;
pub mod store;
mod tar_format;
mod tar_reader;
pub mod usage;

pub use apply::{
    ApplyError, ApplyLimits, ApplyOptions, ApplyStats, OverlayXattrs, Whiteouts, apply_layer,
    apply_over,
};
pub use compress::Compression;
pub use confined::{Below, BelowEntry, ResolveError};
pub use decompress::{StreamCompression, is_tar_archive};
pub use digest::{Digest, DigestError};
pub use export::{
    ExportError, ExportReport, ExportedImage, LayerCompressionChoice, compressed_layer, export,
    exported_image,
};
pub use image::{ImageError, ImageSummary, StoredImage};
pub use import::{ImportError, LoadedImage, load_archive};
pub use layer::{
    IdMap, Layer, LayerChanges, LayerError, LayerOptions, OverlayTarSettings, hash_overlay_tar,
    write_layer, write_overlay_tar, write_tar,
};
pub use layer_source::LayerReader;
pub use lease::{Lease, Resource};
pub use lock::FileLock;
pub use output::{Destination, OutputKind, OutputSpec, OutputSpecError};
pub use prune::{PruneError, PruneOptions, PruneReport, RecordRef, Removed};
pub use reference::{Reference, ReferenceError};
pub use root::RootEnv;
pub use snapshot::{SnapshotError, SnapshotLayer};
pub use store::{BlobInfo, BlobReader, BlobWriter, Durability, Store, StoreError};
