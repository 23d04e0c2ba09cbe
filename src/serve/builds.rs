//! The build service: `/v1/builds`. Clients submit a build (options + context), follow its
//! events, fetch its result and cancel it; builds run in this process through the same
//! [`execute`] as `imgb build`.
//!
//! Protocol (documented in `docs/api/openapi.yaml`):
//! - `POST /v1/builds`: the options as JSON in the `X-Imgb-Build-Options` header (see
//!   [`BuildRequest`]: `imgb build`'s flags, unknown ones refused), the context as the body: a
//!   tar stream (optionally gzip/zstd), after a line of secrets when the content type is
//!   [`secrets::CONTENT_TYPE`]. `202` with the build's id once the context is unpacked, the
//!   Dockerfile parsed and lowered (base images resolved); `400` for malformed input (naming
//!   the field or tar entry), `403` for a step needing an entitlement not granted or secrets
//!   sent in the clear, `413` past `--max-context-size`.
//! - `GET /v1/builds/{id}/events`: NDJSON, the `--progress rawjson` events from the first (a
//!   late reader replays them), plus `queued`, `running`, `warning`, and one last `done`,
//!   `error` or `cancelled`; the stream ends with the build.
//! - `GET /v1/builds/{id}/result`: the file output (OCI/docker archive or rootfs tar).
//! - `DELETE /v1/builds/{id}`: cancel (a queued build never starts; a running one's steps are
//!   cancelled).
//!
//! Invariants:
//! - At most `--max-builds` run at once; the others start in submission order (one dispatcher
//!   takes them from a FIFO channel).
//! - Each build has its own store lease, so a prune (the disk watermark's or `imgb prune`)
//!   never removes what it uses, and its own work directory under the store's `tmp/`
//!   (context, then the result), removed when the build is forgotten (the oldest finished
//!   builds beyond [`KEPT_FINISHED`]).
//! - Listings show ids, states, times, names and digests: never options, build arguments or
//!   errors, which may carry what one client sent and another must not read.
//! - A build's secrets stay in memory, with its job, until it ends (see [`secrets`]).
//! - With `--gc-free-below`, the cache is collected before each build starts and after each
//!   ends, while free space is under the watermark.

mod log;
pub mod request;
pub mod secrets;
pub mod ssh;
pub mod upload;

use crate::check::LoadedDockerfile;
use crate::commands::build::{
    BuildFailure, BuildHost, BuildInputs, GraphCheck, StoreAccess, execute, lower_build,
    source_date_epoch,
};
use crate::commands::progress::{Built, Explainer, Summary, raw_json};
use crate::commands::prune::{
    default_options as default_prune_options, parse_duration, parse_size,
};
use crate::commands::registry::RegistryArgs;
use crate::serve::auth::{RequireRead, RequireWrite};
use crate::serve::listen::Transport;
use crate::serve::metrics::Metrics;
pub use crate::serve::metrics::metrics_router;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use imgb_builder::context::{Symlinks, open_beneath};
use imgb_builder::solve::{Cancel, ProgressEvent};
use imgb_cache::{PruneOptions, Store};
use imgb_frontend::lower::Lowered;
use log::EventLog;
use request::{
    BuildRequest, OPTIONS_HEADER, Refusal, ResultKind, check_entitlements, check_ssh_ids,
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Finished builds remembered (with their results) before the oldest are forgotten.
pub const KEPT_FINISHED: usize = 64;

/// `imgb serve`'s build service flags (flattened into its command).
#[derive(Debug, Clone, clap::Args)]
pub struct BuildsArgs {
    /// Builds running at once; more wait, started in the order they came.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub max_builds: usize,
    /// The largest build context accepted (binary units: `512MiB`, `2GB`).
    #[arg(long, default_value = "1GiB", value_name = "SIZE", value_parser = parse_size)]
    pub max_context_size: u64,
    /// Cancel builds running longer than this (Go duration: `30m`, `1h30m`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub build_timeout: Option<Duration>,
    /// Before a build starts, prune the cache (least recently used first, never what a
    /// running build holds) while the store's filesystem has less free space than this:
    /// `SIZE` (`20GB`) or a percentage of the filesystem (`10%`).
    #[arg(long, value_name = "SIZE|PCT", value_parser = FreeSpace::parse)]
    pub gc_free_below: Option<FreeSpace>,
    /// Entitlements builds may be granted (they must also ask with `imgb build --allow`):
    /// `network.host`, `security.insecure` (repeatable).
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_parser = parse_entitlement)]
    pub allow: Vec<String>,
}

fn parse_entitlement(text: &str) -> Result<String, String> {
    if request::ENTITLEMENTS.contains(&text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "unknown entitlement {text:?} (known: {})",
            request::ENTITLEMENTS.join(", ")
        ))
    }
}

/// The free-space watermark of `--gc-free-below`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    Bytes(u64),
    Percent(f64),
}

