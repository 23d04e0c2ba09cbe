//! Safe layer application: extract a (possibly compressed) layer tar into a directory.
//!
//! Guarantees:
//! - Nothing is created, changed or removed outside the target. Entry names are cleaned
//!   lexically (`..` stops at the root, leading `/` is dropped), and every parent directory is
//!   resolved by `ConfinedRoot`, which follows symlinks as if the target were `/`. The final
//!   name is then handled with `*at` calls that never follow it; hardlink targets are resolved
//!   the same way and linked without following. Entries that clean to the root itself only
//!   update the root's metadata (directories) or are skipped.
//! - OCI whiteouts (in layers), in one of two [`Whiteouts`] modes. `Remove` (flattening): `.wh.NAME`
//!   removes NAME; `.wh..wh..opq` removes everything in its directory that this layer has not
//!   itself written. `Overlay` (a layer on its own, to be an overlayfs lower directory): they
//!   become overlayfs whiteouts, a 0:0 character device named NAME and the `overlay.opaque`
//!   xattr on the directory. Either way a whiteout naming `.`, `..` or nothing is refused.
//! - An existing path is replaced unless both old and new are directories (then merged).
//! - Limits on entry count, path length, directory depth and decompressed/compressed ratio stop
//!   hostile input with an error saying which limit to raise.
//! - Directory modes and mtimes are applied last, so read-only directories and mtimes survive
//!   the writing of their children. Ownership is applied when `preserve_ownership` is set (the
//!   default for root); device nodes are skipped when the kernel refuses them (rootless), and
//!   xattrs the filesystem or privileges refuse are skipped; both are counted in [`ApplyStats`].
//!
//! Archives that are not layers (ADD's) use the same applier: [`Whiteouts::Literal`] keeps
//! `.wh.` names as ordinary files, [`ApplyOptions::owner`] gives every entry one owner
//! (`--chown`), [`ApplyOptions::root_metadata`] leaves the target directory itself alone, and
//! [`apply_over`] extracts onto the upper layer of a stack, resolving names through the layers
//! [`Below`] it.
//!
//! The compression (gzip, bzip2, xz, zstd or none) is detected from the stream's first bytes. After the
//! end-of-archive marker the rest of the stream is read, so decompressor checksums are checked,
//! and the whole decompressed stream is hashed: [`ApplyStats::diff_id`] lets the caller verify
//! the layer against the image config's `rootfs.diff_ids`.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use crate::confined::{
    Below, ConfinedRoot, Missing, ResolveError, ResolvedDir, list_dir, remove_all_at,
};
use crate::decompress::StreamCompression;
use crate::digest::{Digest, Hasher};
use crate::layer::{OPAQUE_MARKER, WHITEOUT_PREFIX, is_host_xattr};
use crate::oci::LayerCompression;
use crate::tar_format::Kind;
use crate::tar_reader::{EntryKind, TarEntry, TarError, TarReader};

const BUFFER: usize = 256 * 1024;

/// Bounds on what one layer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyLimits {
    /// Archive members (files, directories, links, whiteouts, ...).
    pub max_entries: u64,
    /// Bytes in one entry name or link target.
    pub max_path_bytes: usize,
    /// Directories between the root and an entry, after symlinks are resolved (symlinks can
    /// nest deeper than any one name spells out).
    pub max_depth: usize,
    /// Decompressed tar bytes per compressed byte...
    pub max_expansion_ratio: u64,
    /// ...checked only once the tar exceeds this many bytes, so small, highly compressible
    /// layers are never refused.
    pub expansion_floor: u64,
    /// Decompressed tar bytes in all, headers included: bounds the disk an extraction takes,
    /// and its entry count too (each entry is at least 512 bytes of tar).
    pub max_tar_bytes: u64,
}

