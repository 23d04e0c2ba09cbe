//! The shared build cache `imgb serve` exposes over the OCI distribution API (`/v2/`): imgb's
//! registry cache and pushes and skopeo work against it with tokens; scopes hold; malformed
//! requests get 4xx and the server goes on; a kill mid-upload leaves a consistent store.

mod support;

use base64::Engine;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::serve::TestServer;

const WRITE_TOKEN: &str = "w-cache-0123456789abcdef0123456789ab";
const READ_TOKEN: &str = "r-cache-0123456789abcdef0123456789ab";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, format!("{WRITE_TOKEN} write\n{READ_TOKEN} read\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn start(dir: &Path, extra: &[&str]) -> TestServer {
    let tokens = token_file(dir);
    let mut args = vec!["--token-file", tokens.to_str().unwrap()];
    args.extend(extra);
    TestServer::start(&dir.join("server-root"), &args)
}

/// A docker-style auth file giving `token` for the server (any user name works).
fn auth_file(dir: &Path, server: &TestServer, token: &str) -> PathBuf {
    let path = dir.join(format!("auth-{}.json", &token[..1]));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{token}"));
    let json = serde_json::json!({ "auths": { server.addr.clone(): { "auth": auth } } });
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// `imgb --root ROOT ARGS` with the auth file, asserting success; returns stderr.
fn imgb_with_auth(root: &Path, auth: &Path, args: &[&str]) -> String {
    let output = support::run(
        Command::new(env!("CARGO_BIN_EXE_imgb"))
            .env("IMGB_AUTH_FILE", auth)
            .arg("--root")
            .arg(root)
            .args(args),
    );
    support::stderr(&output)
}

/// One HTTP/1.1 exchange on a new connection: (status, head, body).
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

fn http(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        server.addr,
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    parse_answer(&support::serve::raw_exchange(&server.addr, &bytes))
}

fn parse_answer(text: &str) -> Answer {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    Answer {
        status: support::serve::status_of(head),
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn digest_of(bytes: &[u8]) -> String {
    imgb_cache::Digest::of(bytes).as_str().to_string()
}

/// Pushes `bytes` as a blob of `repo` in one monolithic upload; returns the answer.
fn push_blob(server: &TestServer, repo: &str, bytes: &[u8]) -> Answer {
    http(
        server,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={}", digest_of(bytes)),
        Some(WRITE_TOKEN),
        &[],
        bytes,
    )
}

/// Pushes a minimal image (config `{}`, no layers) to `repo:tag`; returns the manifest digest.
fn push_minimal_image(server: &TestServer, repo: &str, tag: &str) -> String {
    let config = b"{}";
    assert_eq!(push_blob(server, repo, config).status, 201);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest_of(config), "size": config.len() },
        "layers": []
    })
    .to_string();
    let answer = http(
        server,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        Some(WRITE_TOKEN),
        &[("Content-Type", OCI_MANIFEST)],
        manifest.as_bytes(),
    );
    assert_eq!(answer.status, 201, "{}", answer.body);
    digest_of(manifest.as_bytes())
}

const DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY app.txt /app.txt
RUN sed 's/^/built: /' /app.txt > /out.txt
"#;

