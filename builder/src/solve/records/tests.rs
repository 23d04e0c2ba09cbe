use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use super::*;
use crate::graph::{BuildGraph, Op};
use crate::http_source::download_references;
use crate::solve::key::KeySources;
use crate::solve::listing::{ListedEntry, ListedKind};
use crate::solve::result::{Filesystem, LayerRef, SolvedInput};
use crate::solve::test_support::{exec, stored_layer};

fn records_at(root: &Path) -> RecordStore {
    RecordStore::new(Store::open(root).unwrap())
}

fn temp_records() -> (tempfile::TempDir, RecordStore) {
    let dir = tempfile::tempdir().unwrap();
    let records = records_at(dir.path());
    (dir, records)
}

fn explanation(op: &Op, inputs: &[SolvedInput]) -> KeyExplanation {
    let mut graph = BuildGraph::new();
    let id = graph.add(op.clone(), Vec::new(), "step");
    KeyExplanation::derive(KeySources {
        definition: &graph.definition_digest(id),
        op,
        inputs,
        context_files: None,
        settings: &BTreeMap::new(),
        input_names: &[],
    })
}

fn filesystem(layers: Vec<LayerRef>) -> Solved {
    Solved::Filesystem(Filesystem {
        layers,
        image: None,
    })
}

fn record(records: &RecordStore, command: &str, output: &str) -> Record {
    let layer = stored_layer(records.store(), output);
    Record::new(
        format!("[build 1/1] RUN {command}"),
        explanation(&exec(command, &[]), &[]),
        filesystem(vec![layer]),
    )
}

#[test]
fn written_record_is_found_by_its_key() {
    let (_dir, records) = temp_records();
    let written = record(&records, "make", "layer");
    records.write(&written).unwrap();
    assert_eq!(records.lookup(&written.key).unwrap(), Lookup::Hit(written));
}

#[test]
fn unknown_key_is_a_plain_miss() {
    let (_dir, records) = temp_records();
    let key = explanation(&exec("make", &[]), &[]).key();
    assert_eq!(records.lookup(&key).unwrap(), Lookup::Miss);
}

#[test]
fn write_refuses_a_record_naming_a_blob_not_in_the_store() {
    let (_dir, records) = temp_records();
    let unstored = crate::solve::test_support::layer("never stored");
    let digest = unstored.blob.digest.clone();
    let result = filesystem(vec![unstored]);
    let bad = Record::new("step", explanation(&exec("make", &[]), &[]), result);
    let error = records.write(&bad).unwrap_err();
    assert!(
        matches!(&error, RecordError::BlobNotStored { digest: missing, .. } if *missing == digest),
        "{error}"
    );
    assert_eq!(records.lookup(&bad.key).unwrap(), Lookup::Miss);
}

#[test]
fn record_naming_a_missing_blob_is_a_miss_and_is_removed() {
    let (_dir, records) = temp_records();
    let written = record(&records, "make", "layer");
    records.write(&written).unwrap();
    let blob = written.result.blobs()[0].clone();
    fs::remove_file(records.store().blob_path(&blob)).unwrap();
    assert_eq!(
        records.lookup(&written.key).unwrap(),
        Lookup::Invalid(RecordProblem::MissingBlob { digest: blob })
    );
    assert!(!records.record_path(&written.key).exists());
    assert_eq!(records.lookup(&written.key).unwrap(), Lookup::Miss);
}

#[test]
fn unreadable_record_is_a_miss_and_is_removed() {
    let (_dir, records) = temp_records();
    let key = explanation(&exec("make", &[]), &[]).key();
    fs::write(records.record_path(&key), b"{\"version\": 1, \"key\"").unwrap();
    let Lookup::Invalid(RecordProblem::Unreadable { reason }) = records.lookup(&key).unwrap()
    else {
        panic!("a truncated record must be invalid");
    };
    assert!(reason.contains("EOF"), "{reason}");
    assert!(!records.record_path(&key).exists());
}

#[test]
fn record_filed_under_another_key_is_not_a_hit() {
    let (_dir, records) = temp_records();
    let written = record(&records, "make", "layer");
    let other_key = explanation(&exec("make all", &[]), &[]).key();
    fs::write(
        records.record_path(&other_key),
        serde_json::to_vec(&written).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        records.lookup(&other_key).unwrap(),
        Lookup::Invalid(RecordProblem::Unreadable { .. })
    ));
}

#[test]
fn invalid_record_replaced_meanwhile_by_another_writer_is_kept() {
    let (_dir, records) = temp_records();
    let written = record(&records, "make", "layer");
    let path = records.record_path(&written.key);
    fs::write(&path, b"garbage").unwrap();
    let (_, read_id) = read_if_exists(&path).unwrap().unwrap();
    // Another process renames a fresh record into place between the read and the removal.
    records.write(&written).unwrap();
    remove_if_unchanged(&path, read_id).unwrap();
    assert_eq!(records.lookup(&written.key).unwrap(), Lookup::Hit(written));
}

