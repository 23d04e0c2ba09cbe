//! `imgb check`: what users read when their Dockerfile is wrong. Snapshots of the full output,
//! temp paths filtered.

use std::process::Command;

/// Runs `imgb check` on a context holding `dockerfile` (and `extra` files); returns exit code
/// and stderr with the temp dir replaced by `[CTX]`.
fn check(dockerfile: &str, extra: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let context = tempfile::tempdir().expect("temp dir");
    std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
    for (name, content) in extra {
        std::fs::write(context.path().join(name), content).expect("write context file");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("check")
        .args(args)
        .arg(context.path())
        .output()
        .expect("imgb runs");
    let stderr = String::from_utf8_lossy(&output.stderr)
        .replace(&context.path().display().to_string(), "[CTX]");
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn unknown_instruction_names_line_and_suggests() {
    let (code, stderr) = check("FROM scratch\nFORM busybox\n", &[], &[]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(stderr);
}

#[test]
fn misspelt_flag_names_the_flag_and_suggests() {
    let (code, stderr) = check("FROM scratch\nCOPY --chwon=1000 a /a\n", &[], &[]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(stderr);
}

#[test]
fn unterminated_heredoc_spans_to_the_end() {
    let (code, stderr) = check("FROM scratch\nRUN <<EOF\necho hi\n", &[], &[]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(stderr);
}

#[test]
fn lint_warnings_are_located_with_excerpts() {
    let dockerfile =
        "FROM scratch AS Build\nMAINTAINER me\nENV A 1\nCOPY secret.txt $MISSING/\nCMD run\n";
    let (code, stderr) = check(
        dockerfile,
        &[(".dockerignore", "secret.txt\n")],
        &["--build-arg", "UNUSED=1"],
    );
    assert_eq!(code, 1);
    insta::assert_snapshot!(stderr);
}

#[test]
fn unknown_target_lists_the_stages() {
    let (code, stderr) = check(
        "FROM scratch AS base\nFROM base AS final\n",
        &[],
        &["--target", "fianl"],
    );
    assert_eq!(code, 1);
    insta::assert_snapshot!(stderr);
}

#[test]
fn clean_dockerfile_passes() {
    let (code, stderr) = check("FROM scratch\nCOPY a /a\nCMD [\"/a\"]\n", &[], &[]);
    assert_eq!(
        (code, stderr.trim()),
        (0, "Check complete, no warnings found.")
    );
}

#[test]
fn malformed_build_arg_names_the_flag() {
    let (code, stderr) = check("FROM scratch\n", &[], &["--build-arg", "=x"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--build-arg \"=x\""), "{stderr}");
}

#[test]
fn columns_count_the_indentation_of_the_instruction() {
    let (_, stderr) = check("FROM scratch\n    COPY --chwon=1 a /a\n", &[], &[]);
    assert!(stderr.contains("Dockerfile:2:10"), "{stderr}");
    assert!(stderr.contains("  |          ^^^^^^^^^"), "{stderr}");
}
