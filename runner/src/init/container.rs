//! PID 1 of the container: builds it, starts the command, reaps, reports.
//!
//! Order of work, all before `pivot_root` unless said otherwise:
//! 1. New mount, UTS, IPC (and network, for `none`) namespaces; `/` made private so nothing
//!    propagates back to the host; hostname; loopback up.
//! 2. The overlay root filesystem (`nodev`), then `/proc` (with Docker's masked and read-only
//!    paths), `/dev`, `/sys` (read-only), the provided files and the step's mounts. Every
//!    target is resolved inside the root filesystem ([`crate::resolve`]); what had to be
//!    created for a mount is a stub, reported so that it stays out of the layer.
//! 3. The working directory (created if missing) and the user, from the image's own files.
//! 4. `pivot_root`, the old root detached: from here no host path is reachable.
//! 5. The command starts through the `exec` stage (started before the pivot, waiting for
//!    its spec); every child is reaped until the command ends; then whatever it left running
//!    is killed, and provided files the command changed are written through to the overlay
//!    when the step is committed.
//!
//! PID 1 keeps full privileges (it must unmount at the end) and is made non-dumpable, so the
//! container's processes can neither trace it nor open `/proc/1/exe` (the host's binary).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use rustix::fs::{CWD, FileType, Mode, OFlags};
use rustix::mount::{MountAttrFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{DumpableBehavior, Pid, Signal, WaitOptions};
use rustix::thread::UnshareFlags;

use super::{Context, StageError, sibling_stage_from, take_control_socket};
use crate::mounts::{self, CONTAINER_ATTRIBUTES, Detached, pseudo_attributes};
use crate::protocol::{ContainerReport, ContainerSpec, Ended, ExecSpec, RunDir};
use crate::resolve::{self, Create, Root, Stubs};
use crate::spec::{DEFAULT_PATH, MountKind, Network};
use crate::users::{ExecUser, resolve_user};

/// Docker's masked `/proc` and `/sys` entries: files get `/dev/null`, directories an empty
/// read-only tmpfs.
const MASKED_PROC: [&str; 10] = [
    "acpi",
    "asound",
    "interrupts",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
];
const MASKED_SYS: [&str; 2] = ["firmware", "devices/virtual/powercap"];
/// Docker's read-only `/proc` entries (`/proc/sys` and `/proc/sysrq-trigger` above all).
const READ_ONLY_PROC: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];

/// `/dev` character devices: name, major, minor.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

pub(super) fn main() -> Result<ExitCode, StageError> {
    let mut supervisor = take_control_socket()?;
    // If the pid namespace's holder dies, so does the container.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .context(|| "setting the parent death signal".into())?;
    let spec: ContainerSpec = supervisor
        .recv()
        .context(|| "reading the container spec".into())?
        .ok_or_else(|| StageError("no container spec".into()))?;
    let report = run(&spec).unwrap_or_else(|error| ContainerReport::Failed { message: error.0 });
    supervisor
        .send(&report)
        .context(|| "sending the report".into())?;
    Ok(ExitCode::SUCCESS)
}

