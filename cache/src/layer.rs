//! Deterministic layer writing: a directory (plus deletions) → a tar → compressed blob.
//!
//! Identical input gives byte-identical output, whatever the host, the clock or the walk order
//! of the filesystem:
//! - Entries come in path order: each directory's entry, then its opaque marker if any, then its
//!   children sorted by archive name bytes (so parents always precede children). The source
//!   root itself has no entry; names are relative without a leading `./`.
//! - Ownership is numeric only; mtimes are whole seconds, clamped to `SOURCE_DATE_EPOCH` when
//!   given; atime/ctime are never recorded; whiteouts get the epoch (or 0) as mtime.
//! - The second and later paths of one inode become hardlink entries to the first path.
//! - xattrs are recorded (sorted) except host-specific ones: overlayfs bookkeeping
//!   (`trusted.overlay.*`, `user.overlay.*`) and SELinux labels.
//! - Sockets are skipped (they cannot be archived); files are never written as sparse entries.
//!
//! Deletions become OCI whiteouts: `.wh.NAME` for a deleted path and `.wh..wh..opq` right after
//! an opaque directory's entry. A deleted path that exists again in the source is a replacement:
//! the new entry alone is enough, and for a directory it becomes opaque so nothing from below
//! shows through. The tar is hashed (diffID), compressed and hashed again (blob digest) in one
//! streaming pass straight into the blob store; memory does not grow with the layer.
//!
//! A directory in overlayfs form (an overlay upper directory, a snapshot) carries its deletions
//! itself: [`write_overlay_tar`] turns each 0:0 character device into `.wh.NAME` and each
//! directory marked `overlay.opaque=y` (`trusted.` or `user.`) into one with `.wh..wh..opq`,
//! exactly as [`write_tar`] would for the same deletions listed in [`LayerChanges`]. So a
//! snapshot's tar can be rebuilt from the snapshot alone, byte for byte, whenever it is needed
//! ([`hash_overlay_tar`] gives its diffID without keeping it).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::apply::OverlayXattrs;
use crate::compress::{Compression, CompressionLevelError, Compressor};
use crate::digest::{Digest, HashingWriter};
use crate::store::{BlobInfo, Store, StoreError};
use crate::tar_format::{EntryHeader, Kind, Xattrs, write_end, write_header, write_padding};

/// The OCI whiteout prefix and opaque marker.
pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

const TAR_BUFFER: usize = 256 * 1024;

/// Paths removed relative to the layer below, as the runner reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerChanges {
    /// Deleted paths (relative to the layer root), each becoming a `.wh.NAME` whiteout.
    pub deleted: Vec<PathBuf>,
    /// Directories whose lower content is hidden entirely (`.wh..wh..opq`).
    pub opaque_dirs: Vec<PathBuf>,
}

/// How to write a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerOptions {
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: later mtimes are clamped to it.
    pub source_date_epoch: Option<i64>,
    /// zstd worker threads; 0 = one per core. Output does not depend on it.
    pub threads: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            compression: Compression::GZIP_DEFAULT,
            source_date_epoch: None,
            threads: 0,
        }
    }
}