impl FreeSpace {
    fn parse(text: &str) -> Result<Self, String> {
        match text.strip_suffix('%') {
            Some(number) => match number.parse::<f64>() {
                Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(FreeSpace::Percent(percent)),
                _ => Err(format!("invalid percentage {text:?} (expected 0% to 100%)")),
            },
            None => parse_size(text).map(FreeSpace::Bytes),
        }
    }

    /// The bytes this watermark means on a filesystem of `total` bytes.
    fn bytes(self, total: u64) -> u64 {
        match self {
            FreeSpace::Bytes(bytes) => bytes,
            FreeSpace::Percent(percent) => (total as f64 * percent / 100.0) as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    const ALL: [BuildState; 5] = [
        BuildState::Queued,
        BuildState::Running,
        BuildState::Succeeded,
        BuildState::Failed,
        BuildState::Cancelled,
    ];

    fn name(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }

    fn finished(self) -> bool {
        !matches!(self, BuildState::Queued | BuildState::Running)
    }
}

/// What a listing may show of a build.
#[derive(Debug, Clone, serde::Serialize)]
struct Status {
    id: String,
    state: BuildState,
    /// Unix times in seconds (with fractions).
    submitted: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<ResultKind>,
}

#[derive(Debug)]
struct Build {
    status: Mutex<Status>,
    log: EventLog,
    cancel: Cancel,
    /// The build's directory under the store's `tmp/`.
    work: PathBuf,
    /// The sockets of the SSH agents the client declared, until the build ends.
    agents: Mutex<Option<ssh::AgentSockets>>,
}

impl Build {
    fn status(&self) -> MutexGuard<'_, Status> {
        // A panic while holding it cannot leave a status half-written: every update is one
        // assignment.
        self.status
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn result_path(&self) -> PathBuf {
        self.work.join("result")
    }

    fn agents(&self) -> MutexGuard<'_, Option<ssh::AgentSockets>> {
        // Replaced whole or taken: a panic cannot leave it half-written.
        self.agents
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A build waiting for a slot, with what it was submitted with.
struct Job {
    build: Arc<Build>,
    request: BuildRequest,
    loaded: LoadedDockerfile,
    secrets: secrets::Secrets,
    /// The socket standing for each SSH agent id the client declared.
    ssh_agents: BTreeMap<String, PathBuf>,
}

/// The builds of one server: queue, slots, records, metrics.
#[derive(Debug)]
pub struct BuildService {
    store: Store,
    config: BuildsArgs,
    builds: Mutex<BTreeMap<u64, Arc<Build>>>,
    next_number: AtomicU64,
    queue: UnboundedSender<Job>,
    /// The queue's receiving end until the first submission starts the dispatcher (the
    /// service is made before the server's runtime).
    pending_jobs: Mutex<Option<UnboundedReceiver<Job>>>,
    running: AtomicU64,
    accepting: AtomicBool,
    metrics: Metrics,
    /// Distinguishes this server's build ids from an earlier run's.
    epoch: u64,
    /// `imgb serve --insecure`: secrets may come over plain TCP.
    insecure: bool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("build", &self.build).finish()
    }
}

impl BuildService {
    /// The service for `store` (the server's; each build takes a lease of its own);
    /// `insecure` accepts secrets over plain TCP.
    pub fn new(store: Store, config: &BuildsArgs, insecure: bool) -> anyhow::Result<Self> {
        let (queue, jobs) = unbounded_channel();
        let epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        std::fs::create_dir_all(store.tmp_dir())?;
        Ok(BuildService {
            store,
            builds: Mutex::new(BTreeMap::new()),
            next_number: AtomicU64::new(1),
            queue,
            pending_jobs: Mutex::new(Some(jobs)),
            running: AtomicU64::new(0),
            accepting: AtomicBool::new(true),
            metrics: Metrics::default(),
            epoch,
            config: config.clone(),
            insecure,
        })
    }

    /// Starts the dispatcher on the current runtime, the first time only.
    fn start_dispatcher(self: &Arc<Self>) {
        let jobs = self
            .pending_jobs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(jobs) = jobs {
            tokio::spawn(dispatch(Arc::clone(self), jobs));
        }
    }

    /// The entitlements `--allow` grants.
    fn allowed(&self) -> BTreeSet<String> {
        self.config.allow.iter().cloned().collect()
    }

    fn builds(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Build>>> {
        self.builds
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn find(&self, id: &str) -> Option<Arc<Build>> {
        let number = id
            .strip_prefix(&format!("{:x}-", self.epoch))
            .and_then(|number| number.parse::<u64>().ok())?;
        self.builds().get(&number).cloned()
    }

    /// Stops taking builds, waits up to `grace` for the running and queued ones, then cancels
    /// what is left and waits for it to stop (for graceful shutdown).
    pub async fn drain(&self, grace: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        let all_finished = || {
            self.builds()
                .values()
                .all(|build| build.status().state.finished())
        };
        let deadline = Instant::now() + grace;
        while !all_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let unfinished: Vec<_> = self.builds().values().cloned().collect();
        for build in unfinished {
            cancel(&build);
        }
        while !all_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Prometheus exposition of the service's metrics.
    pub fn metrics_text(&self) -> String {
        let mut counts: BTreeMap<&str, u64> = BuildState::ALL
            .iter()
            .map(|state| (state.name(), 0))
            .collect();
        for build in self.builds().values() {
            *counts.entry(build.status().state.name()).or_default() += 1;
        }
        let states: Vec<_> = counts.into_iter().collect();
        let queued = states
            .iter()
            .find(|(state, _)| *state == "queued")
            .map_or(0, |(_, count)| *count);
        self.metrics.render(&states, queued)
    }

    /// Registers a submitted build and queues it.
    fn enqueue(
        self: &Arc<Self>,
        work: PathBuf,
        (request, loaded, secrets): (BuildRequest, LoadedDockerfile, secrets::Secrets),
        (result, agents): (Option<ResultKind>, Option<ssh::AgentSockets>),
        number: u64,
    ) -> Status {
        let status = Status {
            id: format!("{:x}-{number}", self.epoch),
            state: BuildState::Queued,
            submitted: unix_seconds(SystemTime::now()),
            started: None,
            finished: None,
            tags: request.tag.clone(),
            digest: None,
            result,
        };
        let build = Arc::new(Build {
            status: Mutex::new(status.clone()),
            log: EventLog::default(),
            cancel: Cancel::new(),
            work,
            agents: Mutex::new(None),
        });
        build.log.push(&json!({"event": "queued", "id": status.id}));
        self.builds().insert(number, Arc::clone(&build));
        self.forget_old_builds();
        self.start_dispatcher();
        let ssh_agents = agents
            .as_ref()
            .map(|agents| agents.sockets().clone())
            .unwrap_or_default();
        *build.agents() = agents;
        if self
            .queue
            .send(Job {
                build: Arc::clone(&build),
                request,
                loaded,
                secrets,
                ssh_agents,
            })
            .is_err()
        {
            finish(
                &build,
                BuildState::Failed,
                &json!({"event": "error", "message": "the server is stopping"}),
            );
        }
        status
    }

    /// Drops the oldest finished builds beyond [`KEPT_FINISHED`], with their work directories.
    fn forget_old_builds(&self) {
        let mut builds = self.builds();
        let finished: Vec<u64> = builds
            .iter()
            .filter(|(_, build)| build.status().state.finished())
            .map(|(number, _)| *number)
            .collect();
        let excess = finished.len().saturating_sub(KEPT_FINISHED);
        for number in finished.into_iter().take(excess) {
            if let Some(build) = builds.remove(&number) {
                let _ = std::fs::remove_dir_all(&build.work);
            }
        }
    }

    /// Prunes the cache, least recently used first, while free space is under the watermark.
    fn collect_garbage(&self) {
        let Some(watermark) = self.config.gc_free_below else {
            return;
        };
        let Ok(stats) = rustix::fs::statvfs(self.store.root()) else {
            return;
        };
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        let wanted = watermark.bytes(stats.f_blocks.saturating_mul(stats.f_frsize));
        if free >= wanted {
            return;
        }
        let used: u64 = match self.store.usage() {
            Ok(kinds) => kinds.iter().map(|(_, usage)| usage.bytes).sum(),
            Err(error) => {
                eprintln!("warning: --gc-free-below: measuring the store: {error}");
                return;
            }
        };
        let options = PruneOptions {
            keep_storage: Some(used.saturating_sub(wanted - free)),
            ..default_prune_options()
        };
        self.metrics.gc_runs.fetch_add(1, Ordering::Relaxed);
        match self.store.prune(&options) {
            Ok(report) => {
                let freed: u64 = report.removed.iter().map(|removed| removed.bytes).sum();
                self.metrics
                    .gc_freed_bytes
                    .fetch_add(freed, Ordering::Relaxed);
            }
            Err(error) => eprintln!("warning: --gc-free-below: pruning the cache: {error}"),
        }
    }
}

/// [`BuildService::collect_garbage`] on a blocking thread.
async fn collect_garbage_now(service: &Arc<BuildService>) {
    let gc = Arc::clone(service);
    let _ = tokio::task::spawn_blocking(move || gc.collect_garbage()).await;
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// Ends a build: its state and time, and the last event, which closes its log.
fn finish(build: &Build, state: BuildState, last: &serde_json::Value) {
    {
        let mut status = build.status();
        if status.state.finished() {
            return;
        }
        status.state = state;
        status.finished = Some(unix_seconds(SystemTime::now()));
    }
    // The agent sockets go with the build: its tunnel ends, a late connection finds nothing.
    drop(build.agents().take());
    build.log.close(last);
}

/// Cancels a build: a queued one ends now, a running one when its steps have stopped.
fn cancel(build: &Build) {
    build.cancel.cancel();
    if build.status().state == BuildState::Queued {
        finish(build, BuildState::Cancelled, &json!({"event": "cancelled"}));
    }
}

/// Starts queued builds in order, each when a slot is free.
async fn dispatch(service: Arc<BuildService>, mut jobs: UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(service.config.max_builds.max(1)));
    while let Some(job) = jobs.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        if job.build.status().state != BuildState::Queued {
            continue;
        }
        tokio::spawn(run(Arc::clone(&service), job, slot));
    }
}

/// Runs one build in its slot, with the timeout, and records how it ended.
async fn run(service: Arc<BuildService>, job: Job, slot: OwnedSemaphorePermit) {
    let build = Arc::clone(&job.build);
    collect_garbage_now(&service).await;
    {
        let mut status = build.status();
        if status.state != BuildState::Queued {
            return;
        }
        status.state = BuildState::Running;
        status.started = Some(unix_seconds(SystemTime::now()));
    }
    let running = service.running.fetch_add(1, Ordering::SeqCst) + 1;
    service.metrics.running_now(running);
    build.log.push(&json!({"event": "running"}));
    let started = Instant::now();
    let worker = Arc::clone(&service);
    let runtime = tokio::runtime::Handle::current();
    let mut task = tokio::task::spawn_blocking(move || build_in_slot(&worker, &runtime, job));
    let timeout = service.config.build_timeout;
    let mut timed_out = false;
    let outcome = tokio::select! {
        outcome = &mut task => outcome,
        () = sleep_or_forever(timeout) => {
            timed_out = true;
            build.cancel.cancel();
            task.await
        }
    };
    let (state, last) = match outcome {
        Ok(Ok(done)) => (BuildState::Succeeded, done),
        Ok(Err(_)) if timed_out => (
            BuildState::Failed,
            json!({"event": "error", "message": format!(
                "error: the build ran longer than the server's --build-timeout ({:?}) and was \
                 cancelled",
                timeout.unwrap_or_default()
            )}),
        ),
        Ok(Err(_)) if build.cancel.is_cancelled() => {
            (BuildState::Cancelled, json!({"event": "cancelled"}))
        }
        Ok(Err(message)) => {
            let hide = hide_server_paths(&build.work.join("context"), service.store.root());
            (
                BuildState::Failed,
                json!({"event": "error", "message": hide(message)}),
            )
        }
        Err(panic) => (
            BuildState::Failed,
            json!({"event": "error", "message": format!("error: the build crashed: {panic}")}),
        ),
    };
    if let Some(digest) = last.get("digest").and_then(|digest| digest.as_str()) {
        build.status().digest = Some(digest.to_string());
    }
    let _ = std::fs::remove_dir_all(build.work.join("context"));
    service.running.fetch_sub(1, Ordering::SeqCst);
    service.metrics.build_finished(started.elapsed());
    // In the slot, before the build reads as finished: a client that saw it end sees the space
    // freed, and the next build starts after it.
    collect_garbage_now(&service).await;
    // The slot is free before the build reads as finished: a client that saw it finish and
    // submits again never waits for this one.
    drop(slot);
    finish(&build, state, &last);
}

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// The build itself (on a blocking thread): the `done` event, or the error in words.
fn build_in_slot(
    service: &Arc<BuildService>,
    runtime: &tokio::runtime::Handle,
    job: Job,
) -> Result<serde_json::Value, String> {
    let Job {
        build,
        request,
        loaded,
        secrets,
        ssh_agents,
    } = job;
    let store = service
        .store
        .leased("serve build")
        .map_err(|error| format!("error: taking a lease on the store: {error}"))?;
    let context = build.work.join("context");
    let args = request.build_args(&context, &build.result_path());
    let source_date_epoch = source_date_epoch(
        &loaded.options.build_args,
        request.source_date_epoch.map(|epoch| epoch.to_string()),
    )
    .map_err(|error| format!("error: {error:#}"))?;
    let mut relay = Relay {
        build: Arc::clone(&build),
        service: Arc::clone(service),
        runtime: runtime.clone(),
        explainer: Explainer::new(loaded.dockerfile.arg_names()),
        started: Instant::now(),
        forwarder: None,
        summary: Summary::default(),
    };
    let log_warning = Arc::clone(&build);
    let allowed = service.allowed();
    // Lowered again here, the graph that runs is vetted again (a base may have moved).
    let vet_graph = |lowered: &Lowered| {
        check_entitlements(lowered, &loaded, &request, &allowed)
            .map_err(|refusal| format!("error: {}", refusal.message))
    };
    let built = execute(
        &BuildInputs {
            args: &args,
            loaded: &loaded,
            store: StoreAccess::Leased(store),
            runtime,
            cancel: build.cancel.clone(),
            source_date_epoch,
            context_stat_cache: false,
            warn: Arc::new(move |text: String| {
                log_warning
                    .log
                    .push(&json!({"event": "warning", "message": text}));
            }),
            secrets: Arc::new(secrets),
            ssh_agents: Arc::new(ssh_agents),
            check_graph: Some(&vet_graph as &GraphCheck<'_>),
        },
        &mut relay,
    )
    .map_err(|failure| match failure {
        BuildFailure::Reported(text) => text,
        error => error.to_string(),
    })?;
    let names: Vec<String> = built.names.iter().map(ToString::to_string).collect();
    relay.summary.elapsed = relay.started.elapsed();
    Ok(raw_json::done(
        &relay.summary,
        &Built {
            id: built.image.manifest.config.digest.as_str(),
            digest: built.digest.as_str(),
            names: &names,
        },
    ))
}

/// The service's [`BuildHost`]: solver events become rawjson lines in the build's log.
struct Relay {
    build: Arc<Build>,
    service: Arc<BuildService>,
    runtime: tokio::runtime::Handle,
    explainer: Explainer,
    started: Instant,
    forwarder: Option<tokio::task::JoinHandle<Summary>>,
    summary: Summary,
}

impl BuildHost for Relay {
    fn solve_started(&mut self, _cancel: &Cancel) -> UnboundedSender<ProgressEvent> {
        let (sender, mut events) = unbounded_channel::<ProgressEvent>();
        let (build, explainer, started) = (
            Arc::clone(&self.build),
            self.explainer.clone(),
            self.started,
        );
        let service = Arc::clone(&self.service);
        self.forwarder = Some(self.runtime.spawn(async move {
            let mut summary = Summary::default();
            while let Some(event) = events.recv().await {
                summary.count(&event);
                service.metrics.step(&event);
                let time = started.elapsed().as_secs_f64();
                build
                    .log
                    .push(&raw_json::event_json(&event, time, &explainer));
            }
            summary
        }));
        sender
    }

    fn solve_ended(&mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            self.summary = self.runtime.block_on(forwarder).unwrap_or_default();
        }
    }
}

/// `/v1/builds` and below, to be nested at `/v1/builds` behind the auth layer.
pub fn router(service: Arc<BuildService>) -> Router {
    Router::new()
        .route("/", get(list).post(submit))
        .route("/{id}", get(show).delete(cancel_build))
        .route("/{id}/events", get(events))
        .route("/{id}/result", get(result))
        .route("/{id}/ssh", get(attach_agents))
        .with_state(service)
}

/// The routes the server mounts (this module's, metrics, health and the registry base): the
/// OpenAPI test checks `docs/api/openapi.yaml` documents each (add a route here when adding
/// one to a router).
#[cfg(test)]
const ROUTES: [(&str, &str); 11] = [
    ("get", "/v1/health"),
    ("get", "/healthz"),
    ("get", "/v2/"),
    ("get", "/v1/builds"),
    ("post", "/v1/builds"),
    ("get", "/v1/builds/{id}"),
    ("delete", "/v1/builds/{id}"),
    ("get", "/v1/builds/{id}/events"),
    ("get", "/v1/builds/{id}/result"),
    ("get", "/v1/builds/{id}/ssh"),
    ("get", "/metrics"),
];

fn refusal(refusal: Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(json!({"error": refusal.message}))).into_response()
}

fn not_found(id: &str) -> Response {
    refusal(Refusal {
        status: 404,
        message: format!("no build {id:?} on this server"),
    })
}

async fn submit(
    State(service): State<Arc<BuildService>>,
    _: RequireWrite,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if !service.accepting.load(Ordering::SeqCst) {
        return refusal(Refusal {
            status: 503,
            message: "the server is shutting down; submit the build elsewhere".into(),
        });
    }
    let Some(options) = headers.get(OPTIONS_HEADER) else {
        return refusal(Refusal::bad(format!(
            "missing the {OPTIONS_HEADER} header (the build options as JSON)"
        )));
    };
    let request = match BuildRequest::from_json(options.as_bytes()) {
        Ok(request) => request,
        Err(error) => return refusal(error),
    };
    let result = match request.validate() {
        Ok(result) => result,
        Err(error) => return refusal(error),
    };
    let with_secrets = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == secrets::CONTENT_TYPE.as_bytes());
    let transport = parts.extensions.get::<Transport>().copied();
    if !request.ssh.is_empty()
        && let Err(error) =
            secrets::check_transport(transport, service.insecure, "SSH agent connections")
    {
        return refusal(error);
    }
    let (secrets, body) = if with_secrets {
        if let Err(error) = secrets::check_transport(transport, service.insecure, "build secrets") {
            return refusal(error);
        }
        match secrets::split(body).await {
            Ok(split) => split,
            Err(error) => return refusal(error),
        }
    } else {
        (secrets::Secrets::new(), body)
    };
    let number = service.next_number.fetch_add(1, Ordering::SeqCst);
    let work = service
        .store
        .tmp_dir()
        .join(format!("serve-build-{:x}-{number}", service.epoch));
    let accepted = match accept(&service, &work, &request, body).await {
        Ok(loaded) => bind_agents(&work, &request.ssh).map(|agents| (loaded, agents)),
        Err(error) => Err(error),
    };
    match accepted {
        Ok((loaded, agents)) => {
            let key = agents.as_ref().map(|agents| agents.key().to_string());
            let status =
                service.enqueue(work, (request, loaded, secrets), (result, agents), number);
            let mut answer = json!(status);
            // Only the submitter learns the key that attaches the build's SSH agents.
            if let (Some(key), Some(fields)) = (key, answer.as_object_mut()) {
                fields.insert("ssh_key".into(), key.into());
            }
            (StatusCode::ACCEPTED, axum::Json(answer)).into_response()
        }
        Err(error) => {
            let _ = tokio::fs::remove_dir_all(&work).await;
            refusal(error)
        }
    }
}

/// The sockets standing for the SSH agents `ids` in the build's work directory.
fn bind_agents(work: &Path, ids: &[String]) -> Result<Option<ssh::AgentSockets>, Refusal> {
    if ids.is_empty() {
        return Ok(None);
    }
    ssh::AgentSockets::bind(&work.join("ssh"), ids)
        .map(Some)
        .map_err(|error| Refusal {
            status: 500,
            message: format!("making the build's SSH agent sockets: {error}"),
        })
}

/// `GET /v1/builds/{id}/ssh`: the submitter's agent tunnel (see [`ssh`]), over TLS or a unix
/// socket only, like secrets.
async fn attach_agents(
    State(service): State<Arc<BuildService>>,
    _: RequireWrite,
    UrlPath(id): UrlPath<String>,
    mut request: Request,
) -> Response {
    let Some(build) = service.find(&id) else {
        return not_found(&id);
    };
    let transport = request.extensions().get::<Transport>().copied();
    if let Err(error) =
        secrets::check_transport(transport, service.insecure, "SSH agent connections")
    {
        return refusal(error);
    }
    let headers = request.headers();
    let upgrading = headers
        .get(header::UPGRADE)
        .is_some_and(|value| value.as_bytes() == ssh::UPGRADE_PROTOCOL.as_bytes());
    if !upgrading {
        return refusal(Refusal::bad(format!(
            "attach with `Connection: upgrade` and `Upgrade: {}`",
            ssh::UPGRADE_PROTOCOL
        )));
    }
    let key = headers.get(ssh::KEY_HEADER).map(|value| value.as_bytes());
    {
        let agents = build.agents();
        let Some(agents) = agents.as_ref() else {
            return refusal(Refusal {
                status: 404,
                message: format!(
                    "build {id} has no SSH agents to attach (none declared, or it ended)"
                ),
            });
        };
        if let Err(error) = agents.claim(key) {
            return refusal(error);
        }
        let upgrade = hyper::upgrade::on(&mut request);
        agents.attach(async move { upgrade.await.ok() });
    }
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, ssh::UPGRADE_PROTOCOL),
        ],
    )
        .into_response()
}

