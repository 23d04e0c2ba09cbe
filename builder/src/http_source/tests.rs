use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A response of the test server: status, extra headers, body.
type Reply = (u16, Vec<(&'static str, String)>, Vec<u8>);

/// A one-thread HTTP/1.1 server on 127.0.0.1 answering each request (path, `If-None-Match`)
/// with `handler`; counts the bodies it sent with 200.
struct TestServer {
    port: u16,
    full_responses: Arc<AtomicUsize>,
}

impl TestServer {
    fn start(handler: impl Fn(&str, Option<&str>) -> Reply + Send + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let full_responses = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&full_responses);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
                let mut if_none_match = None;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("if-none-match")
                    {
                        if_none_match = Some(value.trim().to_string());
                    }
                }
                let (status, headers, body) = handler(&path, if_none_match.as_deref());
                if status == 200 {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        TestServer {
            port,
            full_responses,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn full_responses(&self) -> usize {
        self.full_responses.load(Ordering::SeqCst)
    }
}

const BODY: &[u8] = b"downloaded bytes\n";
const LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

/// `/file` with an ETag (304 when it matches), `/redirect` → `/file`, `/loop` → itself,
/// anything else 404.
fn serve_file() -> TestServer {
    TestServer::start(|path, if_none_match| match path {
        "/file" if if_none_match == Some("\"v1\"") => (304, vec![], vec![]),
        "/file" => (
            200,
            vec![
                ("ETag", "\"v1\"".to_string()),
                ("Last-Modified", LAST_MODIFIED.to_string()),
            ],
            BODY.to_vec(),
        ),
        "/redirect" => (302, vec![("Location", "/file".to_string())], vec![]),
        "/loop" => (302, vec![("Location", "/loop".to_string())], vec![]),
        _ => (404, vec![], b"not found".to_vec()),
    })
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    (dir, store)
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn get(store: &Store, url: &str, checksum: Option<&str>) -> Result<LayerRef, HttpError> {
    block_on(download(
        store,
        None,
        Request {
            url,
            filename: "file",
            checksum,
        },
    ))
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", Digest::of(bytes).hex())
}

/// The one file of a download's layer: (name, mode, mtime, content).
fn layer_file(store: &Store, layer: &LayerRef) -> (String, u32, i64, Vec<u8>) {
    use std::os::unix::fs::MetadataExt;
    let snapshot = store.ensure_snapshot(&layer.blob, &layer.diff_id).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&snapshot)
        .unwrap()
        .map(|entry| entry.unwrap())
        .collect();
    let [entry] = entries.as_slice() else {
        panic!("one file expected in the layer, found {entries:?}");
    };
    let meta = entry.metadata().unwrap();
    (
        entry.file_name().to_string_lossy().into_owned(),
        meta.mode() & 0o7777,
        meta.mtime(),
        std::fs::read(entry.path()).unwrap(),
    )
}

#[test]
fn checksums_parse_as_go_digest_does() {
    let hex = "a".repeat(64);
    let parsed = Checksum::parse(&format!("sha256:{hex}")).unwrap();
    assert_eq!(parsed.to_string(), format!("sha256:{hex}"));
    assert!(Checksum::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
    for (text, reason) in [
        ("sha256", "invalid checksum digest format"),
        ("sha256:", "invalid checksum digest format"),
        ("md5:00", "unsupported digest algorithm"),
        ("sha256:abc", "invalid checksum digest length"),
        (
            &*format!("sha256:{}", "A".repeat(64)),
            "invalid checksum digest format",
        ),
    ] {
        assert_eq!(Checksum::parse(text).unwrap_err(), reason, "{text}");
    }
}

#[test]
fn file_names_are_one_plain_component() {
    assert_eq!(safe_file_name("tool.tar.gz"), "tool.tar.gz");
    for unsafe_name in ["", ".", "..", "a/b"] {
        assert_eq!(safe_file_name(unsafe_name), "__unnamed__");
    }
}

#[test]
fn a_redirected_download_is_a_0600_file_with_the_last_modified_mtime() {
    let server = serve_file();
    let (_dir, store) = store();
    let layer = get(&store, &server.url("/redirect"), None).unwrap();
    let (name, mode, mtime, content) = layer_file(&store, &layer);
    assert_eq!(name, "file");
    assert_eq!(mode, 0o600);
    assert_eq!(mtime, 1_700_000_000, "{LAST_MODIFIED}");
    assert_eq!(content, BODY);
}

#[test]
fn an_unchanged_url_is_revalidated_with_its_etag_and_not_downloaded_again() {
    let server = serve_file();
    let (_dir, store) = store();
    let first = get(&store, &server.url("/file"), None).unwrap();
    let second = get(&store, &server.url("/file"), None).unwrap();
    assert_eq!(first, second);
    assert_eq!(server.full_responses(), 1, "the second request got a 304");
}

#[test]
fn a_pinned_download_is_reused_without_the_network_and_a_mismatch_records_nothing() {
    let server = serve_file();
    let (_dir, store) = store();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let error = get(&store, &server.url("/file"), Some(&wrong)).unwrap_err();
    let HttpError::Mismatch { actual, .. } = &error else {
        panic!("expected a mismatch, got {error}");
    };
    assert_eq!(*actual, sha256_of(BODY));
    assert!(
        error.to_string().contains("expected: sha256:000"),
        "{error}"
    );

    let right = sha256_of(BODY);
    let first = get(&store, &server.url("/file"), Some(&right)).unwrap();
    assert_eq!(server.full_responses(), 2);
    let again = get(&store, &server.url("/file"), Some(&right)).unwrap();
    assert_eq!(first, again);
    assert_eq!(
        server.full_responses(),
        2,
        "no request for a pinned, recorded URL"
    );
}

#[test]
fn error_statuses_and_redirect_loops_fail_with_the_url() {
    let server = serve_file();
    let (_dir, store) = store();
    let missing = get(&store, &server.url("/missing"), None).unwrap_err();
    assert!(
        matches!(missing, HttpError::Status { status: 404, .. }),
        "{missing}"
    );
    assert!(missing.to_string().contains("/missing"), "{missing}");
    let looping = get(&store, &server.url("/loop"), None).unwrap_err();
    assert!(matches!(looping, HttpError::Request { .. }), "{looping}");
    assert!(looping.to_string().contains("/loop"), "{looping}");
}
