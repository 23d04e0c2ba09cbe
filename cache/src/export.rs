//! Exporters: a stored image → an OCI image layout (tar or directory), a docker-archive, the
//! flattened root filesystem in a directory, or that filesystem as one tar. `imgb save` and the
//! builder's `--output` both go through [`export`].
//!
//! - `oci`: `oci-layout`, `blobs/sha256/*`, `index.json` with one entry per name, annotated as
//!   BuildKit does (`io.containerd.image.name` = the full name,
//!   `org.opencontainers.image.ref.name` = its tag). A directory output (`tar=false`) keeps
//!   other images already in its `index.json`.
//! - `docker`: the same layout plus the docker-archive `manifest.json` (`RepoTags` in Docker's
//!   short form, layer paths into `blobs/`), so both `docker load`/`podman load` and OCI tools
//!   read it; Docker media types unless `oci-mediatypes=true` (or zstd is asked for).
//! - `local` / `tar`: the layers applied in order (whiteouts removing what they name).
//!
//! Layers are compressed as BuildKit's exporters do ([`LayerCompressionChoice`]): a build step's
//! layer (kept only as its snapshot, described as an uncompressed tar in the store) is exported
//! with `compression=` (default gzip), base layers keep the blobs they are stored as, and
//! `force-compression=true` converts every layer (the converted layer's diffID is checked).
//! A layer is compressed once per (diffID, compression) and the blob kept, so the same build
//! always exports and pushes the same manifest digest; [`exported_image`] is that manifest, for
//! outputs and pushes alike. When media types and layers are unchanged the stored manifest is
//! exported byte for byte, so its digest is the one `imgb images` shows. Every blob is read
//! through the verifying reader
//! and outputs are written to a temporary name and renamed at the end, so a corrupt blob fails
//! the export and never leaves an output behind (standard output excepted: the stream breaks).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::apply::{ApplyError, ApplyOptions, apply_layer, decompress};
use crate::compress::{Compression, Compressor};
use crate::digest::{Digest, HashingWriter};
use crate::image::StoredImage;
use crate::layer::{LayerChanges, LayerError, write_tar};
use crate::layer_source::LayerReader;
use crate::oci::{
    Descriptor, DockerArchiveEntry, ImageIndex, ImageLayout, LayerCompression, annotation,
    canonical_json, media_type,
};
use crate::output::{Destination, OutputKind, OutputSpec};
use crate::reference::Reference;
use crate::store::{Durability, Store, StoreError, TmpDir};
use crate::tar_format::{EntryHeader, Kind, write_end, write_header, write_padding};

