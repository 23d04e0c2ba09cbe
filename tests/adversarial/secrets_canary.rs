//! Secrets (issue 8, class 6): random canary values passed with `--secret id=..,src=..`,
//! `--secret id=..,env=..` and `--build-arg`, used by a RUN that prints them and writes them to a
//! tmpfs mount. Then every file of the state directory (blobs, snapshots, records, leases, names,
//! anything), every export (oci, docker, tar, local, the local build cache) and the progress
//! output are scanned, looking inside tars and gzip/zstd streams.
//!
//! What is guaranteed, and proven here:
//! - A secret's value is never persisted: not in any layer, config, history, cache record or
//!   export, even when the step echoes it. The only place it shows is the step's own output
//!   in the progress log (plain and rawjson), which the user printed themselves.
//! - A secret's value is not part of the cache key (a new value is a hit); its id is (see
//!   `cache_keys.rs`).
//! - A build arg is not a secret, as in BuildKit: the value a RUN used is recorded in that
//!   step's history entry (`RUN |1 TOKEN=... # buildkit`), hence in the config and the exports
//!   that carry it. It is in nothing else the build persists: not the config's `Env`, not a
//!   layer (the step wrote it to a tmpfs), not the snapshots or cache records.

#[path = "../support/mod.rs"]
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::canary::{canary, scan_tree};
use support::{BASE, ran_steps, shared_root, stderr};

struct Secrets {
    file_value: String,
    env_value: String,
}

impl Secrets {
    fn new(round: u32) -> Self {
        Secrets {
            file_value: canary(&format!("file{round}")),
            env_value: canary(&format!("env{round}")),
        }
    }
}

const DOCKERFILE: &str = r#"ARG TOKEN
RUN --mount=type=secret,id=file_secret --mount=type=secret,id=env_secret,env=ENV_SECRET \
    --mount=type=tmpfs,target=/scratch \
    echo "file:$(cat /run/secrets/file_secret)" && echo "env:$ENV_SECRET" && echo "arg:$TOKEN" \
    && cat /run/secrets/file_secret > /scratch/f && echo "$ENV_SECRET $TOKEN" > /scratch/e \
    && echo done > /done
"#;

/// Builds the canary Dockerfile in `root` with `secrets`, the build arg and `args`.
fn build(root: &Path, dir: &Path, secrets: &Secrets, token: &str, args: &[String]) -> Output {
    let context = dir.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {BASE}\n{DOCKERFILE}"),
    )
    .unwrap();
    // The secret file lives outside the context, as secrets should.
    let secret_file = dir.join("secret-file");
    std::fs::write(&secret_file, &secrets.file_value).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_imgb"))
        .env("CANARY_ENV", &secrets.env_value)
        .arg("--root")
        .arg(root)
        .arg("build")
        .arg("--secret")
        .arg(format!("id=file_secret,src={}", secret_file.display()))
        .args(["--secret", "id=env_secret,env=CANARY_ENV"])
        .args(["--build-arg", &format!("TOKEN={token}")])
        .args(args)
        .arg(&context)
        .output()
        .expect("imgb runs");
    assert!(output.status.success(), "build failed: {}", stderr(&output));
    output
}

/// Asserts that `needle` occurs in `log` only right after `prefix`: as the line the RUN
/// echoed, nowhere else (not in a step name, an error, a cache explanation).
fn only_as_echoed(log: &str, needle: &str, prefix: &str) {
    let total = log.matches(needle).count();
    let echoed = log.matches(&format!("{prefix}{needle}")).count();
    assert!(
        echoed > 0,
        "the RUN's own output is shown: {prefix}{needle} missing:\n{log}"
    );
    assert_eq!(
        total, echoed,
        "{needle} appears beyond the RUN's output:\n{log}"
    );
}