/// What a message for a client says instead of the server's directories: files of the build
/// context relative to it, the server's state directory as `<server root>`.
fn hide_server_paths(context: &Path, root: &Path) -> impl Fn(String) -> String + use<> {
    let context = format!("{}/", context.display());
    let root = root.display().to_string();
    move |text: String| text.replace(&context, "").replace(&root, "<server root>")
}

/// Receives the context and checks the Dockerfile in it: what must hold before a build is
/// queued.
async fn accept(
    service: &BuildService,
    work: &Path,
    request: &BuildRequest,
    body: Body,
) -> Result<LoadedDockerfile, Refusal> {
    let context = upload::receive_context(
        body,
        work,
        service.config.max_context_size,
        &service.metrics,
    )
    .await?;
    // A Dockerfile named in the context may link within it, never out of it (its text would
    // show in errors); the default name is read that way by the loader itself.
    if let Some(file) = &request.file {
        open_beneath(&context, Path::new(file), Symlinks::Inside).map_err(|error| {
            Refusal::bad(format!(
                "the Dockerfile {file:?} in the build context: {error}"
            ))
        })?;
    }
    let frontend = request.frontend_args(&context);
    let hide_context = hide_server_paths(&context, service.store.root());
    let store = service
        .store
        .leased("serve build check")
        .map_err(|error| Refusal {
            status: 500,
            message: format!("taking a lease on the store: {error}"),
        })?;
    let (allowed, checked) = (service.allowed(), request.clone());
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let loaded = frontend
            .try_load()
            .map_err(|text| Refusal::bad(hide_context(text)))?;
        // The graph shows what the Dockerfile text cannot: RUNs from ONBUILD triggers.
        let registry = RegistryArgs::default().client(Vec::new());
        let lowered = lower_build(&loaded, checked.pull, (&store, &registry), &runtime)
            .map_err(|text| Refusal::bad(hide_context(text)))?;
        check_entitlements(&lowered.lowered, &loaded, &checked, &allowed)
            .and_then(|()| check_ssh_ids(&lowered.lowered, &loaded, &checked))
            .map_err(|refusal| Refusal {
                message: hide_context(refusal.message),
                ..refusal
            })?;
        Ok(loaded)
    })
    .await
    .map_err(|error| Refusal {
        status: 500,
        message: format!("reading the Dockerfile: {error}"),
    })?
}

