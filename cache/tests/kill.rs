//! The store survives `SIGKILL` at any point: a child process writes blobs, names and
//! snapshots in a loop (or builds images and records and prunes them) and is killed at random
//! times; after each kill the store opens, every blob verifies (no partial blob), every name
//! points at a stored blob, every snapshot is complete (re-archiving it gives its diffID back),
//! every named image has all its blobs, and no record names a layer that is gone.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use imgb_cache::compress::Compression;
use imgb_cache::digest::HashingWriter;
use imgb_cache::layer::{LayerChanges, LayerOptions, write_layer, write_tar};
use imgb_cache::oci::{Descriptor, History, ImageConfig, RootFs};
use imgb_cache::{Digest, PruneOptions, RecordRef, Store};

const WORKER_ROOT: &str = "IMGB_KILL_TEST_ROOT";
const ROUNDS: usize = 10;

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[test]
#[ignore = "the worker half of store_survives_sigkill_at_random_points (runs in a child)"]
fn kill_test_worker() {
    let Some(root) = std::env::var_os(WORKER_ROOT) else {
        return;
    };
    let store = Store::open(&root).unwrap();
    let pid = std::process::id();
    let mut rng = Rng(u64::from(pid) << 16 | 1);
    let work = Path::new(&root).with_extension(format!("work-{pid}"));
    let mut buffer = vec![0u8; 64 * 1024];
    for round in 0.. {
        let mut writer = store.blob_writer().unwrap();
        let size = rng.below(512 << 10);
        let mut written = 0;
        while written < size {
            let n = buffer.len().min((size - written) as usize);
            rng.fill(&mut buffer[..n]);
            std::io::Write::write_all(&mut writer, &buffer[..n]).unwrap();
            written += n as u64;
        }
        let blob = writer.commit().unwrap();
        store
            .tag_image(&format!("kill/{pid}:{round}"), &blob.digest)
            .unwrap();
        if round % 2 == 0 {
            random_layer(&store, &work.join(round.to_string()), &mut rng, &mut buffer);
        }
    }
}

/// A layer of up to 20 random files under `source`, stored as a blob and a snapshot.
fn random_layer(
    store: &Store,
    source: &Path,
    rng: &mut Rng,
    buffer: &mut [u8],
) -> (Descriptor, Digest) {
    for file in 0..rng.below(20) {
        let dir = source.join(format!("d{}", file % 5));
        fs::create_dir_all(&dir).unwrap();
        let len = (rng.below(50_000) as usize).min(buffer.len());
        rng.fill(&mut buffer[..len]);
        fs::write(dir.join(format!("f{file}")), &buffer[..len]).unwrap();
    }
    fs::create_dir_all(source).unwrap();
    let options = LayerOptions {
        compression: Compression::GZIP_DEFAULT,
        source_date_epoch: Some(1_700_000_000),
        threads: 1,
    };
    let layer = write_layer(store, source, &LayerChanges::default(), &options).unwrap();
    let descriptor = Descriptor::new(layer.media_type, layer.blob.digest, layer.blob.size);
    store.ensure_snapshot(&descriptor, &layer.diff_id).unwrap();
    (descriptor, layer.diff_id)
}

/// Test records for the prune worker: one `DIFF_ID BLOB` line per layer.
fn test_references(bytes: &[u8]) -> Result<Vec<RecordRef>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    text.lines()
        .map(|line| {
            let (diff_id, blob) = line.split_once(' ').ok_or("no space")?;
            Ok(RecordRef::Layer {
                diff_id: Digest::parse(diff_id).map_err(|e| e.to_string())?,
                blob: Digest::parse(blob).map_err(|e| e.to_string())?,
            })
        })
        .collect()
}

#[test]
#[ignore = "the worker half of prune_survives_sigkill_at_random_points (runs in a child)"]
fn prune_kill_test_worker() {
    let Some(root) = std::env::var_os(WORKER_ROOT) else {
        return;
    };
    let store = Store::open(&root).unwrap();
    let pid = std::process::id();
    let mut rng = Rng(u64::from(pid) << 16 | 3);
    let work = Path::new(&root).with_extension(format!("work-{pid}"));
    let mut buffer = vec![0u8; 64 * 1024];
    let mut previous: Option<(Descriptor, Digest)> = None;
    for round in 0u64.. {
        let layer = random_layer(&store, &work.join(round.to_string()), &mut rng, &mut buffer);
        let layers: Vec<_> = previous.iter().chain([&layer]).cloned().collect();
        let config = ImageConfig {
            rootfs: RootFs {
                diff_ids: layers.iter().map(|(_, diff_id)| diff_id.clone()).collect(),
                ..RootFs::default()
            },
            history: vec![History::default(); layers.len()],
            ..ImageConfig::default()
        };
        let descriptors = layers.iter().map(|(blob, _)| blob.clone()).collect();
        let image = store.write_image(&config, descriptors).unwrap();
        // Three names, retagged in turn: older images become unnamed and prunable.
        let name = format!("kill/{}:latest", round % 3);
        store.tag_image(&name, &image.descriptor.digest).unwrap();
        let record: String = layers
            .iter()
            .map(|(blob, diff_id)| format!("{diff_id} {}\n", blob.digest))
            .collect();
        let staged = store.tmp_dir().join(format!("record-{pid}-{round}"));
        fs::write(&staged, record).unwrap();
        fs::rename(&staged, store.records_dir().join(format!("{pid}-{round}"))).unwrap();
        previous = Some(layer);
        let options = PruneOptions {
            all: round % 4 == 1,
            until: None,
            keep_storage: (round % 4 == 2).then_some(256 * 1024),
            record_references: test_references,
            download_references: test_references,
        };
        store.prune(&options).unwrap();
    }
}

