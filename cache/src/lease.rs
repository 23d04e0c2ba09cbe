//! Leases: what a running imgb process uses or is about to write, kept from `imgb prune`.
//!
//! ```text
//! leases/gc.lock          shared by a lease while it adds a resource; exclusive while prune
//!                         decides and moves its victims away
//! leases/<pid>-<n>.lease  one per lease: flocked by its owner for its whole life; the first
//!                         line says when it started, each further line names a resource
//! ```
//!
//! Protocol (why prune never removes what a build uses):
//! - A process names a resource in its lease ([`Store::protect`]) *before* it checks that the
//!   resource exists or makes it visible. Adding takes `gc.lock` shared and prune's decision
//!   holds it exclusive, so either prune reads the name (and keeps the resource), or prune's
//!   removal is complete before the process looks (and it sees a miss, as after any prune).
//! - A lease whose owner died is stale: its file can be locked. Prune removes it and ignores
//!   what it names; nothing else ever expires a lease.
//! - Everything in `tmp/` a lease holder creates is newer than its lease, so prune treats an
//!   entry of `tmp/` older than every live lease as a leftover of a dead process.
//!
//! Protecting a resource also marks it used now (its mtime), which is what `--keep-storage`
//! orders by. Each resource is written to the lease and touched once per lease, so a
//! no-change rebuild costs a few syscalls per step, not per file of its context.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};

use crate::digest::Digest;
use crate::lock::FileLock;
use crate::store::{Store, StoreError};

/// The directory of lease files under the state directory.
pub const LEASES_DIR: &str = "leases";
const GC_LOCK: &str = "gc.lock";
const LEASE_SUFFIX: &str = ".lease";
const HEADER: &str = "imgb-lease 1";

/// Something in the state directory that prune could remove.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// A blob: manifest, config or layer.
    Blob(Digest),
    /// The snapshot (unpacked tree) of the layer with this diffID.
    Snapshot(Digest),
    /// A cache record: its file name under `records/`.
    Record(String),
    /// A `RUN --mount=type=cache` directory: its name under `mounts/`.
    CacheMount(String),
    /// A build context's stat cache: its name under `contexts/`.
    ContextCache(String),
}

impl Resource {
    /// Where the resource lives in `store` (whether or not it exists).
    pub fn path(&self, store: &Store) -> PathBuf {
        match self {
            Resource::Blob(digest) => store.blob_path(digest),
            Resource::Snapshot(diff_id) => store.snapshot_path(diff_id),
            Resource::Record(name) => store.records_dir().join(name),
            Resource::CacheMount(name) => store.root().join("mounts").join(name),
            Resource::ContextCache(name) => store.root().join("contexts").join(name),
        }
    }

    /// The kind, as `imgb prune` and lease files name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Blob(_) => "blob",
            Resource::Snapshot(_) => "snapshot",
            Resource::Record(_) => "record",
            Resource::CacheMount(_) => "mount",
            Resource::ContextCache(_) => "context",
        }
    }

    /// The identity within the kind: a digest or a file name.
    pub fn id(&self) -> &str {
        match self {
            Resource::Blob(digest) | Resource::Snapshot(digest) => digest.as_str(),
            Resource::Record(name) | Resource::CacheMount(name) | Resource::ContextCache(name) => {
                name
            }
        }
    }

    /// Parses a lease line (`kind id`); `None` for anything else, e.g. the torn last line of a
    /// killed writer. Names must be plain file names, so a lease cannot point outside its kind.
    fn parse(line: &str) -> Option<Resource> {
        let (kind, id) = line.split_once(' ')?;
        let digest = || Digest::parse(id).ok();
        let name = || {
            let plain = !id.is_empty() && id != "." && id != ".." && !id.contains('/');
            plain.then(|| id.to_owned())
        };
        match kind {
            "blob" => digest().map(Resource::Blob),
            "snapshot" => digest().map(Resource::Snapshot),
            "record" => name().map(Resource::Record),
            "mount" => name().map(Resource::CacheMount),
            "context" => name().map(Resource::ContextCache),
            _ => None,
        }
    }
}

/// A held lease; dropping it ends the lease (a crash ends it too, see the module docs). A
/// joined lease ([`Lease::join`]) adds to another process's lease and ends nothing.
#[derive(Debug)]
pub struct Lease {
    leases_dir: PathBuf,
    path: PathBuf,
    /// The owner's lock; `None` for a joined lease.
    held: Option<FileLock>,
    /// The lease file for appending, and the resources already in it.
    state: Mutex<(File, HashSet<Resource>)>,
}

