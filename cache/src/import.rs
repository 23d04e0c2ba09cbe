//! `imgb load`: an OCI image layout tar or a docker-archive tar (optionally gzip/zstd
//! compressed as a whole) into the store, fully verified, under the names it carries.
//!
//! The archive is read once, as a stream (stdin works): every member except the few small
//! metadata files is staged in `tmp/` while it is hashed, so nothing large is held in memory and
//! member order does not matter (`docker save` puts `manifest.json` last). Then:
//! - OCI layout (`index.json`): each manifest descriptor's blob is checked against its digest and
//!   size, and so are the config and layers it names; a nested index contributes the manifest
//!   for this host's platform. Manifests are stored byte for byte, so digests are unchanged.
//!   Names come from `io.containerd.image.name`, else from `org.opencontainers.image.ref.name`
//!   when that is a reference rather than a bare tag (`latest` alone names no repository).
//! - docker-archive (`manifest.json` alone): configs and layers are found by path (symlinked
//!   duplicate layers included), and an OCI manifest is written for each image. Names come from
//!   `RepoTags`; an archive with both files (BuildKit's and Docker 25's) adds `RepoTags` to the
//!   OCI manifest with the same config.
//! - Every layer's diffID (its uncompressed digest) must match the config's `rootfs.diff_ids`.
//!   Uncompressed layers are stored as given, not compressed: loading stays as fast as copying,
//!   an uncompressed layer's blob digest is its diffID, and exporters compress on request
//!   (`force-compression`), as BuildKit does with such base layers.
//! - Only when everything checks out are the needed blobs moved into the store (layers and
//!   configs before manifests) and then the names written; anything else staged is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use rayon::prelude::*;

use crate::apply::{ApplyLimits, decompress};
use crate::digest::{Digest, HashingWriter};
use crate::image::{ImageError, StoredImage};
use crate::oci::{
    Descriptor, DockerArchiveEntry, ImageConfig, ImageIndex, ImageManifest, LayerCompression,
    Platform, annotation, canonical_json, is_index_type, is_manifest_type, media_type,
};
use crate::reference::{Reference, ReferenceError};
use crate::store::{StagedFile, Store, StoreError, TmpFile};
use crate::tar_format::Kind;
use crate::tar_reader::{EntryKind, TarError, TarReader};

const INDEX_JSON: &str = "index.json";
const DOCKER_MANIFEST_JSON: &str = "manifest.json";
/// Small members kept in memory instead of staged.
const METADATA_FILES: &[&str] = &[
    INDEX_JSON,
    DOCKER_MANIFEST_JSON,
    "oci-layout",
    "repositories",
];
const MAX_METADATA_BYTES: u64 = 16 << 20;
const MAX_ALIAS_HOPS: usize = 32;
const COPY_BUFFER: usize = 256 * 1024;

