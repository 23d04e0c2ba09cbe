//! The build cache's exchange format (`--cache-to` / `--cache-from`): cache records and the
//! layers they name, packed as one OCI artifact so a cache built on one machine can be used on
//! another. `docs/cache-format.md` describes the format with an example.
//!
//! A cache is an OCI image manifest whose `config` is a [`CacheConfig`] blob (media type
//! [`CONFIG_MEDIA_TYPE`], `artifactType` [`ARTIFACT_TYPE`]) and whose `layers` are every layer
//! blob a record names. Records refer to layers by their index in that list, and
//! [`CacheConfig::diff_ids`] gives each layer's diffID, so a cache whose layers are recompressed
//! on export only changes the descriptors. The same [`CacheConfig`] may instead sit in an image
//! config under [`INLINE_FIELD`] (inline cache), its indices then pointing into the image's own
//! layers.
//!
//! Where a cache lives is a [`CacheLocation`]: an OCI layout directory (its `index.json` entry
//! tagged [`LAYOUT_TAG`]) or a registry reference (the cache manifest pushed under its tag, after
//! its blobs, with the registry client).
//!
//! Invariants:
//! - Keys are content-addressed cache keys; nothing in the format is machine-specific, so an
//!   imported record is exactly as valid as a local one with the same key.
//! - Imported documents are untrusted: every blob is checked against its descriptor's digest
//!   and size before it is used or stored, and a config whose indices point outside the layer
//!   list is rejected as a whole.
//! - Layer blobs are only copied into the store on request ([`ImportedCache::fetch_blob`]), so
//!   importing a cache costs two small documents until a step needs a layer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compress::Compression;
use crate::digest::Digest;
use crate::export::{
    DirLayout, ExportError, LayerCompressionChoice, LayoutWriter, blob_path as layout_blob_path,
};
use crate::oci::{
    Descriptor, ImageConfig, ImageIndex, ImageLayout, ImageManifest, annotation, canonical_json,
    is_manifest_type,
};
use crate::reference::Reference;
use crate::registry::{ManifestDocument, Registry, RegistryError};
use crate::store::{Store, StoreError};

/// The version of [`CacheConfig`]; a cache with another version is not read.
pub const FORMAT_VERSION: u32 = 1;
/// The cache manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.imgb.cache.v1";
/// The media type of the [`CacheConfig`] blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.imgb.cache.config.v1+json";
/// The image-config field holding inline cache metadata.
pub const INLINE_FIELD: &str = "imgb.cache.v1";
/// The `org.opencontainers.image.ref.name` of the cache in a layout directory.
pub const LAYOUT_TAG: &str = "cache";
/// Cache documents (manifest, config) larger than this are refused unread.
const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

/// The cache's metadata: records, and the diffIDs of the layers they name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheConfig {
    pub version: u32,
    /// The diffID of each layer of the manifest, in the manifest's order.
    #[serde(rename = "diffIDs")]
    pub diff_ids: Vec<Digest>,
    pub records: Vec<CacheRecord>,
    /// `RUN --mount=type=cache` contents exported with `cache-mounts=true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_mounts: Vec<CacheMountRecord>,
}

/// One cache mount's contents: a tar layer of the manifest, extracted into a new cache
/// instance of the same key when the importing store has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMountRecord {
    /// The mount's `id=` (its target when none was given), for people and warnings.
    pub id: String,
    /// The cache mount's key (id, owner, mode and seed), as the builder derives it.
    pub key: Digest,
    /// Index of its tar in the manifest's layers; the diffID there is the content digest.
    pub layer: usize,
}

/// One cache record: a step's key and the filesystem it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The step's cache key.
    pub key: Digest,
    /// The step's name when it was recorded (`[stage 2/3] RUN make`), for people.
    pub name: String,
    /// The filesystem's layers, base first, as indices into the manifest's layers.
    pub layers: Vec<usize>,
}

/// A layer as a record names it: content identity and the blob holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLayer {
    pub diff_id: Digest,
    pub blob: Descriptor,
}

/// A cache in memory: its metadata and the layer blobs its indices point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheContent {
    pub config: CacheConfig,
    /// Parallel to `config.diff_ids`.
    pub layers: Vec<Descriptor>,
}

