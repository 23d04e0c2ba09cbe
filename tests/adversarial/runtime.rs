//! Issue 8, class 3: a `RUN` step that attacks the machine it builds on. Each test runs real
//! builds on a busybox base and checks that the step stays inside its container: no host path
//! or descriptor reachable (runc CVE-2024-21626), no writable host binary (CVE-2019-5736), no
//! secret of the invoking user or of imgb's own environment, no way to take imgb down, and
//! process, memory and disk limits that hold while the host stays usable.

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::{BASE, TestContext, output_within, shared_root, stderr};

/// A value that must never be visible to a step.
const CANARY: &str = "imgb-canary-7f3a91c2";

/// A host directory outside every build context and store, holding a canary file; the path
/// of the file.
fn host_canary(dir: &Path) -> PathBuf {
    let secret = dir.join("host-secret");
    std::fs::create_dir_all(&secret).unwrap();
    let file = secret.join("canary");
    std::fs::write(&file, CANARY).unwrap();
    file
}

/// `imgb --root ROOT build --progress plain ARGS... CONTEXT` through `/bin/sh`, so that a test
/// can hand imgb an inherited descriptor or environment. `shell_prefix` goes before `exec`.
fn build_via_shell(
    root: &Path,
    context: &TestContext,
    args: &[&str],
    shell_redirections: &str,
    env: &[(&str, &str)],
) -> Output {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!("exec \"$@\" {shell_redirections}"))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain"])
        .args(args)
        .arg(context.path())
        .envs(env.iter().copied());
    command.output().expect("imgb runs")
}

