//! `imgb serve`: one long-running imgb that runs builds for clients and holds the team's cache.
//!
//! This module parses the flags, vets the listeners, composes the app and runs the lifecycle:
//! - the app is `/v1/health` + `/healthz` (unauthenticated: probes carry no token), then behind
//!   [`auth::authenticate`] the build API (`/v1/builds`, [`builds`]), metrics and the OCI
//!   distribution API for the shared build cache (`/v2/`);
//! - request heads are capped by [`listen`]; bodies that handlers buffer (JSON, manifests) by
//!   [`MAX_BUFFERED_BODY`]; streamed bodies (contexts, blobs) by their own handlers' limits;
//! - SIGTERM/SIGINT: stop accepting, let running builds finish for `--shutdown-grace`, cancel
//!   the rest ([`builds::BuildService::drain`]), then close connections gracefully; a second
//!   signal cancels running builds at once.
//!
//! The registry holds a lease on the store ("imgb serve registry", renewed hourly), so prune
//! never removes what it recently stored or served, and its tags are prune roots; the build
//! service gets the store without a lease and takes one per build.

pub mod agent_tunnel;
pub mod auth;
pub mod builds;
pub mod distribution;
pub mod listen;
pub mod metrics;
pub mod uploads;

use crate::commands::prune::{parse_duration, parse_size};
use anyhow::{Context, Result};
use auth::TokenTable;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use listen::{Connections, ListenAddr, Listener, Protection, Serving, TlsFiles};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The most a handler buffers from a request body (build options, manifests).
pub const MAX_BUFFERED_BODY: usize = 4 * 1024 * 1024;
/// How long open connections get to finish their responses once builds are drained.
const CONNECTION_DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: `unix:///PATH`, `tcp://HOST:PORT` or `HOST:PORT` (repeatable). Default:
    /// the unix socket `<root>/serve.sock`.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<ListenAddr>,

    /// The server's TLS certificate chain (PEM); TLS applies to every TCP listener (unix
    /// sockets rely on file permissions).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The TLS certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Accepted tokens, one `TOKEN read|write` per line. Without it there is no authentication,
    /// which is only allowed on unix sockets and loopback addresses.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Allow a TCP listener reachable from other hosts without TLS or tokens, and build
    /// secrets sent over plain TCP (`imgb build --remote --insecure --secret ...`).
    #[arg(long)]
    insecure: bool,

    /// On SIGTERM/SIGINT, how long running builds may go on before they are cancelled.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    /// The largest blob the cache registry (`/v2/`) accepts.
    #[arg(long, value_name = "SIZE", default_value = "16GiB", value_parser = parse_size)]
    max_blob_size: u64,

    #[command(flatten)]
    builds: builds::BuildsArgs,
}

pub fn run(root: Option<PathBuf>, args: &ServeArgs) -> Result<ExitCode> {
    let store = crate::commands::open_store(root)?;
    let tokens = match &args.token_file {
        Some(path) => Some(Arc::new(TokenTable::load(path)?)),
        None => None,
    };
    let tls_files = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        }),
        _ => None,
    };
    let protection = Protection {
        tls: tls_files.is_some(),
        tokens: tokens.is_some(),
        insecure: args.insecure,
    };
    let addresses = if args.listen.is_empty() {
        vec![ListenAddr::Unix(store.root().join("serve.sock"))]
    } else {
        args.listen.clone()
    };
    let mut vetted = Vec::new();
    for address in addresses {
        let resolved = match &address {
            ListenAddr::Tcp(text) => listen::check_exposure(text, protection)?,
            ListenAddr::Unix(_) => Vec::new(),
        };
        vetted.push((address, resolved));
    }
    let tls = tls_files.as_ref().map(listen::tls_acceptor).transpose()?;
    let registry = Arc::new(distribution::Registry::open(
        store.clone(),
        args.max_blob_size,
    )?);
    let service = Arc::new(builds::BuildService::new(
        store,
        &args.builds,
        args.insecure,
    )?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut listeners = Vec::new();
        for (address, resolved) in &vetted {
            listeners.push(Listener::bind(address, resolved).await?);
        }
        let app = app(tokens, service.clone(), registry);
        serve(
            listeners,
            Serving { app, tls },
            &service,
            args.shutdown_grace,
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The whole HTTP app: health outside authentication, everything else behind it.
pub fn app(
    tokens: Option<Arc<TokenTable>>,
    service: Arc<builds::BuildService>,
    registry: Arc<distribution::Registry>,
) -> Router {
    let authenticated = Router::new()
        .nest("/v1/builds", builds::router(service.clone()))
        .merge(builds::metrics_router(service))
        .merge(distribution::router(registry))
        // Unknown paths answer 404 only to authenticated callers: without a token, every path
        // looks the same.
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            tokens,
            auth::authenticate,
        ));
    Router::new()
        .route("/v1/health", get(health))
        .route("/healthz", get(health))
        .merge(authenticated)
        .layer(DefaultBodyLimit::max(MAX_BUFFERED_BODY))
}

/// Writes a line to stderr, the server's log. Unlike `eprintln!` it never panics: a server whose
/// stderr was closed (its supervisor went away) keeps serving and still shuts down cleanly.
pub(crate) fn log(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

async fn not_found() -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    (
        axum::http::StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": "no such endpoint (see docs/serve.md)" })),
    )
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Serves until SIGTERM or SIGINT, then shuts down in order (see the module docs).
async fn serve(
    listeners: Vec<Listener>,
    serving: Serving,
    service: &builds::BuildService,
    grace: Duration,
) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let (stop, stopped) = watch::channel(false);
    let connections = Connections::default();
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        log(format_args!(
            "imgb serve: listening on {}",
            listener.describe()
        ));
        let watcher = connections.watcher();
        loops.spawn(listen::accept_loop(
            listener,
            serving.clone(),
            stopped.clone(),
            move || watcher.clone(),
        ));
    }
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    // Every receiver may already be gone if all loops ended; there is nothing left to stop then.
    let _ = stop.send(true);
    while loops.join_next().await.is_some() {}
    // Only now, with every listener closed, is "no new connections" true for whoever reads it.
    log(format_args!(
        "imgb serve: shutting down: no new connections; running builds get {grace:?} to finish"
    ));
    // A second signal means "now": running builds are cancelled without waiting out the grace.
    tokio::select! {
        () = service.drain(grace) => {}
        _ = terminate.recv() => service.drain(Duration::ZERO).await,
        _ = interrupt.recv() => service.drain(Duration::ZERO).await,
    }
    if tokio::time::timeout(CONNECTION_DRAIN, connections.shutdown())
        .await
        .is_err()
    {
        log(format_args!(
            "imgb serve: closing connections still open after {CONNECTION_DRAIN:?}"
        ));
    }
    Ok(())
}
