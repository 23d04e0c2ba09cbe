//! Image import/export against the ecosystem: the OCI image-spec JSON schemas, skopeo, umoci,
//! podman, and the `imgb load|save|images|inspect|rm` commands.
//!
//! The test image is built without any builder: Debian's static busybox plus its applet
//! symlinks, written as a layer by imgb-cache's layer writer, then a second layer that adds a
//! file and deletes one applet (a whiteout). Tools that are missing skip their test with a
//! notice, or fail it when `CI` is set (`scripts/install-deps` installs them).

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{imgb_ok as imgb, is_root, run, stdout, tool};

use imgb_cache::compress::Compression;
use imgb_cache::layer::{LayerChanges, LayerOptions, write_layer};
use imgb_cache::oci::{
    ContainerConfig, Descriptor, History, ImageConfig, ImageIndex, ImageManifest, Platform, RootFs,
    rfc3339_utc,
};
use imgb_cache::{Digest, Store};
use serde_json::Value;

const BUSYBOX: &str = "/bin/busybox";
const IMAGE: &str = "localhost/imgb-test/busybox:latest";
const EPOCH: i64 = 1_700_000_000;

/// A store under `dir/root` holding [`IMAGE`], or `None` when busybox-static is missing.
fn busybox_store(dir: &Path) -> Option<PathBuf> {
    tool("busybox")?;
    if !Path::new(BUSYBOX).is_file() {
        eprintln!("notice: {BUSYBOX} is missing; skipping (install busybox-static)");
        assert!(std::env::var_os("CI").is_none(), "{BUSYBOX} missing in CI");
        return None;
    }
    let root = dir.join("root");
    let store = Store::open(&root).unwrap();
    let options = LayerOptions {
        compression: Compression::GZIP_DEFAULT,
        source_date_epoch: Some(EPOCH),
        threads: 0,
    };

    let base = dir.join("base");
    fs::create_dir_all(base.join("bin")).unwrap();
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::create_dir_all(base.join("tmp")).unwrap();
    fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
    let applets = run(Command::new(BUSYBOX).arg("--list"));
    for applet in stdout(&applets).lines().filter(|a| *a != "busybox") {
        symlink("busybox", base.join("bin").join(applet)).unwrap();
    }
    fs::write(base.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let first = write_layer(&store, &base, &LayerChanges::default(), &options).unwrap();

    let top = dir.join("top");
    fs::create_dir_all(top.join("etc")).unwrap();
    fs::write(top.join("etc/motd"), "built without a builder\n").unwrap();
    let changes = LayerChanges {
        deleted: vec!["bin/vi".into()],
        opaque_dirs: Vec::new(),
    };
    let second = write_layer(&store, &top, &changes, &options).unwrap();

    let created = rfc3339_utc(EPOCH);
    let step = |created_by: &str, empty_layer| History {
        created: Some(created.clone()),
        created_by: Some(created_by.to_owned()),
        comment: Some("imgb test".to_owned()),
        empty_layer,
        ..History::default()
    };
    let host = Platform::host();
    let config = ImageConfig {
        created: Some(created.clone()),
        architecture: host.architecture,
        os: host.os,
        variant: host.variant,
        config: Some(ContainerConfig {
            env: vec!["PATH=/bin".into()],
            cmd: Some(vec!["sh".into()]),
            ..ContainerConfig::default()
        }),
        rootfs: RootFs {
            diff_ids: vec![first.diff_id.clone(), second.diff_id.clone()],
            ..RootFs::default()
        },
        history: vec![
            step(
                "COPY busybox-static /bin/busybox # with applet links",
                false,
            ),
            step("COPY motd /etc/motd; rm /bin/vi", false),
            step("CMD [\"sh\"]", true),
        ],
        ..ImageConfig::default()
    };
    let layers = [first, second]
        .into_iter()
        .map(|layer| Descriptor::new(layer.media_type, layer.blob.digest, layer.blob.size))
        .collect();
    let image = store.write_image(&config, layers).unwrap();
    store.tag_image(IMAGE, &image.descriptor.digest).unwrap();
    Some(root)
}

fn untar(archive: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dest));
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Every `blobs/ALG/HEX` file hashes to its name.
fn assert_blobs_match_names(layout: &Path) {
    for entry in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let digest = Digest::of(&fs::read(entry.path()).unwrap());
        assert_eq!(digest.hex(), name, "blob {name} is corrupt");
    }
}