fn run(spec: &ContainerSpec) -> Result<ContainerReport, StageError> {
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .context(|| "making PID 1 non-dumpable".into())?;
    // Modes below are meant as written; the command gets 0022 back in the exec stage.
    rustix::process::umask(Mode::empty());
    enter_namespaces(spec)?;

    let run_dir = RunDir(&spec.run_dir);
    let rootfs = mount_rootfs(spec, &run_dir)?;
    let root = Root::new(rootfs.as_fd()).context(|| "stat of the root filesystem".into())?;
    let mut stubs = Stubs::default();
    mount_proc(&root, &mut stubs)?;
    mount_dev(&root, &mut stubs, &run_dir, spec.rootless)?;
    mount_sys(&root, &mut stubs)?;
    let provided = mount_provided_files(spec, &run_dir, &root, &mut stubs)?;
    mount_step_mounts(spec, &run_dir, &root, &mut stubs)?;

    let cwd = resolve::resolve(&root, &spec.cwd, Create::Dir, None)
        .context(|| format!("working directory {}", spec.cwd))?;
    if FileType::from_raw_mode(
        rustix::fs::fstat(&cwd.fd)
            .context(|| "stat of the working directory".into())?
            .st_mode,
    ) != FileType::Directory
    {
        return Err(StageError(format!(
            "working directory {}: not a directory",
            spec.cwd
        )));
    }
    let user = read_user(&root, &spec.user)?;
    drop(cwd.fd);
    let command = start_exec_stage(&run_dir)?;
    pivot_into(&rootfs)?;

    let exec = ExecSpec {
        argv: spec.argv.clone(),
        env: command_env(&spec.env, &user),
        cwd: resolve::display(&cwd.path),
        uid: user.uid,
        gid: user.gid,
        groups: user.process_groups(),
        no_new_privileges: spec.no_new_privileges,
    };
    let ended = run_command(command, &exec)?;
    kill_everything_else();

    if spec.commit && ended == Ended::Exited(0) {
        write_back_changed_files(&provided, &mut stubs)?;
    }
    Ok(ContainerReport::Exited { ended, stubs })
}

fn enter_namespaces(spec: &ContainerSpec) -> Result<(), StageError> {
    let mut flags = UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC;
    if spec.network == Network::None {
        flags |= UnshareFlags::NEWNET;
    }
    crate::sys::unshare(flags).context(|| "creating the container's namespaces".into())?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .context(|| "making / private".into())?;
    rustix::system::sethostname(spec.hostname.as_bytes())
        .context(|| format!("setting the hostname {:?}", spec.hostname))?;
    if spec.network == Network::None {
        crate::netlink::loopback_up().context(|| "bringing up the loopback interface".into())?;
    }
    Ok(())
}

fn mount_rootfs(spec: &ContainerSpec, run_dir: &RunDir<'_>) -> Result<Detached, StageError> {
    let empty = run_dir.empty_lower();
    let lowers: Vec<&Path> = if spec.lower_dirs.is_empty() {
        vec![&empty]
    } else {
        spec.lower_dirs.iter().map(PathBuf::as_path).collect()
    };
    let rootfs = mounts::overlay(
        &lowers,
        &run_dir.upper(),
        &run_dir.work(),
        spec.rootless,
        CONTAINER_ATTRIBUTES,
    )
    .context(|| format!("mounting the root filesystem ({} layers)", lowers.len()))?;
    mounts::attach_at(&rootfs, None, &run_dir.rootfs())
        .context(|| "attaching the root filesystem".into())?;
    Ok(rootfs)
}

/// Resolves a mount target (created if missing) and refuses the root itself.
fn target(
    root: &Root<'_>,
    path: &str,
    create: Create,
    stubs: &mut Stubs,
) -> Result<resolve::Resolved, StageError> {
    let resolved = resolve::resolve(root, path, create, Some(stubs))
        .context(|| format!("mount target {path}"))?;
    if resolved.path.as_os_str().is_empty() {
        return Err(StageError(format!(
            "mount target {path} resolves to the root directory itself"
        )));
    }
    let kind = FileType::from_raw_mode(
        rustix::fs::fstat(&resolved.fd)
            .context(|| format!("stat of mount target {path}"))?
            .st_mode,
    );
    let expected_dir = create == Create::Dir;
    if (kind == FileType::Directory) != expected_dir {
        return Err(StageError(format!(
            "mount target {path} (at {}) is {}a directory, unlike what is mounted there",
            resolve::display(&resolved.path),
            if expected_dir { "not " } else { "" }
        )));
    }
    Ok(resolved)
}

