//! Finding heredocs (`<<EOF`, `<<-EOF`, `3<<"EOF"`) in an instruction line, as BuildKit does:
//! the line is split into shell words with quotes and escapes kept, and each word of the form
//! `[fd]<<[-]DELIM` opens one heredoc, in order.

use super::Heredoc;
use crate::diagnostic::Diagnostic;
use crate::shell::{Lexer, ShellError};
use std::collections::BTreeMap;

/// Heredoc detection expands nothing: unset variables are kept as written.
const NO_ENV: &BTreeMap<String, String> = &BTreeMap::new();

/// The heredocs a line opens, bodies still empty.
pub(super) fn heredocs_in_line(line: &str) -> Result<Vec<Heredoc>, Diagnostic> {
    let words_lexer = Lexer::new('\\')
        .raw_quotes(true)
        .raw_escapes(true)
        .skip_unset_env(true);
    // A line that does not lex (an unterminated quote) simply holds no heredocs, as in BuildKit.
    let words = words_lexer.expand_words(line, NO_ENV).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc_word(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Parses one `[fd]<<[-]DELIM` word; `None` when the word is not a heredoc opener.
pub fn parse_heredoc_word(word: &str) -> Result<Option<Heredoc>, Diagnostic> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (fd, rest) = word.split_at(digits);
    let Some(rest) = rest.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, delimiter) = match rest.strip_prefix('-') {
        Some(delimiter) => (true, delimiter),
        None => (false, rest),
    };
    if delimiter.is_empty() || delimiter.contains('<') {
        return Ok(None);
    }
    let lexer = Lexer::new('\\').skip_unset_env(true);
    let lex_error = |error: ShellError| {
        Diagnostic::error(format!("invalid heredoc delimiter `{delimiter}`: {error}"))
    };
    let unquoted = lexer
        .clone()
        .expand_words(delimiter, NO_ENV)
        .map_err(lex_error)?;
    let [name] = unquoted.as_slice() else {
        return Ok(None);
    };
    let raw = lexer
        .raw_quotes(true)
        .expand_words(delimiter, NO_ENV)
        .map_err(lex_error)?;
    let [raw_name] = raw.as_slice() else {
        return Err(Diagnostic::error(format!(
            "internal lexing of heredoc produced inconsistent results: {delimiter}"
        )));
    };
    let quotes = |text: &str| text.chars().filter(|c| matches!(c, '\'' | '"')).count();
    Ok(Some(Heredoc {
        name: name.clone(),
        // Out-of-range descriptors become 0, as BuildKit's ignored ParseUint error gives.
        file_descriptor: fd.parse().unwrap_or(0),
        expand: quotes(name) == quotes(raw_name),
        chomp,
        content: String::new(),
    }))
}

/// `<<-` bodies: leading tabs removed from every line.
pub fn chomp_heredoc_content(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}
