//! Diagnostics users can act on: what is wrong, where (file, line, column, excerpt), and a hint.

use imgb_builder::ignore::{IgnoreError, PatternLocation};
use std::fmt;

/// A 1-based position in the Dockerfile. `column` counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// A range of source, inclusive of both lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: Position,
    pub end: Position,
}

impl Span {
    /// The span of whole lines `start..=end` (columns unknown: the excerpt marks no columns).
    pub fn lines(start: usize, end: usize) -> Self {
        Span {
            start: Position {
                line: start,
                column: 0,
            },
            end: Position {
                line: end,
                column: 0,
            },
        }
    }

    /// A span on one line, from `column` for `len` characters (both 1-based, `len` ≥ 1).
    pub fn at(line: usize, column: usize, len: usize) -> Self {
        Span {
            start: Position { line, column },
            end: Position {
                line,
                column: column + len.max(1) - 1,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One source line quoted in a diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcerptLine {
    pub number: usize,
    pub text: String,
}

/// An error or lint warning about a Dockerfile (or an ignore file, or a build option).
///
/// Created with [`Diagnostic::error`] / [`Diagnostic::warning`], located with [`Diagnostic::at`],
/// and given its file name and excerpt with [`Diagnostic::with_source`] by the public entry
/// points, so every diagnostic that reaches a user can be printed on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The lint rule's name (`LegacyKeyValueFormat`, ...) for warnings; `None` for errors.
    pub rule: Option<&'static str>,
    pub message: String,
    pub span: Option<Span>,
    pub hint: Option<String>,
    /// The file name shown to the user, e.g. `Dockerfile`.
    pub file: Option<String>,
    pub excerpt: Vec<ExcerptLine>,
}

/// At most this many lines of a multi-line span are quoted.
const MAX_EXCERPT_LINES: usize = 6;

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            rule: None,
            message: message.into(),
            span: None,
            hint: None,
            file: None,
            excerpt: Vec::new(),
        }
    }

    pub fn warning(rule: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            rule: Some(rule),
            ..Diagnostic::error(message)
        }
    }

    #[must_use]
    pub fn at(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }

    /// Locates the diagnostic on whole lines, unless it already has a more precise span.
    #[must_use]
    pub fn at_lines_if_unset(self, start: usize, end: usize) -> Self {
        if self.span.is_some() {
            self
        } else {
            self.at(Span::lines(start, end))
        }
    }

    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Names the file and quotes the lines the span covers from `source`.
    #[must_use]
    pub fn with_source(mut self, file: &str, source: &str) -> Self {
        self.file = Some(file.to_string());
        self.excerpt.clear();
        if let Some(span) = self.span {
            let first = span.start.line.max(1);
            let last = span.end.line.max(first).min(first + MAX_EXCERPT_LINES - 1);
            self.excerpt = source
                .lines()
                .enumerate()
                .skip(first - 1)
                .take(last + 1 - first)
                .map(|(index, text)| ExcerptLine {
                    number: index + 1,
                    text: text.trim_end_matches('\r').to_string(),
                })
                .collect();
        }
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub fn line(&self) -> Option<usize> {
        self.span.map(|span| span.start.line)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.rule {
            Some(rule) => write!(f, "{label}[{rule}]: {}", self.message)?,
            None => write!(f, "{label}: {}", self.message)?,
        }
        let file = self.file.as_deref().unwrap_or("Dockerfile");
        if let Some(span) = self.span {
            if span.start.column > 0 {
                write!(
                    f,
                    "\n  --> {file}:{}:{}",
                    span.start.line, span.start.column
                )?;
            } else {
                write!(f, "\n  --> {file}:{}", span.start.line)?;
            }
        }
        if !self.excerpt.is_empty() {
            let width = self
                .excerpt
                .iter()
                .map(|l| l.number.to_string().len())
                .max()
                .unwrap_or(1);
            write!(f, "\n{:width$} |", "")?;
            for line in &self.excerpt {
                write!(f, "\n{:>width$} | {}", line.number, line.text)?;
            }
            if let Some(span) = self.span
                && span.start.column > 0
                && span.start.line == span.end.line
            {
                let pad = span.start.column - 1;
                let len = span.end.column.saturating_sub(span.start.column) + 1;
                write!(f, "\n{:width$} | {:pad$}{}", "", "", "^".repeat(len))?;
            }
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// An invalid `.dockerignore` line, as a diagnostic on that line.
impl From<IgnoreError> for Diagnostic {
    fn from(error: IgnoreError) -> Self {
        let diagnostic = Diagnostic::error(format!(
            "invalid ignore pattern `{}`: {}",
            error.pattern, error.problem
        ))
        .with_hint(error.problem.hint());
        match error.location {
            PatternLocation::Line(line) => diagnostic.at(Span::lines(line, line)),
            PatternLocation::ListItem(_) => diagnostic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgb_builder::ignore::IgnoreRules;

    #[test]
    fn renders_file_line_excerpt_and_hint() {
        let source = "FROM busybox\nFORM x\nRUN true\n";
        let diagnostic = Diagnostic::error("unknown instruction: FORM")
            .at(Span::at(2, 1, 4))
            .with_hint("did you mean FROM?")
            .with_source("Dockerfile", source);
        assert_eq!(
            diagnostic.to_string(),
            "error: unknown instruction: FORM\n  --> Dockerfile:2:1\n  |\n2 | FORM x\n  | ^^^^\n  = hint: did you mean FROM?"
        );
    }

    #[test]
    fn errors_become_located_diagnostics_with_hints() {
        let text = "# header\nnode_modules\nsrc/[a\n";
        let error = IgnoreRules::parse(text).expect_err("unclosed class");
        assert_eq!(error.location, PatternLocation::Line(3));
        let diagnostic = Diagnostic::from(error).with_source(".dockerignore", text);
        assert_eq!(
            diagnostic.to_string(),
            "error: invalid ignore pattern `src/[a`: a `[` character class is never closed\n  --> \
             .dockerignore:3\n  |\n3 | src/[a\n  = hint: write `\\[` to match a literal `[`"
        );
    }
}
