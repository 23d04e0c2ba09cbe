//! Paths inside the container's root filesystem, resolved as if it were `/`.
//!
//! The walk has `openat2(RESOLVE_IN_ROOT)`'s semantics (`..` stops at the root, absolute
//! symlinks restart from it) but goes one component at a time, each opened with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, so that it can
//! - create what is missing (mount targets, the working directory), and
//! - know the real path it ends at, with every symlink resolved (needed to unmount later and to
//!   find imgb's own stubs in the overlay's upper directory).
//!
//! Symlinks are read and their text re-interpreted inside the root; a symlink on procfs (the
//! magic `/proc/<pid>/fd/N`, `/proc/self/root`, ...) is refused outright, as the targets they
//! name are not paths in the container.
//!
//! Invariant: nothing outside the directory behind `root` is ever opened, created or named.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

/// Symlinks followed in one resolution, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// What to create when the path (or part of it) is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    Nothing,
    /// Missing directories, the last one included.
    Dir,
    /// Missing directories, then an empty file as the last component.
    File,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("{path}: {op} {at:?}: {source}")]
    Io {
        path: String,
        op: &'static str,
        at: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: more than {MAX_SYMLINKS} symlinks")]
    TooManyLinks { path: String },
    #[error("{path}: {at:?} is not a directory")]
    NotADirectory { path: String, at: PathBuf },
    #[error(
        "{path}: {at:?} is a /proc link, which would lead outside the container \
         (hint: name the directory itself, not a /proc/<pid>/... alias)"
    )]
    ProcLink { path: String, at: PathBuf },
}

/// A resolved path: an `O_PATH` descriptor and the real path relative to the root.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

/// Paths created in the overlay only so that something could be mounted on them; they are
/// removed from the upper directory before it becomes a layer.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stubs {
    /// Relative to the root, each after its parent.
    pub created: Vec<PathBuf>,
    /// Existing directories that got a stub (so the overlay copied them up), as they were.
    pub parents: Vec<StubParent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StubParent {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The root of a resolution: a directory descriptor and the device of its filesystem (creations
/// on other filesystems, e.g. in imgb's own `/dev` tmpfs, are not stubs of the overlay).
#[derive(Debug)]
pub(crate) struct Root<'a> {
    fd: BorrowedFd<'a>,
    dev: u64,
}

impl<'a> Root<'a> {
    pub fn new(fd: BorrowedFd<'a>) -> io::Result<Self> {
        let dev = rustix::fs::fstat(fd)?.st_dev;
        Ok(Self { fd, dev })
    }
}

/// Resolves `path` under `root`, creating what is missing as `create` says; creations are
/// recorded in `stubs` when given.
pub(crate) fn resolve(
    root: &Root<'_>,
    path: &str,
    create: Create,
    mut stubs: Option<&mut Stubs>,
) -> Result<Resolved, ResolveError> {
    let mut walk = Walk {
        path,
        stack: Vec::new(),
        created: HashSet::new(),
    };
    let mut pending: VecDeque<OsString> = components(path.as_bytes()).collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            walk.stack.pop();
            continue;
        }
        let is_last = pending.is_empty();
        let dir = walk.current(root);
        let opened = rustix::fs::openat2(
            dir,
            &name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        );
        let fd = match opened {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if create != Create::Nothing => {
                let kind = if is_last { create } else { Create::Dir };
                walk.create(root, &name, kind, stubs.as_deref_mut())?;
                pending.push_front(name);
                continue;
            }
            Err(errno) => return Err(walk.error("open", &name, errno.into())),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| walk.error("stat", &name, e.into()))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ResolveError::TooManyLinks {
                        path: path.to_string(),
                    });
                }
                if is_procfs(&fd) {
                    return Err(ResolveError::ProcLink {
                        path: path.to_string(),
                        at: walk.real_path(&name),
                    });
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new())
                    .map_err(|e| walk.error("read link", &name, e.into()))?;
                let target = target.as_bytes();
                if target.first() == Some(&b'/') {
                    walk.stack.clear();
                }
                for component in components(target).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(component);
                }
            }
            FileType::Directory => walk.stack.push((name, fd)),
            _ if is_last => walk.stack.push((name, fd)),
            _ => {
                return Err(ResolveError::NotADirectory {
                    path: path.to_string(),
                    at: walk.real_path(&name),
                });
            }
        }
    }
    let real = walk.real_path(OsStr::new(""));
    let fd = match walk.stack.pop() {
        Some((_, fd)) => fd,
        None => rustix::io::fcntl_dupfd_cloexec(root.fd, 0)
            .map_err(|e| walk.error("duplicate", OsStr::new("/"), e.into()))?,
    };
    Ok(Resolved { fd, path: real })
}

