//! The shared build cache over the OCI distribution API (`/v2/`), so that
//! `--cache-to/--cache-from type=registry,ref=HOST:PORT/NAME:TAG`, `imgb push` and skopeo work
//! against `imgb serve` unchanged.
//!
//! Storage: blobs (including manifests) live in the server store's blob area, content-addressed,
//! written through [`BlobWriter`] (hashed while streamed, digest checked, renamed into place
//! atomically). The index (tags, manifest media types, open uploads) is the store's
//! [`RegistryIndex`] under `<root>/registry/`; every file is written atomically, so a kill
//! leaves either the old or the new state.
//!
//! Lifetimes: tags are prune roots (see [`RegistryIndex`]): what a tag names stays while the
//! tag does. Everything else the registry writes or serves is held by its store lease, which is
//! renewed every [`LEASE_RENEWAL`]: content untouched for longer and named by no tag is cache
//! like any other, and prune (`imgb prune`, the disk watermark) may remove it. Clients pushing
//! blobs and then their manifest within that time never see them go in between.
//!
//! Invariants:
//! - Blobs and manifests are global: a digest is served under any repository name, and a 404
//!   body never depends on whether a repository exists.
//! - Repository names and tags are checked against the distribution grammar before they touch
//!   a path, so no name can leave `registry/repositories/`.
//! - A manifest is accepted only when it is a valid OCI or Docker schema 2 manifest or index
//!   whose media type matches its `Content-Type`, and everything it references is stored.
//! - Chunked uploads are sessions on disk ([`Uploads`]): they survive a restart, and a blob
//!   reaches the store only whole and verified.

use super::auth::{RequireRead, RequireWrite};
use super::uploads::{self, Uploads};
use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::StreamExt;
use imgb_cache::oci::{is_index_type, is_manifest_type};
use imgb_cache::registry::{ManifestDocument, parse_manifest};
use imgb_cache::registry_index::RegistryIndex;
use imgb_cache::{BlobReader, BlobWriter, Digest, Durability, Store, StoreError};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most a manifest may weigh.
const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// How long the registry's store lease lasts before a fresh one replaces it.
const LEASE_RENEWAL: Duration = Duration::from_secs(3600);
/// Request bytes gathered before one blocking write to the blob file.
const WRITE_BATCH: usize = 1024 * 1024;
/// Bytes per read when serving a blob.
const READ_CHUNK: usize = 256 * 1024;

/// The registry state: the store, its index and the open upload sessions.
#[derive(Debug)]
pub struct Registry {
    /// The server's store without a lease, to take leases from.
    unleased: Store,
    leased: Mutex<LeasedStore>,
    index: RegistryIndex,
    uploads: Uploads,
    max_blob_size: u64,
}

#[derive(Debug)]
struct LeasedStore {
    store: Store,
    since: Instant,
}

impl Registry {
    /// A registry over the server's `store` accepting blobs up to `max_blob_size` bytes; it
    /// takes its own lease and reopens the upload sessions an earlier server left.
    pub fn open(store: Store, max_blob_size: u64) -> anyhow::Result<Self> {
        let leased = take_lease(&store)?;
        let index = RegistryIndex::of(&store);
        let uploads_dir = index.uploads_dir();
        let uploads = Uploads::open(uploads_dir.clone())
            .with_context(|| format!("opening the upload sessions in {}", uploads_dir.display()))?;
        Ok(Self {
            unleased: store,
            leased: Mutex::new(LeasedStore {
                store: leased,
                since: Instant::now(),
            }),
            index,
            uploads,
            max_blob_size,
        })
    }

