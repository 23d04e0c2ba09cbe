//! Test support: a busybox root filesystem made from Debian's busybox-static, a runner pointed
//! at the `imgb-runner-init` program, and a helper that runs a command and collects its output.
#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imgb_runner::{InitProgram, OutputLine, OutputStream, RunOutcome, RunSpec, Runner};
use tokio::sync::mpsc;

/// Where the static busybox comes from (`scripts/install-deps` installs busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Environment variable naming the init program, for test binaries run from a copy.
pub const INIT_ENV: &str = "IMGB_RUNNER_TEST_INIT";

pub fn init_program() -> InitProgram {
    let program = std::env::var_os(INIT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_imgb-runner-init")));
    InitProgram {
        program,
        args: Vec::new(),
    }
}

/// `/etc/passwd` and `/etc/group` of the test image.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1000:App:/home/app:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
pub const GROUP: &str = "root:x:0:\n\
                         wheel:x:10:root,app\n\
                         audio:x:29:app\n\
                         staff:x:50:\n\
                         app:x:1000:\n\
                         nogroup:x:65534:\n";

/// A busybox root filesystem layer at `dir`: `/bin/busybox` plus one symlink per applet, as
/// `busybox --install -s` makes them, and minimal passwd/group files.
pub fn busybox_layer(dir: &Path) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install busybox-static (scripts/install-deps)"
    );
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("root")).unwrap();
    fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(dir.join("etc/passwd"), PASSWD).unwrap();
    fs::write(dir.join("etc/group"), GROUP).unwrap();
    dir.to_owned()
}

/// A test's world: a busybox layer and a scratch directory for run directories.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub base: PathBuf,
    pub runner: Runner,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = busybox_layer(&dir.path().join("base"));
        let runner = Runner::new(dir.path().join("scratch"), init_program());
        Self { dir, base, runner }
    }

    pub fn spec(&self, script: &str) -> RunSpec {
        RunSpec::new(
            vec![self.base.clone()],
            vec!["/bin/sh".into(), "-c".into(), script.into()],
        )
    }

    /// Runs `spec`, returning the outcome (or the error's text) with stdout and stderr.
    pub async fn run(&self, spec: &RunSpec) -> Ran {
        run_with(&self.runner, spec, std::future::pending()).await
    }

    /// Runs `script` and asserts it exits with 0, returning its stdout.
    pub async fn stdout(&self, script: &str) -> String {
        let ran = self.run(&self.spec(script)).await;
        ran.assert_success();
        ran.stdout
    }

    pub fn scratch_entries(&self) -> Vec<PathBuf> {
        match fs::read_dir(self.dir.path().join("scratch")) {
            Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct Ran {
    pub outcome: Result<RunOutcome, String>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    #[track_caller]
    pub fn assert_success(&self) {
        match &self.outcome {
            Ok(outcome) if outcome.status.success() => {}
            other => panic!(
                "run failed: {other:?}\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            ),
        }
    }

    #[track_caller]
    pub fn outcome(&self) -> &RunOutcome {
        self.outcome
            .as_ref()
            .unwrap_or_else(|error| panic!("run error: {error}\nstderr: {}", self.stderr))
    }

    #[track_caller]
    pub fn error(&self) -> &str {
        match &self.outcome {
            Err(error) => error,
            Ok(outcome) => panic!("expected an error, got {outcome:?}"),
        }
    }
}

pub async fn run_with(runner: &Runner, spec: &RunSpec, cancel: impl Future<Output = ()>) -> Ran {
    let (sender, mut receiver) = mpsc::channel::<OutputLine>(64);
    let collect = async move {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(line) = receiver.recv().await {
            match line.stream {
                OutputStream::Stdout => stdout.extend(line.line),
                OutputStream::Stderr => stderr.extend(line.line),
            }
        }
        (stdout, stderr)
    };
    let run = async move { runner.run(spec, sender, cancel).await };
    let (outcome, (stdout, stderr)) = tokio::join!(run, collect);
    Ran {
        outcome: outcome.map_err(|error| error.to_string()),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A short timeout for steps that are meant to be killed.
pub const KILL_AFTER: Duration = Duration::from_millis(300);