/// A layer stored as a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The compressed blob.
    pub blob: BlobInfo,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Length of the uncompressed tar.
    pub tar_size: u64,
    pub media_type: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the layer stream failed: {0}")]
    Output(#[source] io::Error),
    #[error("invalid change path {path:?}: {reason}")]
    InvalidChangePath { path: PathBuf, reason: &'static str },
    #[error("opaque directory {path:?} is not a directory in the layer source", path = path)]
    OpaqueDirMissing { path: PathBuf },
    #[error("{path} changed while it was archived: {detail}", path = path.display())]
    SourceChanged { path: PathBuf, detail: String },
    #[error(transparent)]
    Level(#[from] CompressionLevelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayerError {
    let path = path.to_owned();
    move |source| LayerError::Io { op, path, source }
}

/// Writes the layer for `source` (+ `changes`) into `store`, returning both digests.
pub fn write_layer(
    store: &Store,
    source: &Path,
    changes: &LayerChanges,
    options: &LayerOptions,
) -> Result<Layer, LayerError> {
    let compression = options.compression.validate()?;
    let blob = store.blob_writer()?;
    let compressor =
        Compressor::new(blob, compression, options.threads).map_err(LayerError::Output)?;
    let mut diff = HashingWriter::new(compressor);
    write_tar(&mut diff, source, changes, options.source_date_epoch)?;
    let (compressor, diff_id, tar_size) = diff.finish();
    let blob = compressor.finish().map_err(LayerError::Output)?.commit()?;
    Ok(Layer {
        blob,
        diff_id,
        tar_size,
        media_type: compression.layer_media_type(),
    })
}

/// Writes the uncompressed, deterministic tar for `source` (+ `changes`) to `out`.
pub fn write_tar(
    out: impl Write,
    source: &Path,
    changes: &LayerChanges,
    source_date_epoch: Option<i64>,
) -> Result<(), LayerError> {
    write_tar_of(out, source, changes, source_date_epoch, None)
}

/// How a directory in overlayfs form becomes its tar, besides its content.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlayTarSettings {
    /// `SOURCE_DATE_EPOCH`: later mtimes are clamped to it.
    pub source_date_epoch: Option<i64>,
    /// The user namespace the tar's owners are seen from, when it is not the writer's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<IdMap>,
}

/// A user namespace's `uid_map` and `gid_map` (`inside outside count` ranges): owners are
/// recorded as seen inside it, and those it does not map as the overflow id, as the kernel
/// shows them there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    pub uids: Vec<[u32; 3]>,
    pub gids: Vec<[u32; 3]>,
}

/// What the kernel shows inside a user namespace for an id it does not map (`overflowuid`).
const OVERFLOW_ID: u32 = 65534;

impl IdMap {
    /// The current process's namespace, or `None` in the initial one (the identity map).
    pub fn of_current_process() -> io::Result<Option<Self>> {
        let read = |name| -> io::Result<Vec<[u32; 3]>> {
            let path = Path::new("/proc/self").join(name);
            let text = fs::read_to_string(&path)?;
            text.lines()
                .map(|line| {
                    let fields: Vec<u32> = line
                        .split_whitespace()
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .map_err(|_| {
                            io::Error::other(format!("{}: bad line {line:?}", path.display()))
                        })?;
                    <[u32; 3]>::try_from(fields).map_err(|_| {
                        io::Error::other(format!("{}: bad line {line:?}", path.display()))
                    })
                })
                .collect()
        };
        let map = Self {
            uids: read("uid_map")?,
            gids: read("gid_map")?,
        };
        let identity = [[0, 0, u32::MAX]];
        Ok((map.uids != identity || map.gids != identity).then_some(map))
    }

    fn inside(ranges: &[[u32; 3]], outside: u32) -> u32 {
        ranges
            .iter()
            .find_map(|&[inside, start, count]| {
                let offset = outside.checked_sub(start)?;
                (offset < count).then(|| inside.saturating_add(offset))
            })
            .unwrap_or(OVERFLOW_ID)
    }
}

/// Writes the tar for a directory in overlayfs form (whiteout devices, opaque xattrs).
pub fn write_overlay_tar(
    out: impl Write,
    source: &Path,
    settings: &OverlayTarSettings,
) -> Result<(), LayerError> {
    write_tar_of(
        out,
        source,
        &LayerChanges::default(),
        settings.source_date_epoch,
        Some(settings.ids.as_ref()),
    )
}

/// The diffID and length of [`write_overlay_tar`]'s tar, which is not kept.
pub fn hash_overlay_tar(
    source: &Path,
    settings: &OverlayTarSettings,
) -> Result<(Digest, u64), LayerError> {
    let mut hashed = HashingWriter::new(io::sink());
    write_overlay_tar(&mut hashed, source, settings)?;
    let (_, diff_id, size) = hashed.finish();
    Ok((diff_id, size))
}

