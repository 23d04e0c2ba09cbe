//! The SSH agent tunnel of `imgb build --remote --ssh`: one upgraded connection between the
//! client and the server (`GET /v1/builds/{id}/ssh`) carries every agent connection a build's
//! RUN steps open, multiplexed in frames.
//!
//! A frame is a 9-byte header, `kind` (u8), `connection` (u32, big-endian), `length` (u32,
//! big-endian), then `length` bytes:
//! - `1` open: the server asks the client to connect `connection` to the agent whose id is the
//!   payload (UTF-8);
//! - `2` data: bytes of `connection`, either way;
//! - `3` close: `connection` is over (no payload), either way.
//!
//! Invariants:
//! - Payloads are at most [`MAX_PAYLOAD`] bytes and ids at most [`MAX_ID`]; anything else
//!   (an unknown kind, a longer frame, a stream cut inside a frame) is a [`FrameError`] that
//!   ends the tunnel, and with it every connection on it.
//! - At most [`MAX_CONNECTIONS`] connections are open on a tunnel at once; one more is closed
//!   at once.
//! - A connection whose incoming frames pile up past [`QUEUED_FRAMES`] is closed rather than
//!   stalling the tunnel (agent traffic is request and answer, so this never happens to it).
//! - When the tunnel ends, every local socket relayed over it is closed: a RUN sees its agent
//!   go away, as ssh does when an agent dies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// The most bytes one frame carries.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The longest agent id an open frame may name.
pub const MAX_ID: usize = 256;
/// Agent connections open on one tunnel at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Frames waiting for one local connection before it is closed.
pub const QUEUED_FRAMES: usize = 64;

const HEADER: usize = 9;
const OPEN: u8 = 1;
const DATA: u8 = 2;
const CLOSE: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Open { connection: u32, id: String },
    Data { connection: u32, bytes: Vec<u8> },
    Close { connection: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the agent tunnel broke: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent tunnel ended inside a frame")]
    Truncated,
    #[error("agent tunnel frame of unknown kind {0}")]
    UnknownKind(u8),
    #[error("agent tunnel frame of {length} bytes (at most {limit})")]
    TooLong { length: usize, limit: usize },
    #[error("agent tunnel: a close frame with a payload")]
    CloseWithPayload,
    #[error("agent tunnel: the id of an open frame is not UTF-8")]
    BadId,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, connection, payload) = match self {
            Frame::Open { connection, id } => (OPEN, *connection, id.as_bytes()),
            Frame::Data { connection, bytes } => (DATA, *connection, bytes.as_slice()),
            Frame::Close { connection } => (CLOSE, *connection, &[][..]),
        };
        let mut encoded = Vec::with_capacity(HEADER + payload.len());
        encoded.push(kind);
        encoded.extend_from_slice(&connection.to_be_bytes());
        // Payloads are built by this module within MAX_PAYLOAD.
        encoded.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        encoded.extend_from_slice(payload);
        encoded
    }
}

/// The next frame of `reader`, or `None` where the stream ends between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER];
    let first = reader.read(&mut header).await?;
    if first == 0 {
        return Ok(None);
    }
    read_fully(reader, &mut header[first..]).await?;
    let [kind, c0, c1, c2, c3, l0, l1, l2, l3] = header;
    let connection = u32::from_be_bytes([c0, c1, c2, c3]);
    let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    let limit = match kind {
        OPEN => MAX_ID,
        DATA => MAX_PAYLOAD,
        CLOSE if length == 0 => 0,
        CLOSE => return Err(FrameError::CloseWithPayload),
        other => return Err(FrameError::UnknownKind(other)),
    };
    if length > limit {
        return Err(FrameError::TooLong { length, limit });
    }
    let mut payload = vec![0u8; length];
    read_fully(reader, &mut payload).await?;
    Ok(Some(match kind {
        OPEN => Frame::Open {
            connection,
            id: String::from_utf8(payload).map_err(|_| FrameError::BadId)?,
        },
        DATA => Frame::Data {
            connection,
            bytes: payload,
        },
        _ => Frame::Close { connection },
    }))
}