fn mount_proc(root: &Root<'_>, stubs: &mut Stubs) -> Result<(), StageError> {
    let at = target(root, "/proc", Create::Dir, stubs)?;
    let proc = mounts::fresh("proc", &[], &[], pseudo_attributes()).context(|| {
        "mounting /proc (hint: rootless needs a fully visible /proc on the host)".into()
    })?;
    mounts::attach(&proc, at.fd.as_fd()).context(|| "attaching /proc".into())?;
    for name in MASKED_PROC {
        mask(proc.as_fd(), name).context(|| format!("masking /proc/{name}"))?;
    }
    for name in READ_ONLY_PROC {
        read_only(proc.as_fd(), name).context(|| format!("making /proc/{name} read-only"))?;
    }
    Ok(())
}

fn mount_sys(root: &Root<'_>, stubs: &mut Stubs) -> Result<(), StageError> {
    let at = target(root, "/sys", Create::Dir, stubs)?;
    let attributes = pseudo_attributes() | MountAttrFlags::MOUNT_ATTR_RDONLY;
    let sys = match mounts::fresh("sysfs", &[], &[], attributes) {
        Ok(sys) => {
            mounts::attach(&sys, at.fd.as_fd()).context(|| "attaching /sys".into())?;
            sys
        }
        // A user namespace may mount sysfs only for a network namespace it owns: with the
        // host's network, a read-only view of the host's /sys has to do. The copy must be
        // recursive (the host's submounts are locked), and only its top is made read-only;
        // what lies below (cgroup files) belongs to the host's root anyway.
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            let sys = mounts::clone_tree(CWD, Path::new("/sys"), true)
                .context(|| "cloning /sys".into())?;
            mounts::attach(&sys, at.fd.as_fd()).context(|| "attaching /sys".into())?;
            mounts::restrict(&sys, true).context(|| "making /sys read-only".into())?;
            sys
        }
        Err(error) => return Err(StageError(format!("mounting /sys: {error}"))),
    };
    for name in MASKED_SYS {
        mask(sys.as_fd(), name).context(|| format!("masking /sys/{name}"))?;
    }
    Ok(())
}

/// Hides `name` (inside a pseudo filesystem) behind `/dev/null` or an empty read-only tmpfs.
fn mask(fs_root: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let Some(at) = open_inside(fs_root, name)? else {
        return Ok(());
    };
    let cover = if FileType::from_raw_mode(rustix::fs::fstat(&at)?.st_mode) == FileType::Directory {
        mounts::fresh(
            "tmpfs",
            &[("size", "0")],
            &[],
            pseudo_attributes() | MountAttrFlags::MOUNT_ATTR_RDONLY,
        )?
    } else {
        mounts::clone_tree(CWD, Path::new("/dev/null"), false)?
    };
    mounts::attach(&cover, at.as_fd())
}

fn read_only(fs_root: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let Some(at) = open_inside(fs_root, name)? else {
        return Ok(());
    };
    let copy = mounts::clone_tree(fs_root, Path::new(name), false)?;
    mounts::attach(&copy, at.as_fd())?;
    mounts::restrict(&copy, true)
}