/// What the prune worker's records and images need is all there.
fn check_images_and_records(root: &Path) {
    let store = Store::open(root).unwrap();
    for (name, manifest) in store.images().unwrap() {
        let image = store
            .read_image(&manifest)
            .unwrap_or_else(|e| panic!("{name} after SIGKILL: {e}"));
        for (layer, diff_id) in image.layers_with_diff_ids() {
            assert!(
                store.has_blob(&layer.digest),
                "{name}: layer {diff_id} is gone"
            );
        }
    }
    for entry in fs::read_dir(store.records_dir()).unwrap() {
        let path = entry.unwrap().path();
        let references = test_references(&fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("torn record {path:?}: {e}"));
        for reference in references {
            let RecordRef::Layer { diff_id, blob } = reference else {
                continue;
            };
            assert!(
                store.has_blob(&blob) || store.snapshot(&diff_id).is_some(),
                "record {path:?} names layer {diff_id}, which is gone"
            );
        }
    }
}

fn check_store(root: &Path) -> (usize, usize, usize) {
    let store = Store::open(root).unwrap();
    let blobs = store.list_blobs().unwrap();
    for digest in &blobs {
        store
            .verify_blob(digest, None)
            .unwrap_or_else(|e| panic!("partial or corrupt blob after SIGKILL: {e}"));
    }
    let names = store.images().unwrap();
    for (name, digest) in &names {
        assert!(store.has_blob(digest), "{name} points at missing {digest}");
    }
    let mut snapshots = 0;
    for entry in fs::read_dir(store.snapshots_dir()).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_dir() {
            continue;
        }
        let expected =
            Digest::parse(&format!("sha256:{}", entry.file_name().to_str().unwrap())).unwrap();
        let mut sink = HashingWriter::new(std::io::sink());
        write_tar(&mut sink, &entry.path(), &LayerChanges::default(), None).unwrap();
        let (_, actual, _) = sink.finish();
        assert_eq!(actual, expected, "incomplete snapshot {:?}", entry.path());
        snapshots += 1;
    }
    (blobs.len(), names.len(), snapshots)
}

/// Runs `worker` in a child on `root` and kills it at a random time, `ROUNDS` times, calling
/// `check` after each kill.
fn kill_at_random_points(root: &Path, worker: &str, mut check: impl FnMut()) {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("kill test seed {seed}");
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().unwrap();
    for _ in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", worker, "--ignored", "--test-threads=1"])
            .env(WORKER_ROOT, root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50 + rng.below(600)));
        child.kill().unwrap();
        child.wait().unwrap();
        check();
    }
}

#[test]
fn store_survives_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut totals = (0, 0, 0);
    kill_at_random_points(&root, "kill_test_worker", || totals = check_store(&root));
    let (blobs, names, snapshots) = totals;
    eprintln!(
        "after {ROUNDS} kills: {blobs} blobs, {names} names, {snapshots} snapshots, all whole"
    );
    assert!(
        blobs > 0 && names > 0,
        "the worker never got to write anything"
    );
}

#[test]
fn prune_survives_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut names = 0;
    kill_at_random_points(&root, "prune_kill_test_worker", || {
        names = check_store(&root).1;
        check_images_and_records(&root);
    });
    assert!(names > 0, "the worker never got to write anything");
    let store = Store::open(&root).unwrap();
    let options = PruneOptions {
        all: false,
        until: None,
        keep_storage: None,
        record_references: test_references,
        download_references: test_references,
    };
    store.prune(&options).unwrap();
    check_images_and_records(&root);
    let tmp: Vec<_> = fs::read_dir(store.tmp_dir()).unwrap().collect();
    assert!(
        tmp.is_empty(),
        "a prune after the kills collects every leftover: {tmp:?}"
    );
}
