//! SSH agents of remote builds (`imgb build --remote --ssh ID`): each id the client declared
//! gets a socket of the server's own in the build's work directory. The build's RUN steps reach
//! it through the mount proxy local builds use, and every connection to it is relayed to the
//! client over the agent tunnel ([`crate::serve::agent_tunnel`]) that the client attaches
//! with `GET /v1/builds/{id}/ssh` (an HTTP/1.1 upgrade to [`UPGRADE_PROTOCOL`]).
//!
//! Invariants:
//! - The server never reads an agent of its own: a remote build's steps reach only these
//!   sockets, and each connection to them goes to the client.
//! - Only the submitter attaches: the upgrade carries the build's attach key (random, given in
//!   the answer to the submission only) in [`KEY_HEADER`], and a build is attached once.
//! - A connection made before the client attached waits for it up to [`ATTACH_WAIT`]; once
//!   the tunnel has ended (the client went away) connections are closed at once. Either way a
//!   RUN sees its agent socket close, as with a dead agent; the server goes on.
//! - Dropping the [`AgentSockets`] (the build ended) stops the listeners, removes the sockets
//!   and ends the tunnel.

use super::request::Refusal;
use crate::serve::agent_tunnel::{Frame, Multiplexer, QUEUED_FRAMES, read_frame, write_frames};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The header of `GET /v1/builds/{id}/ssh` carrying the build's attach key.
pub const KEY_HEADER: &str = "x-imgb-ssh-key";
/// The protocol `GET /v1/builds/{id}/ssh` upgrades to.
pub const UPGRADE_PROTOCOL: &str = "imgb-ssh-agent";
/// How long a RUN's agent connection waits for the client to attach.
pub const ATTACH_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
enum Tunnel {
    Waiting,
    Attached(Arc<Multiplexer>),
    Ended,
}

/// What the listeners and the tunnel share.
#[derive(Debug)]
struct Shared {
    tunnel: watch::Sender<Tunnel>,
    next_connection: AtomicU32,
    claimed: AtomicBool,
    relay: Mutex<Option<JoinHandle<()>>>,
}

/// The agent sockets of one build, by id.
pub struct AgentSockets {
    key: String,
    sockets: BTreeMap<String, PathBuf>,
    shared: Arc<Shared>,
    listeners: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for AgentSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSockets")
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

impl AgentSockets {
    /// Listens on a socket in `dir` (made private) for each of `ids`.
    pub fn bind(dir: &Path, ids: &[String]) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let (tunnel, _) = watch::channel(Tunnel::Waiting);
        let shared = Arc::new(Shared {
            tunnel,
            next_connection: AtomicU32::new(0),
            claimed: AtomicBool::new(false),
            relay: Mutex::new(None),
        });
        let mut sockets = BTreeMap::new();
        let mut listeners = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            let socket = dir.join(format!("agent-{index}.sock"));
            let listener = UnixListener::bind(&socket)?;
            sockets.insert(id.clone(), socket);
            let (shared, id) = (Arc::clone(&shared), id.clone());
            listeners.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(Arc::clone(&shared).forward(id.clone(), stream));
                }
            }));
        }
        let mut random = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        let key = random.iter().map(|byte| format!("{byte:02x}")).collect();
        Ok(AgentSockets {
            key,
            sockets,
            shared,
            listeners,
        })
    }

    /// The key the submitter attaches with.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The socket of each id, for the build's `--ssh`.
    pub fn sockets(&self) -> &BTreeMap<String, PathBuf> {
        &self.sockets
    }

    /// Checks an attach request's key and that nobody attached before; the caller upgrades
    /// the connection and hands it to [`AgentSockets::attach`].
    pub fn claim(&self, key: Option<&[u8]>) -> Result<(), Refusal> {
        let matches = key.is_some_and(|key| bool::from(key.ct_eq(self.key.as_bytes())));
        if !matches {
            return Err(Refusal {
                status: 403,
                message: format!(
                    "attaching SSH agents needs the key the submission was answered with \
                     ({KEY_HEADER})"
                ),
            });
        }
        if self.shared.claimed.swap(true, Ordering::SeqCst) {
            return Err(Refusal {
                status: 409,
                message: "the build's SSH agents are attached already".into(),
            });
        }
        Ok(())
    }

    /// Serves the tunnel on the upgraded connection once it is there (`None`: the upgrade
    /// failed, which ends the tunnel before it began).
    pub fn attach(&self, upgrade: impl Future<Output = Option<Upgraded>> + Send + 'static) {
        let shared = Arc::clone(&self.shared);
        let relay = tokio::spawn(async move {
            if let Some(upgraded) = upgrade.await {
                shared.serve(TokioIo::new(upgraded)).await;
            }
            shared.end();
        });
        *self
            .shared
            .relay
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(relay);
    }
}

impl Drop for AgentSockets {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        if let Some(relay) = self
            .shared
            .relay
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
        {
            relay.abort();
        }
        self.shared.end();
        for socket in self.sockets.values() {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Shared {
    /// Relays one RUN connection to agent `id` to the client, once it is attached.
    async fn forward(self: Arc<Self>, id: String, stream: UnixStream) {
        let mut tunnel = self.tunnel.subscribe();
        let ready = tokio::time::timeout(ATTACH_WAIT, async {
            match tunnel
                .wait_for(|state| !matches!(state, Tunnel::Waiting))
                .await
            {
                Ok(state) => state.clone(),
                Err(_) => Tunnel::Ended,
            }
        })
        .await;
        let state = ready.unwrap_or(Tunnel::Ended);
        // Not attached in time, or gone: the stream closes as it drops.
        let Tunnel::Attached(multiplexer) = state else {
            return;
        };
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let _ = multiplexer.open(connection, id, stream).await;
    }

    /// Reads the client's frames until the tunnel ends; the client opens nothing.
    async fn serve(&self, stream: TokioIo<Upgraded>) {
        let (mut reader, writer) = tokio::io::split(stream);
        let (outgoing, frames) = mpsc::channel(QUEUED_FRAMES);
        let multiplexer = Multiplexer::new(outgoing);
        let writing = tokio::spawn(write_frames(writer, frames));
        self.tunnel
            .send_replace(Tunnel::Attached(Arc::clone(&multiplexer)));
        loop {
            match read_frame(&mut reader).await {
                Ok(Some(Frame::Open { .. })) => {
                    crate::serve::log(format_args!(
                        "warning: an SSH agent tunnel client sent an open frame; closing it"
                    ));
                    break;
                }
                Ok(Some(frame)) => multiplexer.deliver(frame),
                Ok(None) => break,
                Err(error) => {
                    crate::serve::log(format_args!("warning: {error}"));
                    break;
                }
            }
        }
        self.end();
        multiplexer.close_all();
        writing.abort();
    }

    fn end(&self) {
        if let Tunnel::Attached(multiplexer) = self.tunnel.send_replace(Tunnel::Ended) {
            multiplexer.close_all();
        }
    }
}
