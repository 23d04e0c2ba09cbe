//! The state directory and its content-addressed blob store.
//!
//! Layout under the root:
//!
//! ```text
//! blobs/sha256/<hex>   compressed layers, configs, manifests
//! snapshots/           unpacked layers (one tree per diffID)
//! records/             cache key -> result
//! images/              image name table (names.json + names.lock)
//! contexts/            build-context stat caches
//! mounts/              RUN --mount=type=cache volumes
//! compressed/          <diffID hex>.<compression> -> descriptor of that layer's compressed blob
//! leases/              what running processes use, kept from prune (see [`crate::lease`])
//! registry/            `imgb serve`'s tags, manifests and uploads ([`crate::registry_index`])
//! tmp/                 staging area; same filesystem, so renames out of it are atomic
//! ```
//!
//! Invariants:
//! - Every file is staged in `tmp/`, fsynced, renamed into place and its directory fsynced
//!   (`TmpFile::persist`): readers see either nothing or the whole, durable file. Several
//!   processes may write the same blob at once; the last rename wins and all contents are equal.
//! - A blob's file name is its digest. Writers compute the digest while streaming
//!   ([`BlobWriter`]), so nothing is buffered whole in memory.
//! - Readers verify: [`BlobReader`] checks size and digest and fails the read that would
//!   complete a corrupt blob, so a consumer never finishes reading bad data without an error.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::compress::Compression;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::digest::{Digest, Hasher, HashingWriter};
use crate::lease::{Lease, Resource};

/// Subdirectories created by [`Store::open`].
const LAYOUT: &[&str] = &[
    "blobs/sha256",
    "snapshots",
    "records",
    "images",
    "contexts",
    "mounts",
    "compressed",
    crate::lease::LEASES_DIR,
    "tmp",
];

/// An opened state directory, optionally with a [`Lease`] that every blob and snapshot it
/// reads or writes is added to.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    lease: Option<Arc<Lease>>,
    /// Snapshots this process has checked against their seals, or made: each is checked once.
    checked_snapshots: Arc<Mutex<HashSet<Digest>>>,
}

