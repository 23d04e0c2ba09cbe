//! `imgb build`: Dockerfile → plan → graph → solve → image in the store, then the outputs.

use crate::check::{FrontendArgs, LoadedDockerfile};
use crate::commands::cache_opts::{
    CacheDestination, CacheExportSpec, parse_cache_from, parse_cache_to,
};
use crate::commands::images::human_size;
use crate::commands::progress::{Built, Explainer, Progress, ProgressMode, Summary};
use crate::commands::registry::{RegistryArgs, oci_platform, push_image};
use crate::commands::remote::{self, RemoteArgs};
use crate::commands::{open_leased_store, open_store};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use imgb_builder::context::{IncludeAll, PathFilter, context_cache_id, hash_context};
use imgb_builder::execute::{Secret, StoreExecutor, cache_mounts_used, pack_cache_mounts};
use imgb_builder::graph::BuildGraph;
use imgb_builder::solve::{
    Cancel, ExportMode, Filesystem, ProgressEvent, RecordStore, RemoteRecords, Solution,
    SolveOptions, Solved, Solver, VertexError, cache_content, exported_steps,
};
use imgb_cache::build_cache::export_cache;
use imgb_cache::oci::{self, Descriptor};
use imgb_cache::registry::Registry;
use imgb_cache::{
    Destination, Digest, ExportError, ImageError, LayerCompressionChoice, OutputKind, OutputSpec,
    Reference, Resource, SnapshotError, Store, StoreError, StoredImage, export, exported_image,
};
use imgb_frontend::Diagnostic;
use imgb_frontend::image::{created_time, from_oci, stage_config};
use imgb_frontend::lower::{Lowered, lower};
use imgb_frontend::plan::BuildPlan;
use imgb_runner::{InitProgram, Limits, Runner};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub frontend: FrontendArgs,
    /// Name the image (repeatable): `name[:tag]`.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Export the result: `type=oci|docker|local|tar,dest=...`, or
    /// `type=image,name=REG/NAME:TAG,push=true` (repeatable).
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Do not use cached results.
    #[arg(long)]
    pub no_cache: bool,
    /// Do not use cached results for the steps of these stages (by name; repeatable or
    /// comma-separated).
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Push the image to the registries of its `-t` names.
    #[arg(long)]
    pub push: bool,
    /// Look base images up in their registries even when the store has them.
    #[arg(long)]
    pub pull: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// `auto` (plain unless stderr is a terminal), `tty`, `plain`, `rawjson` or `quiet`.
    #[arg(long, default_value = "auto", value_name = "MODE")]
    pub progress: ProgressMode,
    /// Steps running at once (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub limits: RunLimitArgs,
    /// A secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or `id=ID,env=VAR`.
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// An SSH agent for `RUN --mount=type=ssh`: `default` or `ID` (`$SSH_AUTH_SOCK`), or
    /// `ID=SOCKET`.
    #[arg(long = "ssh", value_name = "SPEC")]
    pub ssh: Vec<String>,
    /// Export the build cache: `type=local,dest=DIR`, `type=registry,ref=NAME:TAG` or
    /// `type=inline`, with
    /// `mode=min|max` and `compression=gzip|zstd|uncompressed` (repeatable).
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Use an exported build cache: `type=local,src=DIR`, `type=registry,ref=NAME:TAG` or
    /// `NAME:TAG` (repeatable; the first wins a key).
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Write the image ID (the config digest) to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Write the image digest, config digest and names as JSON to this file.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Grant a privilege a remote build's RUN steps ask for (`network.host`,
    /// `security.insecure`); the server must allow it too. Local builds need no grant.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// The resource limits of each `RUN` step (shared by `imgb run`).
#[derive(Debug, Clone, Args)]
pub struct RunLimitArgs {
    /// The most processes a RUN step may have at once; a fork beyond it fails the step, all
    /// of whose processes are killed (0: no limit).
    #[arg(long = "run-pids-max", value_name = "N", default_value_t = Limits::DEFAULT_PIDS_MAX)]
    pub pids_max: u64,
    /// The memory a RUN step may use (e.g. `2g`); over it the kernel kills the step.
    #[arg(long = "run-memory", value_name = "SIZE", value_parser = crate::commands::prune::parse_size)]
    pub memory: Option<u64>,
    /// The disk a RUN step's changes, or an archive an ADD extracts, may take (e.g. `10g`):
    /// the step is stopped when over it.
    #[arg(long = "run-disk-max", value_name = "SIZE", value_parser = crate::commands::prune::parse_size)]
    pub disk_max: Option<u64>,
}

