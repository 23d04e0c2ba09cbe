//! The build cache end to end: hits, misses, invalidation of exactly the dependent steps (an
//! unrelated branch after a miss still hits), `--no-cache`, metadata-only changes that rerun
//! nothing, and concurrent `imgb build` processes sharing one state root.

mod support;

use std::process::Command;
use support::{BASE, TestContext, busybox_context, imgb_ok, ran_steps, setup, shared_root, stderr};

const BRANCHES: &str = "FROM localhost/imgb-test-base:1 AS left
COPY left.txt /left.txt
RUN cat /left.txt > /left-seen
FROM localhost/imgb-test-base:1 AS right
COPY right.txt /right.txt
RUN cat /right.txt > /right-seen
FROM localhost/imgb-test-base:1
COPY --from=right /right-seen /
COPY --from=left /left-seen /
RUN cat /left-seen /right-seen > /both
";

/// The [`BRANCHES`] build; `test` goes into the inputs, so tests sharing the root do not share
/// cache records.
fn branches(test: &str) -> TestContext {
    assert!(BRANCHES.starts_with(&format!("FROM {BASE}")));
    TestContext::new(
        BRANCHES,
        &[
            ("left.txt", &format!("left {test}\n")),
            ("right.txt", &format!("right {test}\n")),
        ],
    )
}

fn rebuild(context: &TestContext, root: &std::path::Path, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--progress", "rawjson"];
    all.extend_from_slice(args);
    ran_steps(&stderr(&context.build_ok(root, &all)))
}

#[test]
fn unchanged_rebuild_hits_and_no_cache_reruns_everything() {
    let Some(root) = shared_root() else { return };
    let context = branches("hits");
    assert_eq!(
        rebuild(&context, root, &[]).len(),
        7,
        "a cold build runs every step"
    );
    assert_eq!(rebuild(&context, root, &[]), Vec::<String>::new());
    assert_eq!(rebuild(&context, root, &["--no-cache"]).len(), 7);
}

#[test]
fn a_change_reruns_exactly_its_dependents_and_other_branches_still_hit() {
    let Some(root) = shared_root() else { return };
    let context = branches("dependents");
    context.build_ok(root, &[]);
    context.write("left.txt", "changed\n");
    assert_eq!(
        rebuild(&context, root, &[]),
        [
            "[left 1/2] COPY left.txt /left.txt",
            "[left 2/2] RUN cat /left.txt > /left-seen",
            "[stage-2 2/3] COPY --from=left /left-seen /",
            "[stage-2 3/3] RUN cat /left-seen /right-seen > /both",
        ],
        "the right branch and the COPY before the change stay cached"
    );
}

/// BuildKit keys a COPY --from by the content of the paths it copies, so a source stage that
/// reran and wrote the same bytes leaves the COPY itself cached. imgb keys it by the source
/// stage's diffID chain, which needs no walk of the source's files on every build, so the COPY
/// reruns; when it makes the same layer, keys hold their inputs' content (diffIDs), not their
/// keys, so every step after it stays cached. The rerun RUN gives `/size` a new mtime, so the
/// layer is the same only with `SOURCE_DATE_EPOCH` clamping mtimes (without it, whether both
/// builds fall in the same second decides; BuildKit keeps the first build's file there).
#[test]
fn copying_an_unchanged_file_from_a_rerun_stage_reruns_only_the_copy() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE} AS measure\nCOPY input.txt /input.txt\nRUN wc -c < /input.txt > /size\n\
             FROM {BASE}\nCOPY --from=measure /size /size\nRUN cat /size > /size-copy\n"
        ),
        &[("input.txt", "abc\n")],
    );
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    context.build_ok(root, &epoch);
    context.write("input.txt", "xyz\n");
    assert_eq!(
        rebuild(&context, root, &epoch),
        [
            "[measure 1/2] COPY input.txt /input.txt",
            "[measure 2/2] RUN wc -c < /input.txt > /size",
            "[stage-1 1/2] COPY --from=measure /size /size",
        ]
    );
}

#[test]
fn metadata_after_the_last_run_changes_the_config_without_rerunning() {
    let Some(root) = shared_root() else { return };
    let dockerfile = |version: &str| {
        format!(
            "FROM {BASE}\nRUN echo built > /built\nLABEL version={version}\n\
             ENV VERSION={version}\nCMD [\"cat\", \"/built\"]\n"
        )
    };
    let context = TestContext::new(&dockerfile("1"), &[]);
    context.build_ok(root, &["-t", "cache-meta:1"]);
    context.write("Dockerfile", &dockerfile("2"));
    assert_eq!(
        rebuild(&context, root, &["-t", "cache-meta:2"]),
        Vec::<String>::new()
    );
    let inspect = imgb_ok(root, &["inspect", "cache-meta:2"]);
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let config = &json["config"]["config"];
    assert_eq!(config["Labels"]["version"], "2", "{config}");
    assert!(config["Env"].to_string().contains("VERSION=2"), "{config}");
}

#[test]
fn concurrent_builds_on_one_root_all_succeed_with_identical_digests() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\n\
                      RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
                      RUN [\"/bin/sh\", \"-c\", \"echo one > /one\"]\n\
                      RUN [\"/bin/sh\", \"-c\", \"cat /one /one > /two\"]\n";
    // The same steps; a comment does not change any step.
    let contexts = [
        busybox_context(&dir.path().join("a"), &busybox, dockerfile),
        busybox_context(
            &dir.path().join("b"),
            &busybox,
            &format!("# the same build, written differently\n{dockerfile}"),
        ),
    ];
    let builds: Vec<_> = (0..4)
        .map(|index| {
            let metadata = dir.path().join(format!("metadata-{index}.json"));
            let child = Command::new(env!("CARGO_BIN_EXE_imgb"))
                .arg("--root")
                .arg(&root)
                .args(["build", "--progress", "plain", "--metadata-file"])
                .arg(&metadata)
                .args(["--build-arg", "SOURCE_DATE_EPOCH=1700000000"])
                .arg(&contexts[index % 2])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (child, metadata)
        })
        .collect();
    let digests: Vec<String> = builds
        .into_iter()
        .map(|(child, metadata)| {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", stderr(&output));
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
            json["containerimage.digest"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        digests.iter().all(|digest| digest == &digests[0]),
        "{digests:?}"
    );
}