impl CacheContent {
    /// The records with their layers resolved; the indices were checked on import.
    pub fn records(&self) -> impl Iterator<Item = (&CacheRecord, Vec<CacheLayer>)> {
        self.config.records.iter().map(|record| {
            let layers = record
                .layers
                .iter()
                .filter_map(|&index| {
                    Some(CacheLayer {
                        diff_id: self.config.diff_ids.get(index)?.clone(),
                        blob: self.layers.get(index)?.clone(),
                    })
                })
                .collect();
            (record, layers)
        })
    }

    /// The cache mounts with their layers resolved; the indices were checked on import.
    pub fn cache_mounts(&self) -> impl Iterator<Item = (&CacheMountRecord, CacheLayer)> {
        self.config.cache_mounts.iter().filter_map(|mount| {
            let layer = CacheLayer {
                diff_id: self.config.diff_ids.get(mount.layer)?.clone(),
                blob: self.layers.get(mount.layer)?.clone(),
            };
            Some((mount, layer))
        })
    }

    /// Checks what an untrusted cache claims: the version, one diffID per layer, indices in
    /// range.
    fn validate(self, source: &str) -> Result<Self, BuildCacheError> {
        let invalid = |reason: String| BuildCacheError::Invalid {
            cache: source.to_owned(),
            reason,
        };
        if self.config.version != FORMAT_VERSION {
            return Err(invalid(format!(
                "format version {}, this imgb reads version {FORMAT_VERSION}",
                self.config.version
            )));
        }
        if self.config.diff_ids.len() != self.layers.len() {
            return Err(invalid(format!(
                "{} diffIDs for {} layers",
                self.config.diff_ids.len(),
                self.layers.len()
            )));
        }
        for record in &self.config.records {
            if let Some(index) = record.layers.iter().find(|&&i| i >= self.layers.len()) {
                return Err(invalid(format!(
                    "record {} names layer {index}, but there are {} layers",
                    record.key,
                    self.layers.len()
                )));
            }
        }
        if let Some(mount) = self
            .config
            .cache_mounts
            .iter()
            .find(|mount| mount.layer >= self.layers.len())
        {
            return Err(invalid(format!(
                "cache mount {:?} names layer {}, but there are {} layers",
                mount.id,
                mount.layer,
                self.layers.len()
            )));
        }
        Ok(self)
    }
}

/// Collects records for export, storing each distinct layer once.
#[derive(Debug, Default)]
pub struct CacheBuilder {
    diff_ids: Vec<Digest>,
    layers: Vec<Descriptor>,
    /// Blob digest → index in `layers`.
    positions: HashMap<Digest, usize>,
    records: Vec<CacheRecord>,
    keys: HashMap<Digest, usize>,
    cache_mounts: Vec<CacheMountRecord>,
}

impl CacheBuilder {
    /// A builder whose first layers are `layers`, in order (an image's, for inline caches).
    pub fn with_layers(layers: impl IntoIterator<Item = CacheLayer>) -> Self {
        let mut builder = CacheBuilder::default();
        for layer in layers {
            builder.layer_index(layer);
        }
        builder
    }

    /// Adds the record of `key`; a key already added keeps its first record.
    pub fn add_record(
        &mut self,
        key: Digest,
        name: impl Into<String>,
        layers: impl IntoIterator<Item = CacheLayer>,
    ) {
        if self.keys.contains_key(&key) {
            return;
        }
        let layers = layers
            .into_iter()
            .map(|layer| self.layer_index(layer))
            .collect();
        self.keys.insert(key.clone(), self.records.len());
        self.records.push(CacheRecord {
            key,
            name: name.into(),
            layers,
        });
    }

    /// Adds the contents of the cache mount `key`, packed as `layer`; a key already added keeps
    /// its first contents.
    pub fn add_cache_mount(&mut self, id: impl Into<String>, key: Digest, layer: CacheLayer) {
        if self.cache_mounts.iter().any(|mount| mount.key == key) {
            return;
        }
        let layer = self.layer_index(layer);
        self.cache_mounts.push(CacheMountRecord {
            id: id.into(),
            key,
            layer,
        });
    }

