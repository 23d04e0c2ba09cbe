//! Cache-key completeness (issue 8, class 5): pairs of builds that differ in one input. For each
//! pair, A then B are built in one shared root; B must rerun the step the difference reaches
//! (read from the `rawjson` events) and never hit a record of A by mistake: B's image must equal
//! a clean build of B in a root that holds only the base images. A config-only difference
//! (HEALTHCHECK, ONBUILD) reruns nothing but changes the image; inputs that must not matter (an
//! mtime, an undeclared build arg, a secret's value, an ignored file) rerun nothing and change
//! nothing.
//!
//! Every build sets `SOURCE_DATE_EPOCH`, so equal inputs give byte-equal images and the image
//! ID comparison is exact.

#[path = "../support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use support::{BASE, imgb_ok, ran_steps, shared_root, stderr};

/// A second base for the FROM case: the first plus one file.
const OTHER_BASE: &str = "localhost/imgb-test-base:other";
const EPOCH: &str = "1700000000";

/// One side of a pair: the Dockerfile, context files (`path`, contents, mode) and build flags.
#[derive(Debug, Clone, Copy)]
struct Side {
    dockerfile: &'static str,
    files: &'static [(&'static str, &'static str, u32)],
    args: &'static [&'static str],
}

/// What building B after A must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing reruns and the image is A's.
    Hit,
    /// No step reruns, but the image differs (a config-only change).
    ConfigOnly,
    /// The step whose name contains this text reruns. The image may still equal A's (a mount's
    /// id changes nothing the step writes); that it equals a clean build is checked for all.
    Reruns(&'static str),
}

#[derive(Debug)]
struct Case {
    name: &'static str,
    a: Side,
    b: Side,
    /// How B's context differs from A's on disk, applied between the builds.
    change: fn(&Path),
    expect: Expect,
}

const fn side(dockerfile: &'static str) -> Side {
    Side {
        dockerfile,
        files: &[],
        args: &[],
    }
}

/// A context of a payload and a script, the script with mode `script_mode`.
const fn with_files(dockerfile: &'static str, script_mode: u32) -> Side {
    const PLAIN: &[(&str, &str, u32)] = &[("f.txt", "payload\n", 0o644), ("x.sh", "echo\n", 0o644)];
    const EXECUTABLE: &[(&str, &str, u32)] =
        &[("f.txt", "payload\n", 0o644), ("x.sh", "echo\n", 0o755)];
    Side {
        dockerfile,
        files: if script_mode == 0o755 {
            EXECUTABLE
        } else {
            PLAIN
        },
        args: &[],
    }
}

impl Side {
    const fn args(self, args: &'static [&'static str]) -> Side {
        Side { args, ..self }
    }
}

fn unchanged(_: &Path) {}

