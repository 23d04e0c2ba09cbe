//! `ADD <url>`: the download behind [`Op::Http`](crate::graph::Op::Http), as BuildKit's HTTP
//! source does it.
//!
//! The result is a one-layer filesystem holding the body as `/<filename>`: mode 0600, owned by
//! root, its mtime the response's `Last-Modified` (the epoch without one). The ADD's file op then
//! copies it (or, with `--unpack`, extracts it) from there, applying `--chown` and `--chmod`.
//!
//! Caching. The vertex is a source: the scheduler solves it on every build and records nothing,
//! so this module keeps its own records:
//! - With `--checksum`, the checksum names the content: a download verified once is reused from
//!   its record without touching the network.
//! - Without, the URL is asked again with the last response's validators (`If-None-Match`, or
//!   `If-Modified-Since` when the server sent no ETag, as BuildKit re-checks the ETag); a 304
//!   reuses the recorded layer. A full response that brings the same bytes and mtime makes the
//!   same layer, so the ADD step still hits its cache record.
//!
//! Invariants:
//! - The body streams to a file in the store's `tmp/`, hashed on the way, never held in memory
//!   whole; it is bounded by [`MAX_BODY_BYTES`], redirects by [`MAX_REDIRECTS`].
//! - A checksum mismatch fails before anything is recorded.
//! - Records live in `downloads/<sha256 of url, file name and checksum>.json`, are replaced
//!   atomically, and are used only while the layer blob they name is in the store.

use crate::path_io::{PathIoError, io_error};
use crate::solve::LayerRef;
use imgb_cache::{Digest, RecordRef, Store};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// Redirects followed before a download fails.
pub const MAX_REDIRECTS: usize = 10;
/// The largest body a download may have.
pub const MAX_BODY_BYTES: u64 = 8 << 30;
/// Mode of the downloaded file, as BuildKit's HTTP source creates it.
const FILE_MODE: u32 = 0o600;

/// A `--checksum`: `algorithm:hex`, as the OCI digest grammar (go-digest) accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    algorithm: ChecksumAlgorithm,
    hex: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChecksumAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl ChecksumAlgorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha384 => 96,
            Self::Sha512 => 128,
        }
    }
}

impl Checksum {
    /// Parses `sha256:<64 lowercase hex>` (or sha384, sha512), with go-digest's messages.
    pub fn parse(text: &str) -> Result<Checksum, String> {
        let Some((algorithm, hex)) = text
            .split_once(':')
            .filter(|(a, h)| !a.is_empty() && !h.is_empty())
        else {
            return Err("invalid checksum digest format".to_string());
        };
        let algorithm = match algorithm {
            "sha256" => ChecksumAlgorithm::Sha256,
            "sha384" => ChecksumAlgorithm::Sha384,
            "sha512" => ChecksumAlgorithm::Sha512,
            _ => return Err("unsupported digest algorithm".to_string()),
        };
        if hex.len() != algorithm.hex_len() {
            return Err("invalid checksum digest length".to_string());
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("invalid checksum digest format".to_string());
        }
        Ok(Checksum {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid checksum {text:?}: {reason}")]
    Checksum { text: String, reason: String },
    #[error("{url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: invalid response status {status}")]
    Status { url: String, status: u16 },
    #[error(
        "digest mismatch for {url}: {actual} (expected: {expected}); hint: update --checksum if \
         the file changed on purpose"
    )]
    Mismatch {
        url: String,
        actual: String,
        expected: String,
    },
    #[error("{url}: the body is larger than {limit} bytes (http_source::MAX_BODY_BYTES)")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: the server answered 304 Not Modified to a request that was not conditional")]
    UnexpectedNotModified { url: String },
    #[error("{url}: writing the download's layer: {message}")]
    Layer { url: String, message: String },
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// What the last full response for a URL said, and the layer made of its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DownloadRecord {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    layer: LayerRef,
}

/// One download to solve.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub url: &'a str,
    pub filename: &'a str,
    pub checksum: Option<&'a str>,
}

