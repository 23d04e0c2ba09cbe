//! The scheduler: solves the vertices a set of roots needs, each as soon as its inputs are
//! solved, on tokio tasks.
//!
//! Per vertex: scratch and the build context need no work; image sources and downloads are
//! resolved by the [`Executor`] on every build; every other vertex gets its cache key (asking
//! the executor for its context selection first when it reads the context), is served from its
//! record when there is one, and otherwise runs on the executor and is recorded.
//!
//! Invariants:
//! - Each needed vertex is solved exactly once per solve, however many roots or dependents share
//!   it; vertices the roots do not need are never touched.
//! - At most `jobs` executions run at once; cache lookups and key derivation are not limited.
//! - On the first failure (or when the caller cancels) nothing new starts, the [`Cancel`] every
//!   running job holds fires, and the solve waits for running jobs to wind down before it
//!   returns the first failure — never a vertex that merely stopped because of the cancel. A
//!   failing job's `jobs` slot is released only after the cancel fires, so no queued job starts
//!   after a failure. Dropping the solve future aborts its tasks.
//! - `ignore_cache` vertices always run, and are still recorded, so a later build can hit.
//! - Every vertex that runs reports why it was not served from the cache.
//! - With [`Solver::with_remote`], a key the local records miss is looked up in the imported
//!   records (waiting for them to load only then), and a step that must run first fetches the
//!   remote layers its inputs name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use imgb_cache::Digest;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::graph::{BuildGraph, Op, Vertex, VertexId};
use crate::solve::key::{CacheKey, KeyExplanation, KeySources};
use crate::solve::listing::ContextListing;
use crate::solve::records::{Found, MissReason, Position, Record, RecordError, RecordStore};
use crate::solve::remote::{RemoteError, RemoteRecords};
use crate::solve::result::{Solved, SolvedInput};

/// Runs the ops of vertices. Implementations must notice [`Job::cancel`] and return
/// [`ExecError::Cancelled`] promptly, cleaning up what they started: the solve waits for them.
pub trait Executor: Send + Sync + 'static {
    /// Produces the result of `job`'s vertex from its solved inputs. A result naming layers
    /// must only return once their blobs are in the store (its record is written next).
    fn execute(&self, job: &Job) -> impl Future<Output = Result<Solved, ExecError>> + Send;

    /// The files `job`'s vertex selects from the build context (one of its inputs is
    /// [`Solved::Context`]): what its COPY sources or bind mounts name, digested and listed in
    /// one pass over the selection.
    fn select_context(
        &self,
        job: &Job,
    ) -> impl Future<Output = Result<ContextSelection, ExecError>> + Send;
}

/// What a vertex selects from the build context.
pub struct ContextSelection {
    /// Covers paths, contents, modes and ownership of the selected files; it enters the
    /// vertex's cache key.
    pub digest: Digest,
    /// Lists the same files path by path, kept with the digest when the vertex misses so that a
    /// later miss can name the files that changed. Called only on a miss: a hit never pays for
    /// a listing of thousands of paths.
    pub list: ListContext,
}

impl std::fmt::Debug for ContextSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextSelection")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ContextListing`] on demand (on a blocking thread).
pub type ListContext = Box<dyn FnOnce() -> Result<ContextListing, ExecError> + Send>;

/// Why an executor did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl ExecError {
    pub fn failed(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ExecError::Failed(error.into())
    }
}

/// What went wrong with one vertex.
#[derive(Debug, thiserror::Error)]
pub enum VertexError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("cache record: {0}")]
    Record(#[from] RecordError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("internal error: {0}")]
    Panicked(String),
}

impl VertexError {
    fn is_cancellation(&self) -> bool {
        matches!(self, VertexError::Exec(ExecError::Cancelled))
    }