    /// The store under the current lease, renewed once it is [`LEASE_RENEWAL`] old (the old
    /// lease ends when the last request and upload session using it do; idle sessions are
    /// ended then, so an abandoned one cannot hold it). Blocking: call off the async threads.
    fn store(&self) -> Store {
        // The lock only guards a replace-in-one-step, so a poisoned one is still consistent.
        let mut leased = self
            .leased
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if leased.since.elapsed() >= LEASE_RENEWAL {
            if let Err(error) = self.uploads.remove_idle() {
                super::log(format_args!("imgb serve: registry: {error:#}"));
            }
            match take_lease(&self.unleased) {
                Ok(store) => {
                    *leased = LeasedStore {
                        store,
                        since: Instant::now(),
                    }
                }
                // The old lease goes on protecting; the next request tries again.
                Err(error) => super::log(format_args!("imgb serve: registry: {error:#}")),
            }
        }
        leased.store.clone()
    }
}

fn take_lease(store: &Store) -> anyhow::Result<Store> {
    store
        .leased("imgb serve registry")
        .with_context(|| format!("taking a lease on {}", store.root().display()))
}

/// `/v2/` and everything under it; mounted behind the auth layer.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/{*path}", any(dispatch))
        .with_state(registry)
}

async fn base(_: RequireRead) -> Response {
    let mut response = axum::Json(serde_json::json!({})).into_response();
    response.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// A distribution API error in its JSON envelope.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    (status, axum::Json(body)).into_response()
}

fn manifest_unknown() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        "manifest unknown",
    )
}

fn blob_unknown() -> Response {
    error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown")
}

fn upload_unknown() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
        "upload unknown (hint: start a new one with POST .../blobs/uploads/)",
    )
}

fn internal(context: &str, error: impl std::fmt::Display) -> Response {
    super::log(format_args!("imgb serve: registry: {context}: {error}"));
    self::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        "internal error (see the server log)",
    )
}

/// What a `/v2/<name>/...` path addresses.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    /// An upload session; `None` starts one.
    Upload(&'a str, Option<&'a str>),
}

impl<'a> Route<'a> {
    /// Parses the path after `/v2/`; `Err` is a ready 4xx.
    fn parse(path: &'a str) -> Result<Self, Response> {
        let not_found = || error(StatusCode::NOT_FOUND, "UNSUPPORTED", "no such endpoint");
        let (head, last) = path.rsplit_once('/').ok_or_else(not_found)?;
        let route = if let Some(name) = head.strip_suffix("/blobs/uploads") {
            Route::Upload(name, Some(last).filter(|id| !id.is_empty()))
        } else if let (Some(name), "uploads") = (head.strip_suffix("/blobs"), last) {
            Route::Upload(name, None)
        } else if let Some(name) = head.strip_suffix("/blobs") {
            Route::Blob(name, last)
        } else if let Some(name) = head.strip_suffix("/manifests") {
            Route::Manifest(name, last)
        } else if let (Some(name), "list") = (head.strip_suffix("/tags"), last) {
            Route::Tags(name)
        } else {
            return Err(not_found());
        };
        let name = match route {
            Route::Tags(name)
            | Route::Manifest(name, _)
            | Route::Blob(name, _)
            | Route::Upload(name, _) => name,
        };
        if !valid_name(name) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                "invalid repository name (lowercase components of [a-z0-9] joined by '.', '_', \
                 '__' or '-', separated by '/')",
            ));
        }
        Ok(route)
    }
}

/// The distribution spec's repository name grammar, at most 255 bytes.
fn valid_name(name: &str) -> bool {
    name.len() <= 255 && name.split('/').all(valid_component)
}

