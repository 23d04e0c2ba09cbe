//! `imgb build --remote --ssh` end to end, with a real `ssh-agent` on the client's side: the
//! RUN's `ssh-add -l` on the server lists the client's key through the agent tunnel; plain TCP
//! and undeclared agent ids are refused, TLS with tokens carries them; a client that goes away
//! fails the build, not the server.

mod support;

use std::path::{Path, PathBuf};
use support::serve::{
    TestServer, build, build_command, curl, get_json, unpacked, wait_for_state, wait_for_step,
};
use support::ssh_agent::{Agent, ssh_add_rootfs};
use support::{busybox_context, setup, stderr};

/// A context whose base has busybox installed and the host's `ssh-add`, then `steps`.
fn ssh_context(dir: &Path, busybox: &Path, name: &str, steps: &str) -> PathBuf {
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY rootfs/ /\n{steps}"
    );
    let context = busybox_context(&dir.join(name), busybox, &dockerfile);
    ssh_add_rootfs(&context.join("rootfs")).unwrap();
    context
}

/// The server with a unix socket (where agents may travel) and a loopback TCP listener
/// (where they may not); the unix remote.
fn server(dir: &Path) -> (TestServer, String) {
    let socket = dir.join("imgb.sock");
    let server = TestServer::start(
        &dir.join("server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            &format!("unix://{}", socket.display()),
        ],
    );
    (server, format!("unix://{}", socket.display()))
}

#[test]
fn the_runs_agent_requests_reach_the_clients_agent_and_only_over_safe_transports() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(agent) = Agent::start(dir.path()) else {
        return;
    };
    assert!(
        agent.fingerprint.contains("imgb-test-key"),
        "{}",
        agent.fingerprint
    );
    let context = ssh_context(
        dir.path(),
        &busybox,
        "keys",
        "RUN --mount=type=ssh ssh-add -l > /default-keys\n\
         RUN --mount=type=ssh,id=work,required SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0 \
         ssh-add -l > /work-keys\n",
    );
    let (server, unix) = server(dir.path());
    let tcp = server.url(false);
    let client = dir.path().join("client");
    let work = format!("work={}", agent.socket.display());
    let default = format!("default={}", agent.socket.display());

    // Plain TCP: the client will not relay its agent; forced with --insecure, the server refuses.
    let refused = build(
        &client,
        &["--remote", &tcp, "--ssh", &default, "--ssh", &work],
        &context,
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("over plain TCP"),
        "{}",
        stderr(&refused)
    );
    let forced = build(
        &client,
        &[
            "--remote",
            &tcp,
            "--insecure",
            "--ssh",
            &work,
            "--ssh",
            &default,
        ],
        &context,
    );
    let message = stderr(&forced);
    assert!(
        !forced.status.success() && message.contains("403") && message.contains("SSH agent"),
        "{message}"
    );

    // A step requiring an agent the client did not declare is refused at submission.
    let undeclared = build_command(&client, &["--remote", &unix, "--ssh", "default"], &context)
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .unwrap();
    let message = stderr(&undeclared);
    assert!(
        !undeclared.status.success()
            && message.contains("400")
            && message.contains("Dockerfile:6")
            && message.contains("--ssh work=SOCKET"),
        "{message}"
    );

    let archive = dir.path().join("keys.tar");
    let built = build_command(
        &client,
        &[
            "--remote",
            &unix,
            "--ssh",
            "default",
            "--ssh",
            &work,
            "-o",
            &format!("type=tar,dest={}", archive.display()),
        ],
        &context,
    )
    .env("SSH_AUTH_SOCK", &agent.socket)
    .output()
    .unwrap();
    assert!(built.status.success(), "{}", stderr(&built));
    let unpacked = unpacked(&archive);
    for file in ["default-keys", "work-keys"] {
        let listed = std::fs::read_to_string(unpacked.join(file)).unwrap();
        assert_eq!(listed, agent.fingerprint, "{file}");
    }
    // The server's own environment names no agent, and its sockets went with the build.
    let leftovers: Vec<_> = walk(&dir.path().join("server/tmp"))
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "sock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_client_that_goes_away_fails_the_build_and_the_server_goes_on() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(agent) = Agent::start(dir.path()) else {
        return;
    };
    // The step asks the agent until it stops answering (the client went away), then fails on
    // one more try; an agent that never answered would let it succeed. No timing involved.
    let context = ssh_context(
        dir.path(),
        &busybox,
        "late",
        "RUN --mount=type=ssh ssh-add -l > /dev/null || exit 0; \
         while ssh-add -l > /dev/null; do sleep 0.2; done; ssh-add -l\n",
    );
    let (server, unix) = server(dir.path());
    let tcp = server.url(false);
    let client = dir.path().join("client");
    let ssh = format!("default={}", agent.socket.display());
    let mut doomed = build_command(
        &client,
        &["--remote", &unix, "--ssh", &ssh, "--progress", "plain"],
        &context,
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let id = wait_for_state(&tcp, "running");
    wait_for_step(&tcp, &id, "ssh-add");
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let failed = wait_for_state(&tcp, "failed");
    assert_eq!(failed, id);
    let status = get_json(&tcp, &format!("/v1/builds/{id}"), None);
    assert_eq!(status["state"], "failed", "{status}");
    // It failed in the step, which found its agent gone.
    let (_, events) = curl(&[&format!("{tcp}/v1/builds/{id}/events")]);
    let last = events.lines().last().unwrap_or_default();
    assert!(
        last.contains("\"error\"") && last.contains("ssh-add -l"),
        "{last}"
    );

    // The server goes on: an agent build with the client staying succeeds.
    let context = ssh_context(
        dir.path(),
        &busybox,
        "next",
        "RUN --mount=type=ssh ssh-add -l > /keys\n",
    );
    let built = build(&client, &["--remote", &unix, "--ssh", &ssh], &context);
    assert!(built.status.success(), "{}", stderr(&built));
}

#[test]
fn agents_travel_over_tls_to_a_server_with_tokens() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(agent) = Agent::start(dir.path()) else {
        return;
    };
    let Some((server, ca, write_token)) = TestServer::start_tls(dir.path()) else {
        return;
    };
    let context = ssh_context(
        dir.path(),
        &busybox,
        "tls",
        "RUN --mount=type=ssh ssh-add -l > /keys\n",
    );
    let archive = dir.path().join("tls.tar");
    let built = build(
        &dir.path().join("client"),
        &[
            "--remote",
            &server.url(true),
            "--remote-ca",
            ca.to_str().unwrap(),
            "--token-file",
            write_token.to_str().unwrap(),
            "--ssh",
            &format!("default={}", agent.socket.display()),
            "-o",
            &format!("type=tar,dest={}", archive.display()),
        ],
        &context,
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let listed = std::fs::read_to_string(unpacked(&archive).join("keys")).unwrap();
    assert_eq!(listed, agent.fingerprint);
}

/// Every path under `root`.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}