    fn layer_index(&mut self, layer: CacheLayer) -> usize {
        *self
            .positions
            .entry(layer.blob.digest.clone())
            .or_insert_with(|| {
                self.diff_ids.push(layer.diff_id);
                self.layers.push(layer.blob);
                self.layers.len() - 1
            })
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn finish(self) -> CacheContent {
        CacheContent {
            config: CacheConfig {
                version: FORMAT_VERSION,
                diff_ids: self.diff_ids,
                records: self.records,
                cache_mounts: self.cache_mounts,
            },
            layers: self.layers,
        }
    }
}

/// Where a cache is read from or written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// An OCI layout directory (`type=local`).
    Directory(PathBuf),
    /// A manifest in a registry (`type=registry`): a cache artifact, or an image with inline
    /// cache metadata (read only).
    Registry(Reference),
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Directory(dir) => write!(f, "cache directory {}", dir.display()),
            CacheLocation::Registry(reference) => write!(f, "cache {reference}"),
        }
    }
}

impl CacheLocation {
    /// The tag or digest a registry cache is stored under.
    fn registry_target(reference: &Reference) -> String {
        match (reference.digest(), reference.tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_owned(),
            (None, None) => "latest".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildCacheError {
    #[error("{cache} holds no cache (hint: write one with --cache-to)")]
    NotFound { cache: String },
    #[error("{cache} is not a usable cache: {reason}")]
    Invalid { cache: String, reason: String },
    #[error("{cache}: blob {digest} hashes to {actual}")]
    DigestMismatch {
        cache: String,
        digest: Digest,
        actual: Digest,
    },
    #[error("{cache}: blob {digest} has {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        cache: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("{cache}: {document} is not valid JSON for its type: {error}")]
    Json {
        cache: String,
        document: &'static str,
        error: serde_json::Error,
    },
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("internal error: {0}")]
    Panicked(String),
}

/// A cache read from its location: the metadata now, layer blobs on request.
#[derive(Debug, Clone)]
pub struct ImportedCache {
    pub location: CacheLocation,
    pub content: CacheContent,
    registry: Registry,
}

/// Reads the cache metadata at `location` (no layer blobs); a registry cache's config blob is
/// fetched into `store`.
pub async fn import_cache(
    location: &CacheLocation,
    store: &Store,
    registry: &Registry,
) -> Result<ImportedCache, BuildCacheError> {
    let source = location.to_string();
    let content = match location {
        CacheLocation::Directory(dir) => {
            let (dir, source) = (dir.clone(), source.clone());
            // A layout may sit on a slow or blocking filesystem: keep it off the async workers.
            blocking(move || {
                let manifest = layout_cache_manifest(&dir, &source)?;
                let config = read_layout_document(&dir, &source, &manifest.config)?;
                content_of_manifest(&source, &manifest, &config)
            })
            .await?
        }
        CacheLocation::Registry(reference) => {
            let repository = registry.repository(reference);
            let target = CacheLocation::registry_target(reference);
            let manifest = match repository.fetch_manifest(&target).await {
                Err(RegistryError::NotFound { .. }) => {
                    return Err(BuildCacheError::NotFound { cache: source });
                }
                other => other?,
            };
            let ManifestDocument::Image(manifest) = manifest.document else {
                return Err(BuildCacheError::Invalid {
                    cache: source,
                    reason: "it is an index, not a cache or image manifest".to_owned(),
                });
            };
            if manifest.config.size > MAX_DOCUMENT_BYTES {
                return Err(too_large(&source, &manifest.config));
            }
            repository.fetch_blob(store, &manifest.config).await?;
            let config = store.read_blob(&manifest.config.digest)?;
            content_of_manifest(&source, &manifest, &config)?
        }
    };
    Ok(ImportedCache {
        location: location.clone(),
        content: content.validate(&source)?,
        registry: registry.clone(),
    })
}

impl ImportedCache {
    /// Copies `blob` into `store`, verified; a blob already stored is left alone.
    pub async fn fetch_blob(
        &self,
        store: &Store,
        blob: &Descriptor,
    ) -> Result<(), BuildCacheError> {
        if store.has_blob(&blob.digest) {
            return Ok(());
        }
        match &self.location {
            CacheLocation::Directory(dir) => {
                let (dir, store, blob) = (dir.clone(), store.clone(), blob.clone());
                let source = self.location.to_string();
                blocking(move || copy_layout_blob(&dir, &source, &store, &blob)).await
            }
            CacheLocation::Registry(reference) => {
                let repository = self.registry.repository(reference);
                repository.fetch_blob(store, blob).await?;
                Ok(())
            }
        }
    }
}

/// Copies a layout directory's blob into the store, checking its size and digest.
fn copy_layout_blob(
    dir: &Path,
    source: &str,
    store: &Store,
    blob: &Descriptor,
) -> Result<(), BuildCacheError> {
    let path = dir.join(layout_blob_path(&blob.digest));
    let file = File::open(&path).map_err(io_error("open", &path))?;
    let mut writer = store.blob_writer()?;
    let copied = io::copy(&mut file.take(blob.size.saturating_add(1)), &mut writer)
        .map_err(io_error("copy", &path))?;
    if copied != blob.size {
        return Err(BuildCacheError::SizeMismatch {
            cache: source.to_owned(),
            digest: blob.digest.clone(),
            expected: blob.size,
            actual: copied,
        });
    }
    writer
        .commit_expected(&blob.digest)
        .map_err(|error| match error {
            StoreError::UnexpectedDigest { actual, .. } => BuildCacheError::DigestMismatch {
                cache: source.to_owned(),
                digest: blob.digest.clone(),
                actual,
            },
            other => other.into(),
        })?;
    Ok(())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BuildCacheError> + Send + 'static,
) -> Result<T, BuildCacheError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BuildCacheError::Panicked(error.to_string()))?
}