async fn read_fully<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut [u8],
) -> Result<(), FrameError> {
    match reader.read_exact(buffer).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(FrameError::Truncated)
        }
        Err(error) => Err(error.into()),
    }
}

/// Writes the frames `outgoing` delivers to `writer` until every sender is gone or the
/// stream breaks.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut outgoing: mpsc::Receiver<Frame>,
) {
    while let Some(frame) = outgoing.recv().await {
        if writer.write_all(&frame.encode()).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// The connections of one tunnel: relays between local sockets and the tunnel's frames.
#[derive(Debug)]
pub struct Multiplexer {
    outgoing: mpsc::Sender<Frame>,
    connections: Mutex<HashMap<u32, mpsc::Sender<Vec<u8>>>>,
}

/// A connection refused because [`MAX_CONNECTIONS`] are open.
#[derive(Debug)]
pub struct TooManyConnections;

impl Multiplexer {
    /// A multiplexer whose frames go out through `outgoing` (to [`write_frames`]).
    pub fn new(outgoing: mpsc::Sender<Frame>) -> Arc<Self> {
        Arc::new(Multiplexer {
            outgoing,
            connections: Mutex::new(HashMap::new()),
        })
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::Sender<Vec<u8>>>> {
        // Every update is one insert or remove: a panic cannot leave the map half-changed.
        self.connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Sends a frame out; false once the tunnel is gone.
    pub async fn send(&self, frame: Frame) -> bool {
        self.outgoing.send(frame).await.is_ok()
    }

    /// Relays `local` as `connection` (opened by the peer) until either end closes it.
    pub fn relay(
        self: &Arc<Self>,
        connection: u32,
        local: UnixStream,
    ) -> Result<(), TooManyConnections> {
        let incoming = self.register(connection)?;
        tokio::spawn(Arc::clone(self).pump(connection, local, incoming));
        Ok(())
    }

    /// Asks the peer to connect `connection` to its agent `id`, then relays `local` as it.
    pub async fn open(
        self: &Arc<Self>,
        connection: u32,
        id: String,
        local: UnixStream,
    ) -> Result<(), TooManyConnections> {
        let incoming = self.register(connection)?;
        // The open goes out before any of the connection's data can.
        self.send(Frame::Open { connection, id }).await;
        tokio::spawn(Arc::clone(self).pump(connection, local, incoming));
        Ok(())
    }

    fn register(&self, connection: u32) -> Result<mpsc::Receiver<Vec<u8>>, TooManyConnections> {
        let (sender, incoming) = mpsc::channel(QUEUED_FRAMES);
        let mut connections = self.connections();
        if connections.len() >= MAX_CONNECTIONS || connections.contains_key(&connection) {
            return Err(TooManyConnections);
        }
        connections.insert(connection, sender);
        Ok(incoming)
    }

    async fn pump(
        self: Arc<Self>,
        connection: u32,
        mut local: UnixStream,
        mut incoming: mpsc::Receiver<Vec<u8>>,
    ) {
        let mut buffer = vec![0u8; MAX_PAYLOAD];
        let closed_here = loop {
            tokio::select! {
                read = local.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break true,
                    Ok(length) => {
                        let bytes = buffer.get(..length).unwrap_or_default().to_vec();
                        if !self.send(Frame::Data { connection, bytes }).await {
                            break false;
                        }
                    }
                },
                bytes = incoming.recv() => match bytes {
                    Some(bytes) => {
                        if local.write_all(&bytes).await.is_err() {
                            break true;
                        }
                    }
                    // The peer closed it, or the tunnel ended.
                    None => break false,
                },
            }
        };
        self.connections().remove(&connection);
        if closed_here {
            self.send(Frame::Close { connection }).await;
        }
    }

    /// Hands a data or close frame that came over the tunnel to its connection. A frame for a
    /// connection that is gone is dropped (it crossed a close on the way).
    pub fn deliver(&self, frame: Frame) {
        let mut connections = self.connections();
        match frame {
            Frame::Data { connection, bytes } => {
                let full = connections
                    .get(&connection)
                    .is_some_and(|sender| sender.try_send(bytes).is_err());
                if full {
                    connections.remove(&connection);
                }
            }
            Frame::Close { connection } => {
                connections.remove(&connection);
            }
            Frame::Open { .. } => {}
        }
    }

    /// Closes every connection (the tunnel ended).
    pub fn close_all(&self) {
        self.connections().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decode(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        read_frame(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn frames_round_trip() {
        for frame in [
            Frame::Open {
                connection: 7,
                id: "default".into(),
            },
            Frame::Data {
                connection: u32::MAX,
                bytes: vec![0, 1, 2, 255],
            },
            Frame::Data {
                connection: 1,
                bytes: vec![9; MAX_PAYLOAD],
            },
            Frame::Close { connection: 0 },
        ] {
            let encoded = frame.encode();
            assert_eq!(decode(&encoded).await.unwrap(), Some(frame.clone()));
            // Split over reads, as a network delivers it.
            let (left, right) = encoded.split_at(4);
            let mut reader = left.chain(right);
            assert_eq!(read_frame(&mut reader).await.unwrap(), Some(frame));
        }
        assert_eq!(decode(b"").await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_frames_are_errors_not_panics() {
        let data = Frame::Data {
            connection: 1,
            bytes: b"abc".to_vec(),
        }
        .encode();
        assert!(matches!(
            decode(&data[..5]).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            decode(&data[..data.len() - 1]).await,
            Err(FrameError::Truncated)
        ));
        let mut unknown = data.clone();
        unknown[0] = 9;
        assert!(matches!(
            decode(&unknown).await,
            Err(FrameError::UnknownKind(9))
        ));
        let mut close = data.clone();
        close[0] = CLOSE;
        assert!(matches!(
            decode(&close).await,
            Err(FrameError::CloseWithPayload)
        ));
        let bad_id = [&[OPEN, 0, 0, 0, 1, 0, 0, 0, 2][..], &[0xff, 0xfe]].concat();
        assert!(matches!(decode(&bad_id).await, Err(FrameError::BadId)));
    }

    #[tokio::test]
    async fn lengths_past_the_limits_are_refused_before_reading_them() {
        let huge = [DATA, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode(&huge).await,
            Err(FrameError::TooLong {
                limit: MAX_PAYLOAD,
                ..
            })
        ));
        let long_id = Frame::Open {
            connection: 1,
            id: "x".repeat(MAX_ID + 1),
        }
        .encode();
        assert!(matches!(
            decode(&long_id).await,
            Err(FrameError::TooLong { limit: MAX_ID, .. })
        ));
    }

    #[tokio::test]
    async fn connections_relay_both_ways_and_are_bounded() {
        let (outgoing, mut frames) = mpsc::channel(QUEUED_FRAMES);
        let multiplexer = Multiplexer::new(outgoing);
        let mut ends = Vec::new();
        for connection in 0..MAX_CONNECTIONS as u32 {
            let (local, remote) = UnixStream::pair().unwrap();
            multiplexer.relay(connection, local).unwrap();
            ends.push(remote);
        }
        let (extra, _) = UnixStream::pair().unwrap();
        assert!(multiplexer.relay(99, extra).is_err());

        ends[3].write_all(b"ping").await.unwrap();
        assert_eq!(
            frames.recv().await.unwrap(),
            Frame::Data {
                connection: 3,
                bytes: b"ping".to_vec()
            }
        );
        multiplexer.deliver(Frame::Data {
            connection: 3,
            bytes: b"pong".to_vec(),
        });
        let mut answer = [0u8; 4];
        ends[3].read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong");

        // The peer's close ends the local socket; a local close is sent as a close frame.
        multiplexer.deliver(Frame::Close { connection: 3 });
        assert_eq!(ends[3].read(&mut answer).await.unwrap(), 0);
        drop(ends.remove(0));
        assert_eq!(frames.recv().await.unwrap(), Frame::Close { connection: 0 });
        // Freed slots take new connections; the end of the tunnel closes all of them.
        let (local, mut remote) = UnixStream::pair().unwrap();
        multiplexer.relay(99, local).unwrap();
        multiplexer.close_all();
        assert_eq!(remote.read(&mut answer).await.unwrap(), 0);
    }
}