fn valid_component(component: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators: one '.', one or two '_', or any run of '-', always between alphanumerics.
    bytes.split(|&c| alnum(c)).all(|separator| {
        matches!(separator, b"" | b"." | b"_" | b"__") || separator.iter().all(|&c| c == b'-')
    })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let bytes = tag.as_bytes();
    bytes.first().is_some_and(|&c| word(c))
        && bytes.len() <= 128
        && bytes.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

fn parse_digest(text: &str) -> Result<Digest, Response> {
    Digest::parse(text)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest"))
}

async fn dispatch(State(registry): State<Arc<Registry>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let route = match Route::parse(path.strip_prefix("/v2/").unwrap_or_default()) {
        Ok(route) => route,
        Err(response) => return response,
    };
    let reading = matches!(parts.method, Method::GET | Method::HEAD);
    let scope_check = if reading {
        RequireRead::from_request_parts(&mut parts, &()).await.err()
    } else {
        RequireWrite::from_request_parts(&mut parts, &())
            .await
            .err()
    };
    if let Some(rejection) = scope_check {
        return rejection;
    }
    let head = parts.method == Method::HEAD;
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|Query(query)| query)
        .unwrap_or_default();
    match (&parts.method, route) {
        (&Method::GET, Route::Tags(name)) => list_tags(&registry, name).await,
        (&Method::GET | &Method::HEAD, Route::Manifest(name, reference)) => {
            get_manifest(&registry, name, reference, head).await
        }
        (&Method::PUT, Route::Manifest(name, reference)) => {
            put_manifest(&registry, name, reference, &parts.headers, body).await
        }
        (&Method::GET | &Method::HEAD, Route::Blob(_, digest)) => {
            get_blob(&registry, digest, head).await
        }
        (&Method::POST, Route::Upload(name, None)) => {
            start_upload(&registry, name, &query, body).await
        }
        (&Method::PATCH, Route::Upload(name, Some(id))) => {
            patch_upload(&registry, name, id, &parts.headers, body).await
        }
        (&Method::PUT, Route::Upload(name, Some(id))) => {
            finish_upload(&registry, name, id, &query, body).await
        }
        (&Method::GET, Route::Upload(name, Some(id))) => upload_status(&registry, name, id),
        (&Method::DELETE, Route::Upload(_, Some(id))) => {
            let uploads = registry.clone();
            let id = id.to_string();
            match blocking(move || uploads.uploads.discard(&id)).await {
                Ok(true) => StatusCode::NO_CONTENT.into_response(),
                Ok(false) => upload_unknown(),
                Err(response) => response,
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this method is not supported here (deletes are not: the cache is pruned)",
        ),
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| internal("a blocking task", error))
}

async fn list_tags(registry: &Arc<Registry>, name: &str) -> Response {
    let dir = registry.index.tags_dir(name);
    let listed = blocking(move || -> std::io::Result<Vec<String>> {
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let mut tags = Vec::new();
                for entry in entries {
                    tags.extend(
                        entry?
                            .file_name()
                            .to_str()
                            .filter(|t| valid_tag(t))
                            .map(str::to_string),
                    );
                }
                tags.sort();
                Ok(tags)
            }
            // An unknown repository lists no tags, like an empty one: nothing tells them apart.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    })
    .await;
    match listed {
        Ok(Ok(tags)) => {
            axum::Json(serde_json::json!({ "name": name, "tags": tags })).into_response()
        }
        Ok(Err(error)) => internal("listing tags", error),
        Err(response) => response,
    }
}

/// The digest `reference` (a tag or a digest) names in `name`, if any.
fn resolve(registry: &Registry, name: &str, reference: &str) -> Result<Option<Digest>, Response> {
    if reference.contains(':') {
        return parse_digest(reference).map(Some);
    }
    if !valid_tag(reference) {
        return Err(error(StatusCode::BAD_REQUEST, "TAG_INVALID", "invalid tag"));
    }
    match std::fs::read_to_string(registry.index.tag_path(name, reference)) {
        Ok(text) => Ok(Digest::parse(text.trim()).ok()),
        Err(_) => Ok(None),
    }
}

async fn get_manifest(
    registry: &Arc<Registry>,
    name: &str,
    reference: &str,
    head: bool,
) -> Response {
    let digest = match resolve(registry, name, reference) {
        Ok(Some(digest)) => digest,
        Ok(None) => return manifest_unknown(),
        Err(response) => return response,
    };
    let registry = registry.clone();
    let loaded = blocking(move || {
        let media_type = std::fs::read_to_string(registry.index.media_type_path(&digest)).ok()?;
        let bytes = registry.store().read_blob(&digest).ok()?;
        Some((digest, media_type, bytes))
    })
    .await;
    let (digest, media_type, bytes) = match loaded {
        Ok(Some(found)) => found,
        Ok(None) => return manifest_unknown(),
        Err(response) => return response,
    };
    let mut headers = HeaderMap::new();
    insert(&mut headers, header::CONTENT_TYPE, media_type.trim());
    insert(&mut headers, "Docker-Content-Digest", digest.as_str());
    insert(
        &mut headers,
        header::CONTENT_LENGTH,
        &bytes.len().to_string(),
    );
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    (StatusCode::OK, headers, body).into_response()
}

/// Adds a header whose value is known to be valid text (digests, numbers, media types we
/// stored after checking them).
fn insert(headers: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

async fn put_manifest(
    registry: &Arc<Registry>,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let invalid = |message: &str| error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message);
    let tag = if reference.contains(':') {
        None
    } else if valid_tag(reference) {
        Some(reference.to_string())
    } else {
        return error(StatusCode::BAD_REQUEST, "TAG_INVALID", "invalid tag");
    };
    let bytes = match axum::body::to_bytes(body, MAX_MANIFEST).await {
        Ok(bytes) => bytes,
        Err(_) => return invalid("the manifest is unreadable or larger than 4 MiB"),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or_default())
        .map(|value| value.split(';').next().unwrap_or(value).trim());
    if let Some(content_type) = content_type
        && !is_manifest_type(content_type)
        && !is_index_type(content_type)
    {
        return invalid(&format!(
            "Content-Type {content_type:?} is not a manifest media type (OCI or Docker schema 2 \
             manifests and indexes)"
        ));
    }
    let (media_type, document) = match parse_manifest(reference, &bytes, content_type) {
        Ok(parsed) => parsed,
        Err(error) => return invalid(&error.to_string()),
    };
    let digest = Digest::of(&bytes);
    if tag.is_none() && parse_digest(reference).ok().as_ref() != Some(&digest) {
        return error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "the manifest does not hash to the digest it was put under",
        );
    }
    let children_are_manifests = matches!(document, ManifestDocument::Index(_));
    let references: Vec<Digest> = document
        .references()
        .into_iter()
        .map(|descriptor| descriptor.digest.clone())
        .collect();
    let registry_for_write = registry.clone();
    let tag_path = tag.map(|tag| registry.index.tag_path(name, &tag));
    let stored_digest = digest.clone();
    let stored = blocking(move || -> Result<Option<Digest>, StoreError> {
        let registry = registry_for_write;
        let store = registry.store();
        let digest = stored_digest;
        // `has_blob` leases what it finds: nothing referenced goes before the tag exists.
        let missing = references.into_iter().find(|child| {
            let stored = store.has_blob(child)
                && (!children_are_manifests || registry.index.media_type_path(child).is_file());
            !stored
        });
        if let Some(child) = missing {
            return Ok(Some(child));
        }
        store.write_blob(&bytes)?;
        let type_path = registry.index.media_type_path(&digest);
        write_index_file(&store, &type_path, media_type.as_bytes())?;
        if let Some(tag_path) = tag_path {
            write_index_file(&store, &tag_path, digest.as_str().as_bytes())?;
        }
        Ok(None)
    })
    .await;
    match stored {
        Ok(Ok(None)) => {
            let mut headers = HeaderMap::new();
            insert(
                &mut headers,
                header::LOCATION,
                &format!("/v2/{name}/manifests/{digest}"),
            );
            insert(&mut headers, "Docker-Content-Digest", digest.as_str());
            (StatusCode::CREATED, headers).into_response()
        }
        Ok(Ok(Some(missing))) => error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            &format!("the manifest references {missing}, which is not stored (push it first)"),
        ),
        Ok(Err(error)) => internal("storing a manifest", error),
        Err(response) => response,
    }
}

