//! Pulling: manifests (OCI and Docker, images and indexes), platform selection, and blobs
//! streamed into the store with their size and digest verified before they are committed.

use std::io::Write;
use std::sync::Arc;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue, RANGE};
use reqwest::{Method, Response, StatusCode};

use super::transport::{Call, read_body, status_error};
use super::{Registry, RegistryError, Repository, StallLimit};
use crate::digest::Digest;
use crate::image::StoredImage;
use crate::oci::{
    Descriptor, ImageIndex, ImageManifest, Platform, is_index_type, is_manifest_type, media_type,
};
use crate::reference::Reference;
use crate::store::{BlobInfo, BlobWriter, Store, StoreError};

/// Manifests larger than this are refused (containerd's limit).
const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// A manifest as the registry sent it (bytes kept: they are what the digest covers).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
    pub document: ManifestDocument,
}

#[derive(Debug, Clone)]
pub enum ManifestDocument {
    Index(ImageIndex),
    Image(Box<ImageManifest>),
}

impl ManifestDocument {
    /// What the document names: an index's manifests, or an image manifest's config and
    /// layers (blobs). A manifest's `subject` is not included: it may name what a registry
    /// never held.
    pub fn references(&self) -> Vec<&Descriptor> {
        match self {
            Self::Index(index) => index.manifests.iter().collect(),
            Self::Image(manifest) => std::iter::once(&manifest.config)
                .chain(&manifest.layers)
                .collect(),
        }
    }
}

impl Repository {
    /// Token scopes for this repository.
    pub(super) fn scopes(&self, push: bool) -> Vec<String> {
        let actions = if push { "pull,push" } else { "pull" };
        vec![format!("repository:{}:{actions}", self.path)]
    }

    pub(super) fn transport(&self) -> &super::transport::Transport {
        &self.registry.inner
    }

    /// Fetches the manifest (or index) that `reference` (a tag or a digest) names. A digest
    /// reference is verified against the content.
    pub async fn fetch_manifest(&self, reference: &str) -> Result<Manifest, RegistryError> {
        let target = format!("v2/{}/manifests/{reference}", self.path);
        let accept = [
            media_type::OCI_MANIFEST,
            media_type::OCI_INDEX,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let call = Call::new(Method::GET, target, self.scopes(false)).header(ACCEPT, &accept);
        let (url, content_type, announced, bytes) = self
            .transport()
            .retrying(|| async {
                let response = self.transport().send(&self.domain, &call).await?;
                match response.status() {
                    StatusCode::OK => {}
                    StatusCode::NOT_FOUND => {
                        return Err(self.not_found(format!("manifest {reference}")));
                    }
                    _ => return Err(status_error(&call.method, response).await),
                }
                let header = |name| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|value: &HeaderValue| value.to_str().ok())
                        .map(str::to_owned)
                };
                let content_type = header(CONTENT_TYPE.as_str());
                let announced = header(DOCKER_CONTENT_DIGEST);
                let url = response.url().to_string();
                let bytes = read_manifest(response, &url, self.registry.config().stall).await?;
                Ok((url, content_type, announced, bytes))
            })
            .await?;
        let digest = Digest::of(&bytes);
        let expected = Digest::parse(reference)
            .ok()
            .or_else(|| announced.and_then(|text| Digest::parse(&text).ok()));
        if let Some(expected) = expected.filter(|expected| *expected != digest) {
            return Err(RegistryError::DigestMismatch {
                url,
                expected,
                actual: digest,
            });
        }
        let name = format!("{}:{reference}", self.name());
        let (media_type, document) = parse_manifest(&name, &bytes, content_type.as_deref())?;
        Ok(Manifest {
            descriptor: Descriptor::new(media_type, digest, bytes.len() as u64),
            bytes,
            document,
        })
    }

    /// Streams the blob `descriptor` names into the store (unless it is there), verified;
    /// an interrupted download resumes with a `Range` request where the registry allows.
    pub async fn fetch_blob(
        &self,
        store: &Store,
        descriptor: &Descriptor,
    ) -> Result<BlobInfo, RegistryError> {
        if store.has_blob(&descriptor.digest) {
            return Ok(BlobInfo {
                digest: descriptor.digest.clone(),
                size: descriptor.size,
            });
        }
        let mut writer = store.blob_writer()?;
        let mut attempt = 1;
        let url = loop {
            match self.download(store, &mut writer, descriptor).await {
                Ok(url) => break url,
                Err(error) => match self.transport().retry_delay(&error, attempt) {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(error),
                },
            }
        };
        writer
            .commit_expected(&descriptor.digest)
            .map_err(|error| match error {
                StoreError::UnexpectedDigest { expected, actual } => {
                    RegistryError::DigestMismatch {
                        url,
                        expected,
                        actual,
                    }
                }
                other => other.into(),
            })
    }

    /// One download attempt, continuing from what `writer` holds; returns the URL served.
    async fn download(
        &self,
        store: &Store,
        writer: &mut BlobWriter,
        descriptor: &Descriptor,
    ) -> Result<String, RegistryError> {
        let offset = writer.written();
        let target = format!("v2/{}/blobs/{}", self.path, descriptor.digest);
        let mut call = Call::new(Method::GET, target, self.scopes(false));
        if offset > 0 {
            call = call.header(RANGE, &format!("bytes={offset}-"));
        }
        let response = self.transport().send(&self.domain, &call).await?;
        let url = response.url().clone();
        match response.status() {
            StatusCode::OK if offset > 0 => *writer = store.blob_writer()?,
            StatusCode::OK => {}
            StatusCode::PARTIAL_CONTENT if resumes_at(&response, offset) => {}
            StatusCode::PARTIAL_CONTENT => {
                // A range we did not ask for: start over with a whole download.
                *writer = store.blob_writer()?;
                return Err(RegistryError::TooShort {
                    url: url.to_string(),
                    digest: descriptor.digest.clone(),
                    expected: descriptor.size,
                    actual: 0,
                });
            }
            StatusCode::NOT_FOUND => {
                return Err(self.not_found(format!("blob {}", descriptor.digest)));
            }
            _ => return Err(status_error(&call.method, response).await),
        }
        let limit = self.registry.config().stall;
        read_body(response, limit, |chunk| {
            if writer.written() + chunk.len() as u64 > descriptor.size {
                return Err(RegistryError::TooLong {
                    url: url.to_string(),
                    digest: descriptor.digest.clone(),
                    expected: descriptor.size,
                });
            }
            writer
                .write_all(chunk)
                .map_err(|error| StoreError::io("write blob", store.tmp_dir())(error).into())
        })
        .await?;
        if writer.written() < descriptor.size {
            return Err(RegistryError::TooShort {
                url: url.to_string(),
                digest: descriptor.digest.clone(),
                expected: descriptor.size,
                actual: writer.written(),
            });
        }
        Ok(url.to_string())
    }

    pub(super) fn not_found(&self, what: String) -> RegistryError {
        RegistryError::NotFound {
            repository: self.name(),
            what,
        }
    }
}

