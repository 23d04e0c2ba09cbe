//! The OCI image model: index, manifest, descriptor and image config, with Docker's media types.
//!
//! Own serde structs rather than the `oci-spec` crate: `oci-spec` models only the OCI side
//! (no Docker `Healthcheck`/`OnBuild`/`Shell` config fields, which Dockerfiles set), hides
//! fields behind getters/builders that make config editing verbose, and would pull in
//! `derive_builder`, `getset` and `strum` for what is a few plain structs here.
//!
//! Field names follow the image spec and Docker exactly (`created_by`, `empty_layer`,
//! `diff_ids`, `ExposedPorts`, ...). Optional values are skipped when absent so documents stay
//! minimal, maps are `BTreeMap`s, and [`canonical_json`] writes every object with its keys
//! sorted and no insignificant whitespace: the bytes (and so the digest) of a document depend
//! only on its content. Documents read from elsewhere are kept as their original bytes by the
//! store; these types are for reading them and for writing new ones.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::compress::Compression;
use crate::digest::Digest;

/// Media types imgb reads and writes.
pub mod media_type {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Deprecated by the spec but still found in the wild (Windows base layers).
    pub const OCI_LAYER_NONDISTRIBUTABLE: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const OCI_LAYER_NONDISTRIBUTABLE_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// What BuildKit writes for zstd layers under Docker media types.
    pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
    pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
}

/// Annotation keys imgb reads and writes.
pub mod annotation {
    /// The tag (or full reference) of an image in an OCI layout.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    /// The full image name, as containerd and BuildKit write it.
    pub const IMAGE_NAME: &str = "io.containerd.image.name";
    pub const CREATED: &str = "org.opencontainers.image.created";
}

/// The `imageLayoutVersion` of the `oci-layout` file.
pub const LAYOUT_VERSION: &str = "1.0.0";

/// How a layer blob is compressed, as told by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    pub fn of(compression: Compression) -> Self {
        match compression {
            Compression::None => Self::None,
            Compression::Gzip { .. } => Self::Gzip,
            Compression::Zstd { .. } => Self::Zstd,
        }
    }

    /// The compression of a layer media type, or `None` if it is not a layer type.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        use media_type::*;
        Some(match media_type {
            OCI_LAYER | OCI_LAYER_NONDISTRIBUTABLE | DOCKER_LAYER => Self::None,
            OCI_LAYER_GZIP
            | OCI_LAYER_NONDISTRIBUTABLE_GZIP
            | DOCKER_LAYER_GZIP
            | DOCKER_FOREIGN_LAYER_GZIP => Self::Gzip,
            OCI_LAYER_ZSTD | OCI_LAYER_NONDISTRIBUTABLE_ZSTD | DOCKER_LAYER_ZSTD => Self::Zstd,
            _ => return None,
        })
    }

    /// The layer media type for this compression in OCI or Docker flavour.
    pub fn media_type(self, oci: bool) -> &'static str {
        use media_type::*;
        match (self, oci) {
            (Self::None, true) => OCI_LAYER,
            (Self::Gzip, true) => OCI_LAYER_GZIP,
            (Self::Zstd, true) => OCI_LAYER_ZSTD,
            (Self::None, false) => DOCKER_LAYER,
            (Self::Gzip, false) => DOCKER_LAYER_GZIP,
            (Self::Zstd, false) => DOCKER_LAYER_ZSTD,
        }
    }
}

impl fmt::Display for LayerCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "uncompressed",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        })
    }
}

pub fn is_manifest_type(media_type: &str) -> bool {
    media_type == media_type::OCI_MANIFEST || media_type == media_type::DOCKER_MANIFEST
}

pub fn is_index_type(media_type: &str) -> bool {
    media_type == media_type::OCI_INDEX || media_type == media_type::DOCKER_MANIFEST_LIST
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this program runs on, in Go's naming (`amd64`, `arm64`, ...).
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Self {
            architecture: architecture.to_owned(),
            os: std::env::consts::OS.to_owned(),
            os_version: None,
            os_features: Vec::new(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Parses `os/arch[/variant]` (`linux/amd64`, `linux/arm64/v8`).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let os = parts.next().filter(|os| !os.is_empty())?;
        let architecture = parts.next().filter(|arch| !arch.is_empty())?;
        let variant = parts.next().filter(|variant| !variant.is_empty());
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            os_version: None,
            os_features: Vec::new(),
            variant: variant.map(str::to_owned),
        })
    }

    /// Whether an image for `self` runs here (`arm64` images need not name their variant).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || other.variant.is_none() || self.variant == other.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// An image index (OCI) or manifest list (Docker); also the `index.json` of a layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ImageIndex {
    pub fn new(manifests: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_owned()),
            manifests,
            annotations: BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Set on artifacts that are not images (a build cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ImageManifest {
    /// An OCI manifest for `config` and `layers`.
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_owned()),
            config,
            layers,
            artifact_type: None,
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Whether this manifest uses OCI (rather than Docker) media types.
    pub fn is_oci(&self) -> bool {
        self.media_type.as_deref() != Some(media_type::DOCKER_MANIFEST)
    }
}

/// The image configuration (`application/vnd.oci.image.config.v1+json`), with the Docker
/// extensions Dockerfiles use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Inline build cache metadata (`--cache-to type=inline`), indices into the image's layers.
    #[serde(
        rename = "imgb.cache.v1",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub build_cache: Option<crate::build_cache::CacheConfig>,
}