/// An index file, written atomically and durably through the store's `tmp/`.
fn write_index_file(store: &Store, path: &std::path::Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
            op: "create directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    store.write_small_file(path, bytes, Durability::Synced)
}

async fn get_blob(registry: &Arc<Registry>, digest: &str, head: bool) -> Response {
    let digest = match parse_digest(digest) {
        Ok(digest) => digest,
        Err(response) => return response,
    };
    let registry = registry.clone();
    let opened = blocking(move || registry.store().open_blob(&digest, None)).await;
    let reader = match opened {
        Ok(Ok(reader)) => reader,
        Ok(Err(StoreError::BlobNotFound { .. })) => return blob_unknown(),
        Ok(Err(error)) => return internal("opening a blob", error),
        Err(response) => return response,
    };
    let mut headers = HeaderMap::new();
    insert(
        &mut headers,
        header::CONTENT_TYPE,
        "application/octet-stream",
    );
    insert(
        &mut headers,
        "Docker-Content-Digest",
        reader.digest().as_str(),
    );
    insert(
        &mut headers,
        header::CONTENT_LENGTH,
        &reader.size().to_string(),
    );
    if head {
        return (StatusCode::OK, headers).into_response();
    }
    (
        StatusCode::OK,
        headers,
        Body::from_stream(stream_blob(reader)),
    )
        .into_response()
}

