//! `imgb prune` end to end: what it removes and keeps, that `imgb du` predicts it, that
//! interrupted builds' leftovers go, and that pruning in a loop during builds never removes
//! what they use (issue 8's concurrency guarantee).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::http::HttpServer;
use support::{busybox_context, imgb, imgb_ok, setup, stderr, stdout};

const BASE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// Builds `dockerfile` (on the busybox base made by `BASE`) in `dir/<name>` as `name`.
fn build(root: &Path, dir: &Path, busybox: &Path, name: &str, dockerfile: &str) -> PathBuf {
    let context = busybox_context(&dir.join(name), busybox, &format!("{BASE}{dockerfile}"));
    let output = imgb(
        root,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            name,
            context.to_str().unwrap(),
        ],
    );
    assert!(
        output.status.success(),
        "building {name}: {}",
        stderr(&output)
    );
    context
}

fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

fn run_cat(root: &Path, image: &str, path: &str) -> String {
    let output = imgb(root, &["run", image, "--", "/bin/busybox", "cat", path]);
    assert!(output.status.success(), "{image}: {}", stderr(&output));
    stdout(&output)
}

/// Steps of a rawjson build that ran rather than being served from the cache.
fn steps_run(output: &std::process::Output) -> usize {
    stderr(output).matches("\"event\":\"started\"").count()
}

#[test]
fn prune_reclaims_what_du_reports_and_keeps_named_images_whole() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let kept = build(
        &root,
        dir.path(),
        &busybox,
        "kept",
        "RUN echo kept > /kept\n",
    );
    build(
        &root,
        dir.path(),
        &busybox,
        "dropped",
        "RUN echo dropped > /dropped\nRUN echo more >> /dropped\n",
    );
    imgb_ok(&root, &["rm", "dropped"]);

    let du = json(&imgb_ok(&root, &["du", "--format", "json"]));
    let reclaimable = du["reclaimable_bytes"].as_u64().unwrap();
    let pruned = json(&imgb_ok(&root, &["prune", "-f", "--format", "json"]));
    assert_eq!(
        pruned["reclaimed_bytes"].as_u64().unwrap(),
        reclaimable,
        "{pruned}"
    );
    let kinds: Vec<&str> = pruned["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"cache records") && kinds.contains(&"blobs"),
        "{pruned}"
    );
    let du = json(&imgb_ok(&root, &["du", "--format", "json"]));
    assert_eq!(du["reclaimable_bytes"], 0, "{du}");

    assert_eq!(run_cat(&root, "kept", "/kept"), "kept\n");
    let rebuild = imgb(
        &root,
        &[
            "build",
            "--progress",
            "rawjson",
            "-t",
            "kept",
            kept.to_str().unwrap(),
        ],
    );
    assert!(rebuild.status.success(), "{}", stderr(&rebuild));
    assert_eq!(
        steps_run(&rebuild),
        0,
        "kept's records stay: {}",
        stderr(&rebuild)
    );

    let all = json(&imgb_ok(
        &root,
        &["prune", "-f", "--all", "--format", "json"],
    ));
    assert!(all["reclaimed_bytes"].as_u64().unwrap() > 0, "{all}");
    let du = json(&imgb_ok(&root, &["du", "--format", "json"]));
    let items = |kind: &str| {
        du["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == kind)
            .unwrap()["items"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(items("cache records"), 0, "{du}");
    assert_eq!(items("context stat caches"), 0, "{du}");
    assert_eq!(run_cat(&root, "kept", "/kept"), "kept\n");
    imgb_ok(
        &root,
        &[
            "save",
            "kept",
            "-o",
            &format!("type=oci,dest={}", dir.path().join("kept.tar").display()),
        ],
    );
}

#[test]
fn keep_storage_and_until_select_by_last_use() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    build(
        &root,
        dir.path(),
        &busybox,
        "a",
        "RUN head -c 300000 /dev/urandom > /a\n",
    );
    imgb_ok(&root, &["rm", "a"]);
    let recent = json(&imgb_ok(
        &root,
        &["prune", "-f", "--filter", "until=1h", "--format", "json"],
    ));
    assert_eq!(
        recent["reclaimed_bytes"], 0,
        "everything was used just now: {recent}"
    );
    let roomy = json(&imgb_ok(
        &root,
        &["prune", "-f", "--keep-storage", "1TB", "--format", "json"],
    ));
    assert_eq!(roomy["reclaimed_bytes"], 0, "{roomy}");
    let tight = json(&imgb_ok(
        &root,
        &["prune", "-f", "--keep-storage", "0", "--format", "json"],
    ));
    assert!(
        tight["reclaimed_bytes"].as_u64().unwrap() > 300_000,
        "{tight}"
    );
}

#[test]
fn interrupted_build_leftovers_in_tmp_are_removed() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = busybox_context(
        dir.path(),
        &busybox,
        &format!("{BASE}RUN head -c 100000 /dev/zero > /partial && sleep 3\n"),
    );
    let mut build = Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(&root)
        .args(["build", "--progress", "plain", context.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp = root.join("tmp");
    let started = std::time::Instant::now();
    // A RUN step stages its mounts' host files in tmp/ first.
    let running = || {
        std::fs::read_dir(&tmp).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("mounts-")))
        })
    };
    while !running() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the RUN step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While it runs, its staging is protected by its lease.
    let during = json(&imgb_ok(&root, &["prune", "-f", "--format", "json"]));
    assert!(
        during["removed"]
            .as_array()
            .unwrap()
            .iter()
            .all(|item| item["kind"] != "temporary"),
        "{during}"
    );
    build.kill().unwrap();
    build.wait().unwrap();
    // The container outlives the killed build by its `sleep`; its mounts go when it exits.
    let mut removed = 0;
    for _ in 0..50 {
        let after = json(&imgb_ok(&root, &["prune", "-f", "--format", "json"]));
        removed += after["removed"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item["kind"] == "temporary")
            .count();
        if std::fs::read_dir(&tmp).unwrap().count() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(removed > 0, "nothing of the killed build was collected");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let leases: Vec<_> = std::fs::read_dir(root.join("leases"))
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".lease"))
        .collect();
    assert!(
        leases.is_empty(),
        "the dead build's lease stays: {leases:?}"
    );
}

