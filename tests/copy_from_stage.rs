//! `COPY --from` a stage or an image with wildcard sources (BuildKit's matching rules), and
//! `COPY --link`: a layer made on scratch, independent of its base, so changing an earlier step
//! does not rerun it.

mod support;

use std::path::{Path, PathBuf};
use support::{busybox_context, imgb, run_in, setup, stderr, step_outcome};

/// A busybox base and a `build` stage with files to pick from.
const STAGES: &str = "FROM scratch AS base\nCOPY busybox /bin/busybox\n\
     RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
     FROM base AS build\n\
     RUN mkdir -p /out/sub /out/dir.txt && echo a > /out/a.txt && echo b > /out/b.txt \
         && echo c > /out/c.log && echo d > /out/sub/d.txt && echo e > /out/dir.txt/e \
         && ln -s a.txt /out/link.txt\n";

fn context(dir: &Path, busybox: &Path, name: &str, steps: &str) -> PathBuf {
    busybox_context(&dir.join(name), busybox, &format!("{STAGES}{steps}"))
}

fn build(root: &Path, context: &Path, extra: &[&str]) -> String {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(context.to_str().unwrap());
    let output = imgb(root, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    stderr(&output)
}

#[test]
fn wildcards_select_from_a_stage_as_from_the_context() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let context = context(
        dir.path(),
        &busybox,
        "context",
        "FROM base\n\
         COPY --from=build /out/*.txt /dst/\n\
         COPY --from=build /out/s*/*.txt /nested/\n\
         COPY --from=build /out/?.log /logs/\n\
         COPY --from=build /out/*.none /out/[ab].txt /picked/\n",
    );
    build(&root, &context, &["-t", "picked:1"]);
    // A matched directory copies its contents; a matched symlink is followed.
    assert_eq!(
        run_in(&root, "picked:1", "cd /dst && ls -A && cat link.txt e"),
        "a.txt\nb.txt\ne\nlink.txt\na\ne\n"
    );
    assert_eq!(
        run_in(&root, "picked:1", "ls -A /nested /logs"),
        "/logs:\nc.log\n\n/nested:\nd.txt\n"
    );
    // A wildcard matching nothing selects nothing (BuildKit allows empty wildcards in COPY).
    assert_eq!(run_in(&root, "picked:1", "ls -A /picked"), "a.txt\nb.txt\n");
}

#[test]
fn wildcards_select_from_an_image() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let image = context(dir.path(), &busybox, "image", "");
    build(
        &root,
        &image,
        &["--target", "build", "-t", "localhost/files:1"],
    );
    let context = context(
        dir.path(),
        &busybox,
        "context",
        "FROM base\nCOPY --from=localhost/files:1 /out/[a-b].txt /from-image/\n",
    );
    build(&root, &context, &["-t", "from-image:1"]);
    assert_eq!(
        run_in(&root, "from-image:1", "ls -A /from-image"),
        "a.txt\nb.txt\n"
    );
}

#[test]
fn copy_link_survives_a_change_to_an_earlier_step_and_ignores_base_symlinks() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let root = dir.path().join("root");
    let steps = "FROM base\nARG V\n\
                 RUN echo \"$V\" > /v && mkdir /real /real2 && ln -s /real /app && ln -s /real2 /app2\n\
                 COPY --link --from=build /out/a.txt /app/\n\
                 COPY --from=build /out/b.txt /app2/\n";
    let context = context(dir.path(), &busybox, "context", steps);
    let copy_link = "[stage-2 2/3] COPY --link --from=build /out/a.txt /app/";
    let first = build(&root, &context, &["--build-arg", "V=1", "-t", "linked:1"]);
    assert_eq!(step_outcome(&first, copy_link), "cache miss: no record");
    let second = build(&root, &context, &["--build-arg", "V=2", "-t", "linked:2"]);
    assert!(
        step_outcome(&second, "[stage-2 1/3] RUN echo \"$V\" > /v && mkdir /real /real2 && ln -s /real /app && ln -s /real2 /app2")
            .starts_with("cache miss"),
        "{second}"
    );
    assert_eq!(step_outcome(&second, copy_link), "CACHED", "{second}");
    // The cached linked layer sits on the new base.
    assert_eq!(run_in(&root, "linked:2", "cat /v /app/a.txt"), "2\na\n");
    // --link made /app a directory of its own instead of following the base's symlink; the
    // ordinary COPY followed /app2 into /real2.
    assert_eq!(
        run_in(
            &root,
            "linked:2",
            "test -d /app && test ! -L /app && ls -A /real && ls -A /real2"
        ),
        "b.txt\n"
    );
}