impl RunLimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            pids_max: (self.pids_max > 0).then_some(self.pids_max),
            memory_max: self.memory,
            disk_max: self.disk_max,
        }
    }
}

pub fn run(root: Option<PathBuf>, args: &BuildArgs) -> Result<ExitCode> {
    if let Some(server) = &args.remote.remote {
        return remote::build(server, args);
    }
    // A layer that no longer verifies (a snapshot changed before a step used it, a blob or
    // snapshot an export read) leaves the store, so the records naming it miss and the steps
    // run again; once per corrupt layer.
    let mut discarded = Vec::new();
    loop {
        let error = match build(root.clone(), args) {
            Err(error) => error,
            done => return done,
        };
        let Some(digest) = corrupt_content(&error).filter(|digest| !discarded.contains(digest))
        else {
            if error.chain().any(is_out_of_space) {
                eprintln!("{}", out_of_space_hint(&open_store(root)?));
            }
            return Err(error);
        };
        eprintln!("warning: {error:#}");
        eprintln!("warning: removing the corrupt layer {digest} from the store and building again");
        open_leased_store(root.clone(), "build")?
            .discard_corrupt(&digest)
            .with_context(|| format!("removing the corrupt layer {digest}"))?;
        discarded.push(digest);
    }
}

/// Whether `cause` is a full disk (ENOSPC, or a quota).
fn is_out_of_space(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause.downcast_ref::<std::io::Error>().is_some_and(|error| {
        matches!(
            error.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    })
}

/// Steps, layers and records are all written below the state directory, so a full disk
/// during a build is almost always its disk; outputs may be elsewhere.
fn out_of_space_hint(store: &Store) -> String {
    format!(
        "hint: no space left on the device holding the state directory {} (or an output's \
         destination): free space there, e.g. with `imgb prune`, or choose another --root",
        store.root().display()
    )
}

/// The stored content a build failed to verify, if that is why `error` happened.
fn corrupt_content(error: &anyhow::Error) -> Option<Digest> {
    error
        .chain()
        .find_map(|cause| {
            cause
                .downcast_ref::<ExportError>()
                .and_then(ExportError::corrupt_content)
                .or_else(|| {
                    cause
                        .downcast_ref::<StoreError>()
                        .and_then(StoreError::corrupt_content)
                })
                .or_else(|| {
                    cause
                        .downcast_ref::<VertexError>()
                        .and_then(VertexError::exec_failure)
                        .and_then(|failure| failure.downcast_ref::<SnapshotError>())
                        .and_then(SnapshotError::corrupt_content)
                })
        })
        .cloned()
}

fn build(root: Option<PathBuf>, args: &BuildArgs) -> Result<ExitCode> {
    let loaded = match args.frontend.load() {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let source_date_epoch = source_date_epoch(
        &loaded.options.build_args,
        std::env::var("SOURCE_DATE_EPOCH").ok(),
    )?;
    let progress = Progress::new(args.progress, Explainer::new(loaded.dockerfile.arg_names()));
    let mut terminal = Terminal {
        runtime: runtime.handle().clone(),
        progress: progress.clone(),
        renderer: None,
        interrupt: None,
        summary: Summary::default(),
    };
    let built = execute(
        &BuildInputs {
            args,
            loaded: &loaded,
            // Everything the build reads or writes through the store is named in its lease, so
            // a concurrent `imgb prune` leaves it alone.
            store: StoreAccess::Open {
                root,
                purpose: "build",
            },
            runtime: runtime.handle(),
            cancel: Cancel::new(),
            source_date_epoch,
            context_stat_cache: true,
            warn: Arc::new(|text: String| eprintln!("{text}")),
            secrets: Arc::new(parse_secrets(&args.secrets)?),
            ssh_agents: Arc::new(parse_ssh(&args.ssh, std::env::var_os("SSH_AUTH_SOCK"))?),
            check_graph: None,
        },
        &mut terminal,
    );
    let built = match built {
        Ok(built) => built,
        Err(BuildFailure::Reported(text)) => {
            eprintln!("{text}");
            return Ok(ExitCode::FAILURE);
        }
        Err(BuildFailure::Error(error)) => return Err(error),
    };
    let image_id = built.image.manifest.config.digest.to_string();
    if let Some(path) = &args.iidfile {
        std::fs::write(path, &image_id).with_context(|| format!("writing {}", path.display()))?;
    }
    let names: Vec<String> = built.names.iter().map(ToString::to_string).collect();
    if let Some(path) = &args.metadata_file {
        let metadata = serde_json::json!({
            "containerimage.digest": built.digest.to_string(),
            "containerimage.config.digest": image_id,
            "image.name": names.join(","),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&metadata)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // An output written to standard output owns it: quiet mode's image ID would corrupt it.
    let stdout_taken = args.outputs.iter().any(|spec| {
        OutputSpec::parse(spec).is_ok_and(|spec| matches!(spec.dest, Destination::Stdout))
    });
    if stdout_taken && args.progress == ProgressMode::Quiet {
        return Ok(ExitCode::SUCCESS);
    }
    progress.finish(
        &terminal.summary,
        &Built {
            id: &image_id,
            digest: built.digest.as_str(),
            names: &names,
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// Where a build's events and warnings go, and what it does around the solve: the terminal of
/// `imgb build`, or a build service relaying them to its client.
pub trait BuildHost {
    /// The solve starts now: its events go to the sender returned (dropped when it ends).
    fn solve_started(&mut self, cancel: &Cancel) -> UnboundedSender<ProgressEvent>;
    /// The solve ended (its sender is dropped): everything it reported has been handed over.
    fn solve_ended(&mut self);
}

/// Warnings of a build that does not stop it (a lint finding, an unreadable `--cache-from`).
pub type Warn = Arc<dyn Fn(String) + Send + Sync>;

/// How a build gets its store.
#[derive(Debug)]
pub enum StoreAccess {
    /// Opens the state directory (`--root`, else the default) with a lease for `purpose`.
    Open {
        root: Option<PathBuf>,
        purpose: &'static str,
    },
    /// A store already opened with the build's own lease.
    Leased(Store),
}

/// Everything one build needs besides its host.
pub struct BuildInputs<'a> {
    pub args: &'a BuildArgs,
    pub loaded: &'a LoadedDockerfile,
    pub store: StoreAccess,
    /// Registry and cache transfers run here; the caller must not be inside it.
    pub runtime: &'a tokio::runtime::Handle,
    /// Stops the solve (and the build between its phases).
    pub cancel: Cancel,
    pub source_date_epoch: Option<i64>,
    /// Whether file digests of the context are kept between builds (under `contexts/`): yes for
    /// a directory that lives on, no for a context unpacked for one build.
    pub context_stat_cache: bool,
    pub warn: Warn,
    /// The values of `RUN --mount=type=secret` by id: read from `--secret` here, received
    /// with the request by the build service.
    pub secrets: Arc<BTreeMap<String, Secret>>,
    /// The agent socket of each `RUN --mount=type=ssh` id: `--ssh` here, the server's sockets
    /// relaying to the client for the build service.
    pub ssh_agents: Arc<BTreeMap<String, PathBuf>>,
    /// Vets the lowered graph before anything runs (the build service's entitlements); its
    /// `Err` fails the build with that message.
    pub check_graph: Option<&'a GraphCheck<'a>>,
}

/// A check of a build's lowered graph: [`BuildInputs::check_graph`].
pub type GraphCheck<'a> = dyn Fn(&Lowered) -> Result<(), String> + Sync + 'a;

/// The image a build stored (and exported, tagged, pushed as asked).
#[derive(Debug)]
pub struct BuiltImage {
    pub image: StoredImage,
    pub names: Vec<Reference>,
    /// The manifest digest to report: the pushed or exported one when layers were compressed
    /// for it, else the stored image's.
    pub digest: Digest,
}

/// Why a build failed.
#[derive(Debug)]
pub enum BuildFailure {
    /// A message already put in words for the user (a Dockerfile diagnostic with its excerpt,
    /// a failed step with its line).
    Reported(String),
    Error(anyhow::Error),
}

impl From<anyhow::Error> for BuildFailure {
    fn from(error: anyhow::Error) -> Self {
        BuildFailure::Error(error)
    }
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildFailure::Reported(text) => f.write_str(text),
            BuildFailure::Error(error) => write!(f, "error: {error:#}"),
        }
    }
}

/// `imgb build`'s host: progress on stderr, Ctrl-C cancels the solve.
struct Terminal {
    runtime: tokio::runtime::Handle,
    progress: Progress,
    renderer: Option<tokio::task::JoinHandle<Summary>>,
    interrupt: Option<tokio::task::JoinHandle<()>>,
    summary: Summary,
}

impl BuildHost for Terminal {
    fn solve_started(&mut self, cancel: &Cancel) -> UnboundedSender<ProgressEvent> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        self.renderer = Some(self.runtime.spawn(self.progress.clone().render(receiver)));
        let ctrl_c = cancel.clone();
        self.interrupt = Some(self.runtime.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                ctrl_c.cancel();
            }
        }));
        sender
    }

    fn solve_ended(&mut self) {
        if let Some(interrupt) = self.interrupt.take() {
            interrupt.abort();
        }
        if let Some(renderer) = self.renderer.take() {
            self.summary = self.runtime.block_on(renderer).unwrap_or_default();
        }
    }
}