async fn list(State(service): State<Arc<BuildService>>, _: RequireRead) -> Response {
    let builds: Vec<Status> = service
        .builds()
        .values()
        .map(|build| build.status().clone())
        .collect();
    axum::Json(json!({ "builds": builds })).into_response()
}

async fn show(
    State(service): State<Arc<BuildService>>,
    _: RequireRead,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match service.find(&id) {
        Some(build) => axum::Json(build.status().clone()).into_response(),
        None => not_found(&id),
    }
}

async fn cancel_build(
    State(service): State<Arc<BuildService>>,
    _: RequireWrite,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let Some(build) = service.find(&id) else {
        return not_found(&id);
    };
    cancel(&build);
    (StatusCode::ACCEPTED, axum::Json(build.status().clone())).into_response()
}

async fn events(
    State(service): State<Arc<BuildService>>,
    _: RequireRead,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let Some(build) = service.find(&id) else {
        return not_found(&id);
    };
    let counted = Arc::clone(&service);
    let stream = futures_util::StreamExt::inspect(build.log.follow(), move |chunk| {
        if let Ok(bytes) = chunk {
            counted
                .metrics
                .bytes_sent
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn result(
    State(service): State<Arc<BuildService>>,
    _: RequireRead,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let Some(build) = service.find(&id) else {
        return not_found(&id);
    };
    let (state, kind) = {
        let status = build.status();
        (status.state, status.result)
    };
    if kind.is_none() {
        return refusal(Refusal {
            status: 404,
            message: format!(
                "build {id} asked for no file output (submit with output type=oci, docker or tar)"
            ),
        });
    };
    if state != BuildState::Succeeded {
        return refusal(Refusal {
            status: 409,
            message: format!(
                "build {id} is {}: a result exists once it succeeded (its events say more)",
                state.name()
            ),
        });
    }
    let file = match tokio::fs::File::open(build.result_path()).await {
        Ok(file) => file,
        Err(error) => {
            return refusal(Refusal {
                status: 500,
                message: format!("reading the result of build {id}: {error}"),
            });
        }
    };
    let length = file.metadata().await.map(|meta| meta.len()).ok();
    let counted = Arc::clone(&service);
    // After a read error the stream ends (the client sees a short body).
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; 256 * 1024];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(axum::body::Bytes::from(buffer)), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    });
    let stream = futures_util::StreamExt::inspect(stream, move |chunk| {
        if let Ok(bytes) = chunk {
            counted
                .metrics
                .bytes_sent
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    });
    let mut response = (
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response();
    if let Some(length) = length {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::auth::{Access, Scope};
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn service(root: &Path, allow: &[&str]) -> Arc<BuildService> {
        let store = Store::open(root).unwrap();
        let service = BuildService::new(
            store,
            &BuildsArgs {
                max_builds: 1,
                max_context_size: 64 * 1024,
                build_timeout: None,
                gc_free_below: None,
                allow: allow.iter().map(ToString::to_string).collect(),
            },
            false,
        );
        Arc::new(service.unwrap())
    }

    /// A tar of `entries` (path, symlink target or file content) written by the `tar` crate.
    fn context_tar(entries: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut archive = tar::Builder::new(Vec::new());
        for (path, link, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(content.len() as u64);
            match link {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    archive.append_link(&mut header, path, target).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Regular);
                    // The tar crate refuses `..` itself; write the name raw.
                    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                    header.set_cksum();
                    archive.append(&header, *content).unwrap();
                }
            }
        }
        archive.into_inner().unwrap()
    }

    async fn submit(
        service: &Arc<BuildService>,
        options: &str,
        body: Vec<u8>,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::post("/")
            .header(OPTIONS_HEADER, options)
            .body(Body::from(body))
            .unwrap();
        call(service, request, Scope::Write, None).await
    }

    /// `request` as the server's auth layer and listener would pass it on.
    async fn call(
        service: &Arc<BuildService>,
        mut request: Request<Body>,
        scope: Scope,
        transport: Option<Transport>,
    ) -> (StatusCode, serde_json::Value) {
        request.extensions_mut().insert(Access { scope });
        if let Some(transport) = transport {
            request.extensions_mut().insert(transport);
        }
        let response = router(Arc::clone(service)).oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    const DOCKERFILE: &[u8] = b"FROM scratch\nCOPY a /a\n";

    #[tokio::test]
    async fn malformed_submissions_get_4xx_naming_what_is_wrong() {
        let root = tempfile::tempdir().unwrap();
        let service = service(root.path(), &[]);
        let good = context_tar(&[("Dockerfile", None, DOCKERFILE), ("a", None, b"x")]);
        let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
            (
                "{not json",
                good.clone(),
                StatusCode::BAD_REQUEST,
                "build options",
            ),
            (
                r#"{"squash":true}"#,
                good.clone(),
                StatusCode::BAD_REQUEST,
                "squash",
            ),
            (
                "{}",
                context_tar(&[("Dockerfile", None, DOCKERFILE), ("../evil", None, b"x")]),
                StatusCode::BAD_REQUEST,
                "\"../evil\"",
            ),
            (
                "{}",
                context_tar(&[
                    ("Dockerfile", None, DOCKERFILE),
                    ("out", Some("/etc"), b""),
                    ("out/passwd", None, b"x"),
                ]),
                StatusCode::BAD_REQUEST,
                "\"out/passwd\"",
            ),
            ("{}", good[..700].to_vec(), StatusCode::BAD_REQUEST, "tar"),
            (
                "{}",
                vec![0u8; 70 * 1024],
                StatusCode::PAYLOAD_TOO_LARGE,
                "--max-context-size",
            ),
            (
                "{}",
                context_tar(&[("a", None, b"x")]),
                StatusCode::BAD_REQUEST,
                "Dockerfile",
            ),
        ];
        for (options, body, status, needle) in cases {
            let (got, answer) = submit(&service, options, body).await;
            let message = answer["error"].as_str().unwrap_or_default().to_string();
            assert_eq!(got, status, "{options}: {message}");
            assert!(message.contains(needle), "{options}: {message}");
        }
        assert!(service.builds().is_empty());
        // Refused uploads leave nothing behind in tmp/.
        let leftovers: Vec<_> = std::fs::read_dir(service.store.tmp_dir())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with("serve-build-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn host_networking_needs_the_server_and_the_request_to_allow_it() {
        let dockerfile = b"FROM scratch\nRUN --network=host true\n";
        let body = context_tar(&[("Dockerfile", None, dockerfile)]);
        let root = tempfile::tempdir().unwrap();
        let closed = service(root.path(), &[]);
        let (status, answer) = submit(&closed, r#"{"allow":["network.host"]}"#, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains("Dockerfile:2") && message.contains("--allow network.host"),
            "{message}"
        );
        let open = service(root.path(), &["network.host"]);
        let (status, answer) = submit(&open, "{}", body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(
            answer["error"].as_str().unwrap().contains("client"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn insecure_steps_need_the_security_entitlement() {
        let dockerfile = b"FROM scratch\nRUN --security=insecure true\n";
        let body = context_tar(&[("Dockerfile", None, dockerfile)]);
        let root = tempfile::tempdir().unwrap();
        let open = service(root.path(), &["network.host"]);
        let (status, answer) = submit(&open, r#"{"allow":["network.host"]}"#, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains("Dockerfile:2") && message.contains("--allow security.insecure"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn only_the_submitter_attaches_ssh_agents_once_and_never_in_the_clear() {
        let root = tempfile::tempdir().unwrap();
        let service = service(root.path(), &[]);
        let body = context_tar(&[("Dockerfile", None, DOCKERFILE), ("a", None, b"x")]);
        let submission = || {
            Request::post("/")
                .header(OPTIONS_HEADER, r#"{"ssh":["default"]}"#)
                .body(Body::from(body.clone()))
                .unwrap()
        };
        let (status, answer) = call(&service, submission(), Scope::Write, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("SSH agent"));
        let unix = Some(Transport::Unix);
        let (status, answer) = call(&service, submission(), Scope::Write, unix).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let (id, key) = (
            answer["id"].as_str().unwrap(),
            answer["ssh_key"].as_str().unwrap(),
        );
        assert_eq!(key.len(), 64);
        let listing = service.builds().values().next().unwrap().status().clone();
        assert!(!json!(listing).to_string().contains(key));

        let attach = |key: &str, upgrade: &str| {
            Request::get(format!("/{id}/ssh"))
                .header(header::UPGRADE, upgrade)
                .header(ssh::KEY_HEADER, key)
                .body(Body::empty())
                .unwrap()
        };
        let protocol = ssh::UPGRADE_PROTOCOL;
        for (request, scope, transport, expected) in [
            (
                attach(key, "websocket"),
                Scope::Write,
                unix,
                StatusCode::BAD_REQUEST,
            ),
            (
                attach("0", protocol),
                Scope::Write,
                unix,
                StatusCode::FORBIDDEN,
            ),
            (
                attach(key, protocol),
                Scope::Read,
                unix,
                StatusCode::FORBIDDEN,
            ),
            (
                attach(key, protocol),
                Scope::Write,
                None,
                StatusCode::FORBIDDEN,
            ),
            (
                attach(key, protocol),
                Scope::Write,
                unix,
                StatusCode::SWITCHING_PROTOCOLS,
            ),
            (
                attach(key, protocol),
                Scope::Write,
                unix,
                StatusCode::CONFLICT,
            ),
        ] {
            let (status, answer) = call(&service, request, scope, transport).await;
            assert_eq!(status, expected, "{answer}");
        }
        service.drain(Duration::from_secs(60)).await;
    }

    #[test]
    fn the_openapi_document_parses_and_names_every_route() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api/openapi.yaml");
        let script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
        let output = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .output()
            .expect("python3 with PyYAML (scripts/install-deps)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        for (method, route) in ROUTES {
            assert!(
                document["paths"][route][method].is_object(),
                "{method} {route} is missing from {}",
                path.display()
            );
        }
    }

    #[test]
    fn free_space_watermarks_are_sizes_or_percentages() {
        assert_eq!(FreeSpace::parse("10%").unwrap().bytes(1000), 100);
        assert_eq!(FreeSpace::parse("1KiB").unwrap().bytes(10), 1024);
        assert!(FreeSpace::parse("120%").is_err());
        assert!(FreeSpace::parse("lots").is_err());
    }
}
