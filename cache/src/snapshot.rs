//! Unpacked layer snapshots: `snapshots/<hex of diffID>/`, one tree per layer, shared by every
//! image and build that uses the layer; the runner stacks them as overlayfs lower directories.
//!
//! A snapshot holds one layer on its own, so its whiteouts are kept in overlayfs form (a 0:0
//! character device; `overlay.opaque` in the `trusted.` namespace for root, `user.` for
//! rootless mounts with `userxattr`) rather than applied. The directory name is the bare hex:
//! overlayfs separates lower directories with `:`, so `sha256:` cannot appear in the path.
//!
//! Invariants:
//! - A snapshot is made at most once per diffID at a time: makers serialize on
//!   `snapshots/<hex>.lock`, and the loser of a race finds the winner's snapshot.
//! - It is built in `tmp/` from the verified blob, its diffID is checked against the expected
//!   one, the filesystem is synced, and only then is it renamed into place: a snapshot that
//!   exists is complete. A crash leaves only a directory in `tmp/`.
//! - Snapshots are read-only by contract: nothing here or in the runner writes to them (the
//!   runner's writes go to an overlay upper directory).

use std::fs::File;
use std::io;
use std::path::PathBuf;

use crate::apply::{ApplyError, ApplyOptions, OverlayXattrs, Whiteouts, apply_layer};
use crate::digest::Digest;
use crate::lock::FileLock;
use crate::oci::Descriptor;
use crate::store::{Store, StoreError, TmpDir};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot of layer {index} (diffID {diff_id}) at {path}", path = path.display())]
    Missing {
        index: usize,
        diff_id: Digest,
        path: PathBuf,
    },
    #[error("unpacking layer {layer} (diffID {diff_id}): {source}")]
    Apply {
        layer: Digest,
        diff_id: Digest,
        #[source]
        source: ApplyError,
    },
    #[error(
        "layer {layer} unpacks to diffID {actual}, but the image config says {expected} \
         (the image is corrupt or its config does not belong to its layers)"
    )]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Where the snapshot of the layer with `diff_id` lives (whether or not it exists).
    pub fn snapshot_path(&self, diff_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(diff_id.hex())
    }

    /// The snapshot of `diff_id`, if it has been made.
    pub fn snapshot(&self, diff_id: &Digest) -> Option<PathBuf> {
        let path = self.snapshot_path(diff_id);
        path.is_dir().then_some(path)
    }

    /// The snapshots of a layer chain, bottom first; the first missing one is an error.
    pub fn snapshot_chain(&self, diff_ids: &[Digest]) -> Result<Vec<PathBuf>, SnapshotError> {
        diff_ids
            .iter()
            .enumerate()
            .map(|(index, diff_id)| {
                self.snapshot(diff_id)
                    .ok_or_else(|| SnapshotError::Missing {
                        index,
                        diff_id: diff_id.clone(),
                        path: self.snapshot_path(diff_id),
                    })
            })
            .collect()
    }

    /// Makes the snapshot of the stored layer blob `layer` unless it exists; `diff_id` is what
    /// the image config says the layer unpacks to, and is verified.
    pub fn ensure_snapshot(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<PathBuf, SnapshotError> {
        let path = self.snapshot_path(diff_id);
        if path.is_dir() {
            return Ok(path);
        }
        let lock_path = self.snapshots_dir().join(format!("{}.lock", diff_id.hex()));
        let _lock = FileLock::exclusive(&lock_path)?;
        if path.is_dir() {
            return Ok(path);
        }
        let staging = TmpDir::create(&self.tmp_dir(), "snapshot")?;
        let blob = self.open_blob(&layer.digest, Some(layer.size))?;
        let options = ApplyOptions {
            whiteouts: Whiteouts::Overlay(OverlayXattrs::for_current_user()),
            ..ApplyOptions::default()
        };
        let apply_error = |source| SnapshotError::Apply {
            layer: layer.digest.clone(),
            diff_id: diff_id.clone(),
            source,
        };
        let stats = apply_layer(blob, staging.path(), &options).map_err(apply_error)?;
        if let Some(actual) = stats.diff_id.filter(|actual| actual != diff_id) {
            return Err(SnapshotError::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: diff_id.clone(),
                actual,
            });
        }
        let io_error = |op, path: &std::path::Path| {
            let path = path.to_owned();
            move |source| SnapshotError::Io { op, path, source }
        };
        let staged = File::open(staging.path()).map_err(io_error("open", staging.path()))?;
        rustix::fs::syncfs(&staged)
            .map_err(|errno| io_error("sync the filesystem of", staging.path())(errno.into()))?;
        std::fs::rename(staging.path(), &path).map_err(io_error("rename into place", &path))?;
        staging.keep();
        File::open(self.snapshots_dir())
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("fsync", &self.snapshots_dir()))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compression;
    use crate::layer::{LayerChanges, LayerOptions, write_layer};
    use std::fs;
    use std::os::unix::fs::FileTypeExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        (dir, store)
    }

    fn layer(
        store: &Store,
        source: &std::path::Path,
        changes: &LayerChanges,
    ) -> (Descriptor, Digest) {
        let options = LayerOptions {
            compression: Compression::GZIP_DEFAULT,
            source_date_epoch: Some(1_700_000_000),
            threads: 1,
        };
        let layer = write_layer(store, source, changes, &options).unwrap();
        let descriptor = Descriptor::new(layer.media_type, layer.blob.digest, layer.blob.size);
        (descriptor, layer.diff_id)
    }

    #[test]
    fn snapshot_is_made_once_and_found_by_chain_lookup() {
        let (dir, store) = store();
        let source = dir.path().join("src");
        fs::create_dir_all(source.join("etc")).unwrap();
        fs::write(source.join("etc/hostname"), b"box\n").unwrap();
        let (descriptor, diff_id) = layer(&store, &source, &LayerChanges::default());

        let missing = store
            .snapshot_chain(std::slice::from_ref(&diff_id))
            .unwrap_err();
        assert!(
            matches!(missing, SnapshotError::Missing { index: 0, .. }),
            "{missing}"
        );
        let path = store.ensure_snapshot(&descriptor, &diff_id).unwrap();
        assert_eq!(fs::read(path.join("etc/hostname")).unwrap(), b"box\n");
        assert!(!path.to_string_lossy().contains(':'));
        let again = store.ensure_snapshot(&descriptor, &diff_id).unwrap();
        assert_eq!(again, path);
        assert_eq!(store.snapshot_chain(&[diff_id]).unwrap(), vec![path]);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn concurrent_makers_of_one_snapshot_all_get_it() {
        let (dir, store) = store();
        let source = dir.path().join("src");
        fs::create_dir_all(&source).unwrap();
        for i in 0..50 {
            fs::write(source.join(format!("f{i}")), vec![b'x'; i * 100]).unwrap();
        }
        let (descriptor, diff_id) = layer(&store, &source, &LayerChanges::default());
        let paths: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| store.ensure_snapshot(&descriptor, &diff_id).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(paths.windows(2).all(|pair| pair[0] == pair[1]));
        assert_eq!(fs::read_dir(&paths[0]).unwrap().count(), 50);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn wrong_diff_id_is_refused_and_leaves_nothing() {
        let (dir, store) = store();
        let source = dir.path().join("src");
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("a"), b"a").unwrap();
        let (descriptor, _) = layer(&store, &source, &LayerChanges::default());
        let claimed = Digest::of(b"not the layer");
        let error = store.ensure_snapshot(&descriptor, &claimed).unwrap_err();
        assert!(
            matches!(error, SnapshotError::DiffIdMismatch { .. }),
            "{error}"
        );
        assert!(store.snapshot(&claimed).is_none());
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_layer_blob_never_becomes_a_snapshot() {
        let (dir, store) = store();
        let source = dir.path().join("src");
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("a"), vec![b'a'; 10_000]).unwrap();
        let (descriptor, diff_id) = layer(&store, &source, &LayerChanges::default());
        let blob = store.blob_path(&descriptor.digest);
        let mut bytes = fs::read(&blob).unwrap();
        let last = bytes.len() - 9;
        bytes[last] ^= 0xff;
        fs::write(&blob, bytes).unwrap();
        assert!(store.ensure_snapshot(&descriptor, &diff_id).is_err());
        assert!(store.snapshot(&diff_id).is_none());
    }

    #[test]
    fn whiteouts_are_kept_in_overlay_form() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("notice: not root; overlay whiteout devices need CAP_MKNOD, skipping");
            return;
        }
        let (dir, store) = store();
        let source = dir.path().join("src");
        fs::create_dir_all(source.join("opaque")).unwrap();
        fs::write(source.join("opaque/new"), b"n").unwrap();
        let changes = LayerChanges {
            deleted: vec!["gone".into(), "sub/also-gone".into()],
            opaque_dirs: vec!["opaque".into()],
        };
        let (descriptor, diff_id) = layer(&store, &source, &changes);
        let path = store.ensure_snapshot(&descriptor, &diff_id).unwrap();
        for whiteout in ["gone", "sub/also-gone"] {
            let meta = fs::symlink_metadata(path.join(whiteout)).unwrap();
            assert!(meta.file_type().is_char_device(), "{whiteout}");
            assert_eq!(std::os::unix::fs::MetadataExt::rdev(&meta), 0);
        }
        let mut value = [0u8; 8];
        let len = rustix::fs::getxattr(path.join("opaque"), "trusted.overlay.opaque", &mut value)
            .unwrap();
        assert_eq!(&value[..len], b"y");
        assert!(!path.join("opaque/.wh..wh..opq").exists());
        assert_eq!(fs::read(path.join("opaque/new")).unwrap(), b"n");
    }
}
