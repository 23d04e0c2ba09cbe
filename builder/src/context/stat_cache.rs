//! The persistent stat cache: context-relative path → (size, mtime, ctime, inode, device, mode)
//! and the content digest of the file as it was when those were observed.
//!
//! A file whose `lstat` data equals its record is not read again. That is only sound if any
//! later change to the file also changes its stat data, which fails for a change made in the same
//! timestamp tick as the observation ("racy git"): filesystems stamp with a coarse clock, down to
//! whole seconds on some. Like git, we refuse to trust a record that is too fresh, but we compare
//! with the moment the walk started rather than the cache file's own mtime, which also covers a
//! file changed after it was hashed but before the cache was written: a record is saved only if
//! the file's ctime and mtime are more than [`RACY_WINDOW_NS`] older than the walk's start, so
//! a file changed just before or during a build is simply hashed again by the next one.
//!
//! The file format is a compact binary listing written atomically (temporary file, fsync,
//! rename, fsync of the directory) and checked on load by a trailing sha256. A file that is
//! missing, truncated, corrupt, of another version or written for another context directory is
//! ignored: the cache only ever saves work, it never decides a digest on its own.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fs::{self, File, Metadata};
use std::hash::BuildHasher as _;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::digest::ContentDigest;

/// The cache file's name inside the directory the caller gives.
pub(super) const FILE_NAME: &str = "stat-cache";

/// Format identifier and version; a different version is ignored, not migrated.
const MAGIC: &[u8; 8] = b"IMGBSTC1";

/// How much older than the walk's start a file's last change must be for its record to be
/// trusted: it covers filesystems with one- or two-second timestamps and clock-tick lag.
pub(super) const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// The fixed-width part of a record: size, mtime, ctime, inode, device (8 bytes each), mode
/// (4 bytes), digest (32 bytes).
const FIXED_RECORD_LEN: usize = 5 * 8 + 4 + 32;
const CHECKSUM_LEN: usize = 32;

/// The stat data that must be unchanged for a recorded digest to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatKey {
    pub(super) size: u64,
    pub(super) mtime_ns: i64,
    pub(super) ctime_ns: i64,
    pub(super) ino: u64,
    pub(super) dev: u64,
    /// The whole `st_mode`, file type included.
    pub(super) mode: u32,
}

impl StatKey {
    pub(super) fn of(metadata: &Metadata) -> Self {
        StatKey {
            size: metadata.size(),
            mtime_ns: nanoseconds(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: nanoseconds(metadata.ctime(), metadata.ctime_nsec()),
            ino: metadata.ino(),
            dev: metadata.dev(),
            mode: metadata.mode(),
        }
    }

    /// Whether a digest taken of this file during a walk that started at `walk_started_ns` may
    /// be reused later (see the module documentation).
    pub(super) fn is_settled(&self, walk_started_ns: i64) -> bool {
        self.mtime_ns.max(self.ctime_ns) < walk_started_ns.saturating_sub(RACY_WINDOW_NS)
    }
}

fn nanoseconds(seconds: i64, nanos: i64) -> i64 {
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// A file's recorded stat data and digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CachedDigest {
    pub(super) key: StatKey,
    pub(super) digest: ContentDigest,
}

/// The records loaded for one context directory, read in place from the file's bytes: loading
/// 20,000 records is one read, one checksum and an index of offsets, with no copy per record.
#[derive(Debug, Default)]
pub(super) struct StatCache {
    /// The whole cache file, checked.
    bytes: Vec<u8>,
    /// The offset in `bytes` of each record, by a hash of its path (the path itself is compared
    /// on lookup).
    by_path_hash: HashMap<u64, usize>,
    path_hasher: RandomState,
}

impl StatCache {
    /// Loads `dir/stat-cache` if it is intact and was written for `context_root`; anything else
    /// gives an empty cache.
    pub(super) fn load(dir: &Path, context_root: &Path) -> Self {
        fs::read(dir.join(FILE_NAME))
            .ok()
            .and_then(|bytes| Self::from_bytes(bytes, context_root.as_os_str().as_encoded_bytes()))
            .unwrap_or_default()
    }

