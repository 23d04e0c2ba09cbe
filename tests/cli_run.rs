//! `imgb run` from the outside: a busybox image (from busybox-static) put into a fresh store
//! with the store's own API, then run with the imgb binary.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output};

use imgb_cache::oci::{ContainerConfig, Descriptor, ImageConfig, RootFs};
use imgb_cache::{Compression, LayerChanges, LayerOptions, Reference, Store, write_layer};

const BUSYBOX: &str = "/bin/busybox";
const IMAGE: &str = "localhost/run-test:latest";

/// A store holding `IMAGE`: one busybox layer, `CMD ["echo", "from-cmd"]`, an env and a user.
fn store_with_busybox_image(dir: &Path) -> Store {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();

    let store = Store::open(dir.join("root")).unwrap();
    let options = LayerOptions {
        compression: Compression::GZIP_DEFAULT,
        source_date_epoch: Some(0),
        threads: 1,
    };
    let layer = write_layer(&store, &rootfs, &LayerChanges::default(), &options).unwrap();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: Some(ContainerConfig {
            env: vec!["PATH=/bin".into(), "GREETING=from-image".into()],
            cmd: Some(vec!["echo".into(), "from-cmd".into()]),
            ..ContainerConfig::default()
        }),
        rootfs: RootFs {
            diff_ids: vec![layer.diff_id.clone()],
            ..RootFs::default()
        },
        ..ImageConfig::default()
    };
    let descriptor = Descriptor::new(layer.media_type, layer.blob.digest, layer.blob.size);
    let image = store.write_image(&config, vec![descriptor]).unwrap();
    let name = Reference::parse(IMAGE).unwrap().to_string();
    store.tag_image(&name, &image.descriptor.digest).unwrap();
    store
}

fn imgb_run(store: &Store, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(store.root())
        .arg("run")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_uses_the_image_cmd_and_env_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_busybox_image(dir.path());
    let output = imgb_run(&store, &[IMAGE]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "from-cmd\n");

    let output = imgb_run(
        &store,
        &[
            "--network",
            "none",
            "-e",
            "EXTRA=flag",
            "-u",
            "app",
            "-w",
            "/made",
            "--rm",
            IMAGE,
            "--",
            "sh",
            "-c",
            "echo $GREETING $EXTRA; id -u; pwd; ls /sys/class/net; touch /left-behind; exit 7",
        ],
    );
    assert_eq!(output.status.code(), Some(7), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "from-image flag\n1000\n/made\nlo\n");
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

    let output = imgb_run(&store, &[IMAGE, "--", "test", "-e", "/left-behind"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the previous run's file is gone"
    );
}

#[test]
fn run_reports_setup_failures_with_docker_code_125() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_busybox_image(dir.path());
    let output = imgb_run(&store, &["-u", "ghost", IMAGE]);
    assert_eq!(output.status.code(), Some(125));
    assert!(text(&output.stderr).contains("unable to find user ghost"));

    let output = imgb_run(&store, &["no-such-image"]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("imgb images"),
        "{}",
        text(&output.stderr)
    );
}