/// Runs one build: plan, lower, solve, store the image, then the outputs, cache exports and
/// pushes `args` asks for. `imgb build` and the build service both run builds through here.
pub fn execute(
    inputs: &BuildInputs<'_>,
    host: &mut dyn BuildHost,
) -> Result<BuiltImage, BuildFailure> {
    let BuildInputs {
        args,
        loaded,
        runtime,
        cancel,
        source_date_epoch,
        ..
    } = inputs;
    let source_date_epoch = *source_date_epoch;
    let render = |diagnostic: Diagnostic| diagnostic.with_source(&loaded.name, &loaded.source);
    let names = args
        .tags
        .iter()
        .map(|tag| Reference::parse(tag).map_err(|error| anyhow!("-t {tag}: {error}")))
        .collect::<Result<Vec<_>>>()?;
    let outputs = args
        .outputs
        .iter()
        .map(|spec| OutputSpec::parse(spec).map_err(|error| anyhow!("-o {spec}: {error}")))
        .collect::<Result<Vec<_>>>()?;
    if args.push && names.is_empty() {
        return Err(anyhow!("--push needs a name to push to: -t REGISTRY/NAME:TAG").into());
    }
    let cache_from = args
        .cache_from
        .iter()
        .map(|spec| parse_cache_from(spec))
        .collect::<Result<Vec<_>>>()?;
    let cache_to = args
        .cache_to
        .iter()
        .map(|spec| parse_cache_to(spec))
        .collect::<Result<Vec<_>>>()?;
    // `registry.insecure=true` in an image output allows plain HTTP for its names' registries.
    let insecure_outputs = outputs
        .iter()
        .filter(|spec| spec.kind == OutputKind::Image && spec.insecure_registry)
        .flat_map(|spec| {
            if spec.names.is_empty() {
                &names
            } else {
                &spec.names
            }
        })
        .map(|name| name.domain().to_owned());
    let registry = args.registry.client(insecure_outputs.collect::<Vec<_>>());
    let store = match &inputs.store {
        StoreAccess::Open { root, purpose } => open_leased_store(root.clone(), purpose)?,
        StoreAccess::Leased(store) => store.clone(),
    };

    let LoweredBuild {
        mut lowered,
        base_configs,
    } = lower_build(loaded, args.pull, (&store, &registry), runtime)
        .map_err(BuildFailure::Reported)?;
    if let Some(check) = inputs.check_graph {
        check(&lowered).map_err(BuildFailure::Reported)?;
    }
    for warning in lowered
        .warnings
        .iter()
        .filter(|w| w.rule != Some("UndefinedVar"))
    {
        (inputs.warn)(render(warning.clone()).to_string());
    }
    if args.no_cache {
        let ids: Vec<_> = lowered.graph.vertices().map(|(id, _)| id).collect();
        for id in ids {
            lowered.graph.ignore_cache(id);
        }
    }
    for name in &args.no_cache_filter {
        // As BuildKit: stage names compare case-insensitively; a name no stage has matches none.
        let steps: Vec<_> = lowered
            .stages
            .values()
            .filter(|stage| {
                loaded.dockerfile.stages[stage.index]
                    .name()
                    .is_some_and(|stage_name| stage_name.eq_ignore_ascii_case(name))
            })
            .flat_map(|stage| stage.steps.iter().copied())
            .collect();
        for id in steps {
            lowered.graph.ignore_cache(id);
        }
    }

    let context = hash_build_context(&store, loaded, inputs.context_stat_cache)?;
    let remote = (!cache_from.is_empty()).then(|| {
        let _runtime = runtime.enter();
        let warn = Arc::clone(&inputs.warn);
        Arc::new(RemoteRecords::load(
            store.clone(),
            registry.clone(),
            cache_from,
            move |location, error| {
                warn(format!(
                    "warning: --cache-from {location}: {error}; building without it"
                ))
            },
        ))
    });
    let executor = StoreExecutor {
        store: store.clone(),
        context: Some(Arc::new(context)),
        runner: Runner::new(store.tmp_dir(), InitProgram::this_binary("__init"))
            .with_limits(args.limits.limits()),
        source_date_epoch,
        secrets: Arc::clone(&inputs.secrets),
        ssh_agents: Arc::clone(&inputs.ssh_agents),
        registry: registry.clone(),
        remote: remote.clone(),
    };
    let settings: BTreeMap<String, String> = source_date_epoch
        .map(|epoch| ("SOURCE_DATE_EPOCH".to_string(), epoch.to_string()))
        .into_iter()
        .collect();
    let options = SolveOptions {
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        scope: loaded.name.clone(),
        settings,
    };
    let target = lowered.target_stage();
    let records = RecordStore::new(store.clone());
    let mut solver = Solver::new(Arc::new(executor), records.clone(), options)
        .with_progress(host.solve_started(cancel));
    if let Some(remote) = &remote {
        solver = solver.with_remote(Arc::clone(remote));
    }
    let solution = runtime.block_on(solver.solve(&lowered.graph, &[target.root], cancel));
    drop(solver);
    host.solve_ended();
    let solution = solution.map_err(|error| {
        let error = anyhow::Error::new(error);
        if corrupt_content(&error).is_some() {
            // `run` removes the layer and builds again.
            return BuildFailure::Error(error);
        }
        let mut text = format!("error: {error}");
        if let Some(imgb_builder::solve::SolveError::Vertex { name, .. }) = error.downcast_ref()
            && let Some(excerpt) = step_excerpt(loaded, name)
        {
            text = format!("{text}\n{excerpt}");
        }
        if error.chain().any(is_out_of_space) {
            text = format!("{text}\n{}", out_of_space_hint(&store));
        }
        BuildFailure::Reported(text)
    })?;
    let solved = solution
        .get(target.root)
        .map(|vertex| vertex.result.clone())
        .ok_or_else(|| anyhow!("the target was not solved"))?;
    let Solved::Filesystem(filesystem) = &*solved else {
        return Err(anyhow!("the target stage is not a filesystem").into());
    };
    if let Some(remote) = &remote {
        // The image's layers must be stored; steps served by the imported cache may not be.
        // Layers of pulled base images come from their registry when needed, not the cache.
        let from_cache = Filesystem {
            layers: filesystem
                .layers
                .iter()
                .filter(|layer| store.blob_source(&layer.blob.digest).is_none())
                .cloned()
                .collect(),
            image: None,
        };
        runtime
            .block_on(remote.fetch(&from_cache))
            .map_err(anyhow::Error::from)?;
        remote.adopt_hits(&records).map_err(anyhow::Error::from)?;
    }

    let base_config = target
        .base_image
        .as_deref()
        .and_then(|reference| base_configs.get(reference));
    let diff_ids = filesystem
        .layers
        .iter()
        .map(|layer| layer.diff_id.clone())
        .collect();
    let mut config = stage_config(
        base_config,
        target,
        diff_ids,
        &created_time(source_date_epoch),
    );
    if cache_to
        .iter()
        .any(|spec| spec.destination == CacheDestination::Inline)
    {
        let steps = exported_steps(&lowered.graph, &solution, target.root, ExportMode::Min);
        config.build_cache = Some(cache_content(&steps, Some(filesystem)).finish().config);
    }
    let layers: Vec<Descriptor> = filesystem
        .layers
        .iter()
        .map(|layer| layer.blob.clone())
        .collect();
    let image = store
        .write_image(&config, layers)
        .map_err(anyhow::Error::from)?;
    for name in &names {
        store
            .tag_image(&name.to_string(), &image.descriptor.digest)
            .map_err(anyhow::Error::from)?;
    }
    for spec in &cache_to {
        let CacheDestination::Location(location) = &spec.destination else {
            continue;
        };
        export_build_cache(
            runtime,
            (&store, &registry),
            remote.as_deref(),
            (&lowered.graph, &solution, target.root),
            spec,
            source_date_epoch,
        )
        .with_context(|| format!("exporting the build cache to {location}"))?;
    }
    let mut push_to = if args.push { names.clone() } else { Vec::new() };
    // A push carries the layers as the first pushing output asks (BuildKit's default: gzip).
    let mut push_format = (LayerCompressionChoice::DEFAULT, true);
    let mut push_format_set = false;
    let (image_outputs, file_outputs): (Vec<_>, Vec<_>) = outputs
        .iter()
        .partition(|spec| spec.kind == OutputKind::Image);
    for spec in image_outputs {
        for name in &spec.names {
            store
                .tag_image(&name.to_string(), &image.descriptor.digest)
                .map_err(anyhow::Error::from)?;
        }
        if spec.push {
            let spec_names = if spec.names.is_empty() {
                &names
            } else {
                &spec.names
            };
            if spec_names.is_empty() {
                return Err(anyhow!(
                    "-o type=image,push=true needs name=REGISTRY/NAME:TAG (or -t)"
                )
                .into());
            }
            push_to.extend(spec_names.iter().cloned());
            if !push_format_set {
                push_format = (spec.layer_compression(), spec.uses_oci_media_types());
                push_format_set = true;
            }
        }
    }
    if !file_outputs.is_empty() || (!push_to.is_empty() && push_format.0.force) {
        // Base layers that no step needed were never downloaded; an export needs them.
        runtime
            .block_on(registry.ensure_blobs(&store, &image.manifest.layers))
            .context("fetching base layers for the export")?;
    }
    // The digest shown is that of the manifest users get: pushed, else exported, else stored.
    let mut exported_digest = None;
    for spec in file_outputs {
        let report = export(&store, &image, &names, spec)
            .with_context(|| format!("exporting to {:?}", spec.dest))?;
        exported_digest = exported_digest.or(report.manifest.map(|manifest| manifest.digest));
    }
    push_to.sort();
    push_to.dedup();
    let mut pushed_digest = None;
    if !push_to.is_empty() {
        let (choice, oci) = push_format;
        let pushed = exported_image(&store, &image, choice, oci)
            .context("compressing the layers to push")?;
        push_image(runtime, &registry, &store, &pushed, &push_to)?;
        pushed_digest = Some(pushed.manifest.digest);
    }
    let digest = pushed_digest
        .or(exported_digest)
        .unwrap_or_else(|| image.descriptor.digest.clone());
    Ok(BuiltImage {
        image,
        names,
        digest,
    })
}

