//! Name/value instructions: ENV, LABEL (the parser hands them over as name, value, separator
//! triples) and ARG (`name` or `name=value` words).

use super::flags::Flags;
use super::{Context, Origin, WordExpander, at_least_one_argument, expand_word};
use crate::diagnostic::Diagnostic;

/// One `key=value` of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Written in the legacy `ENV key value` form, without `=` (the LegacyKeyValueFormat lint).
    pub legacy_form: bool,
}

/// `ENV key=value ...` or `ENV key value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvInstruction {
    pub origin: Origin,
    pub vars: Vec<KeyValue>,
}

/// `LABEL key=value ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelInstruction {
    pub origin: Origin,
    pub labels: Vec<KeyValue>,
}

/// One name of an ARG instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDefinition {
    pub name: String,
    /// `ARG name=value`: the default; `None` for a bare `ARG name`.
    pub default: Option<String>,
    /// The comment right above the instruction that starts with the name (`# name does ...`),
    /// without the name: BuildKit's documentation for the build argument.
    pub doc_comment: Option<String>,
}

/// `ARG name[=value] ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgInstruction {
    pub origin: Origin,
    pub args: Vec<ArgDefinition>,
}

pub(super) fn parse_env(context: &Context<'_>) -> Result<EnvInstruction, Diagnostic> {
    Flags::parse(context, &[])?;
    Ok(EnvInstruction {
        origin: context.origin(),
        vars: key_values(context, "ENV")?,
    })
}

pub(super) fn parse_label(context: &Context<'_>) -> Result<LabelInstruction, Diagnostic> {
    Flags::parse(context, &[])?;
    Ok(LabelInstruction {
        origin: context.origin(),
        labels: key_values(context, "LABEL")?,
    })
}

fn key_values(context: &Context<'_>, keyword: &str) -> Result<Vec<KeyValue>, Diagnostic> {
    let args = context.args();
    if args.is_empty() {
        return Err(at_least_one_argument(context, keyword)
            .with_hint(format!("write {keyword} name=value [name=value ...]")));
    }
    if !args.len().is_multiple_of(3) {
        return Err(context.error(format!("Bad input to {keyword}, too many arguments")));
    }
    args.chunks_exact(3)
        .map(|triple| match triple {
            [key, _, _] if key.is_empty() => Err(blank_name(context, keyword)),
            [key, value, separator] => Ok(KeyValue {
                key: key.clone(),
                value: value.clone(),
                legacy_form: separator.is_empty(),
            }),
            _ => Err(context.error(format!("Bad input to {keyword}, too many arguments"))),
        })
        .collect()
}

fn blank_name(context: &Context<'_>, keyword: &str) -> Diagnostic {
    context
        .error(format!("{keyword} names can not be blank"))
        .with_hint("write name=value, with a name before the =")
}

/// ARG takes no flags; BuildKit does not even look at them, so neither do we.
pub(super) fn parse_arg(context: &Context<'_>) -> Result<ArgInstruction, Diagnostic> {
    if context.args().is_empty() {
        return Err(
            at_least_one_argument(context, "ARG").with_hint("write ARG name or ARG name=default")
        );
    }
    let args = context
        .args()
        .iter()
        .map(|word| {
            let (name, default) = match word.split_once('=') {
                Some(("", _)) => return Err(blank_name(context, "ARG")),
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (word.clone(), None),
            };
            let doc_comment = doc_comment(&context.node.comments, &name);
            Ok(ArgDefinition {
                name,
                default,
                doc_comment,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ArgInstruction {
        origin: context.origin(),
        args,
    })
}

/// BuildKit's doc comments: the first comment line that starts with `name `, minus that prefix.
pub(super) fn doc_comment(comments: &[String], name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let prefix = format!("{name} ");
    comments
        .iter()
        .find_map(|line| line.trim().strip_prefix(&prefix).map(str::to_string))
}

fn expand_key_values(
    origin: &Origin,
    expander: &mut WordExpander<'_>,
    pairs: &mut [KeyValue],
) -> Result<(), Diagnostic> {
    for pair in pairs {
        pair.key = expand_word(origin, expander, &pair.key)?;
        pair.value = expand_word(origin, expander, &pair.value)?;
    }
    Ok(())
}

impl EnvInstruction {
    /// Expands every name and value.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        expand_key_values(&self.origin, expander, &mut self.vars)
    }
}

impl LabelInstruction {
    /// Expands every name and value.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        expand_key_values(&self.origin, expander, &mut self.labels)
    }
}

impl ArgInstruction {
    /// Expands every name and default (BuildKit's `ArgCommand.Expand`). Note that BuildKit's
    /// dispatcher does not call it: it expands a default only when no `--build-arg` overrides
    /// the name, and leaves names alone; the stage planner does the same with [`Self::args`].
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        for arg in &mut self.args {
            arg.name = expand_word(&self.origin, expander, &arg.name)?;
            if let Some(default) = &arg.default {
                arg.default = Some(expand_word(&self.origin, expander, default)?);
            }
        }
        Ok(())
    }
}
