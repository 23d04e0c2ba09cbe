//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod canary;
pub mod http;
pub mod registry;
pub mod serve;
pub mod ssh_agent;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The reference material in `../shared` (override with `IMGB_SHARED_DIR`).
///
/// A user's clone has no `../shared`: the test prints a notice and is skipped (`None`). In CI
/// (`CI` set) a missing `../shared` is a failure, so conformance can never silently stop running.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("IMGB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing and CI is set: the conformance data must be present",
            dir.display()
        );
    }
    eprintln!(
        "notice: {} is absent; skipping this test (set IMGB_SHARED_DIR to run it)",
        dir.display()
    );
    None
}

/// `../shared/conformance/buildkit-dockerfile/frontend/dockerfile`, or `None` (see [`shared_dir`]).
pub fn buildkit_dockerfile_dir() -> Option<PathBuf> {
    shared_dir().map(|dir| dir.join("conformance/buildkit-dockerfile/frontend/dockerfile"))
}

/// `/bin/busybox` from busybox-static, or `None` (with a notice; a failure under CI).
pub fn busybox() -> Option<PathBuf> {
    let path = PathBuf::from("/bin/busybox");
    let static_binary = std::fs::read(&path).is_ok_and(|bytes| is_static_elf(&bytes));
    if static_binary {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("busybox-static is not installed (scripts/install-deps installs it)");
    }
    eprintln!("notice: a static /bin/busybox is missing; skipping (run scripts/install-deps)");
    None
}

/// A 64-bit little-endian ELF without a `PT_INTERP` program header: it runs in an empty root.
fn is_static_elf(bytes: &[u8]) -> bool {
    let read = |at: usize, len: usize| {
        bytes.get(at..at + len).map(|b| {
            b.iter()
                .rev()
                .fold(0usize, |n, &x| (n << 8) | usize::from(x))
        })
    };
    if !bytes.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(offset), Some(size), Some(count)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    else {
        return false;
    };
    (0..count).all(|index| read(offset + index * size, 4).is_some_and(|kind| kind != 3))
}

pub fn is_root() -> bool {
    // Rootless builds work too, but the end-to-end tests compare against root-owned fixtures.
    std::fs::metadata("/proc/self")
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
}

/// A temp dir and the static busybox, when an end-to-end build can run here (root,
/// busybox-static); `None` with a notice otherwise.
pub fn setup() -> Option<(tempfile::TempDir, PathBuf)> {
    let busybox = busybox()?;
    if !is_root() {
        eprintln!("notice: not root; skipping");
        return None;
    }
    Some((tempfile::tempdir().unwrap(), busybox))
}

/// `dir/context` holding `dockerfile` and the busybox binary (as `busybox`), so that
/// `FROM scratch` + `COPY busybox /bin/busybox` makes a real base offline.
pub fn busybox_context(dir: &Path, busybox: &Path, dockerfile: &str) -> PathBuf {
    let context = dir.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(busybox, context.join("busybox")).unwrap();
    std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
    context
}

/// Runs the imgb binary with `--root root`, whatever its exit status.
pub fn imgb(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("imgb runs")
}

/// Runs the imgb binary with `--root root` and asserts that it succeeded.
pub fn imgb_ok(root: &Path, args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(root)
        .args(args))
}

/// Runs a command and asserts that it succeeded, showing its output otherwise.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    output
}

/// Runs `command` to its end, unless it takes longer than `limit`: it is then killed and the
/// test fails, so that a regression that hangs fails the suite instead of stalling it.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still ran after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `Some(path)` of a host tool, or `None` with a notice (a failure when `CI` is set).
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is missing and CI is set (scripts/install-deps installs it)");
        }
        eprintln!("notice: {name} is not installed; skipping (scripts/install-deps installs it)");
    }
    found
}

/// The base image every feature test builds on: busybox with its applets linked in `/bin`, and
/// an `/etc/passwd` + `/etc/group` naming a user and groups for `--chown` by name.
pub const BASE: &str = "localhost/imgb-test-base:1";

