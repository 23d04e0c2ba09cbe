//! `RUN --mount` end to end: cache mounts (persistence, ownership, seeding, read-only, ids,
//! sharing across concurrent imgb processes), bind mounts, and SSH agent forwarding with a real
//! `ssh-agent`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::ssh_agent::{Agent, ssh_add_rootfs};
use support::{busybox_context, imgb, run_in, setup, stderr, step_outcome};

/// A busybox base with its applets installed, so RUN lines can use a shell.
const BASE: &str = "FROM scratch AS base\nCOPY busybox /bin/busybox\n\
                    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

fn context(dir: &Path, busybox: &Path, name: &str, steps: &str) -> PathBuf {
    busybox_context(&dir.join(name), busybox, &format!("{BASE}{steps}"))
}

fn build(root: &Path, context: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(context.to_str().unwrap());
    imgb(root, &args)
}

fn build_ok(root: &Path, context: &Path, extra: &[&str]) -> Output {
    let output = build(root, context, extra);
    assert!(output.status.success(), "{}", stderr(&output));
    output
}

#[test]
fn cache_mount_persists_between_builds_but_never_reaches_the_image() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let first = context(
        dir.path(),
        &busybox,
        "first",
        "RUN --mount=type=cache,target=/var/cache/app echo one >> /var/cache/app/log\n",
    );
    build_ok(&root, &first, &["-t", "first:1"]);
    // A different step (so it runs) sees what the first one left in the cache.
    let second = context(
        dir.path(),
        &busybox,
        "second",
        "RUN --mount=type=cache,target=/var/cache/app cp /var/cache/app/log /seen && echo two >> /var/cache/app/log\n",
    );
    build_ok(&root, &second, &["-t", "second:1"]);
    assert_eq!(run_in(&root, "second:1", "cat /seen"), "one\n");
    // The second build changed the cache's contents, which are no part of any key.
    let again = stderr(&build_ok(&root, &first, &[]));
    assert_eq!(
        step_outcome(
            &again,
            "[base 3/3] RUN --mount=type=cache,target=/var/cache/app echo one >> /var/cache/app/log"
        ),
        "CACHED"
    );
    assert_eq!(
        run_in(
            &root,
            "first:1",
            "test ! -e /var/cache/app/log && echo clean"
        ),
        "clean\n",
        "the cache's contents landed in the layer"
    );
}

#[test]
fn cache_mount_owner_and_mode_apply_when_created_and_ids_never_share() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = context(
        dir.path(),
        &busybox,
        "context",
        "RUN --mount=type=cache,target=/c,uid=1000,gid=2000,mode=0750 stat -c '%u:%g %a' /c > /owner\n\
         RUN --mount=type=cache,target=/d stat -c '%u:%g %a' /d > /default-owner\n\
         RUN --mount=type=cache,id=a,target=/a echo from-a > /a/file\n\
         RUN --mount=type=cache,id=b,target=/b ls -A /b > /b-contents\n\
         RUN --mount=type=cache,id=a,target=/again,ro cat /again/file > /a-again\n",
    );
    build_ok(&root, &context, &["-t", "owners:1"]);
    assert_eq!(run_in(&root, "owners:1", "cat /owner"), "1000:2000 750\n");
    assert_eq!(run_in(&root, "owners:1", "cat /default-owner"), "0:0 755\n");
    assert_eq!(run_in(&root, "owners:1", "cat /b-contents"), "");
    assert_eq!(run_in(&root, "owners:1", "cat /a-again"), "from-a\n");
}

#[test]
fn cache_mount_from_a_stage_is_seeded_with_its_source_and_read_only_refuses_writes() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = context(
        dir.path(),
        &busybox,
        "context",
        "FROM base AS seed\nRUN mkdir -p /data && echo seeded > /data/greeting\n\
         FROM base\n\
         RUN --mount=type=cache,target=/c,from=seed,source=/data cat /c/greeting > /got\n\
         RUN --mount=type=cache,target=/ro,ro sh -c 'if touch /ro/x; then exit 1; fi'\n",
    );
    build_ok(&root, &context, &["-t", "seeded:1"]);
    assert_eq!(run_in(&root, "seeded:1", "cat /got"), "seeded\n");
}

#[test]
fn one_step_mounting_a_locked_cache_twice_gets_one_directory_without_waiting_for_itself() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = context(
        dir.path(),
        &busybox,
        "context",
        "RUN --mount=type=cache,id=twice,target=/a,sharing=locked \
             --mount=type=cache,id=twice,target=/b,sharing=locked \
             sh -c 'echo same > /a/file && cat /b/file > /seen'\n",
    );
    build_ok(&root, &context, &["-t", "twice:1"]);
    assert_eq!(run_in(&root, "twice:1", "cat /seen"), "same\n");
}

