//! Layer writing throughput: imgb's tar + compression + two sha256 streams into the blob store,
//! against `tar | gzip` and `tar | zstd -T0` on the same tree, measured in the same run.
//!
//! `cargo bench --bench layer_write` generates a 1 GiB tree (`IMGB_BENCH_MIB` shrinks or grows
//! it) of mixed small and large files, half compressible text and half random bytes, and
//! reports for each method the wall-clock MiB/s and the MiB per CPU-second ("per core": what
//! one fully busy core gets through), then imgb's ratios to the shell pipelines. Without
//! `--bench` (as `cargo test --all-targets` runs it) it does a 4 MiB smoke run.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use imgb_cache::Store;
use imgb_cache::compress::Compression;
use imgb_cache::layer::{LayerChanges, LayerOptions, write_layer};

const MIB: u64 = 1 << 20;
/// `/proc` reports CPU times in USER_HZ, fixed at 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
struct Measurement {
    method: String,
    wall_seconds: f64,
    cpu_seconds: f64,
    output_bytes: u64,
}

impl Measurement {
    fn mib_per_second(&self, input: u64) -> f64 {
        input as f64 / MIB as f64 / self.wall_seconds.max(1e-9)
    }

    fn mib_per_cpu_second(&self, input: u64) -> f64 {
        input as f64 / MIB as f64 / self.cpu_seconds.max(1e-9)
    }
}

/// (own user+system, waited-for children's user+system) CPU seconds of this process.
fn cpu_times() -> (f64, f64) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name; utime is field 14 overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0) / TICKS_PER_SECOND;
    (field(14) + field(15), field(16) + field(17))
}

fn measure(method: &str, run: impl FnOnce() -> u64) -> Measurement {
    let (own_before, children_before) = cpu_times();
    let start = Instant::now();
    let output_bytes = run();
    let wall_seconds = start.elapsed().as_secs_f64();
    let (own_after, children_after) = cpu_times();
    Measurement {
        method: method.to_owned(),
        wall_seconds,
        cpu_seconds: (own_after - own_before) + (children_after - children_before),
        output_bytes,
    }
}

/// xorshift64*, so the tree is the same in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Fills `buffer`: text-like (compressible) when `text`, else random.
fn fill(rng: &mut Rng, buffer: &mut [u8], text: bool) {
    if text {
        let mut line = 0u64;
        let mut written = 0;
        while written < buffer.len() {
            line = line.wrapping_add(rng.next() % 7);
            let entry = format!("{line:08} key_{} = value {}\n", rng.next() % 97, line % 13);
            let n = entry.len().min(buffer.len() - written);
            buffer[written..written + n].copy_from_slice(&entry.as_bytes()[..n]);
            written += n;
        }
    } else {
        for chunk in buffer.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
        }
    }
}

/// A tree of about `total` bytes: 30% in files of 1–64 KiB, the rest in files of 1–32 MiB.
fn generate_tree(root: &Path, total: u64) -> (u64, usize) {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut buffer = vec![0u8; 32 * MIB as usize];
    let (mut written, mut files) = (0u64, 0usize);
    let small_budget = total * 3 / 10;
    while written < total {
        let small = written < small_budget;
        let size = if small {
            1024 + rng.next() % (63 * 1024)
        } else {
            MIB + rng.next() % (31 * MIB)
        }
        .min(total - written)
        .max(1);
        let dir = root.join(format!("d{:03}", files % 211));
        fs::create_dir_all(&dir).expect("create bench directory");
        let content = &mut buffer[..size as usize];
        fill(&mut rng, content, files % 2 == 0);
        fs::write(dir.join(format!("f{files:06}")), &*content).expect("write bench file");
        written += size;
        files += 1;
    }
    (written, files)
}

fn shell_pipeline(tree: &Path, compressor: &str, out: &Path) -> u64 {
    let script = format!(
        "tar -C '{}' -cf - . | {compressor} > '{}'",
        tree.display(),
        out.display()
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("run sh");
    assert!(status.success(), "{script} failed");
    fs::metadata(out).map_or(0, |meta| meta.len())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|status| status.success())
}

fn main() {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let mib: u64 = match benchmarking {
        true => std::env::var("IMGB_BENCH_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024),
        false => 4,
    };
    let scratch = tempfile::tempdir().expect("temporary directory");
    let tree = scratch.path().join("tree");
    let (input, files) = generate_tree(&tree, mib * MIB);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Warm the page cache so every method reads the tree from memory.
    shell_pipeline(&tree, "cat", &scratch.path().join("warm.tar"));

    let mut results = Vec::new();
    for (method, compression) in [
        ("imgb tar+sha256 (uncompressed)", Compression::None),
        ("imgb gzip -6", Compression::GZIP_DEFAULT),
        ("imgb zstd -3", Compression::ZSTD_DEFAULT),
    ] {
        let store = Store::open(scratch.path().join(format!("store-{}", results.len())))
            .expect("open store");
        let options = LayerOptions {
            compression,
            source_date_epoch: Some(0),
            threads: 0,
        };
        results.push(measure(method, || {
            write_layer(&store, &tree, &LayerChanges::default(), &options)
                .expect("write layer")
                .blob
                .size
        }));
    }
    for (method, tool, command) in [
        ("tar | gzip -6", "gzip", "gzip -6"),
        ("tar | zstd -T0 -3", "zstd", "zstd -q -T0 -3"),
    ] {
        if !have(tool) {
            println!("notice: {tool} is not installed; skipping `{method}`");
            continue;
        }
        let out = scratch.path().join(format!("baseline-{tool}"));
        results.push(measure(method, || shell_pipeline(&tree, command, &out)));
    }

    let mut report = std::io::stdout().lock();
    let _ = writeln!(
        report,
        "layer write: {:.0} MiB in {files} files, {cores} cores\n\n{:<32} {:>8} {:>9} {:>12} {:>7}",
        input as f64 / MIB as f64,
        "method",
        "wall s",
        "MiB/s",
        "MiB/cpu-s",
        "out/in"
    );
    for m in &results {
        let _ = writeln!(
            report,
            "{:<32} {:>8.2} {:>9.1} {:>12.1} {:>7.3}",
            m.method,
            m.wall_seconds,
            m.mib_per_second(input),
            m.mib_per_cpu_second(input),
            m.output_bytes as f64 / input as f64
        );
    }
    let find = |method: &str| results.iter().find(|m| m.method == method);
    let _ = writeln!(report, "\nimgb vs the shell pipeline on the same tree:");
    for (ours, theirs) in [
        ("imgb gzip -6", "tar | gzip -6"),
        ("imgb zstd -3", "tar | zstd -T0 -3"),
    ] {
        if let (Some(ours), Some(theirs)) = (find(ours), find(theirs)) {
            let _ = writeln!(
                report,
                "  {ours_name} / {theirs_name}: {:.2}x MiB/s, {:.2}x MiB per core-second",
                ours.mib_per_second(input) / theirs.mib_per_second(input),
                ours.mib_per_cpu_second(input) / theirs.mib_per_cpu_second(input),
                ours_name = ours.method,
                theirs_name = theirs.method,
            );
        }
    }
}