impl Default for ApplyLimits {
    fn default() -> Self {
        Self {
            max_entries: 1 << 22,
            max_path_bytes: 4096,
            max_depth: 512,
            max_expansion_ratio: 1024,
            expansion_floor: 1 << 30,
            max_tar_bytes: u64::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOptions {
    pub limits: ApplyLimits,
    /// chown entries to their recorded uid/gid (needs root).
    pub preserve_ownership: bool,
    /// chown every entry to this uid/gid instead of its recorded one (`ADD --chown`).
    pub owner: Option<(u32, u32)>,
    pub whiteouts: Whiteouts,
    /// Whether an entry naming the root itself (`./`) sets the target directory's mode, owner
    /// and mtime: yes for a layer, no for an archive extracted into an existing directory.
    pub root_metadata: bool,
    /// Refuse, instead of confining, entry names (and hardlink targets) that are absolute or
    /// contain `..`, and entries whose parent path goes through a symlink. An archive of a
    /// directory tree (a build context sent to `imgb serve`) never needs either, so either is
    /// a sign of a hostile or broken sender and is named in the error.
    pub strict_paths: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            limits: ApplyLimits::default(),
            preserve_ownership: rustix::process::geteuid().is_root(),
            owner: None,
            whiteouts: Whiteouts::Remove,
            root_metadata: true,
            strict_paths: false,
        }
    }
}

/// What OCI whiteout entries do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Remove what they name from the target: layers applied in order flatten into one tree.
    Remove,
    /// Record them the way overlayfs does, so the target can serve as a lower directory.
    Overlay(OverlayXattrs),
    /// They are ordinary names: the archive is not a layer (ADD of a local tar).
    Literal,
}

/// The xattr namespace of overlayfs' opaque marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayXattrs {
    /// `trusted.overlay.opaque`: the default, settable only with `CAP_SYS_ADMIN`.
    Trusted,
    /// `user.overlay.opaque`: for overlay mounts with the `userxattr` option (rootless).
    User,
}

impl OverlayXattrs {
    /// The namespace a process with this effective user can write.
    pub fn for_current_user() -> Self {
        if rustix::process::geteuid().is_root() {
            Self::Trusted
        } else {
            Self::User
        }
    }

    pub const fn opaque_name(self) -> &'static str {
        match self {
            Self::Trusted => "trusted.overlay.opaque",
            Self::User => "user.overlay.opaque",
        }
    }
}

/// What an application did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries: u64,
    /// Bytes of the (decompressed) tar stream.
    pub tar_bytes: u64,
    /// Bytes of the input as given.
    pub input_bytes: u64,
    /// Device nodes the kernel refused to create (rootless).
    pub skipped_devices: u64,
    /// xattrs refused by the filesystem or privileges, or host-specific ones never applied.
    pub skipped_xattrs: u64,
    /// sha256 of the decompressed tar stream: the layer's diffID (set by every successful
    /// [`apply_layer`]).
    pub diff_id: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot open layer target {path}: {source}", path = path.display())]
    Target {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer failed: {0}")]
    Read(#[source] io::Error),
    #[error("malformed layer tar at byte {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
    #[error("invalid layer entry {path:?}: {reason}")]
    InvalidEntry { path: String, reason: String },
    #[error("layer entry {path:?}: {source}")]
    Resolve {
        path: String,
        #[source]
        source: ResolveError,
    },
    #[error("layer entry {path:?}: {op}: {source}")]
    Entry {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer exceeds the {limit} limit ({value} > {max}); \
         hint: raise ApplyLimits::{field} if the layer is trusted"
    )]
    LimitExceeded {
        limit: &'static str,
        field: &'static str,
        value: u64,
        max: u64,
    },
}

impl From<TarError> for ApplyError {
    fn from(error: TarError) -> Self {
        match error {
            TarError::Io(source) => Self::Read(source),
            TarError::Malformed { offset, reason } => Self::Malformed { offset, reason },
        }
    }
}