fn touch_payload(context: &Path) {
    let file = std::fs::File::options()
        .write(true)
        .open(context.join("f.txt"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
}

fn edit_ignored(context: &Path) {
    std::fs::write(context.join("ignored.txt"), "changed\n").unwrap();
}

fn edit_secret(context: &Path) {
    std::fs::write(context.join("../secret-value"), "second value\n").unwrap();
}

const SECRET_ARGS: &[&str] = &["--secret", "id=a,src=SECRET", "--secret", "id=b,src=SECRET"];

fn cases() -> Vec<Case> {
    let case = |name, a, b, expect| Case {
        name,
        a,
        b,
        change: unchanged,
        expect,
    };
    // The same Dockerfile and flags, with `change` made to the context before B: a hit.
    let same_after = |name, side, change| Case {
        name,
        a: side,
        b: side,
        change,
        expect: Expect::Hit,
    };
    vec![
        case(
            "healthcheck",
            side("FROM BASE\nHEALTHCHECK CMD true\nRUN echo hc > /out\n"),
            side("FROM BASE\nHEALTHCHECK --interval=5s CMD true\nRUN echo hc > /out\n"),
            Expect::ConfigOnly,
        ),
        case(
            "onbuild",
            side("FROM BASE\nONBUILD RUN echo a\nRUN echo ob > /out\n"),
            side("FROM BASE\nONBUILD RUN echo b\nRUN echo ob > /out\n"),
            Expect::ConfigOnly,
        ),
        case(
            "shell",
            side("FROM BASE\nSHELL [\"/bin/sh\", \"-c\"]\nRUN echo sh $- > /out\n"),
            side("FROM BASE\nSHELL [\"/bin/sh\", \"-ec\"]\nRUN echo sh $- > /out\n"),
            Expect::Reruns("RUN echo sh"),
        ),
        case(
            "user",
            side("FROM BASE\nUSER 0\nRUN id > /out-user\n"),
            side("FROM BASE\nUSER 0:2000\nRUN id > /out-user\n"),
            Expect::Reruns("RUN id"),
        ),
        case(
            "copy_chmod",
            with_files("FROM BASE\nCOPY --chmod=644 f.txt /chmod\n", 0o644),
            with_files("FROM BASE\nCOPY --chmod=755 f.txt /chmod\n", 0o644),
            Expect::Reruns("COPY --chmod=755"),
        ),
        case(
            "copy_chown",
            with_files("FROM BASE\nCOPY --chown=0:0 f.txt /chown\n", 0o644),
            with_files("FROM BASE\nCOPY --chown=1001:1002 f.txt /chown\n", 0o644),
            Expect::Reruns("COPY --chown=1001"),
        ),
        case(
            "copy_link",
            with_files(
                "FROM BASE\nCOPY f.txt /link\nRUN cat /link > /out-link\n",
                0o644,
            ),
            with_files(
                "FROM BASE\nCOPY --link f.txt /link\nRUN cat /link > /out-link\n",
                0o644,
            ),
            Expect::Reruns("COPY --link"),
        ),
        case(
            "used_build_arg",
            side("FROM BASE\nARG V\nRUN echo $V > /out-arg\n").args(&["--build-arg", "V=1"]),
            side("FROM BASE\nARG V\nRUN echo $V > /out-arg\n").args(&["--build-arg", "V=2"]),
            Expect::Reruns("RUN echo $V"),
        ),
        case(
            "unused_build_arg",
            side("FROM BASE\nRUN echo unused > /out\n").args(&["--build-arg", "UNUSED=1"]),
            side("FROM BASE\nRUN echo unused > /out\n").args(&["--build-arg", "UNUSED=2"]),
            Expect::Hit,
        ),
        case(
            "base_image",
            side("FROM BASE\nRUN echo from > /out-from\n"),
            side("FROM OTHER_BASE\nRUN echo from > /out-from\n"),
            Expect::Reruns("RUN echo from"),
        ),
        case(
            "secret_id",
            side("FROM BASE\nRUN --mount=type=secret,id=a,target=/s wc -c < /s > /out\n")
                .args(SECRET_ARGS),
            side("FROM BASE\nRUN --mount=type=secret,id=b,target=/s wc -c < /s > /out\n")
                .args(SECRET_ARGS),
            Expect::Reruns("id=b"),
        ),
        same_after(
            "secret_value",
            side("FROM BASE\nRUN --mount=type=secret,id=a test -s /run/secrets/a\n")
                .args(SECRET_ARGS),
            edit_secret,
        ),
        case(
            "file_mode",
            with_files("FROM BASE\nCOPY x.sh /x.sh\n", 0o644),
            with_files("FROM BASE\nCOPY x.sh /x.sh\n", 0o755),
            Expect::Reruns("COPY x.sh"),
        ),
        same_after(
            "mtime_only",
            with_files("FROM BASE\nCOPY f.txt /mtime\n", 0o644),
            touch_payload,
        ),
        same_after(
            "dockerignored_file",
            Side {
                dockerfile: "FROM BASE\nCOPY . /ctx\n",
                files: &[
                    (".dockerignore", "ignored.txt\n", 0o644),
                    ("ignored.txt", "first\n", 0o644),
                    ("kept.txt", "kept\n", 0o644),
                ],
                args: &[],
            },
            edit_ignored,
        ),
        case(
            "env_order",
            side("FROM BASE\nENV A=1\nENV B=2\nRUN env | sort > /out-env\n"),
            side("FROM BASE\nENV B=2\nENV A=1\nRUN env | sort > /out-env\n"),
            Expect::Reruns("RUN env"),
        ),
        case(
            "workdir",
            side("FROM BASE\nWORKDIR /a\nRUN pwd > /out-pwd\n"),
            side("FROM BASE\nWORKDIR /b\nRUN pwd > /out-pwd\n"),
            Expect::Reruns("RUN pwd"),
        ),
        case(
            "run_network",
            side("FROM BASE\nRUN --network=default echo net > /out-net\n"),
            side("FROM BASE\nRUN --network=none echo net > /out-net\n"),
            Expect::Reruns("RUN --network=none"),
        ),
        case(
            "mount_options",
            side("FROM BASE\nRUN --mount=type=cache,target=/c,id=one ls /c > /out-mount\n"),
            side("FROM BASE\nRUN --mount=type=cache,target=/c,id=two ls /c > /out-mount\n"),
            Expect::Reruns("id=two"),
        ),
    ]
}

/// Writes `side`'s context under `dir/<label>` and the shared secret beside it; the context.
fn write_context(dir: &Path, label: &str, side: &Side) -> PathBuf {
    let context = dir.join(label);
    std::fs::create_dir_all(&context).unwrap();
    let dockerfile = side
        .dockerfile
        .replace("OTHER_BASE", OTHER_BASE)
        .replace("FROM BASE", &format!("FROM {BASE}"));
    std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
    for (path, contents, mode) in side.files {
        let path = context.join(path);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let secret = dir.join("secret-value");
    if !secret.exists() {
        std::fs::write(&secret, "first value\n").unwrap();
    }
    context
}

/// Builds `context` in `root` with rawjson progress; the steps that ran and the image ID.
fn build(root: &Path, context: &Path, side: &Side) -> (Vec<String>, String) {
    let secret = context.join("../secret-value");
    let iidfile = context.join("../iid");
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgb"));
    command
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "rawjson", "--iidfile"])
        .arg(&iidfile);
    for arg in side.args {
        command.arg(arg.replace("SECRET", secret.to_str().unwrap()));
    }
    let output: Output = command.arg(context).output().expect("imgb runs");
    assert!(
        output.status.success(),
        "build of {} failed: {}",
        context.display(),
        stderr(&output)
    );
    let image = std::fs::read_to_string(&iidfile).unwrap();
    (ran_steps(&stderr(&output)), image)
}

/// A root holding only the base images (saved from the shared root and loaded), copied for
/// each clean build.
fn template_root(shared: &Path) -> &'static Path {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("adversarial-cache-keys-template");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let context = dir.join("other-base");
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(
            context.join("Dockerfile"),
            format!("FROM {BASE}\nRUN echo other > /other-base\n"),
        )
        .unwrap();
        imgb_ok(
            shared,
            &["build", "-t", OTHER_BASE, context.to_str().unwrap()],
        );
        let root = dir.join("root");
        for (index, image) in [BASE, OTHER_BASE].into_iter().enumerate() {
            let archive = dir.join(format!("base-{index}.tar"));
            let spec = format!("type=docker,dest={}", archive.display());
            imgb_ok(shared, &["save", image, "-o", &spec]);
            imgb_ok(&root, &["load", "-i", archive.to_str().unwrap()]);
        }
        root
    })
}