/// Loads the OCI schemas, resolving their relative `$ref`s from the schema directory.
struct Schemas {
    dir: PathBuf,
}

impl jsonschema::Retrieve for Schemas {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let file = uri.path().as_str().rsplit('/').next().unwrap_or_default();
        let file = if file.ends_with(".json") {
            file.to_owned()
        } else {
            format!("{file}.json")
        };
        Ok(serde_json::from_slice(&fs::read(self.dir.join(file))?)?)
    }
}

impl Schemas {
    fn errors(&self, schema_file: &str, document: &Value) -> Vec<String> {
        let schema = read_json(&self.dir.join(schema_file));
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .with_retriever(Schemas {
                dir: self.dir.clone(),
            })
            .build(&schema)
            .unwrap_or_else(|e| panic!("{schema_file}: {e}"));
        validator
            .iter_errors(document)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    fn validate(&self, schema_file: &str, document: &Value, what: &str) {
        let errors = self.errors(schema_file, document);
        assert!(
            errors.is_empty(),
            "{what} violates {schema_file}: {errors:#?}"
        );
    }

    /// Validates a whole layout: oci-layout, index, and every manifest and config it names,
    /// checking each descriptor against its blob.
    fn validate_layout(&self, layout: &Path) {
        self.validate(
            "image-layout-schema.json",
            &read_json(&layout.join("oci-layout")),
            "oci-layout",
        );
        let index_value = read_json(&layout.join("index.json"));
        self.validate("image-index-schema.json", &index_value, "index.json");
        let index: ImageIndex = serde_json::from_value(index_value).unwrap();
        assert!(!index.manifests.is_empty());
        for descriptor in &index.manifests {
            let bytes = blob(layout, descriptor);
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            self.validate("image-manifest-schema.json", &value, "manifest");
            let manifest: ImageManifest = serde_json::from_value(value).unwrap();
            let config: Value = serde_json::from_slice(&blob(layout, &manifest.config)).unwrap();
            self.validate("config-schema.json", &config, "config");
            for layer in &manifest.layers {
                blob(layout, layer);
            }
        }
        assert_blobs_match_names(layout);
    }
}

/// The blob a descriptor names, checked against its digest and size.
fn blob(layout: &Path, descriptor: &Descriptor) -> Vec<u8> {
    let path = layout.join("blobs/sha256").join(descriptor.digest.hex());
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(bytes.len() as u64, descriptor.size, "size of {path:?}");
    assert_eq!(Digest::of(&bytes), descriptor.digest, "digest of {path:?}");
    bytes
}

#[test]
fn saved_layouts_validate_against_the_oci_schemas() {
    let Some(shared) = support::shared_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = busybox_store(dir.path()) else {
        return;
    };
    let schemas = Schemas {
        dir: shared.join("conformance/oci-image-spec/schema"),
    };
    // The validator must see through the schemas' relative references to reject bad input.
    let bad_digest = serde_json::json!({"schemaVersion": 2, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": "nope", "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": "sha256:00", "size": 1}]});
    assert!(
        !schemas
            .errors("image-manifest-schema.json", &bad_digest)
            .is_empty()
    );
    let oci_tar = dir.path().join("image.oci.tar");
    let docker_tar = dir.path().join("image.docker.tar");
    let oci_dir = dir.path().join("layout");
    let zstd_dir = dir.path().join("zstd-layout");
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=oci,dest={}", oci_tar.display()),
        ],
    );
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=docker,dest={}", docker_tar.display()),
        ],
    );
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=oci,tar=false,dest={}", oci_dir.display()),
        ],
    );
    let zstd = format!(
        "type=oci,tar=false,compression=zstd,force-compression=true,dest={}",
        zstd_dir.display()
    );
    imgb(&root, &["save", IMAGE, "-o", &zstd]);

    for (archive, unpacked) in [(&oci_tar, "oci"), (&docker_tar, "docker")] {
        let layout = dir.path().join(unpacked);
        untar(archive, &layout);
        schemas.validate_layout(&layout);
    }
    schemas.validate_layout(&oci_dir);
    schemas.validate_layout(&zstd_dir);

    let index: ImageIndex = serde_json::from_value(read_json(&oci_dir.join("index.json"))).unwrap();
    let annotations = &index.manifests[0].annotations;
    assert_eq!(annotations["io.containerd.image.name"], IMAGE);
    assert_eq!(annotations["org.opencontainers.image.ref.name"], "latest");
    let zstd_index: ImageIndex =
        serde_json::from_value(read_json(&zstd_dir.join("index.json"))).unwrap();
    let zstd_manifest: ImageManifest =
        serde_json::from_slice(&blob(&zstd_dir, &zstd_index.manifests[0])).unwrap();
    assert!(
        zstd_manifest
            .layers
            .iter()
            .all(|l| l.media_type == "application/vnd.oci.image.layer.v1.tar+zstd")
    );

    let docker_manifest = read_json(&dir.path().join("docker/manifest.json"));
    assert_eq!(
        docker_manifest[0]["RepoTags"][0],
        "localhost/imgb-test/busybox:latest"
    );
    let docker_index: ImageIndex =
        serde_json::from_value(read_json(&dir.path().join("docker/index.json"))).unwrap();
    assert_eq!(
        docker_index.manifests[0].media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[test]
fn cli_load_images_inspect_and_rm_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = busybox_store(dir.path()) else {
        return;
    };
    let listed: Value =
        serde_json::from_str(&stdout(&imgb(&root, &["images", "--format", "json"]))).unwrap();
    let digest = listed[0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(listed[0]["name"], IMAGE);
    assert_eq!(listed[0]["created"], "2023-11-14T22:13:20Z");

    let archive = dir.path().join("saved.tar");
    imgb(
        &root,
        &[
            "save",
            "localhost/imgb-test/busybox",
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ],
    );
    let other = dir.path().join("other-root");
    let loaded = stdout(&imgb(&other, &["load", "-i", archive.to_str().unwrap()]));
    assert_eq!(loaded.trim(), format!("Loaded image: {IMAGE}"));
    let relisted: Value =
        serde_json::from_str(&stdout(&imgb(&other, &["images", "--format", "json"]))).unwrap();
    assert_eq!(relisted, listed, "the manifest digest survives save + load");

    let table = stdout(&imgb(&other, &["images"]));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&digest["sha256:".len()..][..12]), "{table}");

    let inspected: Value =
        serde_json::from_str(&stdout(&imgb(&other, &["inspect", &digest[7..19]]))).unwrap();
    assert_eq!(inspected["digest"], digest.as_str());
    assert_eq!(inspected["config"]["config"]["Cmd"][0], "sh");
    let history = inspected["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert!(
        history[0]["layer"]["diffId"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(history[2]["empty_layer"], true);
    assert!(history[2].get("layer").is_none());

    let removed = stdout(&imgb(&other, &["rm", IMAGE]));
    assert_eq!(removed.trim(), format!("Untagged: {IMAGE}"));
    assert_eq!(stdout(&imgb(&other, &["images", "-q"])), "");
    let missing = Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(&other)
        .args(["inspect", IMAGE])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no image named"));
}

#[test]
fn rootfs_outputs_flatten_layers_and_apply_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = busybox_store(dir.path()) else {
        return;
    };
    let local = dir.path().join("rootfs");
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=local,dest={}", local.display()),
        ],
    );
    assert!(local.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(local.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(
        fs::symlink_metadata(local.join("bin/vi")).is_err(),
        "whiteout applied"
    );
    assert_eq!(
        fs::read_to_string(local.join("etc/motd")).unwrap(),
        "built without a builder\n"
    );

    let tarball = dir.path().join("rootfs.tar");
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=tar,dest={}", tarball.display()),
        ],
    );
    let listing = stdout(&run(Command::new("tar").arg("-tf").arg(&tarball)));
    assert!(listing.lines().any(|l| l == "bin/busybox"), "{listing}");
    assert!(listing.lines().any(|l| l == "etc/motd"));
    assert!(!listing.lines().any(|l| l == "bin/vi" || l.contains(".wh.")));
}