/// The blob's bytes as a stream read on a blocking thread; a blob that fails verification at
/// its end turns into a body error, so the client sees a broken transfer, never bad content.
fn stream_blob(mut reader: BlobReader) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut chunk = vec![0; READ_CHUNK];
            let item = match reader.read(&mut chunk) {
                Ok(0) => return,
                Ok(read) => {
                    chunk.truncate(read);
                    Ok(Bytes::from(chunk))
                }
                Err(error) => Err(error),
            };
            let failed = item.is_err();
            if sender.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

fn upload_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// 202 with the session's location and the bytes received so far.
fn upload_accepted(name: &str, id: &str, written: u64) -> Response {
    let mut headers = HeaderMap::new();
    insert(&mut headers, header::LOCATION, &upload_location(name, id));
    insert(&mut headers, "Docker-Upload-UUID", id);
    insert(
        &mut headers,
        header::RANGE,
        &format!("0-{}", written.saturating_sub(1)),
    );
    insert(&mut headers, header::CONTENT_LENGTH, "0");
    (StatusCode::ACCEPTED, headers).into_response()
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    let mut headers = HeaderMap::new();
    insert(
        &mut headers,
        header::LOCATION,
        &format!("/v2/{name}/blobs/{digest}"),
    );
    insert(&mut headers, "Docker-Content-Digest", digest.as_str());
    insert(&mut headers, header::CONTENT_LENGTH, "0");
    (StatusCode::CREATED, headers).into_response()
}