/// Builds, exporting the root filesystem beside the context; the output and the export's
/// path (present only when the build succeeded).
fn build_rootfs(root: &Path, context: &TestContext, args: &[&str]) -> (Output, PathBuf) {
    let dest = context.dir.path().join("rootfs");
    let output = format!("type=local,dest={}", dest.display());
    let mut all = vec!["-o", output.as_str()];
    all.extend_from_slice(args);
    (context.build(root, &all), dest)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir` (symlinks not followed) contains no canary.
fn assert_no_canary_under(dir: &Path) {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(CANARY),
                    "{} holds the canary",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn workdir_through_proc_self_fd_never_reaches_an_inherited_host_directory() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new("", &[]);
    let canary = host_canary(context.dir.path());
    let secret_dir = canary.parent().unwrap();
    // One stage per descriptor number, all in one build; the shell hands imgb the host
    // directory as each of them, not close-on-exec.
    let mut dockerfile = String::new();
    let mut redirections = String::new();
    for fd in 3..=9 {
        dockerfile.push_str(&format!(
            "FROM {BASE} AS fd{fd}\nWORKDIR /proc/self/fd/{fd}\n\
             RUN pwd > /pwd; (cat canary; cat ../canary; \
             cat ../../../../../../../../..{canary}) > /read 2>&1 || true\n",
            canary = canary.display()
        ));
        redirections.push_str(&format!("{fd}<{} ", secret_dir.display()));
    }
    dockerfile.push_str(&format!("FROM {BASE}\n"));
    for fd in 3..=9 {
        dockerfile.push_str(&format!("COPY --from=fd{fd} /pwd /read /fd{fd}/\n"));
    }
    context.write("Dockerfile", &dockerfile);
    let dest = context.dir.path().join("rootfs");
    let output = format!("type=local,dest={}", dest.display());
    let built = build_via_shell(root, &context, &["-o", &output], &redirections, &[]);
    assert!(!stderr(&built).contains(CANARY), "{}", stderr(&built));
    // Failing is fine (the runner refuses such a working directory); reading is not.
    if built.status.success() {
        assert_no_canary_under(&dest);
        for fd in 3..=9 {
            assert!(read(&dest.join(format!("fd{fd}/pwd"))).starts_with('/'));
        }
    }
}

#[test]
fn a_step_inherits_no_descriptor_of_imgb() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        // `ls` execs in the shell's place (busybox sh keeps descriptors of its own): its list
        // is 0, 1, 2 and 3, the directory it reads, unless something leaked.
        &format!("FROM {BASE}\nRUN exec ls /proc/self/fd > /fds\n"),
        &[],
    );
    let canary = host_canary(context.dir.path());
    let dest = context.dir.path().join("rootfs");
    let output = format!("type=local,dest={}", dest.display());
    let built = build_via_shell(
        root,
        &context,
        &["-o", &output, "--no-cache"],
        &format!("7<{} 8<{}", canary.display(), canary.display()),
        &[],
    );
    assert!(built.status.success(), "{}", stderr(&built));
    assert_eq!(read(&dest.join("fds")), "0\n1\n2\n3\n");
}

#[test]
fn a_step_sees_only_the_image_env_and_used_args_never_imgb_credentials() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\nARG USED\n\
             RUN env | sort > /env; cat /proc/[0-9]*/environ | tr '\\0' '\\n' > /environs; \
             (cat \"$HOME/.docker/config.json\" /root/.docker/config.json; \
             cat $HOST_PATHS; ls /proc) > /creds 2>&1 || true\n"
        ),
        &[],
    );
    let home = context.dir.path().join("home");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    let docker_config = home.join(".docker/config.json");
    std::fs::write(
        &docker_config,
        format!(r#"{{"auths":{{"example.com":{{"auth":"{CANARY}"}}}}}}"#),
    )
    .unwrap();
    let auth_file = host_canary(context.dir.path());
    let host_paths = format!("{} {}", docker_config.display(), auth_file.display());
    let dest = context.dir.path().join("rootfs");
    let output = format!("type=local,dest={}", dest.display());
    let built = build_via_shell(
        root,
        &context,
        &[
            "-o",
            &output,
            "--no-cache",
            "--build-arg",
            "USED=used-value",
            "--build-arg",
            &format!("HOST_PATHS={host_paths}"),
        ],
        "",
        &[
            ("HOME", home.to_str().unwrap()),
            ("IMGB_AUTH_FILE", auth_file.to_str().unwrap()),
            ("DOCKER_CONFIG", home.join(".docker").to_str().unwrap()),
            ("IMGB_TEST_CANARY", CANARY),
        ],
    );
    assert!(built.status.success(), "{}", stderr(&built));
    assert_no_canary_under(&dest);
    // HOST_PATHS is not declared: an unused build arg stays out of the step.
    let env = read(&dest.join("env"));
    let names: Vec<&str> = env
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .filter(|name| !["PWD", "SHLVL", "_"].contains(name))
        .collect();
    assert_eq!(names, ["HOME", "PATH", "USED"], "{env}");
    assert!(env.contains("USED=used-value\n"));
}

#[test]
fn the_container_init_is_out_of_reach_of_the_step() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\n\
             RUN for link in exe cwd root; do readlink /proc/1/$link && echo LE\"\"AK $link; done; \
             for fd in /proc/1/fd/*; do readlink $fd && echo LE\"\"AK $fd; done; \
             cat /proc/1/environ > /dev/null 2>&1 && echo LE\"\"AK environ; \
             cat /proc/1/exe > /dev/null 2>&1 && echo LE\"\"AK exe contents; \
             echo probed > /done\n"
        ),
        &[],
    );
    let (built, _) = build_rootfs(root, &context, &["--no-cache"]);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(!stderr(&built).contains("LEAK"), "{}", stderr(&built));
}

#[test]
fn a_command_that_reexecutes_its_starter_finds_no_writable_host_binary() {
    let Some(root) = shared_root() else { return };
    // A step writes to every executable behind /proc/*/exe it can see while its processes
    // re-execute themselves (`#!/proc/self/exe` names the executing process's binary: here
    // the shell's). Only the exec stage ever runs imgb inside the container, from a read-only
    // bind mount; that guard is tested where it acts (runner/src/init/container.rs), as no
    // step process exists while it runs. A copy stands in for imgb so that a successful
    // attack damages nothing else.
    let dir = tempfile::tempdir().unwrap();
    let imgb = dir.path().join("imgb");
    std::fs::copy(env!("CARGO_BIN_EXE_imgb"), &imgb).unwrap();
    let before = std::fs::read(&imgb).unwrap();
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\n\
             RUN printf '#!/proc/self/exe\\n' > /reexec && chmod +x /reexec\n\
             RUN (for i in $(seq 200); do for exe in /proc/[0-9]*/exe; do \
             printf X 2>/dev/null 1<>$exe; printf X 2>/dev/null > $exe; done; done) & \
             for i in $(seq 20); do /reexec; done; wait\n"
        ),
        &[],
    );
    let built = Command::new(&imgb)
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain", "--no-cache"])
        .arg(context.path())
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(
        std::fs::read(&imgb).unwrap() == before,
        "the step wrote to the imgb binary"
    );
}