/// `overlay`: `None` for deletions listed in `changes`, else the overlayfs form's id view.
fn write_tar_of(
    out: impl Write,
    source: &Path,
    changes: &LayerChanges,
    source_date_epoch: Option<i64>,
    overlay: Option<Option<&IdMap>>,
) -> Result<(), LayerError> {
    let root_changes = ChangeNode::build(changes)?;
    let mut writer = TarWriter {
        out: BufWriter::with_capacity(TAR_BUFFER, out),
        epoch: source_date_epoch,
        overlay_form: overlay.is_some(),
        ids: overlay.flatten(),
        first_paths: HashMap::new(),
        copy_buffer: vec![0u8; TAR_BUFFER],
    };
    writer.write_children(Some(source), &mut Vec::new(), Some(&root_changes))?;
    write_end(&mut writer.out).map_err(LayerError::Output)?;
    writer
        .out
        .into_inner()
        .map_err(|error| LayerError::Output(error.into_error()))?
        .flush()
        .map_err(LayerError::Output)
}

/// Deletions and opaque markers as a tree keyed by path component.
#[derive(Debug, Default)]
struct ChangeNode {
    deleted: bool,
    opaque: bool,
    children: BTreeMap<OsString, ChangeNode>,
}

impl ChangeNode {
    fn build(changes: &LayerChanges) -> Result<Self, LayerError> {
        let mut root = Self::default();
        for path in &changes.deleted {
            root.node_mut(path)?.deleted = true;
        }
        for path in &changes.opaque_dirs {
            root.node_mut(path)?.opaque = true;
        }
        Ok(root)
    }

    fn node_mut(&mut self, path: &Path) -> Result<&mut Self, LayerError> {
        let invalid = |reason| LayerError::InvalidChangePath {
            path: path.to_owned(),
            reason,
        };
        let mut node = self;
        let mut depth = 0;
        for component in path.components() {
            match component {
                Component::Normal(name) => {
                    node = node.children.entry(name.to_owned()).or_default();
                    depth += 1;
                }
                Component::CurDir => {}
                // A leading '/' means the layer root, as overlay diff tools report paths.
                Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(invalid("must not contain `..`"));
                }
            }
        }
        if depth == 0 {
            return Err(invalid("names the layer root"));
        }
        Ok(node)
    }

    /// Whether anything below (or at) this node must be written.
    fn has_whiteouts(&self) -> bool {
        self.deleted || self.opaque || self.children.values().any(Self::has_whiteouts)
    }
}

/// One thing to write inside a directory, sorted by its archive name.
enum Item<'a> {
    /// A file in the source directory (with its change node, if any).
    Source(OsString, Option<&'a ChangeNode>),
    /// A `.wh.NAME` for a deleted path absent from the source.
    Whiteout(OsString),
    /// A directory absent from the source that holds whiteouts deeper down.
    ChangesOnly(OsString, &'a ChangeNode),
}

struct TarWriter<'a, W: Write> {
    out: BufWriter<W>,
    epoch: Option<i64>,
    /// Whether the source holds its deletions in overlayfs form.
    overlay_form: bool,
    /// The namespace owners are recorded as seen from (`None`: as this process sees them).
    ids: Option<&'a IdMap>,
    /// (dev, ino) → archive path of the first link seen.
    first_paths: HashMap<(u64, u64), Vec<u8>>,
    copy_buffer: Vec<u8>,
}

