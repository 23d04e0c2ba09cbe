//! The messages between the caller and the init stages, one JSON document per line over a
//! Unix socket that is each stage's standard input.
//!
//! The socket doubles as the kill switch: when the caller's end closes (cancel, timeout, or the
//! caller died), the supervisor closes its end toward the container, and the pid namespace's
//! holder kills the container's PID 1, which takes every process in the namespace with it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use imgb_cache::Digest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::resolve::Stubs;
use crate::spec::{Mount, Network};

/// The caller's messages to the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    Start(Box<SupervisorSpec>),
    /// The user namespace's id maps are written (rootless only).
    IdsMapped,
}

/// The supervisor's messages to the caller.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// Rootless: the supervisor is in a new user namespace; map its ids.
    MapIds,
    Finished {
        ended: Ended,
        layer: Option<CommittedLayer>,
    },
    Failed {
        message: String,
    },
}

/// How the container's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Ended {
    Exited(i32),
    Signaled(i32),
    /// Killed on request (cancel or timeout) before it ended by itself.
    Killed,
}

/// What the supervisor needs: where to work, how to re-execute the init, the container.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SupervisorSpec {
    /// An empty directory owned by the caller; the supervisor fills it and removes it.
    pub run_dir: PathBuf,
    pub rootless: bool,
    pub container: ContainerSpec,
    pub commit: Option<CommitSpec>,
}

/// Everything PID 1 needs to build the container and start the command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContainerSpec {
    pub run_dir: PathBuf,
    pub rootless: bool,
    pub lower_dirs: Vec<PathBuf>,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub hostname: String,
    pub network: Network,
    pub mounts: Vec<Mount>,
    pub no_new_privileges: bool,
    /// `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`: provided, not committed.
    pub provided_files: Vec<ProvidedFile>,
    /// Whether the step's changes will be kept (PID 1 then writes back provided files that the
    /// command changed).
    pub commit: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProvidedFile {
    /// The path inside the container.
    pub target: String,
    /// The file in the run directory's `files/`.
    pub name: String,
    pub content: String,
}

/// PID 1's final message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ContainerReport {
    Exited {
        ended: Ended,
        /// Paths imgb created in the upper directory only to mount on them.
        stubs: Stubs,
    },
    Failed {
        message: String,
    },
}

/// The process an init stage becomes: credentials and all, right before `execve`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub no_new_privileges: bool,
}

/// Where the supervisor adopts the step's upper directory as a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommitSpec {
    pub store_root: PathBuf,
    /// The caller's lease, which the adopted snapshot joins so that prune leaves it alone.
    pub lease: Option<PathBuf>,
    pub source_date_epoch: Option<i64>,
}

/// The layer the supervisor adopted as a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommittedLayer {
    pub diff_id: Digest,
    pub tar_size: u64,
}

/// The fixed layout of a run directory.
#[derive(Debug, Clone)]
pub(crate) struct RunDir<'a>(pub &'a Path);

impl RunDir<'_> {
    /// The overlay's upper directory: the step's changes.
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
    /// The read-only bind mount of imgb's binary the exec stage runs from.
    pub fn exec_binary(&self) -> PathBuf {
        self.0.join("imgb")
    }
    /// Where the root filesystem is assembled before `pivot_root`.
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }
    /// The provided files (`hosts`, `resolv.conf`, `hostname`) and copies of bind sources.
    pub fn files(&self) -> PathBuf {
        self.0.join("files")
    }
    /// Upper and work directories of writable bind mounts, `discard/<n>/{upper,work}`.
    pub fn discard(&self) -> PathBuf {
        self.0.join("discard")
    }
    /// A tmpfs holding the device nodes that `/dev` gets bind mounts of (rootful only).
    pub fn devices(&self) -> PathBuf {
        self.0.join("devices")
    }
    /// The lower directory of a root filesystem with no layers.
    pub fn empty_lower(&self) -> PathBuf {
        self.0.join("empty")
    }
}

/// A blocking, line-framed JSON channel (the init side).
#[derive(Debug)]
pub(crate) struct Channel {
    stream: UnixStream,
    buffer: Vec<u8>,
    eof: bool,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            eof: false,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn send<T: Serialize>(&mut self, message: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
        line.push(b'\n');
        self.stream.write_all(&line)
    }

    /// The next message, waiting for it; `None` at end of stream.
    pub fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        loop {
            if let Some(message) = self.pop()? {
                return Ok(Some(message));
            }
            if self.eof {
                return Ok(None);
            }
            self.fill()?;
        }
    }

    /// Reads what is available (after `poll` said so) without waiting for a whole line.
    pub fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => self.eof = true,
            Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => self.eof = true,
            Err(error) => return Err(error),
        }
        Ok(())
    }

    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// A complete message from the buffer, if there is one.
    pub fn pop<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        let Some(end) = self.buffer.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line: Vec<u8> = self.buffer.drain(..=end).collect();
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
    }
}