/// Runs one case; a description of what went wrong, if anything.
fn run_case(case: &Case, shared: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let context_a = write_context(dir.path(), "a", &case.a);
    let (_, image_a) = build(shared, &context_a, &case.a);
    let context_b = write_context(dir.path(), "b", &case.b);
    (case.change)(&context_b);
    let (ran, image_b) = build(shared, &context_b, &case.b);

    let clean_root = dir.path().join("clean-root");
    support::run(
        Command::new("cp")
            .arg("-a")
            .arg(template_root(shared))
            .arg(&clean_root),
    );
    let (_, clean_image) = build(&clean_root, &context_b, &case.b);
    if image_b != clean_image {
        return Err(format!(
            "{}: false hit: B is {image_b} after A, {clean_image} when built clean (ran {ran:?})",
            case.name
        ));
    }
    let outcome = match case.expect {
        Expect::Hit if ran.is_empty() && image_a == image_b => Ok(()),
        Expect::ConfigOnly if ran.is_empty() && image_a != image_b => Ok(()),
        Expect::Reruns(step) if ran.iter().any(|name| name.contains(step)) => Ok(()),
        _ => Err(()),
    };
    outcome.map_err(|()| {
        format!(
            "{}: expected {:?}; B ran {ran:?}, image A {image_a}, B {image_b}",
            case.name, case.expect
        )
    })
}

#[test]
fn each_input_of_a_step_is_in_its_cache_key_and_nothing_else_is() {
    let Some(shared) = shared_root() else { return };
    template_root(shared);
    let cases = cases();
    let next = Mutex::new(cases.iter());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while let Some(case) = { next.lock().unwrap().next() } {
                    if let Err(failure) = run_case(case, shared) {
                        failures.lock().unwrap().push(failure);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