#[test]
fn a_corrupt_blob_fails_the_export_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = busybox_store(dir.path()) else {
        return;
    };
    let store = Store::open(&root).unwrap();
    let digest = store.image(IMAGE).unwrap().unwrap();
    let image = store.read_image(&digest).unwrap();
    let layer = store.blob_path(&image.manifest.layers[0].digest);
    let mut bytes = fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&layer, bytes).unwrap();
    for kind in ["oci", "docker", "tar"] {
        let dest = dir.path().join(format!("out.{kind}.tar"));
        let output = Command::new(env!("CARGO_BIN_EXE_imgb"))
            .arg("--root")
            .arg(&root)
            .args([
                "save",
                IMAGE,
                "-o",
                &format!("type={kind},dest={}", dest.display()),
            ])
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "{kind} export of a corrupt blob succeeded"
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("corrupt"),
            "{output:?}"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("out."))
            .collect();
        assert!(leftovers.is_empty(), "{kind}: {leftovers:?}");
    }
}

#[test]
fn skopeo_reads_imgb_archives_and_imgb_loads_what_skopeo_writes() {
    let Some(skopeo) = tool("skopeo") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = busybox_store(dir.path()) else {
        return;
    };
    let oci_tar = dir.path().join("image.oci.tar");
    let docker_tar = dir.path().join("image.docker.tar");
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=oci,dest={}", oci_tar.display()),
        ],
    );
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=docker,dest={}", docker_tar.display()),
        ],
    );
    let stored_digest = Store::open(&root).unwrap().image(IMAGE).unwrap().unwrap();

    let oci_ref = format!("oci-archive:{}", oci_tar.display());
    let docker_ref = format!("docker-archive:{}", docker_tar.display());
    let inspected: Value =
        serde_json::from_slice(&run(Command::new(&skopeo).args(["inspect", &oci_ref])).stdout)
            .unwrap();
    assert_eq!(inspected["Digest"], stored_digest.as_str());
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);
    let docker_inspected: Value =
        serde_json::from_slice(&run(Command::new(&skopeo).args(["inspect", &docker_ref])).stdout)
            .unwrap();
    assert_eq!(docker_inspected["Layers"].as_array().unwrap().len(), 2);
    let config: Value = serde_json::from_slice(
        &run(Command::new(&skopeo).args(["inspect", "--config", &oci_ref])).stdout,
    )
    .unwrap();
    assert_eq!(config["history"].as_array().unwrap().len(), 3);

    // skopeo copies imgb's archives into archives of its own, which imgb then loads.
    let copies = [
        (
            oci_ref.as_str(),
            format!(
                "oci-archive:{}:localhost/copied/oci:1",
                dir.path().join("skopeo.oci.tar").display()
            ),
            "localhost/copied/oci:1",
        ),
        (
            docker_ref.as_str(),
            format!(
                "docker-archive:{}:localhost/copied/docker:2",
                dir.path().join("skopeo.docker.tar").display()
            ),
            "localhost/copied/docker:2",
        ),
        (
            oci_ref.as_str(),
            format!(
                "docker-archive:{}:copied:3",
                dir.path().join("skopeo.fromoci.docker.tar").display()
            ),
            "docker.io/library/copied:3",
        ),
    ];
    let fresh = dir.path().join("fresh-root");
    for (source, dest, name) in &copies {
        run(Command::new(&skopeo).args(["copy", "-q", source, dest]));
        let archive = dest.split(':').nth(1).unwrap();
        let loaded = stdout(&imgb(&fresh, &["load", "-i", archive]));
        assert_eq!(
            loaded.trim(),
            format!("Loaded image: {name}"),
            "from {dest}"
        );
        let rootfs = dir
            .path()
            .join(format!("rootfs-{}", name.replace(['/', ':'], "_")));
        imgb(
            &fresh,
            &[
                "save",
                name,
                "-o",
                &format!("type=local,dest={}", rootfs.display()),
            ],
        );
        assert!(rootfs.join("bin/busybox").is_file(), "{name}");
        assert!(
            fs::symlink_metadata(rootfs.join("bin/vi")).is_err(),
            "{name}"
        );
    }
    let store = Store::open(&fresh).unwrap();
    let oci_copy = store.image("localhost/copied/oci:1").unwrap().unwrap();
    assert_eq!(
        oci_copy, stored_digest,
        "skopeo kept the OCI manifest byte for byte"
    );
}

