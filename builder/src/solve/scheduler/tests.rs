use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use imgb_cache::Store;
use tokio::sync::mpsc;

use super::*;
use crate::graph::FileAction;
use crate::solve::listing::{ContextListing, ListedEntry, ListedKind};
use crate::solve::remote::{ExportMode, cache_content, exported_steps};
use crate::solve::result::{Filesystem, ImageOrigin};
use crate::solve::test_support::{copy, exec, stored_layer};
use imgb_cache::build_cache::{CacheLocation, export_cache};
use imgb_cache::registry::{Registry, RegistryConfig};

/// One `execute` call, as the test executor saw it.
#[derive(Debug, Clone)]
struct Execution {
    name: String,
    started: Instant,
    ended: Instant,
}

/// Executes exec ops by their environment: `SLEEP_MS` (interruptible by the cancel),
/// `OUTPUT` (the layer's content; the command by default), `FAIL` and `CANCEL_BUILD_FIRST`
/// (cancel the build, wait, then go on); file ops copy from the
/// context (its selection digest) or a stage (its diffIDs); image sources yield one layer.
#[derive(Debug)]
struct TestExecutor {
    store: Store,
    context: Digest,
    /// How long `select_context` takes.
    selection_delay: Duration,
    manifest: String,
    log: Mutex<Vec<Execution>>,
    saw_cancel: Mutex<Vec<String>>,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl TestExecutor {
    fn new(root: &Path) -> Self {
        TestExecutor {
            store: Store::open(root).unwrap(),
            context: Digest::of(b"context v1"),
            selection_delay: Duration::ZERO,
            manifest: "manifest v1".into(),
            log: Mutex::new(Vec::new()),
            saw_cancel: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
        }
    }

    fn with_context(mut self, content: &[u8]) -> Self {
        self.context = Digest::of(content);
        self
    }

    fn with_manifest(mut self, manifest: &str) -> Self {
        self.manifest = manifest.into();
        self
    }

    fn executions(&self) -> Vec<Execution> {
        self.log.lock().unwrap().clone()
    }

    fn executed(&self) -> BTreeSet<String> {
        self.executions()
            .into_iter()
            .map(|execution| execution.name)
            .collect()
    }

    fn execution(&self, name: &str) -> Execution {
        self.executions()
            .into_iter()
            .find(|execution| execution.name == name)
            .unwrap_or_else(|| panic!("{name} did not run"))
    }

    async fn behave(&self, job: &Job) -> Result<Solved, ExecError> {
        let base = job
            .inputs
            .first()
            .and_then(|input| input.result.filesystem().cloned())
            .unwrap_or_default();
        let content = match &job.vertex.op {
            Op::Image { reference, .. } => {
                let manifest = self.store.write_blob(self.manifest.as_bytes()).unwrap();
                let config = self.store.write_blob(b"config").unwrap();
                return Ok(Solved::Filesystem(Filesystem {
                    layers: vec![stored_layer(&self.store, reference)],
                    image: Some(ImageOrigin {
                        manifest: manifest.digest,
                        config: config.digest,
                    }),
                }));
            }
            Op::Exec(exec) => {
                let env = |name: &str| {
                    exec.env
                        .iter()
                        .find_map(|entry| entry.strip_prefix(&format!("{name}=")))
                };
                job.output(OutputStream::Stdout, format!("running {}", exec.argv[2]));
                let sleep = env("SLEEP_MS").map_or(0, |ms| ms.parse().unwrap());
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(sleep)) => {}
                    () = job.cancel.cancelled() => {
                        self.saw_cancel.lock().unwrap().push(job.vertex.name.clone());
                        return Err(ExecError::Cancelled);
                    }
                }
                if env("CANCEL_BUILD_FIRST").is_some() {
                    // Siblings see the cancel and stop before this failure is reported.
                    job.cancel.cancel();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if env("FAIL").is_some() {
                    return Err(ExecError::failed("exit code 1"));
                }
                env("OUTPUT").unwrap_or(&exec.argv[2]).to_string()
            }
            Op::File { actions } => {
                let Some(FileAction::Copy { input, .. }) = actions.first() else {
                    panic!("test graphs only copy");
                };
                match job.inputs[*input].result.filesystem() {
                    Some(from) => format!("copy of {:?}", from.diff_ids().collect::<Vec<_>>()),
                    None => format!("copy of context {}", self.context),
                }
            }
            other => panic!("the scheduler executes no {other:?}"),
        };
        Ok(Solved::Filesystem(
            base.with_layer(stored_layer(&self.store, &content)),
        ))
    }
}

