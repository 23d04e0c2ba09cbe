//! `.dockerignore` end to end: patterns, negation, `**`, a leading `/`, the Dockerfile-specific
//! ignore file taking precedence, an ignored Dockerfile and `.dockerignore` still read by the
//! build, and ignored files left out of the context hash. The file set COPY sees was confirmed
//! with Docker 20.10's BuildKit (identical listings).

mod support;

use std::path::Path;
use support::{BASE, TestContext, ran_steps, shared_root, stderr};

const FILES: &[&str] = &[
    "a.log",
    "keep.log",
    "sub/b.log",
    "sub/tmp/x",
    "tmp/y",
    "rootonly.txt",
    "sub/rootonly.txt",
    "docs/a.md",
    "docs/README.md",
    "docs/deep/c.md",
];

const IGNORE: &str = "*.log\n!keep.log\n**/tmp\n/rootonly.txt\ndocs/*.md\n!docs/README.md\n\
                      cache\n!cache/keep.txt\nDockerfile\n.dockerignore\n";

fn ignore_context(dockerfile: &str) -> TestContext {
    let context = TestContext::new(dockerfile, &[(".dockerignore", IGNORE)]);
    for file in FILES {
        context.write(file, file);
    }
    context
}

/// Every path under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            paths.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                pending.push(path);
            }
        }
    }
    paths.sort();
    paths
}

#[test]
fn patterns_negation_double_star_and_leading_slash_select_what_copy_sees() {
    let Some(root) = shared_root() else { return };
    let context = ignore_context(&format!("FROM {BASE}\nCOPY . /ctx/\n"));
    // An excluded directory holding an exception: the walk must enter it.
    context.write("cache/drop", "drop");
    context.write("cache/keep.txt", "keep");
    let rootfs = context.rootfs(root, &[]);
    assert_eq!(
        listing(&rootfs.join("ctx")),
        [
            "cache",
            "cache/keep.txt",
            "docs",
            "docs/README.md",
            "docs/deep",
            "docs/deep/c.md",
            "keep.log",
            "sub",
            "sub/b.log",
            "sub/rootonly.txt",
        ],
        "the ignored Dockerfile and .dockerignore were still read, and are not copied"
    );
}

#[test]
fn the_dockerfiles_own_ignore_file_takes_precedence() {
    let Some(root) = shared_root() else { return };
    let context = ignore_context("");
    context.write(
        "build/app.Dockerfile",
        &format!("FROM {BASE}\nCOPY . /ctx/\n"),
    );
    context.write("build/app.Dockerfile.dockerignore", "docs\nsub\nbuild\n");
    let dockerfile = context.path().join("build/app.Dockerfile");
    let rootfs = context.rootfs(root, &["-f", dockerfile.to_str().unwrap()]);
    assert_eq!(
        listing(&rootfs.join("ctx")),
        [
            ".dockerignore",
            "Dockerfile",
            "a.log",
            "keep.log",
            "rootonly.txt",
            "tmp",
            "tmp/y"
        ],
        ".dockerignore is not applied when app.Dockerfile.dockerignore exists"
    );
}

#[test]
fn changing_ignored_files_keeps_the_cache() {
    let Some(root) = shared_root() else { return };
    let context = ignore_context(&format!(
        "FROM {BASE}\nCOPY . /ctx/\nRUN ls -R /ctx > /listing\n"
    ));
    context.build_ok(root, &[]);
    context.write("a.log", "changed");
    context.write("sub/tmp/new", "new");
    context.write("docs/a.md", "changed");
    let again = context.build_ok(root, &["--progress", "rawjson"]);
    assert_eq!(
        ran_steps(&stderr(&again)),
        Vec::<String>::new(),
        "an ignored file invalidated the cache:\n{}",
        stderr(&again)
    );
    context.write("keep.log", "changed");
    let changed = context.build_ok(root, &["--progress", "rawjson"]);
    assert_eq!(
        ran_steps(&stderr(&changed)).len(),
        2,
        "{}",
        stderr(&changed)
    );
}
