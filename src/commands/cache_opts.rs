//! The `--cache-to` / `--cache-from` values of `imgb build`, in buildx's CSV syntax:
//!
//! - `type=local,dest=DIR` / `type=local,src=DIR`: a cache directory (an OCI layout);
//! - `type=registry,ref=NAME[:TAG]`: a cache manifest in a registry (`--cache-from NAME` alone
//!   means the same, as in buildx);
//! - `type=inline` (to only): the cache metadata in the built image's config, read back with
//!   `--cache-from type=registry,ref=IMAGE`;
//! - `--cache-to` also takes `mode=min|max` (min, the default: the steps of the exported
//!   image's layers; max: every step of every stage) and `compression=gzip|zstd|uncompressed`,
//!   and (not with inline) `cache-mounts=true` to carry `RUN --mount=type=cache` contents, each
//!   mount and all together capped by `cache-mounts-max=SIZE` (default 1GiB).
//!
//! Keys are case-insensitive; an unknown key is an error naming the valid ones, as `-o` does.

use super::prune::parse_size;
use anyhow::{Result, anyhow, bail};
use imgb_builder::solve::ExportMode;
use imgb_cache::build_cache::CacheLocation;
use imgb_cache::output::{compression_named, split_csv};
use imgb_cache::{Compression, Reference};
use std::path::PathBuf;

/// Where `--cache-to` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheDestination {
    Location(CacheLocation),
    /// Into the built image's config.
    Inline,
}

/// A parsed `--cache-to` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExportSpec {
    pub destination: CacheDestination,
    pub mode: ExportMode,
    /// Layers are exported as stored unless this asks for another compression.
    pub compression: Option<Compression>,
    /// With `cache-mounts=true`: the cap in bytes for each cache mount and for all together.
    pub cache_mounts_max: Option<u64>,
}

/// The default `cache-mounts-max`.
pub const DEFAULT_CACHE_MOUNTS_MAX: u64 = 1 << 30;

/// The `key=value` fields of one value, keys lowercased, checked against `allowed`.
fn fields(option: &str, spec: &str, allowed: &[&str]) -> Result<Vec<(String, String)>> {
    let fields = split_csv(spec).map_err(|reason| anyhow!("{option} {spec}: {reason}"))?;
    fields
        .into_iter()
        .map(|field| {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| anyhow!("{option} {spec}: field {field:?} is not key=value"))?;
            let key = key.trim().to_ascii_lowercase();
            if !allowed.contains(&key.as_str()) {
                bail!(
                    "{option} {spec}: unknown key {key:?} (valid keys: {})",
                    allowed.join(", ")
                );
            }
            Ok((key, value.to_string()))
        })
        .collect()
}

fn value<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// The location named by `type=` and its path or reference field (`path_key`).
fn location(
    option: &str,
    spec: &str,
    fields: &[(String, String)],
    path_key: &str,
) -> Result<CacheLocation> {
    match value(fields, "type") {
        Some("local") => {
            let dir = value(fields, path_key)
                .filter(|dir| !dir.is_empty())
                .ok_or_else(|| anyhow!("{option} {spec}: type=local needs {path_key}=DIR"))?;
            Ok(CacheLocation::Directory(PathBuf::from(dir)))
        }
        Some("registry") => {
            let name = value(fields, "ref")
                .ok_or_else(|| anyhow!("{option} {spec}: type=registry needs ref=NAME[:TAG]"))?;
            let reference = Reference::parse(name)
                .map_err(|error| anyhow!("{option} {spec}: ref={name}: {error}"))?;
            Ok(CacheLocation::Registry(reference))
        }
        Some(other) => {
            bail!("{option} {spec}: unknown type {other:?} (valid: local, registry, inline)")
        }
        None => bail!("{option} {spec}: missing type="),
    }
}

pub fn parse_cache_from(spec: &str) -> Result<CacheLocation> {
    if !spec.contains('=') {
        let reference =
            Reference::parse(spec).map_err(|error| anyhow!("--cache-from {spec}: {error}"))?;
        return Ok(CacheLocation::Registry(reference));
    }
    let fields = fields("--cache-from", spec, &["type", "src", "ref"])?;
    location("--cache-from", spec, &fields, "src")
}

