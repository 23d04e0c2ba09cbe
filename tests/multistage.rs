//! Multi-stage builds end to end: `--target`, stages the target does not need never running,
//! COPY --from by name and index, FROM an earlier stage, independent stages running at the same
//! time, and identical steps in two stages solved once.

mod support;

use std::fs;
use support::{BASE, TestContext, ran_steps, shared_root, stderr};

fn stages() -> String {
    format!(
        "FROM {BASE} AS first\n\
         RUN echo first > /first\n\
         FROM {BASE} AS broken\n\
         RUN echo this stage must never run; exit 1\n\
         FROM first AS second\n\
         RUN echo second > /second\n\
         FROM {BASE}\n\
         COPY --from=second /first /second /copied/\n\
         COPY --from=0 /first /by-index\n"
    )
}

#[test]
fn final_stage_copies_by_name_and_index_and_unused_stages_never_run() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(&stages(), &[]);
    let rootfs = context.rootfs(root, &[]);
    assert_eq!(
        fs::read_to_string(rootfs.join("copied/first")).unwrap(),
        "first\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("copied/second")).unwrap(),
        "second\n",
        "FROM an earlier stage starts from its filesystem"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("by-index")).unwrap(),
        "first\n"
    );
    assert!(!rootfs.join("second").exists(), "only the copied files");
}

#[test]
fn target_builds_only_the_stages_it_needs() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(&stages(), &[]);
    let rootfs = context.rootfs(root, &["--target", "second"]);
    assert!(rootfs.join("first").is_file());
    assert!(rootfs.join("second").is_file());
    assert!(!rootfs.join("copied").exists());

    let output = context.build(root, &["--target", "broken"]);
    assert!(
        !output.status.success(),
        "the broken stage builds when targeted"
    );
    assert!(
        stderr(&output).contains("exit code: 1"),
        "{}",
        stderr(&output)
    );

    let output = context.build(root, &["--target", "nosuchstage"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("nosuchstage"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn independent_stages_run_at_the_same_time() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE} AS left\nRUN sleep 1 && echo left > /left\n\
             FROM {BASE} AS right\nRUN sleep 1 && echo right > /right\n\
             FROM {BASE}\nCOPY --from=left /left /\nCOPY --from=right /right /\n"
        ),
        &[],
    );
    let output = context.build_ok(root, &["--progress", "rawjson", "--jobs", "2"]);
    let events: Vec<serde_json::Value> = stderr(&output)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let span = |needle: &str| {
        let started = events
            .iter()
            .find(|e| e["event"] == "started" && e["name"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no start for {needle}: {events:?}"));
        let vertex = &started["vertex"];
        let completed = events
            .iter()
            .find(|e| e["event"] == "completed" && &e["vertex"] == vertex)
            .unwrap();
        let start = started["time"].as_f64().unwrap();
        (start, start + completed["duration"].as_f64().unwrap())
    };
    let (left_start, left_end) = span("echo left");
    let (right_start, right_end) = span("echo right");
    assert!(
        left_start < right_end && right_start < left_end,
        "the stages ran one after the other: left {left_start}..{left_end}, \
         right {right_start}..{right_end}"
    );
}

#[test]
fn identical_steps_in_two_stages_run_once() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE} AS one\nRUN echo shared-step-5b1e > /same\n\
             FROM {BASE} AS two\nRUN echo shared-step-5b1e > /same\n\
             FROM {BASE}\nCOPY --from=one /same /one\nCOPY --from=two /same /two\n"
        ),
        &[],
    );
    let output = context.build_ok(root, &["--progress", "rawjson"]);
    let ran = ran_steps(&stderr(&output));
    assert_eq!(
        ran.iter()
            .filter(|name| name.contains("shared-step-5b1e"))
            .count(),
        1,
        "{ran:?}"
    );
}

#[test]
fn an_image_built_from_a_stage_keeps_that_stages_history() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(&stages(), &[]);
    context.build_ok(root, &["--target", "second", "-t", "multistage-history:1"]);
    let inspect = support::imgb_ok(root, &["inspect", "multistage-history:1"]);
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let config = &json["config"];
    let history: Vec<&str> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["empty_layer"] != true)
        .map(|entry| entry["created_by"].as_str().unwrap())
        .collect();
    assert_eq!(
        history.len(),
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        "one history entry per layer: {history:?}"
    );
    assert!(
        history.iter().any(|entry| entry.contains("echo first")),
        "{history:?}"
    );
}
