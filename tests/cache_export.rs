//! `--cache-to` / `--cache-from` end to end, through a cache directory, a real registry
//! (Debian's `docker-registry` on 127.0.0.1) and inline metadata in a pushed image: a cache
//! exported from one state directory makes a build in another, empty one run no step, give the
//! same image, and rerun only what a changed file reaches; an unusable cache is a warning.

mod support;

use std::path::{Path, PathBuf};
use support::registry::{Options, TestRegistry};
use support::{busybox_context, imgb_ok, setup, stderr};

/// Two stages so that max mode has steps min mode leaves out: `build` makes a file from
/// `app.txt`, the final stage copies it next to a file of its own.
const DOCKERFILE: &str = r#"FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base AS build
COPY app.txt /src/app.txt
RUN sed 's/^/built: /' /src/app.txt > /out.txt

FROM base
RUN echo final > /final.txt
COPY --from=build /out.txt /out.txt
RUN cat /out.txt /final.txt > /all.txt
"#;

const EPOCH: &str = "SOURCE_DATE_EPOCH=1700000000";

/// A context at `dir/NAME` with [`DOCKERFILE`], busybox and `app.txt`.
fn context(dir: &Path, name: &str, busybox: &Path, app: &str) -> PathBuf {
    let parent = dir.join(name);
    let context = busybox_context(&parent, busybox, DOCKERFILE);
    std::fs::write(context.join("app.txt"), app).unwrap();
    context
}

/// One `imgb build` with rawjson progress: its events and the image digest.
struct Built {
    events: Vec<serde_json::Value>,
    stderr: String,
    digest: String,
    /// The config digest.
    image_id: String,
}

impl Built {
    /// Names of the steps that ran.
    fn ran(&self) -> Vec<&str> {
        self.named("started")
    }

    fn cached(&self) -> Vec<&str> {
        self.named("cached")
    }

    fn named(&self, event: &str) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e["event"] == event)
            .filter_map(|e| e["name"].as_str())
            .collect()
    }
}

fn build(root: &Path, context: &Path, cache_args: &[&str]) -> Built {
    let metadata = root.with_extension("metadata.json");
    let mut args = vec![
        "build",
        "--progress",
        "rawjson",
        "--build-arg",
        EPOCH,
        "--metadata-file",
        metadata.to_str().unwrap(),
    ];
    args.extend(cache_args);
    args.push(context.to_str().unwrap());
    let output = imgb_ok(root, &args);
    let text = stderr(&output);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    Built {
        // Warnings are plain lines between the JSON events.
        events: text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect(),
        digest: json["containerimage.digest"].as_str().unwrap().to_string(),
        image_id: json["containerimage.config.digest"]
            .as_str()
            .unwrap()
            .to_string(),
        stderr: text,
    }
}

/// Builds `app.txt = one` in `dir/root-a` with `cache_args` (the `--cache-to`).
fn build_in_root_a(dir: &Path, busybox: &Path, cache_args: &[&str]) -> Built {
    build(
        &dir.join("root-a"),
        &context(dir, "a", busybox, "one\n"),
        cache_args,
    )
}

/// Exports with `cache_to` (max mode) from root A; then, in an empty root B with the context
/// at another path (keys hold nothing machine-specific), `cache_from` serves every step with
/// the same image, and a changed `app.txt` reruns exactly the steps that depend on it.
fn assert_cache_round_trip(dir: &Path, busybox: &Path, cache_to: &str, cache_from: &str) {
    let first = build_in_root_a(dir, busybox, &["--cache-to", cache_to]);
    assert_eq!(run_steps(&first).len(), 4, "{}", first.stderr);

    let context_b = context(dir, "b", busybox, "one\n");
    let root_b = dir.join("root-b");
    let second = build(&root_b, &context_b, &["--cache-from", cache_from]);
    assert_eq!(second.ran(), Vec::<&str>::new(), "{}", second.stderr);
    assert_eq!(second.cached().len(), 7, "{}", second.stderr);
    assert_eq!(second.digest, first.digest);

    std::fs::write(context_b.join("app.txt"), "two\n").unwrap();
    let changed = build(&root_b, &context_b, &["--cache-from", cache_from]);
    assert_eq!(
        changed.ran(),
        [
            "[build 1/2] COPY app.txt /src/app.txt",
            "[build 2/2] RUN sed 's/^/built: /' /src/app.txt > /out.txt",
            "[stage-2 2/3] COPY --from=build /out.txt /out.txt",
            "[stage-2 3/3] RUN cat /out.txt /final.txt > /all.txt",
        ],
        "{}",
        changed.stderr
    );
    assert_ne!(changed.digest, first.digest);
}