#[test]
fn umoci_unpacks_imgb_oci_layout() {
    let Some(umoci) = tool("umoci") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = busybox_store(dir.path()) else {
        return;
    };
    let archive = dir.path().join("image.oci.tar");
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ],
    );
    let layout = dir.path().join("layout");
    untar(&archive, &layout);
    let bundle = dir.path().join("bundle");
    let mut command = Command::new(umoci);
    command.arg("unpack");
    if !is_root() {
        command.arg("--rootless");
    }
    run(command
        .arg("--image")
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    assert!(
        fs::symlink_metadata(rootfs.join("bin/vi")).is_err(),
        "whiteout applied"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "built without a builder\n"
    );
    let runtime: Value = read_json(&bundle.join("config.json"));
    assert_eq!(runtime["process"]["args"][0], "sh");
}

#[test]
fn podman_loads_and_runs_the_docker_archive() {
    let Some(podman) = tool("podman") else {
        return;
    };
    if tool("runc").is_none() {
        return;
    }
    if !is_root() {
        eprintln!("notice: rootless podman needs subordinate ids set up; skipping (runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = busybox_store(dir.path()) else {
        return;
    };
    let archive = dir.path().join("image.docker.tar");
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=docker,dest={}", archive.display()),
        ],
    );
    let podman_dir = dir.path().join("podman");
    let podman_command = || {
        let mut command = Command::new(&podman);
        command
            .arg("--root")
            .arg(podman_dir.join("root"))
            .arg("--runroot")
            .arg(podman_dir.join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"]);
        command
    };
    let loaded = stdout(&run(podman_command()
        .args(["load", "-q", "-i"])
        .arg(&archive)));
    assert!(loaded.contains(IMAGE), "{loaded}");
    let output = run(podman_command().args([
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        IMAGE,
        "cat",
        "/etc/motd",
    ]));
    assert_eq!(stdout(&output), "built without a builder\n");
    let images = stdout(&run(podman_command().args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ])));
    assert!(images.lines().any(|l| l == IMAGE), "{images}");

    // And back: what `podman save` writes in both formats loads into imgb, verified.
    let fresh = dir.path().join("fresh-root");
    for format in ["docker-archive", "oci-archive"] {
        let saved = dir.path().join(format!("podman.{format}.tar"));
        run(podman_command()
            .args(["save", "-q", "--format", format, "-o"])
            .arg(&saved)
            .arg(IMAGE));
        let loaded = stdout(&imgb(&fresh, &["load", "-i", saved.to_str().unwrap()]));
        assert!(loaded.contains(IMAGE), "{format}: {loaded}");
    }
    // Storage lives in the temporary directory; reset unmounts whatever podman left.
    let _ = podman_command().args(["system", "reset", "-f"]).output();
}

#[test]
fn loading_a_tampered_archive_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = busybox_store(dir.path()) else {
        return;
    };
    let archive = dir.path().join("image.oci.tar");
    imgb(
        &root,
        &[
            "save",
            IMAGE,
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ],
    );
    let layout = dir.path().join("layout");
    untar(&archive, &layout);
    // Flip one byte of the busybox layer, keeping its name: the digest check must catch it.
    let mut largest: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let size = entry.metadata().unwrap().len();
        if largest.as_ref().is_none_or(|(s, _)| size > *s) {
            largest = Some((size, entry.path()));
        }
    }
    let (_, layer) = largest.unwrap();
    let mut bytes = fs::read(&layer).unwrap();
    bytes[100] ^= 1;
    fs::write(&layer, bytes).unwrap();
    let tampered = dir.path().join("tampered.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tampered)
        .arg("-C")
        .arg(&layout)
        .arg("."));
    let fresh = dir.path().join("fresh");
    let output = Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(&fresh)
        .args(["load", "-i"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hashes to"), "{stderr}");
    let store = Store::open(&fresh).unwrap();
    assert!(store.images().unwrap().is_empty());
    assert!(store.list_blobs().unwrap().is_empty());
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}
