//! The init stages' own guards, each tested where it acts, with the other layers of defence
//! out of the way (end to end, in `tests/adversarial/runtime.rs`, a later layer would hide a
//! missing earlier one):
//! - every stage marks what it inherited close-on-exec, so PID 1 holds no descriptor that an
//!   `exec` would pass on;
//! - the exec stage does it again before it becomes the command;
//! - PID 1 is non-dumpable: a process with its uid and all of its capabilities except
//!   `CAP_SYS_PTRACE` (so that the capability check, the usual first barrier, lets it through)
//!   still cannot look at it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use common::*;
use imgb_runner::OutputLine;
use rustix::thread::{CapabilitySet, CapabilitySets};
use tokio::sync::{mpsc, oneshot};

/// `O_CLOEXEC` in a `/proc/<pid>/fdinfo` `flags:` line (octal).
const O_CLOEXEC: u32 = 0o2_000_000;

fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("notice: the init guards are tested as root only; skipping");
    }
    root
}

/// A descriptor of the test process without close-on-exec, so that every process it starts
/// inherits it: as imgb's would be when started by a careless parent.
fn leak_descriptor() -> rustix::fd::OwnedFd {
    let file = fs::File::open("/proc/self/status").unwrap();
    rustix::io::dup(&file).unwrap()
}

/// Host pids of one running container: the command, PID 1, the pid namespace's holder and
/// the supervisor.
#[derive(Debug, Clone, Copy)]
struct Stages {
    command: u32,
    init: u32,
    pidns: u32,
    supervisor: u32,
}

/// A field of `/proc/<process>/status` (`process`: a pid, or `thread-self`).
fn status_field(process: impl std::fmt::Display, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_string())
    })
}

fn parent(pid: u32) -> u32 {
    status_field(pid, "PPid")
        .and_then(|ppid| ppid.parse().ok())
        .unwrap_or_else(|| panic!("no parent for {pid}"))
}

/// The stages of the container whose command line holds `marker`.
fn find_stages(marker: &str) -> Stages {
    let command = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
        })
        .unwrap_or_else(|| panic!("no process runs {marker}"));
    let init = parent(command);
    let pidns = parent(init);
    Stages {
        command,
        init,
        pidns,
        supervisor: parent(pidns),
    }
}

/// Runs a container that waits, calls `inspect` with its stages once it is up, then cancels
/// it; `inspect`'s result.
async fn while_running<T>(fixture: &Fixture, marker: &str, inspect: impl FnOnce(Stages) -> T) -> T {
    let spec = fixture.spec(&format!("echo ready; sleep 600; : {marker}"));
    let (sender, mut lines) = mpsc::channel::<OutputLine>(64);
    let (cancel, cancelled) = oneshot::channel::<()>();
    let run = fixture.runner.run(&spec, sender, async {
        let _ = cancelled.await;
    });
    let watch = async move {
        while let Some(line) = lines.recv().await {
            if line.line == b"ready\n" {
                let result = inspect(find_stages(marker));
                let _ = cancel.send(());
                return Some(result);
            }
        }
        None
    };
    let (outcome, result) = tokio::join!(run, watch);
    result.unwrap_or_else(|| panic!("the container never got ready: {outcome:?}"))
}

/// The descriptors of `pid` above stderr that an `exec` would pass on, with their targets.
fn inheritable_descriptors(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_ok_and(|fd| fd < 3) {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{name}")) else {
            continue; // closed meanwhile
        };
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
            .unwrap_or_else(|| panic!("no flags in fdinfo {name} of {pid}: {info}"));
        if flags & O_CLOEXEC == 0 {
            let target = fs::read_link(entry.path()).unwrap_or_default();
            found.push(format!("{name} -> {}", target.display()));
        }
    }
    found
}

#[tokio::test]
async fn every_stage_holds_what_it_inherited_close_on_exec() {
    if !is_root() {
        return;
    }
    let _leaked = leak_descriptor();
    let fixture = Fixture::new();
    let marker = format!("inherited-{}", std::process::id());
    let leaks = while_running(&fixture, &marker, |stages| {
        [stages.supervisor, stages.pidns, stages.init]
            .map(|pid| (pid, inheritable_descriptors(pid)))
    })
    .await;
    for (pid, descriptors) in leaks {
        assert!(
            descriptors.is_empty(),
            "stage {pid} would pass on {descriptors:?}"
        );
    }
}

#[test]
fn the_exec_stage_passes_nothing_it_inherited_to_the_command() {
    if !is_root() {
        return;
    }
    // The exec stage alone, started the way PID 1 starts it but holding a stray descriptor
    // (which the earlier stages would have closed on exec).
    let _leaked = leak_descriptor();
    let init = init_program();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let mut exec = Command::new(&init.program)
        .args(&init.args)
        .arg("exec")
        .stdin(Stdio::from(rustix::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 1];
    ours.read_exact(&mut ready).unwrap();
    // `ls` execs in the exec stage's place: 3 is the directory it reads.
    let spec = serde_json::json!({
        "argv": [BUSYBOX, "ls", "/proc/self/fd"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "uid": 0,
        "gid": 0,
        "groups": [],
        "no_new_privileges": true,
    });
    ours.write_all(spec.to_string().as_bytes()).unwrap();
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    let mut listed = String::new();
    exec.stdout
        .take()
        .unwrap()
        .read_to_string(&mut listed)
        .unwrap();
    let output = exec.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(listed, "0\n1\n2\n3\n");
}

#[test]
fn pid_1_is_out_of_reach_of_a_process_with_its_uid_and_capabilities() {
    if !is_root() {
        return;
    }
    // Credentials are per thread: this one, and the container it starts, lose CAP_SYS_PTRACE,
    // so that the observer's capabilities equal PID 1's and only dumpability decides.
    std::thread::spawn(|| {
        rustix::thread::remove_capability_from_bounding_set(CapabilitySet::SYS_PTRACE).unwrap();
        let held = rustix::thread::capabilities(None).unwrap();
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: held.effective - CapabilitySet::SYS_PTRACE,
                permitted: held.permitted - CapabilitySet::SYS_PTRACE,
                inheritable: CapabilitySet::empty(),
            },
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fixture = Fixture::new();
        let marker = format!("dumpable-{}", std::process::id());
        let (init, command) = runtime.block_on(while_running(&fixture, &marker, |stages| {
            let look = |pid: u32| fs::read_link(format!("/proc/{pid}/exe"));
            (
                (status_field(stages.init, "CapPrm"), look(stages.init)),
                look(stages.command),
            )
        }));
        let own = status_field("thread-self", "CapPrm");
        let ((init_caps, init_exe), command_exe) = (init, command);
        assert!(
            command_exe.is_ok(),
            "the observer cannot even see the command: {command_exe:?}"
        );
        assert_eq!(
            init_caps, own,
            "PID 1's capabilities differ from the observer's"
        );
        let error = init_exe.expect_err("PID 1's executable is visible: PID 1 is dumpable");
        assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
    })
    .join()
    .unwrap();
}
