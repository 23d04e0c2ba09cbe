//! The runner's only `unsafe` code: the kernel calls whose safe wrappers do not exist.
//!
//! - `unshare(2)`: rustix marks it `unsafe` because `CLONE_FILES` can split a thread's file
//!   descriptor table from its siblings'. The init stages are single-threaded and never pass
//!   `CLONE_FILES` or `CLONE_FS`, which [`unshare`] refuses, so the hazard cannot arise.
//! - Marking inherited descriptors close-on-exec: their numbers come from `/proc/self/fd`, so
//!   they must be borrowed from raw integers.
//! - `kill(-1, SIGKILL)`: rustix has no call for "every process I may signal", only ones that
//!   take a positive pid, so it goes through libc.
//!
//! Everything else in the crate goes through rustix's safe API.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use rustix::io::FdFlags;
use rustix::thread::UnshareFlags;

/// Moves the calling (single-threaded) process into new namespaces.
pub(crate) fn unshare(flags: UnshareFlags) -> io::Result<()> {
    let table_splitting = UnshareFlags::FILES | UnshareFlags::FS;
    if flags.intersects(table_splitting) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unshare of the descriptor table or fs context is not supported",
        ));
    }
    // SAFETY: neither CLONE_FILES nor CLONE_FS is requested (checked above), so no thread can
    // end up with a descriptor table that differs from its siblings'; the init stages are
    // single-threaded in any case.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// Sets close-on-exec on every open descriptor from `first` up, so that nothing the process
/// inherited (a jobserver pipe, a shell's redirection) reaches the container.
pub(crate) fn mark_cloexec_from(first: RawFd) -> io::Result<()> {
    // Collect first: the directory handle itself is one of the descriptors.
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let name = entry?.file_name();
        if let Some(fd) = name.to_str().and_then(|name| name.parse::<RawFd>().ok())
            && fd >= first
        {
            fds.push(fd);
        }
    }
    for fd in fds {
        // SAFETY: `fd` was listed in /proc/self/fd a moment ago and this single-threaded
        // process has closed nothing since, except the listing's own directory handle: for
        // that number fcntl fails with EBADF, which is ignored below. The borrow lives only
        // for this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match rustix::io::fcntl_getfd(borrowed) {
            Ok(flags) => rustix::io::fcntl_setfd(borrowed, flags | FdFlags::CLOEXEC)?,
            Err(rustix::io::Errno::BADF) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

/// Sends SIGKILL to every process the caller may signal, except itself. Called by PID 1 of a
/// pid namespace, that is every other process of the namespace, in one step: the kernel
/// signals them under the lock that a fork must take to add its child, and a fork whose parent
/// has a pending SIGKILL fails, so no process escapes by being born during the kill.
pub(crate) fn kill_all_others() -> io::Result<()> {
    // SAFETY: kill(2) takes no pointers and touches no memory of this process.
    let result = unsafe { libc::kill(-1, libc::SIGKILL) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
