//! Real containers on a busybox root filesystem: namespaces, the process, provided files,
//! layers, mounts, kill. The core scenarios run as root here and again as an unprivileged
//! system user (rootless) by `rootless_core_scenarios`, which re-runs this test binary as that
//! user with `rootless_inner` selected.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use imgb_cache::{SnapshotLayer, Store};
use imgb_runner::{CommitTo, Mount, MountKind, Network, RunSpec, RunStatus};

/// Runs the scenarios named, as a `#[tokio::test]` each, and lists them for the rootless run.
macro_rules! core_scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                scenarios::$name(&Fixture::new()).await;
            }
        )*
        async fn all_core_scenarios() {
            $(
                eprintln!("rootless scenario: {}", stringify!($name));
                scenarios::$name(&Fixture::new()).await;
            )*
        }
    };
}

core_scenarios!(
    pid_namespace_shows_only_the_container,
    hostname_and_provided_files,
    only_standard_descriptors_reach_the_command,
    network_none_has_only_loopback_up,
    host_files_are_invisible,
    exit_codes_and_signals_are_reported,
    users_and_groups_resolve_from_the_image,
    process_gets_docker_defaults,
    layer_records_changes_whiteouts_and_opaque_dirs,
    provided_files_stay_out_of_the_layer_unless_changed,
    mounts_bind_tmpfs_and_persistent,
    timeout_and_cancel_kill_the_whole_container,
);

/// A store for committed layers (the tests read their tars back).
fn commit_to(fixture: &Fixture) -> CommitTo {
    CommitTo {
        store: Store::open(fixture.dir.path().join("store")).unwrap(),
        source_date_epoch: None,
    }
}

/// A layer's entries: path → (type byte, size, link name, device numbers, content hash-ish).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: u8,
    size: u64,
    link: Option<String>,
    device: (u32, u32),
    content: Vec<u8>,
}

fn layer_entries(fixture: &Fixture, layer: &SnapshotLayer) -> BTreeMap<String, Entry> {
    let store = Store::open(fixture.dir.path().join("store")).unwrap();
    let reader = store
        .open_layer(&layer.descriptor(), &layer.diff_id)
        .unwrap();
    let mut archive = tar::Archive::new(reader);
    let mut entries = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        if header.entry_type().is_file() && header.size().unwrap() <= 4096 {
            entry.read_to_end(&mut content).unwrap();
        }
        entries.insert(
            path,
            Entry {
                kind: header.entry_type().as_byte(),
                size: header.size().unwrap(),
                link: entry
                    .link_name()
                    .unwrap()
                    .map(|link| link.to_string_lossy().into_owned()),
                device: if header.entry_type().is_character_special()
                    || header.entry_type().is_block_special()
                {
                    (
                        header.device_major().unwrap().unwrap_or(0),
                        header.device_minor().unwrap().unwrap_or(0),
                    )
                } else {
                    (0, 0)
                },
                content,
            },
        );
    }
    entries
}

mod scenarios {
    use super::*;

    pub async fn pid_namespace_shows_only_the_container(fixture: &Fixture) {
        let out = fixture
            .stdout("sleep 30 & ps -o pid,args; ls -d /proc/[0-9]*")
            .await;
        let pids: Vec<u32> = out
            .lines()
            .filter_map(|line| line.split_whitespace().next()?.parse().ok())
            .collect();
        assert!(pids.contains(&1), "{out}");
        assert!(pids.iter().all(|&pid| pid < 20), "{out}");
        assert!(
            !out.contains("cargo") && !out.contains("containers-"),
            "{out}"
        );
        // The background sleep does not keep the step alive: it is killed with PID 1.
    }

