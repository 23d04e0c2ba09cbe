//! ONBUILD end to end: triggers recorded in an image run at the start of a stage built on it
//! (a stored image or an earlier stage), with the child's escape character, and are cleared
//! from the child's config; forbidden triggers are refused.

mod support;

use std::path::Path;
use std::process::Command;
use support::{busybox_context, imgb, run, run_in, setup, stderr};

const BASE: &str = "FROM scratch AS base\nCOPY busybox /bin/busybox\n\
                    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

fn build(root: &Path, context: &Path, tag: &str) -> std::process::Output {
    imgb(
        root,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            tag,
            context.to_str().unwrap(),
        ],
    )
}

/// The `OnBuild` list of an image's config, as `imgb inspect` shows it.
fn on_build(root: &Path, image: &str) -> serde_json::Value {
    let inspect = run(Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(root)
        .args(["inspect", image]));
    let document: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    document["config"]["config"]["OnBuild"].clone()
}

#[test]
fn triggers_of_a_stored_image_run_in_the_child_and_are_cleared() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let parent = busybox_context(
        &dir.path().join("parent"),
        &busybox,
        &format!(
            "{BASE}FROM base\nENV WHO=parent\n\
             ONBUILD COPY marker.txt /from-child-context.txt\n\
             ONBUILD RUN echo \"triggered for $WHO\" > /triggered\n"
        ),
    );
    let output = build(&root, &parent, "localhost/parent:1");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        on_build(&root, "localhost/parent:1"),
        serde_json::json!([
            "COPY marker.txt /from-child-context.txt",
            "RUN echo \"triggered for $WHO\" > /triggered"
        ])
    );
    // The triggers did not run in the parent itself.
    assert_eq!(
        run_in(&root, "localhost/parent:1", "ls /triggered 2>&1 || true"),
        "ls: /triggered: No such file or directory\n"
    );

    let child = busybox_context(
        &dir.path().join("child"),
        &busybox,
        "FROM localhost/parent:1\nENV WHO=child\nRUN cat /triggered > /seen-by-child\n",
    );
    std::fs::write(child.join("marker.txt"), "child context\n").unwrap();
    let output = build(&root, &child, "localhost/child:1");
    assert!(output.status.success(), "{}", stderr(&output));
    // The triggers ran first, with the child's context, before the child's ENV.
    assert_eq!(
        run_in(
            &root,
            "localhost/child:1",
            "cat /from-child-context.txt /seen-by-child"
        ),
        "child context\ntriggered for parent\n"
    );
    assert_eq!(
        on_build(&root, "localhost/child:1"),
        serde_json::Value::Null
    );
}

#[test]
fn triggers_of_an_earlier_stage_run_in_the_stage_built_on_it() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = busybox_context(
        dir.path(),
        &busybox,
        &format!(
            "# escape=`\n{BASE}FROM base AS template\n\
             ONBUILD RUN echo one `\n    two > /joined\n\
             FROM template\nRUN cat /joined > /seen\n"
        ),
    );
    let output = build(&root, &context, "staged:1");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(run_in(&root, "staged:1", "cat /seen"), "one two\n");
    assert_eq!(on_build(&root, "staged:1"), serde_json::Value::Null);
}

#[test]
fn onbuild_onbuild_from_and_maintainer_are_refused() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    for (trigger, message) in [
        (
            "ONBUILD RUN true",
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        ("FROM scratch", "FROM isn't allowed as an ONBUILD trigger"),
        (
            "MAINTAINER me",
            "MAINTAINER isn't allowed as an ONBUILD trigger",
        ),
    ] {
        let context = busybox_context(
            &dir.path().join(trigger.replace(' ', "-")),
            &busybox,
            &format!("FROM scratch\nONBUILD {trigger}\n"),
        );
        let output = build(&dir.path().join("root"), &context, "refused:1");
        assert!(!output.status.success());
        assert!(stderr(&output).contains(message), "{}", stderr(&output));
    }
}