pub fn parse_cache_to(spec: &str) -> Result<CacheExportSpec> {
    const KEYS: &[&str] = &[
        "type",
        "dest",
        "ref",
        "mode",
        "compression",
        "cache-mounts",
        "cache-mounts-max",
    ];
    let fields = fields("--cache-to", spec, KEYS)?;
    let destination = if value(&fields, "type") == Some("inline") {
        CacheDestination::Inline
    } else {
        CacheDestination::Location(location("--cache-to", spec, &fields, "dest")?)
    };
    let mode = match value(&fields, "mode") {
        None | Some("min") => ExportMode::Min,
        Some("max") => ExportMode::Max,
        Some(other) => bail!("--cache-to {spec}: mode={other:?} (valid: min, max)"),
    };
    if mode == ExportMode::Max && destination == CacheDestination::Inline {
        bail!("--cache-to {spec}: type=inline only holds the image's own layers (mode=min)");
    }
    let compression = value(&fields, "compression")
        .map(|name| {
            compression_named(name).ok_or_else(|| {
                anyhow!("--cache-to {spec}: compression={name:?} (valid: gzip, zstd, uncompressed)")
            })
        })
        .transpose()?;
    let cache_mounts = match value(&fields, "cache-mounts") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => bail!("--cache-to {spec}: cache-mounts={other:?} (valid: true, false)"),
    };
    let cap = value(&fields, "cache-mounts-max")
        .map(|size| parse_size(size).map_err(|reason| anyhow!("--cache-to {spec}: {reason}")))
        .transpose()?;
    if cap.is_some() && !cache_mounts {
        bail!("--cache-to {spec}: cache-mounts-max needs cache-mounts=true");
    }
    if cache_mounts && destination == CacheDestination::Inline {
        bail!(
            "--cache-to {spec}: type=inline cannot hold cache mounts (hint: use type=registry \
             or type=local)"
        );
    }
    Ok(CacheExportSpec {
        destination,
        mode,
        compression,
        cache_mounts_max: cache_mounts.then(|| cap.unwrap_or(DEFAULT_CACHE_MOUNTS_MAX)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_cache_specs_parse_every_key() {
        let spec = parse_cache_to("type=local,dest=/c,mode=max,compression=zstd").unwrap();
        assert_eq!(
            spec.destination,
            CacheDestination::Location(CacheLocation::Directory("/c".into()))
        );
        assert_eq!(spec.mode, ExportMode::Max);
        assert_eq!(spec.compression, Some(Compression::ZSTD_DEFAULT));
        assert_eq!(
            parse_cache_from("TYPE=local,Src=/c").unwrap(),
            CacheLocation::Directory("/c".into())
        );
        let inline = parse_cache_to("type=inline").unwrap();
        assert_eq!(inline.destination, CacheDestination::Inline);
        assert_eq!(inline.mode, ExportMode::Min);
        assert_eq!(inline.cache_mounts_max, None);
        let mounts = parse_cache_to("type=local,dest=/c,cache-mounts=true").unwrap();
        assert_eq!(mounts.cache_mounts_max, Some(DEFAULT_CACHE_MOUNTS_MAX));
        let capped =
            parse_cache_to("type=registry,ref=r/c,cache-mounts=true,cache-mounts-max=10MiB")
                .unwrap();
        assert_eq!(capped.cache_mounts_max, Some(10 << 20));
    }

    #[test]
    fn bad_cache_specs_name_the_problem() {
        for (spec, expected) in [
            ("type=local", "dest=DIR"),
            ("type=local,dest=/c,mode=all", "mode"),
            ("type=local,dest=/c,compression=lz4", "compression"),
            ("type=local,dest=/c,depth=1", "valid keys"),
            ("type=s3,dest=/c", "unknown type"),
            ("dest=/c", "missing type"),
            ("type=inline,mode=max", "inline"),
            ("type=inline,cache-mounts=true", "cannot hold cache mounts"),
            ("type=local,dest=/c,cache-mounts=yes", "cache-mounts="),
            (
                "type=local,dest=/c,cache-mounts-max=1G",
                "needs cache-mounts=true",
            ),
            (
                "type=local,dest=/c,cache-mounts=true,cache-mounts-max=lots",
                "invalid size",
            ),
        ] {
            let error = parse_cache_to(spec).unwrap_err().to_string();
            assert!(error.contains(expected), "{spec}: {error}");
        }
        let error = parse_cache_from("type=local,dest=/c")
            .unwrap_err()
            .to_string();
        assert!(error.contains("valid keys: type, src, ref"), "{error}");
        let registry =
            CacheLocation::Registry(Reference::parse("127.0.0.1:5000/app:cache").unwrap());
        assert_eq!(
            parse_cache_from("type=registry,ref=127.0.0.1:5000/app:cache").unwrap(),
            registry
        );
        assert_eq!(
            parse_cache_from("127.0.0.1:5000/app:cache").unwrap(),
            registry
        );
        assert!(
            parse_cache_to("type=registry")
                .unwrap_err()
                .to_string()
                .contains("ref=")
        );
    }
}
