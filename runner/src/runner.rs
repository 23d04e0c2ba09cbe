//! The caller's side: starts the init stages for one step, streams the step's output line by
//! line, writes the rootless id maps when asked, enforces the timeout and cancellation, and
//! returns how the command ended with the layer of its changes.
//!
//! Cancelling (the `cancel` future resolving, the timeout, or dropping the returned future)
//! closes the control socket; the init stages then kill the whole container and remove its
//! run directory on their own. `run` waits for that cleanup except when it is dropped.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use imgb_cache::SnapshotLayer;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::hosts;
use crate::protocol::{CommitSpec, ContainerSpec, Control, Ended, Report, SupervisorSpec};
use crate::spec::RunSpec;

/// Lines longer than this are delivered in pieces (binary output without newlines).
const MAX_LINE: usize = 64 * 1024;
/// Hostnames are limited by the kernel (`HOST_NAME_MAX`).
const MAX_HOSTNAME: usize = 64;

/// The program that runs the init stages: a binary whose `args` lead to
/// [`init::main`](crate::init::main), followed by the stage name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProgram {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl InitProgram {
    /// The running binary itself (`/proc/self/exe`) with a hidden subcommand, as imgb does.
    pub fn this_binary(subcommand: &str) -> Self {
        Self {
            program: PathBuf::from("/proc/self/exe"),
            args: vec![subcommand.into()],
        }
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One line of the step's output, with its newline (the last line may have none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub stream: OutputStream,
    pub line: Vec<u8>,
}

/// How the step's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Exited(i32),
    /// Killed by this signal (from inside the container).
    Signaled(i32),
    /// Killed by the runner after [`RunSpec::timeout`].
    TimedOut,
    /// Killed because the caller cancelled.
    Cancelled,
}

impl RunStatus {
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: RunStatus,
    /// The step's changes, when [`RunSpec::commit`] was set and the command exited with 0.
    pub layer: Option<SnapshotLayer>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid run spec: {reason}")]
    InvalidSpec { reason: String },
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the container init {program}: {source}", program = program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the container init: {0}")]
    Protocol(String),
    #[error("mapping ids for the rootless container: {0}")]
    IdMap(String),
    #[error("setting up the container: {0}")]
    Setup(String),
    #[error("the container init stopped without a report ({status})")]
    InitDied { status: String },
}

/// Runs steps in ephemeral containers. Rootless (a user namespace) when not started as root.
#[derive(Debug, Clone)]
pub struct Runner {
    scratch_dir: PathBuf,
    init: InitProgram,
    rootless: bool,
    subordinate_ids: bool,
}

impl Runner {
    /// `scratch_dir` holds each step's run directory (upper and work directories): put it on
    /// the store's filesystem (the store's `tmp/`).
    pub fn new(scratch_dir: impl Into<PathBuf>, init: InitProgram) -> Self {
        Self {
            scratch_dir: scratch_dir.into(),
            init,
            rootless: !rustix::process::geteuid().is_root(),
            subordinate_ids: true,
        }
    }

    /// Rootless only: whether to map `/etc/subuid` ranges (with `newuidmap`) when there are
    /// any. Without them, root is the only user inside.
    pub fn with_subordinate_ids(mut self, enabled: bool) -> Self {
        self.subordinate_ids = enabled;
        self
    }

    pub fn is_rootless(&self) -> bool {
        self.rootless
    }

    /// Runs `spec`, sending its output to `output` line by line (a closed receiver just drops
    /// the output). Resolving `cancel` kills the container.
    pub async fn run(
        &self,
        spec: &RunSpec,
        output: mpsc::Sender<OutputLine>,
        cancel: impl Future<Output = ()>,
    ) -> Result<RunOutcome, RunError> {
        validate(spec)?;
        let run_dir = create_run_dir(&self.scratch_dir)?;
        let result = self.run_in(spec, &run_dir, output, cancel).await;
        // The supervisor removes it; it is still there only if the supervisor died.
        if run_dir.exists()
            && let Err(source) = std::fs::remove_dir_all(&run_dir)
        {
            return Err(RunError::Io {
                op: "remove the leftover run directory",
                path: run_dir,
                source,
            });
        }
        result
    }