const COPY_BUFFER: usize = 256 * 1024;

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The exported manifest (image outputs only); differs from the stored one when media
    /// types or compression were changed.
    pub manifest: Option<Descriptor>,
    pub dest: Destination,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the output failed: {0}")]
    Output(#[source] io::Error),
    #[error("layer {digest} has media type {media_type:?}, which is not a layer type imgb knows")]
    UnknownLayerType { digest: Digest, media_type: String },
    #[error(
        "layer {digest} is zstd-compressed, which Docker media types cannot express \
         (hint: add oci-mediatypes=true, or compression=gzip,force-compression=true)"
    )]
    ZstdWithDockerTypes { digest: Digest },
    #[error("layer {layer} unpacks to diffID {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("unpacking layer {layer}: {source}")]
    Apply {
        layer: Digest,
        #[source]
        source: ApplyError,
    },
    #[error("writing the root filesystem tar: {0}")]
    RootfsTar(#[source] LayerError),
    #[error("encoding {kind} failed: {source}")]
    Encode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ExportError {
    /// See [`StoreError::corrupt_content`].
    pub fn corrupt_content(&self) -> Option<&Digest> {
        match self {
            Self::Store(error) => error.corrupt_content(),
            _ => None,
        }
    }
}

/// Exports `image` as `spec` says; `default_names` are recorded when `spec` names none.
pub fn export(
    store: &Store,
    image: &StoredImage,
    default_names: &[Reference],
    spec: &OutputSpec,
) -> Result<ExportReport, ExportError> {
    let names = if spec.names.is_empty() {
        default_names
    } else {
        &spec.names
    };
    let manifest = match spec.kind {
        OutputKind::Oci | OutputKind::Docker => {
            let prepared = exported_image(
                store,
                image,
                spec.layer_compression(),
                spec.uses_oci_media_types(),
            )?;
            let docker = spec.kind == OutputKind::Docker;
            match (&spec.dest, spec.tar || docker) {
                (Destination::Path(dir), false) => {
                    write_layout(&mut DirLayout::open(dir)?, store, &prepared, names, docker)?;
                }
                (dest, _) => {
                    let mut out = OutputFile::create(dest)?;
                    write_layout(
                        &mut TarLayout::new(&mut out),
                        store,
                        &prepared,
                        names,
                        docker,
                    )?;
                    write_end(&mut out).map_err(ExportError::Output)?;
                    out.commit()?;
                }
            }
            Some(prepared.manifest)
        }
        OutputKind::Local => {
            let Destination::Path(dir) = &spec.dest else {
                return Err(ExportError::Output(io::Error::other(
                    "type=local needs a directory destination",
                )));
            };
            fs::create_dir_all(dir).map_err(io_error("create", dir))?;
            flatten(store, image, dir)?;
            None
        }
        // The image is in the store already; pushing it needs the network, which is the
        // caller's (see `crate::registry`).
        OutputKind::Image => None,
        OutputKind::Tar => {
            let staging = TmpDir::create(&store.tmp_dir(), "rootfs")?;
            flatten(store, image, staging.path())?;
            let mut out = OutputFile::create(&spec.dest)?;
            write_tar(&mut out, staging.path(), &LayerChanges::default(), None)
                .map_err(ExportError::RootfsTar)?;
            out.commit()?;
            None
        }
    };
    Ok(ExportReport {
        manifest,
        dest: spec.dest.clone(),
    })
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = path.to_owned();
    move |source| ExportError::Io { op, path, source }
}

/// Turns a read error back into the store's corruption error when that is what it is.
fn read_error(store_path: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = store_path.to_owned();
    move |error| match error.downcast::<StoreError>() {
        Ok(store_error) => ExportError::Store(store_error),
        Err(error) => io_error("read", &path)(error),
    }
}

/// How exported layers are compressed, as BuildKit's exporters do: a layer a build step made
/// gets `compression`; other layers (a base image's) keep theirs unless `force` is set.
///
/// A built layer is recognized as an uncompressed layer with a snapshot, never by whether its
/// uncompressed blob happens to be stored, so an export does not depend on that. An uncompressed
/// base layer (a loaded docker-archive's) is kept as it is until a step has unpacked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerCompressionChoice {
    pub compression: Compression,
    pub force: bool,
}

impl LayerCompressionChoice {
    /// BuildKit's default: built layers gzip-compressed, base layers as they are.
    pub const DEFAULT: Self = Self {
        compression: Compression::GZIP_DEFAULT,
        force: false,
    };

    /// The compression `layer` (stored with `stored`) must be converted to, if any.
    fn conversion(
        self,
        store: &Store,
        layer: &Descriptor,
        diff_id: &Digest,
        stored: LayerCompression,
    ) -> Option<Compression> {
        let built = stored == LayerCompression::None
            && layer.digest == *diff_id
            && store.snapshot(diff_id).is_some();
        let applies = self.force || built;
        (applies && LayerCompression::of(self.compression) != stored).then_some(self.compression)
    }

