//! `imgb prune`: removes build cache the store can do without, as `docker buildx prune` does.
//!
//! Roots and references: image names → manifest → config and layer blobs, and the layers'
//! snapshots (by diffID); cache records → what their results name ([`RecordRef`], supplied by
//! the builder, which owns the record format); live leases → whatever they name (see
//! [`crate::lease`]); `imgb serve`'s registry tags → manifests → what they reference
//! ([`crate::registry_index`]). Named images and tagged registry content always stay whole
//! (`imgb rm` removes names; a registry tag stays until it is pushed over).
//!
//! What goes:
//! - by default, records whose results are not wholly part of a named image (build cache
//!   records, and ADD's download records under `downloads/`, which are cache too), then every
//!   blob and snapshot nothing kept references, and the blob sources (`images/sources/`, where
//!   a lazily pulled layer can be fetched from) of blobs no named image or live lease names;
//! - with `all`, every record, cache mount and context stat cache as well;
//! - always: records that name a missing blob or layer, stale leases, snapshot lock files of
//!   snapshots that are gone, and `tmp/` entries older than every live lease (leftovers of
//!   interrupted processes).
//!
//! `until` keeps what was used within that long; `keep_storage` removes the least recently
//! used first and stops once the state directory fits (a record's unit is the record plus what
//! only it references; last use is the mtime that leases refresh).
//!
//! Crash safety, in this order, all decided under `gc.lock` held exclusively:
//! 1. records are unlinked and the directory fsynced: no record outlives what it names;
//! 2. blobs, snapshots, mounts, contexts and leftovers are renamed into one trash directory in
//!    `tmp/` (each rename atomic);
//! 3. the lock is released and the trash deleted. A kill leaves at most the trash, which is an
//!    ordinary leftover for the next prune.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::image::ImageError;
use crate::lease::{LiveLeases, RemoveStale, Resource, ctime, live_leases, lock_for_collection};
use crate::store::{Store, StoreError, TmpDir};
use crate::usage;

/// Files beside `snapshots/<hex>`: its maker's lock, the settings that rebuild its tar and
/// its seal.
pub(crate) const SNAPSHOT_SIDECARS: [&str; 3] = [".lock", ".json", ".seal"];

/// What a cache record needs to be usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRef {
    /// A blob that must be stored (an image's manifest or config).
    Blob(Digest),
    /// A layer: usable while its blob exists, or its snapshot when the blob is the uncompressed
    /// tar (digest = diffID) rebuilt from it; prune keeps both.
    Layer { diff_id: Digest, blob: Digest },
}

/// Parses a record file into what it references; an `Err` makes the record invalid.
pub type RecordReferences = fn(&[u8]) -> Result<Vec<RecordRef>, String>;

/// What to prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Every record, cache mount and context stat cache, not only what named images do not use.
    pub all: bool,
    /// Keep what was used within this long.
    pub until: Option<Duration>,
    /// Stop once the state directory takes at most this many bytes, removing the least
    /// recently used first.
    pub keep_storage: Option<u64>,
    pub record_references: RecordReferences,
    /// The same for ADD's download records (`downloads/*.json`).
    pub download_references: RecordReferences,
}

/// A record file that may go: a build cache record or a download record.
#[derive(Debug, Clone)]
struct RecordFile {
    kind: &'static str,
    name: String,
    entry: Entry,
}

/// One removed (or, in an estimate, removable) item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The kind, named as in `imgb du` ([`usage::KINDS`]).
    pub kind: &'static str,
    /// A digest or file name.
    pub id: String,
    /// Allocated bytes, as `imgb du` counts them.
    pub bytes: u64,
    pub last_used: SystemTime,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub removed: Vec<Removed>,
}