impl<W: Write> TarWriter<'_, W> {
    /// Writes the children of `dir` (whose archive path is `prefix`, `/`-terminated or empty)
    /// merged with the whiteouts of `changes`. `dir` is `None` for a directory that exists
    /// only below this layer and holds deeper whiteouts.
    fn write_children(
        &mut self,
        dir: Option<&Path>,
        prefix: &mut Vec<u8>,
        changes: Option<&ChangeNode>,
    ) -> Result<(), LayerError> {
        let mut names = Vec::new();
        let mut items: Vec<(Vec<u8>, Item<'_>)> = Vec::new();
        if let Some(dir) = dir {
            for entry in fs::read_dir(dir).map_err(io_error("read directory", dir))? {
                let entry = entry.map_err(io_error("read directory", dir))?;
                if self.overlay_form && is_whiteout_device(&entry)? {
                    let mut key = WHITEOUT_PREFIX.as_bytes().to_vec();
                    key.extend_from_slice(entry.file_name().as_bytes());
                    items.push((key, Item::Whiteout(entry.file_name())));
                } else {
                    names.push(entry.file_name());
                }
            }
        }
        names.sort();
        let change_children = changes.map(|node| &node.children);
        items.reserve(names.len());
        for (name, node) in change_children.into_iter().flatten() {
            if names.binary_search(name).is_ok() {
                continue;
            }
            if node.deleted {
                let mut key = WHITEOUT_PREFIX.as_bytes().to_vec();
                key.extend_from_slice(name.as_bytes());
                items.push((key, Item::Whiteout(name.clone())));
            } else if node.opaque {
                let mut path = PathBuf::from(OsStr::from_bytes(prefix));
                path.push(name);
                return Err(LayerError::OpaqueDirMissing { path });
            } else if node.has_whiteouts() {
                items.push((
                    name.as_bytes().to_vec(),
                    Item::ChangesOnly(name.clone(), node),
                ));
            }
        }
        for name in names {
            let node = change_children.and_then(|children| children.get(&name));
            items.push((name.as_bytes().to_vec(), Item::Source(name, node)));
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));

        for (_, item) in items {
            let prefix_len = prefix.len();
            match item {
                Item::Source(name, node) => {
                    prefix.extend_from_slice(name.as_bytes());
                    let path = dir.map(|dir| dir.join(&name)).unwrap_or_default();
                    self.write_source(&path, prefix, node)?;
                }
                Item::Whiteout(name) => {
                    prefix.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
                    prefix.extend_from_slice(name.as_bytes());
                    self.write_marker(prefix)?;
                }
                Item::ChangesOnly(name, node) => {
                    prefix.extend_from_slice(name.as_bytes());
                    prefix.push(b'/');
                    self.write_children(None, prefix, Some(node))?;
                }
            }
            prefix.truncate(prefix_len);
        }
        Ok(())
    }

    /// Writes one source path (`archive_path` has no trailing slash yet).
    fn write_source(
        &mut self,
        path: &Path,
        archive_path: &mut Vec<u8>,
        changes: Option<&ChangeNode>,
    ) -> Result<(), LayerError> {
        let meta = path.symlink_metadata().map_err(io_error("stat", path))?;
        let file_type = meta.file_type();
        if file_type.is_socket() {
            return Ok(());
        }
        let (xattrs, overlay_opaque) = read_xattrs(path)?;
        let mut header = EntryHeader {
            path: &[],
            kind: Kind::Regular,
            mode: meta.mode(),
            uid: u64::from(
                self.ids
                    .map_or(meta.uid(), |ids| IdMap::inside(&ids.uids, meta.uid())),
            ),
            gid: u64::from(
                self.ids
                    .map_or(meta.gid(), |ids| IdMap::inside(&ids.gids, meta.gid())),
            ),
            size: 0,
            mtime: self.clamp(meta.mtime()),
            link: &[],
            device: (0, 0),
            xattrs: &xattrs,
        };

        if file_type.is_dir() {
            archive_path.push(b'/');
            header.kind = Kind::Directory;
            header.path = archive_path;
            self.emit(&header)?;
            // A deleted-then-recreated directory must hide what was below it.
            let listed_opaque = changes.is_some_and(|node| node.opaque || node.deleted);
            if listed_opaque || (self.overlay_form && overlay_opaque) {
                let len = archive_path.len();
                archive_path.extend_from_slice(OPAQUE_MARKER.as_bytes());
                self.write_marker(archive_path)?;
                archive_path.truncate(len);
            }
            return self.write_children(Some(path), archive_path, changes);
        }

        if meta.nlink() > 1 {
            let inode = (meta.dev(), meta.ino());
            if let Some(first) = self.first_paths.get(&inode) {
                let first = first.clone();
                header.kind = Kind::HardLink;
                header.path = archive_path;
                header.link = &first;
                return self.emit(&header);
            }
            self.first_paths.insert(inode, archive_path.clone());
        }

        header.path = archive_path;
        if file_type.is_file() {
            header.size = meta.len();
            self.emit(&header)?;
            self.copy_content(path, &meta)
        } else if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(io_error("read link", path))?;
            let target = target.into_os_string().into_vec();
            header.kind = Kind::Symlink;
            header.link = &target;
            self.emit(&header)
        } else {
            header.kind = if file_type.is_char_device() {
                Kind::CharDevice
            } else if file_type.is_block_device() {
                Kind::BlockDevice
            } else {
                Kind::Fifo
            };
            let rdev = meta.rdev();
            header.device = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
            self.emit(&header)
        }
    }

    /// An empty regular file named `archive_path` (a whiteout or opaque marker).
    fn write_marker(&mut self, archive_path: &[u8]) -> Result<(), LayerError> {
        self.emit(&EntryHeader {
            path: archive_path,
            kind: Kind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: self.epoch.unwrap_or(0),
            link: &[],
            device: (0, 0),
            xattrs: &[],
        })
    }

    fn emit(&mut self, header: &EntryHeader<'_>) -> Result<(), LayerError> {
        write_header(&mut self.out, header).map_err(LayerError::Output)
    }

    fn copy_content(&mut self, path: &Path, meta: &Metadata) -> Result<(), LayerError> {
        let expected = meta.len();
        let file = File::open(path).map_err(io_error("open", path))?;
        let mut content = file.take(expected);
        let mut copied = 0u64;
        loop {
            let n = match content.read(&mut self.copy_buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(io_error("read", path)(error)),
            };
            self.out
                .write_all(&self.copy_buffer[..n])
                .map_err(LayerError::Output)?;
            copied += n as u64;
        }
        if copied != expected {
            return Err(LayerError::SourceChanged {
                path: path.to_owned(),
                detail: format!("size was {expected} bytes but only {copied} could be read"),
            });
        }
        write_padding(&mut self.out, expected).map_err(LayerError::Output)
    }

    fn clamp(&self, mtime: i64) -> i64 {
        match self.epoch {
            Some(epoch) => mtime.min(epoch),
            None => mtime,
        }
    }
}