    /// `layer` (with `diff_id`) as exported: converted when it must be (an OCI descriptor of
    /// the compressed blob), else as stored; a layer of an unknown type stays as it is.
    pub fn exported_layer(
        self,
        store: &Store,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<Descriptor, ExportError> {
        match LayerCompression::from_media_type(&layer.media_type)
            .and_then(|stored| self.conversion(store, layer, diff_id, stored))
        {
            Some(compression) => compressed_layer(store, layer, diff_id, compression),
            None => Ok(layer.clone()),
        }
    }
}

/// An image as an output or a push carries it: its manifest (and bytes), config and layers.
#[derive(Debug, Clone)]
pub struct ExportedImage {
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The layers' diffIDs, in the same order.
    pub diff_ids: Vec<Digest>,
}

/// `image` with its layers compressed as `choice` says and OCI (`oci`) or Docker media types;
/// converted layers are compressed into the store (once: later calls reuse the blobs).
pub fn exported_image(
    store: &Store,
    image: &StoredImage,
    choice: LayerCompressionChoice,
    oci: bool,
) -> Result<ExportedImage, ExportError> {
    let mut layers = Vec::with_capacity(image.manifest.layers.len());
    for (layer, diff_id) in image.layers_with_diff_ids() {
        let stored = LayerCompression::from_media_type(&layer.media_type).ok_or_else(|| {
            ExportError::UnknownLayerType {
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
            }
        })?;
        let wanted = choice.conversion(store, layer, diff_id, stored);
        let mut exported = match wanted {
            Some(compression) => compressed_layer(store, layer, diff_id, compression)?,
            None => layer.clone(),
        };
        let compression = wanted.map_or(stored, LayerCompression::of);
        if !oci && compression == LayerCompression::Zstd {
            return Err(ExportError::ZstdWithDockerTypes {
                digest: exported.digest,
            });
        }
        // Keep special types (non-distributable, foreign) when nothing about them changes.
        if wanted.is_some() || !has_flavour(&exported.media_type, oci) {
            exported.media_type = compression.media_type(oci).to_owned();
        }
        layers.push(exported);
    }
    let mut config = image.manifest.config.clone();
    config.media_type = if oci {
        media_type::OCI_CONFIG
    } else {
        media_type::DOCKER_CONFIG
    }
    .to_owned();
    let unchanged = layers == image.manifest.layers
        && config == image.manifest.config
        && image.manifest.is_oci() == oci;
    let (manifest, manifest_bytes) = if unchanged {
        let bytes = store.read_blob(&image.descriptor.digest)?;
        (image.descriptor.clone(), bytes)
    } else {
        let mut manifest = image.manifest.clone();
        manifest.media_type = Some(
            if oci {
                media_type::OCI_MANIFEST
            } else {
                media_type::DOCKER_MANIFEST
            }
            .to_owned(),
        );
        manifest.config = config.clone();
        manifest.layers = layers.clone();
        if !oci {
            // Docker schema 2 has neither field.
            manifest.annotations.clear();
            manifest.subject = None;
        }
        let bytes = canonical_json(&manifest).map_err(|source| ExportError::Encode {
            kind: "manifest",
            source,
        })?;
        let descriptor = Descriptor::new(
            manifest.media_type.clone().unwrap_or_default(),
            Digest::of(&bytes),
            bytes.len() as u64,
        );
        (descriptor, bytes)
    };
    Ok(ExportedImage {
        manifest,
        manifest_bytes,
        config,
        layers,
        diff_ids: image.config.rootfs.diff_ids.clone(),
    })
}

fn has_flavour(media_type: &str, oci: bool) -> bool {
    media_type.starts_with(if oci {
        "application/vnd.oci."
    } else {
        "application/vnd.docker."
    })
}

/// The layer `layer` (with `diff_id`) compressed with `compression`, as an OCI layer
/// descriptor: made once per (diffID, compression) from the stored blob or the snapshot,
/// checked against the diffID, and remembered in `compressed/` so that later exports and pushes
/// reuse the blob while it is stored.
pub fn compressed_layer(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    compression: Compression,
) -> Result<Descriptor, ExportError> {
    let memo = store.compressed_memo_path(diff_id, compression);
    if let Some(known) = fs::read(&memo)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Descriptor>(&bytes).ok())
        .filter(|known| store.has_blob(&known.digest))
    {
        return Ok(known);
    }
    let blob_path = store.blob_path(&layer.digest);
    let reader = store.open_layer(layer, diff_id)?;
    let (_, mut tar) = decompress(reader).map_err(read_error(&blob_path))?;
    let compressor = Compressor::new(store.blob_writer()?, compression, 0)
        .map_err(io_error("compress", &store.tmp_dir()))?;
    let mut out = HashingWriter::new(compressor);
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let n = tar.read(&mut buffer).map_err(read_error(&blob_path))?;
        if n == 0 {
            break;
        }
        out.write_all(buffer.get(..n).unwrap_or_default())
            .map_err(io_error("compress", &store.tmp_dir()))?;
    }
    let (compressor, actual, _) = out.finish();
    if actual != *diff_id {
        return Err(ExportError::DiffIdMismatch {
            layer: layer.digest.clone(),
            expected: diff_id.clone(),
            actual,
        });
    }
    let blob = compressor
        .finish()
        .map_err(io_error("compress", &store.tmp_dir()))?
        .commit()?;
    let descriptor = Descriptor::new(
        LayerCompression::of(compression).media_type(true),
        blob.digest,
        blob.size,
    );
    let bytes = canonical_json(&descriptor).map_err(|source| ExportError::Encode {
        kind: "compressed layer memo",
        source,
    })?;
    store.write_small_file(&memo, &bytes, Durability::Synced)?;
    Ok(descriptor)
}

