//! Cache-miss explanations end to end: a rebuild after an edit says which context files, build
//! args and upstream steps changed — in `plain` words and in `rawjson` data — and never shows
//! the value of a build arg whose name looks like a credential.

mod support;

use std::fs;
use support::{busybox_context, imgb_ok, setup, stderr};

const DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
ARG GREETING=hello
ARG API_TOKEN=first-s3cret
COPY app /app
RUN ["/bin/busybox", "sh", "-c", "echo $GREETING > /greeting"]
RUN --mount=type=bind,source=app,target=/src ["/bin/busybox", "cat", "/src/util.c"]
"#;

#[test]
fn a_rebuild_names_the_changed_files_build_args_and_upstream_steps() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = busybox_context(dir.path(), &busybox, DOCKERFILE);
    fs::create_dir_all(context.join("app")).unwrap();
    fs::write(context.join("app/main.c"), "int main() {}\n").unwrap();
    fs::write(context.join("app/util.c"), "int util;\n").unwrap();
    let context = context.to_str().unwrap();
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend(extra);
        args.push(context);
        stderr(&imgb_ok(&root, &args))
    };
    build(&[]);

    fs::write(dir.path().join("context/app/util.c"), "int util = 2;\n").unwrap();
    fs::write(dir.path().join("context/app/new.c"), "int new;\n").unwrap();
    let edited = build(&[]);
    assert!(
        edited.contains("cache miss: context files changed: modified app/util.c; added app/new.c"),
        "the COPY names the edited and the added file:\n{edited}"
    );
    assert!(
        edited.contains(
            "cache miss: input 0 layers changed: `[stage-0 2/4] COPY app /app` produced different files"
        ),
        "the RUN after it names the upstream step:\n{edited}"
    );
    assert_eq!(
        edited.matches("modified app/util.c").count(),
        2,
        "the bind mount names the file too:\n{edited}"
    );

    let greeting = build(&["--build-arg", "GREETING=hi"]);
    assert!(
        greeting.contains("build arg GREETING: hello → hi"),
        "the build arg is named with its values:\n{greeting}"
    );

    let token = build(&["--build-arg", "API_TOKEN=second-s3cret"]);
    assert!(
        token.contains("build arg API_TOKEN)"),
        "a credential-like build arg is named:\n{token}"
    );
    assert!(
        !token.contains("s3cret"),
        "but its values are never shown:\n{token}"
    );

    fs::remove_file(dir.path().join("context/app/new.c")).unwrap();
    let events = stderr(&imgb_ok(
        &root,
        &[
            "build",
            "--progress",
            "rawjson",
            "--build-arg",
            "API_TOKEN=second-s3cret",
            context,
        ],
    ));
    let copy = events
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["event"] == "started" && event["name"] == "[stage-0 2/4] COPY app /app")
        .unwrap_or_else(|| panic!("the COPY reruns:\n{events}"));
    let change = &copy["cache_miss"]["changes"][0];
    assert_eq!(change["component"], "context files", "{copy}");
    assert_eq!(change["detail"]["kind"], "files", "{copy}");
    assert_eq!(
        change["detail"]["removed"]["first"][0], "app/new.c",
        "{copy}"
    );
    assert_eq!(change["detail"]["removed"]["count"], 1, "{copy}");
}
