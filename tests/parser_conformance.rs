//! BuildKit's parser golden files: every `testfiles/*/Dockerfile` dumps to its `result`, every
//! `testfiles-negative/*/Dockerfile` is rejected.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_buildkit_testfile_dumps_to_its_result() {
    let Some(root) = support::buildkit_dockerfile_dir() else {
        return;
    };
    let cases = cases(&root.join("parser/testfiles"));
    assert!(
        cases.len() >= 30,
        "expected BuildKit's parser testfiles, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let source = fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile is UTF-8");
        let expected = fs::read_to_string(case.join("result")).expect("result file");
        match imgb_frontend::parser::parse(&source) {
            Ok(ast) if ast.dump() == expected => {}
            Ok(ast) => failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{}",
                case.display(),
                ast.dump()
            )),
            Err(error) => failures.push(format!("{}: unexpected error:\n{error}", case.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_buildkit_negative_testfile_is_rejected() {
    let Some(root) = support::buildkit_dockerfile_dir() else {
        return;
    };
    let cases = cases(&root.join("parser/testfiles-negative"));
    assert!(
        !cases.is_empty(),
        "expected BuildKit's negative parser testfiles"
    );
    for case in &cases {
        let source = fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile is UTF-8");
        let error = imgb_frontend::parser::parse(&source)
            .err()
            .unwrap_or_else(|| panic!("{} parsed, but BuildKit rejects it", case.display()));
        assert!(
            error.line().is_some(),
            "{}: the error names no line: {error}",
            case.display()
        );
    }
}

/// Guards the contract of `support::shared_dir`: without `../shared`, a user's clone skips the
/// conformance tests with a notice, and CI fails them.
#[test]
fn missing_shared_dir_skips_with_a_notice_locally_and_fails_under_ci() {
    let run = |ci: bool| {
        let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
        command
            .args([
                "--exact",
                "every_buildkit_testfile_dumps_to_its_result",
                "--nocapture",
            ])
            .env("IMGB_SHARED_DIR", "/nonexistent/imgb-shared")
            .env_remove("CI");
        if ci {
            command.env("CI", "true");
        }
        command.output().expect("test binary runs")
    };
    let local = run(false);
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    assert!(
        String::from_utf8_lossy(&local.stderr).contains("notice:"),
        "no notice printed"
    );
    assert!(
        !run(true).status.success(),
        "a missing ../shared must fail under CI"
    );
}