/// Writes the records `spec` selects to its location, fetching the imported layers they name.
fn export_build_cache(
    runtime: &tokio::runtime::Handle,
    (store, registry): (&Store, &Registry),
    remote: Option<&RemoteRecords>,
    (graph, solution, target): (&BuildGraph, &Solution, imgb_builder::graph::VertexId),
    spec: &CacheExportSpec,
    source_date_epoch: Option<i64>,
) -> Result<()> {
    let CacheDestination::Location(location) = &spec.destination else {
        return Ok(());
    };
    let steps = exported_steps(graph, solution, target, spec.mode);
    if let Some(remote) = remote {
        for (_, _, filesystem) in &steps {
            runtime.block_on(remote.fetch(filesystem))?;
        }
    }
    let mut content = cache_content(&steps, None::<&Filesystem>);
    if let Some(cap) = spec.cache_mounts_max {
        let used = cache_mounts_used(graph, solution);
        let packed = pack_cache_mounts(store, &used, cap, source_date_epoch)?;
        for skipped in &packed.skipped {
            let limit = if skipped.over_total {
                "would take the exported cache mounts past"
            } else {
                "is over"
            };
            eprintln!(
                "warning: --cache-to {location}: cache mount {:?} holds {} ({} bytes), which \
                 {limit} cache-mounts-max={} bytes; not exported",
                skipped.id,
                human_size(skipped.size),
                skipped.size,
                skipped.cap,
            );
        }
        for (mount, layer) in packed.packed {
            content.add_cache_mount(mount.id, mount.key, layer);
        }
    }
    runtime.block_on(export_cache(
        store,
        registry,
        location,
        content.finish(),
        spec.compression,
    ))?;
    Ok(())
}

