//! The supervisor: the one stage that outlives the container. It enters the user namespace
//! (rootless), lays out the run directory, starts the pid namespace's holder, forwards a kill
//! request, turns the upper directory into a layer, and removes the run directory whatever
//! happened — from inside the user namespace, where it may delete files owned by the
//! container's subordinate ids.
//!
//! It never joins the container's pid or mount namespace: a process that unshared a pid
//! namespace cannot start threads any more (the layer writer compresses in parallel), and the
//! overlay must be gone (its mount namespace dead) before the upper directory is read.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ExitCode, Stdio};

use imgb_cache::{OverlayXattrs, Store};
use rustix::event::{PollFd, PollFlags};
use rustix::process::PidfdFlags;
use rustix::thread::UnshareFlags;

use super::{Context, StageError, sibling_stage, take_control_socket};
use crate::diff;
use crate::protocol::{
    Channel, CommitSpec, CommittedLayer, ContainerReport, Control, Ended, Report, RunDir,
    SupervisorSpec,
};
use crate::resolve::Stubs;

pub(super) fn main() -> Result<ExitCode, StageError> {
    let mut caller = take_control_socket()?;
    let spec = match caller.recv::<Control>() {
        Ok(Some(Control::Start(spec))) => spec,
        // Cancelled before it started.
        Ok(None) => return Ok(ExitCode::SUCCESS),
        Ok(Some(other)) => return Err(StageError(format!("unexpected message {other:?}"))),
        Err(error) => return Err(StageError(format!("reading the run spec: {error}"))),
    };
    let mut report =
        run(&spec, &mut caller).unwrap_or_else(|error| Report::Failed { message: error.0 });
    if let Err(error) = remove_run_dir(&spec.run_dir) {
        let message = format!(
            "removing the run directory {}: {error}",
            spec.run_dir.display()
        );
        report = match report {
            Report::Failed { message: first } => Report::Failed {
                message: format!("{first}; {message}"),
            },
            _ => Report::Failed { message },
        };
    }
    // The caller may be gone (it cancelled and did not wait): nothing left to tell then.
    let _ = caller.send(&report);
    Ok(ExitCode::SUCCESS)
}

fn run(spec: &SupervisorSpec, caller: &mut Channel) -> Result<Report, StageError> {
    if spec.rootless {
        join_user_namespace(caller)?;
    }
    let run_dir = RunDir(&spec.run_dir);
    prepare_run_dir(spec, &run_dir)?;

    let (ours, theirs) = UnixStream::pair().context(|| "creating the container socket".into())?;
    let mut child = sibling_stage("pidns")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .context(|| "starting the pid namespace stage".into())?;
    let mut container = Channel::new(ours);
    container
        .send(&spec.container)
        .context(|| "sending the container spec".into())?;

    let outcome = supervise(&mut child, caller, container)?;
    let (ended, stubs) = match outcome {
        Outcome::Killed => {
            return Ok(Report::Finished {
                ended: Ended::Killed,
                layer: None,
            });
        }
        Outcome::Reported(ContainerReport::Failed { message }) => {
            return Ok(Report::Failed { message });
        }
        Outcome::Reported(ContainerReport::Exited { ended, stubs }) => (ended, stubs),
        Outcome::Vanished(status) => {
            return Err(StageError(format!(
                "the container's init ended without a report ({status})"
            )));
        }
    };
    let layer = match &spec.commit {
        Some(commit) if ended == Ended::Exited(0) => {
            Some(commit_layer(&run_dir, &stubs, commit, spec.rootless)?)
        }
        _ => None,
    };
    Ok(Report::Finished { ended, layer })
}

/// Rootless: a new user namespace whose id maps the caller writes (it may run `newuidmap`,
/// which a process cannot do for itself).
fn join_user_namespace(caller: &mut Channel) -> Result<(), StageError> {
    crate::sys::unshare(UnshareFlags::NEWUSER).context(|| {
        "creating a user namespace (hint: unprivileged user namespaces may be disabled: \
         sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces)"
            .into()
    })?;
    caller
        .send(&Report::MapIds)
        .context(|| "asking for id maps".into())?;
    match caller.recv::<Control>() {
        Ok(Some(Control::IdsMapped)) => {}
        Ok(_) => return Err(StageError("the id maps were not written".into())),
        Err(error) => return Err(StageError(format!("waiting for id maps: {error}"))),
    }
    if !rustix::process::getuid().is_root() {
        return Err(StageError(
            "the user namespace does not map the caller to root".into(),
        ));
    }
    Ok(())
}

