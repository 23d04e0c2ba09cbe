//! `imgb debug dump-ast` prints exactly BuildKit's dump for every golden file, and fails with a
//! located diagnostic on input BuildKit rejects.

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn dump_ast(dockerfile: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgb"))
        .args(["debug", "dump-ast"])
        .arg(dockerfile)
        .output()
        .expect("imgb runs")
}

#[test]
fn dump_ast_matches_every_buildkit_result_file() {
    let Some(root) = support::buildkit_dockerfile_dir() else {
        return;
    };
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("parser/testfiles")).expect("testfiles dir") {
        let case = entry.expect("entry").path();
        let output = dump_ast(&case.join("Dockerfile"));
        let expected = std::fs::read(case.join("result")).expect("result file");
        assert!(
            output.status.success(),
            "{}: {}",
            case.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&expected),
            "{}",
            case.display()
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} cases found");
}

#[test]
fn dump_ast_fails_with_the_line_on_negative_cases() {
    let Some(root) = support::buildkit_dockerfile_dir() else {
        return;
    };
    for entry in std::fs::read_dir(root.join("parser/testfiles-negative")).expect("negative dir") {
        let case = entry.expect("entry").path();
        let dockerfile = case.join("Dockerfile");
        let output = dump_ast(&dockerfile);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{} was accepted", case.display());
        assert!(
            output.stdout.is_empty(),
            "{}: printed a tree",
            case.display()
        );
        let located = format!("--> {}:", dockerfile.display());
        assert!(
            stderr.contains(&located),
            "{}: no location in:\n{stderr}",
            case.display()
        );
    }
}

#[test]
fn dump_ast_reports_a_missing_file_by_name() {
    let output = dump_ast(Path::new("/nonexistent/Dockerfile"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/Dockerfile"));
}
