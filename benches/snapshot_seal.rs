//! The cost of checking a snapshot against its seal before a build uses it, on the
//! benchmark's case c layers (a 200 MiB file; 20,000 small files in 200 directories, made by
//! `../shared/bench/cases/c-bigctx/gen-context.sh`), against rebuilding and hashing the layer's
//! tar, the full check the seal stands in for.
//!
//! Each layer is adopted as a snapshot (which seals it), then checked by a fresh store (the
//! verdict is kept per process, so each fresh store walks the tree): the median and best of
//! several runs after one settling run; `find` printing the same fields is the floor of such a
//! walk. `cargo bench --bench snapshot_seal` runs it on the full
//! case; without `--bench` (as `cargo test --all-targets` runs it) it does a smoke run on a
//! few files. Without the shared directory (`IMGB_SHARED_DIR`, default `../shared`) it is
//! skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imgb_cache::digest::HashingWriter;
use imgb_cache::{SnapshotLayer, Store};

const RUNS: usize = 9;

fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("IMGB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    dir.is_dir().then_some(dir)
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Adopts a copy of `source` as a snapshot of `root`'s store; returns the layer and how long
/// the adoption (hash, seal, sync, rename) took.
fn adopt(root: &Path, source: &Path) -> (SnapshotLayer, Duration) {
    let store = Store::open(root).expect("open the store");
    let staged = store.tmp_dir().join("layer");
    let status = Command::new("cp")
        .arg("-a")
        .arg(source)
        .arg(&staged)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp -a failed: {status}");
    let start = Instant::now();
    let layer = store
        .adopt_snapshot(&staged, Some(1_700_000_000))
        .expect("adopt");
    (layer, start.elapsed())
}

/// Median and best of the seal check by fresh stores.
fn check_times(root: &Path, layer: &SnapshotLayer) -> (Duration, Duration) {
    let check = || {
        let store = Store::open(root).expect("open the store");
        let start = Instant::now();
        store
            .ensure_snapshot(&layer.descriptor(), &layer.diff_id)
            .expect("the snapshot is intact");
        start.elapsed()
    };
    check();
    let mut times: Vec<Duration> = (0..RUNS).map(|_| check()).collect();
    times.sort();
    (times[RUNS / 2], times[0])
}

/// Rebuilding the layer's tar and hashing it: what a full check of the content costs.
fn rehash_time(root: &Path, layer: &SnapshotLayer) -> Duration {
    let store = Store::open(root).expect("open the store");
    let start = Instant::now();
    let mut hashed = HashingWriter::new(std::io::sink());
    store
        .write_snapshot_tar(&layer.diff_id, &mut hashed)
        .expect("rebuild the tar");
    assert_eq!(hashed.finish().1, layer.diff_id);
    start.elapsed()
}

/// `find` printing the same stat fields: the floor a walk with `lstat` has here.
fn find_time(snapshot: &Path) -> Duration {
    let start = Instant::now();
    let status = Command::new("find")
        .arg(snapshot)
        .args(["-printf", "%p %i %m %U %G %s %T@\\n"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run find");
    assert!(status.success(), "find failed: {status}");
    start.elapsed()
}

fn main() {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let Some(shared) = shared_dir() else {
        eprintln!("notice: no shared reference directory; skipping");
        return;
    };
    let scratch = tempfile::tempdir().expect("temporary directory");
    let context = scratch.path().join("context");
    let mut generate = Command::new("bash");
    generate
        .arg(shared.join("bench/cases/c-bigctx/gen-context.sh"))
        .arg(&context);
    if !benchmarking {
        generate
            .env("NDIRS", "3")
            .env("NFILES", "5")
            .env("BIG_MB", "1");
    }
    let status = generate.status().expect("run gen-context.sh");
    assert!(status.success(), "gen-context.sh failed: {status}");

    let root = scratch.path().join("root");
    println!(
        "{:<8} {:>8} {:>10} {:>14} {:>12} {:>10} {:>14}",
        "layer", "entries", "adopt ms", "check ms med", "check best", "find ms", "tar rehash ms"
    );
    for name in ["big", "small"] {
        let source = context.join(name);
        let entries = walkdir_count(&source);
        let (layer, adopt_time) = adopt(&root, &source);
        let (median, best) = check_times(&root, &layer);
        let rehash = rehash_time(&root, &layer);
        let find = find_time(&root.join("snapshots").join(layer.diff_id.hex()));
        println!(
            "{name:<8} {entries:>8} {:>10.1} {:>14.2} {:>12.2} {:>10.1} {:>14.1}",
            milliseconds(adopt_time),
            milliseconds(median),
            milliseconds(best),
            milliseconds(find),
            milliseconds(rehash)
        );
    }
}

/// Entries below `dir` (the seal's length in records).
fn walkdir_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read the layer")
        .map(|entry| {
            let entry = entry.expect("read the layer");
            1 + if entry.file_type().expect("stat").is_dir() {
                walkdir_count(&entry.path())
            } else {
                0
            }
        })
        .sum()
}
