//! The executor that runs a build for real: image sources from the store, file operations into
//! new layers, and exec steps in the runner's ephemeral containers. The scheduler
//! ([`crate::solve`]) decides what runs; this module only does it.
//!
//! Invariants:
//! - Every layer a result names is in the store before the result is returned (the scheduler
//!   writes the record next). A step's layer is stored as its snapshot only: the directory the
//!   step wrote (a COPY's output, a RUN's upper directory) is adopted as it is, and its blob is
//!   derived when an export needs it (see `imgb_cache::layer_source`).
//! - Secrets are handed to the runner as files from a private temp dir by id; their values
//!   never reach a vertex, a key, a record or a layer. Mounts are prepared in [`mounts`].
//! - Temp directories live in the store's `tmp/` and are removed whatever happens.
//! - Base images come from the store, else from their registry (manifest and config only);
//!   a pulled layer is downloaded only when a step needs its snapshot, so a fully cached build
//!   downloads none.

mod cache_mounts;
mod mounts;

pub use cache_mounts::{
    CacheMountError, PackedCacheMounts, SkippedCacheMount, UsedCacheMount, cache_mounts_used,
    pack_cache_mounts,
};

use crate::context::{EntryKind, HashedContext, PathFilter, Selection};
use crate::file_ops::{SourceRoot, apply_file_actions};
use crate::graph::{ExecMount, FileAction, Network, Op};
use crate::http_source;
use crate::ignore::IgnoreRules;
use crate::layered::LayeredView;
use crate::solve::remote::RemoteRecords;
use crate::solve::{
    ContextSelection, ExecError, Executor, Filesystem, ImageOrigin, Job, LayerRef, ListedEntry,
    ListedKind, OutputStream, Solved, SolvedInput,
};
use imgb_cache::oci::{Descriptor, Platform};
use imgb_cache::registry::Registry;
use imgb_cache::{ApplyLimits, Digest, ImageError, Reference, Store};
use imgb_runner::{CommitTo, RunSpec, RunStatus, Runner};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A secret given on the command line (`--secret id=..,src=..|env=..`), by value.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Runs build steps against a store.
#[derive(Debug, Clone)]
pub struct StoreExecutor {
    pub store: Store,
    /// The hashed build context, when the build has one.
    pub context: Option<Arc<HashedContext>>,
    pub runner: Runner,
    /// `SOURCE_DATE_EPOCH`: layer mtimes after it are clamped to it.
    pub source_date_epoch: Option<i64>,
    pub secrets: Arc<BTreeMap<String, Secret>>,
    /// SSH agent sockets by id (`--ssh`), forwarded into steps that mount them.
    pub ssh_agents: Arc<BTreeMap<String, PathBuf>>,
    /// Where base images the store lacks, and the layers of pulled images, come from.
    pub registry: Registry,
    /// `--cache-from` caches: a cache mount the store lacks starts as their copy of it.
    pub remote: Option<Arc<RemoteRecords>>,
}