    /// What the executor failed with, for callers that act on its type (its `Display` and
    /// source are forwarded, so an error chain skips it).
    pub fn exec_failure(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            VertexError::Exec(ExecError::Failed(error)) => Some(error.as_ref()),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// The first vertex that failed; the others were cancelled.
    #[error("{name}: {source}")]
    Vertex {
        vertex: VertexId,
        name: String,
        #[source]
        source: VertexError,
    },
    /// The caller cancelled the solve.
    #[error("build cancelled")]
    Cancelled,
}

/// A cancellation signal shared by everything a solve runs; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    notify: Notify,
}

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }

    pub fn cancel(&self) {
        if !self.0.cancelled.swap(true, Ordering::SeqCst) {
            self.0.notify.notify_waiters();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Completes once [`cancel`](Self::cancel) has been called (at once if it already was).
    pub async fn cancelled(&self) {
        let mut notified = std::pin::pin!(self.0.notify.notified());
        // Registered before the flag is checked, so a cancel in between still wakes us.
        notified.as_mut().enable();
        if !self.is_cancelled() {
            notified.await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// What the solve reports while it runs, in order per vertex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// Execution began (after the cache was consulted and a `jobs` slot was free).
    Started {
        vertex: VertexId,
        name: String,
        key: Option<CacheKey>,
        cache_miss_reason: MissReason,
    },
    /// Served from the cache record of `key`; nothing ran.
    Cached {
        vertex: VertexId,
        name: String,
        key: CacheKey,
    },
    Output {
        vertex: VertexId,
        stream: OutputStream,
        line: String,
    },
    Completed {
        vertex: VertexId,
        duration: Duration,
    },
    Failed {
        vertex: VertexId,
        duration: Duration,
        error: String,
    },
    /// Stopped (or never started) because another vertex failed or the build was cancelled.
    Cancelled { vertex: VertexId },
}

/// One vertex to execute, with its solved inputs.
#[derive(Debug)]
pub struct Job {
    pub id: VertexId,
    pub vertex: Vertex,
    /// In the order of `vertex.inputs`.
    pub inputs: Vec<SolvedInput>,
    /// Fires when the solve is failing or cancelled.
    pub cancel: Cancel,
    progress: Option<UnboundedSender<ProgressEvent>>,
}

impl Job {
    /// Reports a line of the step's output.
    pub fn output(&self, stream: OutputStream, line: impl Into<String>) {
        send(
            &self.progress,
            ProgressEvent::Output {
                vertex: self.id,
                stream,
                line: line.into(),
            },
        );
    }
}

fn send(progress: &Option<UnboundedSender<ProgressEvent>>, event: ProgressEvent) {
    if let Some(sender) = progress {
        // Progress is for people; a renderer that went away must not fail the build.
        let _ = sender.send(event);
    }
}

#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// Executions running at once; at least 1.
    pub jobs: usize,
    /// What identifies the project (e.g. the Dockerfile's path): steps at the same position in
    /// different projects are not compared when explaining a miss.
    pub scope: String,
    /// Build-wide settings that change what steps produce; they enter every key.
    pub settings: BTreeMap<String, String>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            jobs: std::thread::available_parallelism().map_or(1, usize::from),
            scope: String::new(),
            settings: BTreeMap::new(),
        }
    }
}

/// A solved vertex.
#[derive(Debug, Clone)]
pub struct SolvedVertex {
    pub result: Arc<Solved>,
    /// The cache key; none for sources.
    pub key: Option<CacheKey>,
    /// Served from a cache record.
    pub cached: bool,
}

impl SolvedVertex {
    fn unkeyed(result: Solved) -> Self {
        SolvedVertex {
            result: Arc::new(result),
            key: None,
            cached: false,
        }
    }
}

/// Every vertex a solve needed, solved.
#[derive(Debug, Default)]
pub struct Solution {
    vertices: HashMap<VertexId, SolvedVertex>,
}

impl Solution {
    pub fn get(&self, id: VertexId) -> Option<&SolvedVertex> {
        self.vertices.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (VertexId, &SolvedVertex)> {
        self.vertices.iter().map(|(id, solved)| (*id, solved))
    }
}

/// Solves graphs with one executor and one record store.
#[derive(Debug)]
pub struct Solver<E> {
    executor: Arc<E>,
    records: RecordStore,
    options: SolveOptions,
    progress: Option<UnboundedSender<ProgressEvent>>,
    remote: Option<Arc<RemoteRecords>>,
}

impl<E: Executor> Solver<E> {
    pub fn new(executor: Arc<E>, records: RecordStore, options: SolveOptions) -> Self {
        Solver {
            executor,
            records,
            options,
            progress: None,
            remote: None,
        }
    }

