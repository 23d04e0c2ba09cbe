//! BuildKit's shell-lexer conformance files (`frontend/dockerfile/shell/envVarTest` and
//! `wordsTest`) run through `imgb_frontend::shell`, with the semantics of BuildKit's
//! `lex_test.go`. Every failing line is reported with its line number.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imgb_frontend::shell::Lexer;

fn shell_data(file: &str) -> Option<(PathBuf, String)> {
    let path = support::buildkit_dockerfile_dir()?.join("shell").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    Some((path, text))
}

fn assert_no_failures(path: &Path, checked: usize, failures: &[String]) {
    assert!(checked > 0, "{}: no line was checked", path.display());
    assert!(
        failures.is_empty(),
        "{} of {checked} lines of {} failed:\n{}",
        failures.len(),
        path.display(),
        failures.join("\n")
    );
}

/// `PLATFORM|INPUT|EXPECTED`: one word expanded with `\` as the escape token; `W` lines are
/// Windows-only and skipped; `error` means the expansion must fail.
#[test]
fn buildkit_env_var_test_lines_expand_as_in_buildkit() {
    let Some((path, text)) = shell_data("envVarTest") else {
        return;
    };
    let env: BTreeMap<String, String> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .iter()
    .map(|&(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    let lexer = Lexer::new('\\');
    let mut checked = 0;
    let mut failures = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw_line.trim();
        if raw_line.starts_with('#') || line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [platform, input, expected] = fields[..] else {
            failures.push(format!(
                "line {number}: expected 3 fields separated by `|`: {raw_line:?}"
            ));
            continue;
        };
        match platform {
            "W" => continue,
            "A" | "U" => {}
            _ => {
                failures.push(format!(
                    "line {number}: unknown platform {platform:?} (A, U or W)"
                ));
                continue;
            }
        }
        checked += 1;
        match (lexer.expand_word(input, &env), expected) {
            (Err(_), "error") => {}
            (Ok(expansion), "error") => {
                failures.push(format!(
                    "line {number}: {input:?} should fail but gave {:?}",
                    expansion.value
                ));
            }
            (Ok(expansion), _) if expansion.value == expected => {}
            (Ok(expansion), _) => {
                failures.push(format!(
                    "line {number}: {input:?} gave {:?}, expected {expected:?}",
                    expansion.value
                ));
            }
            (Err(error), _) => failures.push(format!(
                "line {number}: {input:?} failed ({error}), expected {expected:?}"
            )),
        }
    }
    assert_no_failures(&path, checked, &failures);
}

/// `INPUT | w1,w2,...`: expanded and split into words; `ENV name=value` lines add to the
/// environment of the lines after them; the word list `error` means the split must fail.
#[test]
fn buildkit_words_test_lines_split_as_in_buildkit() {
    let Some((path, text)) = shell_data("wordsTest") else {
        return;
    };
    let lexer = Lexer::new('\\');
    let mut env = BTreeMap::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.starts_with('#') {
            continue;
        }
        if let Some(definition) = line.strip_prefix("ENV ") {
            let definition = definition.trim_start_matches(' ');
            let (name, value) = definition.split_once('=').unwrap_or((definition, ""));
            env.insert(name.to_owned(), value.to_owned());
            continue;
        }
        let [input, expected] = line.split('|').collect::<Vec<_>>()[..] else {
            failures.push(format!("line {number}: expected exactly one `|`: {line:?}"));
            continue;
        };
        let input = input.trim();
        // Trailing spaces of the expected side are significant.
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        checked += 1;
        let words = lexer
            .expand_words(input, &env)
            .unwrap_or_else(|_| vec!["error".to_owned()]);
        if words != expected {
            failures.push(format!(
                "line {number}: {input:?} gave {words:?}, expected {expected:?}"
            ));
        }
    }
    assert_no_failures(&path, checked, &failures);
}