/// The Dockerfile lines behind a failed vertex, for a failure report: the step named
/// `[stage n/m] INSTRUCTION`, or for an image that would not load (`[internal] load metadata
/// for REF`), the instruction that reads it with `--from=REF` or `from=REF`.
fn step_excerpt(loaded: &LoadedDockerfile, vertex_name: &str) -> Option<String> {
    let nodes = &loaded.dockerfile.ast.nodes;
    let node = match vertex_name.strip_prefix("[internal] load metadata for ") {
        Some(reference) => nodes.iter().find(|node| {
            node.original.split([' ', ',']).any(|word| {
                word.strip_prefix("--from=")
                    .or_else(|| word.strip_prefix("from="))
                    == Some(reference)
            })
        })?,
        None => {
            let code = vertex_name.split_once("] ")?.1;
            nodes.iter().find(|node| node.original.trim() == code)?
        }
    };
    Some(
        Diagnostic::error(format!("the step failed: {}", node.original.trim()))
            .at(node.span())
            .with_source(&loaded.name, &loaded.source)
            .to_string(),
    )
}

/// Hashes the context with its `.dockerignore`, reusing the stat cache under `contexts/` when
/// `stat_cache` is set.
fn hash_build_context(
    store: &Store,
    loaded: &LoadedDockerfile,
    stat_cache: bool,
) -> Result<imgb_builder::context::HashedContext> {
    let path = &loaded.context;
    let cache_dir = if stat_cache {
        let resource = Resource::ContextCache(context_cache_id(path)?);
        store.protect(&resource)?;
        Some(resource.path(store))
    } else {
        None
    };
    let filter: &dyn PathFilter = match &loaded.ignore {
        Some(rules) => rules,
        None => &IncludeAll,
    };
    hash_context(path, filter, cache_dir.as_deref())
        .map_err(|error| anyhow!("build context {}: {error}", path.display()))
}

