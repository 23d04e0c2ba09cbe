//! `imgb build` outputs end to end: the OCI layout (tar and directory), docker-archive, local
//! directory and tar exporters, several `-t` names, `--iidfile`, `--metadata-file`, and layer
//! compression, checked with skopeo, umoci, a fresh root's `imgb load` and `imgb run`.

mod support;

use std::path::Path;
use std::process::Command;
use support::{BASE, TestContext, imgb_ok, run, run_in, shared_root, stdout, tool};

fn image_context() -> TestContext {
    TestContext::new(
        &format!(
            "FROM {BASE}\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt > /copied.txt\n\
             CMD [\"cat\", \"/copied.txt\"]\n"
        ),
        &[("hello.txt", "hello from an output\n")],
    )
}

fn skopeo_json(skopeo: &Path, args: &[&str]) -> serde_json::Value {
    let output = run(Command::new(skopeo).args(args));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn oci_and_docker_archives_read_by_skopeo_umoci_and_a_fresh_root() {
    let Some(root) = shared_root() else { return };
    let (Some(skopeo), Some(umoci)) = (tool("skopeo"), tool("umoci")) else {
        return;
    };
    let context = image_context();
    let dir = context.dir.path();
    let oci = dir.join("image.oci.tar");
    let layout = dir.join("layout");
    let docker = dir.join("image.docker.tar");
    context.build_ok(
        root,
        &[
            "-t",
            "localhost/outputs:1",
            "-o",
            &format!("type=oci,dest={}", oci.display()),
            "-o",
            &format!("type=oci,tar=false,dest={}", layout.display()),
            "-o",
            &format!("type=docker,dest={}", docker.display()),
        ],
    );
    for archive in [
        format!("oci-archive:{}", oci.display()),
        format!("oci:{}:1", layout.display()),
        format!("docker-archive:{}", docker.display()),
    ] {
        let json = skopeo_json(&skopeo, &["inspect", &archive]);
        assert_eq!(
            json["Layers"].as_array().map(Vec::len),
            Some(6),
            "{archive}: {json}"
        );
        let config = skopeo_json(&skopeo, &["inspect", "--config", &archive]);
        assert_eq!(
            config["config"]["Cmd"][1], "/copied.txt",
            "{archive}: {config}"
        );
    }

    let bundle = dir.join("bundle");
    run(Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:1", layout.display()))
        .arg(&bundle));
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/copied.txt")).unwrap(),
        "hello from an output\n"
    );

    let fresh = dir.join("fresh-root");
    imgb_ok(&fresh, &["load", "-i", docker.to_str().unwrap()]);
    assert_eq!(
        stdout(&imgb_ok(&fresh, &["run", "localhost/outputs:1"])),
        "hello from an output\n"
    );
}

#[test]
fn local_and_tar_outputs_hold_the_root_filesystem() {
    let Some(root) = shared_root() else { return };
    let context = image_context();
    let dir = context.dir.path();
    let local = dir.join("local");
    let tar = dir.join("rootfs.tar");
    context.build_ok(
        root,
        &[
            "-o",
            &format!("type=local,dest={}", local.display()),
            "-o",
            &format!("type=tar,dest={}", tar.display()),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(local.join("copied.txt")).unwrap(),
        "hello from an output\n"
    );
    let listing = stdout(&run(Command::new("tar").arg("-tf").arg(&tar)));
    assert!(
        listing
            .lines()
            .any(|line| line.trim_start_matches("./") == "copied.txt"),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|line| line.trim_start_matches("./") == "bin/busybox"),
        "{listing}"
    );

    let to_stdout = context.build_ok(root, &["--progress", "quiet", "-o", "type=tar,dest=-"]);
    assert_eq!(
        to_stdout.stdout.len() % 512,
        0,
        "standard output holds only the tar"
    );
    let unpacked = dir.join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let mut untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&unpacked)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &to_stdout.stdout).unwrap();
    drop(untar.stdin.take());
    assert!(untar.wait().unwrap().success());
    assert!(unpacked.join("copied.txt").is_file());
}

#[test]
fn several_names_iidfile_and_metadata_file_describe_the_image() {
    let Some(root) = shared_root() else { return };
    let context = image_context();
    let dir = context.dir.path();
    let iidfile = dir.join("iid");
    let metadata = dir.join("metadata.json");
    context.build_ok(
        root,
        &[
            "-t",
            "outputs-a:1",
            "-t",
            "localhost/outputs-b:2",
            "--iidfile",
            iidfile.to_str().unwrap(),
            "--metadata-file",
            metadata.to_str().unwrap(),
        ],
    );
    let image_id = std::fs::read_to_string(&iidfile).unwrap();
    assert!(
        image_id.starts_with("sha256:") && image_id.len() == 71,
        "{image_id}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(
        json["containerimage.config.digest"],
        image_id.as_str(),
        "{json}"
    );
    assert_eq!(
        json["image.name"], "docker.io/library/outputs-a:1,localhost/outputs-b:2",
        "{json}"
    );
    let digest = json["containerimage.digest"].as_str().unwrap();
    for name in ["outputs-a:1", "localhost/outputs-b:2"] {
        let inspect: serde_json::Value =
            serde_json::from_slice(&imgb_ok(root, &["inspect", name]).stdout).unwrap();
        assert_eq!(inspect["digest"], digest, "{name}: {inspect}");
    }
    assert_eq!(
        run_in(root, "localhost/outputs-b:2", "cat /copied.txt"),
        "hello from an output\n"
    );
}