#[test]
fn prune_during_builds_never_removes_what_they_use() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let dockerfiles: Vec<(String, String)> = (0..3)
        .map(|n| {
            let dockerfile = format!(
                "RUN echo {n} > /n && head -c {size} /dev/urandom > /blob\n\
                 COPY Dockerfile /copied\n\
                 RUN cat /n /n > /twice\n",
                size = 50_000 * (n + 1)
            );
            (format!("img{n}"), dockerfile)
        })
        .collect();
    let done = AtomicBool::new(false);
    let prunes = std::thread::scope(|scope| {
        let pruner = scope.spawn(|| {
            let mut count = 0;
            let mut flags = [
                ["prune", "-f"].as_slice(),
                ["prune", "-f", "--all"].as_slice(),
            ]
            .into_iter()
            .cycle();
            while !done.load(Ordering::SeqCst) {
                let output = imgb(&root, flags.next().unwrap());
                assert!(output.status.success(), "prune failed: {}", stderr(&output));
                count += 1;
            }
            count
        });
        let builders: Vec<_> = dockerfiles
            .iter()
            .map(|(name, dockerfile)| {
                let (root, dir, busybox) = (&root, dir.path(), &busybox);
                scope.spawn(move || {
                    // Each round changes the last step, so earlier steps hit and it misses.
                    for round in 0..3 {
                        let changed = format!("{dockerfile}RUN echo {round} >> /n\n");
                        build(root, dir, busybox, name, &changed);
                    }
                })
            })
            .collect();
        let built: Vec<_> = builders.into_iter().map(|builder| builder.join()).collect();
        // Stop the pruner before reporting a failed build, or the scope would wait forever.
        done.store(true, Ordering::SeqCst);
        for result in built {
            result.unwrap();
        }
        pruner.join().unwrap()
    });
    assert!(prunes > 0);

    // The images are complete: every blob verifies on export and the files are there.
    for (name, _) in &dockerfiles {
        let dest = dir.path().join(format!("{name}.tar"));
        imgb_ok(
            &root,
            &[
                "save",
                name,
                "-o",
                &format!("type=oci,dest={}", dest.display()),
            ],
        );
        assert_eq!(run_cat(&root, name, "/twice").lines().count(), 2);
        assert!(run_cat(&root, name, "/copied").contains("RUN cat /n /n"));
    }
    // The cache is usable: the same builds succeed (from whatever records survived), and
    // then hit entirely.
    for (name, dockerfile) in &dockerfiles {
        let context = build(&root, dir.path(), &busybox, name, dockerfile);
        let again = imgb(
            &root,
            &[
                "build",
                "--progress",
                "rawjson",
                "-t",
                name,
                context.to_str().unwrap(),
            ],
        );
        assert!(again.status.success(), "{}", stderr(&again));
        assert_eq!(
            steps_run(&again),
            0,
            "a no-change rebuild hits: {}",
            stderr(&again)
        );
    }
}

/// ADD's download records are build cache of their own kind: `imgb du` counts them, prune
/// removes one whose layer no named image holds (so the next build downloads again) and keeps
/// one that a named image's layer came from until `--all`.
#[test]
fn download_records_are_counted_by_du_and_pruned_as_cache() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::write(served.join("kept.txt"), "kept\n").unwrap();
    std::fs::write(served.join("dropped.txt"), "dropped\n").unwrap();
    let server = HttpServer::start(&busybox, &served);
    let kind_items = |kind: &str| {
        let du = json(&imgb_ok(&root, &["du", "--format", "json"]));
        du["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {du}"))["items"]
            .as_u64()
            .unwrap()
    };
    for name in ["kept", "dropped"] {
        build(
            &root,
            dir.path(),
            &busybox,
            name,
            &format!("ADD {} /{name}.txt\n", server.url(&format!("{name}.txt"))),
        );
    }
    assert_eq!(kind_items("downloads"), 2);
    imgb_ok(&root, &["rm", "dropped"]);

    let pruned = json(&imgb_ok(&root, &["prune", "-f", "--format", "json"]));
    let removed_downloads = pruned["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["kind"] == "downloads")
        .count();
    assert_eq!(removed_downloads, 1, "{pruned}");
    assert_eq!(kind_items("downloads"), 1);
    assert_eq!(run_cat(&root, "kept", "/kept.txt"), "kept\n");

    imgb_ok(&root, &["prune", "-f", "--all"]);
    assert_eq!(kind_items("downloads"), 0);
    assert_eq!(run_cat(&root, "kept", "/kept.txt"), "kept\n");
}