    pub async fn hostname_and_provided_files(fixture: &Fixture) {
        let mut spec = fixture.spec("hostname; cat /etc/hostname; cat /etc/hosts");
        spec.hostname = "boxy".into();
        spec.extra_hosts = vec![("db".into(), "192.0.2.7".parse().unwrap())];
        let ran = fixture.run(&spec).await;
        ran.assert_success();
        let mut lines = ran.stdout.lines();
        assert_eq!(lines.next(), Some("boxy"));
        assert_eq!(lines.next(), Some("boxy"));
        assert!(
            ran.stdout.contains("127.0.0.1\tlocalhost boxy\n"),
            "{}",
            ran.stdout
        );
        assert!(ran.stdout.contains("192.0.2.7\tdb\n"), "{}", ran.stdout);
    }

    pub async fn only_standard_descriptors_reach_the_command(fixture: &Fixture) {
        // A descriptor this process leaks on purpose (no close-on-exec) must not get through.
        let leaked = fs::File::open(fixture.dir.path()).unwrap();
        let fd = rustix::io::fcntl_dupfd_cloexec(&leaked, 20).unwrap();
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
        // `; true` keeps the shell from exec'ing ls in its own place.
        let out = fixture.stdout("ls /proc/$$/fd; true").await;
        drop(fd);
        let fds: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(fds, ["0", "1", "2"], "the shell's descriptors");
    }