/// A base image whose `/dev`, `/proc`, `/sys`, `/etc/hosts` or `/dev/null` is a symlink,
/// absolute or relative, to a host directory: the runner's mounts over them must land inside
/// the root filesystem or fail, never on the host path.
#[test]
fn base_image_symlinks_never_send_the_runner_mounts_to_host_paths() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new("", &[]);
    let canary = host_canary(context.dir.path());
    let host_dir = canary.parent().unwrap().to_str().unwrap().to_string();
    let up = "../../../../../../../../..";
    let cases = [
        ("dev", host_dir.clone()),
        ("dev", format!("{up}{host_dir}")),
        ("proc", host_dir.clone()),
        ("sys", format!("{up}{host_dir}")),
        ("dev", "/".to_string()),
        ("etc/hosts", canary.to_str().unwrap().to_string()),
        ("etc/resolv.conf", format!("{up}{}", canary.display())),
    ];
    for (link, target) in cases {
        let links = context.dir.path().join("context/links");
        if links.exists() {
            std::fs::remove_dir_all(&links).unwrap();
        }
        std::fs::create_dir_all(links.join(Path::new(link).parent().unwrap())).unwrap();
        std::os::unix::fs::symlink(&target, links.join(link)).unwrap();
        context.write(
            "Dockerfile",
            &format!(
                "FROM {BASE}\nCOPY links/ /\n\
                 RUN echo x > /dev/null; (ls /dev /proc/self; cat /etc/hosts /etc/resolv.conf; \
                 cat {host_dir}/canary) > /seen 2>&1 || true\n"
            ),
        );
        let (built, dest) = build_rootfs(root, &context, &[]);
        assert!(
            !stderr(&built).contains(CANARY),
            "{link} -> {target}: {}",
            stderr(&built)
        );
        if built.status.success() {
            assert_no_canary_under(&dest);
            std::fs::remove_dir_all(&dest).unwrap();
        } else {
            assert!(
                stderr(&built).contains(&format!("/{}", link.split('/').next().unwrap())),
                "{link} -> {target}: the error names no path: {}",
                stderr(&built)
            );
        }
        let entries: Vec<_> = std::fs::read_dir(&host_dir).unwrap().collect();
        assert_eq!(entries.len(), 1, "{link} -> {target}: the host dir changed");
        assert_eq!(read(&canary), CANARY);
        let mountinfo = read(Path::new("/proc/self/mountinfo"));
        assert!(!mountinfo.contains(&host_dir), "{link} -> {target}");
    }
}

#[test]
fn mount_targets_through_symlinks_stay_in_the_root_and_never_cover_it() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new("", &[("data", "context data")]);
    let canary = host_canary(context.dir.path());
    let host_dir = canary.parent().unwrap().to_str().unwrap().to_string();
    let links = context.dir.path().join("context/links/mnt");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink("/", links.join("to-root")).unwrap();
    std::os::unix::fs::symlink(format!("../../../../..{host_dir}"), links.join("out")).unwrap();
    std::os::unix::fs::symlink(&host_dir, links.join("abs")).unwrap();
    for (mount, expect_success) in [
        ("type=cache,target=/mnt/to-root", false),
        ("type=bind,target=/mnt/to-root", false),
        ("type=tmpfs,target=/mnt/to-root", false),
        ("type=cache,target=/mnt/out", true),
        ("type=bind,target=/mnt/abs,rw", true),
        ("type=tmpfs,target=/mnt/abs", true),
    ] {
        context.write(
            "Dockerfile",
            &format!(
                "FROM {BASE}\nCOPY links/ /\n\
                 RUN --mount={mount} touch /mnt/out/written /mnt/abs/written; \
                 cat /mnt/*/canary > /seen 2>&1 || true\n"
            ),
        );
        let (built, dest) = build_rootfs(root, &context, &[]);
        assert_eq!(
            built.status.success(),
            expect_success,
            "{mount}: {}",
            stderr(&built)
        );
        if expect_success {
            assert_no_canary_under(&dest);
            std::fs::remove_dir_all(&dest).unwrap();
        } else {
            assert!(
                stderr(&built).contains("resolves to the root directory"),
                "{mount}: {}",
                stderr(&built)
            );
        }
        let entries: Vec<_> = std::fs::read_dir(&host_dir).unwrap().collect();
        assert_eq!(entries.len(), 1, "{mount}: the host dir changed");
    }
}

#[test]
fn killing_everything_from_inside_ends_the_step_not_imgb() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\n\
             RUN kill -9 -1; kill -9 1; for p in /proc/[0-9]*; do kill -9 ${{p#/proc/}}; done; \
             echo survived\n"
        ),
        &[],
    );
    let built = context.build(root, &["--no-cache"]);
    assert_eq!(built.status.code(), Some(1), "{}", stderr(&built));
    assert!(
        stderr(&built).contains("did not complete successfully: killed by signal 9"),
        "{}",
        stderr(&built)
    );
    // The store and the runner still work.
    context.write("Dockerfile", &format!("FROM {BASE}\nRUN echo fine\n"));
    context.build_ok(root, &["--no-cache"]);
}

