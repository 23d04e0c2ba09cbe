//! Listeners for `imgb serve`: unix sockets and TCP, optionally TLS (mutual with a client CA),
//! and the accept loop that serves the app on each connection.
//!
//! Invariants:
//! - A TCP listener that is not loopback-only needs TLS and tokens unless `--insecure`:
//!   [`check_exposure`] refuses before anything binds.
//! - Slow or hostile clients cannot hold the accept loop: TLS handshakes run in the
//!   connection's own task under a timeout, request heads must arrive within
//!   [`HEADER_READ_TIMEOUT`] and fit [`MAX_HEADER_BYTES`] (hyper answers 431 otherwise).
//! - Shutdown stops accepting at once; connections already open finish through hyper's graceful
//!   shutdown, which the caller awaits ([`Connections`]). A connection upgraded to a build's
//!   SSH agent tunnel leaves hyper, and ends with its build.
//! - Every request carries its connection's [`Transport`] as an extension, so handlers can
//!   refuse what must not travel in the clear (build secrets).

use anyhow::{Context, Result, bail};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// The most a request head (request line and headers) may take.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most headers a request may carry.
const MAX_HEADERS: usize = 100;
/// How long a client has to send a request head once it starts one.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client has to complete a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a request reached the server (a request extension set per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A unix socket: local, guarded by file permissions.
    Unix,
    /// Plain TCP: readable by anyone on the path.
    Tcp,
    Tls,
}

/// One `--listen` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `unix:///path/to/socket`
    Unix(PathBuf),
    /// `tcp://HOST:PORT` or `HOST:PORT`
    Tcp(String),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("{text:?}: the unix socket path is empty"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let address = text.strip_prefix("tcp://").unwrap_or(text);
        if address.contains("://") {
            return Err(format!(
                "{text:?}: unsupported scheme (expected unix:///PATH, tcp://HOST:PORT or HOST:PORT)"
            ));
        }
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(address.to_string()))
            }
            _ => Err(format!(
                "{text:?}: expected HOST:PORT (e.g. 127.0.0.1:8470 or [::1]:8470)"
            )),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

/// What protects a listener from the network, for [`check_exposure`].
#[derive(Debug, Clone, Copy)]
pub struct Protection {
    pub tls: bool,
    pub tokens: bool,
    pub insecure: bool,
}

/// Resolves a TCP address and refuses one reachable beyond this host unless it has TLS and
/// tokens, or `--insecure` says the operator knows.
pub fn check_exposure(address: &str, protection: Protection) -> Result<Vec<SocketAddr>> {
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(address)
        .with_context(|| format!("resolving --listen {address}"))?
        .collect();
    let exposed = resolved.iter().any(|addr| !addr.ip().is_loopback());
    if exposed && !protection.insecure {
        let missing = match (protection.tls, protection.tokens) {
            (false, false) => Some("TLS (--tls-cert/--tls-key) and tokens (--token-file)"),
            (false, true) => Some("TLS (--tls-cert/--tls-key)"),
            (true, false) => Some("tokens (--token-file)"),
            (true, true) => None,
        };
        if let Some(missing) = missing {
            bail!(
                "refusing to listen on {address}: it is reachable from other hosts and has no \
                 {missing} (hint: add them, listen on 127.0.0.1 or a unix socket, or pass \
                 --insecure to accept the risk)"
            );
        }
    }
    Ok(resolved)
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    /// The socket file is removed when the listener is dropped.
    Unix(UnixListener, SocketFile),
}

/// A unix socket's path, removed on drop so a restart finds no stale file.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Binds `addr`; `resolved` are the TCP addresses [`check_exposure`] vetted.
    pub async fn bind(addr: &ListenAddr, resolved: &[SocketAddr]) -> Result<Self> {
        match addr {
            ListenAddr::Tcp(text) => {
                let listener = TcpListener::bind(resolved)
                    .await
                    .with_context(|| format!("listening on {text}"))?;
                Ok(Self::Tcp(listener))
            }
            ListenAddr::Unix(path) => bind_unix(path).await,
        }
    }

    /// Where the listener ended up (a TCP port of 0 is resolved), for the startup line.
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => format!("tcp://{addr}"),
                Err(_) => "tcp://?".to_string(),
            },
            Self::Unix(_, socket) => format!("unix://{}", socket.0.display()),
        }
    }
}

