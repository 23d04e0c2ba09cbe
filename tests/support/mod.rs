//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The reference material in `../shared` (override with `IMGB_SHARED_DIR`).
///
/// A user's clone has no `../shared`: the test prints a notice and is skipped (`None`). In CI
/// (`CI` set) a missing `../shared` is a failure, so conformance can never silently stop running.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("IMGB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing and CI is set: the conformance data must be present",
            dir.display()
        );
    }
    eprintln!(
        "notice: {} is absent; skipping this test (set IMGB_SHARED_DIR to run it)",
        dir.display()
    );
    None
}

/// `../shared/conformance/buildkit-dockerfile/frontend/dockerfile`, or `None` (see [`shared_dir`]).
pub fn buildkit_dockerfile_dir() -> Option<PathBuf> {
    shared_dir().map(|dir| dir.join("conformance/buildkit-dockerfile/frontend/dockerfile"))
}
