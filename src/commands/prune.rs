//! `imgb prune`: removes build cache, with `docker buildx prune`'s flags and units.
//!
//! - default: cache not part of a named image (records, the layers only they use, dangling
//!   blobs and snapshots, leftovers of interrupted processes);
//! - `--all`: all build cache: every record, cache mount and context stat cache as well.
//!   Named images always stay whole; `imgb rm` removes names, and the next prune their content;
//! - `--filter until=24h`: only what was last used longer ago than that (Go duration syntax);
//! - `--keep-storage 10GB`: least recently used first, until the state directory fits. Sizes
//!   are binary as in buildx (`docker/go-units.RAMInBytes`): `10GB` = `10GiB` = 10 × 2³⁰.
//!
//! The work and its safety against concurrent builds are in `imgb_cache::prune`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow, bail};
use clap::Args;
use imgb_builder::http_source::download_references;
use imgb_builder::solve::record_references;
use imgb_cache::{PruneOptions, PruneReport, Store};
use serde_json::{Value, json};

use crate::commands::images::{ListFormat, human_size, print_table};
use crate::commands::open_store;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove all build cache (records, cache mounts, context stat caches), not only what
    /// named images do not use. Images stay; `imgb rm` removes them.
    #[arg(short, long)]
    all: bool,
    /// `until=DURATION` (e.g. `24h`, `90m`): only remove what was last used before then.
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// Keep this much (e.g. `10GB`, `512MiB`; binary units), removing the least recently used
    /// first.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    keep_storage: Option<u64>,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

pub fn prune(root: Option<PathBuf>, args: &PruneArgs) -> Result<ExitCode> {
    let mut options = default_options();
    options.all = args.all;
    options.keep_storage = args.keep_storage;
    for filter in &args.filters {
        match filter.split_once('=') {
            Some(("until", duration)) => {
                let duration = parse_duration(duration)
                    .map_err(|error| anyhow!("--filter {filter}: {error}"))?;
                options.until = Some(duration);
            }
            _ => {
                bail!("--filter {filter}: unsupported filter (hint: imgb supports until=DURATION)")
            }
        }
    }
    let store = open_store(root)?;
    if !args.force && !confirmed(args.all)? {
        return Ok(ExitCode::SUCCESS);
    }
    let report = store.prune(&options)?;
    print_report(&report, args.format)?;
    Ok(ExitCode::SUCCESS)
}

/// What `imgb prune` without flags would reclaim now (for `imgb du`).
pub(crate) fn estimate_default_prune(store: &Store) -> Result<PruneReport> {
    Ok(store.estimate_prune(&default_options())?)
}

pub(crate) fn default_options() -> PruneOptions {
    PruneOptions {
        all: false,
        until: None,
        keep_storage: None,
        record_references,
        download_references,
    }
}

/// buildx's question; anything but `y` declines.
fn confirmed(all: bool) -> Result<bool> {
    let what = if all { "all" } else { "all dangling" };
    eprint!(
        "WARNING! This will remove {what} build cache. Are you sure you want to continue? [y/N] "
    );
    std::io::stderr().flush()?;
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!();
    }
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y"))
}

fn print_report(report: &PruneReport, format: ListFormat) -> Result<()> {
    let now = SystemTime::now();
    match format {
        ListFormat::Json => {
            let removed: Vec<Value> = report
                .removed
                .iter()
                .map(|item| {
                    let last_used = item
                        .last_used
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    json!({
                        "kind": item.kind,
                        "id": item.id,
                        "bytes": item.bytes,
                        "last_used_unix": last_used.as_secs(),
                    })
                })
                .collect();
            let document = json!({"removed": removed, "reclaimed_bytes": report.reclaimed()});
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        ListFormat::Table => {
            if !report.removed.is_empty() {
                let rows: Vec<[String; 4]> = report
                    .removed
                    .iter()
                    .map(|item| {
                        let id = item.id.strip_prefix("sha256:").unwrap_or(&item.id);
                        [
                            item.kind.to_string(),
                            id.chars().take(25).collect(),
                            human_size(item.bytes),
                            ago(now.duration_since(item.last_used).unwrap_or_default()),
                        ]
                    })
                    .collect();
                print_table(["KIND", "ID", "SIZE", "LAST USED"], &rows);
            }
            println!("Total: {}", human_size(report.reclaimed()));
        }
    }
    Ok(())
}

/// A rough age, as `docker` shows last-access times.
fn ago(age: Duration) -> String {
    let seconds = age.as_secs();
    match seconds {
        0..60 => "less than a minute ago".to_string(),
        60..7_200 => format!("{} minutes ago", seconds / 60),
        7_200..172_800 => format!("{} hours ago", seconds / 3_600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// A size as `docker/go-units.RAMInBytes` reads it: a decimal number, an optional space, then
/// an optional `k`/`m`/`g`/`t`/`p` with optional `i` and `b` in any case, all binary multiples.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {text:?} (expected e.g. 512MiB, 10GB or 1073741824)");
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    if !number.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let (prefix, rest) = unit.split_at(unit.len().min(1));
    let power = match prefix {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return Err(invalid()),
    };
    if !(rest.is_empty() || (power > 0 && rest == "i")) {
        return Err(invalid());
    }
    let bytes = value * 1024f64.powi(power);
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

/// A Go `time.ParseDuration` string, non-negative: `90s`, `1h30m`, `1.5h`, `0`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?} (expected e.g. 24h, 90m or 1h30m)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        seconds += value * scale;
        rest = after;
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_buildx_binary_units() {
        assert_eq!(parse_size("10GB"), Ok(10 << 30));
        assert_eq!(parse_size("10gib"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512 m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("100b"), Ok(100));
        for bad in ["", "GB", "10XB", "10ib", "-1G", "1.2.3G", "10 GB extra"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_use_go_syntax() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "24", "h", "1d", "-1h", "1h-5m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ages_are_rounded_down_to_the_largest_sensible_unit() {
        assert_eq!(ago(Duration::from_secs(5)), "less than a minute ago");
        assert_eq!(ago(Duration::from_secs(600)), "10 minutes ago");
        assert_eq!(ago(Duration::from_secs(3 * 3600)), "3 hours ago");
        assert_eq!(ago(Duration::from_secs(3 * 86_400)), "3 days ago");
    }
}