/// Writes `content` to `location`; returns the cache manifest's descriptor. Layers go as
/// stored (built ones uncompressed) unless `compression` is given, which recompresses every
/// layer that differs. BuildKit gzips by default; imgb does not, because a build served from
/// the cache on another root stores the layers it imports as they came, and only uncompressed
/// ones describe a built layer as the building root stores it: the image digests agree.
pub async fn export_cache(
    store: &Store,
    registry: &Registry,
    location: &CacheLocation,
    mut content: CacheContent,
    compression: Option<Compression>,
) -> Result<Descriptor, BuildCacheError> {
    let choice = LayerCompressionChoice {
        compression: compression.unwrap_or(Compression::None),
        force: compression.is_some(),
    };
    for (layer, diff_id) in content.layers.iter_mut().zip(&content.config.diff_ids) {
        *layer = choice.exported_layer(store, layer, diff_id)?;
    }
    let source = location.to_string();
    let encode = |document| json_error(&source, document);
    let config_bytes = canonical_json(&content.config).map_err(encode("cache config"))?;
    let config = Descriptor::new(
        CONFIG_MEDIA_TYPE,
        Digest::of(&config_bytes),
        config_bytes.len() as u64,
    );
    let mut manifest = ImageManifest::new(config.clone(), content.layers.clone());
    manifest.artifact_type = Some(ARTIFACT_TYPE.to_owned());
    let manifest_bytes = canonical_json(&manifest).map_err(encode("cache manifest"))?;
    let mut descriptor = Descriptor::new(
        manifest.media_type.clone().unwrap_or_default(),
        Digest::of(&manifest_bytes),
        manifest_bytes.len() as u64,
    );
    descriptor.artifact_type = Some(ARTIFACT_TYPE.to_owned());
    match location {
        CacheLocation::Directory(dir) => {
            let mut layout = DirLayout::open(dir)?;
            let layout_file =
                canonical_json(&ImageLayout::default()).map_err(encode("oci-layout"))?;
            layout.file("oci-layout", &layout_file)?;
            for (layer, diff_id) in content.layers.iter().zip(&content.config.diff_ids) {
                layout.stored_blob(store, layer, Some(diff_id))?;
            }
            layout.file(&layout_blob_path(&config.digest), &config_bytes)?;
            layout.file(&layout_blob_path(&descriptor.digest), &manifest_bytes)?;
            let mut entry = descriptor.clone();
            entry
                .annotations
                .insert(annotation::REF_NAME.to_owned(), LAYOUT_TAG.to_owned());
            layout.index(vec![entry])?;
        }
        CacheLocation::Registry(reference) => {
            let repository = registry.repository(reference);
            for layer in &content.layers {
                repository.push_blob(store, layer).await?;
            }
            store.write_blob(&config_bytes)?;
            repository.push_blob(store, &config).await?;
            repository
                .push_manifest(
                    &CacheLocation::registry_target(reference),
                    &descriptor.media_type,
                    &manifest_bytes,
                )
                .await?;
        }
    }
    Ok(descriptor)
}

