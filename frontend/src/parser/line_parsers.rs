//! Per-instruction argument splitting, as BuildKit's line parsers do it: the command word, its
//! leading `--flags`, then the rest split by the rule of that instruction.

use super::Node;
use crate::diagnostic::Diagnostic;

/// How an instruction's argument text is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Splitter {
    /// JSON array, else whitespace-separated words (ADD, COPY, VOLUME).
    MaybeJsonToList,
    /// JSON array, else the whole text as one argument (RUN, CMD, ENTRYPOINT, SHELL).
    MaybeJson,
    /// `name=value ...`, or the legacy `name value` (ENV, LABEL).
    NameValue,
    /// `name` or `name=value` words (ARG).
    NameOrNameValue,
    /// Whitespace-separated words (FROM, EXPOSE).
    Whitespace,
    /// The whole text as one argument (MAINTAINER, STOPSIGNAL, USER, WORKDIR).
    Whole,
    /// A type word, then a RUN-like command (HEALTHCHECK).
    Health,
    /// A nested instruction (ONBUILD).
    SubCommand,
    /// Unknown instructions keep no arguments; the instruction layer rejects them.
    Ignore,
}

fn splitter_for(keyword: &str) -> Splitter {
    match keyword {
        "add" | "copy" | "volume" => Splitter::MaybeJsonToList,
        "run" | "cmd" | "entrypoint" | "shell" => Splitter::MaybeJson,
        "env" | "label" => Splitter::NameValue,
        "arg" => Splitter::NameOrNameValue,
        "from" | "expose" => Splitter::Whitespace,
        "maintainer" | "stopsignal" | "user" | "workdir" => Splitter::Whole,
        "healthcheck" => Splitter::Health,
        "onbuild" => Splitter::SubCommand,
        _ => Splitter::Ignore,
    }
}

/// BuildKit's whitespace class for separating words: space, tab, vertical tab, form feed, CR.
fn is_word_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}' | '\r')
}

/// Splits on runs of separator characters (empty pieces dropped, as `strings.Fields`-like
/// splitting of an already trimmed text gives).
fn split_whitespace_runs(text: &str) -> Vec<String> {
    text.split(is_word_separator)
        .filter(|word| !word.is_empty())
        .map(str::to_string)
        .collect()
}

/// Builds the node for one logical line.
pub(super) fn node_from_line(line: &str, escape: char) -> Result<Node, Diagnostic> {
    let trimmed = line.trim();
    let (command, rest) = match trimmed.find(is_word_separator) {
        Some(at) => (
            &trimmed[..at],
            trimmed[at..].trim_start_matches(is_word_separator),
        ),
        None => (trimmed, ""),
    };
    let keyword = command.to_lowercase();
    let (flags, rest) = if rest.is_empty() {
        (Vec::new(), "")
    } else {
        extract_flags(rest)
    };
    let rest = rest.trim();
    let mut node = Node {
        keyword,
        flags,
        original: line.to_string(),
        ..Node::default()
    };
    match splitter_for(&node.keyword) {
        Splitter::MaybeJsonToList => {
            (node.args, node.json) = match parse_json(rest)? {
                Some(args) => (args, true),
                None => (split_whitespace_runs(rest), false),
            }
        }
        Splitter::MaybeJson => (node.args, node.json) = parse_maybe_json(rest)?,
        Splitter::NameValue => node.args = parse_name_value(rest, &node.keyword, escape)?,
        Splitter::NameOrNameValue => node.args = parse_words(rest, escape),
        Splitter::Whitespace => node.args = split_whitespace_runs(rest),
        Splitter::Whole => {
            if !rest.is_empty() {
                node.args.push(rest.to_string());
            }
        }
        Splitter::Health => (node.args, node.json) = parse_health(rest)?,
        Splitter::SubCommand => {
            if !rest.is_empty() {
                node.sub = Some(Box::new(node_from_line(rest, escape)?));
            }
        }
        Splitter::Ignore => {}
    }
    Ok(node)
}

impl Node {
    /// RUN, COPY and ADD in shell form may carry heredocs, also when wrapped in ONBUILD.
    pub(super) fn can_contain_heredoc(&self) -> bool {
        let node = match (&self.keyword[..], &self.sub) {
            ("onbuild", Some(sub)) => sub,
            _ => self,
        };
        matches!(&node.keyword[..], "run" | "copy" | "add") && !node.json
    }
}