impl Lease {
    /// Starts a lease on `store` for `purpose` (shown in the lease file, for people).
    pub fn acquire(store: &Store, purpose: &str) -> Result<Lease, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let leases_dir = store.root().join(LEASES_DIR);
        fs::create_dir_all(&leases_dir).map_err(StoreError::io("create directory", &leases_dir))?;
        // Prune decides under the exclusive lock: it must never see this file before it is
        // locked, or it would take the lease for a dead one.
        let _gc = FileLock::shared(&leases_dir.join(GC_LOCK))?;
        let path = leases_dir.join(format!(
            "{}-{}{LEASE_SUFFIX}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let held = FileLock::exclusive(&path)?;
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(StoreError::io("open lease", &path))?;
        // A dead process with the same pid may have left this file; its names are not ours.
        file.set_len(0)
            .map_err(StoreError::io("truncate lease", &path))?;
        // The start is the file's ctime: the clock that stamps the entries of tmp/ as well.
        let started = ctime(&file.metadata().map_err(StoreError::io("stat", &path))?);
        let started = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let purpose: String = purpose.chars().filter(|c| !c.is_control()).collect();
        writeln!(
            file,
            "{HEADER} {}.{:09} pid={} {purpose}",
            started.as_secs(),
            started.subsec_nanos(),
            std::process::id()
        )
        .map_err(StoreError::io("write lease", &path))?;
        Ok(Lease {
            leases_dir,
            path,
            held: Some(held),
            state: Mutex::new((file, HashSet::new())),
        })
    }

    /// Adds to the lease at `path`, which a parent process holds for as long as this one runs
    /// (a build's container supervisor writing the step's layer).
    pub fn join(store: &Store, path: &Path) -> Result<Lease, StoreError> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(StoreError::io("join lease", path))?;
        Ok(Lease {
            leases_dir: store.root().join(LEASES_DIR),
            path: path.to_owned(),
            held: None,
            state: Mutex::new((file, HashSet::new())),
        })
    }

    /// The lease file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps `resource` from prune for the rest of the lease and marks it used now.
    fn protect(&self, store: &Store, resource: &Resource) -> Result<(), StoreError> {
        // Poisoned only if a writer panicked; the set is still a valid under-approximation.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.1.contains(resource) {
            return Ok(());
        }
        {
            // One write per line: a joined lease appends to the same file from another process.
            let line = format!("{} {}\n", resource.kind(), resource.id());
            let _gc = FileLock::shared(&self.leases_dir.join(GC_LOCK))?;
            state
                .0
                .write_all(line.as_bytes())
                .map_err(StoreError::io("write lease", &self.path))?;
        }
        state.1.insert(resource.clone());
        drop(state);
        mark_used(&resource.path(store));
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.held.is_some() {
            // Best effort: a file left behind is unlocked once we exit, so prune removes it.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Sets `path`'s mtime to now, leaving its content and atime alone. Best effort: last use only
/// orders `--keep-storage`, and a resource that does not exist yet gets its mtime when made.
fn mark_used(path: &Path) {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
    };
    let _ = rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW);
}

pub(crate) fn ctime(metadata: &fs::Metadata) -> SystemTime {
    let since_epoch = Duration::new(
        metadata.ctime().max(0).unsigned_abs(),
        u32::try_from(metadata.ctime_nsec()).unwrap_or(0),
    );
    SystemTime::UNIX_EPOCH + since_epoch
}

impl Store {
    /// This store with a new lease for `purpose`; clones of the returned store share it, and
    /// it ends when the last clone is dropped.
    pub fn leased(&self, purpose: &str) -> Result<Store, StoreError> {
        let lease = Lease::acquire(self, purpose)?;
        Ok(self.with_lease(lease))
    }

    /// This store adding to the lease file at `path` (see [`Lease::join`]).
    pub fn joining_lease(&self, path: &Path) -> Result<Store, StoreError> {
        let lease = Lease::join(self, path)?;
        Ok(self.with_lease(lease))
    }

    /// Keeps `resource` from prune while this store's lease lives and marks it used now; a
    /// no-op without a lease. Call it *before* checking that the resource exists or making it
    /// visible (see the module docs for why).
    pub fn protect(&self, resource: &Resource) -> Result<(), StoreError> {
        match self.lease() {
            Some(lease) => lease.protect(self, resource),
            None => Ok(()),
        }
    }
}

/// The leases prune must respect, read while it holds `gc.lock` exclusively.
#[derive(Debug, Default)]
pub(crate) struct LiveLeases {
    /// Everything live leases name.
    pub(crate) protected: HashSet<Resource>,
    /// When the oldest live lease started (`None`: there is none).
    pub(crate) oldest_start: Option<SystemTime>,
}

/// The exclusive side of `gc.lock`: while it is held no lease starts or adds a resource.
pub(crate) fn lock_for_collection(store: &Store) -> Result<FileLock, StoreError> {
    let leases_dir = store.root().join(LEASES_DIR);
    fs::create_dir_all(&leases_dir).map_err(StoreError::io("create directory", &leases_dir))?;
    FileLock::exclusive(&leases_dir.join(GC_LOCK))
}

/// Whether [`live_leases`] removes stale lease files (only with [`lock_for_collection`] held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemoveStale {
    Yes,
    No,
}

