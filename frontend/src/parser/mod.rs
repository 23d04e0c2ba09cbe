//! Dockerfile text → AST, with BuildKit's parser behaviour: parser directives, line
//! continuations, comments, JSON (exec) form with the fallback to shell form, heredocs and flags.
//!
//! The AST is BuildKit's: one [`Node`] per instruction, its arguments already split the way the
//! instruction's line parser splits them (ENV and LABEL as name/value/separator triples,
//! HEALTHCHECK as type + command, ONBUILD as a nested node). [`Ast::dump`] prints it in
//! BuildKit's dump format, which the conformance golden files use.
//!
//! Invariants: parsing never panics; every error is a [`Diagnostic`] located on the lines of the
//! instruction it concerns; unknown instructions are kept (with no arguments) so that the
//! instruction layer can reject them with a hint.

mod directives;
mod dump;
mod heredoc;
mod line_parsers;

use crate::diagnostic::{Diagnostic, Span};
pub use directives::Directive;
use directives::DirectiveParser;
pub use heredoc::{chomp_heredoc_content, parse_heredoc_word};

/// The default escape token; `# escape=`` ` selects the backtick instead.
pub const DEFAULT_ESCAPE: char = '\\';

/// A heredoc attached to an instruction (`RUN <<EOF`, `COPY <<a.txt /dst`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// `3<<EOF` redirects file descriptor 3; 0 when none was given.
    pub file_descriptor: u32,
    /// False when any part of the delimiter was quoted: the content is taken literally.
    pub expand: bool,
    /// `<<-EOF`: leading tabs are stripped from the content and the delimiter line.
    pub chomp: bool,
    /// The body, every line with its line ending, the delimiter line excluded.
    pub content: String,
}

/// One instruction as parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The instruction name, lower-cased (`run`, `copy`, ...).
    pub keyword: String,
    /// `--name=value` flags in order, quotes and escapes removed.
    pub flags: Vec<String>,
    /// The arguments as the instruction's line parser split them.
    pub args: Vec<String>,
    /// The instruction ONBUILD wraps.
    pub sub: Option<Box<Node>>,
    /// True when the arguments came from the JSON (exec) form.
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
    /// The logical line after continuations were joined and comments removed.
    pub original: String,
    /// 1-based, inclusive: the physical lines this instruction (and its heredocs) spans.
    pub start_line: usize,
    /// Characters of indentation before the keyword on the first line (columns in
    /// `original` are off by this much from columns in the file).
    pub indent: usize,
    pub end_line: usize,
    /// The comment lines right before the instruction, without their `#`.
    pub comments: Vec<String>,
}

impl Node {
    /// The lines this node spans, for diagnostics.
    pub fn span(&self) -> Span {
        Span::lines(self.start_line, self.end_line)
    }

    /// The instruction keyword as the user wrote it (`Run`, `COPY`), for messages and lints.
    pub fn keyword_as_written(&self) -> &str {
        let text = self.original.trim_start();
        let end = text.find(char::is_whitespace).unwrap_or(text.len());
        &text[..end]
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    /// The parser directives found at the top (`syntax`, `escape`, `check`).
    pub directives: Vec<Directive>,
    pub escape: char,
    pub nodes: Vec<Node>,
    /// Parse-level warnings (empty continuation lines), located.
    pub warnings: Vec<Diagnostic>,
}

impl Ast {
    /// The value of a parser directive (`syntax`, `check`, `escape`), if given.
    pub fn directive(&self, name: &str) -> Option<&Directive> {
        self.directives
            .iter()
            .find(|directive| directive.name == name)
    }
}

/// One physical line: its number and its text with the line ending still attached.
struct PhysicalLine<'a> {
    number: usize,
    raw: &'a str,
}

/// Splits into physical lines, keeping each line's ending (heredoc bodies keep them verbatim).
fn physical_lines(source: &str) -> impl Iterator<Item = PhysicalLine<'_>> {
    source
        .split_inclusive('\n')
        .enumerate()
        .map(|(index, raw)| PhysicalLine {
            number: index + 1,
            raw,
        })
}

fn trim_newline(text: &str) -> &str {
    text.trim_end_matches(['\r', '\n'])
}

fn is_comment(raw: &str) -> bool {
    trim_newline(raw).trim_start().starts_with('#')
}

/// Parses a whole Dockerfile. Errors carry an excerpt of `source` (file name `Dockerfile`;
/// callers that know the real name re-attach it with [`Diagnostic::with_source`]).
pub fn parse(source: &str) -> Result<Ast, Diagnostic> {
    Parser::default()
        .run(source)
        .map_err(|error| error.with_source("Dockerfile", source))
}