/// Splits the leading `--flag[=value]` words off `line`. Quotes and backslash escapes inside a
/// flag are resolved; a lone `--` ends the flags and is dropped.
fn extract_flags(line: &str) -> (Vec<String>, &str) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut flags = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut phase = Phase::Spaces;
    let mut chars = line.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match phase {
            Phase::Spaces => {
                if c.is_whitespace() {
                    continue;
                }
                if !line[at..].starts_with("--") {
                    return (flags, &line[at..]);
                }
                phase = Phase::Word;
            }
            Phase::Word | Phase::Quote(_) => {}
        }
        match phase {
            Phase::Word => {
                if c.is_whitespace() {
                    if word == "--" {
                        return (flags, &line[at..]);
                    }
                    if blank_ok || !word.is_empty() {
                        flags.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                    phase = Phase::Spaces;
                } else if c == '\'' || c == '"' {
                    blank_ok = true;
                    phase = Phase::Quote(c);
                } else if c == '\\' {
                    if let Some((_, escaped)) = chars.next() {
                        word.push(escaped);
                    }
                } else {
                    word.push(c);
                }
            }
            Phase::Quote(quote) => {
                if c == quote {
                    phase = Phase::Word;
                } else if c == '\\' {
                    match chars.next() {
                        Some((_, escaped)) => word.push(escaped),
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(c);
                }
            }
            Phase::Spaces => {}
        }
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        flags.push(word);
    }
    (flags, "")
}

/// `Some(strings)` when `rest` is a JSON array of strings; `None` when it is not JSON (the
/// caller falls back to the shell form); an error when it is a JSON array holding non-strings.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, Diagnostic> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|value| match value {
            serde_json::Value::String(text) => Ok(text),
            _ => Err(Diagnostic::error(
                "when using JSON array syntax, arrays must be comprised of strings only",
            )
            .with_hint("quote every element, e.g. [\"echo\", \"hello\"]")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn parse_maybe_json(rest: &str) -> Result<(Vec<String>, bool), Diagnostic> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    Ok(match parse_json(rest)? {
        Some(args) => (args, true),
        None => (vec![rest.to_string()], false),
    })
}

/// HEALTHCHECK: the first word is the type (`CMD`, `NONE`, ...), the rest is RUN-like.
fn parse_health(rest: &str) -> Result<(Vec<String>, bool), Diagnostic> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    let type_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (kind, command) = rest.split_at(type_end);
    let (mut command_args, json) = parse_maybe_json(command.trim_start())?;
    command_args.insert(0, kind.to_string());
    Ok((command_args, json))
}

/// Splits into words on whitespace, keeping quotes and escape tokens in the words (they are
/// resolved later by word expansion). An escape token at the very end is dropped.
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if !in_word {
            if c.is_whitespace() {
                continue;
            }
            in_word = true;
        }
        match quote {
            None => {
                if c.is_whitespace() {
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    in_word = false;
                    continue;
                }
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    blank_ok = true;
                }
                if c == escape {
                    let Some(next) = chars.next() else { continue };
                    word.push(c);
                    word.push(next);
                    continue;
                }
                word.push(c);
            }
            Some(open) => {
                if c == open {
                    quote = None;
                }
                if c == escape && open != '\'' {
                    let Some(next) = chars.next() else {
                        quote = None;
                        continue;
                    };
                    word.push(c);
                    word.push(next);
                    continue;
                }
                word.push(c);
            }
        }
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// ENV and LABEL: `name=value ...` (separator `=`) or the legacy `name value` (separator ``).
fn parse_name_value(rest: &str, keyword: &str, escape: char) -> Result<Vec<String>, Diagnostic> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    let upper = keyword.to_uppercase();
    if !first.contains('=') {
        let mut parts = rest.splitn(2, is_word_separator);
        let name = parts.next().unwrap_or_default();
        let Some(value) = parts.next() else {
            return Err(
                Diagnostic::error(format!("{upper} must have two arguments"))
                    .with_hint(format!("write `{upper} {name}=value`")),
            );
        };
        let value = value.trim_start_matches(is_word_separator);
        return Ok(vec![name.to_string(), value.to_string(), String::new()]);
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(Diagnostic::error(format!(
                "Syntax error - can't find = in \"{word}\". Must be of the form: name=value"
            ))
            .with_hint(format!(
                "in the `{upper} name=value` form every word needs an `=`; quote values with spaces"
            )));
        };
        args.extend([name.to_string(), value.to_string(), "=".to_string()]);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_stop_at_first_plain_word_and_at_double_dash() {
        assert_eq!(
            extract_flags("--a=1 --b foo --c"),
            (vec!["--a=1".into(), "--b".into()], "foo --c")
        );
        assert_eq!(extract_flags("--a -- --b"), (vec!["--a".into()], " --b"));
        assert_eq!(
            extract_flags("--m=\"x y\" z"),
            (vec!["--m=x y".into()], "z")
        );
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(
            parse_words(r#"a="b c" d\ e 'f\'"#, '\\'),
            vec![r#"a="b c""#, r"d\ e", r"'f\'"]
        );
    }

    #[test]
    fn legacy_env_keeps_rest_of_line_as_value() {
        assert_eq!(
            parse_name_value("A  b c", "env", '\\').unwrap(),
            vec!["A", "b c", ""]
        );
    }
}
