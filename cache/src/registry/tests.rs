//! The client against small fake registries that misbehave on purpose: each failure is a clear
//! error and leaves nothing in the store.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine;

use super::*;
use crate::oci::{Descriptor, ImageIndex, ImageManifest, Platform, canonical_json, media_type};

/// A request as the fake server saw it (header names lowercased).
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// What the fake server answers: status, headers, body; `cut` closes the connection after
/// that many body bytes (a dropped download); `trickle` sends the body a byte at a time with
/// that pause between bytes (a slow loris).
#[derive(Debug, Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut: Option<usize>,
    trickle: Option<std::time::Duration>,
}

impl Reply {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            body: body.into(),
            ..Self::default()
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A one-connection-per-request HTTP/1.1 server on 127.0.0.1 that records what it saw.
struct FakeServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeServer {
    fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, log) = (handler.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &*handler, &log));
            }
        });
        Self { port, seen }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Seen>>) {
    // A TLS handshake (the client tries HTTPS first on loopback): hang up, as a plain server
    // that cannot parse it would.
    let mut first = [0u8; 1];
    if stream.peek(&mut first).is_err() || first[0] == 0x16 {
        return;
    }
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let seen = Seen {
        method,
        path,
        headers,
        body,
    };
    log.lock().unwrap().push(seen.clone());
    let reply = handler(&seen);
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let body = &reply.body[..reply.cut.unwrap_or(reply.body.len())];
    let _ = out.write_all(head.as_bytes());
    match reply.trickle {
        None => {
            let _ = out.write_all(body);
        }
        Some(pause) => {
            for byte in body {
                if out.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        }
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    (dir, store)
}

fn registry() -> Registry {
    let mut config = RegistryConfig::from_env();
    config.credentials = CredentialSources::default();
    config.attempts = 2;
    Registry::new(config)
}

fn with_credentials(file: &std::path::Path, host: &str) -> Registry {
    let credentials = Credentials {
        username: "user".into(),
        password: "secret".into(),
        ..Credentials::default()
    };
    auth::save_login(file, host, &credentials).unwrap();
    let mut config = RegistryConfig::from_env();
    config.credentials = CredentialSources {
        files: vec![file.to_owned()],
    };
    config.attempts = 2;
    Registry::new(config)
}

fn reference(host: &str, rest: &str) -> Reference {
    Reference::parse(&format!("{host}/{rest}")).unwrap()
}

fn blob_descriptor(content: &[u8]) -> Descriptor {
    Descriptor::new(
        media_type::OCI_LAYER,
        Digest::of(content),
        content.len() as u64,
    )
}

/// Nothing was committed: no blob, and nothing left staged in `tmp/`.
fn assert_nothing_stored(store: &Store) {
    assert!(store.list_blobs().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}

async fn fetch(
    registry: &Registry,
    host: &str,
    store: &Store,
    descriptor: &Descriptor,
) -> Result<BlobInfo, RegistryError> {
    registry
        .repository(&reference(host, "app"))
        .fetch_blob(store, descriptor)
        .await
}

use crate::store::BlobInfo;

#[tokio::test]
async fn a_blob_with_the_wrong_digest_is_refused_and_not_stored() {
    let server = FakeServer::start(|_| Reply::new(200, b"evil".to_vec()));
    let (_dir, store) = store();
    let error = fetch(
        &registry(),
        &server.host(),
        &store,
        &blob_descriptor(b"good"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, RegistryError::DigestMismatch { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains(Digest::of(b"evil").as_str()),
        "{error}"
    );
    assert_nothing_stored(&store);
}

#[tokio::test]
async fn a_body_longer_than_the_descriptor_is_cut_off_and_not_stored() {
    let server = FakeServer::start(|_| Reply::new(200, b"good and then some more".to_vec()));
    let (_dir, store) = store();
    let error = fetch(
        &registry(),
        &server.host(),
        &store,
        &blob_descriptor(b"good"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, RegistryError::TooLong { expected: 4, .. }),
        "{error}"
    );
    assert_nothing_stored(&store);
}

#[tokio::test]
async fn a_manifest_that_is_both_an_index_and_an_image_is_refused() {
    let layer = blob_descriptor(b"layer");
    let mut document =
        serde_json::to_value(ImageManifest::new(layer.clone(), vec![layer])).unwrap();
    document["manifests"] = serde_json::json!([]);
    let bytes = canonical_json(&document).unwrap();
    let server = FakeServer::start(move |_| {
        Reply::new(200, bytes.clone()).header("Content-Type", media_type::OCI_MANIFEST)
    });
    let (_dir, store) = store();
    let error = registry()
        .pull_image(
            &store,
            &reference(&server.host(), "app:1"),
            &Platform::host(),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("both an index"), "{error}");
    assert_nothing_stored(&store);
    assert!(store.images().unwrap().is_empty());
}

#[tokio::test]
async fn a_redirect_to_another_host_does_not_carry_credentials() {
    let content = b"layer content".to_vec();
    let served = content.clone();
    let storage = FakeServer::start(move |_| Reply::new(200, served.clone()));
    let storage_url = format!("http://localhost:{}/bucket/blob", storage.port);
    let registry_server = FakeServer::start(move |seen| match seen.headers.get("authorization") {
        None => Reply::new(401, "").header("WWW-Authenticate", r#"Basic realm="fake""#),
        Some(_) => Reply::new(307, "").header("Location", storage_url.clone()),
    });
    let dir = tempfile::tempdir().unwrap();
    let registry = with_credentials(&dir.path().join("auth.json"), &registry_server.host());
    let (_root, store) = store();
    let info = fetch(
        &registry,
        &registry_server.host(),
        &store,
        &blob_descriptor(&content),
    )
    .await
    .unwrap();
    assert_eq!(store.read_blob(&info.digest).unwrap(), content);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:secret")
    );
    assert_eq!(
        registry_server
            .seen()
            .last()
            .unwrap()
            .headers
            .get("authorization"),
        Some(&expected)
    );
    let at_storage = storage.seen();
    assert_eq!(at_storage.len(), 1);
    assert_eq!(
        (at_storage[0].method.as_str(), at_storage[0].path.as_str()),
        ("GET", "/bucket/blob")
    );
    assert!(
        !at_storage[0].headers.contains_key("authorization"),
        "{:?}",
        at_storage[0]
    );
}

#[tokio::test]
async fn bearer_tokens_come_from_the_challenge_realm_with_the_repository_scope() {
    let index_entry = blob_descriptor(b"unused");
    let token_port = Arc::new(Mutex::new(0u16));
    let realm_port = token_port.clone();
    let index = canonical_json(&ImageIndex::new(vec![Descriptor {
        platform: Some(Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            os_version: None,
            os_features: Vec::new(),
            variant: None,
        }),
        ..Descriptor::new(media_type::OCI_MANIFEST, index_entry.digest, 1)
    }]))
    .unwrap();
    let server = FakeServer::start(move |seen| {
        if seen.path.starts_with("/token") {
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("user:secret")
            );
            return match seen.headers.get("authorization") == Some(&basic) {
                true => Reply::new(200, r#"{"token":"t0k3n"}"#),
                false => Reply::new(401, ""),
            };
        }
        match seen.headers.get("authorization").map(String::as_str) {
            Some("Bearer t0k3n") => {
                Reply::new(200, index.clone()).header("Content-Type", media_type::OCI_INDEX)
            }
            _ => Reply::new(401, "").header(
                "WWW-Authenticate",
                format!(
                    r#"Bearer realm="http://127.0.0.1:{}/token",service="fake""#,
                    realm_port.lock().unwrap()
                ),
            ),
        }
    });
    *token_port.lock().unwrap() = server.port;
    let dir = tempfile::tempdir().unwrap();
    let registry = with_credentials(&dir.path().join("auth.json"), &server.host());
    let (_root, store) = store();
    let error = registry
        .pull_image(
            &store,
            &reference(&server.host(), "team/app:1"),
            &Platform::host(),
        )
        .await
        .unwrap_err();
    // The index was read with the token; it has no image for this platform.
    assert!(matches!(error, RegistryError::NoPlatform { .. }), "{error}");
    assert!(error.to_string().contains("linux/s390x"), "{error}");
    let token_request = server
        .seen()
        .into_iter()
        .find(|seen| seen.path.starts_with("/token"))
        .unwrap();
    assert_eq!(
        token_request.path,
        "/token?service=fake&scope=repository%3Ateam%2Fapp%3Apull"
    );
}

#[tokio::test]
async fn a_dropped_download_resumes_with_a_range_request() {
    let content: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let served = content.clone();
    let server = FakeServer::start(move |seen| match seen.headers.get("range") {
        None => Reply {
            cut: Some(30_000),
            ..Reply::new(200, served.clone())
        },
        Some(range) => {
            let start: usize = range
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .unwrap();
            Reply::new(206, served[start..].to_vec()).header(
                "Content-Range",
                format!("bytes {start}-{}/{}", served.len() - 1, served.len()),
            )
        }
    });
    let (_dir, store) = store();
    fetch(
        &registry(),
        &server.host(),
        &store,
        &blob_descriptor(&content),
    )
    .await
    .unwrap();
    assert_eq!(store.read_blob(&Digest::of(&content)).unwrap(), content);
    let ranges: Vec<_> = server
        .seen()
        .iter()
        .filter_map(|seen| seen.headers.get("range").cloned())
        .collect();
    assert_eq!(ranges, ["bytes=30000-"]);
}

#[tokio::test]
async fn a_missing_manifest_names_the_repository_and_tag() {
    let server = FakeServer::start(|_| {
        Reply::new(
            404,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
    });
    let (_dir, store) = store();
    let error = registry()
        .pull_image(
            &store,
            &reference(&server.host(), "app:v9"),
            &Platform::host(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("manifest v9 not found in {}/app", server.host())
    );
}

#[tokio::test]
async fn a_pull_by_index_digest_stores_manifest_and_config_only_and_is_found_offline() {
    use crate::oci::{ImageConfig, RootFs};
    let layer = blob_descriptor(b"layer, fetched only when needed");
    let config = canonical_json(&ImageConfig {
        architecture: Platform::host().architecture,
        os: "linux".into(),
        rootfs: RootFs {
            diff_ids: vec![layer.digest.clone()],
            ..RootFs::default()
        },
        ..ImageConfig::default()
    })
    .unwrap();
    let config_descriptor = Descriptor::new(
        media_type::OCI_CONFIG,
        Digest::of(&config),
        config.len() as u64,
    );
    let manifest =
        canonical_json(&ImageManifest::new(config_descriptor, vec![layer.clone()])).unwrap();
    let index = canonical_json(&ImageIndex::new(vec![Descriptor {
        platform: Some(Platform::host()),
        ..Descriptor::new(
            media_type::OCI_MANIFEST,
            Digest::of(&manifest),
            manifest.len() as u64,
        )
    }]))
    .unwrap();
    let index_digest = Digest::of(&index);
    let documents = [
        (Digest::of(&index), index, media_type::OCI_INDEX),
        (
            Digest::of(&manifest),
            manifest.clone(),
            media_type::OCI_MANIFEST,
        ),
        (Digest::of(&config), config, media_type::OCI_CONFIG),
    ];
    let server = FakeServer::start(move |seen| {
        documents
            .iter()
            .find(|(digest, _, _)| seen.path.ends_with(digest.as_str()))
            .map(|(_, bytes, kind)| Reply::new(200, bytes.clone()).header("Content-Type", *kind))
            .unwrap_or_else(|| Reply::new(404, ""))
    });
    let (_dir, store) = store();
    let name = format!("{}/app@{index_digest}", server.host());
    let image = registry()
        .pull_image(&store, &Reference::parse(&name).unwrap(), &Platform::host())
        .await
        .unwrap();
    assert_eq!(image.descriptor.digest, Digest::of(&manifest));
    assert!(!store.has_blob(&layer.digest), "layers are fetched lazily");
    assert_eq!(
        store
            .blob_source(&layer.digest)
            .map(|source| source.repository()),
        Some(format!("{}/app", server.host()))
    );
    let (_, found) = store.find_image(&name).unwrap();
    assert_eq!(found, image);
}

#[tokio::test]
async fn a_huge_manifest_is_refused_past_the_size_cap() {
    let server = FakeServer::start(|_| {
        let mut huge = br#"{"schemaVersion":2,"manifests":["#.to_vec();
        huge.resize(MANIFEST_TEST_SIZE, b' ');
        Reply::new(200, huge).header("Content-Type", media_type::OCI_INDEX)
    });
    let (_dir, store) = store();
    let error = registry()
        .pull_image(
            &store,
            &reference(&server.host(), "app:1"),
            &Platform::host(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RegistryError::BadManifest { reason, .. } if reason.contains("larger than")),
        "{error}"
    );
    assert_nothing_stored(&store);
}

/// Past the 4 MiB manifest limit.
const MANIFEST_TEST_SIZE: usize = 5 * 1024 * 1024;

#[tokio::test]
async fn a_body_trickled_slower_than_the_stall_limit_is_dropped_and_not_stored() {
    let content = vec![7u8; 400];
    let descriptor = blob_descriptor(&content);
    let server = FakeServer::start(move |_| Reply {
        trickle: Some(std::time::Duration::from_millis(50)),
        ..Reply::new(200, content.clone())
    });
    let mut config = RegistryConfig::from_env();
    config.credentials = CredentialSources::default();
    config.attempts = 1;
    config.stall = StallLimit {
        min_bytes: 100,
        window: std::time::Duration::from_millis(400),
    };
    let (_dir, store) = store();
    let error = fetch(&Registry::new(config), &server.host(), &store, &descriptor)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Stalled { min_bytes: 100, .. }),
        "{error}"
    );
    assert_nothing_stored(&store);
}

/// A registry that wants `Bearer access-1` and a token realm on the same fake server that
/// hands it out for the OAuth2 refresh token `refresh-1` (POST), or, when `post_supported` is
/// false, answers POST with 404 and takes the refresh token as the basic password on GET.
fn oauth_registry(post_supported: bool) -> FakeServer {
    let port = Arc::new(Mutex::new(0u16));
    let realm_port = port.clone();
    let server = FakeServer::start(move |seen| {
        if seen.path.starts_with("/token") {
            let form: BTreeMap<String, String> = reqwest::Url::parse(&format!(
                "http://x/?{}",
                String::from_utf8_lossy(&seen.body)
            ))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("user:refresh-1")
            );
            let granted = match (seen.method.as_str(), post_supported) {
                ("POST", true) => {
                    form.get("grant_type").map(String::as_str) == Some("refresh_token")
                        && form.get("refresh_token").map(String::as_str) == Some("refresh-1")
                        && form.get("client_id").map(String::as_str) == Some("imgb")
                        && form.get("service").map(String::as_str) == Some("fake")
                        && form.get("scope").map(String::as_str) == Some("repository:app:pull")
                }
                ("POST", false) => return Reply::new(404, ""),
                _ => seen.headers.get("authorization") == Some(&basic),
            };
            return match granted {
                true => Reply::new(200, r#"{"access_token":"access-1","expires_in":300}"#),
                false => Reply::new(401, ""),
            };
        }
        match seen.headers.get("authorization").map(String::as_str) {
            Some("Bearer access-1") => Reply::new(200, b"blob".to_vec()),
            _ => Reply::new(401, "").header(
                "WWW-Authenticate",
                format!(
                    r#"Bearer realm="http://127.0.0.1:{}/token",service="fake""#,
                    realm_port.lock().unwrap()
                ),
            ),
        }
    });
    *port.lock().unwrap() = server.port;
    server
}

/// A client whose Docker `config.json` holds `entry` for `host`.
fn with_docker_config_entry(
    dir: &std::path::Path,
    host: &str,
    entry: serde_json::Value,
) -> Registry {
    let file = dir.join("config.json");
    std::fs::write(
        &file,
        serde_json::json!({ "auths": { host: entry } }).to_string(),
    )
    .unwrap();
    let mut config = RegistryConfig::from_env();
    config.credentials = CredentialSources { files: vec![file] };
    config.attempts = 2;
    Registry::new(config)
}

async fn fetch_with_identity_token(post_supported: bool) -> Vec<Seen> {
    let server = oauth_registry(post_supported);
    let dir = tempfile::tempdir().unwrap();
    let registry = with_docker_config_entry(
        dir.path(),
        &server.host(),
        serde_json::json!({
            "auth": base64::engine::general_purpose::STANDARD.encode("user:"),
            "identitytoken": "refresh-1",
        }),
    );
    let (_root, store) = store();
    let info = fetch(&registry, &server.host(), &store, &blob_descriptor(b"blob"))
        .await
        .unwrap();
    assert_eq!(store.read_blob(&info.digest).unwrap(), b"blob");
    server
        .seen()
        .into_iter()
        .filter(|seen| seen.path.starts_with("/token"))
        .collect()
}

#[tokio::test]
async fn an_identity_token_is_exchanged_for_an_access_token_with_an_oauth2_post() {
    let token_requests = fetch_with_identity_token(true).await;
    let methods: Vec<&str> = token_requests.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["POST"]);
    assert!(
        !token_requests[0].headers.contains_key("authorization"),
        "the refresh token travels in the form only"
    );
}

#[tokio::test]
async fn an_identity_token_falls_back_to_basic_get_where_the_realm_refuses_post() {
    let token_requests = fetch_with_identity_token(false).await;
    let methods: Vec<&str> = token_requests.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["POST", "GET"]);
}

#[tokio::test]
async fn a_registry_token_is_sent_as_the_bearer_token_without_an_exchange() {
    let server =
        FakeServer::start(
            |seen| match seen.headers.get("authorization").map(String::as_str) {
                Some("Bearer registry-token-1") => Reply::new(200, b"blob".to_vec()),
                _ => Reply::new(401, "").header(
                    "WWW-Authenticate",
                    r#"Bearer realm="http://127.0.0.1:1/token",service="fake""#,
                ),
            },
        );
    let dir = tempfile::tempdir().unwrap();
    let registry = with_docker_config_entry(
        dir.path(),
        &server.host(),
        serde_json::json!({ "registrytoken": "registry-token-1" }),
    );
    let (_root, store) = store();
    fetch(&registry, &server.host(), &store, &blob_descriptor(b"blob"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_server_is_retried_with_backoff() {
    let attempts = Arc::new(Mutex::new(0));
    let counted = attempts.clone();
    let server = FakeServer::start(move |seen| {
        if !seen.path.contains("/blobs/") {
            return Reply::new(200, "");
        }
        let mut attempts = counted.lock().unwrap();
        *attempts += 1;
        match *attempts {
            1 => Reply::new(503, "overloaded"),
            _ => Reply::new(200, b"blob".to_vec()),
        }
    });
    let (_dir, store) = store();
    let info = fetch(
        &registry(),
        &server.host(),
        &store,
        &blob_descriptor(b"blob"),
    )
    .await
    .unwrap();
    assert_eq!(store.read_blob(&info.digest).unwrap(), b"blob");
    assert_eq!(*attempts.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_failed_upload_is_retried_in_a_new_session_and_the_blob_confirmed() {
    let content = b"layer to push".to_vec();
    let descriptor = blob_descriptor(&content);
    let puts = Arc::new(Mutex::new(0));
    let counted = puts.clone();
    let server = FakeServer::start(move |seen| match seen.method.as_str() {
        "HEAD" => Reply::new(404, ""),
        "POST" => Reply::new(202, "").header("Location", "/v2/app/blobs/uploads/session"),
        "PUT" => {
            let mut puts = counted.lock().unwrap();
            *puts += 1;
            match *puts {
                1 => Reply::new(500, "storage hiccup"),
                _ => Reply::new(201, ""),
            }
        }
        _ => Reply::new(200, ""),
    });
    let (_dir, store) = store();
    store.write_blob(&content).unwrap();
    let how = registry()
        .repository(&reference(&server.host(), "app"))
        .push_blob(&store, &descriptor)
        .await
        .unwrap();
    assert_eq!(how, BlobPush::Uploaded);
    let seen = server.seen();
    let uploads: Vec<(&str, &[u8])> = seen
        .iter()
        .filter(|seen| seen.path.contains("/uploads/"))
        .map(|seen| (seen.method.as_str(), seen.body.as_slice()))
        .collect();
    assert_eq!(
        uploads,
        [
            ("POST", &b""[..]),
            ("PUT", &content[..]),
            ("POST", &b""[..]),
            ("PUT", &content[..]),
        ]
    );
}