/// A layer (given its diffID) through [`Store::open_layer`], any other blob as stored.
fn open_blob_or_layer(
    store: &Store,
    blob: &Descriptor,
    diff_id: Option<&Digest>,
) -> Result<LayerReader, StoreError> {
    match diff_id {
        Some(diff_id) => store.open_layer(blob, diff_id),
        None => store
            .open_blob(&blob.digest, Some(blob.size))
            .map(LayerReader::Blob),
    }
}

/// One index entry per name, annotated as BuildKit does; one bare entry without names.
fn index_entries(manifest: &Descriptor, names: &[Reference]) -> Vec<Descriptor> {
    if names.is_empty() {
        return vec![manifest.clone()];
    }
    names
        .iter()
        .map(|name| {
            let mut entry = manifest.clone();
            let full = name.to_string();
            let ref_name = name.tag().map_or_else(|| full.clone(), str::to_owned);
            entry
                .annotations
                .insert(annotation::IMAGE_NAME.to_owned(), full);
            entry
                .annotations
                .insert(annotation::REF_NAME.to_owned(), ref_name);
            entry
        })
        .collect()
}

pub(crate) fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}

/// Where an OCI layout is written.
pub(crate) trait LayoutWriter {
    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<(), ExportError>;
    /// Copies a stored blob, verified; a layer's (with its diffID) may be rebuilt from its
    /// snapshot.
    fn stored_blob(
        &mut self,
        store: &Store,
        blob: &Descriptor,
        diff_id: Option<&Digest>,
    ) -> Result<(), ExportError>;
    fn index(&mut self, entries: Vec<Descriptor>) -> Result<(), ExportError>;
}

fn write_layout(
    writer: &mut impl LayoutWriter,
    store: &Store,
    prepared: &ExportedImage,
    names: &[Reference],
    docker: bool,
) -> Result<(), ExportError> {
    let encode = |kind| move |source| ExportError::Encode { kind, source };
    let layout = canonical_json(&ImageLayout::default()).map_err(encode("oci-layout"))?;
    writer.file("oci-layout", &layout)?;
    writer.stored_blob(store, &prepared.config, None)?;
    for (layer, diff_id) in prepared.layers.iter().zip(&prepared.diff_ids) {
        writer.stored_blob(store, layer, Some(diff_id))?;
    }
    writer.file(
        &blob_path(&prepared.manifest.digest),
        &prepared.manifest_bytes,
    )?;
    writer.index(index_entries(&prepared.manifest, names))?;
    if docker {
        let archive = [DockerArchiveEntry {
            config: blob_path(&prepared.config.digest),
            repo_tags: names.iter().map(Reference::familiar).collect(),
            layers: prepared
                .layers
                .iter()
                .map(|l| blob_path(&l.digest))
                .collect(),
        }];
        let bytes = canonical_json(&archive).map_err(encode("manifest.json"))?;
        writer.file("manifest.json", &bytes)?;
    }
    Ok(())
}

