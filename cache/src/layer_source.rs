//! A layer's blob, wherever it is: a stored blob, or — for a layer a build step produced, which
//! the store keeps only as its snapshot ([`Store::adopt_snapshot`]) — the uncompressed tar
//! rebuilt from that snapshot while it is read. Exporters, pushes and `imgb save` read layers
//! through [`Store::open_layer`] and never need to know which.
//!
//! Invariants:
//! - A rebuilt tar is verified as a stored blob is: its length may not exceed the descriptor's
//!   size, and the read that would complete it is held back until the whole tar hashed to the
//!   descriptor's digest, so a consumer never finishes reading a changed snapshot without an
//!   error (a [`StoreError::SnapshotTar`] inside the `io::Error`).
//! - Only a layer whose descriptor digest is its diffID (an uncompressed tar) is rebuilt; a
//!   compressed blob must be stored.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::digest::{Digest, HashingWriter};
use crate::oci::Descriptor;
use crate::snapshot::SnapshotError;
use crate::store::{BlobReader, Store, StoreError};

/// Bytes per chunk handed from the tar writer thread to the reader.
const CHUNK: usize = 1 << 20;
/// Chunks in flight: enough to keep both sides busy, little memory.
const CHUNKS_IN_FLIGHT: usize = 4;

impl Store {
    /// Whether the layer `blob` (with `diff_id`) can be read: its blob is stored, or it is an
    /// uncompressed layer whose snapshot exists.
    pub fn has_layer(&self, blob: &Descriptor, diff_id: &Digest) -> bool {
        self.has_blob(&blob.digest) || (blob.digest == *diff_id && self.snapshot(diff_id).is_some())
    }

    /// Opens the layer `blob` (with `diff_id`) for reading, verified as [`Store::open_blob`]
    /// verifies: the stored blob when there is one, otherwise the tar rebuilt from the snapshot.
    pub fn open_layer(
        &self,
        blob: &Descriptor,
        diff_id: &Digest,
    ) -> Result<LayerReader, StoreError> {
        match self.open_blob(&blob.digest, Some(blob.size)) {
            Err(StoreError::BlobNotFound { .. })
                if blob.digest == *diff_id && self.snapshot(diff_id).is_some() =>
            {
                Ok(LayerReader::Snapshot(SnapshotTarReader::start(
                    self.clone(),
                    blob.clone(),
                )))
            }
            other => other.map(LayerReader::Blob),
        }
    }
}

/// A layer being read: a stored blob or a tar rebuilt from a snapshot.
#[derive(Debug)]
pub enum LayerReader {
    Blob(BlobReader),
    Snapshot(SnapshotTarReader),
}

impl LayerReader {
    /// Turns an error from `read` back into the [`StoreError`] it carries, or wraps it.
    pub fn error(&self, error: io::Error) -> StoreError {
        match self {
            Self::Blob(reader) => reader.error(error),
            Self::Snapshot(reader) => match error.downcast::<StoreError>() {
                Ok(store_error) => store_error,
                Err(error) => StoreError::SnapshotTar {
                    digest: reader.blob.digest.clone(),
                    source: Box::new(SnapshotError::Io {
                        op: "read the rebuilt tar of",
                        path: reader.store.snapshot_path(&reader.blob.digest),
                        source: error,
                    }),
                },
            },
        }
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Blob(reader) => reader.read(buf),
            Self::Snapshot(reader) => reader.read(buf),
        }
    }
}

/// The tar of a snapshot, written by a thread and read here in chunks.
#[derive(Debug)]
pub struct SnapshotTarReader {
    store: Store,
    blob: Descriptor,
    chunks: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<Result<(), SnapshotError>>>,
    current: Vec<u8>,
    position: usize,
    /// Bytes received from the writer so far.
    received: u64,
}

impl SnapshotTarReader {
    fn start(store: Store, blob: Descriptor) -> Self {
        let (sender, chunks) = sync_channel(CHUNKS_IN_FLIGHT);
        let writer = {
            let store = store.clone();
            let blob = blob.clone();
            std::thread::spawn(move || write_verified(&store, &blob, sender))
        };
        Self {
            store,
            blob,
            chunks,
            writer: Some(writer),
            current: Vec::new(),
            position: 0,
            received: 0,
        }
    }