/// `SOURCE_DATE_EPOCH` from `--build-arg`, else `fallback` (the environment's).
pub(crate) fn source_date_epoch(
    build_args: &BTreeMap<String, String>,
    fallback: Option<String>,
) -> Result<Option<i64>> {
    let value = build_args.get("SOURCE_DATE_EPOCH").cloned().or(fallback);
    value
        .filter(|text| !text.is_empty())
        .map(|text| {
            text.parse::<i64>()
                .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={text}: not a number of seconds"))
        })
        .transpose()
}

/// A Dockerfile lowered to its build graph, with the configs of the base images it read.
pub struct LoweredBuild {
    pub lowered: Lowered,
    /// By reference: the final image takes its base's history and settings from these.
    pub base_configs: HashMap<String, oci::ImageConfig>,
}

/// Plans and lowers `loaded`, reading base images from `store`, else (first with `pull`) from
/// their registry. An error is the Dockerfile's diagnostic with its excerpt.
pub fn lower_build(
    loaded: &LoadedDockerfile,
    pull: bool,
    (store, registry): (&Store, &Registry),
    runtime: &tokio::runtime::Handle,
) -> Result<LoweredBuild, String> {
    let render = |diagnostic: Diagnostic| {
        diagnostic
            .with_source(&loaded.name, &loaded.source)
            .to_string()
    };
    let plan = BuildPlan::new(&loaded.dockerfile, &loaded.options).map_err(render)?;
    // Base configs are read once: lowering needs their environment, the final image their
    // history and settings.
    let mut base_configs: HashMap<String, oci::ImageConfig> = HashMap::new();
    let mut resolve = |reference: &str, platform: &imgb_frontend::platform::Platform| {
        let local = if pull {
            None
        } else {
            match store.find_image(reference) {
                Ok((_, image)) => Some(Ok(image)),
                Err(ImageError::NotFound { .. }) => None,
                Err(error) => Some(Err(error.to_string())),
            }
        };
        let found = local.unwrap_or_else(|| {
            let parsed = Reference::parse(reference).map_err(|error| error.to_string())?;
            runtime
                .block_on(registry.pull_image(store, &parsed, &oci_platform(platform)))
                .map_err(|error| format!("pulling it: {error}"))
        });
        match found {
            Ok(image) => {
                let start = from_oci(&image.config);
                base_configs.insert(reference.to_string(), image.config);
                Ok(start)
            }
            Err(error) => Err(
                Diagnostic::error(format!("base image {reference}: {error}")).with_hint(
                    "imgb looks in its store, then in the image's registry \
                     (`imgb login`, --registry-ca, --insecure-registry); \
                     `imgb load -i IMAGE.tar` adds an image offline",
                ),
            ),
        }
    };
    let lowered =
        lower(&loaded.dockerfile, &plan, &loaded.options, &mut resolve).map_err(render)?;
    Ok(LoweredBuild {
        lowered,
        base_configs,
    })
}