/// A blob that is durable in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest} not found at {path}", path = path.display())]
    BlobNotFound { digest: Digest, path: PathBuf },
    #[error(
        "blob {digest} at {path} is corrupt: its content hashes to {actual} \
         (hint: delete the file and rebuild or pull again)",
        path = path.display()
    )]
    CorruptBlob {
        digest: Digest,
        path: PathBuf,
        actual: Digest,
    },
    #[error(
        "blob {digest} at {path} has size {actual}, expected {expected} \
         (hint: delete the file and rebuild or pull again)",
        path = path.display()
    )]
    BlobSizeMismatch {
        digest: Digest,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("written content hashes to {actual}, expected {expected}")]
    UnexpectedDigest { expected: Digest, actual: Digest },
    #[error("layer {digest}, rebuilt from its snapshot: {source}")]
    SnapshotTar {
        digest: Digest,
        #[source]
        source: Box<crate::snapshot::SnapshotError>,
    },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidImageName { name: String, reason: &'static str },
    #[error("image name table {path} is unreadable: {source}", path = path.display())]
    ImageTable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The digest of the stored blob or snapshot whose content no longer matches it, when that
    /// is what this error reports (a flipped byte, a truncated file, an edited snapshot).
    pub fn corrupt_content(&self) -> Option<&Digest> {
        match self {
            Self::CorruptBlob { digest, .. } | Self::BlobSizeMismatch { digest, .. } => {
                Some(digest)
            }
            Self::SnapshotTar { digest, source } => match &**source {
                crate::snapshot::SnapshotError::TarMismatch { .. } => Some(digest),
                crate::snapshot::SnapshotError::Store(inner) => inner.corrupt_content(),
                _ => None,
            },
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

impl Store {
    /// Opens the state directory at `root`, creating the layout if missing. A newly created
    /// root is private (0700): cache mounts and build outputs may hold secrets.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(StoreError::io("create state directory", &root))?;
        for dir in LAYOUT {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(StoreError::io("create directory", &path))?;
        }
        Ok(Self {
            root,
            lease: None,
            checked_snapshots: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn with_lease(&self, lease: Lease) -> Store {
        Store {
            root: self.root.clone(),
            lease: Some(Arc::new(lease)),
            checked_snapshots: Arc::clone(&self.checked_snapshots),
        }
    }

    /// The snapshots this process has found intact or made (see [`Store::ensure_snapshot`]).
    pub(crate) fn checked_snapshots(&self) -> MutexGuard<'_, HashSet<Digest>> {
        self.checked_snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn forget_checked_snapshot(&self, diff_id: &Digest) {
        self.checked_snapshots().remove(diff_id);
    }

    /// The lease this store adds what it uses to, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_deref()
    }

    /// The staging directory (same filesystem as everything else).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn records_dir(&self) -> PathBuf {
        self.root.join("records")
    }

    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// ADD's download records (the builder's format; cache, as `imgb prune` treats them).
    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// Where the descriptor of `diff_id`'s layer compressed with `compression` is remembered.
    pub fn compressed_memo_path(&self, diff_id: &Digest, compression: Compression) -> PathBuf {
        let variant = match compression {
            Compression::None => "none".to_owned(),
            Compression::Gzip { level } => format!("gzip-{level}"),
            Compression::Zstd { level } => format!("zstd-{level}"),
        };
        self.root
            .join("compressed")
            .join(format!("{}.{variant}", diff_id.hex()))
    }

    /// Writes a small file atomically (staged in `tmp/`, renamed to `path`): readers see the old
    /// or the whole new content. [`Durability::Synced`] also makes it survive a crash.
    pub fn write_small_file(
        &self,
        path: &Path,
        bytes: &[u8],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let mut file = TmpFile::create(&self.tmp_dir(), "small")?;
        file.write_all(bytes)
            .map_err(StoreError::io("write", &file.path))?;
        match durability {
            Durability::Synced => file.persist(path),
            Durability::Advisory => file.rename_into(path),
        }
    }

    /// Where the blob named `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    /// Whether the blob is stored; with a lease, it stays stored while the lease lives. A blob
    /// the lease cannot name (its file is unwritable) counts as absent, so the caller writes
    /// or rebuilds it rather than relying on something prune may remove.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.protect(&Resource::Blob(digest.clone())).is_ok() && self.blob_path(digest).is_file()
    }

    /// Starts streaming a new blob into `tmp/`.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = TmpFile::create(&self.tmp_dir(), "blob")?;
        Ok(BlobWriter {
            store: self.clone(),
            out: HashingWriter::new(BufWriter::with_capacity(BLOB_BUFFER, tmp)),
        })
    }

    /// A blob writer staging into `path` (on the store's filesystem, outside `tmp/`) after
    /// what `path` already holds, which is hashed first: an upload that outlives its process
    /// goes on where its bytes end. Unlike [`blob_writer`](Self::blob_writer)'s staged file,
    /// this one stays when the writer is dropped; committing moves it into place.
    pub fn resume_blob_writer(&self, path: &Path) -> Result<BlobWriter, StoreError> {
        let staged = TmpFile::resumable(path)?;
        let existing = File::open(path).map_err(StoreError::io("open", path))?;
        let out = HashingWriter::after(BufWriter::with_capacity(BLOB_BUFFER, staged), existing)
            .map_err(StoreError::io("read", path))?;
        Ok(BlobWriter {
            store: self.clone(),
            out,
        })
    }

    /// Writes `bytes` as a blob (for small documents: configs, manifests).
    pub fn write_blob(&self, bytes: &[u8]) -> Result<BlobInfo, StoreError> {
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .map_err(StoreError::io("write blob", self.tmp_dir()))?;
        writer.commit()
    }

    /// Opens a blob for reading with verification of its digest and, when given, its size.
    pub fn open_blob(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobReader, StoreError> {
        self.protect(&Resource::Blob(digest.clone()))?;
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound {
                    digest: digest.clone(),
                    path: path.clone(),
                }
            } else {
                StoreError::io("open blob", &path)(source)
            }
        })?;
        let actual = file
            .metadata()
            .map_err(StoreError::io("stat blob", &path))?
            .len();
        if let Some(expected) = expected_size.filter(|&expected| expected != actual) {
            return Err(StoreError::BlobSizeMismatch {
                digest: digest.clone(),
                path,
                expected,
                actual,
            });
        }
        Ok(BlobReader {
            file,
            path,
            digest: digest.clone(),
            size: actual,
            read: 0,
            hasher: Some(Hasher::default()),
        })
    }

    /// Reads a whole blob, verified (for small documents).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut reader = self.open_blob(digest, None)?;
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|error| reader.error(error))?;
        Ok(bytes)
    }

    /// The digests of all stored blobs (files with other names are not blobs and are skipped).
    pub fn list_blobs(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.root.join("blobs").join("sha256");
        let mut digests = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io("list blobs", &dir))? {
            let entry = entry.map_err(StoreError::io("list blobs", &dir))?;
            let name = entry.file_name();
            if let Some(digest) = name
                .to_str()
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            {
                digests.push(digest);
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// Takes the blob and the snapshot named `digest` out of the store after they failed
    /// verification, so that records naming them become misses and the next solve rebuilds
    /// them (or the next pull fetches them again). Each is renamed into `tmp/` first, so no
    /// reader ever sees it half deleted; what cannot be deleted there is a leftover prune removes.
    pub fn discard_corrupt(&self, digest: &Digest) -> Result<(), StoreError> {
        self.forget_checked_snapshot(digest);
        let snapshot = self.snapshot_path(digest);
        let settings = snapshot.with_extension("json");
        let seal = snapshot.with_extension("seal");
        for path in [self.blob_path(digest), snapshot, settings, seal] {
            let moved = self.tmp_dir().join(format!(
                "corrupt-{}-{}",
                std::process::id(),
                unique_suffix(&path)
            ));
            match fs::rename(&path, &moved) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(StoreError::io("move the corrupt", &path)(error)),
            }
            let _ = match moved.is_dir() {
                true => fs::remove_dir_all(&moved),
                false => fs::remove_file(&moved),
            };
        }
        Ok(())
    }

    /// Checks a blob's size and digest without keeping its content; returns the size.
    pub fn verify_blob(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> Result<u64, StoreError> {
        let mut reader = self.open_blob(digest, expected_size)?;
        io::copy(&mut reader, &mut io::sink()).map_err(|error| reader.error(error))
    }
}

const BLOB_BUFFER: usize = 256 * 1024;

/// `path`'s last two components joined, unique among the store's files.
fn unique_suffix(path: &Path) -> String {
    let name = |path: Option<&Path>| {
        path.and_then(Path::file_name)
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    format!("{}-{}", name(path.parent()), name(Some(path)))
}

/// Streams a new blob into `tmp/`, hashing as it goes; [`BlobWriter::commit`] moves it into
/// place. Dropping it without committing removes the staged file.
#[derive(Debug)]
pub struct BlobWriter {
    store: Store,
    out: HashingWriter<BufWriter<TmpFile>>,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.written()
    }

    /// Makes the blob durable under its digest. Committing content that is already stored is a
    /// no-op apart from the hashing.
    pub fn commit(self) -> Result<BlobInfo, StoreError> {
        self.commit_inner(None)
    }

    /// Like [`commit`](Self::commit), but refuses content whose digest is not `expected`
    /// (for downloads).
    pub fn commit_expected(self, expected: &Digest) -> Result<BlobInfo, StoreError> {
        self.commit_inner(Some(expected))
    }

    fn commit_inner(self, expected: Option<&Digest>) -> Result<BlobInfo, StoreError> {
        let (buffered, digest, size) = self.out.finish();
        let tmp_dir = self.store.tmp_dir();
        let tmp = buffered
            .into_inner()
            .map_err(|error| StoreError::io("write blob", tmp_dir)(error.into_error()))?;
        if let Some(expected) = expected.filter(|&expected| *expected != digest) {
            return Err(StoreError::UnexpectedDigest {
                expected: expected.clone(),
                actual: digest,
            });
        }
        if !self.store.has_blob(&digest) {
            tmp.persist(&self.store.blob_path(&digest))?;
        }
        Ok(BlobInfo { digest, size })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads a stored blob while hashing it. The read that reaches the end of the blob fails with a
/// [`StoreError`] (inside the `io::Error`) instead of returning its bytes when the content does
/// not match the digest.
#[derive(Debug)]
pub struct BlobReader {
    file: File,
    path: PathBuf,
    digest: Digest,
    size: u64,
    read: u64,
    /// `None` once the content has been verified.
    hasher: Option<Hasher>,
}

impl BlobReader {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Turns an error from `read` back into the [`StoreError`] it carries, or wraps it.
    pub fn error(&self, error: io::Error) -> StoreError {
        match error.downcast::<StoreError>() {
            Ok(store_error) => store_error,
            Err(error) => StoreError::io("read blob", &self.path)(error),
        }
    }

    fn mismatch(&self, actual_size: u64, actual: Option<Digest>) -> io::Error {
        let error = match actual {
            Some(actual) => StoreError::CorruptBlob {
                digest: self.digest.clone(),
                path: self.path.clone(),
                actual,
            },
            None => StoreError::BlobSizeMismatch {
                digest: self.digest.clone(),
                path: self.path.clone(),
                expected: self.size,
                actual: actual_size,
            },
        };
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(hasher) = self.hasher.as_mut().filter(|_| !buf.is_empty()) else {
            return Ok(0);
        };
        let n = self.file.read(buf)?;
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        self.read += n as u64;
        if self.read > self.size {
            return Err(self.mismatch(self.read, None));
        }
        if n == 0 && self.read < self.size {
            return Err(self.mismatch(self.read, None));
        }
        if self.read == self.size {
            let actual = self.hasher.take().unwrap_or_default().finish();
            if actual != self.digest {
                return Err(self.mismatch(self.read, Some(actual)));
            }
        }
        Ok(n)
    }
}

/// `PREFIX-PID-N`: unique among this process's temporary names; a leftover from an earlier
/// process with the same pid is detected by the exclusive create that follows.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory in `tmp/`, removed with its content on drop unless [`TmpDir::keep`] is called.
#[derive(Debug)]
pub(crate) struct TmpDir {
    path: PathBuf,
    keep: bool,
}

impl TmpDir {
    /// Creates a new, empty directory (mode 0755) in `tmp_dir`.
    pub(crate) fn create(tmp_dir: &Path, prefix: &str) -> Result<Self, StoreError> {
        loop {
            let path = tmp_dir.join(unique_name(prefix));
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => return Ok(Self { path, keep: false }),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    return Err(StoreError::io("create temporary directory", path)(error));
                }
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Disarms the removal (the directory has been renamed into place).
    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: leftovers in tmp/ are harmless and collected later.
            let _ = remove_tree(&self.path);
        }
    }
}

/// A file staged in `tmp/` and closed, so that many can wait for a decision without holding
/// descriptors; removed on drop unless persisted.
#[derive(Debug)]
pub(crate) struct StagedFile {
    path: PathBuf,
    persisted: bool,
}

impl StagedFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// fsync, rename to `dest`, fsync `dest`'s directory.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<(), StoreError> {
        File::open(&self.path)
            .and_then(|file| file.sync_all())
            .map_err(StoreError::io("fsync", &self.path))?;
        fs::rename(&self.path, dest).map_err(StoreError::io("rename into place", dest))?;
        self.persisted = true;
        sync_parent(dest)
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort, as for TmpFile.
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|dir_file| dir_file.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Removes a directory tree that may hold read-only directories (as unpacked layers do), never
/// following symlinks. A missing `path` is not an error.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match path.symlink_metadata() {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    for entry in fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    fs::remove_dir(path)
}

/// How far [`Store::write_small_file`] goes to keep a file across a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Survives a crash once written (file and directory fsynced).
    Synced,
    /// Atomic, but may be lost in a crash: for data that can be recomputed.
    Advisory,
}

