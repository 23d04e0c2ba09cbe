//! `imgb serve`'s build service end to end: `imgb build --remote` against a real server, the
//! queue and its limit, malformed submissions, cancellation, a server killed mid-build, and
//! entitlements.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use support::serve::{
    READ_TOKEN, TestServer, build, build_command, curl, get_json, start_slow_build, tokens,
    wait_for_state, wait_for_step,
};
use support::{busybox_context, imgb, setup, stderr};

/// A busybox base, a file from the context and a RUN step.
const DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
    ARG NOTE=one\nCOPY note.txt /note.txt\nRUN echo \"$NOTE\" > /built.txt\n";

fn context(dir: &Path, busybox: &Path, dockerfile: &str) -> PathBuf {
    let context = busybox_context(dir, busybox, dockerfile);
    std::fs::write(context.join("note.txt"), "from the context\n").unwrap();
    std::fs::write(context.join(".dockerignore"), "secret.txt\n").unwrap();
    std::fs::write(context.join("secret.txt"), "never sent\n").unwrap();
    context
}

fn metadata_digest(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["containerimage.digest"].as_str().unwrap().to_string()
}

#[test]
fn a_remote_build_with_a_token_equals_the_local_build_and_writes_its_output_here() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = context(dir.path(), &busybox, DOCKERFILE);
    let (token_table, write_token, read_token) = tokens(dir.path());
    let server = TestServer::start(
        &dir.path().join("server"),
        &["--token-file", token_table.to_str().unwrap()],
    );
    let url = server.url(false);
    let client_root = dir.path().join("client");

    let refused = build(&client_root, &["--remote", &url], &context);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("401"), "{}", stderr(&refused));
    let read_only = build(
        &client_root,
        &[
            "--remote",
            &url,
            "--token-file",
            read_token.to_str().unwrap(),
        ],
        &context,
    );
    assert!(!read_only.status.success());
    assert!(stderr(&read_only).contains("403"), "{}", stderr(&read_only));

    let archive = dir.path().join("remote.tar");
    let remote_metadata = dir.path().join("remote.json");
    let rootfs = dir.path().join("rootfs");
    let remote = build(
        &client_root,
        &[
            "--remote",
            &url,
            "--token-file",
            write_token.to_str().unwrap(),
            "--progress",
            "rawjson",
            "-t",
            "team/app:1",
            "-o",
            &format!("type=oci,dest={}", archive.display()),
            "--metadata-file",
            remote_metadata.to_str().unwrap(),
        ],
        &context,
    );
    assert!(remote.status.success(), "{}", stderr(&remote));
    let events = stderr(&remote);
    assert_eq!(
        support::ran_steps(&events).len(),
        4,
        "the local renderer shows the server's steps:\n{events}"
    );
    assert!(events.contains("\"event\":\"done\""), "{events}");
    assert!(
        !client_root.join("blobs").exists(),
        "the client's store stays unused"
    );

    let local_metadata = dir.path().join("local.json");
    let local = build(
        &dir.path().join("local"),
        &[
            "--progress",
            "plain",
            "-t",
            "team/app:1",
            "--metadata-file",
            local_metadata.to_str().unwrap(),
            // The same output as the remote build: the digest reported is the exported one.
            "-o",
            &format!("type=oci,dest={}", dir.path().join("local.tar").display()),
        ],
        &context,
    );
    assert!(local.status.success(), "{}", stderr(&local));
    let digest = metadata_digest(&local_metadata);
    assert_eq!(metadata_digest(&remote_metadata), digest);

    // The archive written here is the image the server built.
    let index = Command::new("tar")
        .args(["-xOf", archive.to_str().unwrap(), "index.json"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&index.stdout).contains(&digest),
        "{}",
        String::from_utf8_lossy(&index.stdout)
    );
    // A directory output is the server's root filesystem tar, unpacked here; the
    // .dockerignore kept secret.txt out of the upload.
    let again = build(
        &client_root,
        &[
            "--remote",
            &url,
            "--token-file",
            write_token.to_str().unwrap(),
            "--progress",
            "quiet",
            "--build-arg",
            "NOTE=two",
            "-o",
            rootfs.to_str().unwrap(),
        ],
        &context,
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("built.txt")).unwrap(),
        "two\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("note.txt")).unwrap(),
        "from the context\n"
    );
    let listing = get_json(&url, "/v1/builds", Some(READ_TOKEN));
    let builds = listing["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 2, "{listing}");
    assert!(
        builds.iter().all(|build| build["state"] == "succeeded"),
        "{listing}"
    );
    assert!(
        !listing.to_string().contains("NOTE"),
        "listings show no options: {listing}"
    );
    let metrics = curl(&[
        "-H",
        &format!("Authorization: Bearer {READ_TOKEN}"),
        &format!("{url}/metrics"),
    ])
    .1;
    assert!(
        metrics.contains("imgb_builds{state=\"succeeded\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("imgb_cache_hits_total "), "{metrics}");
}

#[test]
fn eight_concurrent_builds_with_max_builds_2_all_succeed_and_at_most_two_run_at_once() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = context(dir.path(), &busybox, DOCKERFILE);
    let root = dir.path().join("server");
    let socket = dir.path().join("imgb.sock");
    let server = TestServer::start(
        &root,
        &[
            "--listen",
            &format!("unix://{}", socket.display()),
            "--max-builds",
            "2",
        ],
    );
    let remote = format!("unix://{}", socket.display());
    let clients: Vec<Child> = (0..8)
        .map(|index| {
            build_command(
                &dir.path().join("client"),
                &[
                    "--remote",
                    &remote,
                    "--progress",
                    "plain",
                    "--build-arg",
                    &format!("NOTE={index}"),
                ],
                &context,
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for client in clients {
        let output = client.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let (status, body) = curl(&[
        "--unix-socket",
        socket.to_str().unwrap(),
        "http://imgb/v1/builds",
    ]);
    assert_eq!(status, 200, "{body}");
    let listing: serde_json::Value = serde_json::from_str(&body).unwrap();
    let builds = listing["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 8);
    // From the server's own start and finish times: never more than two running together.
    let mut changes: Vec<(f64, i32)> = Vec::new();
    for build in builds {
        assert_eq!(build["state"], "succeeded", "{build}");
        changes.push((build["started"].as_f64().unwrap(), 1));
        changes.push((build["finished"].as_f64().unwrap(), -1));
    }
    // A build finishing at the instant another starts freed its slot first.
    changes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut running = 0;
    for (_, change) in changes {
        running += change;
        assert!(running <= 2, "{listing}");
    }
    let (_, metrics) = curl(&[
        "--unix-socket",
        socket.to_str().unwrap(),
        "http://imgb/metrics",
    ]);
    let peak = metrics
        .lines()
        .find_map(|line| line.strip_prefix("imgb_builds_running_peak "))
        .unwrap();
    assert!(peak == "1" || peak == "2", "{metrics}");
    drop(server);
}

#[test]
fn malformed_submissions_get_4xx_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let url = server.url(false);
    let context = dir.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), "FROM scratch\nCOPY a /a\n").unwrap();
    std::fs::write(context.join("a"), "x".repeat(4096)).unwrap();
    let tar = dir.path().join("context.tar");
    support::run(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&context)
            .arg("."),
    );
    let truncated = dir.path().join("truncated.tar");
    let bytes = std::fs::read(&tar).unwrap();
    // Cut inside the 4 KiB file's data (the archive is one 10 KiB tar record).
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let evil = dir.path().join("evil.tar");
    support::run(
        Command::new("tar")
            .arg("-cf")
            .arg(&evil)
            .arg("-C")
            .arg(&context)
            .args(["--transform", "s,^./a$,../escaped,", "-P", "."]),
    );
    let submit = |options: &str, body: &Path| {
        curl(&[
            "-X",
            "POST",
            "-H",
            &format!("X-Imgb-Build-Options: {options}"),
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{url}/v1/builds"),
        ])
    };
    let cases = [
        ("{\"tag\": [", tar.as_path(), 400, "build options"),
        ("{\"squash\": true}", tar.as_path(), 400, "squash"),
        ("{}", truncated.as_path(), 400, "tar"),
        ("{}", evil.as_path(), 400, "../escaped"),
        (
            "{\"cache-to\": [\"type=local,dest=/etc\"]}",
            tar.as_path(),
            400,
            "type=registry",
        ),
    ];
    for (options, body, status, needle) in cases {
        let (got, answer) = submit(options, body);
        assert_eq!(got, status, "{options}: {answer}");
        assert!(answer.contains(needle), "{options}: {answer}");
    }
    let (status, body) = curl(&[&format!("{url}/v1/health")]);
    assert_eq!(status, 200, "{body}");
    let listing = get_json(&url, "/v1/builds", None);
    assert_eq!(listing["builds"].as_array().unwrap().len(), 0, "{listing}");
}

#[test]
fn host_networking_is_refused_unless_the_server_and_the_client_allow_it() {
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nRUN --network=host true\n",
    )
    .unwrap();
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let denied = build(
        &dir.path().join("client"),
        &["--remote", &server.url(false), "--allow", "network.host"],
        &context,
    );
    assert!(!denied.status.success());
    let message = stderr(&denied);
    assert!(message.contains("403"), "{message}");
    assert!(message.contains("--allow network.host"), "{message}");
    assert!(message.contains("Dockerfile:2"), "{message}");
}

#[test]
fn a_cancelled_build_stops_its_steps_and_the_client_fails() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let server = TestServer::start(&dir.path().join("server"), &[]);
    let url = server.url(false);
    let client = start_slow_build(dir.path(), &busybox, &url, 60, &[]);
    let id = wait_for_state(&url, "running");
    // The step is running before it is cancelled.
    wait_for_step(&url, &id, "sleep");
    let (status, body) = curl(&["-X", "DELETE", &format!("{url}/v1/builds/{id}")]);
    assert_eq!(status, 202, "{body}");
    let output = client.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("cancelled"), "{}", stderr(&output));
    let build = get_json(&url, &format!("/v1/builds/{id}"), None);
    assert_eq!(build["state"], "cancelled", "{build}");
    let (_, events) = curl(&[&format!("{url}/v1/builds/{id}/events")]);
    assert!(
        events.trim_end().ends_with("{\"event\":\"cancelled\"}"),
        "{events}"
    );
}

