//! `imgb serve`'s guard rails end to end: build secrets (carried only on safe transports, kept
//! nowhere), entitlements checked on the lowered graph (ONBUILD triggers included), the build
//! timeout and the free-space watermark's cache collection.

mod support;

use std::path::Path;
use std::process::Command;
use support::canary::{canary, scan, scan_tree};
use support::serve::{
    TestServer, build, curl, get_json, start_slow_build, unpacked, wait_for_state, wait_for_step,
};
use support::{busybox_context, ran_steps, setup, stderr};

/// The lines of `output`'s stderr are rawjson events; the names of the steps that ran.
fn steps_run(output: &std::process::Output) -> Vec<String> {
    ran_steps(&stderr(output))
}

#[test]
fn a_secret_reaches_the_run_over_a_unix_socket_and_nothing_the_server_keeps() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    // The RUN proves it read the secret by its digest; the value itself is never printed.
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\n\
        RUN --mount=type=secret,id=tok [\"/bin/busybox\", \"sh\", \"-c\", \
        \"/bin/busybox sha256sum /run/secrets/tok > /tok.sha256\"]\n";
    let context = busybox_context(dir.path(), &busybox, dockerfile);
    let value = canary("serve-secret");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, &value).unwrap();
    let secret = format!("id=tok,src={}", secret_file.display());
    let root = dir.path().join("server");
    let socket = dir.path().join("imgb.sock");
    let server = TestServer::start(
        &root,
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            &format!("unix://{}", socket.display()),
        ],
    );
    let tcp = server.url(false);
    let client = dir.path().join("client");

    // Plain TCP: the client will not send it; forced with --insecure, the server refuses it.
    let refused = build(&client, &["--remote", &tcp, "--secret", &secret], &context);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("over plain TCP"),
        "{}",
        stderr(&refused)
    );
    let forced = build(
        &client,
        &["--remote", &tcp, "--insecure", "--secret", &secret],
        &context,
    );
    assert!(!forced.status.success());
    let message = stderr(&forced);
    assert!(
        message.contains("403") && message.contains("TLS or a unix socket"),
        "{message}"
    );

    let archive = dir.path().join("image.tar");
    let remote = format!("unix://{}", socket.display());
    let built = build(
        &client,
        &[
            "--remote",
            &remote,
            "--secret",
            &secret,
            "--progress",
            "rawjson",
            "-t",
            "localhost/secret-user:1",
            "-o",
            &format!("type=tar,dest={}", archive.display()),
        ],
        &context,
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let expected = Command::new("sha256sum")
        .arg(&secret_file)
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout);
    let digest = expected.split_whitespace().next().unwrap();
    let read = std::fs::read_to_string(unpacked(&archive).join("tok.sha256")).unwrap();
    assert!(
        read.starts_with(digest),
        "the RUN read the secret sent: {read}"
    );

    let mut hits = Vec::new();
    scan(
        "result",
        &std::fs::read(&archive).unwrap(),
        value.as_bytes(),
        &mut hits,
    );
    scan("client events", &built.stderr, value.as_bytes(), &mut hits);
    let (_, listing) = curl(&[
        "--unix-socket",
        socket.to_str().unwrap(),
        "http://imgb/v1/builds",
    ]);
    let id = serde_json::from_str::<serde_json::Value>(&listing).unwrap()["builds"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, events) = curl(&[
        "--unix-socket",
        socket.to_str().unwrap(),
        &format!("http://imgb/v1/builds/{id}/events"),
    ]);
    for (label, text) in [("listing", &listing), ("events", &events)] {
        scan(label, text.as_bytes(), value.as_bytes(), &mut hits);
    }
    let startup = server.startup.clone();
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    scan(
        "server log",
        format!("{startup}{log}").as_bytes(),
        value.as_bytes(),
        &mut hits,
    );
    scan_tree(&root, &value, &mut hits);
    assert!(hits.is_empty(), "the secret leaked into {hits:?}");
}

#[test]
fn an_onbuild_trigger_needing_host_networking_is_refused_naming_the_step() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let server = TestServer::start(&dir.path().join("server"), &["--allow", "network.host"]);
    let url = server.url(false);
    let client = dir.path().join("client");
    let base = busybox_context(
        &dir.path().join("base"),
        &busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         ONBUILD RUN --network=host [\"/bin/busybox\", \"touch\", \"/triggered\"]\n",
    );
    let stored = build(
        &client,
        &["--remote", &url, "-t", "localhost/onbuild-base:1"],
        &base,
    );
    assert!(stored.status.success(), "{}", stderr(&stored));

    // Nothing in this Dockerfile asks for the host's network: its base's trigger does.
    let child = dir.path().join("child");
    std::fs::create_dir_all(&child).unwrap();
    std::fs::write(
        child.join("Dockerfile"),
        "FROM localhost/onbuild-base:1\nRUN [\"/bin/busybox\", \"true\"]\n",
    )
    .unwrap();
    let denied = build(&client, &["--remote", &url], &child);
    assert!(!denied.status.success());
    let message = stderr(&denied);
    assert!(!message.contains("sending the build context"), "{message}");
    for needle in [
        "403",
        "Dockerfile:1",
        "RUN --network=host",
        "ONBUILD trigger",
        "the client must pass --allow network.host",
    ] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert!(
        get_json(&url, "/v1/builds", None)["builds"]
            .as_array()
            .unwrap()
            .len()
            == 1,
        "the refused build was never queued"
    );

    let archive = dir.path().join("child.tar");
    let granted = build(
        &client,
        &[
            "--remote",
            &url,
            "--allow",
            "network.host",
            "-o",
            &format!("type=tar,dest={}", archive.display()),
        ],
        &child,
    );
    assert!(granted.status.success(), "{}", stderr(&granted));
    assert!(unpacked(&archive).join("triggered").exists());
}

