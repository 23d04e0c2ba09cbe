//! imgb against a real registry (Debian's `docker-registry` on 127.0.0.1): a base pushed by
//! skopeo is pulled by `FROM`, the build is pushed, skopeo reads it, and it pulls back into an
//! empty root with the same digests; over TLS with htpasswd auth, and over plain HTTP on
//! loopback. Also the client API on its own (chunked uploads, mounts, several names).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::registry::{Options, PASSWORD, TestRegistry, USER};
use support::{busybox_context, imgb_ok, run, setup, stderr, stdout, tool};

/// The environment every imgb call of a test gets: its own auth file, and the registry's CA.
struct Env {
    vars: Vec<(String, PathBuf)>,
}

impl Env {
    fn new(dir: &Path, registry: &TestRegistry) -> Self {
        let mut vars = vec![("IMGB_AUTH_FILE".to_owned(), dir.join("imgb-auth.json"))];
        if let Some(ca) = &registry.ca {
            vars.push(("IMGB_REGISTRY_CA".to_owned(), ca.clone()));
        }
        Self { vars }
    }

    fn command(&self, root: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_imgb"));
        command.arg("--root").arg(root).args(args);
        // Credentials only from the test's files, never the user's.
        command.env("HOME", self.vars[0].1.parent().unwrap());
        command
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE");
        for (key, value) in &self.vars {
            command.env(key, value);
        }
        command
    }

    fn imgb(&self, root: &Path, args: &[&str]) -> Output {
        self.command(root, args).output().expect("imgb runs")
    }

    fn imgb_ok(&self, root: &Path, args: &[&str]) -> Output {
        run(&mut self.command(root, args))
    }

    fn login(&self, root: &Path, host: &str, password: &str) -> Output {
        let mut child = self
            .command(root, &["login", "-u", USER, "--password-stdin", host])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    }
}

/// Builds a busybox base (`FROM scratch` + the static busybox + an ENV) in its own root, saves
/// it as a docker-archive and lets skopeo push it to `registry` as `base:1`; returns the
/// skopeo path.
fn push_base_with_skopeo(dir: &Path, busybox: &Path, registry: &TestRegistry) -> Option<PathBuf> {
    let skopeo = tool("skopeo")?;
    let root = dir.join("root-base");
    let context = busybox_context(
        &dir.join("base"),
        busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\nENV FROM_BASE=yes\n",
    );
    imgb_ok(
        &root,
        &["build", "-t", "localhost/base:1", context.to_str().unwrap()],
    );
    let archive = dir.join("base.tar");
    imgb_ok(
        &root,
        &[
            "save",
            "localhost/base:1",
            "-o",
            &format!("type=docker,dest={}", archive.display()),
        ],
    );
    let mut copy = Command::new(&skopeo);
    copy.args(["copy", "--dest-tls-verify=false"]);
    if let Some(creds) = registry.creds() {
        copy.args(["--dest-creds", &creds]);
    }
    run(copy
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{}/base:1", registry.host)));
    Some(skopeo)
}

fn skopeo_inspect(skopeo: &Path, registry: &TestRegistry, name: &str) -> serde_json::Value {
    skopeo_inspect_with(skopeo, registry, name, &[])
}

/// `skopeo inspect` of `name` on `registry` with `flags` (`--raw`: the manifest itself).
fn skopeo_inspect_with(
    skopeo: &Path,
    registry: &TestRegistry,
    name: &str,
    flags: &[&str],
) -> serde_json::Value {
    let mut inspect = Command::new(skopeo);
    inspect.args(["inspect", "--tls-verify=false"]).args(flags);
    if let Some(creds) = registry.creds() {
        inspect.args(["--creds", &creds]);
    }
    let output = run(inspect.arg(format!("docker://{}/{name}", registry.host)));
    serde_json::from_slice(&output.stdout).expect("skopeo inspect prints JSON")
}

fn metadata(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn tls_registry_with_auth_pull_build_push_and_pull_back_give_the_same_digests() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(registry) = TestRegistry::start(Options {
        auth: true,
        tls: true,
    }) else {
        return;
    };
    let Some(skopeo) = push_base_with_skopeo(dir.path(), &busybox, &registry) else {
        return;
    };
    let env = Env::new(dir.path(), &registry);
    let host = registry.host.as_str();
    let builder_root = dir.path().join("root-builder");

    let refused = env.login(&builder_root, host, "wrong");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("access denied"),
        "{}",
        stderr(&refused)
    );
    let login = env.login(&builder_root, host, PASSWORD);
    assert!(
        login.status.success(),
        "{}\n{}",
        stderr(&login),
        registry.log()
    );

    let context = busybox_context(
        &dir.path().join("app"),
        &busybox,
        &format!(
            "FROM {host}/base:1\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"test \\\"$FROM_BASE\\\" = yes && echo built > /built\"]\n"
        ),
    );
    let metadata_file = dir.path().join("metadata.json");
    let app = format!("{host}/team/app:1");
    let build = env.imgb_ok(
        &builder_root,
        &[
            "build",
            "-t",
            &app,
            "--push",
            "--metadata-file",
            metadata_file.to_str().unwrap(),
            context.to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&build).contains("1 mounted"),
        "the base layer is mounted from base: {}",
        stderr(&build)
    );
    let built = metadata(&metadata_file);
    let digest = built["containerimage.digest"].as_str().unwrap();

    let inspected = skopeo_inspect(&skopeo, &registry, "team/app:1");
    assert_eq!(inspected["Digest"], digest, "{inspected}");
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(2));
    let manifest = skopeo_inspect_with(&skopeo, &registry, "team/app:1", &["--raw"]);
    assert_eq!(
        manifest["layers"][1]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
        "the RUN's layer is pushed gzip-compressed, as BuildKit pushes it: {manifest}"
    );
    assert_eq!(
        inspected["Env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| *v == "FROM_BASE=yes")
            .count(),
        1
    );

    let empty_root = dir.path().join("root-empty");
    let pull = env.imgb_ok(&empty_root, &["pull", &app]);
    assert_eq!(stdout(&pull).trim(), format!("{app}: {digest}"));
    let inspect = env.imgb_ok(&empty_root, &["inspect", &app]);
    let pulled: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        pulled
            .to_string()
            .matches(built["containerimage.config.digest"].as_str().unwrap())
            .count(),
        1,
        "{pulled}"
    );
    let saved = dir.path().join("pulled.tar");
    env.imgb_ok(
        &empty_root,
        &[
            "save",
            &app,
            "-o",
            &format!("type=oci,dest={}", saved.display()),
        ],
    );

    // Without the CA the certificate is refused, with a hint.
    let untrusting = Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(dir.path().join("root-untrusting"))
        .args(["pull", &app])
        .env_remove("IMGB_REGISTRY_CA")
        .env("IMGB_AUTH_FILE", dir.path().join("imgb-auth.json"))
        .output()
        .unwrap();
    assert!(!untrusting.status.success());
    assert!(
        stderr(&untrusting).contains("--registry-ca"),
        "{}",
        stderr(&untrusting)
    );

    env.imgb_ok(&builder_root, &["logout", host]);
    let logged_out = env.imgb(&dir.path().join("root-logged-out"), &["pull", &app]);
    assert!(
        stderr(&logged_out).contains("access denied"),
        "{}",
        stderr(&logged_out)
    );
}