/// An `O_PATH` descriptor for `name` under a kernel filesystem (no image content there, so no
/// in-root resolution is needed), `None` if the kernel does not have it.
fn open_inside(fs_root: BorrowedFd<'_>, name: &str) -> io::Result<Option<rustix::fd::OwnedFd>> {
    match rustix::fs::openat(
        fs_root,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

/// A `nodev` tmpfs with bind mounts of the standard devices, `pts`, `shm` and the fd links.
fn mount_dev(
    root: &Root<'_>,
    stubs: &mut Stubs,
    run_dir: &RunDir<'_>,
    rootless: bool,
) -> Result<(), StageError> {
    let at = target(root, "/dev", Create::Dir, stubs)?;
    let dev = mounts::fresh(
        "tmpfs",
        &[("mode", "755"), ("size", "65536k")],
        &[],
        pseudo_attributes(),
    )
    .context(|| "mounting /dev".into())?;
    mounts::attach(&dev, at.fd.as_fd()).context(|| "attaching /dev".into())?;

    // Rootful: nodes made here, in a tmpfs the container never sees (so a chmod inside cannot
    // reach the host's nodes). Rootless: the host's own nodes (the container cannot chmod
    // those, and could not make nodes anyway).
    let _devices_mount;
    let source: rustix::fd::OwnedFd = if rootless {
        rustix::fs::open(
            "/dev",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .context(|| "opening the host's /dev".into())?
    } else {
        let devices = mounts::fresh("tmpfs", &[("mode", "755"), ("size", "64k")], &[], {
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC
        })
        .context(|| "mounting the device tmpfs".into())?;
        mounts::attach_at(&devices, None, &run_dir.devices())
            .context(|| "attaching the device tmpfs".into())?;
        for (name, major, minor) in DEVICES {
            rustix::fs::mknodat(
                &devices,
                name,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rustix::fs::makedev(major, minor),
            )
            .context(|| format!("creating /dev/{name}"))?;
        }
        let fd = rustix::io::fcntl_dupfd_cloexec(&devices, 0).context(|| "dup".into())?;
        _devices_mount = devices;
        fd
    };
    for (name, _, _) in DEVICES {
        rustix::fs::openat(
            &dev,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )
        .context(|| format!("creating the mount point /dev/{name}"))?;
        let node = mounts::clone_tree(source.as_fd(), Path::new(name), false)
            .context(|| format!("cloning the {name} device"))?;
        mounts::attach_at(&node, Some(dev.as_fd()), Path::new(name))
            .context(|| format!("attaching /dev/{name}"))?;
    }
    for (name, link) in DEV_LINKS {
        rustix::fs::symlinkat(link, &dev, name).context(|| format!("creating /dev/{name}"))?;
    }

    rustix::fs::mkdirat(&dev, "pts", Mode::from_raw_mode(0o755))
        .context(|| "creating /dev/pts".into())?;
    let pts_attributes = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let pts_options = [("ptmxmode", "0666"), ("mode", "0620"), ("gid", "5")];
    let pts = mounts::fresh("devpts", &pts_options, &["newinstance"], pts_attributes)
        // gid 5 (tty) may not be mapped in a rootless user namespace.
        .or_else(|_| {
            mounts::fresh(
                "devpts",
                &pts_options[..2],
                &["newinstance"],
                pts_attributes,
            )
        })
        .context(|| "mounting /dev/pts".into())?;
    mounts::attach_at(&pts, Some(dev.as_fd()), Path::new("pts"))
        .context(|| "attaching /dev/pts".into())?;

    rustix::fs::mkdirat(&dev, "shm", Mode::from_raw_mode(0o1777))
        .context(|| "creating /dev/shm".into())?;
    let shm = mounts::fresh(
        "tmpfs",
        &[("mode", "1777"), ("size", "65536k")],
        &[],
        pseudo_attributes(),
    )
    .context(|| "mounting /dev/shm".into())?;
    mounts::attach_at(&shm, Some(dev.as_fd()), Path::new("shm"))
        .context(|| "attaching /dev/shm".into())?;
    Ok(())
}

/// A provided file as mounted: where it is, and what imgb put in it.
struct Provided<'a> {
    path: PathBuf,
    content: &'a str,
}

fn mount_provided_files<'a>(
    spec: &'a ContainerSpec,
    run_dir: &RunDir<'_>,
    root: &Root<'_>,
    stubs: &mut Stubs,
) -> Result<Vec<Provided<'a>>, StageError> {
    let mut provided = Vec::new();
    for file in &spec.provided_files {
        let at = target(root, &file.target, Create::File, stubs)?;
        let source = run_dir.files().join(&file.name);
        let bind = mounts::clone_tree(CWD, &source, false)
            .context(|| format!("cloning {}", source.display()))?;
        mounts::attach(&bind, at.fd.as_fd()).context(|| format!("mounting {}", file.target))?;
        provided.push(Provided {
            path: at.path,
            content: &file.content,
        });
    }
    Ok(provided)
}

