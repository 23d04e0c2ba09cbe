//! `imgb build` end to end: real RUN steps on a busybox base made from Debian's busybox-static,
//! the general flow: the bundled example built, run and rebuilt from cache, reproducible digests,
//! secrets, a loaded image as a base. Feature files (copy, args, cache, errors, outputs, ...)
//! hold the rest.

mod support;

use std::path::{Path, PathBuf};
use support::{busybox, busybox_context, imgb, is_root, setup, stderr};

/// A context holding the bundled example and the busybox binary.
fn hello_context(dir: &Path, busybox: &Path) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/Dockerfile");
    busybox_context(dir, busybox, &std::fs::read_to_string(example).unwrap())
}

#[test]
fn bundled_example_builds_runs_and_rebuilds_from_cache() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = hello_context(dir.path(), &busybox);
    let context = context.to_str().unwrap();

    let first = imgb(
        &root,
        &["build", "--progress", "plain", "-t", "hello:test", context],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let run = imgb(&root, &["run", "hello:test"]);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "hello from imgb\n",
        "{}",
        stderr(&run)
    );

    let again = imgb(
        &root,
        &[
            "build",
            "--progress",
            "rawjson",
            "-t",
            "hello:test",
            context,
        ],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    let events = stderr(&again);
    assert!(
        !events.contains("\"event\":\"started\""),
        "a step ran on a no-change rebuild:\n{events}"
    );
    assert_eq!(
        events.matches("\"event\":\"cached\"").count(),
        3,
        "{events}"
    );

    let du = imgb(&root, &["du", "--format", "json"]);
    let usage: serde_json::Value = serde_json::from_slice(&du.stdout).expect("du prints JSON");
    let items = |kind: &str| {
        let kinds = usage["kinds"].as_array().unwrap();
        kinds.iter().find(|k| k["kind"] == kind).unwrap()["items"]
            .as_u64()
            .unwrap()
    };
    // The steps' layers are kept only as snapshots; blobs are the config and the manifest.
    assert!(
        items("blobs") >= 2 && items("cache records") >= 3 && items("snapshots") >= 3,
        "{usage}"
    );
    assert!(
        usage["total_bytes"].as_u64().unwrap() > 1_000_000,
        "the busybox layer alone is ~1 MB: {usage}"
    );
}

#[test]
fn source_date_epoch_gives_identical_images_from_separate_roots_and_contexts() {
    let Some(busybox) = busybox() else { return };
    if !is_root() {
        return;
    }
    let digests: Vec<String> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let context = hello_context(dir.path(), &busybox);
            let metadata = dir.path().join("metadata.json");
            let output = imgb(
                &dir.path().join("root"),
                &[
                    "build",
                    "--build-arg",
                    "SOURCE_DATE_EPOCH=1700000000",
                    "--metadata-file",
                    metadata.to_str().unwrap(),
                    context.to_str().unwrap(),
                ],
            );
            assert!(output.status.success(), "{}", stderr(&output));
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
            json["containerimage.digest"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn a_loaded_image_is_a_base_whose_env_and_history_carry_over() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let base_root = dir.path().join("base-root");
    let archive = dir.path().join("base.tar");
    let base = busybox_context(
        &dir.path().join("base"),
        &busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\nENV FROM_BASE=yes\n",
    );
    let output = imgb(
        &base_root,
        &[
            "build",
            "-t",
            "localhost/base:1",
            "-o",
            &format!("type=docker,dest={}", archive.display()),
            base.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));

    let root = dir.path().join("root");
    assert!(
        imgb(&root, &["load", "-i", archive.to_str().unwrap()])
            .status
            .success()
    );
    let child = busybox_context(
        &dir.path().join("child"),
        &busybox,
        "FROM localhost/base:1\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"test \\\"$FROM_BASE\\\" = yes\"]\n",
    );
    let output = imgb(&root, &["build", "-t", "child:1", child.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let inspect = imgb(&root, &["inspect", "child:1"]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("COPY busybox /bin/busybox"),
        "base history kept:\n{text}"
    );
    assert!(text.contains("FROM_BASE=yes"), "base env kept:\n{text}");
}
