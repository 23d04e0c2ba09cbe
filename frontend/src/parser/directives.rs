//! Parser directives (`# syntax=`, `# escape=`, `# check=`): only in the comment lines at the very
//! top; the first line that is not a directive ends them, and each may appear once.

use super::DEFAULT_ESCAPE;
use crate::diagnostic::Diagnostic;

const KNOWN: [&str; 3] = ["syntax", "escape", "check"];

/// A parser directive found at the top of the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name: `syntax`, `escape` or `check`.
    pub name: String,
    pub value: String,
    pub line: usize,
}

#[derive(Debug)]
pub(super) struct DirectiveParser {
    escape: char,
    done: bool,
    seen: Vec<String>,
}

impl Default for DirectiveParser {
    fn default() -> Self {
        DirectiveParser {
            escape: DEFAULT_ESCAPE,
            done: false,
            seen: Vec::new(),
        }
    }
}

impl DirectiveParser {
    pub(super) fn escape(&self) -> char {
        self.escape
    }

    /// Looks at one line (line ending removed). Returns the directive it holds, if any.
    pub(super) fn parse_line(
        &mut self,
        text: &str,
        line: usize,
    ) -> Result<Option<Directive>, Diagnostic> {
        if self.done {
            return Ok(None);
        }
        let Some((name, value)) = text.strip_prefix('#').and_then(split_directive) else {
            self.done = true;
            return Ok(None);
        };
        let name = name.to_ascii_lowercase();
        if !KNOWN.contains(&name.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&name) {
            return Err(
                Diagnostic::error(format!("only one {name} parser directive can be used"))
                    .with_hint("remove the repeated directive"),
            );
        }
        if name == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(Diagnostic::error(format!(
                        "invalid escape token '{other}' does not match ` or \\"
                    ))
                    .with_hint("use `# escape=\\` (the default) or ``# escape=` ``"));
                }
            };
        }
        self.seen.push(name.clone());
        Ok(Some(Directive {
            name,
            value: value.to_string(),
            line,
        }))
    }
}

/// Splits `  name = value  ` (after the `#`): the name is a letter followed by letters and
/// digits, the value is non-empty and trimmed.
fn split_directive(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    let name_end = text
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = text[name_end..].trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then_some((name, value))
}