#[test]
fn loopback_registry_over_plain_http_needs_no_flag_layers_come_lazily_and_pull_refreshes() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(registry) = TestRegistry::start(Options::default()) else {
        return;
    };
    let Some(skopeo) = push_base_with_skopeo(dir.path(), &busybox, &registry) else {
        return;
    };
    let env = Env::new(dir.path(), &registry);
    let host = registry.host.as_str();
    let base_layer = skopeo_inspect(&skopeo, &registry, "base:1")["Layers"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let root = dir.path().join("root");
    let context = busybox_context(
        &dir.path().join("app"),
        &busybox,
        &format!("FROM {host}/base:1\nENV CONFIG_ONLY=1\n"),
    );
    let names = format!("{host}/one:1,{host}/two:1");
    let build = env.imgb_ok(
        &root,
        &[
            "build",
            "-o",
            &format!("type=image,\"name={names}\",push=true"),
            context.to_str().unwrap(),
        ],
    );
    let layer_blob = root
        .join("blobs/sha256")
        .join(base_layer.trim_start_matches("sha256:"));
    assert!(
        !layer_blob.exists(),
        "no step needed the base layer, so it was mounted, never downloaded"
    );
    // `one` mounts the base layer from `base`; `two` mounts everything from `one`.
    let report = stderr(&build);
    assert!(
        report.contains("one:1@") && report.contains("1 blobs uploaded, 1 mounted"),
        "{report}"
    );
    assert!(
        report.contains("two:1@") && report.contains("0 blobs uploaded, 2 mounted"),
        "{report}"
    );
    for name in ["one:1", "two:1"] {
        let inspected = skopeo_inspect(&skopeo, &registry, name);
        assert_eq!(inspected["Layers"][0], base_layer.as_str());
    }

    // `imgb push` of a stored image to several names: every blob mounted, none downloaded.
    let pushed = env.imgb_ok(
        &root,
        &[
            "push",
            &format!("{host}/one:1"),
            &format!("{host}/three:1"),
            &format!("{host}/four:1"),
        ],
    );
    let digest = skopeo_inspect(&skopeo, &registry, "one:1")["Digest"].clone();
    for name in ["three:1", "four:1"] {
        assert_eq!(
            skopeo_inspect(&skopeo, &registry, name)["Digest"],
            digest,
            "{}",
            stderr(&pushed)
        );
    }
    assert!(!layer_blob.exists(), "{}", stderr(&pushed));

    // Running the image needs its filesystem: the base layer is fetched then.
    let ran = env.imgb_ok(
        &root,
        &[
            "run",
            &format!("{host}/one:1"),
            "--",
            "/bin/busybox",
            "echo",
            "ran",
        ],
    );
    assert_eq!(stdout(&ran), "ran\n");
    assert!(layer_blob.exists());

    // The digest `base:1` resolved to is reused until --pull asks the registry again.
    run(Command::new(&skopeo)
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("docker://{host}/one:1"))
        .arg(format!("docker://{host}/base:1")));
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {host}/base:1\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"test -z \\\"$CONFIG_ONLY\\\"\"]\n"
        ),
    )
    .unwrap();
    env.imgb_ok(&root, &["build", context.to_str().unwrap()]);
    let pulled = env.imgb(&root, &["build", "--pull", context.to_str().unwrap()]);
    assert!(
        !pulled.status.success() && stderr(&pulled).contains("did not complete successfully"),
        "--pull must build on the new base:1 (CONFIG_ONLY=1): {}",
        stderr(&pulled)
    );
}