/// Extracts the layer read from `input` into `target` (an existing directory).
pub fn apply_layer(
    input: impl Read,
    target: &Path,
    options: &ApplyOptions,
) -> Result<ApplyStats, ApplyError> {
    apply_over(input, target, options, None)
}

/// Extracts the archive read from `input` into `target`, the upper layer of a stack whose lower
/// layers `below` shows: names missing from `target` resolve through them (see [`Below`]).
pub fn apply_over(
    input: impl Read,
    target: &Path,
    options: &ApplyOptions,
    below: Option<&dyn Below>,
) -> Result<ApplyStats, ApplyError> {
    let root = ConfinedRoot::open_over(target, below).map_err(|source| ApplyError::Target {
        path: target.to_owned(),
        source,
    })?;
    let input_bytes = Rc::new(Cell::new(0));
    let tar_bytes = Rc::new(Cell::new(0));
    let counted_input = Counted {
        inner: input,
        count: Rc::clone(&input_bytes),
        hasher: None,
    };
    let (_, decompressed) =
        crate::decompress::decompress(counted_input).map_err(ApplyError::Read)?;
    let mut tar = TarReader::new(Counted {
        inner: decompressed,
        count: Rc::clone(&tar_bytes),
        hasher: Some(Hasher::default()),
    });
    let mut applier = Applier {
        root,
        options,
        meter: Meter {
            limits: options.limits,
            input_bytes,
            tar_bytes,
        },
        unpacked: HashSet::new(),
        deferred_dirs: Vec::new(),
        cached_parent: None,
        stats: ApplyStats::default(),
        buffer: vec![0u8; BUFFER],
    };
    while let Some(entry) = tar.next_entry()? {
        applier.stats.entries += 1;
        applier.check_entry_limits(&entry)?;
        applier.apply_entry(&entry, &mut tar)?;
        applier.discard_content(&mut tar)?;
        applier.meter.check()?;
    }
    let mut rest = tar.into_inner();
    applier.drain(&mut rest)?;
    applier.finish_dirs()?;
    applier.stats.tar_bytes = applier.meter.tar_bytes.get();
    applier.stats.input_bytes = applier.meter.input_bytes.get();
    applier.stats.diff_id = rest.hasher.map(Hasher::finish);
    Ok(applier.stats)
}

/// Picks a layer's decompressor from its magic bytes; also says which it picked. bzip2 and xz
/// are refused: they are no OCI layer media type.
pub(crate) fn decompress<'a>(
    input: impl Read + 'a,
) -> io::Result<(LayerCompression, Box<dyn Read + 'a>)> {
    let (compression, stream) = crate::decompress::decompress(input)?;
    let layer = match compression {
        StreamCompression::None => LayerCompression::None,
        StreamCompression::Gzip => LayerCompression::Gzip,
        StreamCompression::Zstd => LayerCompression::Zstd,
        StreamCompression::Bzip2 | StreamCompression::Xz => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a layer compressed with {compression:?} (layers use gzip, zstd or none)"),
            ));
        }
    };
    Ok((layer, stream))
}

/// Counts (and optionally hashes) bytes read through it; the count goes into a shared cell.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
    hasher: Option<Hasher>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        if let Some(hasher) = &mut self.hasher {
            hasher.update(buf.get(..n).unwrap_or_default());
        }
        Ok(n)
    }
}

/// Watches the expansion ratio.
struct Meter {
    limits: ApplyLimits,
    input_bytes: Rc<Cell<u64>>,
    tar_bytes: Rc<Cell<u64>>,
}