    /// Consults `remote` for the steps the local records miss.
    pub fn with_remote(mut self, remote: Arc<RemoteRecords>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Sends progress events to `sender`.
    pub fn with_progress(mut self, sender: UnboundedSender<ProgressEvent>) -> Self {
        self.progress = Some(sender);
        self
    }

    /// Solves what `roots` need. `cancel` lets the caller stop the build (Ctrl-C).
    pub async fn solve(
        &self,
        graph: &BuildGraph,
        roots: &[VertexId],
        cancel: &Cancel,
    ) -> Result<Solution, SolveError> {
        let build = Arc::new(Build {
            executor: Arc::clone(&self.executor),
            records: self.records.clone(),
            jobs: Semaphore::new(self.options.jobs.max(1)),
            scope: self.options.scope.clone(),
            settings: self.options.settings.clone(),
            progress: self.progress.clone(),
            remote: self.remote.clone(),
            cancel: Cancel::new(),
        });
        let needed = graph.needed_by(roots);
        let mut coordinator = Coordinator {
            graph,
            waiting: needed
                .iter()
                .map(|&id| (id, distinct(&graph.vertex(id).inputs).len()))
                .collect(),
            build,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            solution: Solution::default(),
        };
        for &id in &needed {
            if coordinator.waiting.get(&id) == Some(&0) {
                coordinator.spawn(id);
            }
        }
        coordinator.run(cancel).await
    }
}

fn distinct(ids: &[VertexId]) -> HashSet<VertexId> {
    ids.iter().copied().collect()
}

/// The bookkeeping of one solve: which vertices wait for how many inputs, what runs.
struct Coordinator<'g, E> {
    graph: &'g BuildGraph,
    /// Needed vertices not yet spawned → how many distinct inputs are unsolved.
    waiting: HashMap<VertexId, usize>,
    build: Arc<Build<E>>,
    tasks: JoinSet<(VertexId, Result<SolvedVertex, VertexError>)>,
    /// Task ids → vertices, to name the vertex of a task that panicked.
    running: HashMap<tokio::task::Id, VertexId>,
    solution: Solution,
}

impl<E: Executor> Coordinator<'_, E> {
    /// Joins finished vertices and spawns those they unblock until nothing runs.
    async fn run(mut self, cancel: &Cancel) -> Result<Solution, SolveError> {
        // The first real failure (or the caller's cancel) wins; a vertex that stopped because
        // the build was cancelled only stands in when nothing else explains the stop.
        let mut failure = None;
        let mut stopped = None;
        loop {
            let joined = tokio::select! {
                joined = self.tasks.join_next_with_id() => joined,
                () = cancel.cancelled(), if failure.is_none() => {
                    failure = Some(SolveError::Cancelled);
                    self.build.cancel.cancel();
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            let (id, outcome) = match joined {
                Ok((task, (id, outcome))) => {
                    self.running.remove(&task);
                    (id, outcome)
                }
                Err(error) => {
                    let Some(id) = self.running.remove(&error.id()) else {
                        continue;
                    };
                    (id, Err(VertexError::Panicked(error.to_string())))
                }
            };
            let error = match outcome {
                Ok(solved) => {
                    if !self.build.cancel.is_cancelled() {
                        self.finish(id, solved);
                    }
                    continue;
                }
                Err(error) => error,
            };
            self.build.cancel.cancel();
            let slot = if error.is_cancellation() {
                &mut stopped
            } else {
                &mut failure
            };
            slot.get_or_insert(SolveError::Vertex {
                vertex: id,
                name: self.graph.vertex(id).name.clone(),
                source: error,
            });
        }
        match failure.or(stopped) {
            Some(failure) => Err(failure),
            None => Ok(self.solution),
        }
    }

    fn spawn(&mut self, id: VertexId) {
        self.waiting.remove(&id);
        let vertex = self.graph.vertex(id).clone();
        let inputs = vertex
            .inputs
            .iter()
            .map(|&input| SolvedInput {
                vertex: input,
                // Spawned only once every input is in the solution (its waiting count hit 0).
                result: Arc::clone(&self.solution.vertices[&input].result),
            })
            .collect();
        let definition = self.graph.definition_digest(id);
        let input_names = vertex
            .inputs
            .iter()
            .map(|&input| self.graph.vertex(input).name.clone())
            .collect();
        let build = Arc::clone(&self.build);
        let task = self.tasks.spawn(async move {
            let outcome = build
                .solve_vertex(id, vertex, inputs, input_names, definition)
                .await;
            (id, outcome)
        });
        self.running.insert(task.id(), id);
    }

    fn finish(&mut self, id: VertexId, solved: SolvedVertex) {
        self.solution.vertices.insert(id, solved);
        for dependent in distinct(&self.graph.dependents(id).collect::<Vec<_>>()) {
            let Some(count) = self.waiting.get_mut(&dependent) else {
                continue; // not needed by the roots
            };
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.spawn(dependent);
            }
        }
    }
}

/// What every task of one solve shares.
struct Build<E> {
    executor: Arc<E>,
    records: RecordStore,
    jobs: Semaphore,
    scope: String,
    settings: BTreeMap<String, String>,
    progress: Option<UnboundedSender<ProgressEvent>>,
    remote: Option<Arc<RemoteRecords>>,
    cancel: Cancel,
}

impl<E: Executor> Build<E> {
    async fn solve_vertex(
        &self,
        id: VertexId,
        vertex: Vertex,
        inputs: Vec<SolvedInput>,
        input_names: Vec<String>,
        definition: Digest,
    ) -> Result<SolvedVertex, VertexError> {
        let job = Job {
            id,
            vertex,
            inputs,
            cancel: self.cancel.clone(),
            progress: self.progress.clone(),
        };
        let begun = Instant::now();
        let outcome = match &job.vertex.op {
            Op::Scratch => return Ok(SolvedVertex::unkeyed(Solved::scratch())),
            Op::Context => return Ok(SolvedVertex::unkeyed(Solved::Context)),
            Op::Image { .. } | Op::Http(_) => self.solve_source(&job).await,
            Op::Exec(_) | Op::File { .. } => {
                self.solve_keyed(&job, &input_names, &definition).await
            }
        };
        if let Err(error) = &outcome {
            self.emit(if error.is_cancellation() {
                ProgressEvent::Cancelled { vertex: id }
            } else {
                ProgressEvent::Failed {
                    vertex: id,
                    duration: begun.elapsed(),
                    error: error.to_string(),
                }
            });
        }
        outcome
    }

