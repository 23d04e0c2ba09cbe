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
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

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

fn get_with_read_token(server: &TestServer, path: &str) -> Answer {
    http(server, "GET", path, Some(READ_TOKEN), &[], b"")
}

/// Asserts that `answer` is an error of `status` with the distribution error `code`.
fn assert_refused(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert!(answer.body.contains(code), "{}", answer.body);
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

const MINIMAL_CONFIG: &[u8] = b"{}";

/// The manifest of an image of config `{}` and no layers.
fn minimal_manifest() -> String {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest_of(MINIMAL_CONFIG), "size": MINIMAL_CONFIG.len() },
        "layers": []
    })
    .to_string()
}

/// `PUT` of `manifest` as `repo:reference` with `content_type`.
fn put_manifest(
    server: &TestServer,
    repo: &str,
    reference: &str,
    content_type: &str,
    manifest: &str,
) -> Answer {
    http(
        server,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        Some(WRITE_TOKEN),
        &[("Content-Type", content_type)],
        manifest.as_bytes(),
    )
}

/// Pushes the minimal image to `repo:reference` (a tag or its digest); returns its digest.
fn push_minimal_image(server: &TestServer, repo: &str, reference: &str) -> String {
    assert_eq!(push_blob(server, repo, MINIMAL_CONFIG).status, 201);
    let manifest = minimal_manifest();
    let answer = put_manifest(server, repo, reference, OCI_MANIFEST, &manifest);
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
fn tagged_cache_survives_a_prune_of_the_server_root_and_untagged_blobs_do_not() {
    let Some((dir, busybox)) = support::setup() else {
        return;
    };
    let server = start(dir.path(), &[]);
    let writer = auth_file(dir.path(), &server, WRITE_TOKEN);
    let context = support::busybox_context(&dir.path().join("a"), &busybox, DOCKERFILE);
    std::fs::write(context.join("app.txt"), "kept\n").unwrap();
    let cache_to = format!("type=registry,ref={}/team/cache:main,mode=max", server.addr);
    build_started_steps(
        &dir.path().join("root-a"),
        &writer,
        &context,
        &["--cache-to", &cache_to],
    );
    // An untagged blob, and a manifest put by digest only: collectable.
    let orphan = b"pushed, then never named by a tag".to_vec();
    assert_eq!(push_blob(&server, "team/cache", &orphan).status, 201);
    push_minimal_image(
        &server,
        "team/cache",
        &digest_of(minimal_manifest().as_bytes()),
    );
    // Prune with nothing running: only the tags protect.
    let (status, _) = server.terminate();
    assert!(status.success());
    let server_root = dir.path().join("server-root");
    support::imgb_ok(&server_root, &["prune", "--all", "--force"]);
    let store = imgb_cache::Store::open(&server_root).unwrap();
    for gone in [&orphan[..], minimal_manifest().as_bytes()] {
        let digest = imgb_cache::Digest::of(gone);
        assert!(!store.blob_path(&digest).exists(), "{digest} was kept");
    }
    assert_store_consistent(&server_root);

    let server = start(dir.path(), &[]);
    let reader = auth_file(dir.path(), &server, READ_TOKEN);
    let fresh = support::busybox_context(&dir.path().join("b"), &busybox, DOCKERFILE);
    std::fs::write(fresh.join("app.txt"), "kept\n").unwrap();
    let cache_from = format!("type=registry,ref={}/team/cache:main", server.addr);
    let ran = build_started_steps(
        &dir.path().join("root-b"),
        &reader,
        &fresh,
        &["--cache-from", &cache_from],
    );
    assert!(ran.iter().all(|step| !step.contains(" RUN ")), "{ran:?}");
}

/// `skopeo inspect FLAGS docker://IMAGE` with the read token, parsed.
fn skopeo_inspect(skopeo: &Path, image: &str, flags: &[&str]) -> serde_json::Value {
    let output = support::run(
        Command::new(skopeo)
            .arg("inspect")
            .args(flags)
            .args(["--creds", &format!("x:{READ_TOKEN}"), "--tls-verify=false"])
            .arg(format!("docker://{image}")),
    );
    serde_json::from_slice(&output.stdout).unwrap()
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
    let inspected = skopeo_inspect(&skopeo, &image, &[]);
    assert_eq!(
        inspected["Layers"].as_array().map(Vec::len),
        Some(1),
        "{inspected}"
    );
    // The push compresses the built layer, so the pushed manifest is not the stored one; the
    // config (and so the image's identity) is the same.
    let pushed = skopeo_inspect(&skopeo, &image, &["--raw"]);
    let local = support::stdout(&support::imgb_ok(&root, &["inspect", &image]));
    let local: serde_json::Value = serde_json::from_str(&local).unwrap();
    assert_eq!(
        pushed["config"]["digest"], local["manifest"]["config"]["digest"],
        "{pushed} {local}"
    );

    // skopeo's own pushes (blob uploads, then the manifest) pass the server's validation.
    let layout = dir.path().join("layout");
    support::imgb_ok(
        &root,
        &[
            "save",
            &image,
            "-o",
            &format!("type=oci,tar=false,dest={}", layout.display()),
        ],
    );
    let copy = format!("{}/team/copied:1", server.addr);
    support::run(Command::new(&skopeo).args([
        "copy",
        "--dest-creds",
        &format!("x:{WRITE_TOKEN}"),
        "--dest-tls-verify=false",
        &format!("oci:{}", layout.display()),
        &format!("docker://{copy}"),
    ]));
    let copied = skopeo_inspect(&skopeo, &copy, &[]);
    assert_eq!(
        copied["Layers"].as_array().map(Vec::len),
        Some(1),
        "{copied}"
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
    let read = get_with_read_token(&server, "/v2/team/app/manifests/main");
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
    assert_refused(&wrong, 400, "DIGEST_INVALID");
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
    assert_refused(&answer, 400, "MANIFEST_BLOB_UNKNOWN");
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

#[test]
fn manifests_are_validated_on_put() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let image = push_minimal_image(&server, "team/app", "main");
    let refused = |reference: &str, content_type: &str, manifest: &str, code: &str| {
        let answer = put_manifest(&server, "team/app", reference, content_type, manifest);
        assert_refused(&answer, 400, code);
        answer.body
    };
    let manifest_with = |layer: serde_json::Value| {
        let mut manifest: serde_json::Value = serde_json::from_str(&minimal_manifest()).unwrap();
        manifest["layers"] = serde_json::json!([layer]);
        manifest.to_string()
    };

    // A layer the server does not have: named in the answer.
    let absent = digest_of(b"a layer never pushed");
    let missing_layer = manifest_with(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": absent, "size": 20 }));
    let body = refused(
        "layer",
        OCI_MANIFEST,
        &missing_layer,
        "MANIFEST_BLOB_UNKNOWN",
    );
    assert!(body.contains(&absent), "{body}");
    // A media type that contradicts the Content-Type, or a Content-Type that is no manifest's.
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    refused("main", docker, &minimal_manifest(), "MANIFEST_INVALID");
    refused(
        "main",
        "application/json",
        &minimal_manifest(),
        "MANIFEST_INVALID",
    );
    // Documents the OCI schemas refuse: a descriptor without a size, another schema version.
    let sizeless = manifest_with(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": absent }));
    refused("main", OCI_MANIFEST, &sizeless, "MANIFEST_INVALID");
    let version_3 = minimal_manifest().replace("\"schemaVersion\":2", "\"schemaVersion\":3");
    refused("main", OCI_MANIFEST, &version_3, "MANIFEST_INVALID");

    // An index naming a manifest the server lacks, or a blob that is not a manifest.
    let index = |digest: &str| {
        serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{ "mediaType": OCI_MANIFEST, "digest": digest,
                            "size": minimal_manifest().len() }] })
        .to_string()
    };
    let unknown = digest_of(b"no such manifest");
    let body = refused(
        "multi",
        OCI_INDEX,
        &index(&unknown),
        "MANIFEST_BLOB_UNKNOWN",
    );
    assert!(body.contains(&unknown), "{body}");
    refused(
        "multi",
        OCI_INDEX,
        &index(&digest_of(MINIMAL_CONFIG)),
        "MANIFEST_BLOB_UNKNOWN",
    );
    let accepted = put_manifest(&server, "team/app", "multi", OCI_INDEX, &index(&image));
    assert_eq!(accepted.status, 201, "{}", accepted.body);

    // Nothing refused was tagged; `main` still names the image.
    let get = |reference: &str| {
        get_with_read_token(&server, &format!("/v2/team/app/manifests/{reference}"))
    };
    assert_eq!(get("layer").status, 404);
    let main = get("main");
    assert_eq!(main.header("Docker-Content-Digest"), Some(image));
    assert_eq!(
        get("multi").header("Content-Type").as_deref(),
        Some(OCI_INDEX)
    );
}

/// Every stored blob hashes to its name.
fn assert_store_consistent(root: &Path) {
    let store = imgb_cache::Store::open(root).unwrap();
    for digest in store.list_blobs().unwrap() {
        store.verify_blob(&digest, None).unwrap();
    }
}

/// `GET` of an upload session: its status and the bytes it holds (from `Range: 0-LAST`).
fn upload_status(server: &TestServer, location: &str) -> (u16, Option<usize>) {
    let answer = http(server, "GET", location, Some(WRITE_TOKEN), &[], b"");
    let received = answer.header("Range").map(|range| {
        let last: usize = range.strip_prefix("0-").unwrap().parse().unwrap();
        last + 1
    });
    (answer.status, received)
}

#[test]
fn an_upload_killed_between_patch_and_put_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let w = Some(WRITE_TOKEN);
    push_minimal_image(&server, "team/app", "main");
    let start_upload = || {
        let started = http(&server, "POST", "/v2/team/app/blobs/uploads/", w, &[], b"");
        assert_eq!(started.status, 202, "{}", started.body);
        started.header("Location").unwrap()
    };
    let location = start_upload();
    let abandoned = start_upload();
    let chunk = vec![3u8; 300_000];
    let patched = http(
        &server,
        "PATCH",
        &location,
        w,
        &[("Content-Range", "0-299999")],
        &chunk,
    );
    assert_eq!(patched.status, 202);
    // A second chunk is in flight when the server dies.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\r\n\
         Content-Length: 10000000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&chunk).unwrap();
    server.kill();
    drop(stream);

    let root = dir.path().join("server-root");
    assert_store_consistent(&root);
    // A session idle for longer than sessions are kept is removed when the server starts.
    let abandoned_file = root
        .join("registry/uploads")
        .join(abandoned.rsplit('/').next().unwrap());
    std::fs::File::options()
        .write(true)
        .open(&abandoned_file)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    let server = start(dir.path(), &[]);
    assert!(!abandoned_file.exists());
    let gone = http(&server, "PATCH", &abandoned, w, &[], b"x");
    assert_refused(&gone, 404, "BLOB_UPLOAD_UNKNOWN");

    // The killed session goes on from where its bytes end (the chunk in flight perhaps partly).
    let (status, received) = upload_status(&server, &location);
    assert_eq!(status, 204);
    let received = received.unwrap();
    assert!((300_000..=600_000).contains(&received), "{received}");
    let rest = vec![3u8; 600_000 - received];
    if !rest.is_empty() {
        let range = format!("{received}-{}", 600_000 - 1);
        let patched = http(
            &server,
            "PATCH",
            &location,
            w,
            &[("Content-Range", &range)],
            &rest,
        );
        assert_eq!(patched.status, 202, "{}", patched.body);
    }
    let mut blob = vec![3u8; 600_000];
    blob.extend_from_slice(b"end");
    let closed = http(
        &server,
        "PUT",
        &format!("{location}?digest={}", digest_of(&blob)),
        w,
        &[],
        b"end",
    );
    assert_eq!(closed.status, 201, "{}", closed.body);
    assert_eq!(upload_status(&server, &location).0, 404);
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
    // The manifest pushed before the kill is still served.
    let read = get_with_read_token(&server, "/v2/team/app/manifests/main");
    assert_eq!(read.status, 200, "{}", read.body);
    assert_store_consistent(&root);
}

