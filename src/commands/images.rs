//! `imgb load`, `imgb save`, `imgb images`, `imgb inspect` and `imgb rm`: the image store from
//! the command line. The work is done by `imgb-cache`; this module parses arguments, opens the
//! state directory and prints what happened (results to stdout, progress notes to stderr).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use imgb_cache::oci::{History, ImageConfig};
use imgb_cache::{OutputSpec, Reference, StoredImage};

use crate::commands::prune::estimate_default_prune;
use crate::commands::{open_leased_store, open_store};
use serde_json::{Value, json};

use crate::commands::registry::{RegistryArgs, fetch_layers};

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The archive: an OCI image layout tar or a docker-archive tar, optionally gzip- or
    /// zstd-compressed (default: standard input).
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// The image: a name, `name@sha256:...`, `sha256:...` or an image ID prefix.
    image: String,
    /// Where and how, as `docker buildx build -o`: `type=oci|docker|local|tar,dest=PATH`
    /// plus `name=`, `compression=`, `compression-level=`, `force-compression=`,
    /// `oci-mediatypes=`, `tar=false` (oci).
    #[arg(short, long, value_name = "SPEC")]
    output: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    /// Print only the names.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct DuArgs {
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image: a name, `name@sha256:...`, `sha256:...` or an image ID prefix.
    image: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Names to remove; a digest or ID prefix removes every name of that image.
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn load(root: Option<PathBuf>, args: &LoadArgs) -> Result<ExitCode> {
    let store = open_leased_store(root, "load")?;
    let input: Box<dyn Read> = match &args.input {
        Some(path) if path.as_os_str() != "-" => Box::new(BufReader::new(
            File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        _ => Box::new(io::stdin().lock()),
    };
    let source = args
        .input
        .as_ref()
        .map_or_else(|| "standard input".to_owned(), |p| p.display().to_string());
    let loaded = imgb_cache::load_archive(&store, input)
        .with_context(|| format!("loading images from {source}"))?;
    if !args.quiet {
        for image in &loaded {
            if image.names.is_empty() {
                println!("Loaded image ID: {}", image.image.descriptor.digest);
            }
            for name in &image.names {
                println!("Loaded image: {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn save(root: Option<PathBuf>, args: &SaveArgs) -> Result<ExitCode> {
    let spec = OutputSpec::parse(&args.output)?;
    let store = open_leased_store(root, "save")?;
    let (name, image) = store.find_image(&args.image)?;
    let default_names: Vec<Reference> = name.filter(|n| n.digest().is_none()).into_iter().collect();
    fetch_layers(&args.registry, &store, &image)?;
    let report = imgb_cache::export(&store, &image, &default_names, &spec)
        .with_context(|| format!("exporting {} to {}", args.image, spec.dest))?;
    if let Some(manifest) = report.manifest {
        eprintln!(
            "exported {} ({}) to {}",
            args.image, manifest.digest, report.dest
        );
    } else {
        eprintln!(
            "exported the root filesystem of {} to {}",
            args.image, report.dest
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `imgb du`: disk usage of the state directory by kind, and what `imgb prune` would reclaim.
pub fn du(root: Option<PathBuf>, args: &DuArgs) -> Result<ExitCode> {
    let store = open_store(root)?;
    let usage = store
        .usage()
        .with_context(|| format!("measuring {}", store.root().display()))?;
    let estimate = estimate_default_prune(&store)?;
    let reclaimable = |kind: &str| -> u64 {
        estimate
            .removed
            .iter()
            .filter(|item| item.kind == kind)
            .map(|item| item.bytes)
            .sum()
    };
    let total: u64 = usage.iter().map(|(_, kind)| kind.bytes).sum();
    match args.format {
        ListFormat::Json => {
            let kinds: Vec<Value> = usage
                .iter()
                .map(|(name, kind)| {
                    json!({
                        "kind": name,
                        "items": kind.items,
                        "bytes": kind.bytes,
                        "reclaimable_bytes": reclaimable(name),
                    })
                })
                .collect();
            let document = json!({
                "kinds": kinds,
                "total_bytes": total,
                "reclaimable_bytes": estimate.reclaimed(),
            });
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        ListFormat::Table => {
            let mut rows: Vec<[String; 4]> = usage
                .iter()
                .map(|(name, kind)| {
                    [
                        name.to_string(),
                        kind.items.to_string(),
                        human_size(kind.bytes),
                        human_size(reclaimable(name)),
                    ]
                })
                .collect();
            rows.push([
                "total".to_string(),
                String::new(),
                human_size(total),
                human_size(estimate.reclaimed()),
            ]);
            print_table(["KIND", "ITEMS", "SIZE", "RECLAIMABLE"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn images(root: Option<PathBuf>, args: &ImagesArgs) -> Result<ExitCode> {
    let store = open_store(root)?;
    let summaries = store.image_summaries()?;
    if args.quiet {
        for summary in &summaries {
            println!("{}", summary.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format {
        ListFormat::Json => {
            let rows: Vec<Value> = summaries
                .iter()
                .map(|summary| {
                    json!({
                        "name": summary.name,
                        "digest": summary.image.descriptor.digest,
                        "size": summary.image.content_size(),
                        "created": summary.image.config.created,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        ListFormat::Table => {
            let rows: Vec<[String; 4]> = summaries
                .iter()
                .map(|summary| {
                    [
                        summary.name.clone(),
                        summary.image.descriptor.digest.hex()[..12].to_owned(),
                        human_size(summary.image.content_size()),
                        summary
                            .image
                            .config
                            .created
                            .clone()
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(["NAME", "DIGEST", "SIZE", "CREATED"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(root: Option<PathBuf>, args: &InspectArgs) -> Result<ExitCode> {
    let store = open_store(root)?;
    let (name, image) = store.find_image(&args.image)?;
    let manifest: Value = serde_json::from_slice(&store.read_blob(&image.descriptor.digest)?)?;
    let config: Value = serde_json::from_slice(&store.read_config_blob(&image.manifest.config)?)?;
    let document = json!({
        "name": name.map(|n| n.to_string()),
        "digest": image.descriptor.digest,
        "mediaType": image.descriptor.media_type,
        "size": image.descriptor.size,
        "manifest": manifest,
        "config": config,
        "history": history_with_layers(&image),
    });
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(ExitCode::SUCCESS)
}

pub fn rm(root: Option<PathBuf>, args: &RmArgs) -> Result<ExitCode> {
    let store = open_leased_store(root, "rm")?;
    for query in &args.images {
        let removed = store.remove_image(query)?;
        if removed.is_empty() {
            bail!("{query} has no name to remove");
        }
        for name in removed {
            println!("Untagged: {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The history, each step that made a layer paired with that layer (as `docker history`).
fn history_with_layers(image: &StoredImage) -> Vec<Value> {
    let ImageConfig { history, .. } = &image.config;
    let mut layers = image.layers_with_diff_ids();
    history
        .iter()
        .map(|step: &History| {
            let mut entry = serde_json::to_value(step).unwrap_or(Value::Null);
            if !step.empty_layer
                && let (Some((layer, diff_id)), Value::Object(map)) = (layers.next(), &mut entry)
            {
                map.insert(
                    "layer".into(),
                    json!({"digest": layer.digest, "diffId": diff_id, "size": layer.size}),
                );
            }
            entry
        })
        .collect()
}

/// Three significant digits in decimal units, as `docker images` shows sizes.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = match value {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    let number = format!("{value:.decimals$}");
    let number = match number.contains('.') {
        true => number.trim_end_matches('0').trim_end_matches('.'),
        false => &number,
    };
    format!("{number}{}", UNITS[unit])
}

pub(crate) fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_decimal_units_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(2_140_000), "2.14MB");
        assert_eq!(human_size(12_345), "12.3kB");
        assert_eq!(human_size(5_000_000_000), "5GB");
    }
}