#[test]
fn compression_choices_reach_the_layer_media_types() {
    let Some(root) = shared_root() else { return };
    let Some(skopeo) = tool("skopeo") else { return };
    let context = image_context();
    let dir = context.dir.path();
    let cases = [
        ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("uncompressed", "application/vnd.oci.image.layer.v1.tar"),
    ];
    let mut args = Vec::new();
    for (compression, _) in cases {
        args.push("-o".to_string());
        args.push(format!(
            "type=oci,dest={},compression={compression},force-compression=true",
            dir.join(format!("{compression}.tar")).display()
        ));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    context.build_ok(root, &args);
    let mut diff_ids = Vec::new();
    for (compression, media_type) in cases {
        let archive = format!(
            "oci-archive:{}",
            dir.join(format!("{compression}.tar")).display()
        );
        let manifest = skopeo_json(&skopeo, &["inspect", "--raw", &archive]);
        let layers = manifest["layers"].as_array().unwrap();
        assert!(
            layers.iter().all(|layer| layer["mediaType"] == media_type),
            "{compression}: {manifest}"
        );
        let config = skopeo_json(&skopeo, &["inspect", "--config", &archive]);
        diff_ids.push(config["rootfs"]["diff_ids"].clone());
    }
    assert!(
        diff_ids.iter().all(|ids| ids == &diff_ids[0]),
        "compression changes blobs, never diffIDs: {diff_ids:?}"
    );
}

/// BuildKit's exporters: a layer a step made is compressed (gzip unless `compression=` says
/// otherwise), a base layer keeps the compression it is stored with, and the digest reported is
/// the exported manifest's, the same on every root for the same build.
#[test]
fn built_layers_are_exported_compressed_and_base_layers_as_stored() {
    let Some(root) = shared_root() else { return };
    let Some(skopeo) = tool("skopeo") else { return };
    let context = TestContext::new(
        &format!("FROM {BASE}\nCOPY hello.txt /hello.txt\n"),
        &[("hello.txt", "hello, compressed\n")],
    );
    let dir = context.dir.path();
    let zstd_base = dir.join("base.tar");
    imgb_ok(
        root,
        &[
            "save",
            BASE,
            "-o",
            &format!("type=oci,compression=zstd,dest={}", zstd_base.display()),
        ],
    );
    let layer_types = |archive: &Path| -> Vec<String> {
        let manifest = skopeo_json(
            &skopeo,
            &[
                "inspect",
                "--raw",
                &format!("oci-archive:{}", archive.display()),
            ],
        );
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| layer["mediaType"].as_str().unwrap().to_owned())
            .collect()
    };
    let zstd_type = "application/vnd.oci.image.layer.v1.tar+zstd";
    let base_types = layer_types(&zstd_base);
    assert!(base_types.iter().all(|t| t == zstd_type), "{base_types:?}");

    let mut reported = Vec::new();
    for name in ["first", "second"] {
        let fresh = dir.join(format!("root-{name}"));
        imgb_ok(&fresh, &["load", "-i", zstd_base.to_str().unwrap()]);
        let archive = dir.join(format!("{name}.tar"));
        let zstd_archive = dir.join(format!("{name}-zstd.tar"));
        let metadata = dir.join(format!("{name}.json"));
        context.build_ok(
            &fresh,
            &[
                "--build-arg",
                "SOURCE_DATE_EPOCH=1700000000",
                "--metadata-file",
                metadata.to_str().unwrap(),
                "-o",
                &format!("type=oci,dest={}", archive.display()),
                "-o",
                &format!("type=oci,compression=zstd,dest={}", zstd_archive.display()),
            ],
        );
        let types = layer_types(&archive);
        assert_eq!(types.len(), base_types.len() + 1, "{types:?}");
        assert_eq!(
            types[..base_types.len()],
            base_types,
            "base layers as stored"
        );
        assert_eq!(
            types[base_types.len()],
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "the COPY's layer"
        );
        let zstd_types = layer_types(&zstd_archive);
        assert!(zstd_types.iter().all(|t| t == zstd_type), "{zstd_types:?}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
        let inspected = skopeo_json(
            &skopeo,
            &["inspect", &format!("oci-archive:{}", archive.display())],
        );
        assert_eq!(
            json["containerimage.digest"], inspected["Digest"],
            "the reported digest is the exported manifest's"
        );
        reported.push(inspected["Digest"].clone());
    }
    assert_eq!(
        reported[0], reported[1],
        "the same build compresses to the same manifest on every root"
    );
}