    async fn run_in(
        &self,
        spec: &RunSpec,
        run_dir: &Path,
        output: mpsc::Sender<OutputLine>,
        cancel: impl Future<Output = ()>,
    ) -> Result<RunOutcome, RunError> {
        let (ours, theirs) = StdUnixStream::pair().map_err(|source| RunError::Io {
            op: "create",
            path: "a socket pair".into(),
            source,
        })?;
        let mut child = tokio::process::Command::new(&self.init.program)
            .args(&self.init.args)
            .arg("supervise")
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Terminal signals (Ctrl-C) go to the caller, which then cancels properly.
            .process_group(0)
            .spawn()
            .map_err(|source| RunError::Spawn {
                program: self.init.program.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        let protocol = |error: io::Error| RunError::Protocol(error.to_string());
        ours.set_nonblocking(true).map_err(protocol)?;
        let (control_read, mut control_write) =
            UnixStream::from_std(ours).map_err(protocol)?.into_split();

        let start = Control::Start(Box::new(self.supervisor_spec(spec, run_dir)));
        send(&mut control_write, &start).await?;

        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let control = async move {
            let mut lines = BufReader::new(control_read).lines();
            let deadline = async {
                match spec.timeout {
                    Some(timeout) => tokio::time::sleep(timeout).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(deadline);
            tokio::pin!(cancel);
            let mut kill_reason = None;
            let mut report = None;
            loop {
                tokio::select! {
                    line = lines.next_line() => {
                        let Some(line) = line.map_err(protocol)? else { break };
                        match serde_json::from_str::<Report>(&line)
                            .map_err(|error| RunError::Protocol(error.to_string()))?
                        {
                            Report::MapIds => {
                                crate::idmap::map_ids(pid, self.subordinate_ids)
                                    .await
                                    .map_err(RunError::IdMap)?;
                                send(&mut control_write, &Control::IdsMapped).await?;
                            }
                            final_report => report = Some(final_report),
                        }
                    }
                    () = &mut deadline, if kill_reason.is_none() => {
                        kill_reason = Some(RunStatus::TimedOut);
                        let _ = control_write.shutdown().await;
                    }
                    () = &mut cancel, if kill_reason.is_none() => {
                        kill_reason = Some(RunStatus::Cancelled);
                        let _ = control_write.shutdown().await;
                    }
                }
            }
            Ok::<_, RunError>((report, kill_reason))
        };
        let (control, (), ()) = tokio::join!(
            control,
            pump(stdout, OutputStream::Stdout, &output),
            pump(stderr, OutputStream::Stderr, &output),
        );
        let status = child.wait().await.map_err(protocol)?;
        let (report, kill_reason) = control?;
        match report {
            Some(Report::Finished { ended, layer }) => Ok(RunOutcome {
                status: match (ended, kill_reason) {
                    (Ended::Exited(code), _) => RunStatus::Exited(code),
                    (Ended::Signaled(signal), _) => RunStatus::Signaled(signal),
                    (Ended::Killed, Some(reason)) => reason,
                    (Ended::Killed, None) => RunStatus::Cancelled,
                },
                layer: layer.map(|layer| SnapshotLayer {
                    diff_id: layer.diff_id,
                    tar_size: layer.tar_size,
                }),
            }),
            Some(Report::Failed { message }) => Err(RunError::Setup(message)),
            Some(Report::MapIds) | None => Err(RunError::InitDied {
                status: status.to_string(),
            }),
        }
    }

    fn supervisor_spec(&self, spec: &RunSpec, run_dir: &Path) -> SupervisorSpec {
        let host_resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        SupervisorSpec {
            run_dir: run_dir.to_owned(),
            rootless: self.rootless,
            container: ContainerSpec {
                run_dir: run_dir.to_owned(),
                rootless: self.rootless,
                lower_dirs: spec.lower_dirs.clone(),
                argv: spec.argv.clone(),
                env: spec.env.clone(),
                cwd: spec.cwd.clone(),
                user: spec.user.clone(),
                hostname: spec.hostname.clone(),
                network: spec.network,
                mounts: spec.mounts.clone(),
                no_new_privileges: spec.no_new_privileges,
                provided_files: hosts::provided_files(
                    &spec.hostname,
                    &spec.extra_hosts,
                    spec.network,
                    &host_resolv_conf,
                ),
                commit: spec.commit.is_some(),
            },
            commit: spec.commit.as_ref().map(|commit| CommitSpec {
                store_root: commit.store.root().to_owned(),
                lease: commit.store.lease().map(|lease| lease.path().to_owned()),
                source_date_epoch: commit.source_date_epoch,
            }),
        }
    }
}

fn validate(spec: &RunSpec) -> Result<(), RunError> {
    let invalid = |reason: String| Err(RunError::InvalidSpec { reason });
    if spec.argv.first().is_none_or(String::is_empty) {
        return invalid("no command to run".into());
    }
    if spec.hostname.is_empty()
        || spec.hostname.len() > MAX_HOSTNAME
        || spec.hostname.contains(['\0', '\n'])
    {
        return invalid(format!("hostname {:?} is not valid", spec.hostname));
    }
    for lower in &spec.lower_dirs {
        if !lower.is_dir() {
            return invalid(format!(
                "layer directory {} does not exist",
                lower.display()
            ));
        }
    }
    if spec.timeout == Some(Duration::ZERO) {
        return invalid("a timeout of 0 would kill the step before it starts".into());
    }
    Ok(())
}

/// A new, empty run directory `run-<pid>-<n>` (private to the caller).
fn create_run_dir(scratch_dir: &Path) -> Result<PathBuf, RunError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(scratch_dir).map_err(|source| RunError::Io {
        op: "create",
        path: scratch_dir.to_owned(),
        source,
    })?;
    loop {
        let path = scratch_dir.join(format!(
            "run-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(RunError::Io {
                    op: "create",
                    path,
                    source,
                });
            }
        }
    }
}

async fn send(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    message: &Control,
) -> Result<(), RunError> {
    let mut line =
        serde_json::to_vec(message).map_err(|error| RunError::Protocol(error.to_string()))?;
    line.push(b'\n');
    writer
        .write_all(&line)
        .await
        .map_err(|error| RunError::Protocol(error.to_string()))
}

/// Forwards one output pipe line by line until it closes (when the last container process
/// holding it is gone).
async fn pump(
    pipe: Option<impl AsyncRead + Unpin>,
    stream: OutputStream,
    output: &mpsc::Sender<OutputLine>,
) {
    let Some(pipe) = pipe else { return };
    let mut reader = BufReader::with_capacity(MAX_LINE, pipe);
    let mut line = Vec::new();
    loop {
        let (done, used) = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                if !line.is_empty() {
                    let _ = output.send(OutputLine { stream, line }).await;
                }
                return;
            }
            Ok(buffer) => {
                let room = MAX_LINE - line.len();
                match buffer.iter().take(room).position(|&b| b == b'\n') {
                    Some(end) => {
                        line.extend_from_slice(&buffer[..=end]);
                        (true, end + 1)
                    }
                    None => {
                        let used = buffer.len().min(room);
                        line.extend_from_slice(&buffer[..used]);
                        (line.len() == MAX_LINE, used)
                    }
                }
            }
        };
        reader.consume(used);
        if done {
            let full = std::mem::take(&mut line);
            // A dropped receiver means nobody is listening: keep draining the pipe.
            let _ = output.send(OutputLine { stream, line: full }).await;
        }
    }
}