/// The cache metadata a manifest carries: a cache artifact's config, or the inline field of an
/// image's config (`config_bytes`, already verified).
fn content_of_manifest(
    source: &str,
    manifest: &ImageManifest,
    config_bytes: &[u8],
) -> Result<CacheContent, BuildCacheError> {
    let json = |document| json_error(source, document);
    let config = if manifest.config.media_type == CONFIG_MEDIA_TYPE {
        serde_json::from_slice::<CacheConfig>(config_bytes).map_err(json("cache config"))?
    } else {
        let image: ImageConfig =
            serde_json::from_slice(config_bytes).map_err(json("image config"))?;
        image.build_cache.ok_or_else(|| BuildCacheError::NotFound {
            cache: source.to_owned(),
        })?
    };
    Ok(CacheContent {
        config,
        layers: manifest.layers.clone(),
    })
}

/// The cache manifest of a layout directory: the `index.json` entry tagged [`LAYOUT_TAG`].
fn layout_cache_manifest(dir: &Path, source: &str) -> Result<ImageManifest, BuildCacheError> {
    let index_path = dir.join("index.json");
    let bytes = match std::fs::read(&index_path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(BuildCacheError::NotFound {
                cache: source.to_owned(),
            });
        }
        Err(error) => return Err(io_error("read", &index_path)(error)),
    };
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(json_error(source, "index.json"))?;
    let entry = index
        .manifests
        .iter()
        .find(|entry| {
            entry
                .annotations
                .get(annotation::REF_NAME)
                .map(String::as_str)
                == Some(LAYOUT_TAG)
        })
        .filter(|entry| is_manifest_type(&entry.media_type))
        .ok_or_else(|| BuildCacheError::NotFound {
            cache: source.to_owned(),
        })?;
    let bytes = read_layout_document(dir, source, entry)?;
    serde_json::from_slice(&bytes).map_err(json_error(source, "cache manifest"))
}

/// A small blob of a layout directory, checked against its descriptor.
fn read_layout_document(
    dir: &Path,
    source: &str,
    descriptor: &Descriptor,
) -> Result<Vec<u8>, BuildCacheError> {
    if descriptor.size > MAX_DOCUMENT_BYTES {
        return Err(too_large(source, descriptor));
    }
    let path = dir.join(layout_blob_path(&descriptor.digest));
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|file| {
            file.take(descriptor.size.saturating_add(1))
                .read_to_end(&mut bytes)
        })
        .map_err(io_error("read", &path))?;
    verify_document(source, descriptor, bytes)
}

/// `bytes` if they are what `descriptor` names.
fn verify_document(
    source: &str,
    descriptor: &Descriptor,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, BuildCacheError> {
    if bytes.len() as u64 != descriptor.size {
        return Err(BuildCacheError::SizeMismatch {
            cache: source.to_owned(),
            digest: descriptor.digest.clone(),
            expected: descriptor.size,
            actual: bytes.len() as u64,
        });
    }
    let actual = Digest::of(&bytes);
    if actual != descriptor.digest {
        return Err(BuildCacheError::DigestMismatch {
            cache: source.to_owned(),
            digest: descriptor.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

fn too_large(source: &str, descriptor: &Descriptor) -> BuildCacheError {
    BuildCacheError::Invalid {
        cache: source.to_owned(),
        reason: format!(
            "document {} claims {} bytes (limit {MAX_DOCUMENT_BYTES})",
            descriptor.digest, descriptor.size
        ),
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BuildCacheError {
    let path = path.to_owned();
    move |error| StoreError::io(op, path)(error).into()
}

fn json_error(
    cache: &str,
    document: &'static str,
) -> impl FnOnce(serde_json::Error) -> BuildCacheError {
    let cache = cache.to_owned();
    move |error| BuildCacheError::Json {
        cache,
        document,
        error,
    }
}

#[cfg(test)]
mod tests;