/// An image the archive held, now stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// Full normalized names it was tagged with (empty: untagged, reachable by digest only).
    pub names: Vec<String>,
    pub image: StoredImage,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the archive failed: {0}")]
    Read(#[source] io::Error),
    #[error("malformed archive at byte {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
    #[error("archive member {path:?}: {reason}")]
    BadMember { path: String, reason: String },
    #[error(
        "not an image archive: it has neither index.json (OCI layout) nor manifest.json \
         (docker-archive)"
    )]
    NotAnImageArchive,
    #[error("the archive's index lists no image")]
    NoImages,
    #[error("{path} (needed by {needed_by}) is not in the archive")]
    MissingMember { path: String, needed_by: String },
    #[error("archive member {path} hashes to {actual}, but {needed_by} says {expected}")]
    DigestMismatch {
        path: String,
        needed_by: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("archive member {path} has {actual} bytes, but {needed_by} says {expected}")]
    SizeMismatch {
        path: String,
        needed_by: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "layer {index} of {image} ({path}) has diffID {actual}, but the config says {expected}"
    )]
    DiffIdMismatch {
        image: String,
        index: usize,
        path: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{image} has {layers} layers but its config lists {diff_ids} diffIDs")]
    LayerCount {
        image: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("{path} is not valid JSON for its type: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported media type {media_type:?} for {role}")]
    MediaType {
        path: String,
        role: &'static str,
        media_type: String,
    },
    #[error("index {path} has no image for {wanted} (it has: {available})")]
    NoMatchingPlatform {
        path: String,
        wanted: String,
        available: String,
    },
    #[error("image name in {path}: {source}")]
    Name {
        path: String,
        #[source]
        source: ReferenceError,
    },
    #[error("decompressing layer {path}: {source}")]
    Decompress {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("encoding the manifest for {image} failed: {source}")]
    Encode {
        image: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl From<TarError> for ImportError {
    fn from(error: TarError) -> Self {
        match error {
            TarError::Io(source) => Self::Read(source),
            TarError::Malformed { offset, reason } => Self::Malformed { offset, reason },
        }
    }
}

/// Loads every image in the archive read from `input` into `store`.
pub fn load_archive(store: &Store, input: impl Read) -> Result<Vec<LoadedImage>, ImportError> {
    let archive = Archive::read(store, input)?;
    let plan = if archive.metadata.contains_key(INDEX_JSON) {
        archive.plan_layout()?
    } else if archive.metadata.contains_key(DOCKER_MANIFEST_JSON) {
        archive.plan_docker()?
    } else {
        return Err(ImportError::NotAnImageArchive);
    };
    if plan.is_empty() {
        return Err(ImportError::NoImages);
    }
    archive.commit(store, plan)
}

/// A member staged in `tmp/`.
#[derive(Debug)]
struct Staged {
    file: StagedFile,
    digest: Digest,
    size: u64,
}

/// What the archive held: staged members, links between members, metadata files.
#[derive(Debug, Default)]
struct Archive {
    files: HashMap<String, Staged>,
    /// Member path → the path it links to (symlinks and hardlinks).
    aliases: HashMap<String, String>,
    metadata: HashMap<String, Vec<u8>>,
}

/// A manifest to store, where its bytes come from, and its names.
#[derive(Debug)]
struct PlannedImage {
    manifest: ManifestSource,
    digest: Digest,
    names: BTreeSet<String>,
    /// Blobs (config, layers) that must be moved into the store, by digest → member path.
    blobs: BTreeMap<Digest, String>,
}

#[derive(Debug)]
enum ManifestSource {
    /// A member, stored byte for byte.
    Member(String),
    /// Written for a docker-archive image.
    Generated(Vec<u8>),
}

impl Archive {
    fn read(store: &Store, input: impl Read) -> Result<Self, ImportError> {
        let (_, stream) = decompress(input).map_err(ImportError::Read)?;
        let mut tar = TarReader::new(stream);
        let mut archive = Self::default();
        let mut buffer = vec![0u8; COPY_BUFFER];
        while let Some(entry) = tar.next_entry()? {
            let path = member_path(&entry.path)?;
            match entry.kind {
                Some(EntryKind::Known(Kind::Regular)) if METADATA_FILES.contains(&&*path) => {
                    let mut bytes = Vec::new();
                    loop {
                        let n = tar.read_content(&mut buffer).map_err(ImportError::Read)?;
                        if n == 0 {
                            break;
                        }
                        bytes.extend_from_slice(buffer.get(..n).unwrap_or_default());
                        if bytes.len() as u64 > MAX_METADATA_BYTES {
                            let reason = format!("larger than {MAX_METADATA_BYTES} bytes");
                            return Err(bad_member(&path, reason));
                        }
                    }
                    archive.metadata.insert(path, bytes);
                }
                Some(EntryKind::Known(Kind::Regular)) => {
                    let staged = stage(store, &mut tar, &mut buffer)?;
                    archive.aliases.remove(&path);
                    archive.files.insert(path, staged);
                }
                Some(EntryKind::Known(Kind::Symlink)) => {
                    let parent = path.rsplit_once('/').map_or("", |(parent, _)| parent);
                    let mut target = entry.link.clone();
                    if !target.starts_with(b"/") && !parent.is_empty() {
                        target = [parent.as_bytes(), b"/", &target].concat();
                    }
                    let target = member_path(&target)?;
                    archive.files.remove(&path);
                    archive.aliases.insert(path, target);
                }
                Some(EntryKind::Known(Kind::HardLink)) => {
                    let target = member_path(&entry.link)?;
                    archive.files.remove(&path);
                    archive.aliases.insert(path, target);
                }
                // Directories and anything else carry nothing an image needs.
                _ => {}
            }
        }
        // Read to the end so a compressed archive's checksum is verified.
        io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(ImportError::Read)?;
        Ok(archive)
    }

    /// The staged member at `path`, following links.
    fn member(&self, path: &str, needed_by: &str) -> Result<(&str, &Staged), ImportError> {
        let mut current = path;
        for _ in 0..MAX_ALIAS_HOPS {
            if let Some((key, staged)) = self.files.get_key_value(current) {
                return Ok((key, staged));
            }
            match self.aliases.get(current) {
                Some(target) => current = target,
                None => break,
            }
        }
        Err(ImportError::MissingMember {
            path: path.to_owned(),
            needed_by: needed_by.to_owned(),
        })
    }

    /// The layout blob a descriptor names, checked against its digest and size.
    fn blob(&self, descriptor: &Descriptor, needed_by: &str) -> Result<&str, ImportError> {
        let path = format!(
            "blobs/{}/{}",
            descriptor.digest.algorithm(),
            descriptor.digest.hex()
        );
        let (path, staged) = self.member(&path, needed_by)?;
        check_member(path, staged, &descriptor.digest, descriptor.size, needed_by)?;
        Ok(path)
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ImportError> {
        let json_error = |source| ImportError::Json {
            path: path.to_owned(),
            source,
        };
        if let Some(bytes) = self.metadata.get(path) {
            return serde_json::from_slice(bytes).map_err(json_error);
        }
        let (_, staged) = self.member(path, "the archive")?;
        let file = File::open(staged.file.path())
            .map_err(|e| ImportError::Read(io::Error::new(e.kind(), format!("{path}: {e}"))))?;
        serde_json::from_reader(io::BufReader::new(file)).map_err(json_error)
    }

    fn plan_layout(&self) -> Result<Vec<PlannedImage>, ImportError> {
        let index: ImageIndex = self.read_json(INDEX_JSON)?;
        let repo_tags = self.docker_repo_tags()?;
        let mut planned: Vec<PlannedImage> = Vec::new();
        for (position, descriptor) in index.manifests.iter().enumerate() {
            let entry = format!("index.json manifest {position}");
            let mut names = names_from_annotations(&descriptor.annotations, &entry)?;
            let manifest = self.select_manifest(descriptor, &entry)?;
            let manifest_path = self.blob(&manifest, &entry)?.to_owned();
            if let Some(existing) = planned.iter_mut().find(|p| p.digest == manifest.digest) {
                existing.names.append(&mut names);
                continue;
            }
            let parsed: ImageManifest = self.read_json(&manifest_path)?;
            let config_path = self.blob(&parsed.config, &manifest_path)?.to_owned();
            let config: ImageConfig = self.read_json(&config_path)?;
            if let Some(tags) = repo_tags.get(&parsed.config.digest) {
                names.extend(tags.iter().cloned());
            }
            let mut blobs = BTreeMap::from([(parsed.config.digest.clone(), config_path)]);
            let mut layer_paths = Vec::with_capacity(parsed.layers.len());
            for layer in &parsed.layers {
                if LayerCompression::from_media_type(&layer.media_type).is_none() {
                    return Err(ImportError::MediaType {
                        path: manifest_path.clone(),
                        role: "a layer",
                        media_type: layer.media_type.clone(),
                    });
                }
                let path = self.blob(layer, &manifest_path)?.to_owned();
                blobs.insert(layer.digest.clone(), path.clone());
                layer_paths.push(path);
            }
            self.check_diff_ids(&manifest_path, &layer_paths, &config)?;
            planned.push(PlannedImage {
                manifest: ManifestSource::Member(manifest_path),
                digest: manifest.digest,
                names,
                blobs,
            });
        }
        Ok(planned)
    }

    /// The manifest an index entry stands for: itself, or this platform's entry of a nested
    /// index.
    fn select_manifest(
        &self,
        descriptor: &Descriptor,
        entry: &str,
    ) -> Result<Descriptor, ImportError> {
        if is_manifest_type(&descriptor.media_type) {
            return Ok(descriptor.clone());
        }
        if !is_index_type(&descriptor.media_type) {
            return Err(ImportError::MediaType {
                path: entry.to_owned(),
                role: "an image",
                media_type: descriptor.media_type.clone(),
            });
        }
        let index_path = self.blob(descriptor, entry)?.to_owned();
        let nested: ImageIndex = self.read_json(&index_path)?;
        let host = Platform::host();
        let matching = nested.manifests.iter().find(|candidate| {
            is_manifest_type(&candidate.media_type)
                && candidate.platform.as_ref().is_some_and(|p| host.matches(p))
        });
        match matching {
            Some(manifest) => Ok(manifest.clone()),
            None => Err(ImportError::NoMatchingPlatform {
                path: index_path,
                wanted: host.to_string(),
                available: nested
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref().map(Platform::to_string))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// `RepoTags` of `manifest.json` (if present), by the digest of the config they go with.
    fn docker_repo_tags(&self) -> Result<HashMap<Digest, BTreeSet<String>>, ImportError> {
        let mut tags: HashMap<Digest, BTreeSet<String>> = HashMap::new();
        if !self.metadata.contains_key(DOCKER_MANIFEST_JSON) {
            return Ok(tags);
        }
        let entries: Vec<DockerArchiveEntry> = self.read_json(DOCKER_MANIFEST_JSON)?;
        for entry in entries {
            let (_, config) = self.member(&entry.config, DOCKER_MANIFEST_JSON)?;
            let names = normalize_names(&entry.repo_tags, DOCKER_MANIFEST_JSON)?;
            tags.entry(config.digest.clone()).or_default().extend(names);
        }
        Ok(tags)
    }

    fn plan_docker(&self) -> Result<Vec<PlannedImage>, ImportError> {
        let entries: Vec<DockerArchiveEntry> = self.read_json(DOCKER_MANIFEST_JSON)?;
        let mut planned: Vec<PlannedImage> = Vec::new();
        for (position, entry) in entries.iter().enumerate() {
            let label = format!("manifest.json image {position}");
            let (config_path, config_member) = self.member(&entry.config, &label)?;
            let config: ImageConfig = self.read_json(config_path)?;
            let mut blobs =
                BTreeMap::from([(config_member.digest.clone(), config_path.to_owned())]);
            let mut layer_paths = Vec::with_capacity(entry.layers.len());
            for layer in &entry.layers {
                let (path, member) = self.member(layer, &label)?;
                blobs.insert(member.digest.clone(), path.to_owned());
                layer_paths.push(path.to_owned());
            }
            let compressions = self.check_diff_ids(&label, &layer_paths, &config)?;
            let layers = layer_paths
                .iter()
                .zip(compressions)
                .map(|(path, compression)| {
                    let member = &self.files[path.as_str()];
                    Descriptor::new(
                        compression.media_type(true),
                        member.digest.clone(),
                        member.size,
                    )
                })
                .collect();
            let config_descriptor = Descriptor::new(
                media_type::OCI_CONFIG,
                config_member.digest.clone(),
                config_member.size,
            );
            let manifest = ImageManifest::new(config_descriptor, layers);
            let bytes = canonical_json(&manifest).map_err(|source| ImportError::Encode {
                image: label.clone(),
                source,
            })?;
            let digest = Digest::of(&bytes);
            let names = normalize_names(&entry.repo_tags, &label)?;
            match planned.iter_mut().find(|p| p.digest == digest) {
                Some(existing) => existing.names.extend(names),
                None => planned.push(PlannedImage {
                    manifest: ManifestSource::Generated(bytes),
                    digest,
                    names,
                    blobs,
                }),
            }
        }
        Ok(planned)
    }

    /// Checks each layer's uncompressed digest against the config (in parallel) and returns
    /// the compression each layer was found to have.
    fn check_diff_ids(
        &self,
        image: &str,
        layer_paths: &[String],
        config: &ImageConfig,
    ) -> Result<Vec<LayerCompression>, ImportError> {
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != layer_paths.len() {
            return Err(ImportError::LayerCount {
                image: image.to_owned(),
                layers: layer_paths.len(),
                diff_ids: diff_ids.len(),
            });
        }
        layer_paths
            .par_iter()
            .zip(diff_ids)
            .enumerate()
            .map(|(index, (path, expected))| {
                let staged = &self.files[path.as_str()];
                let (compression, actual) =
                    uncompressed_digest(staged).map_err(|source| ImportError::Decompress {
                        path: path.clone(),
                        source,
                    })?;
                if actual != *expected {
                    return Err(ImportError::DiffIdMismatch {
                        image: image.to_owned(),
                        index,
                        path: path.clone(),
                        expected: expected.clone(),
                        actual,
                    });
                }
                Ok(compression)
            })
            .collect()
    }

    /// Moves the planned blobs into the store, then writes the names.
    fn commit(
        mut self,
        store: &Store,
        plan: Vec<PlannedImage>,
    ) -> Result<Vec<LoadedImage>, ImportError> {
        for image in &plan {
            for (digest, path) in &image.blobs {
                self.persist(store, digest, path)?;
            }
        }
        for image in &plan {
            match &image.manifest {
                ManifestSource::Member(path) => self.persist(store, &image.digest, path)?,
                ManifestSource::Generated(bytes) => {
                    store.write_blob(bytes)?;
                }
            }
        }
        let mut loaded = Vec::with_capacity(plan.len());
        for image in plan {
            for name in &image.names {
                store.tag_image(name, &image.digest)?;
            }
            loaded.push(LoadedImage {
                names: image.names.into_iter().collect(),
                image: store.read_image(&image.digest)?,
            });
        }
        Ok(loaded)
    }

    fn persist(&mut self, store: &Store, digest: &Digest, path: &str) -> Result<(), ImportError> {
        if store.has_blob(digest) {
            return Ok(());
        }
        if let Some(staged) = self.files.remove(path) {
            staged.file.persist(&store.blob_path(digest))?;
        }
        Ok(())
    }
}

/// A member name as a clean relative path: `./` and leading `/` dropped; `..` refused.
fn member_path(raw: &[u8]) -> Result<String, ImportError> {
    let text = String::from_utf8_lossy(raw);
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(bad_member(&text, "climbs out of the archive"));
                }
            }
            name => parts.push(name),
        }
    }
    Ok(parts.join("/"))
}

fn bad_member(path: &str, reason: impl Into<String>) -> ImportError {
    ImportError::BadMember {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Streams the current member into `tmp/`, hashing it.
fn stage<R: Read>(
    store: &Store,
    tar: &mut TarReader<R>,
    buffer: &mut [u8],
) -> Result<Staged, ImportError> {
    let tmp = TmpFile::create(&store.tmp_dir(), "import")?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(COPY_BUFFER, tmp));
    let write_error = || StoreError::io("stage archive member", store.tmp_dir());
    loop {
        let n = tar.read_content(buffer).map_err(ImportError::Read)?;
        if n == 0 {
            break;
        }
        out.write_all(buffer.get(..n).unwrap_or_default())
            .map_err(write_error())?;
    }
    let (buffered, digest, size) = out.finish();
    let tmp = buffered
        .into_inner()
        .map_err(|error| write_error()(error.into_error()))?;
    Ok(Staged {
        file: tmp.close(),
        digest,
        size,
    })
}

fn check_member(
    path: &str,
    staged: &Staged,
    digest: &Digest,
    size: u64,
    needed_by: &str,
) -> Result<(), ImportError> {
    if staged.digest != *digest {
        return Err(ImportError::DigestMismatch {
            path: path.to_owned(),
            needed_by: needed_by.to_owned(),
            expected: digest.clone(),
            actual: staged.digest.clone(),
        });
    }
    if staged.size != size {
        return Err(ImportError::SizeMismatch {
            path: path.to_owned(),
            needed_by: needed_by.to_owned(),
            expected: size,
            actual: staged.size,
        });
    }
    Ok(())
}

/// The compression of a staged layer and the digest of its uncompressed content.
fn uncompressed_digest(staged: &Staged) -> io::Result<(LayerCompression, Digest)> {
    let file = File::open(staged.file.path())?;
    let (compression, mut stream) = decompress(file)?;
    if compression == LayerCompression::None {
        return Ok((compression, staged.digest.clone()));
    }
    let limits = ApplyLimits::default();
    let allowed = limits
        .expansion_floor
        .max(staged.size.saturating_mul(limits.max_expansion_ratio));
    let mut hasher = HashingWriter::new(io::sink());
    let copied = io::copy(&mut (&mut stream).take(allowed + 1), &mut hasher)?;
    if copied > allowed {
        return Err(io::Error::other(format!(
            "expands to more than {allowed} bytes (ratio limit {})",
            limits.max_expansion_ratio
        )));
    }
    Ok((compression, hasher.finish().1))
}

/// Names from an index entry's annotations, normalized.
fn names_from_annotations(
    annotations: &BTreeMap<String, String>,
    entry: &str,
) -> Result<BTreeSet<String>, ImportError> {
    let name = annotations.get(annotation::IMAGE_NAME).or_else(|| {
        annotations
            .get(annotation::REF_NAME)
            .filter(|reference| reference.contains(['/', ':', '@']))
    });
    normalize_names(name, entry)
}

fn normalize_names<'a>(
    names: impl IntoIterator<Item = &'a String>,
    path: &str,
) -> Result<BTreeSet<String>, ImportError> {
    names
        .into_iter()
        .map(|name| {
            Reference::parse(name)
                .map(|reference| reference.to_string())
                .map_err(|source| ImportError::Name {
                    path: path.to_owned(),
                    source,
                })
        })
        .collect()
}
