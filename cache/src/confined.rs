//! Path resolution confined to a directory, as if that directory were `/`.
//!
//! Layer archives are untrusted and so is what earlier entries left on disk: any component may be
//! a symlink, absolute or relative, pointing anywhere. [`ConfinedRoot::resolve_dir`] walks one
//! component at a time with `openat(O_NOFOLLOW)` from descriptors it already holds, reading
//! symlinks itself and restarting absolute targets at the root; `..` never climbs above the root.
//! The result is a descriptor of a directory inside the root, plus its path relative to the
//! root; the caller then operates on one final name with `*at` calls that do not follow it.
//! Nothing here ever hands the kernel a multi-component path to resolve on its own.
//!
//! A root may sit on top of other layers ([`Below`]): a name missing from the root is then
//! looked up below, as overlayfs would show it. A symlink there is followed as if it were in the
//! root; a directory there is copied up (created in the root with its metadata), so what is
//! written lands where a process in the merged filesystem would put it.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Symlinks followed in one resolution before giving up (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// An open directory that paths are resolved inside of.
pub(crate) struct ConfinedRoot<'b> {
    fd: OwnedFd,
    below: Option<&'b dyn Below>,
}

impl std::fmt::Debug for ConfinedRoot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfinedRoot")
            .field("fd", &self.fd)
            .field("below", &self.below.is_some())
            .finish()
    }
}

/// The layers under a root that is the upper layer of a stack.
pub trait Below {
    /// What `path` (relative to the root, symlinks in its parents already resolved) is in the
    /// layers below, without following a final symlink; `None` when nothing is there.
    fn entry(&self, path: &Path) -> io::Result<Option<BelowEntry>>;
}

/// One name in the layers below a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BelowEntry {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A file, device, fifo or socket: never a directory to walk through.
    Other,
}

/// What one component of a path turned out to be.
enum Component {
    Absent,
    Dir,
    Symlink(Vec<u8>),
    NotADirectory,
}

/// A directory resolved inside the root.
#[derive(Debug)]
pub(crate) struct ResolvedDir {
    pub fd: OwnedFd,
    /// Path relative to the root, symlinks resolved.
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("too many levels of symbolic links")]
    TooManySymlinks,
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether to create missing directories on the way (with mode 0755).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    Create,
    Stop,
}