    pub async fn network_none_has_only_loopback_up(fixture: &Fixture) {
        let mut spec = fixture.spec("ls /sys/class/net; cat /sys/class/net/lo/flags");
        spec.network = Network::None;
        let ran = fixture.run(&spec).await;
        ran.assert_success();
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert_eq!(lines.first(), Some(&"lo"), "{}", ran.stdout);
        assert_eq!(lines.len(), 2, "{}", ran.stdout);
        let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).unwrap();
        assert_eq!(flags & 1, 1, "IFF_UP");
    }

    pub async fn host_files_are_invisible(fixture: &Fixture) {
        let marker = fixture.dir.path().join("host-marker");
        fs::write(&marker, b"host").unwrap();
        let script = format!(
            "test -e {m} && echo visible; test -e {base} && echo base-visible; \
             test -e /proc/1/root{m} && echo via-proc; cat /proc/1/root/etc/hostname; true",
            m = marker.display(),
            base = fixture.base.display()
        );
        let out = fixture.stdout(&script).await;
        assert!(
            !out.contains("visible") && !out.contains("via-proc"),
            "{out}"
        );
    }

    pub async fn exit_codes_and_signals_are_reported(fixture: &Fixture) {
        let status = |ran: &Ran| ran.outcome().status;
        assert_eq!(
            status(&fixture.run(&fixture.spec("exit 42")).await),
            RunStatus::Exited(42)
        );
        assert_eq!(
            status(&fixture.run(&fixture.spec("kill -9 $$")).await),
            RunStatus::Signaled(9)
        );
        let missing = RunSpec::new(vec![fixture.base.clone()], vec!["no-such-cmd".into()]);
        let ran = fixture.run(&missing).await;
        assert_eq!(status(&ran), RunStatus::Exited(127));
        assert!(ran.stderr.contains("no-such-cmd"), "{}", ran.stderr);
    }

    pub async fn users_and_groups_resolve_from_the_image(fixture: &Fixture) {
        let id = |user: &str| {
            let mut spec = fixture.spec("id; echo $HOME");
            spec.user = user.into();
            spec
        };
        let ran = fixture.run(&id("app")).await;
        ran.assert_success();
        assert_eq!(
            ran.stdout,
            "uid=1000(app) gid=1000(app) groups=10(wheel),29(audio),1000(app)\n/home/app\n"
        );
        let ran = fixture.run(&id("app:staff")).await;
        ran.assert_success();
        assert!(
            ran.stdout.starts_with("uid=1000(app) gid=50(staff)"),
            "{}",
            ran.stdout
        );
        let ran = fixture.run(&id("4242:4343")).await;
        ran.assert_success();
        assert!(
            ran.stdout.starts_with("uid=4242 gid=4343"),
            "{}",
            ran.stdout
        );
        let ran = fixture.run(&id("ghost")).await;
        assert!(
            ran.error().contains("unable to find user ghost"),
            "{}",
            ran.error()
        );
    }

    pub async fn process_gets_docker_defaults(fixture: &Fixture) {
        let mut spec = fixture.spec(
            "umask; pwd; echo $PATH; grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status",
        );
        spec.cwd = "/work/dir".into();
        let ran = fixture.run(&spec).await;
        ran.assert_success();
        assert_eq!(
            ran.stdout,
            format!(
                "0022\n/work/dir\n{}\nCapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n\
                 NoNewPrivs:\t0\n",
                imgb_runner::DEFAULT_PATH
            )
        );
        let mut spec = fixture.spec("grep -E '^(CapEff|NoNewPrivs)' /proc/self/status");
        spec.user = "app".into();
        spec.no_new_privileges = true;
        let ran = fixture.run(&spec).await;
        ran.assert_success();
        assert_eq!(ran.stdout, "CapEff:\t0000000000000000\nNoNewPrivs:\t1\n");
    }

    pub async fn layer_records_changes_whiteouts_and_opaque_dirs(fixture: &Fixture) {
        let lower = fixture.dir.path().join("lower");
        for dir in ["data", "opq/sub", "keep"] {
            fs::create_dir_all(lower.join(dir)).unwrap();
        }
        for file in [
            "data/gone",
            "data/stays",
            "opq/one",
            "opq/sub/two",
            "keep/x",
        ] {
            fs::write(lower.join(file), file).unwrap();
        }
        let mut spec = RunSpec::new(
            vec![fixture.base.clone(), lower],
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "set -e; rm /data/gone; rm -r /opq; mkdir /opq; echo new > /opq/new; \
                 mkdir /links; echo linked > /links/a; ln /links/a /links/b; \
                 mkfifo /links/fifo; ln -s ../data/stays /links/sym; \
                 dd if=/dev/urandom of=/big bs=1M count=24 2>/dev/null; \
                 echo changed > /keep/x"
                    .into(),
            ],
        );
        spec.commit = Some(commit_to(fixture));
        let ran = fixture.run(&spec).await;
        ran.assert_success();
        let layer = ran.outcome().layer.clone().expect("a layer");
        let entries = layer_entries(fixture, &layer);
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "big",
                "data/",
                "data/.wh.gone",
                "keep/",
                "keep/x",
                "links/",
                "links/a",
                "links/b",
                "links/fifo",
                "links/sym",
                "opq/",
                "opq/.wh..wh..opq",
                "opq/new",
            ],
            "no stubs (proc, dev, sys, etc/hosts...) and nothing unchanged"
        );
        assert_eq!(entries["big"].size, 24 << 20);
        assert_eq!(entries["links/b"].kind, b'1');
        assert_eq!(entries["links/b"].link.as_deref(), Some("links/a"));
        assert_eq!(entries["links/fifo"].kind, b'6');
        assert_eq!(entries["links/sym"].link.as_deref(), Some("../data/stays"));
        assert_eq!(entries["keep/x"].content, b"changed\n");
        let store = Store::open(fixture.dir.path().join("store")).unwrap();
        let mut tar = store
            .open_layer(&layer.descriptor(), &layer.diff_id)
            .unwrap();
        let read = std::io::copy(&mut tar, &mut std::io::sink()).unwrap();
        assert_eq!(
            read, layer.tar_size,
            "the snapshot gives back the tar it was hashed as"
        );
        assert!(
            store.snapshot(&layer.diff_id).is_some(),
            "the upper directory became the snapshot"
        );
    }

    pub async fn provided_files_stay_out_of_the_layer_unless_changed(fixture: &Fixture) {
        let mut spec = fixture.spec("touch /new-file");
        spec.commit = Some(commit_to(fixture));
        let ran = fixture.run(&spec).await;
        ran.assert_success();
        let entries = layer_entries(fixture, ran.outcome().layer.as_ref().unwrap());
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["new-file"]);

        let mut spec = fixture.spec("echo '192.0.2.9 added' >> /etc/hosts");
        spec.commit = Some(commit_to(fixture));
        let ran = fixture.run(&spec).await;
        ran.assert_success();
        let entries = layer_entries(fixture, ran.outcome().layer.as_ref().unwrap());
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["etc/", "etc/hosts"]);
        let hosts = String::from_utf8(entries["etc/hosts"].content.clone()).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost imgb\n"), "{hosts}");
        assert!(hosts.ends_with("192.0.2.9 added\n"), "{hosts}");
    }

    pub async fn mounts_bind_tmpfs_and_persistent(fixture: &Fixture) {
        let source = fixture.dir.path().join("source");
        let cache = fixture.dir.path().join("cache");
        fs::create_dir_all(&source).unwrap();
        fs::create_dir_all(&cache).unwrap();
        fs::write(source.join("input"), b"in\n").unwrap();
        let mut spec = fixture.spec(
            "set -e; cat /ro/input; ! touch /ro/x 2>/dev/null; echo scribble > /rw/input; \
             cat /rw/input; touch /tmp/t/scratch; echo kept >> /var/cache/c/log; \
             grep -q ' /tmp/t tmpfs' /proc/mounts",
        );
        spec.mounts = vec![
            Mount {
                target: "/ro".into(),
                kind: MountKind::Bind {
                    source: source.clone(),
                    read_only: true,
                },
            },
            Mount {
                target: "/rw".into(),
                kind: MountKind::Bind {
                    source: source.clone(),
                    read_only: false,
                },
            },
            Mount {
                target: "/tmp/t".into(),
                kind: MountKind::Tmpfs {
                    size_bytes: Some(1 << 20),
                },
            },
            Mount {
                target: "/var/cache/c".into(),
                kind: MountKind::Persistent {
                    source: cache.clone(),
                },
            },
        ];
        spec.commit = Some(commit_to(fixture));
        let ran = fixture.run(&spec).await;
        ran.assert_success();
        assert_eq!(ran.stdout, "in\nscribble\n");
        assert_eq!(
            fs::read(source.join("input")).unwrap(),
            b"in\n",
            "rw bind discarded"
        );
        assert!(!source.join("x").exists());
        assert_eq!(fs::read(cache.join("log")).unwrap(), b"kept\n");
        let entries = layer_entries(fixture, ran.outcome().layer.as_ref().unwrap());
        assert!(entries.is_empty(), "mount targets are stubs: {entries:?}");
    }

    pub async fn timeout_and_cancel_kill_the_whole_container(fixture: &Fixture) {
        let mut spec = fixture.spec("sleep 100 & sleep 100");
        spec.timeout = Some(KILL_AFTER);
        let started = Instant::now();
        let ran = fixture.run(&spec).await;
        assert_eq!(ran.outcome().status, RunStatus::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));

        let spec = fixture.spec("echo started; sleep 100");
        let ran = run_with(&fixture.runner, &spec, tokio::time::sleep(KILL_AFTER)).await;
        assert_eq!(ran.outcome().status, RunStatus::Cancelled);
        assert_eq!(ran.stdout, "started\n");
        assert!(fixture.scratch_entries().is_empty());
    }
}