/// Whether an xattr describes the host rather than the file, and so stays out of layers.
pub(crate) fn is_host_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name == b"security.selinux"
}

/// Whether a directory entry is an overlayfs whiteout: a character device numbered 0:0.
fn is_whiteout_device(entry: &fs::DirEntry) -> Result<bool, LayerError> {
    let path = || entry.path();
    let file_type = entry
        .file_type()
        .map_err(|error| io_error("stat", &path())(error))?;
    if !file_type.is_char_device() {
        return Ok(false);
    }
    let meta = entry
        .metadata()
        .map_err(|error| io_error("stat", &path())(error))?;
    Ok(meta.rdev() == 0)
}

/// The file's own xattrs (not following symlinks), sorted by name, and whether it carries
/// overlayfs' opaque marker (which, like all host xattrs, is not among them).
fn read_xattrs(path: &Path) -> Result<(Xattrs, bool), LayerError> {
    let names = match xattr_call(|buf| rustix::fs::llistxattr(path, buf)) {
        Ok(names) => names,
        Err(errno) if errno == rustix::io::Errno::NOTSUP => return Ok((Vec::new(), false)),
        Err(errno) => return Err(io_error("list xattrs of", path)(errno.into())),
    };
    let mut xattrs = Vec::new();
    let mut opaque = false;
    for name in names.split(|&b| b == 0).filter(|name| !name.is_empty()) {
        let is_opaque_marker = OVERLAY_OPAQUE_NAMES
            .iter()
            .any(|marker| marker.as_bytes() == name);
        if is_host_xattr(name) && !is_opaque_marker {
            continue;
        }
        let value = match xattr_call(|buf| rustix::fs::lgetxattr(path, name, buf)) {
            Ok(value) => value,
            // Removed between listing and reading.
            Err(errno) if errno == rustix::io::Errno::NODATA => continue,
            Err(errno) => return Err(io_error("read xattr of", path)(errno.into())),
        };
        if is_opaque_marker {
            opaque |= value == b"y";
        } else {
            xattrs.push((name.to_vec(), value));
        }
    }
    xattrs.sort();
    Ok((xattrs, opaque))
}

/// overlayfs' opaque-directory xattr, in both namespaces it may use.
const OVERLAY_OPAQUE_NAMES: [&str; 2] = [
    OverlayXattrs::Trusted.opaque_name(),
    OverlayXattrs::User.opaque_name(),
];

/// Runs an xattr call with a growing buffer (Linux caps names and values at 64 KiB).
fn xattr_call(
    mut call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0u8; size];
        match call(&mut buf) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if size < 1 << 20 => size *= 4,
            Err(errno) => return Err(errno),
        }
    }
}
