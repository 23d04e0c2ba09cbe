//! `RUN --mount=type=secret` end to end: secrets reach the step as files or environment
//! variables, with the owner and mode asked for, and never reach the image; a required secret
//! that was not given fails the build naming the line.

mod support;

use std::path::Path;
use support::{busybox_context, imgb, setup, stderr};

const CANARY: &str = "canary-5f0d2c7e91";

/// A busybox base; every RUN checks the secret without printing it, so the canary text itself
/// is never in the Dockerfile or the output.
fn secret_context(dir: &Path, busybox: &Path, steps: &str) -> std::path::PathBuf {
    busybox_context(
        dir,
        busybox,
        &format!(
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n{steps}"
        ),
    )
}

#[test]
fn secrets_reach_run_as_files_and_env_but_never_the_image() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let secret_file = dir.path().join("token");
    std::fs::write(&secret_file, CANARY).unwrap();
    let length = CANARY.len();
    let context = secret_context(
        dir.path(),
        &busybox,
        &format!(
            "RUN --mount=type=secret,id=tok test $(wc -c < /run/secrets/tok) -eq {length}\n\
             RUN --mount=type=secret,id=tok,uid=1000,gid=2000,mode=0440 \
                 test \"$(stat -c '%u:%g %a' /run/secrets/tok)\" = '1000:2000 440'\n\
             RUN --mount=type=secret,source=tok,target=/etc/app/key test $(wc -c < /etc/app/key) -eq {length}\n\
             RUN --mount=type=secret,id=tok,env=API_TOKEN \
                 test ${{#API_TOKEN}} -eq {length} && test ! -e /run/secrets/tok\n\
             RUN --mount=type=secret,id=tok,env=API_TOKEN,target=/both \
                 test ${{#API_TOKEN}} -eq {length} && test -s /both\n\
             RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent\n"
        ),
    );
    let oci = dir.path().join("image.tar");
    let output = imgb(
        &dir.path().join("root"),
        &[
            "build",
            "--progress",
            "plain",
            "--secret",
            &format!("id=tok,src={}", secret_file.display()),
            "-o",
            &format!(
                "type=oci,dest={},compression=uncompressed,force-compression=true",
                oci.display()
            ),
            context.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains(CANARY), "the secret was printed");
    let exported = std::fs::read(&oci).unwrap();
    assert!(
        !exported
            .windows(CANARY.len())
            .any(|w| w == CANARY.as_bytes()),
        "the secret leaked into the image"
    );
}

#[test]
fn secret_from_the_environment_and_a_missing_required_one_naming_the_line() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let length = CANARY.len();
    let context = secret_context(
        dir.path(),
        &busybox,
        &format!(
            "RUN --mount=type=secret,id=envtok,required test $(wc -c < /run/secrets/envtok) -eq {length}\n\
             RUN --mount=type=secret,id=deploy-key,required=true true\n"
        ),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .args([
            "build",
            "--progress",
            "plain",
            "--secret",
            "id=envtok,env=IMGB_TEST_SECRET",
        ])
        .arg(&context)
        .env("IMGB_TEST_SECRET", CANARY)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("secret deploy-key is required but was not given"),
        "{text}"
    );
    assert!(
        text.contains("5 | RUN --mount=type=secret,id=deploy-key"),
        "the Dockerfile line is named:\n{text}"
    );
    // The step before it read the secret given through the environment.
    assert!(!text.contains("envtok is required"), "{text}");
}
