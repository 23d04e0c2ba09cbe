//! The pid namespace's holder: unshares it, starts PID 1 in it (sharing this stage's control
//! socket, over which PID 1 talks to the supervisor directly), and kills PID 1 — and so every
//! process of the container — when the supervisor closes its end. Exits as PID 1 did.

use std::process::{ExitCode, Stdio};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{PidfdFlags, Signal};
use rustix::thread::UnshareFlags;

use super::{Context, StageError, sibling_stage, take_control_socket};

pub(super) fn main() -> Result<ExitCode, StageError> {
    let socket = take_control_socket()?;
    crate::sys::unshare(UnshareFlags::NEWPID).context(|| "creating a pid namespace".into())?;
    let for_init = socket
        .stream()
        .try_clone()
        .context(|| "sharing the control socket".into())?;
    let mut init = sibling_stage("container")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(for_init)))
        .spawn()
        .context(|| "starting the container's init".into())?;
    let pidfd =
        rustix::process::pidfd_open(rustix::process::Pid::from_child(&init), PidfdFlags::empty())
            .context(|| "opening a pidfd for the container's init".into())?;

    let mut kill_sent = false;
    loop {
        // Only hang-ups: the data on the socket is PID 1's to read. Once the kill is sent the
        // socket stays hung up, so only the pidfd is watched.
        let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
        if !kill_sent {
            fds.push(PollFd::new(socket.stream(), PollFlags::RDHUP));
        }
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(errno) => return Err(StageError(format!("poll: {errno}"))),
        }
        if !fds[0].revents().is_empty() {
            break;
        }
        if fds.get(1).is_some_and(|fd| !fd.revents().is_empty()) {
            // ESRCH: it just exited on its own; the pidfd says so next.
            let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
            kill_sent = true;
        }
    }
    let status = init
        .wait()
        .context(|| "waiting for the container's init".into())?;
    let code = status
        .code()
        .and_then(|code| u8::try_from(code).ok())
        .unwrap_or(super::SETUP_FAILED);
    Ok(ExitCode::from(code))
}