#[test]
fn a_server_killed_mid_build_fails_its_client_and_builds_again_after_a_restart() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("server");
    let server = TestServer::start(&root, &[]);
    let url = server.url(false);
    let client = start_slow_build(dir.path(), &busybox, &url, 61, &[]);
    wait_for_state(&url, "running");
    server.kill();
    let output = client.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("error"), "{}", stderr(&output));

    let server = TestServer::start(&root, &[]);
    let context = context(&dir.path().join("next"), &busybox, DOCKERFILE);
    let next = build(
        &dir.path().join("client"),
        &["--remote", &server.url(false), "--progress", "plain"],
        &context,
    );
    assert!(next.status.success(), "{}", stderr(&next));
    // What the killed build left is an ordinary leftover: prune finds the store consistent.
    let pruned = imgb(&root, &["prune", "--force"]);
    assert!(pruned.status.success(), "{}", stderr(&pruned));
}

#[test]
fn a_remote_build_over_tls_trusts_the_servers_ca_and_nothing_else() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some((server, ca, write_token)) = TestServer::start_tls(dir.path()) else {
        return;
    };
    let context = context(dir.path(), &busybox, DOCKERFILE);
    let client = dir.path().join("client");
    let token = ["--token-file", write_token.to_str().unwrap()];
    let untrusted = build(
        &client,
        &[&["--remote", &server.url(true)][..], &token].concat(),
        &context,
    );
    assert!(!untrusted.status.success());
    assert!(stderr(&untrusted).contains("TLS"), "{}", stderr(&untrusted));
    let metadata = dir.path().join("metadata.json");
    let trusted = build(
        &client,
        &[
            &[
                "--remote",
                &server.url(true),
                "--remote-ca",
                ca.to_str().unwrap(),
                "--metadata-file",
                metadata.to_str().unwrap(),
            ][..],
            &token,
        ]
        .concat(),
        &context,
    );
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    assert!(metadata_digest(&metadata).starts_with("sha256:"));
}

#[test]
fn a_failed_remote_build_names_the_dockerfile_line_and_no_server_directory() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = busybox_context(
        dir.path(),
        &busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n",
    );
    let server_root = dir.path().join("server");
    let server = TestServer::start(&server_root, &[]);
    let failed = build(
        &dir.path().join("client"),
        &["--remote", &server.url(false)],
        &context,
    );
    assert!(!failed.status.success());
    let message = stderr(&failed);
    assert!(message.contains("Dockerfile:3"), "{message}");
    assert!(
        !message.contains(server_root.to_str().unwrap()),
        "the server's directories leak into the client's error: {message}"
    );
}