/// An OCI layout streamed as a tar; the first blob brings the `blobs/sha256/` directories.
struct TarLayout<'w, W: Write> {
    out: &'w mut W,
    written: HashSet<String>,
    buffer: Vec<u8>,
}

impl<'w, W: Write> TarLayout<'w, W> {
    fn new(out: &'w mut W) -> Self {
        Self {
            out,
            written: HashSet::new(),
            buffer: vec![0u8; COPY_BUFFER],
        }
    }

    fn header(&mut self, path: &str, kind: Kind, size: u64) -> Result<bool, ExportError> {
        if !self.written.insert(path.to_owned()) {
            return Ok(false);
        }
        if let Some((parent, _)) = path.trim_end_matches('/').rsplit_once('/') {
            self.header(&format!("{parent}/"), Kind::Directory, 0)?;
        }
        let mode = if kind == Kind::Directory {
            0o755
        } else {
            0o644
        };
        let header = EntryHeader {
            path: path.as_bytes(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            link: &[],
            device: (0, 0),
            xattrs: &[],
        };
        write_header(&mut self.out, &header).map_err(ExportError::Output)?;
        Ok(true)
    }

    fn finish_entry(&mut self, size: u64) -> Result<(), ExportError> {
        write_padding(&mut self.out, size).map_err(ExportError::Output)
    }
}

impl<W: Write> LayoutWriter for TarLayout<'_, W> {
    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<(), ExportError> {
        if self.header(path, Kind::Regular, bytes.len() as u64)? {
            self.out.write_all(bytes).map_err(ExportError::Output)?;
            self.finish_entry(bytes.len() as u64)?;
        }
        Ok(())
    }

    fn stored_blob(
        &mut self,
        store: &Store,
        blob: &Descriptor,
        diff_id: Option<&Digest>,
    ) -> Result<(), ExportError> {
        let mut reader = open_blob_or_layer(store, blob, diff_id)?;
        if !self.header(&blob_path(&blob.digest), Kind::Regular, blob.size)? {
            return Ok(());
        }
        loop {
            let n = reader
                .read(&mut self.buffer)
                .map_err(|error| reader.error(error))?;
            if n == 0 {
                break;
            }
            self.out
                .write_all(self.buffer.get(..n).unwrap_or_default())
                .map_err(ExportError::Output)?;
        }
        self.finish_entry(blob.size)
    }

    fn index(&mut self, entries: Vec<Descriptor>) -> Result<(), ExportError> {
        let bytes =
            canonical_json(&ImageIndex::new(entries)).map_err(|source| ExportError::Encode {
                kind: "index.json",
                source,
            })?;
        self.file("index.json", &bytes)
    }
}

/// An OCI layout directory; files are written under temporary names and renamed.
pub(crate) struct DirLayout {
    root: PathBuf,
}

