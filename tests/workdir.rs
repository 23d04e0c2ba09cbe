//! WORKDIR end to end, as BuildKit does it: a missing directory is created (owned by the
//! USER), an existing one is left exactly as it is (an empty layer), and `WORKDIR /` makes no
//! layer at all.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use support::{BASE, TestContext, imgb_ok, shared_root, stdout};

/// The image config of `name` in `root`.
fn config(root: &std::path::Path, name: &str) -> serde_json::Value {
    let inspected: serde_json::Value =
        serde_json::from_str(&stdout(&imgb_ok(root, &["inspect", name]))).unwrap();
    inspected["config"].clone()
}

#[test]
fn workdir_on_an_existing_directory_keeps_its_mode_and_owner() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\nRUN mkdir /scratch && chmod 1777 /scratch && chown 5:6 /scratch\n\
             WORKDIR /scratch\nRUN pwd > /where\n"
        ),
        &[],
    );
    let rootfs = context.rootfs(root, &[]);
    let scratch = std::fs::metadata(rootfs.join("scratch")).unwrap();
    assert_eq!(scratch.permissions().mode() & 0o7777, 0o1777);
    assert_eq!((scratch.uid(), scratch.gid()), (5, 6));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("where")).unwrap(),
        "/scratch\n"
    );
}

#[test]
fn workdir_creates_a_missing_directory_and_workdir_root_makes_no_layer() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!("FROM {BASE}\nWORKDIR /\nWORKDIR /made/here\nRUN pwd > /where\n"),
        &[],
    );
    let rootfs = context.rootfs(root, &["-t", "workdir-test"]);
    assert!(rootfs.join("made/here").is_dir());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("where")).unwrap(),
        "/made/here\n"
    );
    let config = config(root, "workdir-test");
    let history = config["history"].as_array().unwrap();
    let entry = |name: &str| {
        history
            .iter()
            .find(|entry| entry["created_by"] == name)
            .unwrap_or_else(|| panic!("no {name} in {history:?}"))
    };
    assert_eq!(entry("WORKDIR /")["empty_layer"], true);
    assert!(entry("WORKDIR /made/here").get("empty_layer").is_none());
    let layers_in_history = history
        .iter()
        .filter(|entry| entry.get("empty_layer").is_none())
        .count();
    assert_eq!(
        layers_in_history,
        config["rootfs"]["diff_ids"].as_array().unwrap().len()
    );
}
