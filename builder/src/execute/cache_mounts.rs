//! `RUN --mount=type=cache` contents crossing machines (`--cache-to ...,cache-mounts=true`):
//! which cache mounts a build used, packing each as a layer for the exported cache, and
//! unpacking an imported one into a new cache instance.
//!
//! Invariants:
//! - A mount is identified by its key (see `mounts::cache_key`: id, owner, mode, seed), never by
//!   its id alone, so an import lands exactly where the importing build would look for it.
//! - Packing reads instance 0 (the one `shared` and `locked` users share) under a shared lock:
//!   a `locked` user in another process finishes first, and nothing removes the instance while
//!   it is read. The tar is the deterministic layer tar, zstd-compressed, so equal contents give
//!   an equal blob.
//! - A mount larger than the cap, or one that would take the exported total past it, is skipped
//!   and reported, never truncated.
//! - Unpacking only ever fills a new instance being created (under the creation lock, see
//!   `mounts::acquire_cache`); an existing instance, possibly in use, is never touched. The
//!   unpacked tar must hash to the diffID the cache recorded.

use super::mounts::{cache_instance, cache_key};
use crate::graph::{BuildGraph, ExecMount, Op};
use crate::solve::Solution;
use imgb_cache::build_cache::CacheLayer;
use imgb_cache::layer::{LayerChanges, LayerOptions, write_layer};
use imgb_cache::oci::Descriptor;
use imgb_cache::usage::tree_bytes;
use imgb_cache::{
    ApplyOptions, Compression, Digest, FileLock, Resource, Store, Whiteouts, apply_layer,
};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// A cache mount a build's steps use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedCacheMount {
    /// Its `id=` (the target when none was given).
    pub id: String,
    pub key: Digest,
}

/// Why a cache mount was left out of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedCacheMount {
    pub id: String,
    /// Bytes the mount's files take on disk.
    pub size: u64,
    /// The cap, and whether it was the total (the mounts exported before took part of it).
    pub cap: u64,
    pub over_total: bool,
}

/// What [`pack_cache_mounts`] made.
#[derive(Debug, Default)]
pub struct PackedCacheMounts {
    /// Each packed mount with its layer (a zstd tar in the store; diffID = content digest).
    pub packed: Vec<(UsedCacheMount, CacheLayer)>,
    pub skipped: Vec<SkippedCacheMount>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheMountError {
    #[error("cache mount {id}: {what}: {message}")]
    Pack {
        id: String,
        what: &'static str,
        message: String,
    },
}

/// The cache mounts the solved exec steps of `graph` use, each key once, in key order.
/// A mount seeded `from=` another step whose result is not in `solution` is left out: its key
/// cannot be known.
pub fn cache_mounts_used(graph: &BuildGraph, solution: &Solution) -> Vec<UsedCacheMount> {
    let mut used = BTreeMap::new();
    for (id, _) in solution.iter() {
        let vertex = graph.vertex(id);
        let Op::Exec(exec) = &vertex.op else {
            continue;
        };
        for mount in &exec.mounts {
            let ExecMount::Cache {
                id,
                mode,
                uid,
                gid,
                from,
                source,
                ..
            } = mount
            else {
                continue;
            };
            let seed = match from {
                None => None,
                Some(input) => {
                    let seed = vertex
                        .inputs
                        .get(*input)
                        .and_then(|input| solution.get(*input))
                        .and_then(|solved| solved.result.filesystem());
                    match seed {
                        Some(filesystem) => Some((filesystem, source.as_str())),
                        None => continue,
                    }
                }
            };
            let key = cache_key(id, *mode, (*uid, *gid), seed);
            used.entry(key.clone()).or_insert_with(|| UsedCacheMount {
                id: id.clone(),
                key,
            });
        }
    }
    used.into_values().collect()
}

/// Packs instance 0 of each of `mounts` that the store has, as long as each is at most `cap`
/// bytes on disk and all packed together stay within `cap`.
pub fn pack_cache_mounts(
    store: &Store,
    mounts: &[UsedCacheMount],
    cap: u64,
    source_date_epoch: Option<i64>,
) -> Result<PackedCacheMounts, CacheMountError> {
    let mut result = PackedCacheMounts::default();
    let mut total = 0u64;
    for mount in mounts {
        let fail = |what, message: String| CacheMountError::Pack {
            id: mount.id.clone(),
            what,
            message,
        };
        let (dir, lock) = cache_instance(&mount_dir(store, &mount.key), 0);
        if !dir.is_dir() {
            continue;
        }
        let _reading = FileLock::shared(&lock).map_err(|error| fail("lock", error.to_string()))?;
        let size = tree_bytes(&dir, &mut HashSet::new())
            .map_err(|error| fail("measure", format!("{}: {error}", dir.display())))?;
        let over_total = total.saturating_add(size) > cap;
        if size > cap || over_total {
            result.skipped.push(SkippedCacheMount {
                id: mount.id.clone(),
                size,
                cap,
                over_total: size <= cap,
            });
            continue;
        }
        let options = LayerOptions {
            compression: Compression::ZSTD_DEFAULT,
            source_date_epoch,
            threads: 0,
        };
        let layer = write_layer(store, &dir, &LayerChanges::default(), &options)
            .map_err(|error| fail("pack", error.to_string()))?;
        total += size;
        result.packed.push((
            mount.clone(),
            CacheLayer {
                diff_id: layer.diff_id,
                blob: Descriptor::new(layer.media_type, layer.blob.digest, layer.blob.size),
            },
        ));
    }
    Ok(result)
}

/// Where the instances of the cache mount `key` live.
pub(super) fn mount_dir(store: &Store, key: &Digest) -> PathBuf {
    Resource::CacheMount(key.hex().to_owned()).path(store)
}

/// Extracts the imported contents `layer` into `target`, a new instance being created, and
/// checks they are what the cache recorded.
pub(super) fn unpack_cache_mount(
    store: &Store,
    layer: &CacheLayer,
    target: &Path,
) -> Result<(), String> {
    let reader = store
        .open_layer(&layer.blob, &layer.diff_id)
        .map_err(|error| error.to_string())?;
    let options = ApplyOptions {
        // A cache directory is not a layer: `.wh.` names are ordinary files in it.
        whiteouts: Whiteouts::Literal,
        root_metadata: false,
        ..ApplyOptions::default()
    };
    let stats = apply_layer(reader, target, &options).map_err(|error| error.to_string())?;
    match stats.diff_id {
        Some(actual) if actual == layer.diff_id => Ok(()),
        actual => Err(format!(
            "the imported contents hash to {}, the cache recorded {}",
            actual.map_or_else(|| "nothing".to_owned(), |digest| digest.to_string()),
            layer.diff_id
        )),
    }
}
