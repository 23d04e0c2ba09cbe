//! Unpacked layer snapshots: `snapshots/<hex of diffID>/`, one tree per layer, shared by every
//! image and build that uses the layer; the runner stacks them as overlayfs lower directories.
//!
//! A snapshot holds one layer on its own, so its whiteouts are kept in overlayfs form (a 0:0
//! character device; `overlay.opaque` in the `trusted.` namespace for root, `user.` for
//! rootless mounts with `userxattr`) rather than applied. The directory name is the bare hex:
//! overlayfs separates lower directories with `:`, so `sha256:` cannot appear in the path.
//!
//! Snapshots come into being two ways:
//! - [`Store::ensure_snapshot`] unpacks a stored blob (base images, loaded archives);
//! - [`Store::adopt_snapshot`] takes over a directory a build step wrote in `tmp/` (a RUN's
//!   overlay upper directory, a COPY's output) as it is. The step's layer is then stored *only*
//!   as this snapshot: its diffID is the hash of [`write_overlay_tar`]'s tar, streamed and never
//!   kept, and its blob (the uncompressed tar, digest = diffID) is rebuilt from the snapshot when
//!   an export or push needs it (see [`crate::layer_source`]). Rebuilding needs the settings
//!   the tar was hashed with (`SOURCE_DATE_EPOCH`, and the user namespace of a rootless step,
//!   whose owners the tar records as the step saw them); they are kept in
//!   `snapshots/<hex>.json` ([`OverlayTarSettings`]). Rebuilding runs in the namespace imgb
//!   runs in: the one the step's namespace was made in, or the step's own.
//!
//! Invariants:
//! - A snapshot is made at most once per diffID at a time: makers serialize on
//!   `snapshots/<hex>.lock`, and the loser of a race finds the winner's snapshot.
//! - It is complete before it is renamed into place: unpacked in `tmp/` from the verified blob
//!   with its diffID checked, or adopted after it was hashed; the filesystem is synced first. A
//!   snapshot that exists is complete. A crash leaves only a directory in `tmp/` (or a
//!   `.json` file whose snapshot never appeared, rewritten by the next adoption).
//! - Snapshots are read-only by contract: nothing here or in the runner writes to them (the
//!   runner's writes go to an overlay upper directory), so a snapshot's tar never changes.
//! - What breaks that contract from outside (a flipped byte, a file added, removed or
//!   chmodded) is caught before a build uses the snapshot: each is sealed
//!   (`snapshots/<hex>.seal`, see [`crate::seal`]) before it is renamed into place, and
//!   [`Store::ensure_snapshot`] compares the tree with its seal the first time a process uses
//!   it. A snapshot unpacked from a blob that differs is unpacked again; an adopted one is
//!   verified by rehashing its tar (a copied store changes inodes, not content) and, when its
//!   tar changed, reported as [`SnapshotError::Changed`]: the build removes it and reruns the
//!   step that made it, so the corruption never reaches a new layer.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::apply::{ApplyError, ApplyOptions, OverlayXattrs, Whiteouts, apply_layer};
use crate::digest::Digest;
use crate::layer::{IdMap, LayerError, OverlayTarSettings, hash_overlay_tar, write_overlay_tar};
use crate::lease::Resource;
use crate::lock::FileLock;
use crate::oci::{Descriptor, media_type};
use crate::seal::{Change, SealDifference, first_difference, write_seal};
use crate::store::{Durability, Store, StoreError, TmpDir, TmpFile, remove_tree};

/// A layer held as its snapshot: what a build step yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLayer {
    /// sha256 of the layer's uncompressed tar.
    pub diff_id: Digest,
    /// Length of that tar.
    pub tar_size: u64,
}