const BASE_DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY <<EOF /etc/passwd
root:x:0:0:root:/root:/bin/sh
bob:x:1001:1002::/home/bob:/bin/sh
EOF
COPY <<EOF /etc/group
root:x:0:
staff:x:1002:
builders:x:2000:
EOF
"#;

/// A state root shared by the tests of one test binary, holding [`BASE`]; `None` (with a
/// notice) where end-to-end builds cannot run. It lives under Cargo's per-target temp dir and is
/// recreated once per process, so a test file pays for the base image once and nothing leaks.
pub fn shared_root() -> Option<&'static Path> {
    static ROOT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let (_, busybox) = setup()?;
        let binary = std::env::current_exe().unwrap();
        let name = binary.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-shared"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let root = dir.join("root");
        let context = busybox_context(&dir, &busybox, BASE_DOCKERFILE);
        imgb_ok(&root, &["build", "-t", BASE, context.to_str().unwrap()]);
        Some(root)
    })
    .as_deref()
}

/// A build context in its own temp dir (`dir/context`), with room beside it for outputs.
pub struct TestContext {
    pub dir: tempfile::TempDir,
}

impl TestContext {
    /// A context holding `Dockerfile` and `files` (`path`, contents).
    pub fn new(dockerfile: &str, files: &[(&str, &str)]) -> Self {
        let context = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        context.write("Dockerfile", dockerfile);
        for (path, contents) in files {
            context.write(path, contents);
        }
        context
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("context")
    }

    /// Writes a file in the context, making its parent directories.
    pub fn write(&self, path: &str, contents: &str) {
        let path = self.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    /// `imgb --root ROOT build ARGS CONTEXT`, plain progress unless `args` say.
    pub fn build_command(&self, root: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_imgb"));
        command.arg("--root").arg(root).arg("build");
        if !args.contains(&"--progress") {
            command.args(["--progress", "plain"]);
        }
        command.args(args).arg(self.path());
        command
    }

    /// Builds with `args` in `root`, whatever the outcome.
    pub fn build(&self, root: &Path, args: &[&str]) -> Output {
        self.build_command(root, args).output().expect("imgb runs")
    }

    /// Builds with `args` in `root`, which must succeed.
    pub fn build_ok(&self, root: &Path, args: &[&str]) -> Output {
        let output = self.build(root, args);
        assert!(
            output.status.success(),
            "build failed: {}\n{}",
            output.status,
            stderr(&output)
        );
        output
    }

    /// Builds with `args` in `root` and exports the root filesystem (`-o type=local`) beside
    /// the context; its path.
    pub fn rootfs(&self, root: &Path, args: &[&str]) -> PathBuf {
        let dest = self.dir.path().join("rootfs");
        if dest.exists() {
            std::fs::remove_dir_all(&dest).unwrap();
        }
        let output = format!("type=local,dest={}", dest.display());
        let mut all = vec!["-o", output.as_str()];
        all.extend_from_slice(args);
        self.build_ok(root, &all);
        dest
    }
}

/// `imgb run IMAGE sh -c SCRIPT` in `root`, which must succeed; its standard output.
pub fn run_in(root: &Path, image: &str, script: &str) -> String {
    stdout(&imgb_ok(root, &["run", image, "--", "sh", "-c", script]))
}

/// The names of the steps a `--progress rawjson` build ran (started), internal source
/// resolution left out, in event order.
pub fn ran_steps(rawjson: &str) -> Vec<String> {
    rawjson
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["event"] == "started")
        .filter_map(|event| event["name"].as_str().map(str::to_string))
        .filter(|name| !name.starts_with("[internal]"))
        .collect()
}

/// What plain progress (`--progress plain`) said of `step`: `CACHED` or `cache miss: ...`.
pub fn step_outcome<'a>(log: &'a str, step: &str) -> &'a str {
    let mut lines = log.lines();
    let number = lines
        .by_ref()
        .find_map(|line| line.strip_suffix(step)?.strip_suffix(' '))
        .unwrap_or_else(|| panic!("{step} is not in the progress:\n{log}"));
    lines
        .find_map(|line| line.strip_prefix(number)?.strip_prefix(' '))
        .unwrap_or_default()
}