#[derive(Default)]
struct Parser {
    directives: DirectiveParser,
    found: Vec<Directive>,
}

impl Parser {
    fn escape(&self) -> char {
        self.directives.escape()
    }

    /// Strips the line ending (and leading whitespace on an instruction's first line), feeds the
    /// directive parser, and drops a comment line to nothing.
    fn process_line<'a>(
        &mut self,
        line: &PhysicalLine<'a>,
        first_of_instruction: bool,
    ) -> Result<&'a str, Diagnostic> {
        let mut text = trim_newline(line.raw);
        if line.number == 1 {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        if first_of_instruction {
            text = text.trim_start();
        }
        if let Some(directive) = self
            .directives
            .parse_line(text, line.number)
            .map_err(|e| e.at(Span::lines(line.number, line.number)))?
        {
            self.found.push(directive);
        }
        Ok(if text.starts_with('#') { "" } else { text })
    }

    fn run(mut self, source: &str) -> Result<Ast, Diagnostic> {
        let mut lines = physical_lines(source).peekable();
        let mut nodes = Vec::new();
        let mut warnings = Vec::new();
        let mut comments = Vec::new();
        let mut last_line = 0;

        while let Some(line) = lines.next() {
            last_line = line.number;
            if is_comment(line.raw) {
                let text = trim_newline(line.raw).trim_start();
                comments.push(text[1..].trim().to_string());
            }
            let text = self.process_line(&line, true)?;
            let indent = trim_newline(line.raw).chars().count() - text.chars().count();
            let start_line = line.number;
            let (mut logical, mut complete) = trim_continuation(text, self.escape());
            if complete && logical.is_empty() {
                continue;
            }
            let mut empty_continuation_line = None;
            while !complete {
                let Some(next) = lines.next() else { break };
                last_line = next.number;
                let text = self.process_line(&next, false)?;
                if is_comment(next.raw) {
                    continue;
                }
                if text.trim_start().is_empty() {
                    empty_continuation_line.get_or_insert(next.number);
                    continue;
                }
                let (part, done) = trim_continuation(text, self.escape());
                logical.push_str(&part);
                complete = done;
            }
            if let Some(empty) = empty_continuation_line {
                warnings.push(
                    Diagnostic::warning("NoEmptyContinuation", "empty continuation line")
                        .at(Span::lines(empty, empty))
                        .with_hint("remove the blank line, or end the instruction before it: empty continuation lines will become errors"),
                );
            }

            let located = |error: Diagnostic| error.at_lines_if_unset(start_line, last_line);
            let mut node =
                line_parsers::node_from_line(&logical, self.escape()).map_err(located)?;
            node.comments = std::mem::take(&mut comments);
            if node.can_contain_heredoc() {
                for mut doc in heredoc::heredocs_in_line(&logical).map_err(located)? {
                    let mut terminated = false;
                    for body_line in lines.by_ref() {
                        last_line = body_line.number;
                        let mut candidate = trim_newline(body_line.raw);
                        if doc.chomp {
                            candidate = candidate.trim_start_matches('\t');
                        }
                        if candidate == doc.name {
                            terminated = true;
                            break;
                        }
                        doc.content.push_str(body_line.raw);
                    }
                    if !terminated {
                        return Err(Diagnostic::error(format!(
                            "unterminated heredoc: no line `{}` closes it",
                            doc.name
                        ))
                        .at(Span::lines(start_line, last_line))
                        .with_hint(format!(
                            "end the heredoc with a line containing only `{}`",
                            doc.name
                        )));
                    }
                    node.heredocs.push(doc);
                }
            }
            node.start_line = start_line;
            node.end_line = last_line;
            node.indent = indent;
            if let Some(sub) = node.sub.as_deref_mut() {
                sub.start_line = start_line;
                sub.end_line = last_line;
            }
            nodes.push(node);
        }

        if nodes.is_empty() {
            return Err(Diagnostic::error("file with no instructions")
                .at(Span::lines(last_line.max(1), last_line.max(1)))
                .with_hint("a Dockerfile needs at least a FROM instruction"));
        }
        Ok(Ast {
            escape: self.escape(),
            directives: self.found,
            nodes,
            warnings,
        })
    }
}

/// Removes a trailing escape token (a line continuation) and reports whether the line is
/// complete. As BuildKit: an escape token preceded by another escape token is not a
/// continuation, and trailing spaces and tabs after it are ignored.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    if let Some(before) = trimmed.strip_suffix(escape)
        && !before.ends_with(escape)
    {
        return (before.to_string(), false);
    }
    (line.to_string(), true)
}

#[cfg(test)]
mod tests;
