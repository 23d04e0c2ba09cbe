//! The last stage: becomes the step's process. Cuts the capability bounding set, switches to
//! the user's ids and groups, sets the process's capabilities, `no_new_privs` if asked and
//! umask 0022, then `execve`s the command (looked up in the step's `PATH`) in its working
//! directory with exactly the step's environment.
//!
//! Errors go to the step's stderr, as a shell reports them: exit 127 when the command does not
//! exist, 126 when it cannot be executed, 125 when the process could not be set up.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use rustix::fs::Mode;
use rustix::process::{Gid, Uid};

use crate::caps;
use crate::protocol::ExecSpec;

const NOT_FOUND: u8 = 127;
const NOT_EXECUTABLE: u8 = 126;

pub(super) fn main() -> ExitCode {
    let spec = match read_spec() {
        Ok(spec) => spec,
        Err(error) => {
            eprintln!("imgb: receiving the command: {error}");
            return ExitCode::from(super::SETUP_FAILED);
        }
    };
    if let Err(error) = become_user(&spec) {
        eprintln!("imgb: setting up the process: {error}");
        return ExitCode::from(super::SETUP_FAILED);
    }
    let Some((program, args)) = spec.argv.split_first() else {
        eprintln!("imgb: no command to run");
        return ExitCode::from(super::SETUP_FAILED);
    };
    let error = Command::new(program)
        .args(args)
        .env_clear()
        .envs(
            spec.env
                .iter()
                .map(|pair| pair.split_once('=').unwrap_or((pair, ""))),
        )
        .current_dir(&spec.cwd)
        .exec();
    eprintln!("imgb: cannot run {program:?} in {}: {error}", spec.cwd);
    ExitCode::from(if error.kind() == io::ErrorKind::NotFound {
        NOT_FOUND
    } else {
        NOT_EXECUTABLE
    })
}

/// Stdin is a socket to PID 1: this stage says it is loaded and running, then waits for the
/// spec, which comes once PID 1 has pivoted into the container (moving this process's root
/// along). Stdin then becomes the container's `/dev/null`.
fn read_spec() -> io::Result<ExecSpec> {
    let mut socket =
        std::os::unix::net::UnixStream::from(io::stdin().as_fd().try_clone_to_owned()?);
    socket.write_all(b"r")?;
    let mut spec = Vec::new();
    socket.read_to_end(&mut spec)?;
    drop(socket);
    let spec = serde_json::from_slice(&spec).map_err(io::Error::other)?;
    let null = std::fs::File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    Ok(spec)
}

fn become_user(spec: &ExecSpec) -> io::Result<()> {
    crate::sys::mark_cloexec_from(3)?;
    caps::restrict_bounding_set()?;
    set_groups(&spec.groups)?;
    let unmapped = |kind: &'static str, id: u32| {
        move |errno: rustix::io::Errno| {
            let error = io::Error::from(errno);
            if errno == rustix::io::Errno::INVAL {
                io::Error::new(
                    error.kind(),
                    format!(
                        "{kind} {id} is not mapped in the user namespace (hint: rootless \
                         builds need ranges in /etc/subuid and /etc/subgid, and newuidmap)"
                    ),
                )
            } else {
                io::Error::new(error.kind(), format!("switching to {kind} {id}: {error}"))
            }
        }
    };
    let gid = Gid::from_raw(spec.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(unmapped("gid", spec.gid))?;
    let uid = Uid::from_raw(spec.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(unmapped("uid", spec.uid))?;
    caps::set_process_capabilities(spec.uid)?;
    if spec.no_new_privileges {
        rustix::thread::set_no_new_privs(true)?;
    }
    rustix::process::umask(Mode::from_raw_mode(0o022));
    Ok(())
}

/// Supplementary groups. In a user namespace whose gid map was written without `newgidmap`,
/// `setgroups` is denied for good; the process then keeps the (unmapped, powerless) groups it
/// has, and unmapped supplementary gids are dropped as they cannot be represented.
fn set_groups(groups: &[u32]) -> io::Result<()> {
    let setgroups = std::fs::read_to_string("/proc/self/setgroups").unwrap_or_default();
    if setgroups.trim() == "deny" {
        return Ok(());
    }
    let gid_map = std::fs::read_to_string("/proc/self/gid_map").unwrap_or_default();
    let groups: Vec<Gid> = groups
        .iter()
        .filter(|&&gid| is_mapped(&gid_map, gid))
        .map(|&gid| Gid::from_raw(gid))
        .collect();
    rustix::thread::set_thread_groups(&groups).map_err(|errno| {
        io::Error::new(io::Error::from(errno).kind(), format!("setgroups: {errno}"))
    })
}

/// Whether `id` is inside one of a `uid_map`/`gid_map`'s ranges (`inside outside count`).
fn is_mapped(map: &str, id: u32) -> bool {
    map.lines().any(|line| {
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        matches!(fields.as_slice(), [inside, _, count] if (*inside..inside + count).contains(&u64::from(id)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_map_ranges_are_half_open() {
        let map = "         0       1000          1\n         1     100000      65536\n";
        assert!(is_mapped(map, 0));
        assert!(is_mapped(map, 10));
        assert!(is_mapped(map, 65536));
        assert!(!is_mapped(map, 65537));
        assert!(is_mapped("0 0 4294967295", 4_000_000_000));
    }
}