#[test]
fn forks_beyond_the_process_limit_fail_and_the_error_says_so() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\n\
             RUN i=0; while [ $i -lt 100 ]; do sleep 60 & i=$((i+1)); done; echo all started\n"
        ),
        &[],
    );
    let built = context.build(root, &["--no-cache", "--run-pids-max", "32"]);
    assert!(
        !built.status.success(),
        "100 processes ran under a limit of 32"
    );
    let log = stderr(&built);
    assert!(
        log.contains("RUN i=0") && log.contains("the step reached its process limit"),
        "{log}"
    );
}

/// How long a build that fights its limits may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

#[test]
fn a_fork_bomb_is_killed_at_the_process_limit_and_the_host_can_still_fork() {
    let Some(root) = shared_root() else { return };
    // The bomb refills every slot the limit leaves, forever, while the command itself waits
    // (for a `sleep` started before it): imgb must end the step, not wait for it.
    let context = TestContext::new(
        &format!("FROM {BASE}\nRUN sleep 600 & f() {{ f | f & }}; f; wait; echo done\n"),
        &[],
    );
    let built = output_within(
        &mut context.build_command(root, &["--no-cache", "--run-pids-max", "200"]),
        HANG,
    );
    assert_eq!(built.status.code(), Some(1), "{}", stderr(&built));
    assert!(
        stderr(&built).contains("the step reached its process limit of 200"),
        "{}",
        stderr(&built)
    );
    let forked = Command::new("/bin/true").status().unwrap();
    assert!(forked.success());
}

#[test]
fn a_fork_bomb_left_running_by_its_command_is_killed_when_the_command_ends() {
    let Some(root) = shared_root() else { return };
    // The command ends at once, leaving the bomb to PID 1, which must kill a population that
    // refills itself faster than any scan of /proc can find it.
    let context = TestContext::new(
        &format!("FROM {BASE}\nRUN f() {{ f | f & }}; f; echo started\n"),
        &[],
    );
    let built = output_within(
        &mut context.build_command(root, &["--no-cache", "--run-pids-max", "200"]),
        HANG,
    );
    // It may or may not have reached the limit before it was killed.
    if !built.status.success() {
        assert!(
            stderr(&built).contains("the step reached its process limit of 200"),
            "{}",
            stderr(&built)
        );
    }
}

#[test]
fn a_memory_hog_is_killed_at_the_memory_limit_with_a_clear_error() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!("FROM {BASE}\nRUN dd if=/dev/zero of=/dev/null bs=300M count=1\n"),
        &[],
    );
    let built = context.build(root, &["--no-cache", "--run-memory", "64m"]);
    assert!(!built.status.success(), "the step used 300 MB under 64 MiB");
    let log = stderr(&built);
    assert!(
        log.contains("RUN dd if=/dev/zero") && log.contains("memory limit of 64.0 MiB"),
        "{log}"
    );
}

#[test]
fn a_disk_filler_is_stopped_at_the_disk_limit_with_a_clear_error() {
    let Some(root) = shared_root() else { return };
    // Bounded (1 GiB) so that a missing guard fails the test instead of filling the disk.
    let context = TestContext::new(
        &format!("FROM {BASE}\nRUN head -c 1073741824 /dev/zero > /fill\n"),
        &[],
    );
    let built = context.build(root, &["--no-cache", "--run-disk-max", "32m"]);
    assert!(
        !built.status.success(),
        "1 GiB written under a 32 MiB limit"
    );
    let log = stderr(&built);
    assert!(
        log.contains("RUN head -c 1073741824") && log.contains("over the step's limit of 32.0 MiB"),
        "{log}"
    );
    // Stopped long before it wrote its gigabyte: the host never lost more than a margin.
    let used: f64 = log
        .split(" MiB of disk")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no disk use in the error: {log}"));
    assert!(
        used < 512.0,
        "the step wrote {used} MiB before it was stopped"
    );
    // A small step under the same limit still builds.
    context.write(
        "Dockerfile",
        &format!("FROM {BASE}\nRUN head -c 1000000 /dev/zero > /small\n"),
    );
    context.build_ok(root, &["--no-cache", "--run-disk-max", "32m"]);
}