/// The layer holding `request`'s file: from its record when still valid (see the module docs),
/// else downloaded, verified and adopted as a snapshot (the staging directory becomes the
/// layer, no copy), its tar's mtimes clamped to `source_date_epoch`.
pub async fn download(
    store: &Store,
    source_date_epoch: Option<i64>,
    request: Request<'_>,
) -> Result<LayerRef, HttpError> {
    let checksum = request
        .checksum
        .map(|text| {
            Checksum::parse(text).map_err(|reason| HttpError::Checksum {
                text: text.to_string(),
                reason,
            })
        })
        .transpose()?;
    let record_path = record_path(store, &request, checksum.as_ref());
    let record = read_record(&record_path)
        .filter(|record| store.has_layer(&record.layer.blob, &record.layer.diff_id));
    if let (Some(_), Some(record)) = (&checksum, &record) {
        return Ok(record.layer.clone());
    }
    let staging = tempfile::Builder::new()
        .prefix("http-")
        .tempdir_in(store.tmp_dir())
        .map_err(io_error("create a directory in", &store.tmp_dir()))?;
    let file = staging.path().join(safe_file_name(request.filename));
    let algorithm = checksum
        .as_ref()
        .map_or(ChecksumAlgorithm::Sha256, |checksum| checksum.algorithm);
    let Some(fetched) = fetch(request.url, record.as_ref(), &file, algorithm).await? else {
        // 304: `fetch` only sends validators it took from `record`.
        return record
            .map(|record| record.layer)
            .ok_or_else(|| HttpError::UnexpectedNotModified {
                url: request.url.to_string(),
            });
    };
    if let Some(expected) = &checksum {
        let actual = &fetched.checksum;
        if actual != expected {
            return Err(HttpError::Mismatch {
                url: request.url.to_string(),
                actual: actual.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    let mtime = fetched
        .last_modified
        .as_deref()
        .and_then(|text| httpdate::parse_http_date(text).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    set_mode_and_mtime(&file, mtime)?;
    let layer = store
        .adopt_snapshot(staging.path(), source_date_epoch)
        .map(LayerRef::from)
        .map_err(|error| HttpError::Layer {
            url: request.url.to_string(),
            message: error.to_string(),
        })?;
    let record = DownloadRecord {
        url: request.url.to_string(),
        etag: fetched.etag,
        last_modified: fetched.last_modified,
        layer: layer.clone(),
    };
    write_record(store, &record_path, &record)?;
    Ok(layer)
}

/// A body on disk with its checksum and the validators of the response that brought it.
#[derive(Debug)]
struct Fetched {
    checksum: Checksum,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// A running hash in one checksum algorithm.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            ChecksumAlgorithm::Sha384 => Self::Sha384(sha2::Sha384::new()),
            ChecksumAlgorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(hasher) => hasher.update(bytes),
            Self::Sha384(hasher) => hasher.update(bytes),
            Self::Sha512(hasher) => hasher.update(bytes),
        }
    }

    fn finish(self) -> Checksum {
        let (algorithm, bytes) = match self {
            Self::Sha256(hasher) => (ChecksumAlgorithm::Sha256, hasher.finalize().to_vec()),
            Self::Sha384(hasher) => (ChecksumAlgorithm::Sha384, hasher.finalize().to_vec()),
            Self::Sha512(hasher) => (ChecksumAlgorithm::Sha512, hasher.finalize().to_vec()),
        };
        let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Checksum { algorithm, hex }
    }
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .user_agent(concat!("imgb/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .build()
            // Only fails when the TLS backend cannot start: nothing a build could recover from.
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// GETs `url` into `file`, hashing it with `algorithm`, conditionally when `record` has
/// validators; `None` on 304.
async fn fetch(
    url: &str,
    record: Option<&DownloadRecord>,
    file: &Path,
    algorithm: ChecksumAlgorithm,
) -> Result<Option<Fetched>, HttpError> {
    let request_error = |source| HttpError::Request {
        url: url.to_string(),
        source,
    };
    let mut request = client().get(url);
    if let Some(record) = record {
        if let Some(etag) = &record.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        } else if let Some(modified) = &record.last_modified {
            request = request.header(reqwest::header::IF_MODIFIED_SINCE, modified);
        }
    }
    let mut response = request.send().await.map_err(request_error)?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_MODIFIED && record.is_some() {
        return Ok(None);
    }
    if !status.is_success() && !status.is_redirection() {
        return Err(HttpError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let too_large = || HttpError::TooLarge {
        url: url.to_string(),
        limit: MAX_BODY_BYTES,
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_BODY_BYTES)
    {
        return Err(too_large());
    }
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
            .map(str::to_string)
    };
    let etag = header(reqwest::header::ETAG);
    let last_modified = header(reqwest::header::LAST_MODIFIED);
    let mut hasher = Hasher::new(algorithm);
    let mut out = tokio::fs::File::create(file)
        .await
        .map_err(io_error("create", file))?;
    let mut written: u64 = 0;
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        written += chunk.len() as u64;
        if written > MAX_BODY_BYTES {
            return Err(too_large());
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(io_error("write", file))?;
    }
    out.flush().await.map_err(io_error("write", file))?;
    Ok(Some(Fetched {
        checksum: hasher.finish(),
        etag,
        last_modified,
    }))
}

/// The file name inside the download's layer: BuildKit's `SafeFileName`, one plain component.
fn safe_file_name(name: &str) -> &str {
    match name {
        "" | "." | ".." => "__unnamed__",
        name if name.contains('/') => "__unnamed__",
        name => name,
    }
}

fn set_mode_and_mtime(file: &Path, mtime: SystemTime) -> Result<(), HttpError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_error("chmod", file))?;
    let opened = std::fs::File::options()
        .write(true)
        .open(file)
        .map_err(io_error("open", file))?;
    opened
        .set_times(
            std::fs::FileTimes::new()
                .set_accessed(mtime)
                .set_modified(mtime),
        )
        .map_err(|error| io_error("set mtime", file)(error).into())
}

fn record_path(store: &Store, request: &Request<'_>, checksum: Option<&Checksum>) -> PathBuf {
    let identity = serde_json::json!([
        request.url,
        request.filename,
        checksum.map(ToString::to_string)
    ]);
    let name = Digest::of(identity.to_string().as_bytes())
        .hex()
        .to_string();
    store.downloads_dir().join(format!("{name}.json"))
}

/// What the download record `bytes` needs, for `imgb prune` (which owns no record format): the
/// layer made of the body.
pub fn download_references(bytes: &[u8]) -> Result<Vec<RecordRef>, String> {
    let record: DownloadRecord =
        serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
    Ok(vec![RecordRef::Layer {
        diff_id: record.layer.diff_id,
        blob: record.layer.blob.digest,
    }])
}

/// The record at `path`; a missing or unreadable one is simply no record.
fn read_record(path: &Path) -> Option<DownloadRecord> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_record(store: &Store, path: &Path, record: &DownloadRecord) -> Result<(), HttpError> {
    let dir = path.parent().unwrap_or(path);
    std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    let tmp_dir = store.tmp_dir();
    let mut staged = tempfile::NamedTempFile::new_in(&tmp_dir)
        .map_err(io_error("create a file in", &tmp_dir))?;
    std::io::Write::write_all(&mut staged, &bytes).map_err(io_error("write", staged.path()))?;
    staged
        .persist(path)
        .map_err(|error| io_error("rename into", path)(error.error))?;
    Ok(())
}

#[cfg(test)]
mod tests;
