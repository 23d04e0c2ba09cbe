//! Disk usage of the state directory by kind, for `imgb du`.
//!
//! Sizes are allocated bytes (`st_blocks × 512`), so sparse files and small files count what
//! they really take; hard links inside one kind are counted once.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::store::Store;

/// The kinds of content the state directory holds, in the order `imgb du` lists them.
pub const KINDS: [(&str, &str); 9] = [
    ("blobs", "blobs/sha256"),
    ("snapshots", "snapshots"),
    ("cache records", "records"),
    ("downloads", "downloads"),
    ("blob sources", "images/sources"),
    ("context stat caches", "contexts"),
    ("cache mounts", "mounts"),
    // `imgb serve`'s open uploads: not cache, removed by the server once idle.
    ("registry uploads", "registry/uploads"),
    ("temporary", "tmp"),
];

/// Usage of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KindUsage {
    /// Entries directly in the kind's directory (blobs, snapshots, records, ...), not counting
    /// bookkeeping (lock and settings files, the records' indexes), whose bytes do count.
    pub items: u64,
    pub bytes: u64,
}

impl Store {
    /// Usage of every kind in [`KINDS`], in that order.
    pub fn usage(&self) -> io::Result<Vec<(&'static str, KindUsage)>> {
        KINDS
            .iter()
            .map(|(name, dir)| Ok((*name, usage_of(&self.root().join(dir))?)))
            .collect()
    }
}

fn usage_of(dir: &Path) -> io::Result<KindUsage> {
    let mut usage = KindUsage::default();
    let mut seen = HashSet::new();
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(usage),
        Err(error) => return Err(error),
    };
    for entry in listing {
        let entry = entry?;
        // Records are files: a directory among them is an index (by-name, context listings).
        let index = dir.ends_with("records") && entry.file_type()?.is_dir();
        let name = entry.file_name();
        // A snapshot's lock, settings and seal; a download record is `<name>.json` itself.
        let sidecar = dir.ends_with("snapshots")
            && crate::prune::SNAPSHOT_SIDECARS
                .iter()
                .any(|suffix| name.as_encoded_bytes().ends_with(suffix.as_bytes()));
        let bookkeeping = index || sidecar;
        usage.items += u64::from(!bookkeeping);
        usage.bytes += tree_bytes(&entry.path(), &mut seen)?;
    }
    Ok(usage)
}

/// Allocated bytes under `path` (not following symlinks), each inode once.
pub fn tree_bytes(path: &Path, seen: &mut HashSet<(u64, u64)>) -> io::Result<u64> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        // Removed meanwhile by a concurrent build or prune: nothing to count.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let mut bytes = 0;
    if seen.insert((metadata.dev(), metadata.ino())) {
        bytes += metadata.blocks() * 512;
    }
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            bytes += tree_bytes(&entry?.path(), seen)?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_items_and_bytes_per_kind_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        store.write_blob(&vec![7u8; 64 * 1024]).unwrap();
        store.write_blob(b"small").unwrap();
        let snapshot = store.snapshots_dir().join("abc");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("file"), vec![1u8; 32 * 1024]).unwrap();
        std::fs::hard_link(snapshot.join("file"), snapshot.join("link")).unwrap();
        std::fs::write(store.snapshots_dir().join("abc.lock"), b"").unwrap();
        std::fs::create_dir_all(store.records_dir().join("by-name")).unwrap();

        let usage: std::collections::BTreeMap<_, _> = store.usage().unwrap().into_iter().collect();
        assert_eq!(usage["blobs"].items, 2);
        assert!(usage["blobs"].bytes >= 64 * 1024 + 5);
        assert_eq!(usage["snapshots"].items, 1);
        let snapshot_bytes = usage["snapshots"].bytes;
        assert!(
            (32 * 1024..2 * 32 * 1024).contains(&snapshot_bytes),
            "hard link counted twice: {snapshot_bytes}"
        );
        assert_eq!(usage["cache records"].items, 0);

        std::fs::create_dir_all(store.downloads_dir()).unwrap();
        std::fs::write(store.downloads_dir().join("d.json"), b"{}").unwrap();
        store
            .record_blob_source(&crate::Digest::of(b"layer"), "r.example/base")
            .unwrap();
        let usage: std::collections::BTreeMap<_, _> = store.usage().unwrap().into_iter().collect();
        assert_eq!(usage["downloads"].items, 1);
        assert_eq!(usage["blob sources"].items, 1);
    }
}