impl Registry {
    /// Resolves `reference` on its registry to the image for `platform`: stores the manifest
    /// and config (not the layers), records where each layer can be fetched from, and names the
    /// image `reference` in the store.
    pub async fn pull_image(
        &self,
        store: &Store,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<StoredImage, RegistryError> {
        let repository = self.repository(reference);
        let wanted = match (reference.digest(), reference.tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        let mut manifest = repository.fetch_manifest(&wanted).await?;
        if let ManifestDocument::Index(index) = &manifest.document {
            let chosen = select_platform(&reference.to_string(), index, platform)?.clone();
            manifest = repository.fetch_manifest(chosen.digest.as_str()).await?;
            if manifest.descriptor.size != chosen.size {
                return Err(RegistryError::BadManifest {
                    reference: format!("{}@{}", repository.name(), chosen.digest),
                    reason: format!(
                        "it is {} bytes, but the index says {}",
                        manifest.descriptor.size, chosen.size
                    ),
                });
            }
        }
        let ManifestDocument::Image(image) = &manifest.document else {
            return Err(RegistryError::BadManifest {
                reference: reference.to_string(),
                reason: "an index whose platform entry is another index".to_owned(),
            });
        };
        repository.fetch_blob(store, &image.config).await?;
        let source = repository.name();
        for layer in &image.layers {
            store
                .record_blob_source(&layer.digest, &source)
                .map_err(|source| RegistryError::Source {
                    digest: layer.digest.clone(),
                    source,
                })?;
        }
        let stored = store.write_blob(&manifest.bytes)?;
        let image = store.read_image(&stored.digest)?;
        store.tag_image(&reference.to_string(), &stored.digest)?;
        Ok(image)
    }

    /// Fetches every layer of `descriptors` that the store can not read (see
    /// [`Store::has_layer`]) from the repository its pull recorded, several at a time.
    pub async fn ensure_blobs(
        &self,
        store: &Store,
        descriptors: &[Descriptor],
    ) -> Result<(), RegistryError> {
        let mut missing: Vec<&Descriptor> = descriptors
            .iter()
            // A step's layer is readable from its snapshot (its digest is its diffID).
            .filter(|descriptor| !store.has_layer(descriptor, &descriptor.digest))
            .collect();
        missing.sort_by(|a, b| a.digest.cmp(&b.digest));
        missing.dedup_by(|a, b| a.digest == b.digest);
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.config().parallel_transfers.max(1),
        ));
        let mut downloads = tokio::task::JoinSet::new();
        for descriptor in missing {
            let source =
                store
                    .blob_source(&descriptor.digest)
                    .ok_or_else(|| RegistryError::NoSource {
                        digest: descriptor.digest.clone(),
                    })?;
            let repository = self.repository(&source);
            let (store, descriptor, permits) = (store.clone(), descriptor.clone(), permits.clone());
            downloads.spawn(async move {
                let _permit = permits.acquire_owned().await;
                repository.fetch_blob(&store, &descriptor).await
            });
        }
        while let Some(finished) = downloads.join_next().await {
            match finished {
                Ok(result) => {
                    result?;
                }
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        }
        Ok(())
    }
}

/// Whether a `206` continues exactly at `offset` (`Content-Range: bytes OFFSET-...`).
fn resumes_at(response: &Response, offset: u64) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|range| range.strip_prefix("bytes "))
        .and_then(|range| range.split('-').next())
        .and_then(|start| start.parse::<u64>().ok())
        == Some(offset)
}