/// 150 layers with long paths make ~14 KiB of lower directories, far past the 4 KiB that a
/// `lowerdir=a:b:c` mount option can hold; a later layer's file wins over an earlier one's.
#[tokio::test]
async fn many_layers_stack_past_the_mount_option_limit_in_order() {
    let fixture = Fixture::new();
    let mut lowers = vec![fixture.base.clone()];
    for index in 0..150 {
        let layer = fixture.dir.path().join(format!(
            "layer-with-a-rather-long-directory-name-{index:03}"
        ));
        fs::create_dir_all(layer.join("layers")).unwrap();
        fs::write(layer.join(format!("layers/{index:03}")), b"").unwrap();
        fs::write(layer.join("top"), format!("{index}\n")).unwrap();
        lowers.push(layer);
    }
    let spec = RunSpec::new(
        lowers,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "ls /layers | wc -l; cat /top".into(),
        ],
    );
    let ran = fixture.run(&spec).await;
    ran.assert_success();
    assert_eq!(
        ran.stdout.split_whitespace().collect::<Vec<_>>(),
        ["150", "149"]
    );
}

/// Root only: images can carry device nodes, and the container keeps CAP_MKNOD; neither may
/// give access to a device (everything the container sees is `nodev`).
#[tokio::test]
async fn device_nodes_can_be_made_and_committed_but_never_opened() {
    let fixture = Fixture::new();
    let lower = fixture.dir.path().join("devices");
    fs::create_dir_all(&lower).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        lower.join("image-null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    let mut spec = RunSpec::new(
        vec![fixture.base.clone(), lower],
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat /image-null && echo opened-image-node; mknod /made c 1 3; \
             cat /made && echo opened-made-node; echo ok > /dev/null && echo dev-null-works"
                .into(),
        ],
    );
    spec.commit = Some(commit_to(&fixture));
    let ran = fixture.run(&spec).await;
    ran.assert_success();
    assert_eq!(ran.stdout, "dev-null-works\n", "{}", ran.stderr);
    let entries = layer_entries(&fixture, ran.outcome().layer.as_ref().unwrap());
    assert_eq!(entries["made"].kind, b'3');
    assert_eq!(entries["made"].device, (1, 3));
}