/// A file being staged in `tmp/`, removed on drop unless persisted; or a resumable upload's
/// file, which drop leaves.
#[derive(Debug)]
pub(crate) struct TmpFile {
    file: File,
    path: PathBuf,
    /// Whether drop leaves the file.
    persisted: bool,
}

impl TmpFile {
    pub(crate) fn create(tmp_dir: &Path, prefix: &str) -> Result<Self, StoreError> {
        loop {
            let path = tmp_dir.join(unique_name(prefix));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        path,
                        persisted: false,
                    });
                }
                // Left over from an earlier process with the same pid.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(StoreError::io("create temporary file", path)(error)),
            }
        }
    }

    /// Opens `path` for appending, creating it if missing; drop leaves it.
    fn resumable(path: &Path) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(StoreError::io("open for appending", path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            persisted: true,
        })
    }

    /// fsync, rename to `dest`, fsync `dest`'s directory.
    pub(crate) fn persist(self, dest: &Path) -> Result<(), StoreError> {
        self.file
            .sync_all()
            .map_err(StoreError::io("fsync", &self.path))?;
        self.rename_into(dest)?;
        sync_parent(dest)
    }

    /// Renames to `dest` without syncing: atomic, but may be lost in a crash.
    pub(crate) fn rename_into(mut self, dest: &Path) -> Result<(), StoreError> {
        fs::rename(&self.path, dest).map_err(StoreError::io("rename into place", dest))?;
        self.persisted = true;
        Ok(())
    }

    /// Closes the file, keeping it staged.
    pub(crate) fn close(mut self) -> StagedFile {
        self.persisted = true;
        StagedFile {
            path: std::mem::take(&mut self.path),
            persisted: false,
        }
    }
}