#[test]
fn credentials_come_from_a_docker_credential_helper() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(registry) = TestRegistry::start(Options {
        auth: true,
        tls: true,
    }) else {
        return;
    };
    if push_base_with_skopeo(dir.path(), &busybox, &registry).is_none() {
        return;
    }
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let asked = dir.path().join("asked");
    let helper = bin.join("docker-credential-imgbtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\necho \"$server\" > {}\n\
             echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'\n",
            asked.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let docker_config = dir.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    std::fs::write(
        docker_config.join("config.json"),
        r#"{"credsStore":"imgbtest"}"#,
    )
    .unwrap();
    let env = Env::new(dir.path(), &registry);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let pull = run(env
        .command(
            &dir.path().join("root"),
            &["pull", &format!("{}/base:1", registry.host)],
        )
        .env("DOCKER_CONFIG", &docker_config)
        .env("PATH", path));
    assert!(
        stdout(&pull).contains("base:1: sha256:"),
        "{}",
        stdout(&pull)
    );
    assert_eq!(
        std::fs::read_to_string(&asked).unwrap().trim(),
        registry.host
    );
}

/// The client API on its own, as the registry cache uses it: a blob larger than the chunk size
/// goes up in chunks, a second repository mounts it, manifests go up and come back verified.
#[test]
fn client_api_uploads_in_chunks_mounts_across_repositories_and_fetches_back() {
    use imgb_cache::oci::{Descriptor, ImageConfig, Platform, RootFs, media_type};
    use imgb_cache::registry::{BlobPush, Registry, RegistryConfig};
    use imgb_cache::{Digest, Reference, Store};

    let Some(registry_server) = TestRegistry::start(Options::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let layer_bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let layer = store.write_blob(&layer_bytes).unwrap();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            diff_ids: vec![layer.digest.clone()],
            ..RootFs::default()
        },
        ..ImageConfig::default()
    };
    let layer_descriptor = Descriptor::new(media_type::OCI_LAYER, layer.digest.clone(), layer.size);
    let image = store
        .write_image(&config, vec![layer_descriptor.clone()])
        .unwrap();
    // A stored (not built) uncompressed layer is pushed as it is.
    let exported = imgb_cache::exported_image(
        &store,
        &image,
        imgb_cache::LayerCompressionChoice::DEFAULT,
        true,
    )
    .unwrap();
    assert_eq!(exported.manifest, image.descriptor);

    let mut config = RegistryConfig::from_env();
    config.chunk_size = 64 * 1024;
    let client = Registry::new(config);
    let host = &registry_server.host;
    let first = Reference::parse(&format!("{host}/api/first:1")).unwrap();
    let second = Reference::parse(&format!("{host}/api/second:1")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pushed = client
            .push_image(&store, &exported, &[first.clone(), second.clone()])
            .await
            .unwrap();
        assert_eq!((pushed[0].uploaded, pushed[0].mounted), (2, 0));
        assert_eq!((pushed[1].uploaded, pushed[1].mounted), (0, 2));

        let repository = client.repository(&second);
        assert!(repository.blob_exists(&layer.digest).await.unwrap());
        assert_eq!(
            repository
                .push_blob(&store, &layer_descriptor)
                .await
                .unwrap(),
            BlobPush::AlreadyThere
        );
        let manifest = repository.fetch_manifest("1").await.unwrap();
        assert_eq!(manifest.descriptor.digest, image.descriptor.digest);

        let other = Store::open(dir.path().join("other")).unwrap();
        let fetched = repository
            .fetch_blob(&other, &layer_descriptor)
            .await
            .unwrap();
        assert_eq!(other.read_blob(&fetched.digest).unwrap(), layer_bytes);
        let pulled = client.pull_image(&other, &first, &Platform::host()).await;
        assert_eq!(pulled.unwrap().descriptor.digest, image.descriptor.digest);
        let missing = repository.fetch_manifest("nope").await.unwrap_err();
        assert!(
            missing.to_string().contains("manifest nope not found"),
            "{missing}"
        );
        let unknown = Digest::of(b"unknown");
        assert!(!repository.blob_exists(&unknown).await.unwrap());
    });
}