/// The processes whose command line is `busybox sleep SECONDS`.
fn sleepers(seconds: u32) -> Vec<String> {
    let wanted = format!("/bin/busybox\0sleep\0{seconds}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let cmdline = std::fs::read(path.join("cmdline")).ok()?;
            (cmdline == wanted.as_bytes()).then(|| path.display().to_string())
        })
        .collect()
}

#[test]
fn a_build_over_the_timeout_is_cancelled_with_its_containers_and_the_next_build_runs() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("server");
    let server = TestServer::start(&root, &["--build-timeout", "3s"]);
    let url = server.url(false);
    let client = start_slow_build(
        dir.path(),
        &busybox,
        &url,
        4871,
        &["-o", "type=tar,dest=/dev/null"],
    );
    let id = wait_for_state(&url, "running");
    wait_for_step(&url, &id, "sleep");
    let output = client.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--build-timeout (3s) and was cancelled"),
        "{}",
        stderr(&output)
    );
    let status = get_json(&url, &format!("/v1/builds/{id}"), None);
    assert_eq!(status["state"], "failed", "{status}");
    let (_, events) = curl(&[&format!("{url}/v1/builds/{id}/events")]);
    let last: serde_json::Value =
        serde_json::from_str(events.trim_end().lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "error", "{events}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("--build-timeout"),
        "{events}"
    );
    let (code, answer) = curl(&[&format!("{url}/v1/builds/{id}/result")]);
    assert_eq!(code, 409, "{answer}");
    assert!(answer.contains("is failed"), "{answer}");
    // The step's container is gone: no process, no mount left under the server's root.
    assert!(sleepers(4871).is_empty(), "{:?}", sleepers(4871));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_text = root.display().to_string();
    assert!(
        !mounts.lines().any(|line| line.contains(&root_text)),
        "{mounts}"
    );

    let context = busybox_context(
        &dir.path().join("next"),
        &busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"true\"]\n",
    );
    let next = build(&dir.path().join("client"), &["--remote", &url], &context);
    assert!(next.status.success(), "{}", stderr(&next));
}

#[test]
fn the_free_space_watermark_collects_finished_builds_cache_never_a_running_builds() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    // Free space is always under 100% of the filesystem: every build start and end collects.
    let server = TestServer::start(
        &dir.path().join("server"),
        &["--gc-free-below", "100%", "--max-builds", "2"],
    );
    let url = server.url(false);
    let client = dir.path().join("client");
    let remote = |args: &[&str], context: &Path| {
        build(
            &client,
            &[&["--remote", &url, "--progress", "rawjson"][..], args].concat(),
            context,
        )
    };
    let run = |script: &str| format!("RUN [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]\n");
    let long = busybox_context(
        &dir.path().join("long"),
        &busybox,
        &format!(
            "FROM scratch\nCOPY busybox /bin/busybox\n{}{}{}",
            run("echo b > /b"),
            run("/bin/busybox sleep 3 && echo s > /s"),
            run("/bin/busybox cp /b /c")
        ),
    );
    let quick = busybox_context(
        &dir.path().join("quick"),
        &busybox,
        &format!(
            "FROM scratch\nCOPY busybox /bin/busybox\n{}",
            run("echo a > /a")
        ),
    );
    let long_client = support::serve::build_command(
        &client,
        &[
            "--remote",
            &url,
            "--progress",
            "rawjson",
            "-t",
            "localhost/gc-long:1",
        ],
        &long,
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let long_id = wait_for_state(&url, "running");
    wait_for_step(&url, &long_id, "sleep 3");
    // Collections before and after this build run while the long one holds its first layers.
    let first = remote(&[], &quick);
    assert!(first.status.success(), "{}", stderr(&first));
    let long_output = long_client.wait_with_output().unwrap();
    assert!(long_output.status.success(), "{}", stderr(&long_output));

    let metrics = curl(&[&format!("{url}/metrics")]).1;
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(counter("imgb_gc_runs_total") >= 4.0, "{metrics}");
    assert!(counter("imgb_gc_freed_bytes_total") > 0.0, "{metrics}");
    // The untagged build's cache was collected: its step runs again.
    let again = remote(&[], &quick);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        steps_run(&again).iter().any(|step| step.contains("echo a")),
        "{}",
        stderr(&again)
    );
    // The long build's layers survived, and as a named image's they stay cached.
    let long_again = remote(&["-t", "localhost/gc-long:1"], &long);
    assert!(long_again.status.success(), "{}", stderr(&long_again));
    assert_eq!(
        steps_run(&long_again),
        Vec::<String>::new(),
        "{}",
        stderr(&long_again)
    );
}