    fn from_bytes(bytes: Vec<u8>, context_root: &[u8]) -> Option<Self> {
        let body_len = bytes.len().checked_sub(CHECKSUM_LEN)?;
        let (body, checksum) = bytes.split_at(body_len);
        let path_hasher = RandomState::new();
        // The checksum and the index each take a couple of milliseconds: overlap them.
        let (intact, by_path_hash) = rayon::join(
            || Sha256::digest(body).as_slice() == checksum,
            || index_records(body, context_root, &path_hasher),
        );
        let by_path_hash = by_path_hash.filter(|_| intact)?;
        Some(StatCache {
            bytes,
            by_path_hash,
            path_hasher,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.by_path_hash.len()
    }

    /// The recorded digest of `path` if its stat data is exactly `key`.
    pub(super) fn lookup(&self, path: &str, key: &StatKey) -> Option<ContentDigest> {
        let offset = *self
            .by_path_hash
            .get(&self.path_hasher.hash_one(path.as_bytes()))?;
        let mut reader = Reader(self.bytes.get(offset..)?);
        if reader.bytes()? != path.as_bytes() {
            return None;
        }
        let recorded = reader.stat_key()?;
        (recorded == *key).then(|| reader.array().map(ContentDigest::from_bytes))?
    }

    /// Atomically replaces `dir/stat-cache` with `records` (paths in any order).
    pub(super) fn save<'a>(
        dir: &Path,
        context_root: &Path,
        records: impl ExactSizeIterator<Item = (&'a str, CachedDigest)>,
    ) -> io::Result<()> {
        let bytes = encode(context_root.as_os_str().as_encoded_bytes(), records);
        fs::create_dir_all(dir)?;
        let temporary = dir.join(temporary_name());
        let written = write_durably(&temporary, &bytes)
            .and_then(|()| fs::rename(&temporary, dir.join(FILE_NAME)))
            .and_then(|()| File::open(dir)?.sync_all());
        if written.is_err() {
            // Best effort: a leftover temporary file is harmless, and the original error matters.
            let _ = fs::remove_file(&temporary);
        }
        written
    }
}

/// A name no concurrent writer (another thread or imgb process) uses at the same time; a file
/// of that name can only be left over from a dead process and is overwritten.
fn temporary_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{FILE_NAME}.{}.{sequence}.tmp", std::process::id())
}

fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn encode<'a>(
    context_root: &[u8],
    records: impl ExactSizeIterator<Item = (&'a str, CachedDigest)>,
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + records.len() * (FIXED_RECORD_LEN + 32));
    bytes.extend_from_slice(MAGIC);
    put_bytes(&mut bytes, context_root);
    bytes.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for (path, CachedDigest { key, digest }) in records {
        put_bytes(&mut bytes, path.as_bytes());
        bytes.extend_from_slice(&key.size.to_le_bytes());
        bytes.extend_from_slice(&key.mtime_ns.to_le_bytes());
        bytes.extend_from_slice(&key.ctime_ns.to_le_bytes());
        bytes.extend_from_slice(&key.ino.to_le_bytes());
        bytes.extend_from_slice(&key.dev.to_le_bytes());
        bytes.extend_from_slice(&key.mode.to_le_bytes());
        bytes.extend_from_slice(digest.as_bytes());
    }
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    bytes
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Paths are bounded by PATH_MAX; a longer one would not fit the format and is cut, which
    // only makes its record useless (it never matches), never wrong.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..len as usize]);
}

/// The offset of every record in `body` (a cache file without its checksum) by a hash of its
/// path, or `None` if `body` is malformed or was written for another context.
fn index_records(
    body: &[u8],
    context_root: &[u8],
    path_hasher: &RandomState,
) -> Option<HashMap<u64, usize>> {
    let mut reader = Reader(body);
    if reader.take(MAGIC.len())? != MAGIC || reader.bytes()? != context_root {
        return None;
    }
    let count = usize::try_from(reader.u64()?).ok()?;
    // The count comes from the file: never reserve more than its bytes can hold.
    let mut by_path_hash = HashMap::with_capacity(count.min(body.len() / (FIXED_RECORD_LEN + 4)));
    for _ in 0..count {
        let offset = body.len() - reader.0.len();
        let path = reader.bytes()?;
        reader.take(FIXED_RECORD_LEN)?;
        // Two paths with the same 64-bit hash: the second is not cached, merely rehashed.
        by_path_hash
            .entry(path_hasher.hash_one(path))
            .or_insert(offset);
    }
    reader.0.is_empty().then_some(by_path_hash)
}

/// A cursor over the cache file; every read fails softly at the end of the data.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }

    fn stat_key(&mut self) -> Option<StatKey> {
        Some(StatKey {
            size: self.u64()?,
            mtime_ns: self.i64()?,
            ctime_ns: self.i64()?,
            ino: self.u64()?,
            dev: self.u64()?,
            mode: self.u32()?,
        })
    }
}