/// The normal components of a path (empty and `.` dropped; `..` kept for the walk).
fn components(path: &[u8]) -> impl Iterator<Item = OsString> + '_ {
    path.split(|&b| b == b'/')
        .filter(|part| !part.is_empty() && *part != b".")
        .map(|part| OsStr::from_bytes(part).to_owned())
}

fn is_procfs(fd: &OwnedFd) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|stat| stat.f_type == PROC_SUPER_MAGIC)
}

struct Walk<'p> {
    path: &'p str,
    /// The directories walked into below the root, with their names.
    stack: Vec<(OsString, OwnedFd)>,
    /// Real paths created by this walk (their parents are not "existing" stub parents).
    created: HashSet<PathBuf>,
}

impl Walk<'_> {
    fn current<'r>(&'r self, root: &Root<'r>) -> BorrowedFd<'r> {
        self.stack.last().map_or(root.fd, |(_, fd)| fd.as_fd())
    }

    /// The real path of `name` in the current directory (or of the directory itself).
    fn real_path(&self, name: &OsStr) -> PathBuf {
        let mut path: PathBuf = self
            .stack
            .iter()
            .map(|(part, _)| part.as_os_str())
            .collect();
        if !name.is_empty() {
            path.push(name);
        }
        path
    }

    fn error(&self, op: &'static str, name: &OsStr, source: io::Error) -> ResolveError {
        ResolveError::Io {
            path: self.path.to_string(),
            op,
            at: self.real_path(name),
            source,
        }
    }

    fn create(
        &mut self,
        root: &Root<'_>,
        name: &OsStr,
        kind: Create,
        stubs: Option<&mut Stubs>,
    ) -> Result<(), ResolveError> {
        let dir = self.current(root);
        let made = match kind {
            Create::File => rustix::fs::openat(
                dir,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop),
            _ => rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)),
        };
        match made {
            Ok(()) => {}
            // Someone made it in between: the retry finds it.
            Err(rustix::io::Errno::EXIST) => return Ok(()),
            Err(errno) => return Err(self.error("create", name, errno.into())),
        }
        let path = self.real_path(name);
        let parent = self.real_path(OsStr::new(""));
        let Some(stubs) = stubs else {
            self.created.insert(path);
            return Ok(());
        };
        let parent_stat = rustix::fs::fstat(dir).map_err(|e| self.error("stat", name, e.into()))?;
        if parent_stat.st_dev == root.dev {
            let is_new_parent = self.created.contains(&parent) || stubs.created.contains(&parent);
            let recorded = stubs.parents.iter().any(|known| known.path == parent);
            if !is_new_parent && !recorded && !parent.as_os_str().is_empty() {
                stubs.parents.push(StubParent {
                    path: parent,
                    mode: parent_stat.st_mode & 0o7777,
                    uid: parent_stat.st_uid,
                    gid: parent_stat.st_gid,
                });
            }
            stubs.created.push(path.clone());
        }
        self.created.insert(path);
        Ok(())
    }
}