fn mount_step_mounts(
    spec: &ContainerSpec,
    run_dir: &RunDir<'_>,
    root: &Root<'_>,
    stubs: &mut Stubs,
) -> Result<(), StageError> {
    for (index, mount) in spec.mounts.iter().enumerate() {
        let what = || format!("mount {} on {}", index + 1, mount.target);
        match &mount.kind {
            MountKind::Bind { source, read_only } => {
                let meta = fs::metadata(source)
                    .context(|| format!("{}: source {}", what(), source.display()))?;
                let create = if meta.is_dir() {
                    Create::Dir
                } else {
                    Create::File
                };
                let at = target(root, &mount.target, create, stubs)?;
                let bind = if *read_only {
                    mounts::clone_tree(CWD, source, false).context(what)?
                } else if meta.is_dir() {
                    let scratch = run_dir.discard().join(index.to_string());
                    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
                    for dir in [&upper, &work] {
                        fs::create_dir_all(dir).context(what)?;
                    }
                    mounts::overlay(
                        &[source],
                        &upper,
                        &work,
                        spec.rootless,
                        CONTAINER_ATTRIBUTES,
                    )
                    .context(what)?
                } else {
                    let copy = run_dir.files().join(format!("bind-{index}"));
                    fs::copy(source, &copy).context(what)?;
                    mounts::clone_tree(CWD, &copy, false).context(what)?
                };
                mounts::attach(&bind, at.fd.as_fd()).context(what)?;
                mounts::restrict(&bind, *read_only).context(what)?;
            }
            MountKind::Tmpfs { size_bytes } => {
                let at = target(root, &mount.target, Create::Dir, stubs)?;
                let size = size_bytes.map(|size| size.to_string());
                let mut options = vec![("mode", "1777")];
                if let Some(size) = &size {
                    options.push(("size", size));
                }
                let tmpfs = mounts::fresh(
                    "tmpfs",
                    &options,
                    &[],
                    MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
                )
                .context(what)?;
                mounts::attach(&tmpfs, at.fd.as_fd()).context(what)?;
            }
            MountKind::Persistent { source } => {
                let at = target(root, &mount.target, Create::Dir, stubs)?;
                let bind = mounts::clone_tree(CWD, source, false).context(what)?;
                mounts::attach(&bind, at.fd.as_fd()).context(what)?;
                mounts::restrict(&bind, false).context(what)?;
            }
        }
    }
    Ok(())
}

/// The step's user from the image's `/etc/passwd` and `/etc/group`.
fn read_user(root: &Root<'_>, spec: &str) -> Result<ExecUser, StageError> {
    let passwd = read_image_file(root, "/etc/passwd")?;
    let group = read_image_file(root, "/etc/group")?;
    resolve_user(spec, passwd.as_deref(), group.as_deref()).context(|| format!("user {spec:?}"))
}