// --- escapes -----------------------------------------------------------------------------

fn escape_fixture(links: &[(&str, &str)]) -> (Fixture, PathBuf) {
    let fixture = Fixture::new();
    let lower = fixture.dir.path().join("evil");
    for (link, target) in links {
        let path = lower.join(link);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }
    (fixture, lower)
}

#[tokio::test]
async fn dev_symlink_in_the_image_cannot_place_dev_on_the_host() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("hostdev");
    let relative = format!("../../../../../../..{}", target.display());
    let (fixture, lower) = escape_fixture(&[("dev", &relative)]);
    let spec = RunSpec::new(
        vec![fixture.base.clone(), lower],
        vec!["/bin/sh".into(), "-c".into(), "ls /dev/null".into()],
    );
    let ran = fixture.run(&spec).await;
    ran.assert_success();
    assert!(!target.exists(), "/dev was created on the host");
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
}

#[tokio::test]
async fn proc_symlink_to_the_root_is_refused() {
    let (fixture, lower) = escape_fixture(&[("proc", "/")]);
    let spec = RunSpec::new(vec![fixture.base.clone(), lower], vec!["true".into()]);
    let ran = fixture.run(&spec).await;
    assert!(
        ran.error().contains("resolves to the root directory"),
        "{}",
        ran.error()
    );
    assert!(fixture.scratch_entries().is_empty());
}

#[tokio::test]
async fn sys_symlink_into_proc_magic_links_is_refused() {
    let (fixture, lower) = escape_fixture(&[("sys", "/proc/self/root")]);
    let spec = RunSpec::new(vec![fixture.base.clone(), lower], vec!["true".into()]);
    let ran = fixture.run(&spec).await;
    assert!(ran.error().contains("/proc link"), "{}", ran.error());
}

#[tokio::test]
async fn workdir_through_proc_fd_links_is_refused() {
    let fixture = Fixture::new();
    for cwd in ["/proc/self/fd/0", "/proc/self/cwd", "/proc/1/root/etc"] {
        let mut spec = fixture.spec("pwd");
        spec.cwd = cwd.into();
        let ran = fixture.run(&spec).await;
        assert!(ran.error().contains("/proc link"), "{cwd}: {}", ran.error());
    }
}