#[test]
fn a_resumed_upload_closed_with_the_wrong_digest_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let w = Some(WRITE_TOKEN);
    let started = http(&server, "POST", "/v2/team/app/blobs/uploads/", w, &[], b"");
    let location = started.header("Location").unwrap();
    assert_eq!(
        http(&server, "PATCH", &location, w, &[], b"half a blob").status,
        202
    );
    server.kill();
    let server = start(dir.path(), &[]);
    assert_eq!(upload_status(&server, &location), (204, Some(11)));
    let closed = http(
        &server,
        "PUT",
        &format!("{location}?digest={}", digest_of(b"something else")),
        w,
        &[],
        b"",
    );
    assert_refused(&closed, 400, "DIGEST_INVALID");
    // The session is over and nothing reached the store.
    assert_eq!(upload_status(&server, &location).0, 404);
    let root = dir.path().join("server-root");
    assert!(
        imgb_cache::Store::open(&root)
            .unwrap()
            .list_blobs()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        std::fs::read_dir(root.join("registry/uploads"))
            .unwrap()
            .count(),
        0
    );
    // An id the server never issued is unknown, not a path.
    let forged = http(
        &server,
        "GET",
        "/v2/team/app/blobs/uploads/..%2f..%2fleases",
        w,
        &[],
        b"",
    );
    assert_eq!(forged.status, 404, "{}", forged.body);
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
