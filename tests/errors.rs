//! How `imgb build` fails: every error class exits non-zero and names what is wrong — a
//! Dockerfile problem with its file, line and excerpt (and a hint where one helps), a bad
//! command-line value with the flag it came from.

mod support;

use support::{BASE, TestContext, shared_root, stderr};

/// Builds `dockerfile` with `args`; it must fail. Its stderr.
fn failure(dockerfile: &str, args: &[&str]) -> String {
    let Some(root) = shared_root() else {
        return String::new();
    };
    let context = TestContext::new(dockerfile, &[("present.txt", "here\n")]);
    let output = context.build(root, args);
    let text = stderr(&output);
    assert!(!output.status.success(), "the build succeeded:\n{text}");
    text
}

/// Asserts that `text` holds every one of `expected`.
fn assert_mentions(text: &str, expected: &[&str]) {
    for needle in expected {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn parse_errors_show_the_line_and_a_hint() {
    let text = failure(&format!("FROM {BASE}\nENV\n"), &[]);
    assert_mentions(
        &text,
        &[
            "ENV requires at least one argument",
            "Dockerfile:2",
            "2 | ENV",
            "hint:",
        ],
    );
    let text = failure(&format!("FROM {BASE}\nRUN <<EOF\necho hi\n"), &[]);
    assert_mentions(&text, &["unterminated heredoc", "Dockerfile:2", "hint:"]);
    let text = failure(&format!("FROM {BASE}\nCOPY --chwon=1 present.txt /\n"), &[]);
    assert_mentions(
        &text,
        &[
            "unknown flag: --chwon",
            "Dockerfile:2",
            "did you mean --chown?",
        ],
    );
}

#[test]
fn unknown_instruction_suggests_the_near_one() {
    let text = failure(&format!("FROM {BASE}\nFORM x\n"), &[]);
    assert_mentions(
        &text,
        &[
            "unknown instruction: FORM",
            "Dockerfile:2",
            "2 | FORM x",
            "did you mean FROM?",
        ],
    );
}

#[test]
fn missing_copy_source_names_the_file_and_the_line() {
    let text = failure(
        &format!("FROM {BASE}\nCOPY present.txt nosuch.txt /dir/\n"),
        &[],
    );
    assert_mentions(
        &text,
        &[
            "nosuch.txt",
            "does not exist in the build context",
            "Dockerfile:2",
            "2 | COPY present.txt nosuch.txt /dir/",
        ],
    );
}

#[test]
fn failing_run_reports_exit_code_last_output_and_the_line() {
    let text = failure(
        &format!("FROM {BASE}\nRUN echo early line; echo about to fail; exit 3\n"),
        &[],
    );
    assert_mentions(
        &text,
        &[
            "about to fail",
            "exit code: 3",
            "Dockerfile:2",
            "2 | RUN echo early line",
        ],
    );
}

#[test]
fn missing_stage_in_from_points_at_the_copy() {
    let text = failure(
        &format!("FROM {BASE} AS build\nFROM {BASE}\nCOPY --from=biuld /x /x\n"),
        &[],
    );
    assert_mentions(
        &text,
        &["biuld", "Dockerfile:3", "3 | COPY --from=biuld /x /x"],
    );
}

#[test]
fn bad_flag_values_name_the_flag() {
    let dockerfile = format!("FROM {BASE}\nRUN true\n");
    for (args, expected) in [
        (&["--build-arg", "=value"][..], "--build-arg"),
        (&["-o", "type=bogus"][..], "-o type=bogus"),
        (&["-o", "type=local"][..], "needs dest="),
        (
            &["-o", "type=oci,compression=lz4,dest=x"][..],
            "compression",
        ),
        (&["--secret", "id=x,bogus=1"][..], "--secret id=x,bogus=1"),
        (
            &["--secret", "id=x,src=/nonexistent/secret"][..],
            "/nonexistent/secret",
        ),
        (&["-t", "Bad Name"][..], "-t Bad Name"),
        (&["--target", "nosuchstage"][..], "nosuchstage"),
    ] {
        let text = failure(&dockerfile, args);
        assert_mentions(&text, &["error", expected]);
    }
}

#[test]
fn missing_base_image_is_a_located_error_with_a_hint() {
    let text = failure("FROM nosuchimage:1\nRUN true\n", &[]);
    assert_mentions(&text, &["nosuchimage:1", "Dockerfile:1", "imgb load"]);
}