#[tokio::test]
async fn mount_target_through_symlink_stays_inside_the_root() {
    let outside = tempfile::tempdir().unwrap();
    let host_target = outside.path().join("target");
    let cache = outside.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    let escape = format!("/../../../..{}", host_target.display());
    let (fixture, lower) =
        escape_fixture(&[("mnt/c", &escape), ("etc/hosts", "/../../../etc/passwd")]);
    let mut spec = RunSpec::new(
        vec![fixture.base.clone(), lower],
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo x > /mnt/c/file; ls {}", host_target.display()),
        ],
    );
    spec.mounts = vec![Mount {
        target: "/mnt/c".into(),
        kind: MountKind::Persistent {
            source: cache.clone(),
        },
    }];
    let ran = fixture.run(&spec).await;
    ran.assert_success();
    assert_eq!(
        ran.stdout, "file\n",
        "the mount sits at the link's target inside the root"
    );
    assert!(!host_target.exists());
    assert_eq!(fs::read(cache.join("file")).unwrap(), b"x\n");
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    assert!(passwd.contains("root:"), "host passwd untouched");
}

#[tokio::test]
async fn failing_setup_leaves_nothing_and_says_why() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec("true");
    spec.mounts = vec![Mount {
        target: "/x".into(),
        kind: MountKind::Persistent {
            source: fixture.dir.path().join("missing"),
        },
    }];
    let ran = fixture.run(&spec).await;
    assert!(ran.error().contains("mount 1 on /x"), "{}", ran.error());
    assert!(fixture.scratch_entries().is_empty());
}

// --- rootless ----------------------------------------------------------------------------

const ROOTLESS_USER: &str = "imgb-rootless-test";
const INNER_ENV: &str = "IMGB_RUNNER_ROOTLESS_INNER";

/// Creates the system user (with subordinate ids) if it does not exist; its uid and gid.
fn rootless_user() -> (u32, u32) {
    let exists = std::process::Command::new("id")
        .arg(ROOTLESS_USER)
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        let status = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(ROOTLESS_USER)
            .status()
            .unwrap();
        assert!(status.success(), "useradd failed");
    }
    let subuid = fs::read_to_string("/etc/subuid").unwrap_or_default();
    if !subuid
        .lines()
        .any(|line| line.starts_with(&format!("{ROOTLESS_USER}:")))
    {
        let status = std::process::Command::new("usermod")
            .args([
                "--add-subuids",
                "600000-665535",
                "--add-subgids",
                "600000-665535",
            ])
            .arg(ROOTLESS_USER)
            .status()
            .unwrap();
        assert!(status.success(), "usermod --add-subuids failed");
    }
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, ROOTLESS_USER])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// As root: runs `rootless_inner` (every core scenario) as an unprivileged user.
#[test]
fn rootless_core_scenarios() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("notice: not root, cannot create the rootless test user; skipping");
        return;
    }
    let (uid, gid) = rootless_user();
    // The binaries are copied where the user can read them (the target dir may be private).
    let bin = tempfile::tempdir().unwrap();
    fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let test_bin = bin.path().join("containers");
    let init_bin = bin.path().join("imgb-runner-init");
    fs::copy(std::env::current_exe().unwrap(), &test_bin).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_imgb-runner-init"), &init_bin).unwrap();
    let output = std::process::Command::new(&test_bin)
        .args([
            "rootless_inner",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TMPDIR", "/tmp")
        .env(INNER_ENV, "1")
        .env(INIT_ENV, &init_bin)
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "rootless scenarios failed:\n{stdout}\n{stderr}"
    );
}

/// Only does something when started by `rootless_core_scenarios`.
#[tokio::test]
async fn rootless_inner() {
    if std::env::var_os(INNER_ENV).is_none() {
        return;
    }
    assert!(!rustix::process::geteuid().is_root());
    all_core_scenarios().await;

    // Without subordinate ids only root exists inside, and other users fail clearly.
    let fixture = Fixture::new();
    let runner = fixture.runner.clone().with_subordinate_ids(false);
    let ran = run_with(&runner, &fixture.spec("id -u"), std::future::pending()).await;
    ran.assert_success();
    assert_eq!(ran.stdout, "0\n");
    let mut spec = fixture.spec("id -u");
    spec.user = "app".into();
    let ran = run_with(&runner, &spec, std::future::pending()).await;
    assert!(ran.stderr.contains("not mapped"), "{ran:?}");
}
