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
use std::time::{Duration, Instant};

use imgb_cache::SnapshotLayer;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::cgroup::{self, StepCgroup};
use crate::hosts;
use crate::protocol::{CommitSpec, ContainerSpec, Control, Ended, Report, RunDir, SupervisorSpec};
use crate::spec::{Limits, RunSpec};

/// Lines longer than this are delivered in pieces (binary output without newlines).
const MAX_LINE: usize = 64 * 1024;
/// Hostnames are limited by the kernel (`HOST_NAME_MAX`).
const MAX_HOSTNAME: usize = 64;
/// The shortest pause between two measurements of a step's disk use.
const DISK_CHECK_PAUSE: Duration = Duration::from_millis(100);
/// The pause between two looks at whether a step's cgroup refused a fork.
const PIDS_CHECK_PAUSE: Duration = Duration::from_millis(100);

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
    /// Killed for going over one of the runner's [`Limits`].
    LimitExceeded(ExceededLimit),
}

/// Which limit a step went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceededLimit {
    /// Its changes took `used` bytes of disk, over [`Limits::disk_max`].
    Disk { limit: u64, used: u64 },
    /// The kernel's OOM killer ended it at [`Limits::memory_max`].
    Memory { limit: u64 },
    /// A fork failed at [`Limits::pids_max`]: the runner killed every process of the step.
    Processes { limit: u64 },
}

impl std::fmt::Display for ExceededLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        match *self {
            Self::Disk { limit, used } => write!(
                f,
                "its changes took {:.1} MiB of disk, over the step's limit of {:.1} MiB",
                mib(used),
                mib(limit)
            ),
            Self::Memory { limit } => write!(
                f,
                "killed by the kernel for using more than the step's memory limit of {:.1} MiB",
                mib(limit)
            ),
            Self::Processes { limit } => write!(
                f,
                "killed because the step reached its process limit of {limit} (a fork failed)"
            ),
        }
    }
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
    #[error("{0}")]
    Limits(String),
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
    limits: Limits,
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
            limits: Limits::default(),
        }
    }

    /// Applies `limits` to every step. The process and memory limits need cgroups: as root
    /// a limit that cannot be set fails the step; rootless (where cgroups are rarely
    /// delegated) they are applied when possible.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits every step gets (see [`Runner::with_limits`]).
    pub fn limits(&self) -> &Limits {
        &self.limits
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
        let group_name = run_dir.file_name().unwrap_or_default().to_string_lossy();
        let created = cgroup::own_groups().and_then(|own| {
            StepCgroup::create(
                Path::new(cgroup::DEFAULT_ROOT),
                &own,
                &self.limits,
                &group_name,
            )
        });
        let cgroup = match created {
            Ok(cgroup) => cgroup,
            Err(_) if self.rootless => None,
            Err(message) => return Err(RunError::Limits(message)),
        };
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
        // Before the supervisor gets its spec, so every container process starts inside.
        if let Some(cgroup) = &cgroup {
            cgroup.add(pid).map_err(RunError::Limits)?;
        }
        let protocol = |error: io::Error| RunError::Protocol(error.to_string());
        ours.set_nonblocking(true).map_err(protocol)?;
        let (control_read, mut control_write) =
            UnixStream::from_std(ours).map_err(protocol)?.into_split();

        let start = Control::Start(Box::new(self.supervisor_spec(spec, run_dir)));
        send(&mut control_write, &start).await?;

        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let step_cgroup = cgroup.as_ref();
        let control = async move {
            let mut lines = BufReader::new(control_read).lines();
            let deadline = async {
                match spec.timeout {
                    Some(timeout) => tokio::time::sleep(timeout).await,
                    None => std::future::pending().await,
                }
            };
            let over_disk_limit = async {
                match self.limits.disk_max {
                    Some(limit) => watch_disk(RunDir(run_dir).upper(), limit).await,
                    None => std::future::pending().await,
                }
            };
            let over_process_limit = async {
                match (step_cgroup, self.limits.pids_max) {
                    (Some(cgroup), Some(limit)) => watch_pids(cgroup, limit).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::pin!(deadline);
            tokio::pin!(cancel);
            tokio::pin!(over_disk_limit);
            tokio::pin!(over_process_limit);
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
                    exceeded = &mut over_disk_limit, if kill_reason.is_none() => {
                        kill_reason = Some(RunStatus::LimitExceeded(exceeded));
                        let _ = control_write.shutdown().await;
                    }
                    exceeded = &mut over_process_limit, if kill_reason.is_none() => {
                        kill_reason = Some(RunStatus::LimitExceeded(exceeded));
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
            Some(Report::Finished { ended, layer }) => {
                let mut status = match (ended, kill_reason) {
                    (Ended::Exited(code), _) => RunStatus::Exited(code),
                    (Ended::Signaled(signal), _) => RunStatus::Signaled(signal),
                    (Ended::Killed, Some(reason)) => reason,
                    (Ended::Killed, None) => RunStatus::Cancelled,
                };
                let mut layer = layer.map(|layer| SnapshotLayer {
                    diff_id: layer.diff_id,
                    tar_size: layer.tar_size,
                });
                if let (Some(limit), false) = (self.limits.memory_max, status.success())
                    && cgroup.as_ref().is_some_and(StepCgroup::oom_killed)
                {
                    status = RunStatus::LimitExceeded(ExceededLimit::Memory { limit });
                }
                // Forks that failed between the last look and the end fail the step as well:
                // whatever it built was built with processes missing.
                if let Some(limit) = self.limits.pids_max
                    && status != RunStatus::Cancelled
                    && cgroup.as_ref().is_some_and(StepCgroup::pids_limit_reached)
                {
                    status = RunStatus::LimitExceeded(ExceededLimit::Processes { limit });
                    layer = None;
                }
                // What was written between two measurements counts too.
                if let (Some(limit), Some(written)) = (self.limits.disk_max, &layer)
                    && written.tar_size > limit
                {
                    status = RunStatus::LimitExceeded(ExceededLimit::Disk {
                        limit,
                        used: written.tar_size,
                    });
                    layer = None;
                }
                Ok(RunOutcome { status, layer })
            }
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

/// Resolves once the step's changes in `upper` take more than `limit` bytes. The pause between
/// two measurements grows with the cost of one, so a huge tree is not walked back to back.
async fn watch_disk(upper: PathBuf, limit: u64) -> ExceededLimit {
    let mut pause = DISK_CHECK_PAUSE;
    loop {
        tokio::time::sleep(pause).await;
        let started = Instant::now();
        let dir = upper.clone();
        let used = tokio::task::spawn_blocking(move || disk_usage(&dir))
            .await
            .unwrap_or(0);
        if used > limit {
            return ExceededLimit::Disk { limit, used };
        }
        pause = (started.elapsed() * 4).max(DISK_CHECK_PAUSE);
    }
}

/// Resolves once the step's cgroup refused a fork at its process limit: a fork bomb, or a step
/// that would go on with processes missing. Its processes keep forking at the limit, so the
/// runner kills them rather than wait for an end that may never come.
async fn watch_pids(cgroup: &StepCgroup, limit: u64) -> ExceededLimit {
    while !cgroup.pids_limit_reached() {
        tokio::time::sleep(PIDS_CHECK_PAUSE).await;
    }
    ExceededLimit::Processes { limit }
}

/// The disk space a directory tree takes (allocated blocks), skipping what cannot be read or
/// vanishes while it is walked.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
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
