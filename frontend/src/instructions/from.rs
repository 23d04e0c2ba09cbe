//! FROM: the start of a build stage (`FROM [--platform=p] image [AS name]`).

use super::flags::{Flags, string_flag};
use super::variables::doc_comment;
use super::{Context, Origin, WordExpander, expand_word};
use crate::diagnostic::Diagnostic;

/// `FROM [--platform=<platform>] <image> [AS <name>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromInstruction {
    pub origin: Origin,
    /// The image or stage to start from, as written (expanded with the global ARGs by `expand`).
    pub base_name: String,
    /// `AS name`, lower-cased: stage names are case-insensitive.
    pub stage_name: Option<String>,
    /// `--platform=...`; `None` when not given or empty.
    pub platform: Option<String>,
    /// The comment right above FROM that starts with the stage name, without the name.
    pub doc_comment: Option<String>,
}

pub(super) fn parse(context: &Context<'_>) -> Result<FromInstruction, Diagnostic> {
    let stage_name = stage_name(context)?;
    let flags = Flags::parse(context, &[string_flag("platform")])?;
    let base_name = context.args().first().cloned().unwrap_or_default();
    let doc_comment = stage_name
        .as_deref()
        .and_then(|name| doc_comment(&context.node.comments, name));
    Ok(FromInstruction {
        origin: context.origin(),
        base_name,
        stage_name,
        platform: flags.non_empty_string("platform"),
        doc_comment,
    })
}

fn stage_name(context: &Context<'_>) -> Result<Option<String>, Diagnostic> {
    match context.args() {
        [_] => Ok(None),
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
            let lowered = name.to_lowercase();
            if is_valid_stage_name(&lowered) {
                Ok(Some(lowered))
            } else {
                Err(context
                    .error_at_word(
                        name,
                        format!(
                            "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                        ),
                    )
                    .with_hint("stage names start with a letter, then letters, digits, '-', '_' or '.'"))
            }
        }
        _ => Err(context
            .error("FROM requires either one or three arguments")
            .with_hint("write FROM <image> or FROM <image> AS <name>")),
    }
}

/// BuildKit's `^[a-z][a-z0-9-_.]*$`, on the lower-cased name.
fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

impl FromInstruction {
    /// Expands the base name and the platform. Call it with the global ARGs (those before the
    /// first FROM) only, as BuildKit does; the checks BuildKit makes on the results follow.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        let base_name = expand_word(&self.origin, expander, &self.base_name)?;
        if base_name.is_empty() {
            return Err(self
                .origin
                .locate(Diagnostic::error(format!(
                    "base name ({}) should not be blank",
                    self.base_name
                )))
                .with_hint("give the variable a value, or a default with ${NAME:-image}"));
        }
        self.base_name = base_name;
        if let Some(platform) = &self.platform {
            let expanded = expander(platform).map_err(|error| {
                let message = format!(
                    "failed to process arguments for platform {platform}: {}",
                    error.message
                );
                self.origin.locate(Diagnostic { message, ..error })
            })?;
            if expanded.is_empty() {
                return Err(self
                    .origin
                    .locate(Diagnostic::error(format!(
                        "empty platform value from expression {platform}"
                    )))
                    .with_hint("set the variable, e.g. with --build-arg, or give a default"));
            }
            self.platform = Some(expanded);
        }
        Ok(())
    }
}