/// `imgb build` with rawjson progress: the names of the steps that started.
fn build_started_steps(
    root: &Path,
    auth: &Path,
    context: &Path,
    cache_args: &[&str],
) -> Vec<String> {
    let mut args = vec![
        "build",
        "--progress",
        "rawjson",
        "--build-arg",
        "SOURCE_DATE_EPOCH=1700000000",
    ];
    args.extend(cache_args);
    args.push(context.to_str().unwrap());
    let stderr = imgb_with_auth(root, auth, &args);
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["event"] == "started")
        .filter_map(|event| event["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn registry_cache_on_the_server_rebuilds_an_empty_root_without_running() {
    let Some((dir, busybox)) = support::setup() else {
        return;
    };
    let server = start(dir.path(), &[]);
    let reference = format!("{}/team/cache:main", server.addr);
    let writer = auth_file(dir.path(), &server, WRITE_TOKEN);
    let reader = auth_file(dir.path(), &server, READ_TOKEN);

    let context_a = support::busybox_context(&dir.path().join("a"), &busybox, DOCKERFILE);
    std::fs::write(context_a.join("app.txt"), "one\n").unwrap();
    let ran = build_started_steps(
        &dir.path().join("root-a"),
        &writer,
        &context_a,
        &[
            "--cache-to",
            &format!("type=registry,ref={reference},mode=max"),
        ],
    );
    assert_eq!(
        ran.iter().filter(|step| step.contains(" RUN ")).count(),
        2,
        "{ran:?}"
    );

    let context_b = support::busybox_context(&dir.path().join("b"), &busybox, DOCKERFILE);
    std::fs::write(context_b.join("app.txt"), "one\n").unwrap();
    let ran = build_started_steps(
        &dir.path().join("root-b"),
        &reader,
        &context_b,
        &["--cache-from", &format!("type=registry,ref={reference}")],
    );
    assert!(ran.iter().all(|step| !step.contains(" RUN ")), "{ran:?}");

    // A read token cannot export the cache.
    let output = Command::new(env!("CARGO_BIN_EXE_imgb"))
        .env("IMGB_AUTH_FILE", &reader)
        .arg("--root")
        .arg(dir.path().join("root-b"))
        .args([
            "build",
            "--cache-to",
            &format!("type=registry,ref={reference}-2,mode=max"),
        ])
        .arg(&context_b)
        .output()
        .unwrap();
    let stderr = support::stderr(&output);
    assert!(
        stderr.contains("403") || stderr.to_lowercase().contains("denied"),
        "{stderr}"
    );
}

#[test]
fn pushed_images_are_inspectable_with_skopeo_and_a_read_token() {
    let Some((dir, busybox)) = support::setup() else {
        return;
    };
    let Some(skopeo) = support::tool("skopeo") else {
        return;
    };
    let server = start(dir.path(), &[]);
    let writer = auth_file(dir.path(), &server, WRITE_TOKEN);
    let context = support::busybox_context(
        &dir.path().join("c"),
        &busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\n",
    );
    let root = dir.path().join("root");
    let image = format!("{}/team/app:1", server.addr);
    imgb_with_auth(
        &root,
        &writer,
        &["build", "-t", &image, context.to_str().unwrap()],
    );
    imgb_with_auth(&root, &writer, &["push", &image]);
    let output = support::run(Command::new(&skopeo).args([
        "inspect",
        "--creds",
        &format!("x:{READ_TOKEN}"),
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]));
    let inspected: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        inspected["Layers"].as_array().map(Vec::len),
        Some(1),
        "{inspected}"
    );
    // The push compresses the built layer, so the pushed manifest is not the stored one; the
    // config (and so the image's identity) is the same.
    let raw = support::run(Command::new(&skopeo).args([
        "inspect",
        "--raw",
        "--creds",
        &format!("x:{READ_TOKEN}"),
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]));
    let pushed: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let local = support::stdout(&support::imgb_ok(&root, &["inspect", &image]));
    let local: serde_json::Value = serde_json::from_str(&local).unwrap();
    assert_eq!(
        pushed["config"]["digest"], local["manifest"]["config"]["digest"],
        "{pushed} {local}"
    );
}

/// The status of `GET` manifest `tag` in `team/app` (which exists) after checking that a
/// repository that does not exist answers the same status and body.
fn answers_alike(server: &TestServer, token: Option<&str>, tag: &str) -> u16 {
    let get = |repo: &str| {
        http(
            server,
            "GET",
            &format!("/v2/{repo}/manifests/{tag}"),
            token,
            &[],
            b"",
        )
    };
    let (existing, missing) = (get("team/app"), get("no/such"));
    assert_eq!(
        (existing.status, &existing.body),
        (missing.status, &missing.body)
    );
    existing.status
}