/// `--secret id=ID,src=FILE|env=VAR` (also `source=`, `type=file|env`).
pub fn parse_secrets(specs: &[String]) -> Result<BTreeMap<String, Secret>> {
    let mut secrets = BTreeMap::new();
    for spec in specs {
        let mut id = None;
        let mut file = None;
        let mut env = None;
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("id", value)) => id = Some(value.to_string()),
                Some(("src" | "source", value)) => file = Some(PathBuf::from(value)),
                Some(("env", value)) => env = Some(value.to_string()),
                Some(("type", "file" | "env")) => {}
                _ => bail!("--secret {spec}: unknown field {field:?}; expected id=, src= or env="),
            }
        }
        let id = id
            .or_else(|| env.clone())
            .ok_or_else(|| anyhow!("--secret {spec}: id= is required"))?;
        let value = match (file, env) {
            (Some(file), _) => std::fs::read(&file)
                .with_context(|| format!("--secret {spec}: reading {}", file.display()))?,
            (None, Some(var)) => std::env::var(&var)
                .map_err(|_| anyhow!("--secret {spec}: ${var} is not set"))?
                .into_bytes(),
            (None, None) => std::env::var(&id)
                .map_err(|_| anyhow!("--secret {spec}: give src=FILE or env=VAR"))?
                .into_bytes(),
        };
        secrets.insert(id, Secret(value));
    }
    Ok(secrets)
}