impl Write for TmpFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: a leftover in tmp/ is harmless and collected later.
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        (dir, store)
    }

    #[test]
    fn open_creates_layout_and_is_idempotent() {
        let (_dir, store) = store();
        for sub in LAYOUT {
            assert!(store.root().join(sub).is_dir(), "{sub}");
        }
        Store::open(store.root()).unwrap();
    }

    #[test]
    fn a_resumed_blob_writer_continues_the_file_a_dropped_one_left() {
        let (dir, store) = store();
        let path = dir.path().join("upload");
        let mut first = store.resume_blob_writer(&path).unwrap();
        first.write_all(b"hello ").unwrap();
        first.flush().unwrap();
        drop(first);
        assert_eq!(fs::read(&path).unwrap(), b"hello ");
        let mut resumed = store.resume_blob_writer(&path).unwrap();
        assert_eq!(resumed.written(), 6);
        resumed.write_all(b"world").unwrap();
        let info = resumed
            .commit_expected(&Digest::of(b"hello world"))
            .unwrap();
        assert_eq!(info.size, 11);
        assert!(!path.exists());
        assert_eq!(store.read_blob(&info.digest).unwrap(), b"hello world");
    }

    #[test]
    fn written_blob_is_named_by_its_digest_and_reads_back() {
        let (_dir, store) = store();
        let info = store.write_blob(b"hello").unwrap();
        assert_eq!(info.digest, Digest::of(b"hello"));
        assert_eq!(info.size, 5);
        assert_eq!(
            store.blob_path(&info.digest),
            store.root().join("blobs/sha256").join(info.digest.hex())
        );
        assert_eq!(store.read_blob(&info.digest).unwrap(), b"hello");
        assert_eq!(store.verify_blob(&info.digest, Some(5)).unwrap(), 5);
    }

    #[test]
    fn writing_an_existing_blob_is_idempotent_and_leaves_no_temp_files() {
        let (_dir, store) = store();
        let first = store.write_blob(b"same").unwrap();
        let second = store.write_blob(b"same").unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn dropped_writer_removes_its_temp_file() {
        let (_dir, store) = store();
        let mut writer = store.blob_writer().unwrap();
        writer.write_all(b"partial").unwrap();
        drop(writer);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn commit_expected_rejects_wrong_content() {
        let (_dir, store) = store();
        let mut writer = store.blob_writer().unwrap();
        writer.write_all(b"actual").unwrap();
        let expected = Digest::of(b"expected");
        let error = writer.commit_expected(&expected).unwrap_err();
        assert!(
            matches!(error, StoreError::UnexpectedDigest { .. }),
            "{error}"
        );
        assert!(!store.has_blob(&expected));
        assert!(!store.has_blob(&Digest::of(b"actual")));
    }

    #[test]
    fn corrupt_blob_is_reported_with_digest_and_path() {
        let (_dir, store) = store();
        let info = store.write_blob(b"original content").unwrap();
        let path = store.blob_path(&info.digest);
        fs::write(&path, b"tampered content").unwrap();
        let error = store.read_blob(&info.digest).unwrap_err();
        match &error {
            StoreError::CorruptBlob {
                digest,
                path: at,
                actual,
            } => {
                assert_eq!(digest, &info.digest);
                assert_eq!(at, &path);
                assert_eq!(actual, &Digest::of(b"tampered content"));
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(error.to_string().contains(info.digest.as_str()));
    }

    #[test]
    fn streaming_reader_fails_the_final_read_of_a_corrupt_blob() {
        let (_dir, store) = store();
        let content = vec![7u8; 100_000];
        let info = store.write_blob(&content).unwrap();
        let mut tampered = content.clone();
        tampered[99_999] = 8;
        fs::write(store.blob_path(&info.digest), &tampered).unwrap();
        let mut reader = store.open_blob(&info.digest, Some(info.size)).unwrap();
        let mut received = Vec::new();
        let error = reader.read_to_end(&mut received).unwrap_err();
        assert!(received.len() < tampered.len());
        assert!(matches!(
            reader.error(error),
            StoreError::CorruptBlob { .. }
        ));
    }

    #[test]
    fn size_mismatch_is_reported_before_reading() {
        let (_dir, store) = store();
        let info = store.write_blob(b"four").unwrap();
        let error = store.open_blob(&info.digest, Some(5)).unwrap_err();
        assert!(matches!(
            error,
            StoreError::BlobSizeMismatch {
                expected: 5,
                actual: 4,
                ..
            }
        ));
        let truncated = store.write_blob(b"truncate me").unwrap();
        fs::write(store.blob_path(&truncated.digest), b"trunc").unwrap();
        let error = store.verify_blob(&truncated.digest, None).unwrap_err();
        assert!(matches!(error, StoreError::CorruptBlob { .. }), "{error}");
    }

    #[test]
    fn missing_blob_is_not_found_error() {
        let (_dir, store) = store();
        let digest = Digest::of(b"absent");
        let error = store.read_blob(&digest).unwrap_err();
        assert!(matches!(error, StoreError::BlobNotFound { .. }));
    }

    #[test]
    fn concurrent_writers_of_the_same_blob_all_succeed() {
        let (_dir, store) = store();
        let content = vec![42u8; 1 << 20];
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let mut writer = store.blob_writer().unwrap();
                    for chunk in content.chunks(4096) {
                        writer.write_all(chunk).unwrap();
                    }
                    writer.commit().unwrap()
                });
            }
        });
        let digest = Digest::of(&content);
        assert_eq!(store.verify_blob(&digest, Some(1 << 20)).unwrap(), 1 << 20);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