/// A text file of the image (at most 16 MiB), `None` if it does not exist.
fn read_image_file(root: &Root<'_>, path: &str) -> Result<Option<String>, StageError> {
    const LIMIT: u64 = 16 << 20;
    let resolved = match resolve::resolve(root, path, Create::Nothing, None) {
        Ok(resolved) => resolved,
        Err(resolve::ResolveError::Io { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(None);
        }
        Err(error) => return Err(StageError(format!("reading {path}: {error}"))),
    };
    let mut text = Vec::new();
    fs::File::open(mounts::fd_path(resolved.fd.as_fd()))
        .and_then(|file| file.take(LIMIT).read_to_end(&mut text))
        .context(|| format!("reading {path}"))?;
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// `pivot_root` into the root filesystem and detach the old root.
fn pivot_into(rootfs: &Detached) -> Result<(), StageError> {
    rustix::process::fchdir(rootfs).context(|| "entering the root filesystem".into())?;
    rustix::process::pivot_root(".", ".").context(|| "pivot_root".into())?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .context(|| "detaching the old root".into())?;
    rustix::process::chdir("/").context(|| "chdir /".into())?;
    Ok(())
}

/// The command's environment: the step's, plus `PATH` and `HOME` defaults as Docker adds them.
fn command_env(env: &[String], user: &ExecUser) -> Vec<String> {
    let has = |key: &str| {
        env.iter()
            .any(|pair| pair.split_once('=').map_or(pair.as_str(), |(k, _)| k) == key)
    };
    let mut env = env.to_vec();
    if !has("PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        env.push(format!("HOME={}", user.home));
    }
    env
}

/// The exec stage, started before the pivot because the binary needs the host's dynamic
/// loader and libraries, and waited for until it has loaded them: `pivot_root` then moves its
/// root and working directory along with PID 1's. Its stdin is a socket: it says it is ready,
/// then waits for its spec.
///
fn start_exec_stage(run_dir: &RunDir<'_>) -> Result<(std::process::Child, UnixStream), StageError> {
    let (ours, theirs) = UnixStream::pair().context(|| "creating the exec socket".into())?;
    let child = exec_stage_command(run_dir)?
        .stdin(Stdio::from(rustix::fd::OwnedFd::from(theirs)))
        .spawn()
        .context(|| "starting the exec stage".into())?;
    let mut ready = [0u8; 1];
    (&ours)
        .read_exact(&mut ready)
        .context(|| "waiting for the exec stage".into())?;
    Ok((child, ours))
}

/// The exec stage runs from a read-only bind mount of this binary: it is the one imgb process
/// the command can reach, and a command that makes it re-execute itself (an image whose
/// command is a `#!/proc/self/exe` script, runc's CVE-2019-5736) must find no writable host
/// binary behind `/proc/<pid>/exe`.
fn exec_stage_command(run_dir: &RunDir<'_>) -> Result<std::process::Command, StageError> {
    let binary = run_dir.exec_binary();
    read_only_self(&binary)?;
    Ok(sibling_stage_from(&binary, "exec"))
}

/// A read-only bind mount of this binary at `at` (an empty file it creates). `/proc/self/exe`
/// itself names a mount of the namespace this process left, which cannot be cloned: its path
/// is, then checked to still be the same file. Only an attached mount can be made read-only.
fn read_only_self(at: &Path) -> Result<(), StageError> {
    let path = fs::read_link("/proc/self/exe").context(|| "reading /proc/self/exe".into())?;
    let binary = mounts::clone_tree(CWD, &path, false)
        .context(|| format!("cloning the mount of this binary {}", path.display()))?;
    let identity = |stat: rustix::fs::Stat| (stat.st_dev, stat.st_ino);
    let running = rustix::fs::stat("/proc/self/exe").context(|| "stat of this binary".into())?;
    let cloned = rustix::fs::fstat(&binary).context(|| "stat of this binary's mount".into())?;
    if identity(running) != identity(cloned) {
        return Err(StageError(format!(
            "this binary {} was replaced while imgb runs",
            path.display()
        )));
    }
    fs::File::create(at).context(|| format!("creating {}", at.display()))?;
    mounts::attach_at(&binary, None, at).context(|| "attaching this binary's mount".into())?;
    mounts::restrict(&binary, true).context(|| "making this binary's mount read-only".into())
}

/// Lets the exec stage start the command, and reaps children until the command ends.
fn run_command(
    (child, mut socket): (std::process::Child, UnixStream),
    exec: &ExecSpec,
) -> Result<Ended, StageError> {
    let spec = serde_json::to_vec(exec).context(|| "encoding the exec spec".into())?;
    socket
        .write_all(&spec)
        .and_then(|()| socket.shutdown(std::net::Shutdown::Write))
        .context(|| "sending the exec spec".into())?;
    drop(socket);
    let command = Pid::from_child(&child);
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid == command => {
                if let Some(code) = status.exit_status() {
                    return Ok(Ended::Exited(code));
                }
                if let Some(signal) = status.terminating_signal() {
                    return Ok(Ended::Signaled(signal));
                }
            }
            // An orphan re-parented to PID 1: reaped, nothing else to do.
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(StageError(format!("waiting for the command: {errno}"))),
        }
    }
}