async fn start_upload(
    registry: &Arc<Registry>,
    name: &str,
    query: &HashMap<String, String>,
    body: Body,
) -> Response {
    if let Some(mount) = query.get("mount") {
        let digest = match parse_digest(mount) {
            Ok(digest) => digest,
            Err(response) => return response,
        };
        // Blobs are global: a mount succeeds whenever the blob is stored, whatever `from` says.
        let registry = registry.clone();
        let mounted = blocking({
            let digest = digest.clone();
            move || registry.store().has_blob(&digest)
        })
        .await;
        match mounted {
            Ok(true) => return blob_created(name, &digest),
            Ok(false) => {}
            Err(response) => return response,
        }
    }
    if let Some(digest) = query.get("digest") {
        // Monolithic upload: the whole blob is this request's body, staged in `tmp/`.
        let expected = match parse_digest(digest) {
            Ok(digest) => digest,
            Err(response) => return response,
        };
        let registry_for_writer = registry.clone();
        let writer = match blocking(move || registry_for_writer.store().blob_writer()).await {
            Ok(Ok(writer)) => writer,
            Ok(Err(error)) => return internal("starting an upload", error),
            Err(response) => return response,
        };
        return match append(registry, writer, body).await {
            Ok(writer) => commit(name, writer, expected).await,
            Err(response) => response,
        };
    }
    let sessions = registry.clone();
    match blocking(move || sessions.uploads.start(&sessions.store())).await {
        Ok(Ok(Some(id))) => upload_accepted(name, &id, 0),
        Ok(Ok(None)) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            &format!("{} uploads are in progress; retry later", uploads::MAX_OPEN),
        ),
        Ok(Err(error)) => internal("starting an upload", format!("{error:#}")),
        Err(response) => response,
    }
}

/// The session's writer for this request (see [`Uploads::take`]); `Err` is a ready answer.
async fn take_upload(registry: &Arc<Registry>, id: &str) -> Result<BlobWriter, Response> {
    let sessions = registry.clone();
    let id = id.to_string();
    match blocking(move || sessions.uploads.take(&sessions.store(), &id)).await? {
        Ok(Some(writer)) => Ok(writer),
        Ok(None) => Err(upload_unknown()),
        Err(error) => Err(internal("resuming an upload", error)),
    }
}

async fn patch_upload(
    registry: &Arc<Registry>,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let writer = match take_upload(registry, id).await {
        Ok(writer) => writer,
        Err(response) => return response,
    };
    // `Content-Range: START-END` must continue where the session is.
    let start = headers
        .get(header::CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .map(|range| {
            range
                .split_once('-')
                .and_then(|(start, _)| start.trim().parse::<u64>().ok())
        });
    if let Some(start) = start
        && start != Some(writer.written())
    {
        let written = writer.written();
        if let Err(response) = put_back(registry, id, writer).await {
            return response;
        }
        let mut response = error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            "the chunk does not continue the upload (see the Range header)",
        );
        insert(
            response.headers_mut(),
            header::RANGE,
            &format!("0-{}", written.saturating_sub(1)),
        );
        return response;
    }
    match append(registry, writer, body).await {
        Ok(writer) => {
            let written = writer.written();
            match put_back(registry, id, writer).await {
                Ok(()) => upload_accepted(name, id, written),
                Err(response) => response,
            }
        }
        Err(response) => {
            discard_upload(registry, id).await;
            response
        }
    }
}

/// Returns the session's writer after a request that leaves it open.
async fn put_back(registry: &Arc<Registry>, id: &str, writer: BlobWriter) -> Result<(), Response> {
    let sessions = registry.clone();
    let id = id.to_string();
    blocking(move || sessions.uploads.put_back(&id, writer))
        .await?
        .map_err(|error| internal("writing an upload", error))
}

/// Ends a session and removes its bytes.
async fn discard_upload(registry: &Arc<Registry>, id: &str) {
    let sessions = registry.clone();
    let id = id.to_string();
    // A failure to remove leaves a file the idle sweep removes later.
    let _ = blocking(move || sessions.uploads.discard(&id)).await;
}

async fn finish_upload(
    registry: &Arc<Registry>,
    name: &str,
    id: &str,
    query: &HashMap<String, String>,
    body: Body,
) -> Response {
    let expected = match query.get("digest").map(|digest| parse_digest(digest)) {
        Some(Ok(digest)) => digest,
        Some(Err(response)) => return response,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "closing an upload needs ?digest=",
            );
        }
    };
    let writer = match take_upload(registry, id).await {
        Ok(writer) => writer,
        Err(response) => return response,
    };
    let response = match append(registry, writer, body).await {
        Ok(writer) => commit(name, writer, expected).await,
        Err(response) => response,
    };
    // Committed (its file renamed into the store) or failed: either way the session is over.
    discard_upload(registry, id).await;
    response
}

