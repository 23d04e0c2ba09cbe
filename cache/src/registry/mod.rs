//! A client for the OCI distribution protocol: pull manifests and blobs into the store, push
//! stored images, with Docker's authentication and transport rules.
//!
//! - [`Registry`] is the client (cheap to clone; one per process is enough). It keeps one HTTP
//!   client per registry host, the scheme each host answered on, and the bearer tokens it got.
//! - [`Repository`] is one repository on it (`127.0.0.1:5000/app`): manifests and blobs.
//! - [`auth`]: where credentials come from (`imgb login`'s file, `REGISTRY_AUTH_FILE`, Docker's
//!   `config.json` with its credential helpers) and the `WWW-Authenticate` challenge.
//! - `transport`: TLS roots, plain HTTP for loopback and `--insecure-registry` hosts,
//!   redirects without credentials to other hosts, retries with backoff.
//! - `pull` / `push`: the protocol itself.
//!
//! Invariants:
//! - Nothing from a registry reaches the store unverified: blobs stream into the store's `tmp/`
//!   while hashed, and are committed only when their size and digest match the descriptor.
//!   A body longer than its descriptor is cut off at the first extra byte.
//! - Credentials (basic or bearer) are sent only to the registry's own origin; a redirect to
//!   another host (blob storage backends) is followed without them.
//! - A manifest is pushed only after every blob it names is confirmed present in the target
//!   repository.
//! - Layers of a pulled image are fetched only when needed: [`Registry::pull_image`] stores the
//!   manifest and config and records where each layer can be fetched from
//!   ([`Store::blob_source`]); [`Registry::ensure_blobs`] fetches missing ones, in parallel.

pub mod auth;
mod pull;
mod push;
mod transport;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use crate::digest::Digest;
use crate::image::ImageError;
use crate::reference::Reference;
use crate::store::{Store, StoreError, TmpFile};

pub use auth::{AuthError, CredentialSources, Credentials};
pub use pull::{Manifest, ManifestDocument, parse_manifest};
pub use push::{BlobPush, PushedImage};

/// Where Docker keeps per-registry CA certificates (`<dir>/<host[:port]>/*.crt`).
pub const DOCKER_CERTS_DIR: &str = "/etc/docker/certs.d";

/// How the client reaches registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Hosts (`host[:port]`) that may answer over plain HTTP; loopback hosts always may.
    pub insecure_hosts: Vec<String>,
    /// Extra trusted CA certificates (PEM) for every host, besides the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Per-host CA directories in Docker's layout (`certs.d/HOST/*.crt`).
    pub certs_dir: PathBuf,
    pub credentials: CredentialSources,
    /// Blob downloads (and uploads) running at once.
    pub parallel_transfers: usize,
    /// Uploads larger than this go in `PATCH` chunks of this size.
    pub chunk_size: u64,
    /// Attempts per request for transient failures (connection errors, 5xx, 429).
    pub attempts: u32,
    /// A body that delivers less than this in any window is dropped (and retried): a server
    /// trickling bytes (slow loris) would otherwise hold a build forever, as the read timeout
    /// only bounds the wait for one byte.
    pub stall: StallLimit,
}

/// The slowest acceptable body: at least `min_bytes` in every `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallLimit {
    pub min_bytes: u64,
    pub window: std::time::Duration,
}

