//! Pushing: blobs the repository lacks (skipped when a `HEAD` finds them, mounted from another
//! repository of the same registry when a pull recorded one, else uploaded in one `PUT` or in
//! `PATCH` chunks), then the manifest, once every blob is confirmed.

use std::io::Read;
use std::sync::Arc;

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};

use super::transport::{Call, status_error};
use super::{Registry, RegistryError, Repository};
use crate::digest::Digest;
use crate::export::ExportedImage;
use crate::oci::Descriptor;
use crate::reference::Reference;
use crate::store::Store;

const OCTET_STREAM: &str = "application/octet-stream";

/// How a blob came to be in the target repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    AlreadyThere,
    Mounted,
    Uploaded,
}

/// One name an image was pushed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    pub reference: Reference,
    pub digest: Digest,
    pub uploaded: usize,
    pub mounted: usize,
    pub already_there: usize,
}

impl Repository {
    /// Whether the repository has the blob (`HEAD`).
    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool, RegistryError> {
        let call = Call::new(
            Method::HEAD,
            format!("v2/{}/blobs/{digest}", self.path),
            self.scopes(true),
        );
        self.transport()
            .retrying(|| async {
                let response = self.transport().send(&self.domain, &call).await?;
                match response.status() {
                    status if status.is_success() => Ok(true),
                    StatusCode::NOT_FOUND => Ok(false),
                    _ => Err(status_error(&call.method, response).await),
                }
            })
            .await
    }

    /// Makes the blob `descriptor` present in the repository. A blob the store lacks is mounted
    /// from the repository it was pulled from when that is on the same registry, else fetched
    /// from there first.
    /// A pushed blob is recorded as coming from this repository, so a push of the same image
    /// to another repository of the registry mounts it.
    pub async fn push_blob(
        &self,
        store: &Store,
        descriptor: &Descriptor,
    ) -> Result<BlobPush, RegistryError> {
        let how = self.make_present(store, descriptor).await?;
        store
            .record_blob_source(&descriptor.digest, &self.name())
            .map_err(|source| RegistryError::Source {
                digest: descriptor.digest.clone(),
                source,
            })?;
        Ok(how)
    }

    async fn make_present(
        &self,
        store: &Store,
        descriptor: &Descriptor,
    ) -> Result<BlobPush, RegistryError> {
        if self.blob_exists(&descriptor.digest).await? {
            return Ok(BlobPush::AlreadyThere);
        }
        let source = store.blob_source(&descriptor.digest);
        let mut upload = None;
        if let Some(source) = source
            .as_ref()
            .filter(|source| source.domain() == self.domain && source.path() != self.path)
        {
            match self.mount(&descriptor.digest, source).await? {
                Some(location) => upload = Some(location),
                None => return Ok(BlobPush::Mounted),
            }
        }
        if !store.has_layer(descriptor, &descriptor.digest) {
            let source = source.ok_or_else(|| RegistryError::NoSource {
                digest: descriptor.digest.clone(),
            })?;
            self.registry
                .repository(&source)
                .fetch_blob(store, descriptor)
                .await?;
        }
        let transport = self.transport();
        transport
            .retrying(|| {
                let location = upload.take();
                async move {
                    let location = match location {
                        Some(location) => location,
                        None => self.start_upload().await?,
                    };
                    self.upload(store, descriptor, location).await
                }
            })
            .await?;
        Ok(BlobPush::Uploaded)
    }

    /// Asks the registry to mount `digest` from `source`; the upload location when it started
    /// an upload instead.
    async fn mount(
        &self,
        digest: &Digest,
        source: &Reference,
    ) -> Result<Option<String>, RegistryError> {
        let mut scopes = self.scopes(true);
        scopes.push(format!("repository:{}:pull", source.path()));
        let call = Call::new(
            Method::POST,
            format!(
                "v2/{}/blobs/uploads/?mount={digest}&from={}",
                self.path,
                source.path()
            ),
            scopes,
        )
        .header(CONTENT_LENGTH, "0");
        let response = self.transport().send(&self.domain, &call).await?;
        match response.status() {
            StatusCode::CREATED => Ok(None),
            StatusCode::ACCEPTED => Ok(Some(upload_location(&call, response).await?)),
            _ => Err(status_error(&call.method, response).await),
        }
    }

    async fn start_upload(&self) -> Result<String, RegistryError> {
        let call = Call::new(
            Method::POST,
            format!("v2/{}/blobs/uploads/", self.path),
            self.scopes(true),
        )
        .header(CONTENT_LENGTH, "0");
        let response = self.transport().send(&self.domain, &call).await?;
        match response.status() {
            StatusCode::ACCEPTED => upload_location(&call, response).await,
            _ => Err(status_error(&call.method, response).await),
        }
    }