/// Where the root's own mounts and files are named in errors: `/` + the real path.
pub(crate) fn display(path: &Path) -> String {
    format!("/{}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn root_dir() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        (dir, fd)
    }

    #[test]
    fn absolute_and_dotdot_symlinks_stay_inside_the_root() {
        let (dir, fd) = root_dir();
        let root = Root::new(fd.as_fd()).unwrap();
        fs::create_dir_all(dir.path().join("real/sub")).unwrap();
        symlink("/real", dir.path().join("abs")).unwrap();
        symlink("../../../../real", dir.path().join("real/sub/up")).unwrap();
        let resolved = resolve(&root, "/abs/sub/up/sub", Create::Nothing, None).unwrap();
        assert_eq!(resolved.path, Path::new("real/sub"));
        let resolved = resolve(&root, "/../../..", Create::Nothing, None).unwrap();
        assert_eq!(resolved.path, Path::new(""));
    }

    #[test]
    fn missing_target_through_dangling_symlink_is_created_inside_and_recorded() {
        let (dir, fd) = root_dir();
        let root = Root::new(fd.as_fd()).unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        symlink(
            "/../run/resolve/stub.conf",
            dir.path().join("etc/resolv.conf"),
        )
        .unwrap();
        let mut stubs = Stubs::default();
        let resolved = resolve(&root, "/etc/resolv.conf", Create::File, Some(&mut stubs)).unwrap();
        assert_eq!(resolved.path, Path::new("run/resolve/stub.conf"));
        assert!(dir.path().join("run/resolve/stub.conf").is_file());
        assert_eq!(
            stubs.created,
            vec![
                PathBuf::from("run"),
                PathBuf::from("run/resolve"),
                PathBuf::from("run/resolve/stub.conf")
            ]
        );
        // The root itself is never a stub parent; nothing pre-existing got a stub here.
        assert!(stubs.parents.is_empty());
    }

    #[test]
    fn stub_in_existing_directory_records_the_directory_as_it_was() {
        let (dir, fd) = root_dir();
        let root = Root::new(fd.as_fd()).unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::set_permissions(
            dir.path().join("etc"),
            std::os::unix::fs::PermissionsExt::from_mode(0o750),
        )
        .unwrap();
        let mut stubs = Stubs::default();
        resolve(&root, "etc/hosts", Create::File, Some(&mut stubs)).unwrap();
        assert_eq!(stubs.created, vec![PathBuf::from("etc/hosts")]);
        assert_eq!(stubs.parents.len(), 1);
        assert_eq!(stubs.parents[0].path, Path::new("etc"));
        assert_eq!(stubs.parents[0].mode, 0o750);
    }

    #[test]
    fn symlink_loop_is_an_error_not_a_hang() {
        let (dir, fd) = root_dir();
        let root = Root::new(fd.as_fd()).unwrap();
        symlink("/b", dir.path().join("a")).unwrap();
        symlink("/a", dir.path().join("b")).unwrap();
        let error = resolve(&root, "/a/x", Create::Dir, None).unwrap_err();
        assert!(
            matches!(error, ResolveError::TooManyLinks { .. }),
            "{error}"
        );
    }

    #[test]
    fn file_in_the_middle_of_a_path_is_not_a_directory() {
        let (dir, fd) = root_dir();
        let root = Root::new(fd.as_fd()).unwrap();
        fs::write(dir.path().join("file"), b"x").unwrap();
        let error = resolve(&root, "/file/below", Create::Dir, None).unwrap_err();
        assert!(
            matches!(error, ResolveError::NotADirectory { .. }),
            "{error}"
        );
    }

    #[test]
    fn proc_magic_links_are_refused() {
        let fd = rustix::fs::open(
            "/proc/self",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let root = Root::new(fd.as_fd()).unwrap();
        let error = resolve(&root, "/root/etc", Create::Nothing, None).unwrap_err();
        assert!(matches!(error, ResolveError::ProcLink { .. }), "{error}");
    }
}
