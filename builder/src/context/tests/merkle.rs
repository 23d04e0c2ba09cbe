use std::fs::FileTimes;
use std::time::{Duration, SystemTime};

use super::*;

/// A tree with a deep branch and unrelated siblings at every level.
fn sample() -> Tree {
    let tree = Tree::new();
    tree.file("x/y/z/file", "one")
        .file("x/y/sibling", "s")
        .file("x/other", "o")
        .file("w/file", "w");
    tree
}

/// The paths whose digest differs between two hashes of the same tree.
fn changed(before: &HashedContext, after: &HashedContext) -> Vec<String> {
    let mut changed: Vec<String> = after
        .entries()
        .iter()
        .filter(|entry| {
            before
                .get(&entry.path)
                .is_none_or(|old| old.digest != entry.digest)
        })
        .map(|entry| entry.path.clone())
        .collect();
    changed.extend(
        before
            .entries()
            .iter()
            .filter(|entry| after.get(&entry.path).is_none())
            .map(|entry| format!("-{}", entry.path)),
    );
    changed
}

#[test]
fn content_change_deep_down_changes_exactly_the_ancestors_digests() {
    let tree = sample();
    let before = hash(&tree);
    tree.file("x/y/z/file", "two");
    let after = hash(&tree);
    assert_eq!(
        changed(&before, &after),
        ["", "x", "x/y", "x/y/z", "x/y/z/file"]
    );
}

#[test]
fn mode_change_changes_the_parents_but_not_the_files_own_content_digest() {
    let tree = sample();
    let before = hash(&tree);
    tree.chmod("x/other", 0o755);
    let after = hash(&tree);
    assert_eq!(changed(&before, &after), ["", "x"]);
}

#[test]
fn added_removed_and_renamed_entries_change_their_directory() {
    let tree = sample();
    let original = hash(&tree);

    tree.file("w/new", "");
    let added = hash(&tree);
    assert_eq!(changed(&original, &added), ["", "w", "w/new"]);

    tree.remove("w/new");
    assert_eq!(hash(&tree).digest(), original.digest());

    fs::rename(tree.abs("w/file"), tree.abs("w/renamed")).expect("rename");
    let renamed = hash(&tree);
    assert_eq!(
        changed(&original, &renamed),
        ["", "w", "w/renamed", "-w/file"]
    );
}

#[test]
fn symlink_retarget_changes_its_digest() {
    let tree = sample();
    tree.symlink("w/link", "file");
    let before = hash(&tree);
    fs::remove_file(tree.abs("w/link")).expect("remove link");
    tree.symlink("w/link", "../x/other");
    assert_eq!(changed(&before, &hash(&tree)), ["", "w", "w/link"]);
}

#[test]
fn empty_directory_and_empty_file_differ() {
    let as_dir = Tree::new();
    as_dir.dir("thing");
    let as_file = Tree::new();
    as_file.file("thing", "");
    assert_ne!(hash(&as_dir).digest(), hash(&as_file).digest());
}

#[test]
fn timestamps_ownership_and_location_do_not_change_digests() {
    let first = sample();
    let second = sample();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let file = fs::File::options()
        .write(true)
        .open(second.abs("x/other"))
        .expect("open");
    file.set_times(FileTimes::new().set_modified(old).set_accessed(old))
        .expect("set times");
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(second.abs("w/file"), Some(65534), Some(65534)).expect("chown");
    }
    assert_eq!(hash(&first).digest(), hash(&second).digest());
}