impl Meter {
    fn check(&self) -> Result<(), ApplyError> {
        let tar = self.tar_bytes.get();
        if tar > self.limits.max_tar_bytes {
            return Err(ApplyError::LimitExceeded {
                limit: "size",
                field: "max_tar_bytes",
                value: tar,
                max: self.limits.max_tar_bytes,
            });
        }
        if tar <= self.limits.expansion_floor {
            return Ok(());
        }
        let allowed = self
            .input_bytes
            .get()
            .saturating_mul(self.limits.max_expansion_ratio);
        if tar > allowed {
            return Err(ApplyError::LimitExceeded {
                limit: "expansion ratio",
                field: "max_expansion_ratio",
                value: tar / self.input_bytes.get().max(1),
                max: self.limits.max_expansion_ratio,
            });
        }
        Ok(())
    }
}

/// A directory whose mode and mtime are set once its children are written.
struct DeferredDir {
    path: PathBuf,
    mode: u32,
    mtime: i64,
}

struct Applier<'o> {
    root: ConfinedRoot<'o>,
    options: &'o ApplyOptions,
    meter: Meter,
    /// Resolved paths this layer wrote, and all their ancestors (for opaque markers).
    unpacked: HashSet<PathBuf>,
    deferred_dirs: Vec<DeferredDir>,
    /// The previous entry's parent: consecutive siblings resolve it once.
    cached_parent: Option<(Vec<OsString>, ResolvedDir)>,
    stats: ApplyStats,
    buffer: Vec<u8>,
}

/// Why a name is refused under [`ApplyOptions::strict_paths`], if it is.
fn strict_path_problem(path: &[u8]) -> Option<&'static str> {
    if path.starts_with(b"/") {
        Some("an absolute path (names in the archive must be relative)")
    } else if path
        .split(|&b| b == b'/')
        .any(|component| component == b"..")
    {
        Some("a `..` component (names in the archive must stay inside it)")
    } else {
        None
    }
}

/// `path` split into normal components: empty and `.` dropped, `..` pops (never past the root).
fn clean(path: &[u8]) -> Vec<OsString> {
    let mut components: Vec<OsString> = Vec::new();
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                components.pop();
            }
            name => components.push(OsStr::from_bytes(name).to_owned()),
        }
    }
    components
}

