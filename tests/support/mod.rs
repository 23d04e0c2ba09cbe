//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