async fn read_manifest(
    response: Response,
    url: &str,
    limit: StallLimit,
) -> Result<Vec<u8>, RegistryError> {
    let mut bytes = Vec::new();
    read_body(response, limit, |chunk| {
        bytes.extend_from_slice(chunk);
        if bytes.len() > MANIFEST_LIMIT {
            return Err(RegistryError::BadManifest {
                reference: url.to_owned(),
                reason: format!("larger than {MANIFEST_LIMIT} bytes"),
            });
        }
        Ok(())
    })
    .await?;
    Ok(bytes)
}

/// Parses a manifest, refusing documents that are ambiguous (both an index and an image
/// manifest) or whose declared media type contradicts the one it was served with.
pub fn parse_manifest(
    reference: &str,
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<(String, ManifestDocument), RegistryError> {
    let bad = |reason: String| RegistryError::BadManifest {
        reference: reference.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|error| bad(format!("not JSON: {error}")))?;
    let is_index = value.get("manifests").is_some();
    let is_image = value.get("config").is_some() || value.get("layers").is_some();
    if is_index && is_image {
        return Err(bad(
            "it is both an index (`manifests`) and an image manifest (`config`, `layers`)"
                .to_owned(),
        ));
    }
    let served = content_type
        .map(|value| value.split(';').next().unwrap_or(value).trim())
        .filter(|served| is_index_type(served) || is_manifest_type(served));
    let declared = value
        .get("mediaType")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let declared = declared.as_deref();
    if let (Some(declared), Some(served)) = (declared, served)
        && declared != served
    {
        return Err(bad(format!(
            "it declares {declared} but was served as {served}"
        )));
    }
    let media_type = declared
        .or(served)
        .unwrap_or(if is_index {
            media_type::OCI_INDEX
        } else {
            media_type::OCI_MANIFEST
        })
        .to_owned();
    let media_type = media_type.as_str();
    let document = if is_index_type(media_type) && !is_image {
        ManifestDocument::Index(
            serde_json::from_value(value)
                .map_err(|error| bad(format!("invalid index: {error}")))?,
        )
    } else if is_manifest_type(media_type) && !is_index {
        ManifestDocument::Image(Box::new(
            serde_json::from_value(value)
                .map_err(|error| bad(format!("invalid manifest: {error}")))?,
        ))
    } else {
        return Err(bad(format!(
            "unsupported media type {media_type} (imgb reads OCI and Docker schema 2 \
             manifests and indexes)"
        )));
    };
    check_schema(&document).map_err(bad)?;
    Ok((media_type.to_owned(), document))
}

/// The OCI schemas' rules that typing alone does not enforce: schema version 2 and media types
/// of the RFC 6838 form `type/subtype`. (Their `layers` `minItems: 1` is not enforced: images
/// of only metadata have no layers, and registries accept them.)
fn check_schema(document: &ManifestDocument) -> Result<(), String> {
    let (version, own_types) = match document {
        ManifestDocument::Index(index) => (index.schema_version, vec![&index.media_type]),
        ManifestDocument::Image(manifest) => (
            manifest.schema_version,
            vec![&manifest.media_type, &manifest.artifact_type],
        ),
    };
    if version != 2 {
        return Err(format!("schemaVersion is {version}, not 2"));
    }
    let descriptor_types = document.references().into_iter().flat_map(|descriptor| {
        [
            Some(&descriptor.media_type),
            descriptor.artifact_type.as_ref(),
        ]
    });
    let invalid = own_types
        .into_iter()
        .flatten()
        .chain(descriptor_types.flatten())
        .find(|media_type| !valid_media_type(media_type));
    match invalid {
        Some(media_type) => Err(format!(
            "{media_type:?} is not a media type (`type/subtype`)"
        )),
        None => Ok(()),
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$`
fn valid_media_type(text: &str) -> bool {
    let part = |part: &str| {
        let bytes = part.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.len() <= 127
            && bytes
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&c))
    };
    text.split_once('/')
        .is_some_and(|(kind, subtype)| part(kind) && part(subtype))
}

/// The image manifest of `index` for `platform`.
fn select_platform<'a>(
    reference: &str,
    index: &'a ImageIndex,
    platform: &Platform,
) -> Result<&'a Descriptor, RegistryError> {
    let images = || {
        index
            .manifests
            .iter()
            .filter(|entry| is_manifest_type(&entry.media_type))
    };
    let exact = images().find(|entry| {
        entry
            .platform
            .as_ref()
            .is_some_and(|candidate| candidate == platform || platform.matches(candidate))
    });
    exact.ok_or_else(|| RegistryError::NoPlatform {
        reference: reference.to_owned(),
        platform: platform.to_string(),
        available: images()
            .filter_map(|entry| entry.platform.as_ref().map(ToString::to_string))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(os: &str, architecture: &str) -> Platform {
        Platform {
            architecture: architecture.into(),
            os: os.into(),
            os_version: None,
            os_features: Vec::new(),
            variant: None,
        }
    }

    #[test]
    fn index_selects_the_platform_and_lists_the_others_when_missing() {
        let entry = |arch: &str, byte: u8| Descriptor {
            platform: Some(platform("linux", arch)),
            ..Descriptor::new(media_type::OCI_MANIFEST, Digest::of(&[byte]), 1)
        };
        let index = ImageIndex::new(vec![entry("arm64", 1), entry("amd64", 2)]);
        let chosen = select_platform("x", &index, &platform("linux", "amd64")).unwrap();
        assert_eq!(chosen.digest, Digest::of(&[2]));
        let error = select_platform("x", &index, &platform("linux", "s390x")).unwrap_err();
        assert!(
            error.to_string().contains("linux/arm64, linux/amd64"),
            "{error}"
        );
    }

    #[test]
    fn manifests_are_read_by_declared_or_served_type() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        let (media_type, document) = parse_manifest("r", docker, None).unwrap();
        assert_eq!(media_type, media_type::DOCKER_MANIFEST);
        assert!(matches!(document, ManifestDocument::Image(_)));
        let list = br#"{"schemaVersion":2,"manifests":[]}"#;
        let (media_type, _) = parse_manifest(
            "r",
            list,
            Some(&format!(
                "{}; charset=utf-8",
                media_type::DOCKER_MANIFEST_LIST
            )),
        )
        .unwrap();
        assert_eq!(media_type, media_type::DOCKER_MANIFEST_LIST);
        let contradicted = parse_manifest("r", docker, Some(media_type::OCI_MANIFEST)).unwrap_err();
        assert!(
            contradicted.to_string().contains("served as"),
            "{contradicted}"
        );
        let schema1 = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        let error = parse_manifest("r", schema1, None).unwrap_err();
        assert!(
            error.to_string().contains("unsupported media type"),
            "{error}"
        );
    }

    #[test]
    fn manifests_breaking_the_oci_schema_are_refused() {
        let manifest = |version: u32, layer_type: &str| {
            serde_json::json!({
                "schemaVersion": version, "mediaType": media_type::OCI_MANIFEST,
                "config": { "mediaType": media_type::OCI_CONFIG,
                            "digest": Digest::of(b"{}"), "size": 2 },
                "layers": [{ "mediaType": layer_type, "digest": Digest::of(b""), "size": 0 }]
            })
            .to_string()
        };
        let good = manifest(2, media_type::OCI_LAYER_GZIP);
        let (_, document) = parse_manifest("r", good.as_bytes(), None).unwrap();
        assert_eq!(document.references().len(), 2);
        for (bad, expected) in [
            (manifest(3, media_type::OCI_LAYER), "schemaVersion is 3"),
            (manifest(2, "tar"), "\"tar\" is not a media type"),
            (manifest(2, "a/b c"), "is not a media type"),
        ] {
            let error = parse_manifest("r", bad.as_bytes(), None).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        let no_size = br#"{"schemaVersion":2,"manifests":[{"mediaType":"a/b","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}]}"#;
        assert!(parse_manifest("r", no_size, None).is_err());
    }
}