impl Applier<'_> {
    fn check_entry_limits(&self, entry: &TarEntry) -> Result<(), ApplyError> {
        let limits = &self.options.limits;
        if self.stats.entries > limits.max_entries {
            return Err(ApplyError::LimitExceeded {
                limit: "entry count",
                field: "max_entries",
                value: self.stats.entries,
                max: limits.max_entries,
            });
        }
        let longest = entry.path.len().max(entry.link.len());
        if longest > limits.max_path_bytes {
            return Err(ApplyError::LimitExceeded {
                limit: "path length",
                field: "max_path_bytes",
                value: longest as u64,
                max: limits.max_path_bytes as u64,
            });
        }
        if entry.path.contains(&0) || entry.link.contains(&0) {
            return Err(invalid(entry, "name or link target contains a NUL byte"));
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &TarEntry,
        tar: &mut TarReader<R>,
    ) -> Result<(), ApplyError> {
        let kind = match entry.kind {
            Some(EntryKind::Known(kind)) => kind,
            Some(EntryKind::Unsupported(flag)) => {
                return Err(invalid(
                    entry,
                    format!("unsupported entry type {:?}", char::from(flag)),
                ));
            }
            None => return Err(invalid(entry, "entry without a type")),
        };
        if self.options.strict_paths {
            let link = (kind == Kind::HardLink).then_some(&entry.link);
            for path in std::iter::once(&entry.path).chain(link) {
                if let Some(problem) = strict_path_problem(path) {
                    return Err(invalid(entry, problem));
                }
            }
        }
        let mut components = clean(&entry.path);
        let Some(name) = components.pop() else {
            self.cached_parent = None;
            // Only a directory entry may describe the root (its metadata); anything else
            // cannot replace the root and is ignored.
            if kind == Kind::Directory && self.options.root_metadata {
                let root = self
                    .root
                    .fd()
                    .try_clone_to_owned()
                    .map_err(|source| entry_error(entry, "open target", source))?;
                let dir = ResolvedDir {
                    fd: root,
                    path: PathBuf::new(),
                };
                self.set_dir_metadata(&dir, OsStr::new("."), entry)?;
            }
            return Ok(());
        };
        if let Some(whiteout) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes())
            && self.options.whiteouts != Whiteouts::Literal
        {
            self.cached_parent = None;
            return self.apply_whiteout(entry, &components, &name, whiteout);
        }

        let parent = self.parent(entry, components)?;
        let path = parent.1.path.join(&name);
        self.mark_unpacked(path);
        let result = self.create(entry, kind, &parent, &name, tar);
        self.cached_parent = Some(parent);
        result
    }

    /// The resolved parent directory, reusing the previous entry's when they are siblings.
    /// Safe because an entry only changes its own name inside the parent, never the parent.
    fn parent(
        &mut self,
        entry: &TarEntry,
        components: Vec<OsString>,
    ) -> Result<(Vec<OsString>, ResolvedDir), ApplyError> {
        match self.cached_parent.take() {
            Some(cached) if cached.0 == components => return Ok(cached),
            _ => {}
        }
        let dir = self
            .root
            .resolve_dir(&components, Missing::Create)
            .map_err(|source| resolve_error(entry, source))?
            .ok_or_else(|| invalid(entry, "parent directory could not be created"))?;
        let depth = dir.path.components().count() + 1;
        let max_depth = self.options.limits.max_depth;
        if depth > max_depth {
            return Err(ApplyError::LimitExceeded {
                limit: "directory depth",
                field: "max_depth",
                value: depth as u64,
                max: max_depth as u64,
            });
        }
        if self.options.strict_paths && dir.path.iter().ne(components.iter()) {
            return Err(invalid(
                entry,
                format!(
                    "its parent directory is reached through a symlink (it resolves to {:?})",
                    dir.path
                ),
            ));
        }
        Ok((components, dir))
    }

    fn mark_unpacked(&mut self, mut path: PathBuf) {
        while self.unpacked.insert(path.clone()) && path.pop() {}
    }

    fn apply_whiteout(
        &mut self,
        entry: &TarEntry,
        parents: &[OsString],
        name: &OsStr,
        target: &[u8],
    ) -> Result<(), ApplyError> {
        if name == OPAQUE_MARKER {
            if let Whiteouts::Overlay(xattrs) = self.options.whiteouts {
                let dir = self.parent(entry, parents.to_vec())?.1;
                return set_opaque_xattr(&dir, xattrs)
                    .map_err(|source| entry_error(entry, "set the overlay opaque xattr", source));
            }
            let Some(dir) = self.resolve_existing(entry, parents)? else {
                return Ok(());
            };
            return self
                .clear_lower(dir.fd.as_fd(), &dir.path)
                .map_err(|source| entry_error(entry, "apply opaque marker", source));
        }
        // Other `.wh..wh.` names are aufs bookkeeping with no meaning in OCI layers.
        if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Ok(());
        }
        if matches!(target, b"" | b"." | b"..") {
            return Err(invalid(entry, "whiteout names no file"));
        }
        let target = OsStr::from_bytes(target);
        if self.options.whiteouts != Whiteouts::Remove {
            let dir = self.parent(entry, parents.to_vec())?.1;
            return overlay_whiteout(dir.fd.as_fd(), target)
                .map_err(|source| entry_error(entry, "create overlay whiteout", source));
        }
        let Some(dir) = self.resolve_existing(entry, parents)? else {
            return Ok(());
        };
        remove_all_at(dir.fd.as_fd(), target)
            .map_err(|source| entry_error(entry, "apply whiteout", source))
    }

    /// Resolves a directory that must already exist; a missing one (or a file) means there is
    /// nothing to white out.
    fn resolve_existing(
        &self,
        entry: &TarEntry,
        components: &[OsString],
    ) -> Result<Option<ResolvedDir>, ApplyError> {
        match self.root.resolve_dir(components, Missing::Stop) {
            Ok(dir) => Ok(dir),
            Err(ResolveError::NotADirectory(_)) => Ok(None),
            Err(source) => Err(resolve_error(entry, source)),
        }
    }

    /// Removes everything below `dir` that this layer did not write.
    fn clear_lower(&self, dir: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        for name in list_dir(dir)? {
            let child = path.join(&name);
            if !self.unpacked.contains(&child) {
                remove_all_at(dir, &name)?;
                continue;
            }
            let stat = rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                let child_fd = rustix::fs::openat(
                    dir,
                    name.as_os_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                self.clear_lower(child_fd.as_fd(), &child)?;
            }
        }
        Ok(())
    }

    fn create<R: Read>(
        &mut self,
        entry: &TarEntry,
        kind: Kind,
        parent: &(Vec<OsString>, ResolvedDir),
        name: &OsStr,
        tar: &mut TarReader<R>,
    ) -> Result<(), ApplyError> {
        let dir = &parent.1;
        let fd = dir.fd.as_fd();
        if kind == Kind::HardLink {
            return self.link(entry, dir, name);
        }
        let existing = match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Some(FileType::from_raw_mode(stat.st_mode)),
            Err(Errno::NOENT) => None,
            Err(errno) => return Err(entry_error(entry, "stat", errno.into())),
        };
        let keep_directory = kind == Kind::Directory && existing == Some(FileType::Directory);
        if existing.is_some() && !keep_directory {
            remove_all_at(fd, name).map_err(|source| entry_error(entry, "replace", source))?;
        }
        let permissions = Mode::from_raw_mode(entry.mode & 0o7777);
        let created = match kind {
            Kind::Directory => {
                if !keep_directory {
                    rustix::fs::mkdirat(fd, name, Mode::from_raw_mode(0o700))
                        .map_err(|errno| entry_error(entry, "create directory", errno.into()))?;
                }
                return self.set_dir_metadata(dir, name, entry);
            }
            Kind::Regular => {
                self.write_file(entry, fd, name, tar)?;
                Ok(())
            }
            Kind::Symlink => rustix::fs::symlinkat(OsStr::from_bytes(&entry.link), fd, name),
            Kind::Fifo => rustix::fs::mknodat(fd, name, FileType::Fifo, permissions, 0),
            Kind::CharDevice | Kind::BlockDevice => {
                let file_type = match kind {
                    Kind::CharDevice => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                let device = rustix::fs::makedev(entry.device.0, entry.device.1);
                match rustix::fs::mknodat(fd, name, file_type, permissions, device) {
                    Err(Errno::PERM) => {
                        self.stats.skipped_devices += 1;
                        return Ok(());
                    }
                    other => other,
                }
            }
            Kind::HardLink => Ok(()),
        };
        created.map_err(|errno| entry_error(entry, "create", errno.into()))?;
        self.set_metadata(fd, name, entry, kind == Kind::Symlink)
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &TarEntry,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        tar: &mut TarReader<R>,
    ) -> Result<(), ApplyError> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|errno| entry_error(entry, "create", errno.into()))?;
        let mut file = File::from(fd);
        loop {
            let n = tar
                .read_content(&mut self.buffer)
                .map_err(ApplyError::Read)?;
            if n == 0 {
                return Ok(());
            }
            file.write_all(&self.buffer[..n])
                .map_err(|source| entry_error(entry, "write", source))?;
            self.meter.check()?;
        }
    }

    /// Reads (and meters) content the entry did not use, so no byte escapes the limits.
    fn discard_content<R: Read>(&mut self, tar: &mut TarReader<R>) -> Result<(), ApplyError> {
        while tar
            .read_content(&mut self.buffer)
            .map_err(ApplyError::Read)?
            > 0
        {
            self.meter.check()?;
        }
        Ok(())
    }

    fn link(
        &mut self,
        entry: &TarEntry,
        dir: &ResolvedDir,
        name: &OsStr,
    ) -> Result<(), ApplyError> {
        let mut target = clean(&entry.link);
        let Some(target_name) = target.pop() else {
            return Err(invalid(entry, "hardlink to the root"));
        };
        let missing = || invalid(entry, "hardlink target does not exist");
        let target_dir = self.resolve_existing(entry, &target)?.ok_or_else(missing)?;
        let stat = match rustix::fs::statat(
            target_dir.fd.as_fd(),
            target_name.as_os_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Err(missing()),
            Err(errno) => return Err(entry_error(entry, "stat hardlink target", errno.into())),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            return Err(invalid(entry, "hardlink to a directory"));
        }
        if target_dir.path.join(&target_name) == dir.path.join(name) {
            return Ok(());
        }
        let fd = dir.fd.as_fd();
        remove_all_at(fd, name).map_err(|source| entry_error(entry, "replace", source))?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        rustix::fs::linkat(
            target_dir.fd.as_fd(),
            target_name.as_os_str(),
            fd,
            name,
            AtFlags::empty(),
        )
        .map_err(|errno| entry_error(entry, "create hardlink", errno.into()))
    }

    /// Ownership and xattrs now; mode and mtime once the children are written.
    fn set_dir_metadata(
        &mut self,
        dir: &ResolvedDir,
        name: &OsStr,
        entry: &TarEntry,
    ) -> Result<(), ApplyError> {
        let fd = dir.fd.as_fd();
        self.set_owner(fd, name, entry)?;
        self.set_xattrs(fd, name, entry)?;
        self.deferred_dirs.push(DeferredDir {
            path: dir.path.join(name),
            mode: entry.mode,
            mtime: entry.mtime,
        });
        Ok(())
    }

    /// Order matters: chown clears setuid bits and file capabilities, so it goes first.
    fn set_metadata(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        entry: &TarEntry,
        is_symlink: bool,
    ) -> Result<(), ApplyError> {
        self.set_owner(dir, name, entry)?;
        if !is_symlink {
            rustix::fs::chmodat(
                dir,
                name,
                Mode::from_raw_mode(entry.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|errno| entry_error(entry, "chmod", errno.into()))?;
        }
        self.set_xattrs(dir, name, entry)?;
        set_mtime(dir, name, entry.mtime)
            .map_err(|errno| entry_error(entry, "set mtime", errno.into()))
    }

    fn set_owner(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        entry: &TarEntry,
    ) -> Result<(), ApplyError> {
        let (uid, gid) = match self.options.owner {
            Some(owner) => owner,
            None if self.options.preserve_ownership => {
                let (Ok(uid), Ok(gid)) = (u32::try_from(entry.uid), u32::try_from(entry.gid))
                else {
                    return Err(invalid(
                        entry,
                        format!("uid {} or gid {} out of range", entry.uid, entry.gid),
                    ));
                };
                (uid, gid)
            }
            None => return Ok(()),
        };
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|errno| entry_error(entry, "chown", errno.into()))
    }

    fn set_xattrs(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        entry: &TarEntry,
    ) -> Result<(), ApplyError> {
        if entry.xattrs.is_empty() {
            return Ok(());
        }
        // The kernel has no setxattrat on older systems: address the file through the
        // already-resolved parent's descriptor, not following the final name.
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        path.push(name);
        for (key, value) in &entry.xattrs {
            if is_host_xattr(key) {
                self.stats.skipped_xattrs += 1;
                continue;
            }
            match rustix::fs::lsetxattr(&path, key.as_slice(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOTSUP | Errno::PERM) => self.stats.skipped_xattrs += 1,
                Err(errno) => return Err(entry_error(entry, "set xattr", errno.into())),
            }
        }
        Ok(())
    }

    /// Reads what follows the end-of-archive marker so decompressors verify their checksums.
    fn drain(&mut self, rest: &mut impl Read) -> Result<(), ApplyError> {
        loop {
            match rest.read(&mut self.buffer) {
                Ok(0) => return Ok(()),
                Ok(_) => self.meter.check()?,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(ApplyError::Read(error)),
            }
        }
    }

    /// Applies deferred directory modes and mtimes, deepest (latest) first.
    fn finish_dirs(&mut self) -> Result<(), ApplyError> {
        for deferred in std::mem::take(&mut self.deferred_dirs).iter().rev() {
            let components: Vec<OsString> = deferred.path.iter().map(OsStr::to_owned).collect();
            let path = deferred.path.to_string_lossy().into_owned();
            let error = |op, errno: Errno| ApplyError::Entry {
                path: path.clone(),
                op,
                source: errno.into(),
            };
            // Resolve the parent, then open the directory itself without following: a later
            // entry may have replaced it with a symlink, which must not be chmodded through.
            let (parent, name) = match components.split_last() {
                Some((name, parent)) => (parent, name.as_os_str()),
                None => (&components[..], OsStr::new(".")),
            };
            let Ok(Some(parent_dir)) = self.root.resolve_dir(parent, Missing::Stop) else {
                continue;
            };
            let Ok(dir) = rustix::fs::openat(
                parent_dir.fd.as_fd(),
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            rustix::fs::chmodat(
                dir.as_fd(),
                ".",
                Mode::from_raw_mode(deferred.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|errno| error("chmod", errno))?;
            set_mtime(dir.as_fd(), OsStr::new("."), deferred.mtime)
                .map_err(|errno| error("set mtime", errno))?;
        }
        Ok(())
    }
}

/// Marks `dir` opaque for overlayfs. The descriptor's magic link is followed on purpose: it is
/// the confined directory itself.
fn set_opaque_xattr(dir: &ResolvedDir, xattrs: OverlayXattrs) -> io::Result<()> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", dir.fd.as_raw_fd()));
    rustix::fs::setxattr(&path, xattrs.opaque_name(), b"y", XattrFlags::empty()).map_err(|errno| {
        let error = io::Error::from(errno);
        match (errno, xattrs) {
            (Errno::PERM, OverlayXattrs::Trusted) => io::Error::new(
                error.kind(),
                format!("{error} (hint: trusted.* xattrs need root; rootless uses user.*)"),
            ),
            _ => error,
        }
    })
}