fn run_steps(built: &Built) -> Vec<&str> {
    built
        .ran()
        .into_iter()
        .filter(|name| name.contains(" RUN "))
        .collect()
}

#[test]
fn local_cache_rebuilds_in_an_empty_root_without_running_and_with_the_same_digest() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let cache = dir.path().join("cache");
    assert_cache_round_trip(
        dir.path(),
        &busybox,
        &format!("type=local,dest={},mode=max", cache.display()),
        &format!("type=local,src={}", cache.display()),
    );
}

#[test]
fn registry_cache_rebuilds_in_an_empty_root_without_running_and_with_the_same_digest() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(registry) = TestRegistry::start(Options::default()) else {
        return;
    };
    let reference = format!("{}/app:cache", registry.host);
    assert_cache_round_trip(
        dir.path(),
        &busybox,
        &format!("type=registry,ref={reference},mode=max"),
        &format!("type=registry,ref={reference}"),
    );
}

#[test]
fn inline_cache_in_a_pushed_image_serves_an_empty_root() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(registry) = TestRegistry::start(Options::default()) else {
        return;
    };
    let image = format!("{}/app:1", registry.host);
    let first = build_in_root_a(
        dir.path(),
        &busybox,
        &["--cache-to", "type=inline", "-t", &image, "--push"],
    );
    let second = build(
        &dir.path().join("root-b"),
        &context(dir.path(), "b", &busybox, "one\n"),
        &["--cache-from", &image, "--cache-to", "type=inline"],
    );
    // Inline metadata covers the image's own layers: the final stage and its base. The build
    // stage runs, and the COPY of its (identical) output hits again.
    assert_eq!(
        run_steps(&second),
        ["[build 2/2] RUN sed 's/^/built: /' /src/app.txt > /out.txt"],
        "{}",
        second.stderr
    );
    assert_eq!(second.image_id, first.image_id);
}

#[test]
fn min_mode_exports_only_the_final_stage_steps() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let cache = dir.path().join("cache");
    let first = build_in_root_a(
        dir.path(),
        &busybox,
        &[
            "--cache-to",
            &format!("type=local,dest={}", cache.display()),
        ],
    );
    let cache_from = format!("type=local,src={}", cache.display());
    let second = build(
        &dir.path().join("root-b"),
        &context(dir.path(), "b", &busybox, "one\n"),
        &["--cache-from", &cache_from],
    );
    // The build stage is not in a min cache: it runs, produces the same file, and the final
    // stage's COPY of it hits again (its key names the file's content, not the stage).
    assert_eq!(
        run_steps(&second),
        ["[build 2/2] RUN sed 's/^/built: /' /src/app.txt > /out.txt"],
        "{}",
        second.stderr
    );
    assert!(
        second
            .cached()
            .contains(&"[stage-2 3/3] RUN cat /out.txt /final.txt > /all.txt"),
        "{}",
        second.stderr
    );
    assert_eq!(second.digest, first.digest);
}

#[test]
fn missing_cache_sources_are_warnings_and_the_build_goes_on() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(registry) = TestRegistry::start(Options::default()) else {
        return;
    };
    let missing_dir = format!(
        "type=local,src={}",
        dir.path().join("no-such-cache").display()
    );
    let missing_tag = format!("{}/app:no-such-tag", registry.host);
    let built = build(
        &dir.path().join("root"),
        &context(dir.path(), "a", &busybox, "one\n"),
        &["--cache-from", &missing_dir, "--cache-from", &missing_tag],
    );
    assert_eq!(run_steps(&built).len(), 4, "{}", built.stderr);
    for missing in ["no-such-cache", "no-such-tag"] {
        assert!(
            built
                .stderr
                .lines()
                .any(|line| line.starts_with("warning: --cache-from") && line.contains(missing)),
            "{}",
            built.stderr
        );
    }
}