impl<'b> ConfinedRoot<'b> {
    /// A root whose missing names are looked up in `below`, when given.
    pub(crate) fn open_over(path: &Path, below: Option<&'b dyn Below>) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fd, below })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Resolves the directory named by `components` (already split, no `/`), following
    /// symlinks inside the root. Missing directories are treated lexically first (so
    /// `missing/../x` is `x`, as containerd resolves it); any still missing at the end are
    /// created with [`Missing::Create`], or give `Ok(None)` with [`Missing::Stop`].
    pub(crate) fn resolve_dir(
        &self,
        components: &[OsString],
        missing: Missing,
    ) -> Result<Option<ResolvedDir>, ResolveError> {
        let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
        // The directories walked so far below the root, with their names.
        let mut stack: Vec<(OwnedFd, OsString)> = Vec::new();
        // Names below the deepest existing directory, not (yet) on disk.
        let mut absent: Vec<OsString> = Vec::new();
        let mut symlinks = 0;
        while let Some(name) = pending.pop_front() {
            match name.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if absent.pop().is_none() {
                        stack.pop();
                    }
                    continue;
                }
                _ if !absent.is_empty() => {
                    absent.push(name);
                    continue;
                }
                _ => {}
            }
            let parent = stack.last().map_or(self.fd.as_fd(), |(fd, _)| fd.as_fd());
            let here = || relative_path(&stack, &name);
            let found =
                match rustix::fs::statat(parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
                        FileType::Symlink => Component::Symlink(
                            rustix::fs::readlinkat(parent, name.as_os_str(), Vec::new())
                                .map_err(|errno| io_error("read link", here(), errno))?
                                .into_bytes(),
                        ),
                        FileType::Directory => Component::Dir,
                        _ => Component::NotADirectory,
                    },
                    Err(Errno::NOENT) => self.below_component(parent, &name, &here())?,
                    Err(errno) => return Err(io_error("stat", here(), errno)),
                };
            match found {
                Component::Absent => absent.push(name),
                Component::Symlink(target) => {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(ResolveError::TooManySymlinks);
                    }
                    if target.starts_with(b"/") {
                        stack.clear();
                    }
                    for component in target.rsplit(|&b| b == b'/') {
                        pending.push_front(OsStr::from_bytes(component).to_owned());
                    }
                }
                Component::Dir => {
                    let fd = open_dir(parent, &name).map_err(|error| error.at(here()))?;
                    stack.push((fd, name));
                }
                Component::NotADirectory => return Err(ResolveError::NotADirectory(here())),
            }
        }
        if !absent.is_empty() && missing == Missing::Stop {
            return Ok(None);
        }
        for name in absent {
            let parent = stack.last().map_or(self.fd.as_fd(), |(fd, _)| fd.as_fd());
            let here = || relative_path(&stack, &name);
            match rustix::fs::mkdirat(parent, name.as_os_str(), Mode::from_raw_mode(0o755)) {
                // mkdir honours the umask; implicit parents are always 0755.
                Ok(()) => rustix::fs::chmodat(
                    parent,
                    name.as_os_str(),
                    Mode::from_raw_mode(0o755),
                    AtFlags::empty(),
                )
                .map_err(|errno| io_error("chmod", here(), errno))?,
                // Made by someone else in between: the open below checks what it is.
                Err(Errno::EXIST) => {}
                Err(errno) => return Err(io_error("create directory", here(), errno)),
            }
            let fd = open_dir(parent, &name).map_err(|error| error.at(here()))?;
            stack.push((fd, name));
        }
        let path = stack.iter().map(|(_, name)| name.as_os_str()).collect();
        let fd = match stack.pop() {
            Some((fd, _)) => fd,
            None => self.fd.try_clone().map_err(|source| ResolveError::Io {
                op: "duplicate descriptor of",
                path: PathBuf::new(),
                source,
            })?,
        };
        Ok(Some(ResolvedDir { fd, path }))
    }
}

impl ConfinedRoot<'_> {
    /// A name missing from the root, as the layers below show it; a directory there is
    /// copied up into `parent` so the walk can go on inside the root.
    fn below_component(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<Component, ResolveError> {
        let Some(below) = self.below else {
            return Ok(Component::Absent);
        };
        let entry = below.entry(path).map_err(|source| ResolveError::Io {
            op: "look up below",
            path: path.to_owned(),
            source,
        })?;
        Ok(match entry {
            None => Component::Absent,
            Some(BelowEntry::Symlink { target }) => Component::Symlink(target),
            Some(BelowEntry::Other) => Component::NotADirectory,
            Some(BelowEntry::Dir {
                mode,
                uid,
                gid,
                mtime,
            }) => {
                copy_up_dir(parent, name, mode, (uid, gid), mtime)
                    .map_err(|(op, errno)| io_error(op, path.to_owned(), errno))?;
                Component::Dir
            }
        })
    }
}

/// Creates `name` in `parent` with a lower directory's metadata (chown first: it clears
/// setuid/setgid bits).
fn copy_up_dir(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
    (uid, gid): (u32, u32),
    mtime: i64,
) -> Result<(), (&'static str, Errno)> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(errno) => return Err(("create directory", errno)),
    }
    rustix::fs::chownat(
        parent,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|errno| ("chown", errno))?;
    rustix::fs::chmodat(
        parent,
        name,
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )
    .map_err(|errno| ("chmod", errno))?;
    let time = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|errno| ("set mtime", errno))
}

/// Why opening a directory component failed, before the path is known.
enum OpenDirError {
    NotADirectory,
    Io(Errno),
}

impl OpenDirError {
    fn at(self, path: PathBuf) -> ResolveError {
        match self {
            Self::NotADirectory => ResolveError::NotADirectory(path),
            Self::Io(errno) => io_error("open directory", path, errno),
        }
    }
}

/// Opens `name` in `parent` as a directory, refusing symlinks.
fn open_dir(parent: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, OpenDirError> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| match errno {
        Errno::NOTDIR | Errno::LOOP => OpenDirError::NotADirectory,
        errno => OpenDirError::Io(errno),
    })
}

