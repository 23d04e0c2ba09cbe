//! A read-only, merged view of a stack of layer snapshots, in user space: what an overlay mount
//! of them would show, without mounting anything (so it works unprivileged and costs no
//! syscalls beyond `lstat`/`readlink`/`open`).
//!
//! Snapshots keep whiteouts in overlayfs form: a 0:0 character device hides a name in lower
//! layers; a directory with the `overlay.opaque` xattr hides the lower layers' contents. As in
//! overlayfs, directories merge across layers until a non-directory or an opaque directory cuts
//! the stack.
//!
//! Invariants:
//! - Paths are resolved one component at a time, and symlinks are read and resolved here,
//!   inside the view (absolute targets restart at the view's root, `..` stops at the root): the
//!   kernel is only ever handed paths whose every component was checked to be a real directory
//!   in that snapshot, and the last component is opened with `O_NOFOLLOW`.
//! - Snapshots are immutable, so a checked path stays checked.

use crate::path_io::{PathIoError, io_error};
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up (Linux's own limit).
pub(crate) const MAX_SYMLINKS: usize = 40;
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop { path: String },
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// The snapshots of an image or build step, lowest first.
#[derive(Debug, Clone)]
pub struct LayeredView {
    layers: Vec<PathBuf>,
}

/// A name found in the view.
#[derive(Debug, Clone)]
pub struct ViewEntry {
    /// The path inside the view, symlinks in its parents resolved.
    pub path: String,
    /// Where the top-most copy lives on the host.
    pub host_path: PathBuf,
    pub metadata: Metadata,
    /// For a directory: the snapshot directories that merge into it, top-most first.
    merged: Vec<PathBuf>,
}

impl ViewEntry {
    pub fn is_dir(&self) -> bool {
        self.metadata.is_dir()
    }

    pub fn is_symlink(&self) -> bool {
        self.metadata.file_type().is_symlink()
    }
}

impl LayeredView {
    /// A view of `layers`, lowest first. An empty list is the empty filesystem.
    pub fn new(layers: Vec<PathBuf>) -> Self {
        LayeredView { layers }
    }

    fn root(&self) -> Vec<PathBuf> {
        self.layers.iter().rev().cloned().collect()
    }

    /// Looks `path` up (absolute or relative to `/`). Symlinks in parent components are
    /// followed inside the view; the last one only when `follow` is set. `None` when the path
    /// does not exist (or a whiteout hides it).
    pub fn lookup(&self, path: &str, follow: bool) -> Result<Option<ViewEntry>, ViewError> {
        let mut hops = 0;
        self.lookup_from(Vec::new(), path, follow, &mut hops)
    }

    fn lookup_from(
        &self,
        base: Vec<OsString>,
        path: &str,
        follow: bool,
        hops: &mut usize,
    ) -> Result<Option<ViewEntry>, ViewError> {
        let mut pending: Vec<OsString> = Vec::new();
        let mut current = if path.starts_with('/') {
            Vec::new()
        } else {
            base
        };
        push_components(&mut pending, path);
        pending.reverse();
        let mut dirs = self.resolve_dirs(&current)?;
        while let Some(name) = pending.pop() {
            if name == ".." {
                current.pop();
                dirs = self.resolve_dirs(&current)?;
                continue;
            }
            let shown = display(&current, Some(&name));
            let Some(found) = find_in(&dirs, &name, &shown)? else {
                return Ok(None);
            };
            let last = pending.is_empty();
            if found.is_symlink() && (!last || follow) {
                *hops += 1;
                if *hops > MAX_SYMLINKS {
                    return Err(ViewError::SymlinkLoop { path: shown });
                }
                let target = std::fs::read_link(&found.host_path)
                    .map_err(io_error("readlink", &found.host_path))?;
                let mut target_components = Vec::new();
                push_components(&mut target_components, &target.to_string_lossy());
                if target.is_absolute() {
                    current.clear();
                }
                target_components.reverse();
                pending.extend(target_components);
                dirs = self.resolve_dirs(&current)?;
                continue;
            }
            if last {
                return Ok(Some(found));
            }
            if !found.is_dir() {
                return Err(ViewError::NotADirectory { path: shown });
            }
            current.push(name);
            dirs = found.merged;
        }
        // The path named the root (or only `.`/`..`). An empty view's root borrows the host
        // root's metadata: a root-owned 0755 directory, which is what `/` is in an image.
        let host_path = self.layers.last().cloned().unwrap_or_default();
        let metadata = match self.layers.last() {
            Some(top) => std::fs::symlink_metadata(top).map_err(io_error("stat", top))?,
            None => std::fs::symlink_metadata("/").map_err(io_error("stat", Path::new("/")))?,
        };
        Ok(Some(ViewEntry {
            path: display(&current, None),
            host_path,
            metadata,
            merged: dirs,
        }))
    }

    /// The merged snapshot directories of the directory at `components`, which are resolved
    /// names of real directories (lookups only ever push those).
    fn resolve_dirs(&self, components: &[OsString]) -> Result<Vec<PathBuf>, ViewError> {
        let mut dirs = self.root();
        for (index, name) in components.iter().enumerate() {
            let shown = display(&components[..index], Some(name));
            match find_in(&dirs, name, &shown)? {
                Some(entry) if entry.is_dir() => dirs = entry.merged,
                _ => return Err(ViewError::NotADirectory { path: shown }),
            }
        }
        Ok(dirs)
    }

    /// The merged listing of a directory: names sorted, whiteouts and hidden entries removed.
    pub fn read_dir(&self, dir: &ViewEntry) -> Result<Vec<ViewEntry>, ViewError> {
        let mut names: Vec<OsString> = Vec::new();
        for layer_dir in &dir.merged {
            let listing =
                std::fs::read_dir(layer_dir).map_err(io_error("read directory", layer_dir))?;
            for item in listing {
                let item = item.map_err(io_error("read directory", layer_dir))?;
                names.push(item.file_name());
            }
        }
        names.sort();
        names.dedup();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let shown = join_display(&dir.path, &name);
            if let Some(entry) = find_in(&dir.merged, &name, &shown)? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Opens a regular file found in the view, without following a final symlink.
    pub fn open(&self, entry: &ViewEntry) -> Result<File, ViewError> {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&entry.host_path)
            .map_err(|e| io_error("open", &entry.host_path)(e).into())
    }
}

/// Finds `name` in the merged directories `dirs` (top-most first): the top-most entry wins; a
/// whiteout hides the name; a directory merges with directories below it until an opaque one
/// or a non-directory.
fn find_in(dirs: &[PathBuf], name: &OsStr, shown: &str) -> Result<Option<ViewEntry>, ViewError> {
    let mut found: Option<ViewEntry> = None;
    for dir in dirs {
        let host_path = dir.join(name);
        let metadata = match std::fs::symlink_metadata(&host_path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error)
                if error.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                continue;
            }
            Err(source) => {
                return Err(ViewError::Io(PathIoError::new("stat", &host_path, source)));
            }
        };
        let whiteout = metadata.file_type().is_char_device() && metadata.rdev() == 0;
        match &mut found {
            None if whiteout => return Ok(None),
            None => {
                let is_dir = metadata.is_dir();
                let opaque = is_dir && is_opaque(&host_path);
                found = Some(ViewEntry {
                    path: shown.to_string(),
                    host_path: host_path.clone(),
                    metadata,
                    merged: if is_dir { vec![host_path] } else { Vec::new() },
                });
                if !is_dir || opaque {
                    break;
                }
            }
            Some(upper) => {
                if !metadata.is_dir() {
                    break;
                }
                let opaque = is_opaque(&host_path);
                upper.merged.push(host_path);
                if opaque {
                    break;
                }
            }
        }
    }
    Ok(found)
}

fn is_opaque(dir: &Path) -> bool {
    OPAQUE_XATTRS.iter().any(|name| {
        let mut value = [0u8; 4];
        matches!(rustix::fs::lgetxattr(dir, *name, &mut value), Ok(1) if value[0] == b'y')
    })
}

/// Splits a path into normal components and `..` (`.` and empty ones dropped).
fn push_components(out: &mut Vec<OsString>, path: &str) {
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => out.push(name.to_os_string()),
            Component::ParentDir => out.push(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

fn display(components: &[OsString], last: Option<&OsStr>) -> String {
    let mut path = String::from("/");
    let all = components.iter().map(OsString::as_os_str).chain(last);
    let parts: Vec<String> = all
        .map(|part| String::from_utf8_lossy(part.as_bytes()).into_owned())
        .collect();
    path.push_str(&parts.join("/"));
    path
}

fn join_display(dir: &str, name: &OsStr) -> String {
    let name = String::from_utf8_lossy(name.as_bytes());
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests;
