//! The store survives `SIGKILL` at any point: a child process writes blobs, names and
//! snapshots in a loop and is killed at random times; after each kill the store opens, every
//! blob verifies (no partial blob), every name points at a stored blob, and every snapshot is
//! complete (re-archiving it gives its diffID back).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use imgb_cache::compress::Compression;
use imgb_cache::digest::HashingWriter;
use imgb_cache::layer::{LayerChanges, LayerOptions, write_layer, write_tar};
use imgb_cache::oci::Descriptor;
use imgb_cache::{Digest, Store};

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
            let source = work.join(round.to_string());
            for file in 0..rng.below(20) {
                let dir = source.join(format!("d{}", file % 5));
                fs::create_dir_all(&dir).unwrap();
                let len = (rng.below(50_000) as usize).min(buffer.len());
                rng.fill(&mut buffer[..len]);
                fs::write(dir.join(format!("f{file}")), &buffer[..len]).unwrap();
            }
            fs::create_dir_all(&source).unwrap();
            let options = LayerOptions {
                compression: Compression::GZIP_DEFAULT,
                source_date_epoch: Some(1_700_000_000),
                threads: 1,
            };
            let layer = write_layer(&store, &source, &LayerChanges::default(), &options).unwrap();
            let descriptor = Descriptor::new(layer.media_type, layer.blob.digest, layer.blob.size);
            store.ensure_snapshot(&descriptor, &layer.diff_id).unwrap();
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

#[test]
fn store_survives_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("kill test seed {seed}");
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().unwrap();
    let mut totals = (0, 0, 0);
    for _ in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_test_worker",
                "--ignored",
                "--test-threads=1",
            ])
            .env(WORKER_ROOT, &root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50 + rng.below(600)));
        child.kill().unwrap();
        child.wait().unwrap();
        totals = check_store(&root);
    }
    let (blobs, names, snapshots) = totals;
    eprintln!(
        "after {ROUNDS} kills: {blobs} blobs, {names} names, {snapshots} snapshots, all whole"
    );
    assert!(
        blobs > 0 && names > 0,
        "the worker never got to write anything"
    );
}
