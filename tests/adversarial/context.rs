//! Issue 8, class 1: a build context that tries to make imgb read host files. COPY/ADD sources
//! with `..`, absolute paths and symlinks leading out, a Dockerfile or `.dockerignore` that is
//! a symlink out of the context, and symlinks swapped in while builds run: no byte of a file
//! outside the context may reach a layer, an error message or the build's output. The ignore
//! file's own edge cases (negation under an excluded directory, `**`, a leading `/`) are
//! checked against Docker's BuildKit in `tests/dockerignore.rs`.

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::{BASE, TestContext, shared_root, stderr};

const CANARY: &str = "imgb-context-canary-40c1e7";

/// `dir/outside/canary`, next to the context: the file no build may read.
fn outside_canary(dir: &Path) -> PathBuf {
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let file = outside.join("canary");
    std::fs::write(&file, CANARY).unwrap();
    file
}

/// Whether a regular file under `dir` (symlinks not followed) holds the canary.
fn canary_under(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            canary_under(&path)
        } else {
            meta.is_file()
                && String::from_utf8_lossy(&std::fs::read(&path).unwrap()).contains(CANARY)
        }
    })
}

/// Builds with the root filesystem exported; asserts the canary is nowhere in the output or
/// the export. Whether the build succeeded.
fn build_without_canary(root: &Path, context: &TestContext, what: &str) -> bool {
    let dest = context.dir.path().join("rootfs");
    if dest.exists() {
        std::fs::remove_dir_all(&dest).unwrap();
    }
    let output = format!("type=local,dest={}", dest.display());
    let built = context.build(root, &["--no-cache", "-o", &output]);
    let log = stderr(&built) + &support::stdout(&built);
    assert!(
        !log.contains(CANARY),
        "{what}: the output shows the canary:\n{log}"
    );
    assert!(!canary_under(&dest), "{what}: the image holds the canary");
    built.status.success()
}

/// Sources leading out of the context are errors, not clamped to its root as BuildKit does:
/// decoys inside the context sit where clamping (`..` dropped at the root, an absolute symlink
/// target taken as relative to the root) would land, so a clamped source copies one and the
/// build succeeds. An absolute source is relative to the context root, so it finds its decoy.
#[test]
fn copy_and_add_sources_leading_out_of_the_context_bring_nothing_in() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new("", &[("inside", "inside"), ("outside/canary", "decoy")]);
    let canary = outside_canary(context.dir.path());
    let outside = canary.parent().unwrap();
    let links = context.path();
    let mirrored = canary.strip_prefix("/").unwrap().to_str().unwrap();
    context.write(mirrored, "decoy");
    std::os::unix::fs::symlink(outside, links.join("abs-dir")).unwrap();
    std::os::unix::fs::symlink("../outside", links.join("rel-dir")).unwrap();
    std::os::unix::fs::symlink(&canary, links.join("abs-file")).unwrap();
    std::os::unix::fs::symlink("../outside/canary", links.join("rel-file")).unwrap();
    let leading_out = [
        "../outside/canary",
        "../../outside/canary",
        "abs-dir/canary",
        "rel-dir/canary",
        "abs-file",
        "rel-file",
        "*-file",
        "rel-dir",
    ];
    let absolute = canary.display().to_string();
    let inside = [absolute.as_str(), "."];
    for source in leading_out.iter().chain(&["abs-*/canary"]).chain(&inside) {
        for instruction in ["COPY", "ADD"] {
            context.write(
                "Dockerfile",
                &format!("FROM {BASE}\n{instruction} {source} /dest/\n"),
            );
            let what = format!("{instruction} {source}");
            let built = build_without_canary(root, &context, &what);
            if leading_out.contains(source) {
                assert!(
                    !built,
                    "{what}: a source leading out of the context was copied"
                );
            } else if inside.contains(source) {
                assert!(built, "{what}: a source inside the context failed");
            }
        }
    }
}

#[test]
fn a_dockerfile_or_ignore_file_linking_out_of_the_context_is_not_read() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(&format!("FROM {BASE}\nCOPY . /ctx/\n"), &[("kept", "x")]);
    let canary = outside_canary(context.dir.path());
    // The canary file is no Dockerfile: reading it would quote it in the parse error.
    let dockerfile = context.path().join("Dockerfile");
    std::fs::remove_file(&dockerfile).unwrap();
    std::os::unix::fs::symlink(&canary, &dockerfile).unwrap();
    assert!(!build_without_canary(
        root,
        &context,
        "absolute Dockerfile link"
    ));
    std::fs::remove_file(&dockerfile).unwrap();
    std::os::unix::fs::symlink("../outside/canary", &dockerfile).unwrap();
    let built = context.build(root, &[]);
    assert!(!built.status.success());
    assert!(
        stderr(&built).contains("leads out of the build context"),
        "{}",
        stderr(&built)
    );
    // A link to another file of the context is fine.
    context.write("real.Dockerfile", &format!("FROM {BASE}\nCOPY . /ctx/\n"));
    std::fs::remove_file(&dockerfile).unwrap();
    std::os::unix::fs::symlink("real.Dockerfile", &dockerfile).unwrap();
    assert!(build_without_canary(
        root,
        &context,
        "inner Dockerfile link"
    ));

    // An ignore file that is a link out: the canary names a pattern that would print in a
    // parse error if read (`[` is a malformed pattern).
    std::fs::write(&canary, format!("[{CANARY}\n")).unwrap();
    std::os::unix::fs::symlink("../outside/canary", context.path().join(".dockerignore")).unwrap();
    assert!(!build_without_canary(root, &context, "ignore file link"));
}

/// A thread flips context entries between real files/directories and symlinks to the outside
/// while builds copy them: each build either fails or copies what is inside, never the
/// canary (the walk, the selection and the copy each look at the context at another moment).
#[test]
fn symlinks_swapped_in_during_builds_never_bring_outside_content_in() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!("FROM {BASE}\nCOPY data /data/\nCOPY file /file\nADD file /added\n"),
        &[("data/file", "inside"), ("file", "inside")],
    );
    let canary = outside_canary(context.dir.path());
    let base = context.path();
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, base, canary) = (stop.clone(), base.clone(), canary.clone());
        std::thread::spawn(move || {
            let outside = canary.parent().unwrap().to_path_buf();
            while !stop.load(Ordering::Relaxed) {
                // data: a directory, then a symlink to the outside directory (also holding
                // `file`), and back.
                std::fs::rename(base.join("data"), base.join("data.real")).unwrap();
                std::os::unix::fs::symlink(&outside, base.join("data")).unwrap();
                std::fs::rename(base.join("file"), base.join("file.real")).unwrap();
                std::os::unix::fs::symlink(&canary, base.join("file")).unwrap();
                std::thread::yield_now();
                std::fs::remove_file(base.join("data")).unwrap();
                std::fs::rename(base.join("data.real"), base.join("data")).unwrap();
                std::fs::remove_file(base.join("file")).unwrap();
                std::fs::rename(base.join("file.real"), base.join("file")).unwrap();
                std::thread::yield_now();
            }
        })
    };
    std::fs::write(outside_file(&canary), CANARY).unwrap();
    let mut succeeded = 0;
    for round in 0..12 {
        succeeded += usize::from(build_without_canary(
            root,
            &context,
            &format!("round {round}"),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    eprintln!("{succeeded} of 12 builds succeeded while the context was flipping");
}

/// `outside/file`: what `data/file` reads when `data` is the symlink.
fn outside_file(canary: &Path) -> PathBuf {
    canary.parent().unwrap().join("file")
}
