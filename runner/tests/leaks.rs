//! Nothing survives a step: 100 runs — successful, failing, timed out, cancelled at varying
//! moments, and failing in setup — leave no mount, no process and no directory behind.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use imgb_cache::Store;
use imgb_runner::{CommitTo, Mount, MountKind, Network, RunSpec, RunStatus};

const RUNS: usize = 100;

/// The host mounts that involve `dir` (where every run directory and the store live). Other
/// processes on the machine may mount and unmount meanwhile (a Docker daemon, another build):
/// only mounts of ours can be our leaks.
fn mountinfo(dir: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours = dir.to_string_lossy().into_owned();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| line.contains(&ours))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Processes running the init program (any stage).
fn init_processes(init: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if name.to_str().and_then(|n| n.parse::<u32>().ok()).is_none() {
            continue;
        }
        if fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == init) {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!("{name:?}: {}", String::from_utf8_lossy(&cmdline)));
        }
    }
    found
}

fn spec_for(fixture: &Fixture, run: usize, store: &Store) -> (RunSpec, Option<Duration>) {
    let mut spec = fixture.spec("echo out; echo err >&2");
    spec.network = if run.is_multiple_of(2) {
        Network::None
    } else {
        Network::Host
    };
    let mut cancel = None;
    match run % 5 {
        0 => {
            spec = fixture.spec("echo data > /file; mkdir -p /a/b; rm -r /bin/busybox");
            spec.commit = Some(CommitTo {
                store: store.clone(),
                source_date_epoch: None,
            });
        }
        1 => spec = fixture.spec("echo failing >&2; exit 3"),
        // Killed at different points: during setup, while the command runs.
        2 => {
            spec = fixture.spec("sleep 60 & sleep 60");
            spec.timeout = Some(Duration::from_millis(5 + 20 * (run as u64 % 10)));
        }
        3 => {
            spec.mounts = vec![Mount {
                target: "/m".into(),
                kind: MountKind::Bind {
                    source: PathBuf::from("/nonexistent/source"),
                    read_only: true,
                },
            }];
        }
        _ => {
            spec = fixture.spec("while true; do echo tick; sleep 0.01; done");
            cancel = Some(Duration::from_millis(10 + 15 * (run as u64 % 10)));
        }
    }
    (spec, cancel)
}

/// One run, checked against what its kind must give; the outcome's name.
async fn one_run(fixture: &Fixture, store: &Store, run: usize) -> String {
    let (spec, cancel) = spec_for(fixture, run, store);
    let ran = match cancel {
        Some(after) => run_with(&fixture.runner, &spec, tokio::time::sleep(after)).await,
        None => fixture.run(&spec).await,
    };
    match (run % 5, &ran.outcome) {
        (0, Ok(outcome)) => assert!(outcome.layer.is_some(), "{ran:?}"),
        (1, Ok(outcome)) => assert_eq!(outcome.status, RunStatus::Exited(3)),
        (2, Ok(outcome)) => assert_eq!(outcome.status, RunStatus::TimedOut),
        (3, Err(error)) => assert!(error.contains("/nonexistent/source"), "{error}"),
        (4, Ok(outcome)) => assert_eq!(outcome.status, RunStatus::Cancelled),
        _ => panic!("run {run}: unexpected {ran:?}"),
    }
    match ran.outcome {
        Ok(outcome) => format!("{:?}", outcome.status),
        Err(_) => "setup error".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_runs_with_failures_and_kills_leave_nothing_behind() {
    let fixture = Fixture::new();
    let store = Store::open(fixture.dir.path().join("store")).unwrap();
    let init = init_program().program.canonicalize().unwrap();
    let mounts_before = mountinfo(fixture.dir.path());

    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    // Two at a time, as a build with parallel stages would run them.
    for first in (0..RUNS).step_by(2) {
        let (a, b) = tokio::join!(
            one_run(&fixture, &store, first),
            one_run(&fixture, &store, first + 1)
        );
        for outcome in [a, b] {
            *outcomes.entry(outcome).or_default() += 1;
        }
    }
    eprintln!("outcomes: {outcomes:?}");

    assert_eq!(
        mountinfo(fixture.dir.path()),
        mounts_before,
        "mounts changed"
    );
    assert_eq!(
        init_processes(&init),
        Vec::<String>::new(),
        "init processes left"
    );
    assert_eq!(
        fixture.scratch_entries(),
        Vec::<PathBuf>::new(),
        "run directories left"
    );
    assert_eq!(
        fs::read_dir(store.tmp_dir()).unwrap().count(),
        0,
        "store tmp/ not empty"
    );
}
