//! `imgb serve`'s core: listeners, tokens and scopes, limits, TLS, the refusal to expose an
//! unprotected listener, graceful shutdown and the OCI distribution API for the shared cache.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::serve::{TestServer, curl, raw_exchange, status_of};

const WRITE_TOKEN: &str = "w-0123456789abcdef0123456789abcdef";
const READ_TOKEN: &str = "r-0123456789abcdef0123456789abcdef";

/// A private token file with one write and one read token.
fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!("# CI runners\n{WRITE_TOKEN} write\n\n{READ_TOKEN} read\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[test]
fn health_needs_no_token_and_everything_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let server = TestServer::start(
        &dir.path().join("root"),
        &["--token-file", tokens.to_str().unwrap()],
    );
    let url = server.url(false);
    for path in ["/v1/health", "/healthz"] {
        let (status, body) = curl(&[&format!("{url}{path}")]);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains("\"ok\""), "{body}");
    }
    // Unknown paths and real ones look alike without a valid token.
    for path in ["/v1/builds", "/no/such/thing", "/v2/"] {
        for auth in [None, Some(bearer("wrong-token"))] {
            let mut args = vec!["-i".to_string(), format!("{url}{path}")];
            if let Some(auth) = &auth {
                args.extend(["-H".to_string(), auth.clone()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (status, body) = curl(&args);
            assert_eq!(status, 401, "{path} {auth:?}: {body}");
            assert!(
                body.to_ascii_lowercase().contains("www-authenticate:"),
                "{body}"
            );
        }
    }
    let (status, _) = curl(&["-H", &bearer(READ_TOKEN), &format!("{url}/no/such/thing")]);
    assert_eq!(status, 404);
}

#[test]
fn the_default_listener_is_a_group_only_unix_socket_in_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let server = TestServer::start(
        &root,
        &[
            "--listen",
            &format!("unix://{}", root.join("serve.sock").display()),
        ],
    );
    // Killed: its socket file stays behind, and the next server replaces it.
    server.kill();
    // Without --listen at all.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(&root)
        .arg("serve")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = root.join("serve.sock");
    // Kept open until the end: the server reports its shutdown there too.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut startup = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut startup).unwrap();
    assert_eq!(
        startup.trim(),
        format!("imgb serve: listening on unix://{}", socket.display())
    );
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let (status, body) = curl(&[
        "--unix-socket",
        socket.to_str().unwrap(),
        "http://imgb/v1/health",
    ]);
    assert_eq!(status, 200, "{body}");
    support::run(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

#[test]
fn exposed_listeners_need_tls_and_tokens_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let refused = support::imgb(&root, &["serve", "--listen", "0.0.0.0:0"]);
    assert!(!refused.status.success());
    let message = support::stderr(&refused);
    assert!(
        message.contains("refusing to listen on 0.0.0.0:0"),
        "{message}"
    );
    assert!(message.contains("--insecure"), "{message}");
    let tokens = token_file(dir.path());
    let refused = support::imgb(
        &root,
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--token-file",
            tokens.to_str().unwrap(),
        ],
    );
    assert!(
        support::stderr(&refused).contains("no TLS"),
        "{}",
        support::stderr(&refused)
    );
    let server = TestServer::start(&root, &["--listen", "0.0.0.0:0", "--insecure"]);
    let port = server.addr.rsplit_once(':').unwrap().1;
    let (status, _) = curl(&[&format!("http://127.0.0.1:{port}/v1/health")]);
    assert_eq!(status, 200);
}

#[test]
fn malformed_token_files_are_refused_by_line_without_echoing_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "good-token-1 write\nsupersecret-token admin\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = support::imgb(
        &dir.path().join("root"),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            path.to_str().unwrap(),
        ],
    );
    assert!(!output.status.success());
    let message = support::stderr(&output);
    assert!(
        message.contains(&format!("{}:2:", path.display())),
        "{message}"
    );
    assert!(!message.contains("supersecret"), "{message}");
}

#[test]
fn readable_token_files_draw_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = TestServer::start(
        &dir.path().join("root"),
        &["--token-file", tokens.to_str().unwrap()],
    );
    assert!(
        server.startup.contains("readable by group or others"),
        "{}",
        server.startup
    );
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("root"), &[]);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn huge_headers_get_431_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("root"), &[]);
    let huge = format!(
        "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let answer = raw_exchange(&server.addr, huge.as_bytes());
    assert_eq!(status_of(&answer), 431, "{answer}");
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_exchange(
        &server.addr,
        format!("GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{many}\r\n").as_bytes(),
    );
    assert!((400..500).contains(&status_of(&answer)), "{answer}");
    let answer = raw_exchange(&server.addr, b"NOT HTTP AT ALL\r\n\r\n");
    assert!((400..500).contains(&status_of(&answer)), "{answer}");
    let (status, _) = curl(&[&format!("{}/v1/health", server.url(false))]);
    assert_eq!(status, 200);
}

#[test]
fn tls_and_mutual_tls_serve_only_clients_that_trust_and_are_trusted() {
    if support::tool("openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (cert, key, ca) = support::registry::make_certificates(&certs);
    let (client_cert, client_key) = support::registry::make_client_certificate(&certs);
    let tokens = token_file(dir.path());
    let tls_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
    ];
    let server = TestServer::start(&dir.path().join("root"), &tls_args);
    let health = format!("{}/v1/health", server.url(true));
    let (status, body) = curl(&["--cacert", ca.to_str().unwrap(), &health]);
    assert_eq!(status, 200, "{body}");
    // An untrusted certificate and plain HTTP both fail; the server goes on.
    assert_eq!(curl(&[&health]).0, 0);
    assert_eq!(curl(&[&format!("{}/v1/health", server.url(false))]).0, 0);
    let (status, _) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{}/v2/", server.url(true)),
    ]);
    assert_eq!(status, 401);
    drop(server);

    let mut mutual_args = tls_args.to_vec();
    mutual_args.extend(["--tls-client-ca", ca.to_str().unwrap()]);
    let server = TestServer::start(&dir.path().join("root"), &mutual_args);
    let health = format!("{}/v1/health", server.url(true));
    let (status, _) = curl(&["--cacert", ca.to_str().unwrap(), &health]);
    assert_eq!(status, 0, "no client certificate, no connection");
    let (status, body) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        client_cert.to_str().unwrap(),
        "--key",
        client_key.to_str().unwrap(),
        "-H",
        &bearer(READ_TOKEN),
        &format!("{}/v2/", server.url(true)),
    ]);
    assert_eq!(status, 200, "{body}");
}