    fn failure(&self, source: SnapshotError) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            StoreError::SnapshotTar {
                digest: self.blob.digest.clone(),
                source: Box::new(source),
            },
        )
    }

    /// The writer's verdict, once it has sent everything.
    fn finish_writer(&mut self) -> io::Result<()> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        match writer.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(self.failure(error)),
            Err(_) => Err(io::Error::other(format!(
                "the thread rebuilding layer {} from its snapshot panicked",
                self.blob.digest
            ))),
        }
    }
}

impl Read for SnapshotTarReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.position == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.received += chunk.len() as u64;
                    self.current = chunk;
                    self.position = 0;
                }
                // The writer is done (or failed): only its verdict is left.
                Err(_) => {
                    self.finish_writer()?;
                    return Ok(0);
                }
            }
            if self.received >= self.blob.size {
                // Hold the last chunk back until the whole tar is verified.
                self.finish_writer()?;
            }
        }
        let available = self.current.get(self.position..).unwrap_or_default();
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.position += n;
        Ok(n)
    }
}

/// Writes the snapshot's tar into `sender` in chunks, then checks its size and digest against
/// `blob`; never sends more than `blob.size` bytes.
fn write_verified(
    store: &Store,
    blob: &Descriptor,
    sender: SyncSender<Vec<u8>>,
) -> Result<(), SnapshotError> {
    let path = store.snapshot_path(&blob.digest);
    let mismatch = |actual_size, actual: Option<Digest>| SnapshotError::TarMismatch {
        path: path.clone(),
        expected: blob.digest.clone(),
        expected_size: blob.size,
        actual,
        actual_size,
    };
    let mut out = HashingWriter::new(ChunkSender {
        sender,
        chunk: Vec::with_capacity(CHUNK),
        limit: blob.size,
        sent: 0,
    });
    store.write_snapshot_tar(&blob.digest, &mut out)?;
    out.flush().map_err(|source| SnapshotError::Io {
        op: "send the rebuilt tar of",
        path: path.clone(),
        source,
    })?;
    let (_, actual, size) = out.finish();
    if size != blob.size {
        return Err(mismatch(size, None));
    }
    if actual != blob.digest {
        return Err(mismatch(size, Some(actual)));
    }
    Ok(())
}