/// Reads every live lease, removing stale ones if asked.
pub(crate) fn live_leases(store: &Store, stale: RemoveStale) -> Result<LiveLeases, StoreError> {
    let dir = store.root().join(LEASES_DIR);
    let mut live = LiveLeases::default();
    for entry in fs::read_dir(&dir).map_err(StoreError::io("list leases", &dir))? {
        let path = entry.map_err(StoreError::io("list leases", &dir))?.path();
        if !path.to_string_lossy().ends_with(LEASE_SUFFIX) {
            continue;
        }
        let Some(unheld) = FileLock::try_exclusive(&path)? else {
            read_lease(&path, &mut live)?;
            continue;
        };
        if stale == RemoveStale::No {
            continue;
        }
        match fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove stale lease", &path)(error));
            }
            _ => drop(unheld),
        }
    }
    Ok(live)
}

fn read_lease(path: &Path, live: &mut LiveLeases) -> Result<(), StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        // Ended between the listing and now.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::io("read lease", path)(error)),
    };
    let mut lines = text.lines();
    // A live lease always has its header: it is written before the creator lets go of gc.lock.
    let started = lines
        .next()
        .and_then(|header| header.strip_prefix(HEADER))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(parse_timestamp)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    live.oldest_start = Some(
        live.oldest_start
            .map_or(started, |oldest| oldest.min(started)),
    );
    live.protected.extend(lines.filter_map(Resource::parse));
    Ok(())
}

fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let (seconds, nanos) = text.split_once('.')?;
    let since_epoch = Duration::new(seconds.parse().ok()?, nanos.parse().ok()?);
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        (dir, store)
    }

    fn live(store: &Store) -> LiveLeases {
        let _gc = lock_for_collection(store).unwrap();
        live_leases(store, RemoveStale::Yes).unwrap()
    }

    #[test]
    fn protected_resources_are_live_until_the_lease_ends() {
        let (_dir, store) = store();
        let leased = store.leased("test").unwrap();
        let blob = Resource::Blob(Digest::of(b"b"));
        let record = Resource::Record("abc".into());
        leased.protect(&blob).unwrap();
        leased.protect(&record).unwrap();
        leased.protect(&blob).unwrap();
        let seen = live(&store);
        assert_eq!(seen.protected, HashSet::from([blob, record]));
        assert!(seen.oldest_start.is_some());
        let text = fs::read_to_string(leased.lease().unwrap().path()).unwrap();
        assert_eq!(text.lines().count(), 3, "each resource once: {text}");
        drop(leased);
        let after = live(&store);
        assert!(after.protected.is_empty() && after.oldest_start.is_none());
    }

    #[test]
    fn a_joined_lease_adds_to_the_owners_and_ends_with_it() {
        let (_dir, store) = store();
        let owner = store.leased("build").unwrap();
        let path = owner.lease().unwrap().path().to_owned();
        let child = store.joining_lease(&path).unwrap();
        let blob = Resource::Blob(Digest::of(b"layer"));
        child.protect(&blob).unwrap();
        drop(child);
        assert!(live(&store).protected.contains(&blob));
        drop(owner);
        assert!(live(&store).protected.is_empty());
    }

    #[test]
    fn a_lease_file_nobody_holds_is_stale_and_removed() {
        let (_dir, store) = store();
        let dead = store
            .root()
            .join(LEASES_DIR)
            .join(format!("999999-0{LEASE_SUFFIX}"));
        fs::write(
            &dead,
            format!("{HEADER} 1.0 pid=999999 build\nblob {}\n", Digest::of(b"x")),
        )
        .unwrap();
        let seen = live(&store);
        assert!(seen.protected.is_empty());
        assert!(!dead.exists());
    }

    #[test]
    fn store_without_lease_protects_nothing() {
        let (_dir, store) = store();
        store.protect(&Resource::Record("r".into())).unwrap();
        assert!(live(&store).protected.is_empty());
    }

    #[test]
    fn protecting_marks_the_resource_used_now() {
        let (_dir, store) = store();
        let blob = store.write_blob(b"old").unwrap();
        let path = store.blob_path(&blob.digest);
        let past = Timestamps {
            last_access: Timespec {
                tv_sec: 1_000_000,
                tv_nsec: 0,
            },
            last_modification: Timespec {
                tv_sec: 1_000_000,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(CWD, &path, &past, AtFlags::empty()).unwrap();
        let leased = store.leased("test").unwrap();
        leased.protect(&Resource::Blob(blob.digest)).unwrap();
        let modified = fs::metadata(&path).unwrap().modified().unwrap();
        assert!(modified > SystemTime::now() - Duration::from_secs(60));
    }

    #[test]
    fn lease_lines_that_could_escape_their_kind_are_ignored() {
        for line in [
            "record ../names.json",
            "mount ",
            "context a/b",
            "blob sha256:xyz",
            "junk",
        ] {
            assert_eq!(Resource::parse(line), None, "{line}");
        }
        assert_eq!(
            Resource::parse("mount abc"),
            Some(Resource::CacheMount("abc".into()))
        );
    }
}
