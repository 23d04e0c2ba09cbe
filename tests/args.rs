//! ARG end to end: global ARGs before FROM, scoping per stage, `--build-arg` overrides (also
//! from the environment, and a name that is unset there), `${X:-y}` defaults, ENV vs ARG, the
//! predefined platform ARGs, build args reaching RUN but never the image config, and unused build
//! args warned without touching the cache, and the history BuildKit writes for them. The expected values were confirmed by building the
//! same Dockerfile with Docker 20.10's BuildKit (identical output files).

mod support;

use std::fs;
use std::process::Command;
use support::{BASE, TestContext, ran_steps, shared_root, stderr};

/// Every ARG rule at once, each RUN writing what it sees to a file of the final image.
const SCOPES: &str = r#"ARG TAG=1
ARG V=global
ARG FROMENV=default-fromenv
ARG UNSETVAR=default-unset
FROM localhost/imgb-test-base:${TAG} AS first
ARG X=stage-first
RUN echo "[$V][$X][$TARGETPLATFORM]" > /noredecl
ARG V
ARG FROMENV
ARG UNSETVAR
ARG TARGETPLATFORM
ARG BUILDPLATFORM
ARG TARGETOS
ARG TARGETARCH
ARG TARGETVARIANT
RUN echo "[$V][$FROMENV][$UNSETVAR][$TARGETPLATFORM][$BUILDPLATFORM][$TARGETOS][$TARGETARCH][$TARGETVARIANT]" > /redecl
ARG D
ARG E=${D:-fallback}
ARG P=arg
ENV P=env
ENV Q=env
ARG Q=arg
RUN echo "[$E][$P][$Q]" > /precedence
FROM localhost/imgb-test-base:1
COPY --from=first /noredecl /redecl /precedence /
RUN echo "[$X]" > /second
"#;

#[test]
fn args_are_scoped_per_stage_overridable_and_predefined() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(SCOPES, &[]);
    let rootfs = context.dir.path().join("rootfs");
    let output = Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(root)
        .args(["build", "-o"])
        .arg(format!("type=local,dest={}", rootfs.display()))
        .args(["--build-arg", "FROMENV", "--build-arg", "UNSETVAR"])
        .args(["--build-arg", "P=cli", "--build-arg", "Q=cli"])
        .arg(context.path())
        .env("FROMENV", "from-env")
        .env_remove("UNSETVAR")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let read = |name: &str| fs::read_to_string(rootfs.join(name)).unwrap();
    assert_eq!(
        read("noredecl"),
        "[][stage-first][]\n",
        "global ARGs and predefined ones need an ARG inside the stage"
    );
    assert_eq!(
        read("redecl"),
        "[global][from-env][default-unset][linux/amd64][linux/amd64][linux][amd64][]\n",
        "a bare --build-arg takes the environment's value, or keeps the default when unset"
    );
    assert_eq!(
        read("precedence"),
        "[fallback][env][cli]\n",
        "ENV beats an earlier ARG; an ARG after ENV takes the --build-arg value"
    );
    assert_eq!(read("second"), "[]\n", "a stage's ARGs stay in that stage");
}

#[test]
fn build_args_reach_run_but_never_the_image_config() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\nARG TOKEN=default\nRUN test \"$TOKEN\" = given && echo ok > /seen\n"
        ),
        &[],
    );
    context.build_ok(root, &["-t", "args-config:1", "--build-arg", "TOKEN=given"]);
    let inspect = support::imgb_ok(root, &["inspect", "args-config:1"]);
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let env = json["config"]["config"]["Env"].to_string();
    assert!(!env.contains("TOKEN"), "build arg in the config: {env}");
    assert_eq!(
        support::run_in(root, "args-config:1", "cat /seen; echo \"[$TOKEN]\""),
        "ok\n[]\n"
    );
}

#[test]
fn changed_build_arg_reruns_only_the_steps_that_see_it_and_says_why() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\nRUN echo before > /before\nARG GREETING=hello\n\
             RUN echo \"$GREETING\" > /greeting\n"
        ),
        &[],
    );
    context.build_ok(root, &[]);
    let changed = context.build_ok(
        root,
        &["--progress", "rawjson", "--build-arg", "GREETING=hi"],
    );
    let events = stderr(&changed);
    assert_eq!(
        ran_steps(&events),
        ["[stage-0 2/2] RUN echo \"$GREETING\" > /greeting"],
        "only the RUN that sees the arg reruns:\n{events}"
    );
    assert!(
        events.contains("instruction changed"),
        "the miss names its cause:\n{events}"
    );
}

#[test]
fn unused_build_args_are_warned_and_keep_the_cache() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(&format!("FROM {BASE}\nRUN echo built > /built\n"), &[]);
    context.build_ok(root, &[]);
    let again = context.build_ok(
        root,
        &["--progress", "rawjson", "--build-arg", "NOT_DECLARED=1"],
    );
    let text = stderr(&again);
    assert!(
        text.contains("build-args [NOT_DECLARED] were not consumed"),
        "{text}"
    );
    assert_eq!(
        ran_steps(&text),
        Vec::<String>::new(),
        "an unused build arg invalidated a step:\n{text}"
    );
}

/// BuildKit's history names the command a RUN ran and the build args of its stage, with the
/// values it saw (confirmed with Docker 20.10: `RUN |1 TOKEN=given /bin/sh -c ... # buildkit`).
#[test]
fn run_history_names_the_build_args_it_saw_as_buildkit_does() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!("FROM {BASE}\nARG TOKEN=default\nRUN test \"$TOKEN\" = given\n"),
        &[],
    );
    context.build_ok(
        root,
        &["-t", "args-history:1", "--build-arg", "TOKEN=given"],
    );
    let inspect = support::imgb_ok(root, &["inspect", "args-history:1"]);
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let history: Vec<&str> = json["config"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["created_by"].as_str().unwrap())
        .collect();
    assert_eq!(
        history[history.len() - 2..],
        [
            "ARG TOKEN=given",
            "RUN |1 TOKEN=given /bin/sh -c test \"$TOKEN\" = given # buildkit"
        ]
    );
}
