//! Images in the store: a manifest blob, the config and layer blobs it names, and the names
//! (full normalized references, see [`crate::reference`]) that point at the manifest.
//!
//! Every read goes through the verifying blob reader and checks the descriptor's size, so an
//! image read from here is exactly what was stored. Images written here ([`Store::write_image`])
//! use OCI media types and canonical JSON, so equal content gives equal digests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::oci::{
    Descriptor, ImageConfig, ImageManifest, canonical_json, is_manifest_type, media_type,
};
use crate::reference::{Reference, ReferenceError};
use crate::snapshot::SnapshotError;
use crate::store::{Store, StoreError};

/// Shortest hex prefix accepted as an image ID.
const MIN_ID_PREFIX: usize = 12;

/// A manifest and its config, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The manifest blob's descriptor.
    pub descriptor: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfig,
}

impl StoredImage {
    /// Manifest + config + layers: what the store holds for this image (shared blobs counted).
    pub fn content_size(&self) -> u64 {
        self.descriptor.size
            + self.manifest.config.size
            + self.manifest.layers.iter().map(|l| l.size).sum::<u64>()
    }

    /// Each layer paired with the diffID the config gives it.
    pub fn layers_with_diff_ids(&self) -> impl Iterator<Item = (&Descriptor, &Digest)> {
        self.manifest
            .layers
            .iter()
            .zip(&self.config.rootfs.diff_ids)
    }
}

