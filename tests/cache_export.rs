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
    // Nothing listens on port 1: connections are refused.
    let unreachable = "127.0.0.1:1/app:cache";
    let built = build(
        &dir.path().join("root"),
        &context(dir.path(), "a", &busybox, "one\n"),
        &[
            "--cache-from",
            &missing_dir,
            "--cache-from",
            &missing_tag,
            "--cache-from",
            unreachable,
        ],
    );
    assert_eq!(run_steps(&built).len(), 4, "{}", built.stderr);
    for missing in ["no-such-cache", "no-such-tag", unreachable] {
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

/// A cache mount `counter` that every run appends to (and copies out), and a mount `big`
/// larger than the cap the tests export with, which records what it found before filling.
const CACHE_MOUNTS_DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG PASS
RUN --mount=type=cache,id=counter,target=/cache echo "pass $PASS" >> /cache/count && cp /cache/count /count
RUN --mount=type=cache,id=big,target=/big ls -A /big > /big-before && head -c 2097152 /dev/zero > /big/blob
"#;

/// Builds [`CACHE_MOUNTS_DOCKERFILE`] with `PASS=pass` into `out` (a local export);
/// returns the build's standard error.
fn build_with_cache_mounts(
    root: &Path,
    context: &Path,
    pass: &str,
    out: &Path,
    cache_args: &[&str],
) -> String {
    let pass = format!("PASS={pass}");
    let out = format!("type=local,dest={}", out.display());
    let mut args = vec!["--build-arg", &pass, "-o", &out];
    args.extend(cache_args);
    build(root, context, &args).stderr
}

/// Root A runs the counter twice (its mount holds two lines) and exports with cache mounts;
/// root B, empty, imports them: its RUN, made to miss by another `PASS`, appends to A's
/// contents, and later builds in B keep their own. The `big` mount is over the 1MiB cap: a
/// warning names it, and B starts it empty.
fn assert_cache_mounts_travel(dir: &Path, busybox: &Path, cache_to: &str, cache_from: &str) {
    let context = busybox_context(&dir.join("ctx"), busybox, CACHE_MOUNTS_DOCKERFILE);
    let root_a = dir.join("root-a");
    build_with_cache_mounts(&root_a, &context, "a1", &dir.join("out-a1"), &[]);
    let exported = build_with_cache_mounts(
        &root_a,
        &context,
        "a2",
        &dir.join("out-a2"),
        &["--cache-to", cache_to],
    );
    assert!(
        exported
            .lines()
            .any(|line| line.starts_with("warning: --cache-to")
                && line.contains("cache mount \"big\" holds")
                && line.contains("cache-mounts-max=1048576")),
        "{exported}"
    );
    assert!(!exported.contains("cache mount \"counter\""), "{exported}");

    let out_b = dir.join("out-b");
    let imported = build_with_cache_mounts(
        &dir.join("root-b"),
        &context,
        "b",
        &out_b,
        &["--cache-from", cache_from],
    );
    assert_eq!(
        std::fs::read_to_string(out_b.join("count")).unwrap(),
        "pass a1\npass a2\npass b\n",
        "{imported}"
    );
    assert_eq!(
        std::fs::read_to_string(out_b.join("big-before")).unwrap(),
        "",
        "{imported}"
    );

    // B has the mount now: its own contents win over the cache's.
    let out_b2 = dir.join("out-b2");
    let again = build_with_cache_mounts(
        &dir.join("root-b"),
        &context,
        "b2",
        &out_b2,
        &["--cache-from", cache_from],
    );
    assert_eq!(
        std::fs::read_to_string(out_b2.join("count")).unwrap(),
        "pass a1\npass a2\npass b\npass b2\n",
        "{again}"
    );
}

#[test]
fn cache_mounts_travel_through_a_cache_directory_within_the_cap() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let cache = dir.path().join("cache");
    assert_cache_mounts_travel(
        dir.path(),
        &busybox,
        &format!(
            "type=local,dest={},mode=max,cache-mounts=true,cache-mounts-max=1MiB",
            cache.display()
        ),
        &format!("type=local,src={}", cache.display()),
    );
}

#[test]
fn cache_mounts_travel_through_a_registry_within_the_cap() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(registry) = TestRegistry::start(Options::default()) else {
        return;
    };
    let reference = format!("{}/app:cache", registry.host);
    assert_cache_mounts_travel(
        dir.path(),
        &busybox,
        &format!("type=registry,ref={reference},cache-mounts=true,cache-mounts-max=1MiB"),
        &format!("type=registry,ref={reference}"),
    );
}

#[test]
fn a_cache_source_that_never_answers_does_not_hold_up_local_hits() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = context(dir.path(), "a", &busybox, "one\n");
    build(&root, &context, &[]);
    // Accepts connections and never answers (not even the TLS handshake): reading this cache
    // would take minutes of timeouts and end in a warning.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("{}/app:cache", listener.local_addr().unwrap());
    std::thread::spawn(move || listener.incoming().collect::<Vec<_>>());
    let again = build(&root, &context, &["--cache-from", &silent]);
    assert_eq!(again.ran(), Vec::<&str>::new(), "{}", again.stderr);
    assert!(
        !again.stderr.contains("warning: --cache-from"),
        "the build waited for the silent cache: {}",
        again.stderr
    );
}