fn relative_path(stack: &[(OwnedFd, OsString)], last: &OsStr) -> PathBuf {
    let mut path: PathBuf = stack.iter().map(|(_, name)| name.as_os_str()).collect();
    path.push(last);
    path
}

fn io_error(op: &'static str, path: PathBuf, errno: Errno) -> ResolveError {
    ResolveError::Io {
        op,
        path,
        source: errno.into(),
    }
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, never following
/// symlinks. A missing `name` is not an error.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(()),
        Err(errno) => return Err(errno.into()),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::empty()));
    }
    let child = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child_name in list_dir(child.as_fd())? {
        remove_all_at(child.as_fd(), &child_name)?;
    }
    ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR))
}

/// Names in an open directory, without `.` and `..`.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // Reading needs a real (not O_PATH) descriptor of its own.
    let readable = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&readable)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

fn ignore_missing(result: rustix::io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn components(path: &str) -> Vec<OsString> {
        path.split('/').map(OsString::from).collect()
    }

    fn resolve(root: &ConfinedRoot, path: &str) -> Option<PathBuf> {
        root.resolve_dir(&components(path), Missing::Stop)
            .unwrap()
            .map(|dir| dir.path)
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fs_dirs(base, &["etc", "a/b"]);
        symlink("/etc", base.join("abs")).unwrap();
        symlink("../../../../etc", base.join("a/up")).unwrap();
        symlink("b/../../abs", base.join("a/chain")).unwrap();
        symlink("loop2", base.join("loop1")).unwrap();
        symlink("loop1", base.join("loop2")).unwrap();
        let root = ConfinedRoot::open_over(base, None).unwrap();
        assert_eq!(resolve(&root, "abs"), Some(PathBuf::from("etc")));
        assert_eq!(resolve(&root, "a/up"), Some(PathBuf::from("etc")));
        assert_eq!(resolve(&root, "a/chain"), Some(PathBuf::from("etc")));
        assert_eq!(resolve(&root, "../../.."), Some(PathBuf::new()));
        symlink("upandout/../../../etc", base.join("lexical")).unwrap();
        assert_eq!(resolve(&root, "lexical"), Some(PathBuf::from("etc")));
        assert!(!base.join("upandout").exists());
        assert_eq!(resolve(&root, "a/missing"), None);
        let error = root
            .resolve_dir(&components("loop1"), Missing::Stop)
            .unwrap_err();
        assert!(matches!(error, ResolveError::TooManySymlinks));
    }

    #[test]
    fn create_makes_missing_directories_inside_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("root");
        std::fs::create_dir(&base).unwrap();
        symlink("/nonexistent/deep", base.join("dangling")).unwrap();
        let root = ConfinedRoot::open_over(&base, None).unwrap();
        let resolved = root
            .resolve_dir(&components("dangling/x"), Missing::Create)
            .unwrap()
            .unwrap();
        assert_eq!(resolved.path, PathBuf::from("nonexistent/deep/x"));
        assert!(base.join("nonexistent/deep/x").is_dir());
        assert!(!Path::new("/nonexistent").exists());
    }

    #[test]
    fn file_as_parent_is_not_a_directory_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let root = ConfinedRoot::open_over(dir.path(), None).unwrap();
        let error = root
            .resolve_dir(&components("f/x"), Missing::Create)
            .unwrap_err();
        assert!(matches!(error, ResolveError::NotADirectory(_)), "{error}");
    }

    #[test]
    fn remove_all_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let root_path = dir.path().join("root");
        fs_dirs(&outside, &["keep"]);
        fs_dirs(&root_path, &["victim/sub"]);
        symlink(&outside, root_path.join("victim/sub/link")).unwrap();
        let root = ConfinedRoot::open_over(&root_path, None).unwrap();
        remove_all_at(root.fd(), OsStr::new("victim")).unwrap();
        assert!(!root_path.join("victim").exists());
        assert!(outside.join("keep").is_dir());
    }

    fn fs_dirs(base: &Path, dirs: &[&str]) {
        for dir in dirs {
            std::fs::create_dir_all(base.join(dir)).unwrap();
        }
    }
}