impl PruneReport {
    pub fn reclaimed(&self) -> u64 {
        self.removed.iter().map(|item| item.bytes).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(
        "image {name}: {source} (hint: prune keeps named images whole and cannot read this one; \
         `imgb rm {name}` removes the name)"
    )]
    Image {
        name: String,
        #[source]
        source: ImageError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Removes what `options` select, safely while other processes build (see the module docs).
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport, PruneError> {
        let gc_lock = lock_for_collection(self)?;
        let leases = live_leases(self, RemoveStale::Yes)?;
        let plan = Plan::make(self, options, &leases)?;
        let trash = plan.execute(self)?;
        drop(gc_lock);
        // Deleting is the slow part; builds may go on meanwhile. A failure only leaves trash.
        drop(trash);
        Ok(plan.report)
    }

    /// What [`Store::prune`] with `options` would remove now, without removing anything or
    /// waiting for other processes (for `imgb du`).
    pub fn estimate_prune(&self, options: &PruneOptions) -> Result<PruneReport, PruneError> {
        let leases = live_leases(self, RemoveStale::No)?;
        Ok(Plan::make(self, options, &leases)?.report)
    }
}

/// An item on disk with when it was last used.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    last_used: SystemTime,
}

/// A removable unit for `--keep-storage`: removed whole or not at all.
#[derive(Debug)]
struct Unit {
    last_used: SystemTime,
    record: Option<RecordFile>,
    /// Resources (besides the record) that go with it.
    resources: Vec<Resource>,
}

#[derive(Debug, Default)]
struct Plan {
    report: PruneReport,
    /// Record files (cache and download records) to unlink first.
    records: Vec<PathBuf>,
    /// `records/by-name` entries and snapshot lock files: bookkeeping, not reported.
    bookkeeping: Vec<PathBuf>,
    /// Moved to the trash after the records are gone.
    moved: Vec<PathBuf>,
}

impl Plan {
    fn make(
        store: &Store,
        options: &PruneOptions,
        leases: &LiveLeases,
    ) -> Result<Plan, PruneError> {
        let now = SystemTime::now();
        let recent = |last_used: SystemTime| {
            options
                .until
                .is_some_and(|until| now.duration_since(last_used).unwrap_or_default() < until)
        };
        let blobs = listing(&store.root().join("blobs/sha256"), mtime)?;
        let snapshots = listing(&store.snapshots_dir(), mtime)?;
        let records = listing(&store.records_dir(), mtime)?;
        let downloads = listing(&store.downloads_dir(), mtime)?;
        let mounts = listing(&store.root().join("mounts"), mtime)?;
        let contexts = listing(&store.root().join("contexts"), mtime)?;
        let exists = |resource: &Resource| match resource {
            Resource::Blob(digest) => blobs.contains_key(digest.hex()),
            Resource::Snapshot(diff_id) => snapshots.contains_key(diff_id.hex()),
            _ => false,
        };

        // Marked: what stays no matter what.
        let mut kept: HashSet<Resource> = leases.protected.clone();
        let in_images = image_resources(store)?;
        kept.extend(in_images.iter().cloned());
        kept.extend(crate::registry_index::tagged_resources(store)?);

        let mut plan = Plan::default();
        // Records that may go, with what they reference.
        let mut candidates: Vec<(RecordFile, Vec<Resource>)> = Vec::new();
        let record_files = [
            ("cache records", &records, options.record_references),
            ("downloads", &downloads, options.download_references),
        ];
        for (kind, listing, parse) in record_files {
            for (name, entry) in listing {
                if !entry.path.is_file() {
                    continue;
                }
                // Download records are not leased: a build that loses one downloads again.
                let record = Resource::Record(name.clone());
                let leased = kind == "cache records" && kept.contains(&record);
                let references = fs::read(&entry.path)
                    .map_err(|error| error.to_string())
                    .and_then(|bytes| parse(&bytes));
                let valid = references.as_ref().is_ok_and(|refs| {
                    refs.iter().all(|reference| match reference {
                        RecordRef::Blob(digest) => blobs.contains_key(digest.hex()),
                        // As `Store::has_layer`: a snapshot stands in for an uncompressed blob.
                        RecordRef::Layer { diff_id, blob } => {
                            blobs.contains_key(blob.hex())
                                || (blob == diff_id && snapshots.contains_key(diff_id.hex()))
                        }
                    })
                });
                let resources: Vec<Resource> = references
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|reference| match reference {
                        RecordRef::Blob(digest) => vec![Resource::Blob(digest)],
                        RecordRef::Layer { diff_id, blob } => {
                            vec![Resource::Blob(blob), Resource::Snapshot(diff_id)]
                        }
                    })
                    .filter(|resource| exists(resource))
                    .collect();
                let removable = !valid
                    || options.all
                    || resources
                        .iter()
                        .any(|resource| !in_images.contains(resource));
                if leased || (valid && (!removable || recent(entry.last_used))) {
                    kept.extend(resources);
                } else {
                    let file = RecordFile {
                        kind,
                        name: name.clone(),
                        entry: entry.clone(),
                    };
                    candidates.push((file, resources));
                }
            }
        }

