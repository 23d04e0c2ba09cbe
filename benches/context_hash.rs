//! Build-context hashing on the benchmark's big context (case c: 20,000 small files and a
//! 200 MiB blob, made by `../shared/bench/cases/c-bigctx/gen-context.sh`), against
//! `find DIR -type f | xargs sha256sum` on the same tree, measured in the same run:
//! - cold: an empty stat cache, so every file is read and hashed;
//! - warm: the no-change rehash of a rebuild (walk + stat + cache lookups, no file reads), the
//!   median and best of several runs after one settling run;
//! - one file changed, as `touch-one.sh` does for case d.
//!
//! `cargo bench --bench context_hash` generates the context in a temporary directory, or uses
//! `IMGB_BENCH_CONTEXT` as it is. Without `--bench` (as `cargo test --all-targets` runs it) it
//! does a smoke run on a context of 15 files. The generator comes from the shared reference
//! directory (`IMGB_SHARED_DIR`, default `../shared`); without it the benchmark is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imgb_builder::context::{HashedContext, IncludeAll, hash_context};

const WARM_RUNS: usize = 15;

fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("IMGB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    dir.is_dir().then_some(dir)
}

/// Runs `gen-context.sh` into `dir`; the smoke run shrinks it through the script's knobs.
fn generate(generator: &Path, dir: &Path, benchmarking: bool) {
    let mut command = Command::new("bash");
    command.arg(generator).arg(dir);
    if !benchmarking {
        command
            .env("NDIRS", "3")
            .env("NFILES", "5")
            .env("BIG_MB", "1");
    }
    let status = command.status().expect("run gen-context.sh");
    assert!(status.success(), "gen-context.sh failed: {status}");
}

fn hash(dir: &Path, cache: &Path) -> (Duration, HashedContext) {
    let start = Instant::now();
    let context = hash_context(dir, &IncludeAll, Some(cache)).expect("hash context");
    (start.elapsed(), context)
}

fn sha256sum_everything(dir: &Path) -> Duration {
    let start = Instant::now();
    let status = Command::new("sh")
        .args([
            "-c",
            "find \"$1\" -type f -print0 | xargs -0 sha256sum >/dev/null",
            "sh",
        ])
        .arg(dir)
        .status()
        .expect("run find | xargs sha256sum");
    assert!(status.success(), "find | xargs sha256sum failed: {status}");
    start.elapsed()
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn report(label: &str, duration: Duration, context: &HashedContext) {
    let stats = context.stats();
    println!(
        "{label:<34} {:>9.1} ms   {:>6} files read, {:>6.1} MiB, {:>6} cache hits",
        milliseconds(duration),
        stats.files_hashed,
        stats.bytes_hashed as f64 / (1024.0 * 1024.0),
        stats.cache_hits,
    );
}

fn main() {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let scratch = tempfile::tempdir().expect("temporary directory");
    let given = std::env::var_os("IMGB_BENCH_CONTEXT").map(PathBuf::from);
    let context_dir = match &given {
        Some(dir) => dir.clone(),
        None => {
            let Some(shared) = shared_dir() else {
                println!("notice: ../shared is absent; skipping (set IMGB_SHARED_DIR to run)");
                return;
            };
            let dir = scratch.path().join("context");
            generate(
                &shared.join("bench/cases/c-bigctx/gen-context.sh"),
                &dir,
                benchmarking,
            );
            dir
        }
    };
    let cache = scratch.path().join("stat-cache");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // The first pass reads the tree into the page cache; every measurement then reads memory.
    sha256sum_everything(&context_dir);
    let baseline = sha256sum_everything(&context_dir);

    let (cold_time, cold) = hash(&context_dir, &cache);
    println!(
        "context {}: {} entries, {} files, {cores} cores\n",
        context_dir.display(),
        cold.stats().entries,
        cold.stats().files
    );
    println!(
        "{:<34} {:>9.1} ms",
        "find | xargs sha256sum",
        milliseconds(baseline)
    );
    report("imgb cold (empty stat cache)", cold_time, &cold);

    // Files written moments ago are re-read once (racy); after that a rehash reads nothing.
    let (settling_time, settling) = hash(&context_dir, &cache);
    report("imgb first warm (settling)", settling_time, &settling);
    let mut warm_times = Vec::with_capacity(WARM_RUNS);
    let mut last = settling;
    for _ in 0..WARM_RUNS {
        let (time, context) = hash(&context_dir, &cache);
        assert_eq!(
            context.digest(),
            cold.digest(),
            "a no-change rehash changed the digest"
        );
        warm_times.push(time);
        last = context;
    }
    warm_times.sort();
    let median = warm_times[warm_times.len() / 2];
    report(&format!("imgb warm (median of {WARM_RUNS})"), median, &last);
    report("imgb warm (best)", warm_times[0], &last);

    let start = Instant::now();
    let selection = last.select(&["big/", "small/"], None).expect("select");
    println!(
        "{:<34} {:>9.3} ms   {} sources, {} entries",
        "select big/ small/ (COPY keys)",
        milliseconds(start.elapsed()),
        selection.sources.len(),
        selection
            .sources
            .iter()
            .map(|source| source.contents.len())
            .sum::<usize>()
    );

    // Only a context generated here is edited, never one the caller passed.
    let changed = context_dir.join("small/d002/f004.txt");
    if given.is_none() && changed.is_file() {
        std::fs::write(&changed, "edited by the context_hash benchmark\n").expect("edit one file");
        let (time, context) = hash(&context_dir, &cache);
        report("imgb one file changed", time, &context);
        assert_ne!(context.digest(), cold.digest());
    }
    println!(
        "\nwarm median vs cold: {:.1}x faster; vs find | xargs sha256sum: {:.1}x faster",
        cold_time.as_secs_f64() / median.as_secs_f64(),
        baseline.as_secs_f64() / median.as_secs_f64()
    );
}