/// Kills and reaps every other process in the namespace (background jobs of the command), so
/// that nothing writes to the root filesystem any more. One `kill(-1)` reaches them all, fork
/// bombs included (no process can be born during it); reaping then ends, as nothing is left
/// that could fork. Scanning `/proc` instead never ends against a bomb that refills the
/// namespace between scans.
fn kill_everything_else() {
    // ESRCH: there was nothing left to kill.
    let _ = crate::sys::kill_all_others();
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some(_)) | Err(rustix::io::Errno::INTR) => {}
            // ECHILD: every process is reaped.
            Ok(None) | Err(_) => return,
        }
    }
}

/// A provided file the command changed keeps its new content in the layer: unmount the
/// provided copy and write the content to the file underneath (copied up by the overlay).
fn write_back_changed_files(
    provided: &[Provided<'_>],
    stubs: &mut Stubs,
) -> Result<(), StageError> {
    for file in provided {
        let path = Path::new("/").join(&file.path);
        let now = fs::read(&path).context(|| format!("reading {}", path.display()))?;
        if now == file.content.as_bytes() {
            continue;
        }
        rustix::mount::unmount(&path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
            .context(|| format!("unmounting {}", path.display()))?;
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .and_then(|mut out| out.write_all(&now))
            .context(|| format!("writing back {}", path.display()))?;
        stubs.created.retain(|stub| stub != &file.path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_stage_starts_from_a_read_only_mount_of_this_binary() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("notice: mounting needs root; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().to_owned();
        // Mount namespaces are per thread: this one's dies with it, taking the mount along.
        std::thread::spawn(move || {
            crate::sys::unshare(UnshareFlags::NEWNS).unwrap();
            rustix::mount::mount_change(
                "/",
                MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
            )
            .unwrap();
            let command = exec_stage_command(&RunDir(&run_dir)).unwrap();
            let program = Path::new(command.get_program());
            assert_eq!(program, RunDir(&run_dir).exec_binary());
            let identity = |stat: rustix::fs::Stat| (stat.st_dev, stat.st_ino);
            assert_eq!(
                identity(rustix::fs::stat(program).unwrap()),
                identity(rustix::fs::stat("/proc/self/exe").unwrap())
            );
            let mount = rustix::fs::statvfs(program).unwrap();
            assert!(
                mount.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
                "{} is writable",
                program.display()
            );
            // A truncating open asks the mount first: EROFS, where a writable mount would
            // have let it through to the running binary's ETXTBSY.
            let error = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(program)
                .unwrap_err();
            assert_eq!(
                error.raw_os_error(),
                Some(rustix::io::Errno::ROFS.raw_os_error())
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn env_defaults_are_added_only_when_missing() {
        let user = ExecUser {
            uid: 1,
            gid: 1,
            groups: vec![],
            home: "/home/u".into(),
        };
        let env = command_env(&["A=1".into()], &user);
        assert_eq!(
            env,
            vec![
                "A=1".to_string(),
                format!("PATH={DEFAULT_PATH}"),
                "HOME=/home/u".into()
            ]
        );
        let env = command_env(&["PATH=/x".into(), "HOME=/h".into()], &user);
        assert_eq!(env, vec!["PATH=/x".to_string(), "HOME=/h".into()]);
    }
}
