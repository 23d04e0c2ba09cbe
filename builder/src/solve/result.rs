//! What solving a vertex yields.
//!
//! A filesystem is a chain of layers, base first: each [`LayerRef`] pairs the layer's content
//! identity (its diffID, the digest of the uncompressed tar) with the stored blob that holds it.
//! Content identity, not the blob, is what downstream cache keys use, so recompressing a layer
//! never invalidates anything. The build context yields no layers: steps read it through the
//! context module, and what they select enters their keys as a digest (see [`super::key`]).

use std::sync::Arc;

use imgb_cache::oci::Descriptor;
use imgb_cache::{Digest, SnapshotLayer, Store};
use serde::{Deserialize, Serialize};

use crate::graph::VertexId;

/// One layer of a filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// sha256 of the uncompressed layer tar: what the layer contains.
    pub diff_id: Digest,
    /// The layer's blob: as stored for image layers; for a step's layer, the uncompressed tar
    /// derived from its snapshot.
    pub blob: Descriptor,
}

impl From<SnapshotLayer> for LayerRef {
    /// A layer a step produced, held as its snapshot; its blob is the uncompressed tar.
    fn from(layer: SnapshotLayer) -> Self {
        LayerRef {
            blob: layer.descriptor(),
            diff_id: layer.diff_id,
        }
    }
}

/// The image a filesystem was resolved from (image sources only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOrigin {
    /// The manifest's digest: the image's identity in downstream cache keys.
    pub manifest: Digest,
    /// The config blob's digest (environment, user, history of the base).
    pub config: Digest,
}

/// A root filesystem: layers, base first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    pub layers: Vec<LayerRef>,
    /// Set when this filesystem *is* an image, as resolved by an image source; a step built on
    /// top of it yields a plain filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageOrigin>,
}

impl Filesystem {
    /// This filesystem with `layer` on top: what a step that changes files yields.
    pub fn with_layer(&self, layer: LayerRef) -> Filesystem {
        let mut layers = self.layers.clone();
        layers.push(layer);
        Filesystem {
            layers,
            image: None,
        }
    }

    pub fn diff_ids(&self) -> impl Iterator<Item = &Digest> {
        self.layers.iter().map(|layer| &layer.diff_id)
    }
}

/// The result of solving one vertex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Solved {
    Filesystem(Filesystem),
    /// The build context, read by the steps that use it through the context module.
    Context,
}

impl Solved {
    /// The empty filesystem (`scratch`).
    pub fn scratch() -> Solved {
        Solved::Filesystem(Filesystem::default())
    }

    pub fn filesystem(&self) -> Option<&Filesystem> {
        match self {
            Solved::Filesystem(filesystem) => Some(filesystem),
            Solved::Context => None,
        }
    }

    /// The first blob this result names that `store` can no longer provide: a record of the
    /// result is only valid while there is none. A step's layer is provided by its snapshot.
    pub fn missing_from(&self, store: &Store) -> Option<&Digest> {
        let Solved::Filesystem(filesystem) = self else {
            return None;
        };
        let missing_layer = filesystem
            .layers
            .iter()
            .find(|layer| !store.has_layer(&layer.blob, &layer.diff_id))
            .map(|layer| &layer.blob.digest);
        missing_layer.or_else(|| {
            filesystem
                .image
                .iter()
                .flat_map(|origin| [&origin.manifest, &origin.config])
                .find(|digest| !store.has_blob(digest))
        })
    }

    /// Every blob this result names (a step's layer blob may exist only as its snapshot).
    pub fn blobs(&self) -> Vec<&Digest> {
        let Solved::Filesystem(filesystem) = self else {
            return Vec::new();
        };
        let layers = filesystem.layers.iter().map(|layer| &layer.blob.digest);
        let image = filesystem
            .image
            .iter()
            .flat_map(|origin| [&origin.manifest, &origin.config]);
        layers.chain(image).collect()
    }
}

/// A solved input handed to an executor: which vertex it is and what it yielded.
#[derive(Debug, Clone)]
pub struct SolvedInput {
    pub vertex: VertexId,
    pub result: Arc<Solved>,
}