impl SnapshotLayer {
    /// The layer's blob as manifests name it: the uncompressed tar, derived from the snapshot.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(media_type::OCI_LAYER, self.diff_id.clone(), self.tar_size)
    }
}

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
    #[error("writing the tar of {path}: {source}", path = path.display())]
    Tar {
        path: PathBuf,
        #[source]
        source: LayerError,
    },
    #[error(
        "snapshot settings {path} are unreadable: {source} \
         (hint: delete the file and the snapshot next to it, then rebuild)",
        path = path.display()
    )]
    BadSettings {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the snapshot {path} no longer gives its layer: its tar has {actual_size} bytes{}, \
         the layer {expected} has {expected_size} \
         (hint: something changed the snapshot; delete it and rebuild)",
        actual.as_ref().map(|digest| format!(" and digest {digest}")).unwrap_or_default(),
        path = path.display()
    )]
    TarMismatch {
        path: PathBuf,
        expected: Digest,
        expected_size: u64,
        actual: Option<Digest>,
        actual_size: u64,
    },
    #[error(
        "the snapshot {path} of layer {diff_id} changed after it was stored: {difference}, \
         and its tar no longer gives the layer (hint: imgb build removes it and rebuilds the \
         step that made it; nothing may write to snapshots)",
        path = path.display()
    )]
    Changed {
        diff_id: Digest,
        path: PathBuf,
        difference: SealDifference,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SnapshotError {
    /// The layer whose stored content no longer matches it, when that is what this reports.
    pub fn corrupt_content(&self) -> Option<&Digest> {
        match self {
            Self::Changed { diff_id, .. } => Some(diff_id),
            Self::Store(error) => error.corrupt_content(),
            _ => None,
        }
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { op, path, source }
}

/// Flushes everything written under `path`'s filesystem, so a rename that follows publishes
/// durable content.
fn sync_filesystem(path: &Path) -> Result<(), SnapshotError> {
    let dir = File::open(path).map_err(io_error("open", path))?;
    rustix::fs::syncfs(&dir).map_err(|errno| io_error("sync the filesystem of", path)(errno.into()))
}

impl Store {
    /// Where the snapshot of the layer with `diff_id` lives (whether or not it exists).
    pub fn snapshot_path(&self, diff_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(diff_id.hex())
    }

    /// The snapshot of `diff_id`, if it has been made; with a lease, it stays while the lease
    /// lives (one that the lease cannot name counts as absent, as in [`Store::has_blob`]).
    pub fn snapshot(&self, diff_id: &Digest) -> Option<PathBuf> {
        self.protect(&Resource::Snapshot(diff_id.clone())).ok()?;
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

    fn settings_path(&self, diff_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(format!("{}.json", diff_id.hex()))
    }

    /// The settings the adopted snapshot of `diff_id` was hashed with (defaults when it was
    /// unpacked from a blob).
    pub fn snapshot_tar_settings(
        &self,
        diff_id: &Digest,
    ) -> Result<OverlayTarSettings, SnapshotError> {
        let path = self.settings_path(diff_id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| SnapshotError::BadSettings { path, source }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Ok(OverlayTarSettings::default())
            }
            Err(error) => Err(io_error("read", &path)(error)),
        }
    }

    /// The settings that rebuild the tar of `diff_id`'s snapshot from this process.
    fn rebuild_settings(&self, diff_id: &Digest) -> Result<OverlayTarSettings, SnapshotError> {
        let mut settings = self.snapshot_tar_settings(diff_id)?;
        // Adopted in this very namespace (imgb itself in a user namespace): owners already
        // look as they did then.
        if settings.ids.is_some()
            && settings.ids
                == IdMap::of_current_process().map_err(io_error(
                    "read the id maps of",
                    &self.snapshot_path(diff_id),
                ))?
        {
            settings.ids = None;
        }
        Ok(settings)
    }

    /// Writes the snapshot of `diff_id` as its tar (see [`write_overlay_tar`]).
    pub fn write_snapshot_tar(
        &self,
        diff_id: &Digest,
        out: impl io::Write,
    ) -> Result<(), SnapshotError> {
        let path = self.snapshot_path(diff_id);
        let settings = self.rebuild_settings(diff_id)?;
        write_overlay_tar(out, &path, &settings)
            .map_err(|source| SnapshotError::Tar { path, source })
    }

    fn seal_path(&self, diff_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(format!("{}.seal", diff_id.hex()))
    }

    /// Seals `dir`, the tree of `diff_id`'s snapshot, before or after it is in place. Not
    /// synced: a snapshot about to be renamed into place is synced with its filesystem first.
    fn seal_snapshot(&self, diff_id: &Digest, dir: &Path) -> Result<(), SnapshotError> {
        let staged = TmpFile::create(&self.tmp_dir(), "seal")?;
        let mut out = io::BufWriter::new(staged);
        write_seal(dir, &mut out).map_err(io_error("seal", dir))?;
        let staged = out
            .into_inner()
            .map_err(|error| io_error("seal", dir)(error.into_error()))?;
        staged.rename_into(&self.seal_path(diff_id))?;
        Ok(())
    }

    fn mark_checked(&self, diff_id: &Digest) {
        self.checked_snapshots().insert(diff_id.clone());
    }

    /// Whether the snapshot at `path` of `layer` (whose diffID is `diff_id`) is as it was
    /// stored. A changed snapshot that the layer's blob can remake is moved out of the way
    /// (false: the caller unpacks it again); a changed adopted one is an error.
    fn snapshot_intact(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        path: &Path,
    ) -> Result<bool, SnapshotError> {
        if self.checked_snapshots().contains(diff_id) {
            return Ok(true);
        }
        let seal_path = self.seal_path(diff_id);
        let difference = match File::open(&seal_path) {
            Ok(seal) => first_difference(path, io::BufReader::new(seal))
                .map_err(io_error("check the seal of", path))?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Some(SealDifference {
                path: String::new(),
                change: Change::NoSeal,
            }),
            Err(error) => return Err(io_error("open", &seal_path)(error)),
        };
        let Some(difference) = difference else {
            self.mark_checked(diff_id);
            return Ok(true);
        };
        let remakeable = self.has_blob(&layer.digest);
        if remakeable && difference.change == Change::NoSeal {
            // Unpacked by an imgb that did not seal: trusted as it was then.
            self.seal_snapshot(diff_id, path)?;
            self.mark_checked(diff_id);
            return Ok(true);
        }
        if remakeable {
            eprintln!(
                "warning: the snapshot {} of layer {diff_id} changed after it was stored \
                 ({difference}); unpacking it again from {}",
                path.display(),
                layer.digest
            );
            let _lock = FileLock::exclusive(&self.lock_path(diff_id))?;
            let aside = TmpDir::create(&self.tmp_dir(), "changed-snapshot")?;
            let moved = aside.path().join("snapshot");
            match fs::rename(path, &moved) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error("move aside", path)(error));
                }
                _ => return Ok(false),
            }
        }
        // Adopted: its tar, rebuilt, still giving the layer means only stat data moved (a copied
        // store); the snapshot is sealed anew.
        let settings = self.rebuild_settings(diff_id)?;
        let (actual, _) =
            hash_overlay_tar(path, &settings).map_err(|source| SnapshotError::Tar {
                path: path.to_owned(),
                source,
            })?;
        if actual != *diff_id {
            return Err(SnapshotError::Changed {
                diff_id: diff_id.clone(),
                path: path.to_owned(),
                difference,
            });
        }
        self.seal_snapshot(diff_id, path)?;
        self.mark_checked(diff_id);
        Ok(true)
    }

    /// Takes `dir` (a complete directory in overlayfs form inside `tmp/`, which nothing writes
    /// any more) as the snapshot of its layer, whose tar clamps mtimes to `source_date_epoch`
    /// and records owners as this process sees them.
    /// Afterwards `dir` is gone: moved into place, or removed when the layer was already there.
    pub fn adopt_snapshot(
        &self,
        dir: &Path,
        source_date_epoch: Option<i64>,
    ) -> Result<SnapshotLayer, SnapshotError> {
        let tar_error = |source| SnapshotError::Tar {
            path: dir.to_owned(),
            source,
        };
        let (diff_id, tar_size) = hash_overlay_tar(
            dir,
            &OverlayTarSettings {
                source_date_epoch,
                ids: None,
            },
        )
        .map_err(tar_error)?;
        let layer = SnapshotLayer { diff_id, tar_size };
        // Before looking: an existing snapshot this step reuses must stay, as must ours.
        self.protect(&Resource::Snapshot(layer.diff_id.clone()))?;
        let path = self.snapshot_path(&layer.diff_id);
        let _lock = FileLock::exclusive(&self.lock_path(&layer.diff_id))?;
        if path.is_dir() {
            remove_tree(dir).map_err(io_error("remove", dir))?;
            return Ok(layer);
        }
        // The root has no tar entry; as a lower directory it is only traversed.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(io_error("chmod", dir))?;
        let settings = OverlayTarSettings {
            source_date_epoch,
            ids: IdMap::of_current_process().map_err(io_error("read the id maps of", dir))?,
        };
        let settings_path = self.settings_path(&layer.diff_id);
        if settings == OverlayTarSettings::default() {
            match fs::remove_file(&settings_path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error("remove", &settings_path)(error));
                }
                _ => {}
            }
        } else {
            let bytes = serde_json::to_vec(&settings)
                .map_err(|source| io_error("encode", &settings_path)(io::Error::other(source)))?;
            self.write_small_file(&settings_path, &bytes, Durability::Synced)?;
        }
        self.seal_snapshot(&layer.diff_id, dir)?;
        sync_filesystem(dir)?;
        fs::rename(dir, &path).map_err(|source| {
            let hint = if source.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) {
                " (the directory must be inside the store's tmp/)"
            } else {
                ""
            };
            io_error("rename into place", &path)(io::Error::new(
                source.kind(),
                format!("from {}: {source}{hint}", dir.display()),
            ))
        })?;
        File::open(self.snapshots_dir())
            .and_then(|snapshots| snapshots.sync_all())
            .map_err(io_error("fsync", &self.snapshots_dir()))?;
        self.mark_checked(&layer.diff_id);
        Ok(layer)
    }

    fn lock_path(&self, diff_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(format!("{}.lock", diff_id.hex()))
    }

    /// Makes the snapshot of the stored layer blob `layer` unless it exists; `diff_id` is what
    /// the image config says the layer unpacks to, and is verified. One that exists is
    /// compared with its seal the first time this process uses it (see the module docs).
    pub fn ensure_snapshot(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<PathBuf, SnapshotError> {
        self.protect(&Resource::Snapshot(diff_id.clone()))?;
        let path = self.snapshot_path(diff_id);
        if path.is_dir() && self.snapshot_intact(layer, diff_id, &path)? {
            return Ok(path);
        }
        let _lock = FileLock::exclusive(&self.lock_path(diff_id))?;
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
        self.seal_snapshot(diff_id, staging.path())?;
        sync_filesystem(staging.path())?;
        fs::rename(staging.path(), &path).map_err(io_error("rename into place", &path))?;
        staging.keep();
        File::open(self.snapshots_dir())
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("fsync", &self.snapshots_dir()))?;
        self.mark_checked(diff_id);
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

    fn layer(store: &Store, source: &Path, changes: &LayerChanges) -> (Descriptor, Digest) {
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

    /// A directory in `tmp/` with a file, a hardlink pair and a subdirectory.
    fn step_output(store: &Store, name: &str) -> PathBuf {
        let dir = store.tmp_dir().join(name);
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/file"), b"content").unwrap();
        fs::write(dir.join("a"), vec![b'a'; 3000]).unwrap();
        fs::hard_link(dir.join("a"), dir.join("b")).unwrap();
        dir
    }

    fn tar_of_snapshot(store: &Store, diff_id: &Digest) -> Vec<u8> {
        let mut tar = Vec::new();
        store.write_snapshot_tar(diff_id, &mut tar).unwrap();
        tar
    }

    #[test]
    fn adopted_directory_becomes_the_snapshot_and_gives_back_its_tar() {
        let (_dir, store) = store();
        let output = step_output(&store, "step");
        let mut expected = Vec::new();
        crate::layer::write_tar(&mut expected, &output, &LayerChanges::default(), Some(5)).unwrap();

        let layer = store.adopt_snapshot(&output, Some(5)).unwrap();
        assert!(!output.exists(), "adoption moves the directory");
        assert_eq!(layer.diff_id, Digest::of(&expected));
        assert_eq!(layer.tar_size, expected.len() as u64);
        let path = store.snapshot(&layer.diff_id).unwrap();
        assert_eq!(fs::read(path.join("sub/file")).unwrap(), b"content");
        assert_eq!(
            tar_of_snapshot(&store, &layer.diff_id),
            expected,
            "the epoch the tar was hashed with is kept for rebuilding it"
        );
        assert_eq!(layer.descriptor().media_type, media_type::OCI_LAYER);
        assert_eq!(layer.descriptor().digest, layer.diff_id);
    }

    #[test]
    fn adopting_a_layer_that_exists_discards_the_new_directory() {
        let (_dir, store) = store();
        let first = store
            .adopt_snapshot(&step_output(&store, "first"), None)
            .unwrap();
        let again = step_output(&store, "again");
        let second = store.adopt_snapshot(&again, None).unwrap();
        assert_eq!(first, second);
        assert!(!again.exists());
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn concurrent_adopters_of_one_layer_all_get_it() {
        let (_dir, store) = store();
        let outputs: Vec<PathBuf> = (0..4)
            .map(|i| step_output(&store, &format!("out{i}")))
            .collect();
        let layers: Vec<SnapshotLayer> = std::thread::scope(|scope| {
            let handles: Vec<_> = outputs
                .iter()
                .map(|output| scope.spawn(|| store.adopt_snapshot(output, None).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(layers.windows(2).all(|pair| pair[0] == pair[1]));
        assert!(store.snapshot(&layers[0].diff_id).is_some());
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    /// `cp -a`: content, modes, owners, times, xattrs and hard links, on new inodes.
    fn copy_tree(from: &Path, to: &Path) {
        let status = std::process::Command::new("cp")
            .args(["-a", "--"])
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The same store as a new process opens it: no snapshot checked yet.
    fn reopened(store: &Store) -> Store {
        Store::open(store.root()).unwrap()
    }

    #[test]
    fn a_changed_adopted_snapshot_is_refused_with_the_path_that_differs() {
        let (_dir, store) = store();
        let layer = store
            .adopt_snapshot(&step_output(&store, "step"), Some(5))
            .unwrap();
        let path = store.snapshot(&layer.diff_id).unwrap();
        fs::write(path.join("sub/file"), b"CONTENT").unwrap();

        // The adopting process vouches for what it made; the next one checks.
        assert!(
            store
                .ensure_snapshot(&layer.descriptor(), &layer.diff_id)
                .is_ok()
        );
        let error = reopened(&store)
            .ensure_snapshot(&layer.descriptor(), &layer.diff_id)
            .unwrap_err();
        assert_eq!(error.corrupt_content(), Some(&layer.diff_id), "{error}");
        assert!(error.to_string().contains("/sub/file changed"), "{error}");

        store.discard_corrupt(&layer.diff_id).unwrap();
        let leftovers: Vec<_> = fs::read_dir(store.snapshots_dir())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| !name.to_string_lossy().ends_with(".lock"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn an_adopted_snapshot_with_new_inodes_but_the_same_tar_is_sealed_again() {
        let (_dir, store) = store();
        let layer = store
            .adopt_snapshot(&step_output(&store, "step"), Some(5))
            .unwrap();
        let path = store.snapshot(&layer.diff_id).unwrap();
        let copy = store.tmp_dir().join("copy");
        copy_tree(&path, &copy);
        fs::remove_dir_all(&path).unwrap();
        fs::rename(&copy, &path).unwrap();
        let seal = fs::read(store.seal_path(&layer.diff_id)).unwrap();

        reopened(&store)
            .ensure_snapshot(&layer.descriptor(), &layer.diff_id)
            .unwrap();
        assert_ne!(fs::read(store.seal_path(&layer.diff_id)).unwrap(), seal);
        reopened(&store)
            .ensure_snapshot(&layer.descriptor(), &layer.diff_id)
            .unwrap();
    }

    #[test]
    fn a_changed_snapshot_of_a_stored_blob_is_unpacked_again() {
        let (dir, store) = store();
        let source = dir.path().join("src");
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("a"), b"original").unwrap();
        let (descriptor, diff_id) = layer(&store, &source, &LayerChanges::default());
        let path = store.ensure_snapshot(&descriptor, &diff_id).unwrap();
        fs::write(path.join("a"), b"tampered").unwrap();
        fs::write(path.join("extra"), b"x").unwrap();

        let again = reopened(&store)
            .ensure_snapshot(&descriptor, &diff_id)
            .unwrap();
        assert_eq!(fs::read(again.join("a")).unwrap(), b"original");
        assert!(!again.join("extra").exists());
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        // A snapshot an older imgb made has no seal: it is sealed as it is.
        fs::remove_file(store.seal_path(&diff_id)).unwrap();
        reopened(&store)
            .ensure_snapshot(&descriptor, &diff_id)
            .unwrap();
        assert!(store.seal_path(&diff_id).is_file());
    }

    #[test]
    fn overlay_whiteouts_give_the_tar_of_the_listed_deletions() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("notice: not root; overlay whiteout devices need CAP_MKNOD, skipping");
            return;
        }
        let (dir, store) = store();
        // The same change twice: deletions listed, and in overlayfs form.
        let listed = dir.path().join("listed");
        fs::create_dir_all(listed.join("opaque")).unwrap();
        fs::write(listed.join("opaque/new"), b"n").unwrap();
        fs::create_dir_all(listed.join("sub")).unwrap();
        fs::write(listed.join("sub/kept"), b"k").unwrap();
        let changes = LayerChanges {
            deleted: vec!["gone".into(), "sub/also-gone".into()],
            opaque_dirs: vec!["opaque".into()],
        };
        let (descriptor, listed_diff_id) = layer(&store, &listed, &changes);
        let overlay = store.ensure_snapshot(&descriptor, &listed_diff_id).unwrap();
        let copy = store.tmp_dir().join("overlay-form");
        copy_tree(&overlay, &copy);
        fs::remove_dir_all(&overlay).unwrap();
        let adopted = store.adopt_snapshot(&copy, Some(1_700_000_000)).unwrap();
        assert_eq!(adopted.diff_id, listed_diff_id);
    }
}