/// Two imgb processes run a step on the same cache at once; the step fails if it finds the
/// other one inside. `locked` serializes them; `private` hands the second a fresh instance.
fn concurrent_users_never_meet(sharing: &str) {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let step = |name: &str| {
        format!(
            "RUN --mount=type=cache,id=shared-work,target=/c,sharing={sharing} \
             test ! -e /c/busy && touch /c/busy && sleep 1 && rm /c/busy && echo {name}\n"
        )
    };
    let contexts: Vec<PathBuf> = ["one", "two"]
        .iter()
        .map(|name| context(dir.path(), &busybox, name, &step(name)))
        .collect();
    // Both share the base's steps: build them first so the two start the cache step together.
    build_ok(&root, &context(dir.path(), &busybox, "warm", ""), &[]);
    let children: Vec<_> = contexts
        .iter()
        .map(|context| {
            Command::new(env!("CARGO_BIN_EXE_imgb"))
                .arg("--root")
                .arg(&root)
                .args(["build", "--progress", "plain"])
                .arg(context)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
}

#[test]
fn locked_cache_is_exclusive_across_imgb_processes() {
    concurrent_users_never_meet("locked");
}

#[test]
fn private_cache_gives_a_concurrent_user_a_fresh_instance() {
    concurrent_users_never_meet("private");
}

#[test]
fn no_cache_filter_reruns_only_the_named_stage_and_says_why() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = context(
        dir.path(),
        &busybox,
        "context",
        "FROM base AS tools\nRUN echo tools > /tools\n\
         FROM base AS app\nRUN echo app > /app\nCOPY --from=tools /tools /tools\n",
    );
    build_ok(&root, &context, &[]);
    let again = stderr(&build_ok(&root, &context, &["--no-cache-filter", "TOOLS"]));
    assert_eq!(
        step_outcome(&again, "[tools 1/1] RUN echo tools > /tools"),
        "cache miss: cache disabled for this step (--no-cache or --no-cache-filter)"
    );
    assert_eq!(
        step_outcome(
            &again,
            "[base 2/2] RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]"
        ),
        "CACHED"
    );
    assert_eq!(
        step_outcome(&again, "[app 1/2] RUN echo app > /app"),
        "CACHED"
    );
}

#[test]
fn ssh_mount_forwards_the_agent_with_the_socket_owner_and_mode_asked_for() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(agent) = Agent::start(dir.path()) else {
        return;
    };
    let context = context(
        dir.path(),
        &busybox,
        "context",
        "COPY rootfs/ /\n\
         RUN --mount=type=ssh ssh-add -l > /default-keys && echo \"$SSH_AUTH_SOCK\" > /sock\n\
         RUN --mount=type=ssh,id=work,target=/agent,uid=1000,mode=0660,required \
         stat -c '%u:%g %a %F' /agent > /agent-stat && SSH_AUTH_SOCK=/agent ssh-add -l > /work-keys\n",
    );
    ssh_add_rootfs(&context.join("rootfs")).unwrap();
    let root = dir.path().join("root");
    let socket = agent.socket.to_str().unwrap();
    // `--ssh default` forwards the agent named by the environment, as buildx does.
    let output = Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(&root)
        .args(["build", "--ssh", "default", "--ssh"])
        .arg(format!("work={socket}"))
        .args(["-t", "ssh:1"])
        .arg(&context)
        .env("SSH_AUTH_SOCK", socket)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        run_in(&root, "ssh:1", "cat /default-keys"),
        agent.fingerprint
    );
    assert_eq!(run_in(&root, "ssh:1", "cat /work-keys"), agent.fingerprint);
    assert_eq!(
        run_in(&root, "ssh:1", "cat /sock"),
        "/run/buildkit/ssh_agent.0\n"
    );
    assert_eq!(
        run_in(&root, "ssh:1", "cat /agent-stat"),
        "1000:0 660 socket\n"
    );
}

#[test]
fn required_ssh_agent_that_was_not_given_is_an_error_naming_the_line() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let required = context(
        dir.path(),
        &busybox,
        "context",
        "RUN --mount=type=ssh,id=deploy,required true\n",
    );
    let output = build(&dir.path().join("root"), &required, &[]);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("ssh agent deploy is required") && text.contains("--ssh deploy="),
        "{text}"
    );
    assert!(
        text.contains("Dockerfile:4")
            && text.contains("4 | RUN --mount=type=ssh,id=deploy,required"),
        "the Dockerfile line is named:\n{text}"
    );
    // An optional agent that was not given is simply absent.
    let optional = context(
        dir.path(),
        &busybox,
        "optional",
        "RUN --mount=type=ssh test ! -e /run/buildkit/ssh_agent.0\n",
    );
    build_ok(&dir.path().join("root"), &optional, &[]);
}