    /// An image or download: resolved on every build, never recorded.
    async fn solve_source(&self, job: &Job) -> Result<SolvedVertex, VertexError> {
        let (result, started) = self.run(job, None, MissReason::Source).await?;
        self.emit(ProgressEvent::Completed {
            vertex: job.id,
            duration: started.elapsed(),
        });
        Ok(SolvedVertex {
            result,
            key: None,
            cached: false,
        })
    }

    /// A vertex with a cache key: served from its record, or run and recorded.
    async fn solve_keyed(
        &self,
        job: &Job,
        input_names: &[String],
        definition: &Digest,
    ) -> Result<SolvedVertex, VertexError> {
        let reads_context = job
            .inputs
            .iter()
            .any(|input| matches!(*input.result, Solved::Context));
        let selection = if reads_context {
            Some(self.executor.select_context(job).await?)
        } else {
            None
        };
        let (context_files, list_context) = match selection {
            Some(selection) => (Some(selection.digest), Some(selection.list)),
            None => (None, None),
        };
        let explanation = KeyExplanation::derive(KeySources {
            definition,
            op: &job.vertex.op,
            inputs: &job.inputs,
            context_files: context_files.as_ref(),
            settings: &self.settings,
            input_names,
        });
        let key = explanation.key();
        let position = Position::new(&self.scope, &job.vertex.name);
        let reason = if job.vertex.ignore_cache {
            MissReason::CacheDisabled
        } else {
            let records = self.records.clone();
            let lookup = (key.clone(), position.clone(), explanation.clone());
            match blocking(move || records.find(&lookup.0, &lookup.1, &lookup.2)).await? {
                Found::Hit(record) => return Ok(self.cached(job, key, record.result)),
                Found::Miss(reason) => reason,
            }
        };
        if let Some(remote) = self.remote.as_ref().filter(|_| !job.vertex.ignore_cache)
            && let Some(filesystem) = remote.lookup(&key).await
        {
            let result = Solved::Filesystem(filesystem);
            remote.remember_hit(Record::new(
                job.vertex.name.clone(),
                explanation,
                result.clone(),
            ));
            return Ok(self.cached(job, key, result));
        }
        if let Some(remote) = &self.remote {
            // Inputs served by a remote hit may name layers that are not local yet.
            for input in &job.inputs {
                if let Some(filesystem) = input.result.filesystem() {
                    remote.fetch(filesystem).await?;
                }
            }
        }
        let listing = match list_context {
            Some(list) => {
                Some(Arc::new(tokio::task::spawn_blocking(list).await.map_err(
                    |error| VertexError::Panicked(error.to_string()),
                )??))
            }
            None => None,
        };
        let reason = match (reason, &listing) {
            (
                MissReason::Changed {
                    mut changes,
                    previous_name,
                },
                Some(listing),
            ) => {
                let (records, listing) = (self.records.clone(), Arc::clone(listing));
                blocking(move || {
                    records.explain_files(&mut changes, &listing)?;
                    Ok(MissReason::Changed {
                        changes,
                        previous_name,
                    })
                })
                .await?
            }
            (reason, _) => reason,
        };
        // The listing is written while the step runs; it is only waited for afterwards.
        let listing_written = listing.zip(context_files).map(|(listing, digest)| {
            let records = self.records.clone();
            tokio::task::spawn_blocking(move || records.write_listing(&digest, &listing))
        });
        let ran = self.run(job, Some(key.clone()), reason).await;
        if let Some(written) = listing_written {
            written
                .await
                .map_err(|error| VertexError::Panicked(error.to_string()))??;
        }
        let (result, started) = ran?;
        let records = self.records.clone();
        let record = Record::new(job.vertex.name.clone(), explanation, (*result).clone());
        blocking(move || {
            records.write(&record)?;
            records.set_last_key_at(&position, &record.key)
        })
        .await?;
        self.emit(ProgressEvent::Completed {
            vertex: job.id,
            duration: started.elapsed(),
        });
        Ok(SolvedVertex {
            result,
            key: Some(key),
            cached: false,
        })
    }