        // Every blob and snapshot not kept goes with the last candidate record that names it,
        // or on its own when none does.
        let mut referrers: HashMap<Resource, usize> = HashMap::new();
        for (_, resources) in &candidates {
            for resource in resources.iter().filter(|r| !kept.contains(r)) {
                *referrers.entry(resource.clone()).or_default() += 1;
            }
        }
        let mut units: Vec<Unit> = candidates
            .into_iter()
            .map(|(file, resources)| Unit {
                last_used: file.entry.last_used,
                record: Some(file),
                resources,
            })
            .collect();
        let loose = [
            (&blobs, Resource::Blob as fn(Digest) -> Resource),
            (&snapshots, Resource::Snapshot),
        ];
        for (listing, make) in loose {
            for (hex, entry) in listing {
                let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) else {
                    continue;
                };
                let resource = make(digest);
                if entry.path.is_dir() == matches!(resource, Resource::Snapshot(_))
                    && !kept.contains(&resource)
                    && !referrers.contains_key(&resource)
                    && !recent(entry.last_used)
                {
                    units.push(Unit {
                        last_used: entry.last_used,
                        record: None,
                        resources: vec![resource],
                    });
                }
            }
        }
        if options.all {
            let volumes = [
                (&mounts, Resource::CacheMount as fn(String) -> Resource),
                (&contexts, Resource::ContextCache),
            ];
            for (listing, make) in volumes {
                for (name, entry) in listing {
                    let resource = make(name.clone());
                    if !kept.contains(&resource) && !recent(entry.last_used) {
                        units.push(Unit {
                            last_used: entry.last_used,
                            record: None,
                            resources: vec![resource],
                        });
                    }
                }
            }
        }
        units.sort_by_key(|unit| unit.last_used);

        let mut total = match options.keep_storage {
            Some(_) => store
                .usage()
                .map_err(StoreError::io("measure", store.root()))?
                .iter()
                .map(|(_, kind)| kind.bytes)
                .sum(),
            None => 0,
        };
        let mut sizes = Sizes::default();
        let mut removed_records: HashSet<String> = HashSet::new();
        let mut gone: HashSet<Resource> = HashSet::new();
        for unit in units {
            if options.keep_storage.is_some_and(|keep| total <= keep) {
                break;
            }
            if let Some(file) = unit.record {
                let bytes = sizes.of(file.kind, &file.entry.path)?;
                total = total.saturating_sub(bytes);
                plan.records.push(file.entry.path.clone());
                plan.report.removed.push(Removed {
                    kind: file.kind,
                    id: file.name.clone(),
                    bytes,
                    last_used: file.entry.last_used,
                });
                if file.kind == "cache records" {
                    removed_records.insert(file.name);
                }
            }
            for resource in unit.resources {
                // A resource another remaining candidate names stays until that one goes.
                if let Some(count) = referrers.get_mut(&resource) {
                    *count -= 1;
                    if *count > 0 {
                        continue;
                    }
                }
                if kept.contains(&resource) || !gone.insert(resource.clone()) {
                    continue;
                }
                let (kind, entry) = match &resource {
                    Resource::Blob(digest) => ("blobs", &blobs[digest.hex()]),
                    Resource::Snapshot(diff_id) => ("snapshots", &snapshots[diff_id.hex()]),
                    Resource::CacheMount(name) => ("cache mounts", &mounts[name]),
                    Resource::ContextCache(name) => ("context stat caches", &contexts[name]),
                    Resource::Record(_) => continue,
                };
                let bytes = sizes.of(kind, &entry.path)?;
                total = total.saturating_sub(bytes);
                plan.moved.push(entry.path.clone());
                plan.report.removed.push(Removed {
                    kind,
                    id: resource.id().to_owned(),
                    bytes,
                    last_used: entry.last_used,
                });
            }
        }

        plan.blob_sources(store, &in_images, leases, &mut sizes)?;
        plan.leftovers(store, leases, &mut sizes)?;
        plan.stale_bookkeeping(
            store,
            options.all,
            &kept,
            &gone,
            &removed_records,
            &snapshots,
        )?;
        Ok(plan)
    }

    /// Blob sources of blobs that no named image and no live lease names: nothing will fetch
    /// them (a build that pulls a base again records them again).
    fn blob_sources(
        &mut self,
        store: &Store,
        in_images: &HashSet<Resource>,
        leases: &LiveLeases,
        sizes: &mut Sizes,
    ) -> Result<(), PruneError> {
        for (hex, entry) in listing(&store.blob_sources_dir(), mtime)? {
            let named = Digest::parse(&format!("sha256:{hex}"))
                .map(Resource::Blob)
                .is_ok_and(|blob| in_images.contains(&blob) || leases.protected.contains(&blob));
            if named {
                continue;
            }
            let bytes = sizes.of("blob sources", &entry.path)?;
            self.moved.push(entry.path);
            self.report.removed.push(Removed {
                kind: "blob sources",
                id: hex,
                bytes,
                last_used: entry.last_used,
            });
        }
        Ok(())
    }

    /// `tmp/` entries older than every live lease: no running process made them.
    fn leftovers(
        &mut self,
        store: &Store,
        leases: &LiveLeases,
        sizes: &mut Sizes,
    ) -> Result<(), PruneError> {
        for (name, entry) in listing(&store.tmp_dir(), ctime)? {
            if leases
                .oldest_start
                .is_some_and(|start| entry.last_used >= start)
            {
                continue;
            }
            let bytes = sizes.of("temporary", &entry.path)?;
            self.moved.push(entry.path);
            self.report.removed.push(Removed {
                kind: "temporary",
                id: name,
                bytes,
                last_used: entry.last_used,
            });
        }
        Ok(())
    }

    /// `records/by-name` entries naming records that will not exist, context listings
    /// (`records/contexts/`, for miss explanations) when all cache goes, and the lock and
    /// settings files of snapshots that will not exist and nobody protects.
    fn stale_bookkeeping(
        &mut self,
        store: &Store,
        all: bool,
        kept: &HashSet<Resource>,
        gone: &HashSet<Resource>,
        removed_records: &HashSet<String>,
        snapshots: &BTreeMap<String, Entry>,
    ) -> Result<(), PruneError> {
        let by_name = store.records_dir().join("by-name");
        for (_, entry) in listing(&by_name, mtime)? {
            let target = fs::read_to_string(&entry.path).unwrap_or_default();
            let record = target.trim().strip_prefix("sha256:").unwrap_or_default();
            let exists = !record.is_empty() && store.records_dir().join(record).is_file();
            if !exists || removed_records.contains(record) {
                self.bookkeeping.push(entry.path);
            }
        }
        if all {
            let listings = listing(&store.records_dir().join("contexts"), mtime)?;
            self.bookkeeping
                .extend(listings.into_values().map(|entry| entry.path));
        }
        for (name, entry) in snapshots {
            let Some(hex) = SNAPSHOT_SIDECARS
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
            else {
                continue;
            };
            let stays = Digest::parse(&format!("sha256:{hex}"))
                .map(Resource::Snapshot)
                .is_ok_and(|snapshot| {
                    kept.contains(&snapshot)
                        || (snapshots.contains_key(hex) && !gone.contains(&snapshot))
                });
            if !stays {
                self.bookkeeping.push(entry.path.clone());
            }
        }
        Ok(())
    }

    /// Removes the records, then moves everything else into a trash directory, returned for
    /// the caller to drop (delete) once other processes may go on.
    fn execute(&self, store: &Store) -> Result<Option<TmpDir>, PruneError> {
        for path in &self.records {
            remove_file(path)?;
        }
        let dirs: HashSet<&Path> = self.records.iter().filter_map(|p| p.parent()).collect();
        for dir in dirs {
            File::open(dir)
                .and_then(|dir_file| dir_file.sync_all())
                .map_err(StoreError::io("fsync directory", dir))?;
        }
        let trash = match self.moved.is_empty() {
            true => None,
            false => Some(TmpDir::create(&store.tmp_dir(), "prune")?),
        };
        if let Some(trash) = &trash {
            for (index, path) in self.moved.iter().enumerate() {
                move_to_trash(path, &trash.path().join(index.to_string()))?;
            }
        }
        // After the snapshots: one without its settings file could not rebuild its tar.
        for path in &self.bookkeeping {
            remove_file(path)?;
        }
        Ok(trash)
    }
}

