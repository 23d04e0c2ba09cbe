//! What one step asks of the runner: the root filesystem's layers, the process, the network
//! and the mounts. Plain data, with no Dockerfile concepts; the builder fills it in.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use imgb_cache::Store;
use serde::{Deserialize, Serialize};

/// The hostname a step sees unless the caller names another.
pub const DEFAULT_HOSTNAME: &str = "imgb";

/// The `PATH` a step gets when its environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One command in one ephemeral container.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The read-only layer directories of the root filesystem, bottom first. Never modified.
    /// Empty means an empty root filesystem (`FROM scratch`).
    pub lower_dirs: Vec<PathBuf>,
    /// The command; `argv[0]` is looked up in the step's `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs. `PATH` defaults to [`DEFAULT_PATH`] and `HOME` to the user's home.
    pub env: Vec<String>,
    /// The working directory inside the container, created (owned by root) if missing.
    pub cwd: String,
    /// `user[:group]`, names or numeric ids, resolved in the root filesystem's `/etc/passwd`
    /// and `/etc/group` as Docker does; empty means root.
    pub user: String,
    pub hostname: String,
    pub network: Network,
    /// Extra `/etc/hosts` entries (`--add-host`).
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// Mounts over the root filesystem, applied in order.
    pub mounts: Vec<Mount>,
    /// Sets `no_new_privs`, so setuid binaries cannot raise privileges. Off by default, as in
    /// Docker (`--security-opt no-new-privileges` turns it on there).
    pub no_new_privileges: bool,
    /// Kills the whole container when it runs longer.
    pub timeout: Option<Duration>,
    /// Where the step's changes go; `None` discards them.
    pub commit: Option<CommitTo>,
}

impl RunSpec {
    /// A spec with Docker's defaults: root, `/`, default network, no mounts, nothing kept.
    pub fn new(lower_dirs: Vec<PathBuf>, argv: Vec<String>) -> Self {
        Self {
            lower_dirs,
            argv,
            env: Vec::new(),
            cwd: "/".to_string(),
            user: String::new(),
            hostname: DEFAULT_HOSTNAME.to_string(),
            network: Network::DEFAULT,
            extra_hosts: Vec::new(),
            mounts: Vec::new(),
            no_new_privileges: false,
            timeout: None,
            commit: None,
        }
    }
}

/// The step's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A network namespace of its own with only the loopback interface, up.
    None,
    /// The host's network namespace.
    Host,
}

impl Network {
    /// What `--network=default` means: the host's network, as BuildKit's `auto` mode is when
    /// no CNI networking is configured. imgb sets up no bridge, so this is the only choice that
    /// lets `RUN apt-get` or `RUN curl` reach the network.
    pub const DEFAULT: Self = Self::Host;
}

/// A mount placed over the root filesystem for the step. The target is resolved inside the
/// root filesystem (symlinks cannot lead out of it) and created if missing; targets created
/// only for a mount are not recorded in the step's layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// An absolute path inside the container.
    pub target: String,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host file or directory. Read-only, or writable with the writes discarded at the end
    /// of the step (the source is never modified).
    Bind { source: PathBuf, read_only: bool },
    /// A fresh tmpfs, gone after the step.
    Tmpfs { size_bytes: Option<u64> },
    /// A host directory whose changes persist (`RUN --mount=type=cache`).
    Persistent { source: PathBuf },
}

/// How the step's changes become a layer: its upper directory becomes the layer's snapshot.
#[derive(Debug, Clone)]
pub struct CommitTo {
    /// The store that adopts the snapshot (the runner's temporary directory must be its
    /// `tmp/`, so adoption is a rename).
    pub store: Store,
    /// `SOURCE_DATE_EPOCH`: later mtimes are clamped to it.
    pub source_date_epoch: Option<i64>,
}

/// Per-step resource limits, the same for every step a [`Runner`](crate::Runner) runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// The most processes (and threads) the step may have at once. A cgroup's `pids.max`: a
    /// fork beyond it fails, and the runner then kills the whole step.
    pub pids_max: Option<u64>,
    /// The step's memory in bytes; beyond it the kernel's OOM killer ends the step. A
    /// cgroup's `memory.max` (no swap on top).
    pub memory_max: Option<u64>,
    /// How much disk the step's changes (its overlay upper directory) may take. Watched while
    /// the step runs and checked on its layer: the step is killed once over it.
    pub disk_max: Option<u64>,
}

impl Limits {
    /// The default process limit: far above what builds need, far below what hurts a host.
    pub const DEFAULT_PIDS_MAX: u64 = 4096;
}
