//! Cache records from elsewhere (`--cache-from`) and the choice of records to send elsewhere
//! (`--cache-to`); the format and the locations are [`imgb_cache::build_cache`]'s.
//!
//! [`RemoteRecords`] is the solver's second record source, consulted only after the local
//! records miss:
//! - Every location is read on its own task as soon as the build starts; a step the
//!   local records serve never waits for them, a step that misses locally waits until all
//!   locations have answered. A location that cannot be read is a warning and adds nothing.
//! - A remote hit yields the recorded filesystem without copying anything: layer blobs are
//!   fetched only when a step must run on top of them ([`RemoteRecords::fetch`] before the
//!   executor gets the job) or when the caller needs them (the image, an export).
//! - A cache mount a step needs and the store lacks starts as the imported contents of the
//!   same mount key ([`RemoteRecords::cache_mount`]), fetched only then.
//! - A remote hit becomes a local record once every blob it names is local
//!   ([`RemoteRecords::adopt_hits`]), so the next build hits without the remote cache.
//!
//! Keys are content-addressed and machine-independent (see [`super::key`]), so a record
//! imported for a key is as good as a local one; a blob is still verified against its digest
//! when it is fetched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use imgb_cache::build_cache::{
    BuildCacheError, CacheBuilder, CacheLayer, CacheLocation, ImportedCache, import_cache,
};
use imgb_cache::registry::Registry;
use imgb_cache::{Digest, Store};
use tokio::sync::watch;

use crate::graph::{BuildGraph, Op, VertexId};
use crate::solve::key::CacheKey;
use crate::solve::records::{Record, RecordError, RecordStore};
use crate::solve::result::{Filesystem, LayerRef, Solved};
use crate::solve::scheduler::Solution;

/// Which steps `--cache-to` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportMode {
    /// The steps that built the exported image's layers (the final stage).
    #[default]
    Min,
    /// Every step of every stage.
    Max,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "layer blob {digest} is neither in the store nor in any --cache-from cache \
         (hint: the cache may have been overwritten while this build ran; build again)"
    )]
    BlobUnavailable { digest: Digest },
    #[error("fetching a cached layer: {0}")]
    Fetch(#[from] BuildCacheError),
}

/// The records of every `--cache-from` location, by key.
#[derive(Debug, Default)]
struct RemoteIndex {
    records: HashMap<CacheKey, Filesystem>,
    /// Blob digest → the first cache that holds it.
    blobs: HashMap<Digest, Arc<ImportedCache>>,
    /// Cache mount key → its packed contents and the cache holding them.
    cache_mounts: HashMap<Digest, (CacheLayer, Arc<ImportedCache>)>,
}

impl RemoteIndex {
    fn add(&mut self, cache: ImportedCache) {
        let cache = Arc::new(cache);
        for (record, layers) in cache.content.records() {
            let layers = layers
                .into_iter()
                .map(|layer| LayerRef {
                    diff_id: layer.diff_id,
                    blob: layer.blob,
                })
                .collect();
            self.records
                .entry(CacheKey::from(record.key.clone()))
                .or_insert(Filesystem {
                    layers,
                    image: None,
                });
        }
        for blob in &cache.content.layers {
            self.blobs
                .entry(blob.digest.clone())
                .or_insert_with(|| Arc::clone(&cache));
        }
        for (mount, layer) in cache.content.cache_mounts() {
            self.cache_mounts
                .entry(mount.key.clone())
                .or_insert_with(|| (layer, Arc::clone(&cache)));
        }
    }
}

/// Imported cache records, loading in the background; see the module docs.
#[derive(Debug)]
pub struct RemoteRecords {
    store: Store,
    /// `None` until every location has answered.
    index: watch::Receiver<Option<Arc<RemoteIndex>>>,
    /// Remote hits of this build, to become local records once their blobs are local.
    hits: Mutex<Vec<Record>>,
}

impl RemoteRecords {
    /// Starts reading `locations` on the current tokio runtime. `warn` hears about each
    /// location that cannot be read; the build goes on without it.
    pub fn load(
        store: Store,
        registry: Registry,
        locations: Vec<CacheLocation>,
        warn: impl Fn(&CacheLocation, &BuildCacheError) + Send + Sync + 'static,
    ) -> Self {
        let (sender, index) = watch::channel(None);
        let warn = Arc::new(warn);
        let loader_store = store.clone();
        tokio::spawn(async move {
            let reads = locations.into_iter().map(|location| {
                let (warn, store, registry) =
                    (Arc::clone(&warn), loader_store.clone(), registry.clone());
                tokio::spawn(async move {
                    match import_cache(&location, &store, &registry).await {
                        Ok(cache) => Some(cache),
                        Err(error) => {
                            warn(&location, &error);
                            None
                        }
                    }
                })
            });
            let mut merged = RemoteIndex::default();
            // In the order given, so the first location wins a key both hold.
            for read in reads.collect::<Vec<_>>() {
                if let Ok(Some(cache)) = read.await {
                    merged.add(cache);
                }
            }
            // Nobody listening means the build is over: nothing to tell.
            let _ = sender.send(Some(Arc::new(merged)));
        });
        RemoteRecords {
            store,
            index,
            hits: Mutex::new(Vec::new()),
        }
    }