/// An overlayfs whiteout for `name`, unless this layer itself wrote `name` (its entry wins over
/// the whiteout, which only hides lower layers).
fn overlay_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => return Ok(()),
        Err(Errno::NOENT) => {}
        Err(errno) => return Err(errno.into()),
    }
    rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0).map_err(|errno| {
        let error = io::Error::from(errno);
        match errno {
            Errno::PERM => io::Error::new(
                error.kind(),
                format!(
                    "{error} (hint: whiteout devices need CAP_MKNOD: root or a user namespace)"
                ),
            ),
            _ => error,
        }
    })
}

fn set_mtime(dir: BorrowedFd<'_>, name: &OsStr, mtime: i64) -> rustix::io::Result<()> {
    let time = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
}

fn entry_path(entry: &TarEntry) -> String {
    String::from_utf8_lossy(&entry.path).into_owned()
}

fn invalid(entry: &TarEntry, reason: impl Into<String>) -> ApplyError {
    ApplyError::InvalidEntry {
        path: entry_path(entry),
        reason: reason.into(),
    }
}

fn entry_error(entry: &TarEntry, op: &'static str, source: io::Error) -> ApplyError {
    ApplyError::Entry {
        path: entry_path(entry),
        op,
        source,
    }
}

fn resolve_error(entry: &TarEntry, source: ResolveError) -> ApplyError {
    ApplyError::Resolve {
        path: entry_path(entry),
        source,
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