#[test]
fn scopes_hold_and_not_found_answers_reveal_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    push_minimal_image(&server, "team/app", "main");
    let upload = "/v2/team/app/blobs/uploads/";
    assert_eq!(
        http(&server, "POST", upload, Some(READ_TOKEN), &[], b"").status,
        403
    );
    assert_eq!(http(&server, "POST", upload, None, &[], b"").status, 401);
    assert_eq!(
        http(&server, "POST", upload, Some("nope"), &[], b"").status,
        401
    );
    let put = "/v2/team/app/manifests/other";
    assert_eq!(
        http(&server, "PUT", put, Some(READ_TOKEN), &[], b"{}").status,
        403
    );
    let read = http(
        &server,
        "GET",
        "/v2/team/app/manifests/main",
        Some(READ_TOKEN),
        &[],
        b"",
    );
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.header("Content-Type").as_deref(), Some(OCI_MANIFEST));

    // Without a valid token an existing repository and a missing one answer alike.
    for token in [None, Some("nope")] {
        assert_eq!(answers_alike(&server, token, "main"), 401);
    }
    // With one, a missing tag in an existing repository and a missing repository do too.
    assert_eq!(answers_alike(&server, Some(READ_TOKEN), "gone"), 404);
    let tags = http(
        &server,
        "GET",
        "/v2/no/such/tags/list",
        Some(READ_TOKEN),
        &[],
        b"",
    );
    assert_eq!(tags.status, 200);
}

#[test]
fn malformed_registry_requests_get_4xx_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--max-blob-size", "1KiB"]);
    let w = Some(WRITE_TOKEN);
    let cases: [(&str, &str, &[u8], u16); 10] = [
        ("GET", "/v2/../etc/manifests/passwd", b"", 400),
        ("GET", "/v2/team/%2e%2e/manifests/x", b"", 400),
        ("GET", "/v2/Team/manifests/x", b"", 400),
        ("GET", "/v2/team/app/blobs/sha256:zz", b"", 400),
        ("GET", "/v2/team/app/manifests/..", b"", 400),
        ("PUT", "/v2/team/app/manifests/main", b"{not json", 400),
        (
            "POST",
            "/v2/team/app/blobs/uploads/?digest=sha256:0000",
            b"x",
            400,
        ),
        (
            "PATCH",
            "/v2/team/app/blobs/uploads/no-such-upload",
            b"x",
            404,
        ),
        ("DELETE", "/v2/team/app/manifests/main", b"", 405),
        (
            "POST",
            "/v2/team/app/blobs/uploads/?digest=sha256:00",
            &[7u8; 2048],
            400,
        ),
    ];
    for (method, path, body, expected) in cases {
        let answer = http(&server, method, path, w, &[], body);
        assert_eq!(answer.status, expected, "{method} {path}: {}", answer.body);
    }
    // Content that does not match its digest is refused and not stored.
    let wrong = http(
        &server,
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={}", digest_of(b"other")),
        w,
        &[],
        b"content",
    );
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert!(wrong.body.contains("DIGEST_INVALID"), "{}", wrong.body);
    let stored = http(
        &server,
        "HEAD",
        &format!("/v2/team/app/blobs/{}", digest_of(b"content")),
        w,
        &[],
        b"",
    );
    assert_eq!(stored.status, 404);
    // Too big for --max-blob-size.
    let big = vec![1u8; 4096];
    assert_eq!(push_blob(&server, "team/app", &big).status, 413);
    // A manifest naming a blob the server lacks.
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest_of(b"absent"), "size": 6 },
        "layers": []
    })
    .to_string();
    let answer = http(
        &server,
        "PUT",
        "/v2/team/app/manifests/main",
        w,
        &[],
        manifest.as_bytes(),
    );
    assert_eq!(answer.status, 400);
    assert!(
        answer.body.contains("MANIFEST_BLOB_UNKNOWN"),
        "{}",
        answer.body
    );
    // A chunk that does not continue the upload.
    let started = http(&server, "POST", "/v2/team/app/blobs/uploads/", w, &[], b"");
    assert_eq!(started.status, 202);
    let location = started.header("Location").unwrap();
    let answer = http(
        &server,
        "PATCH",
        &location,
        w,
        &[("Content-Range", "5-9")],
        b"abcde",
    );
    assert_eq!(answer.status, 416, "{}", answer.body);
    // A truncated upload body: the connection ends before Content-Length bytes.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\r\n\
         Content-Length: 1000\r\n\r\nonly a little"
    )
    .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || (400..500).contains(&support::serve::status_of(&answer)),
        "{answer}"
    );
    // Still serving, and a fresh upload works.
    push_minimal_image(&server, "team/app", "main");
}