fn upload_status(registry: &Registry, name: &str, id: &str) -> Response {
    match registry.uploads.written(id) {
        Some(written) => {
            let mut response = upload_accepted(name, id, written);
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        None => upload_unknown(),
    }
}

/// Streams the request body into the blob, in batches written on a blocking thread. On any
/// failure the writer is dropped and the 4xx/5xx returned (a session's caller discards the
/// session: the client starts again).
async fn append(
    registry: &Registry,
    mut writer: BlobWriter,
    body: Body,
) -> Result<BlobWriter, Response> {
    let mut stream = body.into_data_stream();
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        let chunk = match stream.next().await {
            Some(Ok(chunk)) => Some(chunk),
            Some(Err(_)) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "BLOB_UPLOAD_INVALID",
                    "the upload body ended early or was malformed; start the upload again",
                ));
            }
            None => None,
        };
        if let Some(chunk) = &chunk {
            let size = writer.written() + (batch.len() + chunk.len()) as u64;
            if size > registry.max_blob_size {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "SIZE_INVALID",
                    &format!(
                        "the blob exceeds the server's --max-blob-size ({} bytes)",
                        registry.max_blob_size
                    ),
                ));
            }
            batch.extend_from_slice(chunk);
        }
        if batch.len() >= WRITE_BATCH || (chunk.is_none() && !batch.is_empty()) {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
            let written = blocking(move || writer.write_all(&full).map(|()| writer)).await?;
            writer = written.map_err(|error| internal("writing an upload", error))?;
        }
        if chunk.is_none() {
            return Ok(writer);
        }
    }
}

/// Commits the session's content if it hashes to `expected`.
async fn commit(name: &str, writer: BlobWriter, expected: Digest) -> Response {
    let committed = blocking({
        let expected = expected.clone();
        move || writer.commit_expected(&expected)
    })
    .await;
    match committed {
        Ok(Ok(info)) => blob_created(name, &info.digest),
        Ok(Err(StoreError::UnexpectedDigest { .. })) => error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "the uploaded content does not hash to the given digest",
        ),
        Ok(Err(error)) => internal("committing an upload", error),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_distribution_grammar() {
        for good in ["team/cache", "a", "a.b_c__d---e/f0", "library/busybox"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "", "../etc", "a/../b", "a//b", "A", "a/", "/a", "a..b", "a___b", "-a", "a/.", "%2e%2e",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        assert!(valid_tag("main"));
        assert!(valid_tag("v1.2-rc_3"));
        assert!(!valid_tag(".hidden"));
        assert!(!valid_tag("a/b"));
        assert!(!valid_tag(&"x".repeat(129)));
    }

    #[test]
    fn paths_route_by_their_last_segments() {
        assert_eq!(Route::parse("a/b/tags/list").ok(), Some(Route::Tags("a/b")));
        assert_eq!(
            Route::parse("a/manifests/main").ok(),
            Some(Route::Manifest("a", "main"))
        );
        assert_eq!(
            Route::parse("a/blobs/sha256:00").ok(),
            Some(Route::Blob("a", "sha256:00"))
        );
        assert_eq!(
            Route::parse("a/blobs/uploads/").ok(),
            Some(Route::Upload("a", None))
        );
        assert_eq!(
            Route::parse("a/blobs/uploads").ok(),
            Some(Route::Upload("a", None))
        );
        assert_eq!(
            Route::parse("a/blobs/uploads/x1").ok(),
            Some(Route::Upload("a", Some("x1")))
        );
        assert_eq!(
            Route::parse("blobs/blobs/sha256:00").ok(),
            Some(Route::Blob("blobs", "sha256:00"))
        );
        assert!(Route::parse("../x/manifests/main").is_err());
        assert!(Route::parse("a/other").is_err());
    }
}