#[test]
fn secrets_are_never_persisted_and_build_args_only_in_history() {
    let Some(root) = shared_root() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = canary("arg");
    let exports = dir.path().join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    let at = |name: &str| exports.join(name).display().to_string();
    let outputs = [
        "-t".to_owned(),
        "localhost/secrets-canary:1".to_owned(),
        "-o".to_owned(),
        format!(
            "type=oci,dest={},compression=uncompressed,force-compression=true",
            at("oci.tar")
        ),
        "-o".to_owned(),
        format!("type=docker,dest={}", at("docker.tar")),
        "-o".to_owned(),
        format!("type=tar,dest={}", at("rootfs.tar")),
        "-o".to_owned(),
        format!("type=local,dest={}", at("rootfs")),
        "--cache-to".to_owned(),
        format!("type=local,dest={},mode=max", at("cache")),
    ];

    // 1: plain progress, every export.
    let first = Secrets::new(1);
    let mut args = vec!["--progress".to_owned(), "plain".to_owned()];
    args.extend(outputs.iter().cloned());
    let plain = stderr(&build(root, dir.path(), &first, &token, &args));
    only_as_echoed(&plain, &first.file_value, "file:");
    only_as_echoed(&plain, &first.env_value, "env:");
    only_as_echoed(&plain, &token, "arg:");

    // 2: new secret values are a cache hit.
    let second = Secrets::new(2);
    let rawjson = ["--progress".to_owned(), "rawjson".to_owned()];
    let hit = stderr(&build(root, dir.path(), &second, &token, &rawjson));
    assert_eq!(
        ran_steps(&hit),
        Vec::<String>::new(),
        "a new secret value missed:\n{hit}"
    );

    // 3: rerun with rawjson progress: the echoed values are the RUN's output events, nothing else.
    let third = Secrets::new(3);
    let mut args = rawjson.to_vec();
    args.push("--no-cache".to_owned());
    let events = stderr(&build(root, dir.path(), &third, &token, &args));
    for line in events.lines() {
        let mentions = [&third.file_value, &third.env_value, &token]
            .iter()
            .any(|value| line.contains(value.as_str()));
        if mentions {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                event["event"], "output",
                "a value outside the RUN's output:\n{line}"
            );
        }
    }

    let secret_values = [&first, &second, &third]
        .into_iter()
        .flat_map(|secrets| [&secrets.file_value, &secrets.env_value]);
    let mut leaks = Vec::new();
    for value in secret_values {
        for tree in [root, exports.as_path()] {
            scan_tree(tree, value, &mut leaks);
        }
    }
    assert!(
        leaks.is_empty(),
        "secret values persisted:\n{}",
        leaks.join("\n")
    );

    let mut token_hits = Vec::new();
    for tree in [root, exports.as_path()] {
        scan_tree(tree, &token, &mut token_hits);
    }
    let unexpected: Vec<&String> = token_hits
        .iter()
        .filter(|hit| !is_history_only(hit, &token))
        .collect();
    assert!(
        unexpected.is_empty(),
        "the build arg is persisted beyond the image history: {unexpected:#?}\nall: {token_hits:#?}"
    );
    assert!(
        !token_hits.is_empty(),
        "the RUN's history entry names its build args"
    );
}

/// Whether the file a hit names is an image config whose only mention of `token` is a history
/// entry's `created_by`.
fn is_history_only(hit: &str, token: &str) -> bool {
    let Ok(bytes) = hit_bytes(hit) else {
        return false;
    };
    let Ok(mut config) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    let Some(history) = config.get_mut("history").map(serde_json::Value::take) else {
        return false;
    };
    let mentioned = history
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry.to_string().contains(token))
        .all(|entry| {
            let mut entry = entry.clone();
            let created_by = entry["created_by"].take();
            created_by.as_str().is_some_and(|text| text.contains(token))
                && !entry.to_string().contains(token)
        });
    mentioned && !config.to_string().contains(token)
}

/// The bytes a hit label names: a file, or a member of a tar (one level, uncompressed).
fn hit_bytes(hit: &str) -> std::io::Result<Vec<u8>> {
    let mut parts = hit.split('|');
    let file = PathBuf::from(parts.next().unwrap_or_default());
    let bytes = std::fs::read(file)?;
    match (parts.next(), parts.next()) {
        (None, _) => Ok(bytes),
        (Some(member), None) => {
            let mut archive = tar::Archive::new(bytes.as_slice());
            for entry in archive.entries()? {
                let mut entry = entry?;
                if entry.path_bytes().as_ref() == member.as_bytes() {
                    let mut content = Vec::new();
                    entry.read_to_end(&mut content)?;
                    return Ok(content);
                }
            }
            Err(std::io::ErrorKind::NotFound.into())
        }
        _ => Err(std::io::ErrorKind::Unsupported.into()),
    }
}