/// Every stored blob hashes to its name.
fn assert_store_consistent(root: &Path) {
    let store = imgb_cache::Store::open(root).unwrap();
    for digest in store.list_blobs().unwrap() {
        store.verify_blob(&digest, None).unwrap();
    }
}

#[test]
fn a_server_killed_mid_upload_restarts_with_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let w = Some(WRITE_TOKEN);
    push_minimal_image(&server, "team/app", "main");
    let started = http(&server, "POST", "/v2/team/app/blobs/uploads/", w, &[], b"");
    let location = started.header("Location").unwrap();
    let half = vec![3u8; 300_000];
    assert_eq!(http(&server, "PATCH", &location, w, &[], &half).status, 202);
    // A second chunk is in flight when the server dies.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\r\n\
         Content-Length: 10000000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&half).unwrap();
    server.kill();
    drop(stream);

    let root = dir.path().join("server-root");
    assert_store_consistent(&root);
    let server = start(dir.path(), &[]);
    // The old session is gone; the manifest pushed before is still served; a new push works.
    assert_eq!(http(&server, "PATCH", &location, w, &[], b"x").status, 404);
    let read = http(
        &server,
        "GET",
        "/v2/team/app/manifests/main",
        Some(READ_TOKEN),
        &[],
        b"",
    );
    assert_eq!(read.status, 200, "{}", read.body);
    let blob = vec![5u8; 600_000];
    assert_eq!(push_blob(&server, "team/app", &blob).status, 201);
    let fetched = Command::new("curl")
        .args(["-sS", "-H", &format!("Authorization: Bearer {READ_TOKEN}")])
        .arg(format!(
            "http://{}/v2/team/app/blobs/{}",
            server.addr,
            digest_of(&blob)
        ))
        .output()
        .unwrap();
    assert_eq!(fetched.stdout, blob);
    assert_store_consistent(&root);
}

#[test]
fn an_upload_in_flight_at_sigterm_completes_before_the_server_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let started = http(
        &server,
        "POST",
        "/v2/team/app/blobs/uploads/",
        Some(WRITE_TOKEN),
        &[],
        b"",
    );
    let location = started.header("Location").unwrap();
    let chunk = vec![9u8; 200_000];
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {WRITE_TOKEN}\r\nContent-Length: {}\r\n\r\n",
        chunk.len() * 2
    )
    .unwrap();
    stream.write_all(&chunk).unwrap();
    server.signal("TERM");
    server.wait_for_stderr("shutting down");
    // No new connections, but the request in flight finishes.
    assert!(TcpStream::connect(&server.addr).is_err());
    stream.write_all(&chunk).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let answer = parse_answer(&answer);
    assert_eq!(answer.status, 202, "{}", answer.head);
    assert_eq!(answer.header("Range").as_deref(), Some("0-399999"));
    assert!(server.wait().success());
}

#[test]
fn imgb_login_takes_a_token_as_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let login = |token: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imgb"))
            .env("IMGB_AUTH_FILE", dir.path().join("auth.json"))
            .args(["login", &server.addr, "-u", "anyone", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(login(READ_TOKEN).status.success());
    let refused = login("not-a-token");
    assert!(!refused.status.success());
    assert!(!support::stderr(&refused).contains("not-a-token"));
}