#[test]
fn writes_are_staged_in_tmp_and_leave_nothing_behind() {
    let (_dir, records) = temp_records();
    // A staged file left by a killed writer is never read as a record.
    let leftover = records.store().tmp_dir().join("record-1-0");
    fs::write(&leftover, b"partial").unwrap();
    let written = record(&records, "make", "layer");
    records.write(&written).unwrap();
    let position = Position::new("scope", "[build 1/1] RUN make");
    records.set_last_key_at(&position, &written.key).unwrap();
    let staged: Vec<_> = fs::read_dir(records.store().tmp_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(staged, vec![leftover]);
    assert_eq!(records.lookup(&written.key).unwrap(), Lookup::Hit(written));
}

#[test]
fn step_identity_ignores_the_step_count_and_the_instruction() {
    assert_eq!(step_identity("[build 2/4] RUN make"), "build 2");
    assert_eq!(step_identity("[build 2/5] RUN make all"), "build 2");
    assert_eq!(step_identity("[stage-1 10/12] COPY . /"), "stage-1 10");
    assert_eq!(
        step_identity("[internal] load metadata for busybox"),
        "[internal] load metadata for busybox"
    );
    assert_eq!(step_identity("load build context"), "load build context");
    assert_eq!(step_identity("[unclosed 1/2 RUN x"), "[unclosed 1/2 RUN x");
}

#[test]
fn positions_differ_by_scope_and_stage() {
    let position = Position::new("/src/Dockerfile", "[build 2/4] RUN make");
    assert_eq!(
        position,
        Position::new("/src/Dockerfile", "[build 2/3] RUN cc")
    );
    assert_ne!(
        position,
        Position::new("/other/Dockerfile", "[build 2/4] RUN make")
    );
    assert_ne!(
        position,
        Position::new("/src/Dockerfile", "[test 2/4] RUN make")
    );
}

#[test]
fn find_explains_a_miss_against_the_last_record_of_the_step() {
    let (_dir, records) = temp_records();
    let position = Position::new("scope", "[build 1/1] RUN make");
    let first = record(&records, "make", "layer");
    assert_eq!(
        records
            .find(&first.key, &position, &first.explanation)
            .unwrap(),
        Found::Miss(MissReason::NoRecord)
    );
    records.write(&first).unwrap();
    records.set_last_key_at(&position, &first.key).unwrap();

    let edited = record(&records, "make all", "layer");
    let Found::Miss(reason) = records
        .find(&edited.key, &position, &edited.explanation)
        .unwrap()
    else {
        panic!("an edited step must miss");
    };
    assert_eq!(
        reason.to_string(),
        "instruction changed (command); was `[build 1/1] RUN make`"
    );

    // A hit makes its key the position's last one.
    records.write(&edited).unwrap();
    assert!(matches!(
        records
            .find(&first.key, &position, &first.explanation)
            .unwrap(),
        Found::Hit(_)
    ));
    assert_eq!(
        records.last_key_at(&position).unwrap(),
        Some(first.key.clone())
    );
}

#[test]
fn miss_of_a_step_whose_own_record_vanished_is_no_record() {
    let (_dir, records) = temp_records();
    let position = Position::new("scope", "[build 1/1] RUN make");
    let written = record(&records, "make", "layer");
    records.write(&written).unwrap();
    records.set_last_key_at(&position, &written.key).unwrap();
    fs::remove_file(records.record_path(&written.key)).unwrap();
    assert_eq!(
        records
            .find(&written.key, &position, &written.explanation)
            .unwrap(),
        Found::Miss(MissReason::NoRecord)
    );
}

#[test]
fn miss_of_a_record_with_a_missing_blob_says_so() {
    let (_dir, records) = temp_records();
    let position = Position::new("scope", "[build 1/1] RUN make");
    let written = record(&records, "make", "layer");
    records.write(&written).unwrap();
    fs::remove_file(records.store().blob_path(written.result.blobs()[0])).unwrap();
    let Found::Miss(reason) = records
        .find(&written.key, &position, &written.explanation)
        .unwrap()
    else {
        panic!("a record with a missing blob must miss");
    };
    assert!(
        reason.to_string().contains("is missing from the store"),
        "{reason}"
    );
}

/// Writes the same keys as another writer, with its own results, and checks every read.
fn write_and_read_concurrently(records: &RecordStore, writer: &str, rounds: usize) {
    let keys = 8;
    for round in 0..rounds {
        let command = format!("step {}", round % keys);
        let written = record(records, &command, &format!("{command} by {writer}"));
        records.write(&written).unwrap();
        let position = Position::new("scope", &format!("[build {} /8] x", round % keys));
        records.set_last_key_at(&position, &written.key).unwrap();
        let Lookup::Hit(found) = records.lookup(&written.key).unwrap() else {
            panic!("a written record must be readable whole");
        };
        assert_eq!(found.key, written.key);
        assert_eq!(found.explanation, written.explanation);
        assert!(records.last_key_at(&position).unwrap().is_some());
    }
}

#[test]
fn concurrent_writers_in_threads_never_expose_partial_records() {
    let (_dir, records) = temp_records();
    let records = Arc::new(records);
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let records = Arc::clone(&records);
            std::thread::spawn(move || {
                write_and_read_concurrently(&records, &format!("thread {writer}"), 100)
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
}

const CHILD_ROOT: &str = "IMGB_TEST_RECORDS_CHILD_ROOT";

/// Runs inside the child process of the two-process test; does nothing otherwise.
#[test]
fn helper_process_for_concurrent_writers() {
    if let Some(root) = std::env::var_os(CHILD_ROOT) {
        write_and_read_concurrently(&records_at(Path::new(&root)), "child", 300);
    }
}

#[test]
fn concurrent_writers_in_two_processes_never_expose_partial_records() {
    let (dir, records) = temp_records();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "solve::records::tests::helper_process_for_concurrent_writers",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_ROOT, dir.path())
        // Captured: the child's own test summary must not mix with this run's.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    write_and_read_concurrently(&records, "parent", 300);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "child writer failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child must run the helper test"
    );
    for step in 0..8 {
        let key = explanation(&exec(&format!("step {step}"), &[]), &[]).key();
        assert!(matches!(records.lookup(&key).unwrap(), Lookup::Hit(_)));
    }
}

#[test]
fn context_listings_are_kept_once_per_selection_and_name_changed_files() {
    let (_dir, records) = temp_records();
    let listing = |content: &str| {
        ContextListing::from_iter([ListedEntry::new(
            "app/main.c",
            ListedKind::File,
            0o644,
            content.as_bytes(),
        )])
    };
    let (v1, v2) = (Digest::of(b"selection v1"), Digest::of(b"selection v2"));
    assert_eq!(records.listing(&v1).unwrap(), None);
    records.write_listing(&v1, &listing("aaaa")).unwrap();
    // Named by the selection: a second write of the same name keeps the first.
    records.write_listing(&v1, &listing("ignored")).unwrap();
    assert_eq!(records.listing(&v1).unwrap(), Some(listing("aaaa")));

    let mut changes = vec![Change {
        component: "context files".into(),
        parts: Vec::new(),
        detail: Some(ChangeDetail::Selection {
            from: v1.to_string(),
            to: v2.to_string(),
        }),
    }];
    records
        .explain_files(&mut changes, &listing("bbbb"))
        .unwrap();
    assert_eq!(
        changes[0].to_string(),
        "context files changed: modified app/main.c"
    );

    // Without the earlier listing the change stays as it was.
    let mut unknown = vec![Change {
        detail: Some(ChangeDetail::Selection {
            from: v2.to_string(),
            to: v1.to_string(),
        }),
        ..changes[0].clone()
    }];
    records
        .explain_files(&mut unknown, &listing("aaaa"))
        .unwrap();
    assert_eq!(unknown[0].to_string(), "context files changed");
}

#[test]
fn a_hit_keeps_the_record_and_its_layer_from_prune_until_the_build_ends() {
    let (_dir, records) = temp_records();
    let written = record(&records, "make", "layer");
    records.write(&written).unwrap();
    let store = records.store().clone();
    let all = imgb_cache::PruneOptions {
        all: true,
        until: None,
        keep_storage: None,
        record_references,
        download_references,
    };
    let build = RecordStore::new(store.leased("build").unwrap());
    assert_eq!(
        build.lookup(&written.key).unwrap(),
        Lookup::Hit(written.clone())
    );
    assert!(store.prune(&all).unwrap().removed.is_empty());
    assert_eq!(
        build.lookup(&written.key).unwrap(),
        Lookup::Hit(written.clone())
    );

    drop(build);
    let removed = store.prune(&all).unwrap().removed;
    let kinds: Vec<&str> = removed.iter().map(|item| item.kind).collect();
    assert_eq!(kinds, ["cache records", "blobs"]);
    assert_eq!(records.lookup(&written.key).unwrap(), Lookup::Miss);
}

#[test]
fn record_references_name_layers_and_image_documents() {
    let (_dir, records) = temp_records();
    let layer = stored_layer(records.store(), "content");
    let origin = crate::solve::result::ImageOrigin {
        manifest: Digest::of(b"manifest"),
        config: Digest::of(b"config"),
    };
    let result = Solved::Filesystem(Filesystem {
        layers: vec![layer.clone()],
        image: Some(origin.clone()),
    });
    let written = Record::new("base", explanation(&exec("x", &[]), &[]), result);
    let references = record_references(&serde_json::to_vec(&written).unwrap()).unwrap();
    assert_eq!(
        references,
        [
            RecordRef::Layer {
                diff_id: layer.diff_id,
                blob: layer.blob.digest,
            },
            RecordRef::Blob(origin.manifest),
            RecordRef::Blob(origin.config),
        ]
    );
    assert!(record_references(b"{}").is_err());
}