/// Keeps `error` whole (not its text), so callers can still see its causes (a full disk).
fn failed(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ExecError {
    ExecError::failed(error)
}

impl StoreExecutor {
    /// The snapshot directories of a filesystem, bottom first (made from the blobs if needed;
    /// the layers of earlier steps are snapshots already).
    fn snapshots(&self, filesystem: &Filesystem) -> Result<Vec<PathBuf>, ExecError> {
        filesystem
            .layers
            .iter()
            .map(|layer| {
                self.store
                    .ensure_snapshot(&layer.blob, &layer.diff_id)
                    .map_err(failed)
            })
            .collect()
    }

    /// Downloads the blobs of input layers that have neither a snapshot nor a blob here (the
    /// layers of pulled base images), several at a time.
    async fn fetch_layers(&self, inputs: &[SolvedInput]) -> Result<(), ExecError> {
        let missing: Vec<Descriptor> = inputs
            .iter()
            .filter_map(|input| input.result.filesystem())
            .flat_map(|filesystem| &filesystem.layers)
            .filter(|layer| self.store.snapshot(&layer.diff_id).is_none())
            .map(|layer| layer.blob.clone())
            .collect();
        self.registry
            .ensure_blobs(&self.store, &missing)
            .await
            .map_err(|error| failed(format!("fetching base layers: {error}")))
    }

    fn input_filesystem(inputs: &[SolvedInput], index: usize) -> Result<&Filesystem, ExecError> {
        inputs
            .get(index)
            .and_then(|input| input.result.filesystem())
            .ok_or_else(|| failed(format!("input {index} is not a filesystem")))
    }

    /// The image `reference` names for `platform` (`os/arch[/variant]`): from the store, else
    /// pulled from its registry (manifest and config; layers come when a step needs them).
    async fn resolve_image(&self, reference: &str, platform: &str) -> Result<Solved, ExecError> {
        let image = match self.store.find_image(reference) {
            Ok((_, image)) => image,
            Err(ImageError::NotFound { .. }) => {
                let parsed = Reference::parse(reference).map_err(failed)?;
                let platform = Platform::parse(platform)
                    .ok_or_else(|| failed(format!("{reference}: invalid platform {platform:?}")))?;
                self.registry
                    .pull_image(&self.store, &parsed, &platform)
                    .await
                    .map_err(|error| failed(format!("pulling {reference}: {error}")))?
            }
            Err(error) => return Err(failed(error)),
        };
        let layers = image
            .layers_with_diff_ids()
            .map(|(blob, diff_id)| LayerRef {
                diff_id: diff_id.clone(),
                blob: blob.clone(),
            })
            .collect();
        let origin = ImageOrigin {
            manifest: image.descriptor.digest.clone(),
            config: image.manifest.config.digest.clone(),
        };
        Ok(Solved::Filesystem(Filesystem {
            layers,
            image: Some(origin),
        }))
    }

    fn file_op(&self, inputs: &[SolvedInput], op: &Op) -> Result<Solved, ExecError> {
        let Op::File { actions } = op else {
            return Err(failed("not a file operation"));
        };
        let base = Self::input_filesystem(inputs, 0)?.clone();
        // A linked copy is made on scratch: destinations never resolve through the base.
        let base_view = if op.is_linked_copy() {
            LayeredView::new(Vec::new())
        } else {
            LayeredView::new(self.snapshots(&base)?)
        };
        let mut roots: Vec<Option<SourceRoot<'_>>> = vec![None];
        for input in inputs.iter().skip(1) {
            roots.push(Some(match &*input.result {
                Solved::Context => SourceRoot::Context(
                    self.context
                        .as_deref()
                        .ok_or_else(|| failed("the build has no context"))?,
                ),
                Solved::Filesystem(filesystem) => {
                    SourceRoot::View(LayeredView::new(self.snapshots(filesystem)?))
                }
            }));
        }
        let upper = tempfile::Builder::new()
            .prefix("fileop-")
            .tempdir_in(self.store.tmp_dir())
            .map_err(failed)?;
        // An archive ADD extracts writes what the step's disk limit allows, as a RUN may.
        let unpack_limits = ApplyLimits {
            max_tar_bytes: self.runner.limits().disk_max.unwrap_or(u64::MAX),
            ..ApplyLimits::default()
        };
        apply_file_actions(actions, &base_view, &roots, upper.path(), unpack_limits)
            .map_err(failed)?;
        let layer = self
            .store
            .adopt_snapshot(upper.path(), self.source_date_epoch)
            .map_err(failed)?;
        Ok(Solved::Filesystem(base.with_layer(LayerRef::from(layer))))
    }

    async fn exec(&self, job: &Job, exec: &crate::graph::ExecOp) -> Result<Solved, ExecError> {
        let base = Self::input_filesystem(&job.inputs, 0)?.clone();
        let mut spec = RunSpec::new(self.snapshots(&base)?, exec.argv.clone());
        spec.env = exec.env.clone();
        spec.cwd = exec.cwd.clone();
        spec.user = exec.user.clone();
        spec.network = match exec.network {
            Network::None => imgb_runner::Network::None,
            Network::Host | Network::Default => imgb_runner::Network::DEFAULT,
        };
        let mounts = self.prepare_mounts(job, exec).await?;
        spec.mounts.clone_from(&mounts.mounts);
        spec.env.extend(mounts.env.iter().cloned());
        spec.commit = Some(CommitTo {
            store: self.store.clone(),
            source_date_epoch: self.source_date_epoch,
        });
        let (sender, mut lines) = tokio::sync::mpsc::channel(256);
        let run = self.runner.run(&spec, sender, job.cancel.cancelled());
        let forward = async {
            while let Some(line) = lines.recv().await {
                let stream = match line.stream {
                    imgb_runner::OutputStream::Stdout => OutputStream::Stdout,
                    imgb_runner::OutputStream::Stderr => OutputStream::Stderr,
                };
                job.output(
                    stream,
                    String::from_utf8_lossy(&line.line)
                        .trim_end_matches('\n')
                        .to_string(),
                );
            }
        };
        let (outcome, ()) = tokio::join!(run, forward);
        if job.cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        let outcome = outcome.map_err(failed)?;
        if !outcome.status.success() {
            let how = match outcome.status {
                RunStatus::Exited(code) => format!("exit code: {code}"),
                RunStatus::Signaled(signal) => format!("killed by signal {signal}"),
                RunStatus::TimedOut => "timed out".to_string(),
                RunStatus::LimitExceeded(limit) => limit.to_string(),
                RunStatus::Cancelled => return Err(ExecError::Cancelled),
            };
            return Err(failed(format!(
                "process \"{}\" did not complete successfully: {how}",
                exec.argv.join(" ")
            )));
        }
        let layer = outcome
            .layer
            .ok_or_else(|| failed("the step produced no layer"))?;
        Ok(Solved::Filesystem(base.with_layer(LayerRef::from(layer))))
    }
}

/// Calls `visit` with each selection `op` makes from the build context (its inputs for which
/// `reads_context` holds), in op order: the sources of its COPY actions from the context, the
/// sources of its context bind mounts.
fn visit_context_selections(
    context: &HashedContext,
    op: &Op,
    reads_context: &[bool],
    mut visit: impl FnMut(Selection<'_>),
) -> Result<(), ExecError> {
    let reads_context = |input: usize| reads_context.get(input).copied().unwrap_or(false);
    match op {
        Op::File { actions } => {
            for action in actions {
                if let FileAction::Copy {
                    input,
                    sources,
                    exclude,
                    ..
                } = action
                    && reads_context(*input)
                {
                    let rules = IgnoreRules::from_patterns(exclude).map_err(failed)?;
                    let filter = (!exclude.is_empty()).then_some(&rules as &dyn PathFilter);
                    visit(context.select(sources, filter).map_err(failed)?);
                }
            }
        }
        Op::Exec(exec) => {
            for mount in &exec.mounts {
                if let ExecMount::Bind { input, source, .. } = mount
                    && reads_context(*input)
                {
                    let source = if source.is_empty() {
                        "."
                    } else {
                        source.as_str()
                    };
                    visit(context.select(&[source], None).map_err(failed)?);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

impl Executor for StoreExecutor {
    async fn execute(&self, job: &Job) -> Result<Solved, ExecError> {
        match &job.vertex.op {
            Op::Image {
                reference,
                platform,
            } => self.resolve_image(reference, platform).await,
            op @ Op::File { .. } => {
                self.fetch_layers(&job.inputs).await?;
                let this = self.clone();
                let op = op.clone();
                let inputs = job.inputs.clone();
                tokio::task::spawn_blocking(move || this.file_op(&inputs, &op))
                    .await
                    .map_err(failed)?
            }
            Op::Exec(exec) => {
                self.fetch_layers(&job.inputs).await?;
                self.exec(job, exec).await
            }
            Op::Http(http) => {
                let request = http_source::Request {
                    url: &http.url,
                    filename: &http.filename,
                    checksum: http.checksum.as_deref(),
                };
                let download = http_source::download(&self.store, self.source_date_epoch, request);
                let layer = tokio::select! {
                    () = job.cancel.cancelled() => return Err(ExecError::Cancelled),
                    layer = download => layer.map_err(failed)?,
                };
                Ok(Solved::Filesystem(Filesystem::default().with_layer(layer)))
            }
            Op::Scratch => Ok(Solved::scratch()),
            Op::Context => Ok(Solved::Context),
        }
    }

    async fn select_context(&self, job: &Job) -> Result<ContextSelection, ExecError> {
        let context = self
            .context
            .clone()
            .ok_or_else(|| failed("the build has no context"))?;
        let reads_context: Vec<bool> = job
            .inputs
            .iter()
            .map(|input| matches!(*input.result, Solved::Context))
            .collect();
        let mut digests = Vec::new();
        visit_context_selections(&context, &job.vertex.op, &reads_context, |selection| {
            digests.push(selection.digest.hex());
        })?;
        let op = job.vertex.op.clone();
        Ok(ContextSelection {
            digest: Digest::of(digests.join("\n").as_bytes()),
            list: Box::new(move || {
                let mut entries = Vec::new();
                visit_context_selections(&context, &op, &reads_context, |selection| {
                    entries.extend(selection.entries().map(listed_entry));
                })?;
                Ok(entries.into_iter().collect())
            }),
        })
    }
}

fn listed_entry(entry: &crate::context::Entry) -> ListedEntry {
    let kind = match entry.kind {
        EntryKind::File => ListedKind::File,
        EntryKind::Dir => ListedKind::Dir,
        EntryKind::Symlink { .. } => ListedKind::Symlink,
        EntryKind::Other { .. } => ListedKind::Other,
    };
    ListedEntry::new(&entry.path, kind, entry.mode, entry.digest.as_bytes())
}