/// Renames `path` to `target`; one that is already gone is fine.
fn move_to_trash(path: &Path, target: &Path) -> Result<(), StoreError> {
    let moved = fs::rename(path, target).or_else(|error| {
        // Moving a directory rewrites its `..`: a read-only layer root needs u+w.
        if error.kind() != io::ErrorKind::PermissionDenied {
            return Err(error);
        }
        make_owner_writable(path)?;
        fs::rename(path, target)
    });
    match moved {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::io("move to the trash", path)(error))
        }
        _ => Ok(()),
    }
}

fn make_owner_writable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::symlink_metadata(path)?.permissions().mode();
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))
}

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::io("remove", path)(error))
        }
        _ => Ok(()),
    }
}

fn mtime(metadata: &fs::Metadata) -> SystemTime {
    metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The entries of `dir` by file name, with the time `last_used` reads from their metadata.
/// A missing directory is empty; entries removed while listing are skipped.
fn listing(
    dir: &Path,
    last_used: fn(&fs::Metadata) -> SystemTime,
) -> Result<BTreeMap<String, Entry>, StoreError> {
    let mut entries = BTreeMap::new();
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(entries),
        Err(error) => return Err(StoreError::io("list", dir)(error)),
    };
    for entry in listing {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        match fs::symlink_metadata(&path) {
            Ok(metadata) => {
                let last_used = last_used(&metadata);
                entries.insert(name, Entry { path, last_used });
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(StoreError::io("stat", &path)(error)),
        }
    }
    Ok(entries)
}

/// Everything named images consist of: manifests, configs, layer blobs and layer snapshots.
fn image_resources(store: &Store) -> Result<HashSet<Resource>, PruneError> {
    let mut resources = HashSet::new();
    let mut seen = HashSet::new();
    for (name, manifest) in store.images()? {
        if !seen.insert(manifest.clone()) {
            continue;
        }
        let image = store
            .read_image(&manifest)
            .map_err(|source| PruneError::Image { name, source })?;
        resources.insert(Resource::Blob(manifest));
        resources.insert(Resource::Blob(image.manifest.config.digest.clone()));
        for (layer, diff_id) in image.layers_with_diff_ids() {
            resources.insert(Resource::Blob(layer.digest.clone()));
            resources.insert(Resource::Snapshot(diff_id.clone()));
        }
    }
    Ok(resources)
}

/// Allocated sizes, each inode counted once per kind as `imgb du` does.
#[derive(Debug, Default)]
struct Sizes {
    seen: HashMap<&'static str, HashSet<(u64, u64)>>,
}

impl Sizes {
    fn of(&mut self, kind: &'static str, path: &Path) -> Result<u64, StoreError> {
        usage::tree_bytes(path, self.seen.entry(kind).or_default())
            .map_err(StoreError::io("measure", path))
    }
}

#[cfg(test)]
mod tests;