/// Collects written bytes into chunks for the reader; refuses to go past `limit`.
struct ChunkSender {
    sender: SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    limit: u64,
    sent: u64,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        self.sender
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader went away"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.sent + buf.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the snapshot's tar is longer than the layer it was adopted as",
            ));
        }
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        self.sent += n as u64;
        if self.chunk.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn adopted(dir: &tempfile::TempDir) -> (Store, crate::snapshot::SnapshotLayer) {
        adopted_with(dir, None)
    }

    /// A step's output adopted as a snapshot, its mtimes clamped to `source_date_epoch`.
    fn adopted_with(
        dir: &tempfile::TempDir,
        source_date_epoch: Option<i64>,
    ) -> (Store, crate::snapshot::SnapshotLayer) {
        let store = Store::open(dir.path().join("root")).unwrap();
        let output = store.tmp_dir().join("step");
        fs::create_dir_all(&output).unwrap();
        for i in 0..40 {
            fs::write(output.join(format!("f{i}")), vec![b'x'; i * 50_000]).unwrap();
        }
        let layer = store.adopt_snapshot(&output, source_date_epoch).unwrap();
        (store, layer)
    }

    /// An image of the one layer, stored as the build stores it (uncompressed descriptor).
    fn image_of(store: &Store, layer: &crate::snapshot::SnapshotLayer) -> crate::StoredImage {
        use crate::oci::{ImageConfig, RootFs};
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: RootFs {
                diff_ids: vec![layer.diff_id.clone()],
                ..RootFs::default()
            },
            ..ImageConfig::default()
        };
        store
            .write_image(&config, vec![layer.descriptor()])
            .unwrap()
    }

    fn read_all(reader: &mut LayerReader) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|error| reader.error(error))?;
        Ok(bytes)
    }

    #[test]
    fn a_snapshot_layer_reads_as_its_tar_and_a_stored_blob_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (store, layer) = adopted(&dir);
        let descriptor = layer.descriptor();
        assert!(store.has_layer(&descriptor, &layer.diff_id));
        let mut reader = store.open_layer(&descriptor, &layer.diff_id).unwrap();
        assert!(matches!(reader, LayerReader::Snapshot(_)));
        let rebuilt = read_all(&mut reader).unwrap();
        assert_eq!(Digest::of(&rebuilt), layer.diff_id);
        assert_eq!(rebuilt.len() as u64, layer.tar_size);

        store.write_blob(&rebuilt).unwrap();
        let mut reader = store.open_layer(&descriptor, &layer.diff_id).unwrap();
        assert!(matches!(reader, LayerReader::Blob(_)));
        assert_eq!(read_all(&mut reader).unwrap(), rebuilt);
    }

    #[test]
    fn a_changed_snapshot_fails_the_read_that_would_complete_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, layer) = adopted(&dir);
        let snapshot = store.snapshot(&layer.diff_id).unwrap();
        let descriptor = layer.descriptor();

        // Same length, other content: only the digest can tell.
        fs::write(snapshot.join("f39"), vec![b'y'; 39 * 50_000]).unwrap();
        let mut reader = store.open_layer(&descriptor, &layer.diff_id).unwrap();
        let mut received = Vec::new();
        let error = reader.read_to_end(&mut received).unwrap_err();
        assert!((received.len() as u64) < layer.tar_size);
        let error = reader.error(error);
        assert!(
            matches!(&error, StoreError::SnapshotTar { source, .. }
                if matches!(**source, SnapshotError::TarMismatch { actual: Some(_), .. })),
            "{error}"
        );

        // Longer: refused before anything past the layer's length is read.
        fs::write(snapshot.join("extra"), b"more").unwrap();
        let mut reader = store.open_layer(&descriptor, &layer.diff_id).unwrap();
        let error = read_all(&mut reader).unwrap_err();
        assert!(
            error.to_string().contains("longer than the layer"),
            "{error}"
        );
    }

    #[test]
    fn a_layer_with_neither_blob_nor_snapshot_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (store, layer) = adopted(&dir);
        fs::remove_dir_all(store.snapshot_path(&layer.diff_id)).unwrap();
        assert!(!store.has_layer(&layer.descriptor(), &layer.diff_id));
        let error = store
            .open_layer(&layer.descriptor(), &layer.diff_id)
            .unwrap_err();
        assert!(matches!(error, StoreError::BlobNotFound { .. }), "{error}");
    }

    #[test]
    fn export_compresses_a_built_layer_the_same_whether_or_not_its_tar_was_stored() {
        use crate::output::OutputSpec;
        let dir = tempfile::tempdir().unwrap();
        let (store, layer) = adopted(&dir);
        let image = image_of(&store, &layer);
        let export_to = |name: &str| {
            let dest = dir.path().join(name);
            let spec = OutputSpec::parse(&format!("type=oci,dest={}", dest.display())).unwrap();
            crate::export::export(&store, &image, &[], &spec).map(|_| dest)
        };
        let lazy = fs::read(export_to("lazy.tar").unwrap()).unwrap();
        let mut tar = Vec::new();
        store.write_snapshot_tar(&layer.diff_id, &mut tar).unwrap();
        store.write_blob(&tar).unwrap();
        let stored = fs::read(export_to("stored.tar").unwrap()).unwrap();
        assert!(
            lazy == stored,
            "the export depends on whether the blob was stored"
        );
        let gzip =
            store.compressed_memo_path(&layer.diff_id, crate::compress::Compression::GZIP_DEFAULT);
        assert!(
            gzip.is_file(),
            "the built layer is exported gzip-compressed"
        );

        // Rebuilt from the snapshot, the uncompressed tar is checked against its digest.
        fs::remove_file(store.blob_path(&layer.diff_id)).unwrap();
        let snapshot = store.snapshot(&layer.diff_id).unwrap();
        fs::write(snapshot.join("f1"), b"y".repeat(50_000)).unwrap();
        let uncompressed = |name: &str| {
            let dest = dir.path().join(name);
            let spec = OutputSpec::parse(&format!(
                "type=oci,compression=uncompressed,dest={}",
                dest.display()
            ))
            .unwrap();
            crate::export::export(&store, &image, &[], &spec).map(|_| dest)
        };
        let error = uncompressed("changed.tar").unwrap_err();
        assert!(
            error.to_string().contains("no longer gives its layer"),
            "{error}"
        );
        assert!(!dir.path().join("changed.tar").exists());
    }

    #[test]
    fn built_layers_are_exported_compressed_as_asked_with_one_digest_per_build() {
        use crate::compress::Compression;
        use crate::export::{LayerCompressionChoice, exported_image};
        use crate::oci::media_type;
        let export_as = |compression, oci| {
            let dir = tempfile::tempdir().unwrap();
            let (store, layer) = adopted_with(&dir, Some(1_700_000_000));
            let image = image_of(&store, &layer);
            let choice = LayerCompressionChoice {
                compression,
                force: false,
            };
            let exported = exported_image(&store, &image, choice, oci).unwrap();
            let mut reader = store
                .open_layer(&exported.layers[0], &layer.diff_id)
                .unwrap();
            let blob = read_all(&mut reader).unwrap();
            (image, exported, blob)
        };
        let (image, gzip, blob) = export_as(Compression::GZIP_DEFAULT, true);
        assert_eq!(gzip.layers[0].media_type, media_type::OCI_LAYER_GZIP);
        assert_ne!(gzip.manifest.digest, image.descriptor.digest);
        assert_eq!(
            &blob[..10],
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
            "gzip header: no mtime, no name, OS unknown"
        );
        let (_, again, _) = export_as(Compression::GZIP_DEFAULT, true);
        assert_eq!(
            again.manifest.digest, gzip.manifest.digest,
            "another root, the same build: the same compressed manifest"
        );
        let (_, docker, _) = export_as(Compression::GZIP_DEFAULT, false);
        assert_eq!(docker.layers[0].media_type, media_type::DOCKER_LAYER_GZIP);
        assert_eq!(docker.layers[0].digest, gzip.layers[0].digest);
        let (_, zstd, _) = export_as(Compression::ZSTD_DEFAULT, true);
        assert_eq!(zstd.layers[0].media_type, media_type::OCI_LAYER_ZSTD);
        let (image, plain, _) = export_as(Compression::None, true);
        assert_eq!(
            plain.manifest, image.descriptor,
            "compression=uncompressed exports the stored manifest"
        );
    }

    #[test]
    fn a_compressed_variant_is_made_once_and_remade_when_its_blob_is_gone() {
        use crate::compress::Compression;
        use crate::export::compressed_layer;
        let dir = tempfile::tempdir().unwrap();
        let (store, layer) = adopted(&dir);
        let descriptor = layer.descriptor();
        let gzip = Compression::GZIP_DEFAULT;
        let first = compressed_layer(&store, &descriptor, &layer.diff_id, gzip).unwrap();
        assert_eq!(first.media_type, crate::oci::media_type::OCI_LAYER_GZIP);
        assert!(store.compressed_memo_path(&layer.diff_id, gzip).is_file());
        let memo_time = fs::metadata(store.blob_path(&first.digest))
            .unwrap()
            .modified()
            .unwrap();
        let again = compressed_layer(&store, &descriptor, &layer.diff_id, gzip).unwrap();
        assert_eq!(again, first);
        assert_eq!(
            fs::metadata(store.blob_path(&first.digest))
                .unwrap()
                .modified()
                .unwrap(),
            memo_time,
            "the remembered blob is reused, not rewritten"
        );

        fs::remove_file(store.blob_path(&first.digest)).unwrap();
        let remade = compressed_layer(&store, &descriptor, &layer.diff_id, gzip).unwrap();
        assert_eq!(remade, first);
        assert!(store.has_blob(&first.digest));
    }
}