/// Binds a unix socket with mode 0660, replacing a stale socket file but never a live server's
/// socket or a file that is not a socket.
async fn bind_unix(path: &Path) -> Result<Listener> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            bail!(
                "--listen unix://{}: the path exists and is not a socket",
                path.display()
            );
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "--listen unix://{}: another server is listening there",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    let socket = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(Listener::Unix(listener, socket))
}

/// The TLS settings: `--tls-cert`/`--tls-key`, and `--tls-client-ca` for mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Builds the TLS acceptor (rustls with ring, HTTP/1.1 by ALPN). With a client CA, clients
/// must present a certificate it signed.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", files.cert.display()))?;
    if certs.is_empty() {
        bail!(
            "--tls-cert {}: no PEM certificate found",
            files.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading a private key from {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading --tls-client-ca {}", ca.display()))?
            {
                let cert =
                    cert.with_context(|| format!("reading --tls-client-ca {}", ca.display()))?;
                roots.add(cert).with_context(|| {
                    format!("--tls-client-ca {}: a bad CA certificate", ca.display())
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .with_context(|| format!("--tls-client-ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "--tls-cert {} and --tls-key {} do not form a usable pair",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What every accept loop shares; `tls` applies to TCP connections only.
#[derive(Clone)]
pub struct Serving {
    pub app: Router,
    pub tls: Option<TlsAcceptor>,
}

/// The open connections of a server, for graceful shutdown. (hyper-util's `GracefulShutdown`
/// cannot watch connections that may be upgraded.)
pub struct Connections {
    closing: watch::Sender<bool>,
    open: tokio::sync::mpsc::Sender<()>,
    all_closed: tokio::sync::mpsc::Receiver<()>,
}

/// One connection's part of [`Connections`]: told when to close, counted while it lives.
#[derive(Clone)]
pub struct Watcher {
    closing: watch::Receiver<bool>,
    _open: tokio::sync::mpsc::Sender<()>,
}

impl Default for Connections {
    fn default() -> Self {
        let (closing, _) = watch::channel(false);
        let (open, all_closed) = tokio::sync::mpsc::channel(1);
        Connections {
            closing,
            open,
            all_closed,
        }
    }
}

impl Connections {
    pub fn watcher(&self) -> Watcher {
        Watcher {
            closing: self.closing.subscribe(),
            _open: self.open.clone(),
        }
    }

    /// Asks every connection to finish its exchange and close, and waits until all have.
    pub async fn shutdown(self) {
        let Connections {
            closing,
            open,
            mut all_closed,
        } = self;
        closing.send_replace(true);
        drop(open);
        // Nothing is ever sent: this returns once every watcher is gone.
        while all_closed.recv().await.is_some() {}
    }
}

/// Accepts connections until `stop` turns true, serving each in its own task watched by the
/// graceful shutdown `watcher` source.
pub async fn accept_loop(
    listener: Listener,
    serving: Serving,
    mut stop: watch::Receiver<bool>,
    watcher: impl Fn() -> Watcher,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(Connection::Tcp(stream)) => {
                // Small request/response exchanges are latency-bound.
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, &serving.app, serving.tls.clone(), watcher());
            }
            // File permissions guard a unix socket; TLS is for the network.
            Ok(Connection::Unix(stream)) => {
                let app = with_transport(&serving.app, Transport::Unix);
                tokio::spawn(serve_connection(stream, app, watcher()));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                super::log(format_args!(
                    "warning: accepting on {}: {error}",
                    listener.describe()
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Connection {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Connection> {
    match listener {
        Listener::Tcp(listener) => Ok(Connection::Tcp(listener.accept().await?.0)),
        Listener::Unix(listener, _) => Ok(Connection::Unix(listener.accept().await?.0)),
    }
}

/// `app` with every request marked as having come over `transport`.
fn with_transport(app: &Router, transport: Transport) -> Router {
    app.clone().layer(axum::Extension(transport))
}

fn spawn_connection(
    stream: tokio::net::TcpStream,
    app: &Router,
    tls: Option<TlsAcceptor>,
    watcher: Watcher,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let app = with_transport(app, transport);
    tokio::spawn(async move {
        match tls {
            None => serve_connection(stream, app, watcher).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                // A failed or stalled handshake (wrong CA, no client certificate, plain HTTP)
                // is the client's problem; rustls has already sent its alert.
                if let Ok(Ok(stream)) = handshake.await {
                    serve_connection(stream, app, watcher).await;
                }
            }
        }
    });
}

async fn serve_connection<S>(stream: S, app: Router, mut watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(connection);
    // Client disconnects and protocol errors end only this connection.
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = watcher.closing.wait_for(|closing| *closing) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}
