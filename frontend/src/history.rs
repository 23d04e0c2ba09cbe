//! The `created_by` text of image history entries, as BuildKit's `commitToHistory` writes it:
//! the instruction after expansion in a normalized form (not the Dockerfile line), with
//! ` # buildkit` after the steps that change the filesystem (RUN, COPY, ADD). A RUN names the
//! full command it ran, prefixed by the build args its stage declared (`|N K=V ... argv`);
//! CMD and ENTRYPOINT show their argv Go-quoted, VOLUME and SHELL as Go prints a list.
//!
//! Invariant: only values the image already shows (or that BuildKit shows) appear; RUN's build
//! args are listed because BuildKit lists them.

use crate::instructions::{KeyValue, SourcesAndDest, TransferOptions};

/// What BuildKit appends to entries of steps that produce a layer through the solver.
const SOLVED_STEP: &str = " # buildkit";

/// `RUN [|N K=V ...] argv # buildkit`: `build_args` are the stage's declared ARGs in
/// declaration order with the values the step saw.
pub fn run(argv: &[String], build_args: &[(String, String)]) -> String {
    let mut words: Vec<String> = Vec::new();
    if !build_args.is_empty() {
        words.push(format!("|{}", build_args.len()));
        words.extend(
            build_args
                .iter()
                .map(|(key, value)| format!("{key}={value}")),
        );
    }
    words.extend(argv.iter().cloned());
    format!("RUN {}{SOLVED_STEP}", words.join(" "))
}

/// `COPY|ADD [--parents] [--chown=X] [--chmod=X] SRC... [<<HEREDOC...] DEST # buildkit`;
/// `--from`, `--link` and `--exclude` are not recorded, as in BuildKit.
pub fn transfer(
    keyword: &str,
    files: &SourcesAndDest,
    options: &TransferOptions,
    parents: bool,
) -> String {
    let mut text = keyword.to_string();
    if parents {
        text.push_str(" --parents");
    }
    if let Some(chown) = &options.chown {
        text.push_str(&format!(" --chown={chown}"));
    }
    if let Some(chmod) = &options.chmod {
        text.push_str(&format!(" --chmod={chmod}"));
    }
    for source in &files.sources {
        text.push(' ');
        text.push_str(source);
    }
    for inline in &files.inline_sources {
        text.push_str(" <<");
        text.push_str(&inline.path);
    }
    format!("{text} {}{SOLVED_STEP}", files.dest)
}

/// `ENV k=v ...` / `LABEL k=v ...`: values unquoted, as BuildKit's `KeyValuePair.String`.
pub fn key_values(keyword: &str, pairs: &[KeyValue]) -> String {
    let pairs: Vec<String> = pairs
        .iter()
        .map(|pair| format!("{}={}", pair.key, pair.value))
        .collect();
    format!("{keyword} {}", pairs.join(" "))
}

/// Go's `%q` of a string list: `["a" "b c"]`.
pub fn go_quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| go_quote(item)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%v` of a string list: `[a b c]`.
pub fn go_list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let items: Vec<&str> = items.into_iter().map(String::as_str).collect();
    format!("[{}]", items.join(" "))
}

/// Go's `strconv.Quote`: double quotes, backslash escapes for `"`, `\` and control characters.
fn go_quote(text: &str) -> String {
    let mut quoted = String::from("\"");
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            '\u{7}' => quoted.push_str("\\a"),
            '\u{8}' => quoted.push_str("\\b"),
            '\u{c}' => quoted.push_str("\\f"),
            '\u{b}' => quoted.push_str("\\v"),
            control if control.is_control() => match u32::from(control) {
                code @ 0..=0xff => quoted.push_str(&format!("\\x{code:02x}")),
                code @ 0x100..=0xffff => quoted.push_str(&format!("\\u{code:04x}")),
                code => quoted.push_str(&format!("\\U{code:08x}")),
            },
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lists_build_args_before_the_argv() {
        let argv = ["/bin/sh", "-c", "echo hi"].map(String::from);
        assert_eq!(run(&argv, &[]), "RUN /bin/sh -c echo hi # buildkit");
        let args = [
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), String::new()),
        ];
        assert_eq!(
            run(&argv, &args),
            "RUN |2 A=1 B= /bin/sh -c echo hi # buildkit"
        );
    }

    #[test]
    fn go_quoting_matches_strconv_quote() {
        let items = ["/bin/sh", "echo \"a b\"\n", "tab\there", "\u{1}"].map(String::from);
        assert_eq!(
            go_quoted_list(&items),
            r#"["/bin/sh" "echo \"a b\"\n" "tab\there" "\x01"]"#
        );
        assert_eq!(go_list(&items[..1]), "[/bin/sh]");
    }
}
