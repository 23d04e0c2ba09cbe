//! Mount primitives on the new mount API (`fsopen`/`fsmount`/`open_tree`/`move_mount`): every
//! mount is made detached and attached onto a descriptor that was resolved inside the root
//! filesystem, so no path is looked up again between the check and the mount.
//!
//! Device policy: without a device cgroup, the kernel would let the container's root open any
//! device node it can create (it keeps `CAP_MKNOD`, as in Docker). So every mount imgb gives
//! the container is `nodev` (the root filesystem, `/dev`, tmpfs and bind mounts), and the few
//! device nodes a container needs are bind mounts of nodes that live outside its reach.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{CWD, StatVfsMountFlags};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, OpenTreeFlags,
};

/// A filesystem mount, made but not attached yet (or attached, if [`attach`] was called).
#[derive(Debug)]
pub(crate) struct Detached(pub OwnedFd);

impl AsFd for Detached {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A filesystem context being configured; errors carry the kernel's own explanation, which
/// `fsopen` contexts keep as messages (e.g. "overlayfs: failed to resolve ...").
struct FsContext {
    fd: OwnedFd,
    fs_type: &'static str,
}

impl FsContext {
    fn open(fs_type: &'static str) -> io::Result<Self> {
        let fd = rustix::mount::fsopen(fs_type, FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(|errno| annotate(errno.into(), &format!("fsopen {fs_type}")))?;
        Ok(Self { fd, fs_type })
    }

    fn set(&self, key: &str, value: impl AsRef<Path>) -> io::Result<()> {
        rustix::mount::fsconfig_set_string(&self.fd, key, value.as_ref())
            .map_err(|errno| self.error(errno, &format!("option {key}={:?}", value.as_ref())))
    }

    fn flag(&self, key: &str) -> io::Result<()> {
        rustix::mount::fsconfig_set_flag(&self.fd, key)
            .map_err(|errno| self.error(errno, &format!("option {key}")))
    }

    fn mount(self, attributes: MountAttrFlags) -> io::Result<Detached> {
        rustix::mount::fsconfig_create(&self.fd).map_err(|errno| self.error(errno, "create"))?;
        rustix::mount::fsmount(&self.fd, FsMountFlags::FSMOUNT_CLOEXEC, attributes)
            .map(Detached)
            .map_err(|errno| self.error(errno, "fsmount"))
    }

    fn error(&self, errno: rustix::io::Errno, what: &str) -> io::Error {
        let mut detail = String::new();
        let mut buffer = [0u8; 1024];
        // Each read returns one message ("e ...", "w ...", "i ..."), ENODATA when drained.
        while let Ok(len) = rustix::io::read(&self.fd, &mut buffer) {
            if len == 0 {
                break;
            }
            detail.push_str("; ");
            detail.push_str(&String::from_utf8_lossy(
                buffer.get(..len).unwrap_or_default(),
            ));
        }
        annotate(errno.into(), &format!("{} {what}{detail}", self.fs_type))
    }
}

fn annotate(error: io::Error, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// The root filesystem: `lowers` (bottom first, read-only, never modified) under a writable
/// `upper`. `lowerdir+` takes one directory per call (Linux 6.8), so there is no limit from the
/// mount option page, only overlayfs' own (500 layers). A directory repeated in `lowers` is
/// mounted once, at its top-most position. `userxattr` is for user namespaces,
/// where overlayfs keeps its markers in `user.overlay.*`.
///
/// `redirect_dir` and `metacopy` stay off: the upper directory must be a self-contained diff
/// (a renamed lower directory is copied up whole instead of becoming a redirect).
pub(crate) fn overlay(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    userxattr: bool,
    attributes: MountAttrFlags,
) -> io::Result<Detached> {
    let context = FsContext::open("overlay")?;
    // The first lower directory given is the top one. overlayfs refuses a directory given twice
    // (ELOOP), which happens when two steps produced the same layer; only the top-most copy
    // matters, since it shadows everything the lower copy shows.
    let mut given = std::collections::HashSet::new();
    for lower in lowers.iter().rev().filter(|lower| given.insert(**lower)) {
        context.set("lowerdir+", lower).map_err(|error| {
            if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
                io::Error::new(
                    error.kind(),
                    format!("{error} (hint: overlayfs lowerdir+ needs Linux 6.8 or later)"),
                )
            } else {
                error
            }
        })?;
    }
    context.set("upperdir", upper)?;
    context.set("workdir", work)?;
    if userxattr {
        // With user xattrs redirects are never followed (redirect_dir=nofollow, the default
        // there); "off" would mean "follow" and conflict.
        context.flag("userxattr")?;
    } else {
        context.set("redirect_dir", "off")?;
    }
    context.set("metacopy", "off")?;
    context.set("index", "off")?;
    context.mount(attributes)
}

/// A fresh instance of a pseudo filesystem (`proc`, `sysfs`, `tmpfs`, `devpts`, ...).
pub(crate) fn fresh(
    fs_type: &'static str,
    options: &[(&str, &str)],
    flags: &[&str],
    attributes: MountAttrFlags,
) -> io::Result<Detached> {
    let context = FsContext::open(fs_type)?;
    for (key, value) in options {
        context.set(key, value)?;
    }
    for flag in flags {
        context.flag(flag)?;
    }
    context.mount(attributes)
}

/// A copy of the mount tree at `path` (relative to `dir`), detached.
pub(crate) fn clone_tree(
    dir: BorrowedFd<'_>,
    path: &Path,
    recursive: bool,
) -> io::Result<Detached> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    if path.as_os_str().is_empty() {
        flags |= OpenTreeFlags::AT_EMPTY_PATH;
    }
    rustix::mount::open_tree(dir, path, flags)
        .map(Detached)
        .map_err(|errno| annotate(errno.into(), &format!("clone mount {}", path.display())))
}

/// Attaches `mount` on the file or directory behind `target` (an `O_PATH` descriptor).
pub(crate) fn attach(mount: &Detached, target: BorrowedFd<'_>) -> io::Result<()> {
    rustix::mount::move_mount(
        mount,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|errno| annotate(errno.into(), "attach mount"))
}

/// Attaches `mount` at `path` (relative to `dir`, or the current directory).
pub(crate) fn attach_at(
    mount: &Detached,
    dir: Option<BorrowedFd<'_>>,
    path: &Path,
) -> io::Result<()> {
    rustix::mount::move_mount(
        mount,
        "",
        dir.unwrap_or(CWD),
        path,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|errno| annotate(errno.into(), &format!("attach mount at {}", path.display())))
}

/// Re-mounts an attached bind mount `nodev` (and read-only when asked), keeping the flags it
/// has: in a user namespace, flags inherited from a more privileged mount are locked and
/// dropping one fails with EPERM.
pub(crate) fn restrict(mount: &Detached, read_only: bool) -> io::Result<()> {
    let current = rustix::fs::fstatvfs(mount)
        .map_err(|errno| annotate(errno.into(), "statvfs mount"))?
        .f_flag;
    let mut flags = MountFlags::BIND | MountFlags::NODEV;
    for (stat, mount_flag) in [
        (StatVfsMountFlags::RDONLY, MountFlags::RDONLY),
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ] {
        if current.contains(stat) {
            flags |= mount_flag;
        }
    }
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    rustix::mount::mount_remount(fd_path(mount.as_fd()), flags, "")
        .map_err(|errno| annotate(errno.into(), "remount nodev/read-only"))
}

/// `/proc/self/fd/N`: the object behind a descriptor, for calls that take only paths.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The attributes of every mount the container gets besides `/proc` and `/sys`.
pub(crate) const CONTAINER_ATTRIBUTES: MountAttrFlags = MountAttrFlags::MOUNT_ATTR_NODEV;

/// `nosuid,nodev,noexec`, for pseudo filesystems.
pub(crate) fn pseudo_attributes() -> MountAttrFlags {
    MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC
}
