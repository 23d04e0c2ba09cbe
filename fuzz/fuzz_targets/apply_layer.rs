//! The tar reader and layer applier on arbitrary bytes (tar, or gzip/zstd/bzip2/xz of one): it
//! may fail but never panic, and whatever the archive says (`..`, absolute names, symlinks and
//! hardlinks pointing out, whiteouts of `..`), nothing appears or changes outside the target.
//!
//! Each run extracts into `<sandbox>/target`, next to `<sandbox>/outside/canary`; afterwards the
//! sandbox must hold exactly those two names, `outside` only the canary, unchanged.
//!
//! Input: one byte choosing the whiteout mode and options, then the archive.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use imgb_cache::{ApplyLimits, ApplyOptions, OverlayXattrs, Whiteouts, apply_layer};
use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"must stay as it is";

/// Small limits, so a bomb costs milliseconds, not the run's time budget.
const LIMITS: ApplyLimits = ApplyLimits {
    max_entries: 4096,
    max_path_bytes: 4096,
    max_depth: 64,
    max_expansion_ratio: 64,
    expansion_floor: 1 << 20,
    max_tar_bytes: 64 << 20,
};

fn sandbox() -> &'static Path {
    static SANDBOX: OnceLock<PathBuf> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("imgb-fuzz-apply-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("outside")).expect("create the sandbox");
        fs::write(path.join("outside/canary"), CANARY).expect("write the canary");
        path
    })
}

/// What an escaping chmod, chown or utimes would change.
fn metadata(path: &Path) -> (u32, u32, u32, i64, i64) {
    let meta = fs::symlink_metadata(path).expect("stat outside the target");
    (
        meta.mode(),
        meta.uid(),
        meta.gid(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list the sandbox")
        .map(|entry| {
            entry
                .expect("list the sandbox")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, archive)) = data.split_first() else {
        return;
    };
    let sandbox = sandbox();
    let outside = sandbox.join("outside");
    let canary = outside.join("canary");
    let before = [metadata(&outside), metadata(&canary)];
    let sandbox_mode = metadata(sandbox).0;
    let target = sandbox.join("target");
    fs::create_dir(&target).expect("create the target");
    let options = ApplyOptions {
        limits: LIMITS,
        preserve_ownership: mode & 4 != 0,
        owner: (mode & 8 != 0).then_some((1000, 1000)),
        whiteouts: match mode & 3 {
            0 => Whiteouts::Remove,
            1 => Whiteouts::Overlay(OverlayXattrs::Trusted),
            2 => Whiteouts::Overlay(OverlayXattrs::User),
            _ => Whiteouts::Literal,
        },
        root_metadata: mode & 16 != 0,
        strict_paths: mode & 32 != 0,
    };
    let _ = apply_layer(archive, &target, &options);

    assert_eq!(
        names(sandbox),
        ["outside", "target"],
        "an entry escaped the target"
    );
    assert_eq!(names(&outside), ["canary"], "an entry escaped the target");
    let content = fs::read(&canary).expect("the canary is readable");
    assert_eq!(
        content, CANARY,
        "an entry wrote through to outside the target"
    );
    let after = [metadata(&outside), metadata(&canary)];
    assert_eq!(
        before, after,
        "an entry changed metadata outside the target"
    );
    assert_eq!(
        sandbox_mode,
        metadata(sandbox).0,
        "an entry changed the sandbox's mode"
    );
    // The root entry may have made the target read-only or a non-directory's parent; root
    // removes it regardless, and so does the owner of the tree.
    fs::remove_dir_all(&target).expect("remove the target");
});