impl DirLayout {
    pub(crate) fn open(root: &Path) -> Result<Self, ExportError> {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_error("create", &blobs))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    fn write_atomically(
        &self,
        path: &Path,
        fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        let tmp = temporary_sibling(path);
        let result = (|| {
            let file = File::create(&tmp).map_err(io_error("create", &tmp))?;
            let mut out = BufWriter::with_capacity(COPY_BUFFER, file);
            fill(&mut out)?;
            let file = out
                .into_inner()
                .map_err(|error| io_error("write", &tmp)(error.into_error()))?;
            file.sync_all().map_err(io_error("fsync", &tmp))?;
            fs::rename(&tmp, path).map_err(io_error("rename into place", path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl LayoutWriter for DirLayout {
    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<(), ExportError> {
        let dest = self.root.join(path);
        self.write_atomically(&dest, |out| {
            out.write_all(bytes).map_err(ExportError::Output)
        })
    }

    fn stored_blob(
        &mut self,
        store: &Store,
        blob: &Descriptor,
        diff_id: Option<&Digest>,
    ) -> Result<(), ExportError> {
        let dest = self.root.join(blob_path(&blob.digest));
        if fs::metadata(&dest).is_ok_and(|meta| meta.len() == blob.size) {
            return Ok(());
        }
        let mut reader = open_blob_or_layer(store, blob, diff_id)?;
        self.write_atomically(&dest, |out| {
            io::copy(&mut reader, out)
                .map(drop)
                .map_err(|error| ExportError::Store(reader.error(error)))
        })
    }

    /// Keeps entries of other images; replaces those with one of our names (or, for an
    /// unnamed export, the other unnamed ones).
    fn index(&mut self, entries: Vec<Descriptor>) -> Result<(), ExportError> {
        let path = self.root.join("index.json");
        let mut index = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<ImageIndex>(&bytes).map_err(|source| {
                io_error("read", &path)(io::Error::new(io::ErrorKind::InvalidData, source))
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => ImageIndex::new(Vec::new()),
            Err(error) => return Err(io_error("read", &path)(error)),
        };
        // Two repositories may share a tag, so the full name identifies an entry first.
        let name = |d: &Descriptor| {
            d.annotations
                .get(annotation::IMAGE_NAME)
                .or_else(|| d.annotations.get(annotation::REF_NAME))
                .cloned()
        };
        let replaced: HashSet<Option<String>> = entries.iter().map(name).collect();
        index.manifests.retain(|old| !replaced.contains(&name(old)));
        index.manifests.extend(entries);
        let bytes = canonical_json(&index).map_err(|source| ExportError::Encode {
            kind: "index.json",
            source,
        })?;
        self.file("index.json", &bytes)
    }
}

/// `DIR/.NAME.imgb-PID.tmp`: same directory, so the final rename is atomic.
fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.imgb-{}.tmp", std::process::id()))
}

/// A tar output: a file written under a temporary name, or standard output.
enum OutputFile {
    File {
        out: BufWriter<File>,
        tmp: PathBuf,
        dest: PathBuf,
        committed: bool,
    },
    Stdout(BufWriter<io::Stdout>),
}

impl OutputFile {
    fn create(dest: &Destination) -> Result<Self, ExportError> {
        Ok(match dest {
            Destination::Stdout => {
                Self::Stdout(BufWriter::with_capacity(COPY_BUFFER, io::stdout()))
            }
            Destination::Store => {
                return Err(ExportError::Output(io::Error::other(
                    "the image store is not a file destination",
                )));
            }
            Destination::Path(dest) => {
                let tmp = temporary_sibling(dest);
                let file = File::create(&tmp).map_err(io_error("create", &tmp))?;
                Self::File {
                    out: BufWriter::with_capacity(COPY_BUFFER, file),
                    tmp,
                    dest: dest.clone(),
                    committed: false,
                }
            }
        })
    }

    fn commit(mut self) -> Result<(), ExportError> {
        match &mut self {
            Self::Stdout(out) => out.flush().map_err(ExportError::Output),
            Self::File {
                out,
                tmp,
                dest,
                committed,
            } => {
                out.flush().map_err(ExportError::Output)?;
                out.get_ref().sync_all().map_err(io_error("fsync", tmp))?;
                fs::rename(&*tmp, &*dest).map_err(io_error("rename into place", dest))?;
                *committed = true;
                Ok(())
            }
        }
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::File { out, .. } => out.write(buf),
            Self::Stdout(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::File { out, .. } => out.flush(),
            Self::Stdout(out) => out.flush(),
        }
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Self::File {
            tmp,
            committed: false,
            ..
        } = self
        {
            // A failed export leaves nothing behind.
            let _ = fs::remove_file(&*tmp);
        }
    }
}

/// Applies the image's layers in order into `dir`, checking each diffID.
fn flatten(store: &Store, image: &StoredImage, dir: &Path) -> Result<(), ExportError> {
    let options = ApplyOptions::default();
    for (layer, diff_id) in image.layers_with_diff_ids() {
        let reader = store.open_layer(layer, diff_id)?;
        let stats = apply_layer(reader, dir, &options).map_err(|source| ExportError::Apply {
            layer: layer.digest.clone(),
            source,
        })?;
        if let Some(actual) = stats.diff_id.filter(|actual| actual != diff_id) {
            return Err(ExportError::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: diff_id.clone(),
                actual,
            });
        }
    }
    Ok(())
}