impl ImageConfig {
    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone(),
            os_features: Vec::new(),
            variant: self.variant.clone(),
        }
    }
}

/// The `{}` values of Docker's set-like maps (`ExposedPorts`, `Volumes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

/// The runtime defaults of containers started from the image.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// `None` and `Some([])` differ: an empty entrypoint resets the base image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell: Vec<String>,
}

/// Docker's `HEALTHCHECK`; durations are nanoseconds, as Go's `time.Duration` encodes them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".to_owned(),
            diff_ids: Vec::new(),
        }
    }
}

/// One step of the image's history; `empty_layer` steps made no layer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The `oci-layout` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageLayout {
    pub image_layout_version: String,
}

impl Default for ImageLayout {
    fn default() -> Self {
        Self {
            image_layout_version: LAYOUT_VERSION.to_owned(),
        }
    }
}

/// One image of a docker-archive's `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerArchiveEntry {
    /// Archive path of the config.
    pub config: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub repo_tags: Vec<String>,
    /// Archive paths of the layers, bottom first.
    pub layers: Vec<String>,
}

/// Docker writes `"RepoTags": null` for untagged images.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Serializes `value` as canonical JSON: object keys sorted by their UTF-8 bytes at every level,
/// no whitespace. Equal values always give equal bytes.
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            // Sorted here rather than relying on the map's order: another crate enabling
            // serde_json's `preserve_order` feature must not change digests.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_canonical(value, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`), as image configs
/// record `SOURCE_DATE_EPOCH` and build times.
pub fn rfc3339_utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // In range by construction: month 1..=12, day 1..=31.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(text: &str) -> Digest {
        Digest::of(text.as_bytes())
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level_and_has_no_whitespace() {
        let value = serde_json::json!({"b": 1, "a": {"z": [ {"y": 1, "x": 2} ], "c": "s"}});
        let bytes = canonical_json(&value).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":{"c":"s","z":[{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn manifest_round_trips_and_skips_absent_fields() {
        let manifest = ImageManifest::new(
            Descriptor::new(media_type::OCI_CONFIG, digest("config"), 10),
            vec![Descriptor::new(media_type::OCI_LAYER_GZIP, digest("l"), 20)],
        );
        let bytes = canonical_json(&manifest).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"config":{"digest":"sha256:"#),
            "{text}"
        );
        assert!(
            !text.contains("annotations") && !text.contains("urls"),
            "{text}"
        );
        let back: ImageManifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, manifest);
        assert!(back.is_oci());
    }

    #[test]
    fn docker_config_fields_keep_their_names() {
        let raw = r#"{"architecture":"amd64","os":"linux","created":"2024-01-02T03:04:05Z",
            "config":{"Env":["PATH=/bin"],"Cmd":["sh"],"Entrypoint":[],"ExposedPorts":{"80/tcp":{}},
              "Healthcheck":{"Test":["CMD","true"],"Interval":30000000000},"OnBuild":["RUN x"],
              "Shell":["/bin/sh","-c"],"ArgsEscaped":true,"WorkingDir":"/w","User":"1:1"},
            "rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
            "history":[{"created_by":"RUN x","empty_layer":true,"comment":"buildkit.dockerfile.v0"},{"created_by":"COPY"}]}"#;
        let config: ImageConfig = serde_json::from_str(raw).unwrap();
        let container = config.config.as_ref().unwrap();
        assert_eq!(container.entrypoint, Some(vec![]));
        assert_eq!(
            container.healthcheck.as_ref().unwrap().interval,
            Some(30_000_000_000)
        );
        assert!(config.history[0].empty_layer);
        assert!(!config.history[1].empty_layer);
        let text = String::from_utf8(canonical_json(&config).unwrap()).unwrap();
        for needle in [
            r#""Entrypoint":[]"#,
            r#""ExposedPorts":{"80/tcp":{}}"#,
            r#""diff_ids":["#,
            r#""created_by":"RUN x""#,
            r#""empty_layer":true"#,
            r#""ArgsEscaped":true"#,
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert!(!text.contains(r#""empty_layer":false"#));
    }

    #[test]
    fn docker_archive_null_repo_tags_mean_untagged() {
        let entries: Vec<DockerArchiveEntry> =
            serde_json::from_str(r#"[{"Config":"c.json","RepoTags":null,"Layers":["l.tar"]}]"#)
                .unwrap();
        assert!(entries[0].repo_tags.is_empty());
    }

    #[test]
    fn layer_media_types_map_both_ways() {
        for compression in [
            LayerCompression::None,
            LayerCompression::Gzip,
            LayerCompression::Zstd,
        ] {
            for oci in [true, false] {
                let media_type = compression.media_type(oci);
                assert_eq!(
                    LayerCompression::from_media_type(media_type),
                    Some(compression)
                );
            }
        }
        assert_eq!(
            LayerCompression::from_media_type(media_type::OCI_CONFIG),
            None
        );
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn platform_matching_ignores_a_missing_variant() {
        let mut image = Platform::host();
        image.variant = None;
        assert!(Platform::host().matches(&image));
        image.os = "windows".to_owned();
        assert!(!Platform::host().matches(&image));
    }
}