/// One line of `imgb images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub name: String,
    pub image: StoredImage,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no image named {name:?} (hint: `imgb images` lists them; `imgb load` adds some)")]
    NotFound { name: String },
    #[error("image ID prefix {prefix:?} matches several images: {}", join(.matches))]
    AmbiguousId {
        prefix: String,
        matches: Vec<Digest>,
    },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{kind} {digest} is not valid JSON for its type: {source}")]
    Document {
        kind: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("{digest} is a {media_type}, not an image manifest")]
    NotAManifest { digest: Digest, media_type: String },
    #[error("manifest {digest} has {layers} layers but its config lists {diff_ids} diffIDs")]
    LayerCountMismatch {
        digest: Digest,
        layers: usize,
        diff_ids: usize,
    },
    #[error("encoding {kind} failed: {source}")]
    Encode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn join(digests: &[Digest]) -> String {
    digests
        .iter()
        .map(Digest::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Reads and checks the image whose manifest is `manifest`.
    pub fn read_image(&self, manifest: &Digest) -> Result<StoredImage, ImageError> {
        let bytes = self.read_blob(manifest)?;
        let document = |kind, source| ImageError::Document {
            kind,
            digest: manifest.clone(),
            source,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| document("manifest", e))?;
        let declared = value
            .get("mediaType")
            .and_then(|v| v.as_str())
            .unwrap_or(media_type::OCI_MANIFEST)
            .to_owned();
        if !is_manifest_type(&declared) || value.get("manifests").is_some() {
            return Err(ImageError::NotAManifest {
                digest: manifest.clone(),
                media_type: declared,
            });
        }
        let parsed: ImageManifest =
            serde_json::from_value(value).map_err(|e| document("manifest", e))?;
        let config_bytes = self.read_config_blob(&parsed.config)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| ImageError::Document {
                kind: "config",
                digest: parsed.config.digest.clone(),
                source,
            })?;
        if config.rootfs.diff_ids.len() != parsed.layers.len() {
            return Err(ImageError::LayerCountMismatch {
                digest: manifest.clone(),
                layers: parsed.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        Ok(StoredImage {
            descriptor: Descriptor::new(declared, manifest.clone(), bytes.len() as u64),
            manifest: parsed,
            config,
        })
    }

    /// The raw, verified bytes of an image's config (for showing fields imgb does not model).
    pub fn read_config_blob(&self, config: &Descriptor) -> Result<Vec<u8>, StoreError> {
        let mut reader = self.open_blob(&config.digest, Some(config.size))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut bytes).map_err(|e| reader.error(e))?;
        Ok(bytes)
    }

    /// Finds an image by name (`busybox`, `localhost/app:1`), by `name@sha256:...` or
    /// `sha256:...`, or by a unique prefix (12+ hex digits) of a named image's manifest digest.
    /// Returns the normalized name when the query was one.
    pub fn find_image(&self, query: &str) -> Result<(Option<Reference>, StoredImage), ImageError> {
        if query.starts_with("sha256:") {
            let digest = Digest::parse(query).map_err(|e| ReferenceError {
                text: query.to_owned(),
                reason: e.to_string(),
            })?;
            return self
                .read_existing(query, &digest)
                .map(|image| (None, image));
        }
        let reference = Reference::parse(query);
        if let Ok(reference) = &reference {
            if let Some(digest) = reference.digest() {
                // A pull of `name@<index digest>` names the platform's manifest so.
                let named = self.image(&reference.to_string())?;
                let image = self.read_existing(query, named.as_ref().unwrap_or(digest))?;
                return Ok((Some(reference.clone()), image));
            }
            if let Some(digest) = self.image(&reference.to_string())? {
                return Ok((Some(reference.clone()), self.read_image(&digest)?));
            }
        }
        let is_id_prefix = query.len() >= MIN_ID_PREFIX
            && query.len() <= 64
            && query
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_id_prefix {
            let mut matches: Vec<Digest> = self
                .images()?
                .into_values()
                .filter(|digest| digest.hex().starts_with(query))
                .collect();
            matches.sort();
            matches.dedup();
            return match matches.as_slice() {
                [digest] => Ok((None, self.read_image(digest)?)),
                [] => Err(ImageError::NotFound {
                    name: query.to_owned(),
                }),
                _ => Err(ImageError::AmbiguousId {
                    prefix: query.to_owned(),
                    matches,
                }),
            };
        }
        reference?;
        Err(ImageError::NotFound {
            name: query.to_owned(),
        })
    }

    fn read_existing(&self, query: &str, digest: &Digest) -> Result<StoredImage, ImageError> {
        if !self.has_blob(digest) {
            return Err(ImageError::NotFound {
                name: query.to_owned(),
            });
        }
        self.read_image(digest)
    }

    /// Stores `config` and an OCI manifest for it and `layers` (each a stored blob or a snapshot).
    pub fn write_image(
        &self,
        config: &ImageConfig,
        layers: Vec<Descriptor>,
    ) -> Result<StoredImage, ImageError> {
        let encode = |kind| move |source| ImageError::Encode { kind, source };
        let config_bytes = canonical_json(config).map_err(encode("config"))?;
        let config_blob = self.write_blob(&config_bytes)?;
        let manifest = ImageManifest::new(
            Descriptor::new(media_type::OCI_CONFIG, config_blob.digest, config_blob.size),
            layers,
        );
        let manifest_bytes = canonical_json(&manifest).map_err(encode("manifest"))?;
        let manifest_blob = self.write_blob(&manifest_bytes)?;
        Ok(StoredImage {
            descriptor: Descriptor::new(
                media_type::OCI_MANIFEST,
                manifest_blob.digest,
                manifest_blob.size,
            ),
            manifest,
            config: config.clone(),
        })
    }

    /// Every named image, sorted by name. A name whose image cannot be read is an error.
    pub fn image_summaries(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let mut cache: BTreeMap<Digest, StoredImage> = BTreeMap::new();
        let mut summaries = Vec::new();
        for (name, digest) in self.images()? {
            let image = match cache.get(&digest) {
                Some(image) => image.clone(),
                None => {
                    let image = self.read_image(&digest)?;
                    cache.insert(digest, image.clone());
                    image
                }
            };
            summaries.push(ImageSummary { name, image });
        }
        Ok(summaries)
    }

    /// Removes the name `query` resolves to, or every name of the image when `query` is a
    /// digest or ID prefix; returns the names removed. Blobs stay until garbage collection.
    pub fn remove_image(&self, query: &str) -> Result<Vec<String>, ImageError> {
        let (reference, image) = self.find_image(query)?;
        let names: Vec<String> = match reference.filter(|r| r.digest().is_none()) {
            Some(reference) => vec![reference.to_string()],
            None => self
                .images()?
                .into_iter()
                .filter(|(_, digest)| *digest == image.descriptor.digest)
                .map(|(name, _)| name)
                .collect(),
        };
        for name in &names {
            self.untag_image(name)?;
        }
        Ok(names)
    }

    /// Makes (or finds) the snapshots of every layer of `image`, bottom first.
    pub fn ensure_image_snapshots(
        &self,
        image: &StoredImage,
    ) -> Result<Vec<PathBuf>, SnapshotError> {
        image
            .layers_with_diff_ids()
            .map(|(layer, diff_id)| self.ensure_snapshot(layer, diff_id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{History, RootFs};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        (dir, store)
    }

    fn image(store: &Store, layer_content: &[u8]) -> StoredImage {
        let layer = store.write_blob(layer_content).unwrap();
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: RootFs {
                diff_ids: vec![layer.digest.clone()],
                ..RootFs::default()
            },
            history: vec![History {
                created_by: Some("test".into()),
                ..History::default()
            }],
            ..ImageConfig::default()
        };
        let descriptor = Descriptor::new(media_type::OCI_LAYER, layer.digest, layer.size);
        store.write_image(&config, vec![descriptor]).unwrap()
    }

    #[test]
    fn written_image_reads_back_identically_and_deterministically() {
        let (_dir, store) = store();
        let first = image(&store, b"layer");
        let second = image(&store, b"layer");
        assert_eq!(first, second);
        assert_eq!(store.read_image(&first.descriptor.digest).unwrap(), first);
        assert_eq!(
            first.content_size(),
            first.descriptor.size + first.manifest.config.size + 5
        );
    }

    #[test]
    fn find_image_by_short_name_digest_and_id_prefix() {
        let (_dir, store) = store();
        let stored = image(&store, b"l");
        let digest = stored.descriptor.digest.clone();
        store
            .tag_image("docker.io/library/busybox:latest", &digest)
            .unwrap();
        let (name, found) = store.find_image("busybox").unwrap();
        assert_eq!(
            name.unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(found, stored);
        assert_eq!(store.find_image(digest.as_str()).unwrap().1, stored);
        assert_eq!(store.find_image(&digest.hex()[..12]).unwrap().1, stored);
        let by_digest = format!("busybox@{digest}");
        assert_eq!(store.find_image(&by_digest).unwrap().1, stored);
        let missing = store.find_image("alpine").unwrap_err();
        assert!(matches!(missing, ImageError::NotFound { .. }), "{missing}");
        let invalid = store.find_image("Bad:Name").unwrap_err();
        assert!(matches!(invalid, ImageError::Reference(_)), "{invalid}");
    }

    #[test]
    fn remove_by_name_keeps_other_names_and_by_digest_removes_all() {
        let (_dir, store) = store();
        let digest = image(&store, b"l").descriptor.digest;
        store
            .tag_image("docker.io/library/a:latest", &digest)
            .unwrap();
        store
            .tag_image("docker.io/library/b:latest", &digest)
            .unwrap();
        assert_eq!(
            store.remove_image("a").unwrap(),
            ["docker.io/library/a:latest"]
        );
        assert_eq!(store.image_summaries().unwrap().len(), 1);
        store
            .tag_image("docker.io/library/c:latest", &digest)
            .unwrap();
        assert_eq!(store.remove_image(digest.as_str()).unwrap().len(), 2);
        assert!(store.image_summaries().unwrap().is_empty());
        assert!(store.has_blob(&digest));
    }

    #[test]
    fn an_index_is_not_mistaken_for_a_manifest() {
        let (_dir, store) = store();
        let index = crate::oci::ImageIndex::new(Vec::new());
        let blob = store.write_blob(&canonical_json(&index).unwrap()).unwrap();
        let error = store.read_image(&blob.digest).unwrap_err();
        assert!(matches!(error, ImageError::NotAManifest { .. }), "{error}");
    }
}
