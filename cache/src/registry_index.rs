//! The index `imgb serve`'s registry keeps in a store, under `<root>/registry/`, beside the
//! blobs it names (manifests are blobs too):
//!
//! ```text
//! manifests/<hex>                   a stored manifest's media type; served once this exists
//! repositories/<name>/_tags/<tag>   the digest the tag points at
//! uploads/<id>                      an open blob upload's bytes so far
//! ```
//!
//! Tags are prune roots: while a tag points at a manifest, [`tagged_resources`] keeps it and
//! everything it references (an index's manifests, recursively; a manifest's config and
//! layers, which for a build cache include its cache-mount layers). Untagged manifests and
//! blobs are ordinary cache that prune may remove.
//!
//! Invariants:
//! - The server checks repository names and tags against the distribution grammar before they
//!   become paths. A name component starts with `[a-z0-9]`, so `_tags` is never part of a
//!   name and a walk of `repositories/` tells them apart.
//! - Files are written atomically ([`Store::write_small_file`]): a reader sees the old or the
//!   new content, never a torn one.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::lease::Resource;
use crate::registry::{ManifestDocument, parse_manifest};
use crate::store::{Store, StoreError};

/// The directory under the state directory.
const REGISTRY_DIR: &str = "registry";
/// The directory of a repository's tags, beside its nested repositories.
const TAGS_DIR: &str = "_tags";
/// Repository names are at most 255 bytes, so at most 128 components deep.
const MAX_NAME_DEPTH: usize = 128;

/// Paths of the registry index in one store.
#[derive(Debug, Clone)]
pub struct RegistryIndex {
    dir: PathBuf,
}

impl RegistryIndex {
    pub fn of(store: &Store) -> Self {
        Self {
            dir: store.root().join(REGISTRY_DIR),
        }
    }

    /// The file holding the media type of the stored manifest `digest`.
    pub fn media_type_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("manifests").join(digest.hex())
    }

    /// The directory of repository `name`'s tags (a valid repository name).
    pub fn tags_dir(&self, name: &str) -> PathBuf {
        self.repositories().join(name).join(TAGS_DIR)
    }

    /// The file naming the digest `name:tag` points at (a valid name and tag).
    pub fn tag_path(&self, name: &str, tag: &str) -> PathBuf {
        self.tags_dir(name).join(tag)
    }

    /// Where open blob uploads keep their bytes.
    pub fn uploads_dir(&self) -> PathBuf {
        self.dir.join("uploads")
    }

    fn repositories(&self) -> PathBuf {
        self.dir.join("repositories")
    }

    /// The digest every tag of every repository points at (tag files that do not hold a
    /// digest are skipped).
    pub fn tagged(&self) -> io::Result<Vec<Digest>> {
        let mut digests = Vec::new();
        collect_tags(&self.repositories(), 0, &mut digests)?;
        Ok(digests)
    }
}

/// Walks repository directories under `dir` (never following symlinks), adding what their
/// `_tags` files name.
fn collect_tags(dir: &Path, depth: usize, digests: &mut Vec<Digest>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if entry.file_name() == TAGS_DIR {
            for tag in std::fs::read_dir(entry.path())? {
                // A tag removed meanwhile, or one that is not a digest, names nothing.
                let text = std::fs::read_to_string(tag?.path()).unwrap_or_default();
                digests.extend(Digest::parse(text.trim()).ok());
            }
        } else if depth < MAX_NAME_DEPTH {
            collect_tags(&entry.path(), depth + 1, digests)?;
        }
    }
    Ok(())
}

/// What registry tags keep from prune: the tagged manifests and, recursively, what they
/// reference. A manifest that is missing or unreadable keeps only itself.
pub(crate) fn tagged_resources(store: &Store) -> Result<HashSet<Resource>, StoreError> {
    let index = RegistryIndex::of(store);
    let mut pending = index.tagged().map_err(StoreError::io(
        "list the registry's tags",
        index.repositories(),
    ))?;
    let mut kept = HashSet::new();
    while let Some(manifest) = pending.pop() {
        if !kept.insert(Resource::Blob(manifest.clone())) {
            continue;
        }
        let Some(document) = read_manifest(store, &index, &manifest) else {
            continue;
        };
        for descriptor in document.references() {
            match document {
                ManifestDocument::Index(_) => pending.push(descriptor.digest.clone()),
                ManifestDocument::Image(_) => {
                    kept.insert(Resource::Blob(descriptor.digest.clone()));
                }
            }
        }
    }
    Ok(kept)
}

/// A stored manifest, parsed with the media type it was pushed with.
fn read_manifest(
    store: &Store,
    index: &RegistryIndex,
    digest: &Digest,
) -> Option<ManifestDocument> {
    let media_type = std::fs::read_to_string(index.media_type_path(digest)).ok()?;
    let bytes = std::fs::read(store.blob_path(digest)).ok()?;
    parse_manifest(digest.as_str(), &bytes, Some(media_type.trim()))
        .ok()
        .map(|(_, document)| document)
}