    /// Uploads the stored blob to the upload session at `location`: one `PUT` when it fits in a
    /// chunk, else `PATCH`es and a closing `PUT`.
    async fn upload(
        &self,
        store: &Store,
        descriptor: &Descriptor,
        mut location: String,
    ) -> Result<(), RegistryError> {
        let chunk_size = self.registry.config().chunk_size.max(1);
        // A step's layer may exist only as its snapshot; its tar is rebuilt while read.
        let mut reader = store.open_layer(descriptor, &descriptor.digest)?;
        let mut sent = 0u64;
        let last = loop {
            let mut chunk = Vec::new();
            (&mut reader)
                .take(chunk_size)
                .read_to_end(&mut chunk)
                .map_err(|error| reader.error(error))?;
            if sent + chunk.len() as u64 >= descriptor.size {
                break chunk;
            }
            let end = sent + chunk.len() as u64 - 1;
            let call = Call::new(Method::PATCH, location.clone(), self.scopes(true))
                .header(CONTENT_TYPE, OCTET_STREAM)
                .header(CONTENT_RANGE, &format!("{sent}-{end}"))
                .body(chunk);
            let response = self.transport().send(&self.domain, &call).await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(status_error(&call.method, response).await);
            }
            sent = end + 1;
            location = upload_location(&call, response).await?;
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let call = Call::new(
            Method::PUT,
            format!("{location}{separator}digest={}", descriptor.digest),
            self.scopes(true),
        )
        .header(CONTENT_TYPE, OCTET_STREAM)
        .body(last);
        let response = self.transport().send(&self.domain, &call).await?;
        match response.status() {
            StatusCode::CREATED => Ok(()),
            _ => Err(status_error(&call.method, response).await),
        }
    }

    /// Puts a manifest under `tag_or_digest`; returns its digest.
    pub async fn push_manifest(
        &self,
        tag_or_digest: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(bytes);
        let call = Call::new(
            Method::PUT,
            format!("v2/{}/manifests/{tag_or_digest}", self.path),
            self.scopes(true),
        )
        .header(CONTENT_TYPE, media_type)
        .body(bytes.to_vec());
        self.transport()
            .retrying(|| async {
                let response = self.transport().send(&self.domain, &call).await?;
                if response.status() != StatusCode::CREATED {
                    return Err(status_error(&call.method, response).await);
                }
                let announced = response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|text| Digest::parse(text).ok());
                match announced {
                    Some(announced) if announced != digest => Err(RegistryError::DigestMismatch {
                        url: response.url().to_string(),
                        expected: digest.clone(),
                        actual: announced,
                    }),
                    _ => Ok(digest.clone()),
                }
            })
            .await
    }
}

impl Registry {
    /// Pushes an image, as [`exported_image`](crate::export::exported_image) made it from the
    /// store, to each of `destinations`: the blobs first (several at a time), then the manifest
    /// under the destination's tag (or digest).
    pub async fn push_image(
        &self,
        store: &Store,
        image: &ExportedImage,
        destinations: &[Reference],
    ) -> Result<Vec<PushedImage>, RegistryError> {
        let blobs: Vec<Descriptor> = std::iter::once(image.config.clone())
            .chain(image.layers.iter().cloned())
            .collect();
        let mut pushed = Vec::new();
        for destination in destinations {
            let repository = self.repository(destination);
            let permits = Arc::new(tokio::sync::Semaphore::new(
                self.config().parallel_transfers.max(1),
            ));
            let mut transfers = tokio::task::JoinSet::new();
            for blob in &blobs {
                let (repository, store, blob, permits) = (
                    repository.clone(),
                    store.clone(),
                    blob.clone(),
                    permits.clone(),
                );
                transfers.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    repository.push_blob(&store, &blob).await
                });
            }
            let mut result = PushedImage {
                reference: destination.clone(),
                digest: image.manifest.digest.clone(),
                uploaded: 0,
                mounted: 0,
                already_there: 0,
            };
            while let Some(finished) = transfers.join_next().await {
                let how = match finished {
                    Ok(how) => how?,
                    Err(error) => std::panic::resume_unwind(error.into_panic()),
                };
                *match how {
                    BlobPush::AlreadyThere => &mut result.already_there,
                    BlobPush::Mounted => &mut result.mounted,
                    BlobPush::Uploaded => &mut result.uploaded,
                } += 1;
            }
            let tag = destination
                .tag()
                .map(str::to_owned)
                .unwrap_or_else(|| image.manifest.digest.to_string());
            repository
                .push_manifest(&tag, &image.manifest.media_type, &image.manifest_bytes)
                .await?;
            pushed.push(result);
        }
        Ok(pushed)
    }
}

/// The `Location` of an upload response (absolute or relative to the registry).
async fn upload_location(call: &Call, response: Response) -> Result<String, RegistryError> {
    match response
        .headers()
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
    {
        Some(location) => Ok(location.to_owned()),
        None => Err(RegistryError::Status {
            method: call.method.to_string(),
            url: response.url().to_string(),
            status: response.status().as_u16(),
            detail: "an upload response without a Location".to_owned(),
        }),
    }
}