/// `--ssh default|ID[=SOCKET]` (buildx's form): an id without a path forwards
/// `$SSH_AUTH_SOCK` (`auth_sock`). Key files are not agents: load them with `ssh-add`.
pub fn parse_ssh(
    specs: &[String],
    auth_sock: Option<std::ffi::OsString>,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut agents = BTreeMap::new();
    for spec in specs {
        let (id, paths) = match spec.split_once('=') {
            Some((id, paths)) => (id, paths.split(',').collect::<Vec<_>>()),
            None => (spec.as_str(), Vec::new()),
        };
        if id.is_empty() {
            bail!("--ssh {spec}: the id is empty; expected default or ID=SOCKET");
        }
        let socket = match paths.as_slice() {
            [] => PathBuf::from(auth_sock.clone().ok_or_else(|| {
                anyhow!("--ssh {spec}: $SSH_AUTH_SOCK is not set; start an agent or give ID=SOCKET")
            })?),
            [path] => PathBuf::from(path),
            _ => bail!("--ssh {spec}: give one agent socket per id"),
        };
        let is_socket = std::fs::metadata(&socket)
            .map(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
            .with_context(|| format!("--ssh {spec}: {}", socket.display()))?;
        if !is_socket {
            bail!(
                "--ssh {spec}: {} is not an agent socket (load key files into an agent with \
                 ssh-add and pass its socket)",
                socket.display()
            );
        }
        agents.insert(id.to_string(), socket);
    }
    Ok(agents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_or_env_and_bad_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret").unwrap();
        let secrets = parse_secrets(&[format!("id=tok,src={}", file.display())]).unwrap();
        assert_eq!(secrets["tok"].0, b"s3cret");
        let error = parse_secrets(&["id=x,bogus=1".to_string()]).unwrap_err();
        assert!(error.to_string().contains("bogus"), "{error}");
    }

    #[test]
    fn ssh_ids_name_sockets_and_default_to_the_agent_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let agents = parse_ssh(
            &["default".to_string(), format!("work={}", socket.display())],
            Some(socket.clone().into_os_string()),
        )
        .unwrap();
        assert_eq!(agents["default"], socket);
        assert_eq!(agents["work"], socket);
        let error = parse_ssh(&["default".to_string()], None).unwrap_err();
        assert!(error.to_string().contains("SSH_AUTH_SOCK"), "{error}");
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not a socket").unwrap();
        let error = parse_ssh(&[format!("key={}", key.display())], None).unwrap_err();
        assert!(error.to_string().contains("ssh-add"), "{error}");
    }

    #[test]
    fn source_date_epoch_must_be_a_number() {
        let args = BTreeMap::from([("SOURCE_DATE_EPOCH".to_string(), "yesterday".to_string())]);
        assert!(source_date_epoch(&args, None).is_err());
        let args = BTreeMap::from([("SOURCE_DATE_EPOCH".to_string(), "1700000000".to_string())]);
        assert_eq!(source_date_epoch(&args, None).unwrap(), Some(1_700_000_000));
        assert_eq!(
            source_date_epoch(&BTreeMap::new(), Some("5".to_string())).unwrap(),
            Some(5)
        );
    }
}