impl Executor for TestExecutor {
    async fn execute(&self, job: &Job) -> Result<Solved, ExecError> {
        let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now_running, Ordering::SeqCst);
        let started = Instant::now();
        let outcome = self.behave(job).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.log.lock().unwrap().push(Execution {
            name: job.vertex.name.clone(),
            started,
            ended: Instant::now(),
        });
        outcome
    }

    /// The context holds one file, `src/main.c`, whose content the context digest stands for.
    async fn select_context(&self, _job: &Job) -> Result<ContextSelection, ExecError> {
        tokio::time::sleep(self.selection_delay).await;
        let main_c = self.context.hex().to_owned();
        Ok(ContextSelection {
            digest: self.context.clone(),
            list: Box::new(move || {
                Ok(ContextListing::from_iter([
                    ListedEntry::new("src", ListedKind::Dir, 0o755, b""),
                    ListedEntry::new("src/main.c", ListedKind::File, 0o644, main_c.as_bytes()),
                ]))
            }),
        })
    }
}

struct Built {
    outcome: Result<Solution, SolveError>,
    events: Vec<ProgressEvent>,
}

impl Built {
    fn cached(&self) -> BTreeSet<String> {
        self.events
            .iter()
            .filter_map(|event| match event {
                ProgressEvent::Cached { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Why each vertex that ran missed the cache, by name.
    fn miss_reasons(&self) -> BTreeMap<String, String> {
        self.events
            .iter()
            .filter_map(|event| match event {
                ProgressEvent::Started {
                    name,
                    cache_miss_reason,
                    ..
                } => Some((name.clone(), cache_miss_reason.to_string())),
                _ => None,
            })
            .collect()
    }

    fn root(&self, id: VertexId) -> Arc<Solved> {
        let solution = self.outcome.as_ref().expect("the build succeeds");
        Arc::clone(&solution.get(id).expect("the root is solved").result)
    }
}

async fn build_with(
    executor: &Arc<TestExecutor>,
    graph: &BuildGraph,
    roots: &[VertexId],
    jobs: usize,
    cancel: &Cancel,
) -> Built {
    solve_with(executor, graph, roots, jobs, cancel, None).await
}

async fn solve_with(
    executor: &Arc<TestExecutor>,
    graph: &BuildGraph,
    roots: &[VertexId],
    jobs: usize,
    cancel: &Cancel,
    remote: Option<Arc<RemoteRecords>>,
) -> Built {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let options = SolveOptions {
        jobs,
        scope: "test".into(),
        settings: BTreeMap::new(),
    };
    let records = RecordStore::new(executor.store.clone());
    let mut solver = Solver::new(Arc::clone(executor), records, options).with_progress(sender);
    if let Some(remote) = remote {
        solver = solver.with_remote(remote);
    }
    let outcome = solver.solve(graph, roots, cancel).await;
    drop(solver);
    let mut events = Vec::new();
    while let Some(event) = receiver.recv().await {
        events.push(event);
    }
    Built { outcome, events }
}

async fn build(executor: &Arc<TestExecutor>, graph: &BuildGraph, roots: &[VertexId]) -> Built {
    build_with(executor, graph, roots, 4, &Cancel::new()).await
}

fn run(
    graph: &mut BuildGraph,
    base: VertexId,
    name: &str,
    command: &str,
    env: &[&str],
) -> VertexId {
    graph.add(exec(command, env), vec![base], name)
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| name.to_string()).collect()
}

fn overlap(first: &Execution, second: &Execution) -> bool {
    first.started < second.ended && second.started < first.ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_branches_run_at_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let left = run(
        &mut graph,
        base,
        "[a 1/1] RUN left",
        "left",
        &["SLEEP_MS=300"],
    );
    let right = run(
        &mut graph,
        base,
        "[b 1/1] RUN right",
        "right",
        &["SLEEP_MS=300"],
    );
    let built = build(&executor, &graph, &[left, right]).await;
    assert!(built.outcome.is_ok());
    let (left, right) = (
        executor.execution("[a 1/1] RUN left"),
        executor.execution("[b 1/1] RUN right"),
    );
    assert!(overlap(&left, &right), "{left:?} {right:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_never_exceed_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let roots: Vec<VertexId> = (0..6)
        .map(|branch| {
            let name = format!("[s{branch} 1/1] RUN {branch}");
            run(
                &mut graph,
                base,
                &name,
                &branch.to_string(),
                &["SLEEP_MS=100"],
            )
        })
        .collect();
    let built = build_with(&executor, &graph, &roots, 2, &Cancel::new()).await;
    assert!(built.outcome.is_ok());
    let executions = executor.executions();
    assert_eq!(executions.len(), 6);
    for execution in &executions {
        let at_once = executions
            .iter()
            .filter(|other| other.started <= execution.started && execution.started < other.ended)
            .count();
        assert!(at_once <= 2, "{at_once} ran at once: {executions:?}");
    }
    assert_eq!(executor.most_running.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_failure_cancels_running_siblings_and_is_returned() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let failing = run(
        &mut graph,
        base,
        "[a 1/1] RUN fail",
        "fail",
        &["SLEEP_MS=50", "FAIL=1"],
    );
    let slow = run(
        &mut graph,
        base,
        "[b 1/2] RUN slow",
        "slow",
        &["SLEEP_MS=30000"],
    );
    let after_slow = run(&mut graph, slow, "[b 2/2] RUN after", "after", &[]);
    let started = Instant::now();
    let built = build(&executor, &graph, &[failing, after_slow]).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let Err(SolveError::Vertex {
        vertex,
        name,
        source,
    }) = &built.outcome
    else {
        panic!("the build must fail: {:?}", built.outcome);
    };
    assert_eq!(*vertex, failing);
    assert_eq!(name, "[a 1/1] RUN fail");
    assert_eq!(source.to_string(), "exit code 1");
    assert_eq!(
        *executor.saw_cancel.lock().unwrap(),
        vec!["[b 1/2] RUN slow"]
    );
    assert!(!executor.executed().contains("[b 2/2] RUN after"));
    assert!(built.events.iter().any(|event| matches!(
        event,
        ProgressEvent::Failed { vertex, error, .. } if *vertex == failing && error == "exit code 1"
    )));
    assert!(
        built
            .events
            .contains(&ProgressEvent::Cancelled { vertex: slow })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_reported_after_the_cancelled_siblings_is_still_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let failing = run(
        &mut graph,
        base,
        "[a 1/1] RUN fail",
        "fail",
        &["CANCEL_BUILD_FIRST=1", "FAIL=1"],
    );
    let slow = run(
        &mut graph,
        base,
        "[b 1/1] RUN slow",
        "slow",
        &["SLEEP_MS=30000"],
    );
    let built = build(&executor, &graph, &[failing, slow]).await;
    assert!(
        matches!(&built.outcome, Err(SolveError::Vertex { vertex, .. }) if *vertex == failing),
        "{:?}",
        built.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_that_stops_on_its_own_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    // Cancels the build itself and then finishes: the stop must not look like success.
    let stopping = run(
        &mut graph,
        base,
        "[a 1/1] RUN stop",
        "stop",
        &["CANCEL_BUILD_FIRST=1"],
    );
    let slow = run(
        &mut graph,
        base,
        "[b 1/1] RUN slow",
        "slow",
        &["SLEEP_MS=30000"],
    );
    let built = build(&executor, &graph, &[stopping, slow]).await;
    let Err(SolveError::Vertex { vertex, source, .. }) = &built.outcome else {
        panic!("the build must not succeed: {:?}", built.outcome);
    };
    assert_eq!(*vertex, slow);
    assert!(matches!(source, VertexError::Exec(ExecError::Cancelled)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_cancels_vertices_waiting_for_a_jobs_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut executor = TestExecutor::new(dir.path());
    // The copy reaches the queue only once the failing step holds the only slot.
    executor.selection_delay = Duration::from_millis(20);
    let executor = Arc::new(executor);
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let context = graph.add(Op::Context, vec![], "load build context");
    let failing = run(
        &mut graph,
        base,
        "[a 1/1] RUN fail",
        "fail",
        &["SLEEP_MS=150", "FAIL=1"],
    );
    let queued = graph.add(
        copy(&["src"], "/"),
        vec![base, context],
        "[b 1/1] COPY src /",
    );
    let built = build_with(&executor, &graph, &[failing, queued], 1, &Cancel::new()).await;
    assert!(matches!(built.outcome, Err(SolveError::Vertex { vertex, .. }) if vertex == failing));
    assert_eq!(executor.executed(), names(&["[a 1/1] RUN fail"]));
    assert!(
        built
            .events
            .contains(&ProgressEvent::Cancelled { vertex: queued })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancel_stops_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let slow = run(
        &mut graph,
        base,
        "[a 1/1] RUN slow",
        "slow",
        &["SLEEP_MS=30000"],
    );
    let cancel = Cancel::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cancel.cancel();
        })
    };
    let built = build_with(&executor, &graph, &[slow], 4, &cancel).await;
    canceller.await.unwrap();
    assert!(matches!(built.outcome, Err(SolveError::Cancelled)));
    assert_eq!(
        *executor.saw_cancel.lock().unwrap(),
        vec!["[a 1/1] RUN slow"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_shared_by_two_roots_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let shared = run(
        &mut graph,
        base,
        "[a 1/2] RUN make",
        "make",
        &["SLEEP_MS=50"],
    );
    let same = run(
        &mut graph,
        base,
        "[b 1/2] RUN make",
        "make",
        &["SLEEP_MS=50"],
    );
    assert_eq!(shared, same);
    let first = run(&mut graph, shared, "[a 2/2] RUN a", "a", &[]);
    let second = run(&mut graph, same, "[b 2/2] RUN b", "b", &[]);
    let built = build(&executor, &graph, &[first, second, first]).await;
    let solution = built.outcome.as_ref().unwrap();
    assert!(solution.get(first).is_some() && solution.get(second).is_some());
    let runs_of_make = executor
        .executions()
        .iter()
        .filter(|execution| execution.name == "[a 1/2] RUN make")
        .count();
    assert_eq!(runs_of_make, 1);
    assert_eq!(executor.executions().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertices_the_roots_do_not_need_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let wanted = run(&mut graph, base, "[a 1/1] RUN wanted", "wanted", &[]);
    run(&mut graph, base, "[b 1/1] RUN unused", "unused", &[]);
    let built = build(&executor, &graph, &[wanted]).await;
    assert!(built.outcome.is_ok());
    assert_eq!(executor.executed(), names(&["[a 1/1] RUN wanted"]));
}

/// Two branches joined by a copy: `a1 → a2`, `b1 → b2`, `join` = a2 + a copy of b2; plus a
/// copy from the context under `a2`'s sibling `c`.
struct Branches {
    graph: BuildGraph,
    roots: Vec<VertexId>,
}

fn branches(a1: &[&str], b1_command: &str) -> Branches {
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let context = graph.add(Op::Context, vec![], "load build context");
    let a1 = run(&mut graph, base, "[a 1/2] RUN a1", "a1", a1);
    let a2 = run(&mut graph, a1, "[a 2/2] RUN a2", "a2", &[]);
    let b1 = run(&mut graph, base, "[b 1/2] RUN b1", b1_command, &[]);
    let b2 = run(&mut graph, b1, "[b 2/2] RUN b2", "b2", &[]);
    let join = graph.add(
        copy(&["/"], "/b/"),
        vec![a2, b2],
        "[a 3/3] COPY --from=b / /b/",
    );
    let copied = graph.add(
        copy(&["src"], "/src/"),
        vec![base, context],
        "[c 1/2] COPY src /src/",
    );
    let tested = run(&mut graph, copied, "[c 2/2] RUN test", "test", &[]);
    Branches {
        graph,
        roots: vec![join, tested],
    }
}

const ALL_STEPS: [&str; 7] = [
    "[a 1/2] RUN a1",
    "[a 2/2] RUN a2",
    "[b 1/2] RUN b1",
    "[b 2/2] RUN b2",
    "[a 3/3] COPY --from=b / /b/",
    "[c 1/2] COPY src /src/",
    "[c 2/2] RUN test",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cache_hit_executes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Branches { graph, roots } = branches(&[], "b1");
    let first_executor = Arc::new(TestExecutor::new(dir.path()));
    let first = build(&first_executor, &graph, &roots).await;
    assert_eq!(first_executor.executed(), names(&ALL_STEPS));
    assert!(
        first
            .miss_reasons()
            .values()
            .all(|reason| reason == "no record")
    );

    let executor = Arc::new(TestExecutor::new(dir.path()));
    let second = build(&executor, &graph, &roots).await;
    assert!(executor.executions().is_empty());
    assert_eq!(second.cached(), names(&ALL_STEPS));
    for root in roots {
        assert_eq!(second.root(root), first.root(root));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_in_one_branch_reruns_only_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let before = branches(&[], "b1");
    build(
        &Arc::new(TestExecutor::new(dir.path())),
        &before.graph,
        &before.roots,
    )
    .await;

    let after = branches(&[], "b1 --changed");
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let built = build(&executor, &after.graph, &after.roots).await;
    let rerun = [
        "[b 1/2] RUN b1",
        "[b 2/2] RUN b2",
        "[a 3/3] COPY --from=b / /b/",
    ];
    assert_eq!(executor.executed(), names(&rerun));
    assert_eq!(
        built.cached(),
        names(&[
            "[a 1/2] RUN a1",
            "[a 2/2] RUN a2",
            "[c 1/2] COPY src /src/",
            "[c 2/2] RUN test"
        ])
    );
    let reasons = built.miss_reasons();
    assert_eq!(
        reasons["[b 1/2] RUN b1"],
        "instruction changed (command); was `[b 1/2] RUN b1`"
    );
    assert_eq!(
        reasons["[b 2/2] RUN b2"],
        "input 0 layers changed: `[b 1/2] RUN b1` produced different files"
    );
    assert_eq!(
        reasons["[a 3/3] COPY --from=b / /b/"],
        "input 1 layers changed: `[b 2/2] RUN b2` produced different files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_with_identical_output_leaves_dependents_cached() {
    let dir = tempfile::tempdir().unwrap();
    let before = branches(&["OUTPUT=same"], "b1");
    build(
        &Arc::new(TestExecutor::new(dir.path())),
        &before.graph,
        &before.roots,
    )
    .await;

    let after = branches(&["OUTPUT=same", "VERSION=2"], "b1");
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let built = build(&executor, &after.graph, &after.roots).await;
    assert_eq!(executor.executed(), names(&["[a 1/2] RUN a1"]));
    assert_eq!(
        built.miss_reasons()["[a 1/2] RUN a1"],
        "instruction changed (env VERSION: unset → 2); was `[a 1/2] RUN a1`"
    );
    assert!(built.cached().contains("[a 2/2] RUN a2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_change_reruns_only_the_steps_that_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let Branches { graph, roots } = branches(&[], "b1");
    build(&Arc::new(TestExecutor::new(dir.path())), &graph, &roots).await;

    let executor = Arc::new(TestExecutor::new(dir.path()).with_context(b"context v2"));
    let built = build(&executor, &graph, &roots).await;
    assert_eq!(
        executor.executed(),
        names(&["[c 1/2] COPY src /src/", "[c 2/2] RUN test"])
    );
    let reasons = built.miss_reasons();
    assert_eq!(
        reasons["[c 1/2] COPY src /src/"],
        "context files changed: modified src/main.c"
    );
    assert_eq!(
        reasons["[c 2/2] RUN test"],
        "input 0 layers changed: `[c 1/2] COPY src /src/` produced different files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_vertices_always_run_but_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let without_cache = || {
        let Branches { mut graph, roots } = branches(&[], "b1");
        let b1 = graph
            .vertices()
            .find(|(_, vertex)| vertex.name == "[b 1/2] RUN b1")
            .map(|(id, _)| id)
            .unwrap();
        graph.ignore_cache(b1);
        Branches { graph, roots }
    };
    let Branches { graph, roots } = without_cache();
    build(&Arc::new(TestExecutor::new(dir.path())), &graph, &roots).await;

    let executor = Arc::new(TestExecutor::new(dir.path()));
    let built = build(&executor, &graph, &roots).await;
    assert_eq!(executor.executed(), names(&["[b 1/2] RUN b1"]));
    assert_eq!(
        built.miss_reasons()["[b 1/2] RUN b1"],
        "cache disabled for this step (--no-cache or --no-cache-filter)"
    );
    // Same output, so its dependents hit.
    assert!(built.cached().contains("[b 2/2] RUN b2"));

    // Recorded all the same: a build that allows the cache hits.
    let Branches { graph, roots } = branches(&[], "b1");
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let built = build(&executor, &graph, &roots).await;
    assert!(executor.executions().is_empty());
    assert!(built.cached().contains("[b 1/2] RUN b1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_image_is_resolved_every_build_and_a_new_digest_reruns_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mut graph = BuildGraph::new();
    let image = graph.add(
        Op::Image {
            reference: "busybox".into(),
            platform: "linux/amd64".into(),
        },
        vec![],
        "[internal] load metadata for busybox",
    );
    let step = run(&mut graph, image, "[a 1/1] RUN make", "make", &[]);
    build(&Arc::new(TestExecutor::new(dir.path())), &graph, &[step]).await;

    let same = Arc::new(TestExecutor::new(dir.path()));
    let built = build(&same, &graph, &[step]).await;
    assert_eq!(
        same.executed(),
        names(&["[internal] load metadata for busybox"])
    );
    assert_eq!(
        built.miss_reasons()["[internal] load metadata for busybox"],
        "sources are resolved on every build"
    );
    assert!(built.cached().contains("[a 1/1] RUN make"));

    let retagged = Arc::new(TestExecutor::new(dir.path()).with_manifest("manifest v2"));
    let built = build(&retagged, &graph, &[step]).await;
    assert!(retagged.executed().contains("[a 1/1] RUN make"));
    assert_eq!(
        built.miss_reasons()["[a 1/1] RUN make"],
        format!(
            "input 0 image changed: {} → {}",
            Digest::of(b"manifest v1"),
            Digest::of(b"manifest v2")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_whose_layer_vanished_reruns_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let step = run(&mut graph, base, "[a 1/1] RUN make", "make", &[]);
    let first = build(&Arc::new(TestExecutor::new(dir.path())), &graph, &[step]).await;
    let blob = first.root(step).blobs()[0].clone();
    std::fs::remove_file(Store::open(dir.path()).unwrap().blob_path(&blob)).unwrap();

    let executor = Arc::new(TestExecutor::new(dir.path()));
    let built = build(&executor, &graph, &[step]).await;
    assert_eq!(executor.executed(), names(&["[a 1/1] RUN make"]));
    assert_eq!(
        built.miss_reasons()["[a 1/1] RUN make"],
        format!("the record for this step was dropped: its blob {blob} is missing from the store")
    );
    assert_eq!(built.root(step), first.root(step));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_each_run_in_order_with_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(dir.path()));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let step = run(&mut graph, base, "[a 1/1] RUN make", "make", &[]);
    let built = build(&executor, &graph, &[step]).await;
    let [started, output, completed] = built.events.as_slice() else {
        panic!("unexpected events: {:?}", built.events);
    };
    let key = built
        .outcome
        .as_ref()
        .unwrap()
        .get(step)
        .unwrap()
        .key
        .clone();
    assert_eq!(
        *started,
        ProgressEvent::Started {
            vertex: step,
            name: "[a 1/1] RUN make".into(),
            key,
            cache_miss_reason: MissReason::NoRecord,
        }
    );
    assert_eq!(
        *output,
        ProgressEvent::Output {
            vertex: step,
            stream: OutputStream::Stdout,
            line: "running make".into(),
        }
    );
    assert!(matches!(completed, ProgressEvent::Completed { vertex, .. } if *vertex == step));
}

/// Exports every keyed step of `built` to a cache directory `dir`.
async fn export_all(store: &Store, graph: &BuildGraph, built: &Built, root: VertexId, dir: &Path) {
    let solution = built.outcome.as_ref().expect("the build succeeds");
    let steps = exported_steps(graph, solution, root, ExportMode::Max);
    let content = cache_content(&steps, None).finish();
    let registry = Registry::new(RegistryConfig::from_env());
    let location = CacheLocation::Directory(dir.into());
    export_cache(store, &registry, &location, content, None)
        .await
        .unwrap();
}

fn remote_from(store: &Store, dir: &Path) -> Arc<RemoteRecords> {
    Arc::new(RemoteRecords::load(
        store.clone(),
        Registry::new(RegistryConfig::from_env()),
        vec![CacheLocation::Directory(dir.into())],
        |location, error| eprintln!("warning: {location}: {error}"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_records_serve_an_empty_store_and_fetch_layers_only_to_run_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let first = Arc::new(TestExecutor::new(&dir.path().join("a")));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let one = run(&mut graph, base, "[s 1/3] RUN one", "one", &[]);
    let two = run(&mut graph, one, "[s 2/3] RUN two", "two", &[]);
    let built = build(&first, &graph, &[two]).await;
    export_all(&first.store, &graph, &built, two, &cache).await;

    let second = Arc::new(TestExecutor::new(&dir.path().join("b")));
    let remote = remote_from(&second.store, &cache);
    let cached = solve_with(&second, &graph, &[two], 4, &Cancel::new(), Some(remote)).await;
    assert_eq!(
        cached.cached(),
        names(&["[s 1/3] RUN one", "[s 2/3] RUN two"])
    );
    let Solved::Filesystem(filesystem) = &*cached.root(two) else {
        panic!("a filesystem");
    };
    assert!(
        filesystem
            .layers
            .iter()
            .all(|layer| !second.store.has_blob(&layer.blob.digest)),
        "a hit copies no layer"
    );

    let three = run(&mut graph, two, "[s 3/3] RUN three", "three", &[]);
    let remote = remote_from(&second.store, &cache);
    let extended = solve_with(&second, &graph, &[three], 4, &Cancel::new(), Some(remote)).await;
    assert_eq!(second.executed(), names(&["[s 3/3] RUN three"]));
    assert!(extended.outcome.is_ok());
    assert!(
        filesystem
            .layers
            .iter()
            .all(|layer| second.store.has_blob(&layer.blob.digest)),
        "the step that ran on the imported layers had them fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_hits_do_not_wait_for_a_remote_cache_that_has_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(TestExecutor::new(&dir.path().join("root")));
    let mut graph = BuildGraph::new();
    let base = graph.add(Op::Scratch, vec![], "scratch");
    let one = run(&mut graph, base, "[s 1/1] RUN one", "one", &[]);
    assert!(build(&executor, &graph, &[one]).await.outcome.is_ok());

    // A cache whose index.json is a FIFO nobody writes: reading it blocks until the end.
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let fifo = cache.join("index.json");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let remote = remote_from(&executor.store, &cache);
    let cancel = Cancel::new();
    let roots = [one];
    let solve = solve_with(&executor, &graph, &roots, 4, &cancel, Some(remote));
    let built = tokio::time::timeout(Duration::from_secs(30), solve)
        .await
        .expect("a local hit never waits for the remote cache");
    assert_eq!(built.cached(), names(&["[s 1/1] RUN one"]));
    // Unblocks the reader (it sees no cache and warns), so the runtime can shut down.
    std::fs::write(&fifo, b"{}").unwrap();
}