fn prepare_run_dir(spec: &SupervisorSpec, run_dir: &RunDir<'_>) -> Result<(), StageError> {
    let mut dirs = vec![
        run_dir.upper(),
        run_dir.work(),
        run_dir.rootfs(),
        run_dir.files(),
        run_dir.discard(),
        run_dir.devices(),
    ];
    if spec.container.lower_dirs.is_empty() {
        dirs.push(run_dir.empty_lower());
    }
    for dir in dirs {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .context(|| format!("creating {}", dir.display()))?;
    }
    for file in &spec.container.provided_files {
        let path = run_dir.files().join(&file.name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .and_then(|mut out| io::Write::write_all(&mut out, file.content.as_bytes()))
            .context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

enum Outcome {
    Killed,
    Reported(ContainerReport),
    /// The init died before it could report (its exit status).
    Vanished(String),
}

/// Waits for the pid namespace stage, collecting PID 1's report; closes the container socket
/// (the kill switch) as soon as the caller's socket closes.
fn supervise(
    child: &mut Child,
    caller: &mut Channel,
    container: Channel,
) -> Result<Outcome, StageError> {
    let pid = rustix::process::Pid::from_child(child);
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())
        .context(|| "opening a pidfd for the pid namespace stage".into())?;
    let mut container = Some(container);
    let mut report = None;
    let mut killed = false;
    loop {
        // A closed socket stays readable (at end of stream): once seen, it is not watched.
        let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
        let caller_index = (!killed).then(|| {
            fds.push(PollFd::new(
                caller.stream(),
                PollFlags::IN | PollFlags::RDHUP,
            ));
            fds.len() - 1
        });
        let container_index = container.as_ref().map(|channel| {
            fds.push(PollFd::new(channel.stream(), PollFlags::IN));
            fds.len() - 1
        });
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(errno) => return Err(StageError(format!("poll: {errno}"))),
        }
        let exited = !fds[0].revents().is_empty();
        let ready = |index: Option<usize>| {
            index
                .and_then(|index| fds.get(index))
                .is_some_and(|fd| !fd.revents().is_empty())
        };
        let caller_ready = ready(caller_index);
        let container_ready = ready(container_index);
        drop(fds);

        if caller_ready {
            caller.fill().context(|| "reading from the caller".into())?;
            if caller.is_eof() && !killed {
                // Closing our end makes the pid namespace stage kill PID 1.
                killed = true;
                container = None;
            }
        }
        if container_ready && let Some(channel) = container.as_mut() {
            channel
                .fill()
                .context(|| "reading the container's report".into())?;
            if let Some(message) = channel
                .pop::<ContainerReport>()
                .context(|| "reading the container's report".into())?
            {
                report = Some(message);
            }
            if channel.is_eof() {
                container = None;
            }
        }
        if exited {
            break;
        }
    }
    let status = child
        .wait()
        .context(|| "waiting for the pid namespace stage".into())?;
    // PID 1 reports just before it exits; anything still buffered is read now.
    if let (None, Some(mut channel)) = (&report, container) {
        report = channel.recv().ok().flatten();
    }
    Ok(match report {
        _ if killed => Outcome::Killed,
        Some(report) => Outcome::Reported(report),
        None => Outcome::Vanished(status.to_string()),
    })
}

fn commit_layer(
    run_dir: &RunDir<'_>,
    stubs: &Stubs,
    commit: &CommitSpec,
    rootless: bool,
) -> Result<CommittedLayer, StageError> {
    let xattrs = if rootless {
        OverlayXattrs::User
    } else {
        OverlayXattrs::Trusted
    };
    let upper = run_dir.upper();
    diff::remove_stubs(&upper, stubs, xattrs)
        .context(|| format!("removing imgb's mount stubs from {}", upper.display()))?;
    let opened = Store::open(&commit.store_root);
    let store = match &commit.lease {
        Some(lease) => opened.and_then(|store| store.joining_lease(lease)),
        None => opened,
    }
    .context(|| {
        format!(
            "opening the store {} for the layer",
            commit.store_root.display()
        )
    })?;
    let layer = store
        .adopt_snapshot(&upper, commit.source_date_epoch)
        .context(|| "keeping the step's changes as a snapshot".into())?;
    Ok(CommittedLayer {
        diff_id: layer.diff_id,
        tar_size: layer.tar_size,
    })
}

/// Removes the run directory; read-only directories (a step's `chmod 500`) are opened up first.
fn remove_run_dir(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            open_up(path)?;
            fs::remove_dir_all(path)
        }
    }
}

fn open_up(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(());
    }
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    for entry in fs::read_dir(path)? {
        open_up(&entry?.path())?;
    }
    Ok(())
}