impl RegistryConfig {
    /// Docker's defaults with credentials found through the environment.
    pub fn from_env() -> Self {
        Self {
            insecure_hosts: Vec::new(),
            ca_files: Vec::new(),
            certs_dir: PathBuf::from(DOCKER_CERTS_DIR),
            credentials: CredentialSources::from_env(),
            parallel_transfers: 4,
            chunk_size: 16 * 1024 * 1024,
            attempts: 4,
            stall: StallLimit {
                min_bytes: 1024,
                window: std::time::Duration::from_secs(60),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{method} {url}: {message}{hint}", hint = hint_text(hint))]
    Transport {
        method: String,
        url: String,
        message: String,
        hint: Option<&'static str>,
    },
    #[error("{method} {url}: the registry answered {status}{detail}", detail = detail_text(detail))]
    Status {
        method: String,
        url: String,
        status: u16,
        detail: String,
    },
    #[error(
        "{url}: access denied{detail} (hint: `imgb login {host}`, or check the credentials \
         in ~/.docker/config.json or $REGISTRY_AUTH_FILE)",
        detail = detail_text(detail)
    )]
    Unauthorized {
        host: String,
        url: String,
        detail: String,
    },
    #[error("{what} not found in {repository}")]
    NotFound { repository: String, what: String },
    #[error("{url}: content hashes to {actual}, but {expected} was asked for")]
    DigestMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "{url}: the registry sent more than the {expected} bytes the descriptor of {digest} says"
    )]
    TooLong {
        url: String,
        digest: Digest,
        expected: u64,
    },
    #[error("{url}: the body ended after {actual} of the {expected} bytes of {digest}")]
    TooShort {
        url: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("manifest {reference}: {reason}")]
    BadManifest { reference: String, reason: String },
    #[error(
        "{reference} has no image for {platform} (it has: {available}) \
         (hint: pick another tag or `--platform`)"
    )]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error(
        "{url}: the registry sent under {min_bytes} bytes in {seconds}s ({received} of the body \
         so far); giving up on the stalled transfer",
        seconds = window.as_secs_f64()
    )]
    Stalled {
        url: String,
        received: u64,
        min_bytes: u64,
        window: std::time::Duration,
    },
    #[error("{url}: redirect {reason}")]
    Redirect { url: String, reason: String },
    #[error("recording the source of {digest}: {source}")]
    Source {
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("blob {digest} is neither stored nor known to come from a registry")]
    NoSource { digest: Digest },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

fn hint_text(hint: &Option<&'static str>) -> String {
    hint.map(|hint| format!(" (hint: {hint})"))
        .unwrap_or_default()
}

fn detail_text(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl RegistryError {
    /// Whether trying again may succeed (network trouble, overloaded or failing server).
    fn is_transient(&self) -> bool {
        match self {
            Self::Transport { hint, .. } => hint.is_none(),
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::TooShort { .. } | Self::Stalled { .. } => true,
            _ => false,
        }
    }
}

/// The registry client. Cloning shares the connections, endpoints and tokens.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<transport::Transport>,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            inner: Arc::new(transport::Transport::new(config)),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        self.inner.config()
    }

    /// The repository `reference` names (its tag and digest are ignored).
    pub fn repository(&self, reference: &Reference) -> Repository {
        Repository {
            registry: self.clone(),
            domain: reference.domain().to_owned(),
            path: reference.path().to_owned(),
        }
    }

    /// Checks that `credentials` are accepted by `host` (for `imgb login`).
    pub async fn check_login(
        &self,
        host: &str,
        credentials: &Credentials,
    ) -> Result<(), RegistryError> {
        self.inner.check_login(host, credentials).await
    }
}

/// One repository of a registry.
#[derive(Debug, Clone)]
pub struct Repository {
    registry: Registry,
    domain: String,
    path: String,
}

impl Repository {
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path`, as in references.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

/// Where a blob that is not stored yet can be fetched from: `images/sources/<hex>` holds the
/// repository, written when the manifest naming the blob was pulled.
impl Store {
    pub(crate) fn blob_sources_dir(&self) -> PathBuf {
        self.images_dir().join("sources")
    }

    /// Records that `digest` can be fetched from `repository` (`domain/path`).
    pub fn record_blob_source(&self, digest: &Digest, repository: &str) -> Result<(), StoreError> {
        let dir = self.blob_sources_dir();
        std::fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
        let path = dir.join(digest.hex());
        if std::fs::read_to_string(&path).is_ok_and(|known| known == repository) {
            return Ok(());
        }
        let mut tmp = TmpFile::create(&self.tmp_dir(), "source")?;
        std::io::Write::write_all(&mut tmp, repository.as_bytes())
            .map_err(StoreError::io("write blob source", self.tmp_dir()))?;
        tmp.persist(&path)
    }

    /// The repository `digest` was pulled from, when a pull recorded one.
    pub fn blob_source(&self, digest: &Digest) -> Option<Reference> {
        let text = std::fs::read_to_string(self.blob_sources_dir().join(digest.hex())).ok()?;
        Reference::parse(text.trim()).ok()
    }
}