    async fn index(&self) -> Arc<RemoteIndex> {
        let mut index = self.index.clone();
        match index.wait_for(Option::is_some).await {
            Ok(loaded) => loaded.clone().unwrap_or_default(),
            // The loader died (a panic): as if every location were unreachable.
            Err(_) => Arc::default(),
        }
    }

    /// The filesystem recorded for `key`, waiting for the locations to answer first.
    pub async fn lookup(&self, key: &CacheKey) -> Option<Filesystem> {
        self.index().await.records.get(key).cloned()
    }

    /// Notes a remote hit, for [`adopt_hits`](Self::adopt_hits).
    pub fn remember_hit(&self, record: Record) {
        if let Ok(mut hits) = self.hits.lock() {
            hits.push(record);
        }
    }

    /// Makes every layer `filesystem` names readable locally (a blob or a step's snapshot), fetching the missing ones from the caches.
    pub async fn fetch(&self, filesystem: &Filesystem) -> Result<(), RemoteError> {
        let missing: Vec<_> = filesystem
            .layers
            .iter()
            .filter(|layer| !self.store.has_layer(&layer.blob, &layer.diff_id))
            .map(|layer| layer.blob.clone())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let index = self.index().await;
        for blob in missing {
            let cache =
                index
                    .blobs
                    .get(&blob.digest)
                    .ok_or_else(|| RemoteError::BlobUnavailable {
                        digest: blob.digest.clone(),
                    })?;
            cache.fetch_blob(&self.store, &blob).await?;
        }
        Ok(())
    }

    /// The imported contents of the cache mount `key`, its blob fetched into the store; `None`
    /// when no location exported that mount.
    pub async fn cache_mount(&self, key: &Digest) -> Result<Option<CacheLayer>, RemoteError> {
        let index = self.index().await;
        let Some((layer, cache)) = index.cache_mounts.get(key) else {
            return Ok(None);
        };
        cache.fetch_blob(&self.store, &layer.blob).await?;
        Ok(Some(layer.clone()))
    }

    /// Writes a local record for each remembered hit whose blobs are all local now; returns
    /// how many were written.
    pub fn adopt_hits(&self, records: &RecordStore) -> Result<usize, RecordError> {
        let hits = self
            .hits
            .lock()
            .map(|mut hits| std::mem::take(&mut *hits))
            .unwrap_or_default();
        let mut adopted = 0;
        for record in hits {
            if record.result.missing_from(&self.store).is_none() {
                records.write(&record)?;
                adopted += 1;
            }
        }
        Ok(adopted)
    }
}

/// The solved steps `--cache-to` exports, with their keys: in [`ExportMode::Min`] the steps
/// `target`'s filesystem was built by (following each step's base, input 0, back to the
/// stage's source), in [`ExportMode::Max`] every keyed step the solve needed.
pub fn exported_steps(
    graph: &BuildGraph,
    solution: &Solution,
    target: VertexId,
    mode: ExportMode,
) -> Vec<(String, CacheKey, Filesystem)> {
    let step = |id: VertexId| {
        let solved = solution.get(id)?;
        let key = solved.key.clone()?;
        let Solved::Filesystem(filesystem) = &*solved.result else {
            return None;
        };
        Some((graph.vertex(id).name.clone(), key, filesystem.clone()))
    };
    match mode {
        ExportMode::Max => {
            let mut steps: Vec<_> = solution.iter().filter_map(|(id, _)| step(id)).collect();
            // Solution order is a hash map's: sort so equal builds export equal caches.
            steps.sort_by(|a, b| a.1.cmp(&b.1));
            steps
        }
        ExportMode::Min => {
            let mut steps = Vec::new();
            let mut current = Some(target);
            while let Some(id) = current {
                let vertex = graph.vertex(id);
                if !matches!(vertex.op, Op::Exec(_) | Op::File { .. }) {
                    break;
                }
                steps.extend(step(id));
                current = vertex.inputs.first().copied();
            }
            steps.reverse();
            steps
        }
    }
}

/// The cache content for `steps`.
pub fn cache_content(
    steps: &[(String, CacheKey, Filesystem)],
    image_layers: Option<&Filesystem>,
) -> CacheBuilder {
    let as_cache_layers = |filesystem: &Filesystem| -> Vec<CacheLayer> {
        filesystem
            .layers
            .iter()
            .map(|layer| CacheLayer {
                diff_id: layer.diff_id.clone(),
                blob: layer.blob.clone(),
            })
            .collect()
    };
    let mut builder = match image_layers {
        Some(image) => CacheBuilder::with_layers(as_cache_layers(image)),
        None => CacheBuilder::default(),
    };
    for (name, key, filesystem) in steps {
        builder.add_record(key.digest().clone(), name, as_cache_layers(filesystem));
    }
    builder
}
