//! Build-context hashing: a parallel walk of the context directory, a persistent stat cache so
//! unchanged files are never reread, Merkle digests per directory, and the digest of a COPY/ADD
//! source selection for cache keys.
//!
//! [`hash_context`] walks the context (rayon, one directory level at a time, entries sorted by
//! name, symlinks never followed), honouring a [`PathFilter`] (the frontend implements it for
//! `.dockerignore`). Every included path becomes an [`Entry`] with its type, mode, ownership, size
//! and content digest: sha256 of a file's bytes, of a symlink's target text, and for a directory
//! a digest over its children's names, types, modes and digests, so a directory's digest changes
//! exactly when something below it does. The result, a [`HashedContext`], answers
//! [`HashedContext::select`]: the entries and digest of a set of COPY sources (wildcards, the
//! source's own symlinks followed inside the context, `--exclude` filters).
//!
//! Invariants:
//! - Entries are in tree order: a directory comes right before its subtree, siblings sorted by
//!   name bytes. The context root is the entry with the empty path.
//! - A digest depends only on what a COPY without `--chown` reproduces: names, types, permission
//!   bits, contents and symlink targets; never on owners, timestamps or inode numbers. Copies of a
//!   context at different places digest alike.
//! - A regular file is read only when its stat data (size, mtime, ctime, inode, device, mode)
//!   differs from the stat cache's record, or when it changed too close to the walk to be trusted
//!   (see the `stat_cache` module).
//! - Non-UTF-8 names are refused unless the filter excludes them: paths are `str` throughout.

mod digest;
pub(crate) mod glob;
mod select;
mod stat_cache;
mod walk;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

pub use digest::ContentDigest;
pub use glob::GlobError;
pub use select::{SelectedSource, Selection};

/// How [`open_beneath`] may resolve a path below the context root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    /// Symlinks may be followed while they stay below the root (a Dockerfile that is a link to
    /// another file of the context).
    Inside,
    /// No symlink anywhere: for a path the context walk saw as symlink-free.
    Never,
}

/// Opens the regular file `relative` below the context `root` for reading, never leaving the
/// context: the context may change while a build reads it, and a file or directory swapped
/// for a symlink must not make the build read a host file.
pub fn open_beneath(root: &Path, relative: &Path, symlinks: Symlinks) -> io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    if symlinks == Symlinks::Never {
        resolve |= ResolveFlags::NO_SYMLINKS;
    }
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let file = match rustix::fs::openat2(&dir, relative, flags, Mode::empty(), resolve) {
        Ok(fd) => std::fs::File::from(fd),
        Err(errno @ (rustix::io::Errno::XDEV | rustix::io::Errno::LOOP)) => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: a symlink leads out of the build context{} ({errno})",
                    relative.display(),
                    if symlinks == Symlinks::Never {
                        " or replaced a file during the build"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Err(errno) => return Err(errno.into()),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a regular file", relative.display()),
        ));
    }
    Ok(file)
}

/// Decides which context paths are left out (`.dockerignore`, `COPY --exclude`). Paths are
/// relative and `/`-separated, never empty.
pub trait PathFilter: Sync {
    /// Whether `rel` is left out. `is_dir` is what the directory listing reports.
    fn excluded(&self, rel: &str, is_dir: bool) -> bool;

    /// Whether something strictly below the excluded directory `dir` may be included again (an
    /// exception pattern). When false the walk skips `dir` without reading it; answering true
    /// needlessly only costs time.
    fn may_include_below(&self, dir: &str) -> bool;
}

/// The filter that excludes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct IncludeAll;

impl PathFilter for IncludeAll {
    fn excluded(&self, _rel: &str, _is_dir: bool) -> bool {
        false
    }

    fn may_include_below(&self, _dir: &str) -> bool {
        false
    }
}

/// What kind of file an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink {
        target: String,
    },
    /// A fifo, socket or device node: `type_bits` is `st_mode & S_IFMT`, `rdev` the device.
    Other {
        type_bits: u32,
        rdev: u64,
    },
}

impl EntryKind {
    /// The tag digests record for this kind.
    fn type_tag(&self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
            EntryKind::Symlink { .. } => 3,
            EntryKind::Other { .. } => 4,
        }
    }
}

/// One included path of the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context root, `/`-separated; empty for the root itself.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// As `lstat` reports it (for files, the number of bytes hashed).
    pub size: u64,
    /// sha256 of a file's bytes or a symlink's target; the Merkle digest of a directory.
    pub digest: ContentDigest,
    /// The number of entries in this entry's subtree, itself included.
    subtree_len: usize,
}

impl Entry {
    /// The last path component (empty for the root).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
}

/// Counters of one [`hash_context`] run, for progress output and benchmarks.
#[derive(Debug, Default)]
pub struct HashStats {
    /// Entries included, the root among them.
    pub entries: usize,
    pub files: usize,
    /// Files whose contents were read (stat cache misses).
    pub files_hashed: usize,
    pub bytes_hashed: u64,
    /// Files whose digest came from the stat cache.
    pub cache_hits: usize,
    /// Records found in the stat cache file (0 when absent, corrupt or foreign).
    pub cache_records_loaded: usize,
    /// Files hashed but not recorded because they changed too close to the walk to be trusted.
    pub racy_files: usize,
    /// Whether the stat cache file was rewritten (it is left alone when nothing changed).
    pub cache_written: bool,
    /// Why the stat cache could not be saved; the hashing itself succeeded.
    pub cache_save_error: Option<ContextError>,
}