    /// Reports a hit and yields its result (a linked COPY's layer moved onto this base).
    fn cached(&self, job: &Job, key: CacheKey, result: Solved) -> SolvedVertex {
        self.emit(ProgressEvent::Cached {
            vertex: job.id,
            name: job.vertex.name.clone(),
            key: key.clone(),
        });
        SolvedVertex {
            result: Arc::new(rebase_linked(job, result)),
            key: Some(key),
            cached: true,
        }
    }

    /// Executes `job` once a `jobs` slot is free; returns the result and when it started.
    async fn run(
        &self,
        job: &Job,
        key: Option<CacheKey>,
        cache_miss_reason: MissReason,
    ) -> Result<(Arc<Solved>, Instant), VertexError> {
        let _slot = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Err(ExecError::Cancelled.into()),
            slot = self.jobs.acquire() => slot.map_err(|_closed| ExecError::Cancelled)?,
        };
        let started = Instant::now();
        self.emit(ProgressEvent::Started {
            vertex: job.id,
            name: job.vertex.name.clone(),
            key,
            cache_miss_reason,
        });
        let result = self.executor.execute(job).await;
        if result.is_err() {
            // Before the slot is released, so no queued job starts after a failure.
            self.cancel.cancel();
        }
        Ok((Arc::new(result?), started))
    }

    fn emit(&self, event: ProgressEvent) {
        send(&self.progress, event);
    }
}

/// A cached `COPY --link` result may come from a build on another base: its own (top) layer
/// goes on this job's base, as BuildKit rebases linked layers.
fn rebase_linked(job: &Job, cached: Solved) -> Solved {
    if !job.vertex.op.is_linked_copy() {
        return cached;
    }
    let base = job
        .inputs
        .first()
        .and_then(|input| input.result.filesystem());
    match (&cached, base) {
        (Solved::Filesystem(filesystem), Some(base)) => match filesystem.layers.last() {
            Some(top) => Solved::Filesystem(base.with_layer(top.clone())),
            None => cached,
        },
        _ => cached,
    }
}

/// Runs file-system work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RecordError> + Send + 'static,
) -> Result<T, VertexError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| VertexError::Panicked(error.to_string()))?
        .map_err(VertexError::from)
}

#[cfg(test)]
mod tests;
