//! `.dockerignore` rules: reading any file and matching any path must never panic (the matcher
//! is a hand-written regex engine, so libFuzzer's timeout also bounds its time), and the context
//! walker's shortcut must be sound: when `may_reinclude_below(dir)` says no, every clean path
//! below `dir` is excluded.
//!
//! Input: the ignore file, then after the first NUL the context paths to test, one a line.
#![no_main]

use imgb_frontend::ignore::IgnoreRules;
use libfuzzer_sys::fuzz_target;

/// A path the context walker could produce: relative, no empty, `.` or `..` components.
fn is_clean(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (ignore_file, paths) = text.split_once('\0').unwrap_or((text, ""));
    let Ok(rules) = IgnoreRules::parse(ignore_file) else {
        return;
    };
    // The context root itself is never excluded.
    assert!(!rules.is_excluded(""));
    let paths: Vec<&str> = paths.lines().take(64).collect();
    for dir in &paths {
        if rules.may_reinclude_below(dir) || !is_clean(dir) {
            continue;
        }
        for path in &paths {
            let below = path
                .strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'));
            if below && is_clean(path) {
                assert!(
                    rules.is_excluded(path),
                    "{path:?} is kept although the walker may skip {dir:?}"
                );
            }
        }
    }
});