/// A hashed build context: its entries in tree order.
#[derive(Debug)]
pub struct HashedContext {
    root: PathBuf,
    /// `root` with symlinks resolved, to recognise absolute symlink targets inside the context.
    canonical_root: PathBuf,
    entries: Vec<Entry>,
    stats: HashStats,
}

impl HashedContext {
    /// The context directory as given to [`hash_context`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every included entry in tree order, the root first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The digest of the whole context (the root directory's Merkle digest).
    pub fn digest(&self) -> ContentDigest {
        // The root is always the first entry: the walk starts from it and never drops it.
        self.entries[0].digest
    }

    /// The entry at a context-relative path (`""` or `"."` for the root), symlinks not followed.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        let path = if path == "." {
            ""
        } else {
            path.trim_matches('/')
        };
        self.index_of(path).map(|index| &self.entries[index])
    }

    /// The entry at `path` and everything below it, in tree order.
    pub fn subtree(&self, path: &str) -> Option<&[Entry]> {
        let path = if path == "." {
            ""
        } else {
            path.trim_matches('/')
        };
        self.index_of(path).map(|index| self.subtree_at(index))
    }

    pub fn stats(&self) -> &HashStats {
        &self.stats
    }

    fn subtree_at(&self, index: usize) -> &[Entry] {
        let end = index + self.entries[index].subtree_len;
        &self.entries[index..end]
    }

    /// Binary search in tree order, which compares paths component by component.
    fn index_of(&self, path: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|entry| tree_order(&entry.path, path))
            .ok()
    }

    /// The indices of the direct children of the directory at `index`, in name order.
    fn children_of(&self, index: usize) -> impl Iterator<Item = usize> + '_ {
        let end = index + self.entries[index].subtree_len;
        let mut next = index + 1;
        std::iter::from_fn(move || {
            let child = next;
            (child < end).then(|| {
                next = child + self.entries[child].subtree_len;
                child
            })
        })
    }
}

/// Orders paths so that a directory directly precedes its subtree (`a`, `a/b`, `a-c`).
fn tree_order(left: &str, right: &str) -> std::cmp::Ordering {
    left.split('/').cmp(right.split('/'))
}

/// Why the context could not be hashed or a selection not resolved.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context: {path}: {error}")]
    Io {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("build context {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("build context: the name of {path} is not valid UTF-8")]
    NonUtf8Name { path: PathBuf },
    #[error("build context: the target of symlink {path} is not valid UTF-8")]
    NonUtf8Target { path: PathBuf },
    #[error("build context: {path} changed while it was being hashed")]
    ChangedWhileHashing { path: PathBuf },
    #[error("source `{requested}` is outside the build context{}", escape_detail(.link, .target))]
    SourceEscapes {
        requested: String,
        /// The symlink, relative to the context, whose target leads out.
        link: Option<String>,
        target: Option<String>,
    },
    #[error("source `{requested}`: `{missing}` does not exist in the build context")]
    SourceNotFound { requested: String, missing: String },
    #[error("source `{requested}`: `{path}` is not a directory")]
    SourceNotADirectory { requested: String, path: String },
    #[error("source `{requested}`: too many levels of symbolic links at `{link}`")]
    SymlinkLoop { requested: String, link: String },
    #[error("source `{requested}`: invalid wildcard `{component}`: {problem}")]
    BadPattern {
        requested: String,
        component: String,
        problem: GlobError,
    },
}

fn escape_detail(link: &Option<String>, target: &Option<String>) -> String {
    match (link, target) {
        (Some(link), Some(target)) => format!(" (symlink `{link}` points to `{target}`)"),
        _ => String::new(),
    }
}

impl ContextError {
    /// A suggestion for the person running the build, where one helps.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            ContextError::NonUtf8Name { .. } | ContextError::NonUtf8Target { .. } => {
                "rename it, or exclude it in .dockerignore"
            }
            ContextError::ChangedWhileHashing { .. } => {
                "something modified the build context during the build; run it again"
            }
            ContextError::SourceEscapes { .. } => {
                "sources are relative to the build context; move the file into the context or \
                 build from a directory that contains it"
            }
            ContextError::SourceNotFound { .. } => {
                "check the path, and whether .dockerignore excludes it"
            }
            ContextError::SymlinkLoop { .. } => "the symlinks point at each other in a cycle",
            ContextError::BadPattern { .. } => "escape a literal `*`, `?` or `[` with a backslash",
            ContextError::Io { .. }
            | ContextError::NotADirectory { .. }
            | ContextError::SourceNotADirectory { .. } => return None,
        })
    }

    fn io(path: impl Into<PathBuf>, error: io::Error) -> Self {
        ContextError::Io {
            path: path.into(),
            error,
        }
    }
}

/// The name of a context's stat cache directory under the state directory's `contexts/`: the
/// sha256 of the context's canonical absolute path, so each context directory has its own.
pub fn context_cache_id(context_root: &Path) -> io::Result<String> {
    let canonical = context_root.canonicalize()?;
    let digest = ContentDigest::finish(Sha256::new_with_prefix(
        canonical.as_os_str().as_encoded_bytes(),
    ));
    Ok(digest.hex())
}

/// Hashes the context directory `root`, leaving out what `filter` excludes. With `cache_dir`
/// (e.g. `<state>/contexts/<context_cache_id>`), file digests are reused from and saved to a
/// stat cache there; the directory is created when the cache is first written.
///
/// The walk and the hashing run on the current rayon pool.
pub fn hash_context(
    root: &Path,
    filter: &dyn PathFilter,
    cache_dir: Option<&Path>,
) -> Result<HashedContext, ContextError> {
    walk::hash_context_at(root, filter, cache_dir, SystemTime::now())
}
