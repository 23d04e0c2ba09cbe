//! Instruction flags with BuildKit's `BFlags` rules. Each instruction declares the flags it accepts;
//! the node's `--name[=value]` strings are then checked in order:
//! - a lone `--` ends the flags (the rest is ignored);
//! - an undeclared name is an error (with a near-miss hint);
//! - a flag given twice is an error, except list flags (`--mount`, `--exclude`), which collect;
//! - bool flags take no value or `=true` / `=false` (any case); string and list flags need `=`.
//!
//! Values are kept as written: expansion happens later, per instruction.

use super::Context;
use crate::diagnostic::{Diagnostic, Span};
use crate::suggest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlagKind {
    Bool,
    String,
    /// May repeat; every value is kept, in order.
    List,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct FlagSpec {
    name: &'static str,
    kind: FlagKind,
}

pub(super) const fn bool_flag(name: &'static str) -> FlagSpec {
    FlagSpec {
        name,
        kind: FlagKind::Bool,
    }
}

pub(super) const fn string_flag(name: &'static str) -> FlagSpec {
    FlagSpec {
        name,
        kind: FlagKind::String,
    }
}

pub(super) const fn list_flag(name: &'static str) -> FlagSpec {
    FlagSpec {
        name,
        kind: FlagKind::List,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Bool(bool),
    Text(String),
}

/// One flag as given: which declared flag, its position among the node's flags, and its value.
#[derive(Debug, Clone)]
struct Given {
    name: &'static str,
    index: usize,
    value: Value,
}

/// The flags given to one instruction, checked against the declared ones.
#[derive(Debug, Clone)]
pub(super) struct Flags {
    given: Vec<Given>,
    spans: Vec<Span>,
}

impl Flags {
    pub(super) fn parse(context: &Context<'_>, specs: &[FlagSpec]) -> Result<Flags, Diagnostic> {
        let spans: Vec<Span> = (0..context.node.flags.len())
            .map(|index| context.flag_span(index))
            .collect();
        let mut flags = Flags {
            given: Vec::new(),
            spans,
        };
        for (index, text) in context.node.flags.iter().enumerate() {
            let span = flags.span(index);
            if text == "--" {
                break;
            }
            let Some(body) = text.strip_prefix("--") else {
                return Err(
                    Diagnostic::error(format!("arg should start with -- : {text}")).at(span),
                );
            };
            let (name, value) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            let flag_name = format!("--{name}");
            let Some(spec) = specs.iter().find(|spec| spec.name == name) else {
                return Err(unknown_flag(&flag_name, name, specs, span));
            };
            if spec.kind != FlagKind::List
                && flags.given.iter().any(|given| given.name == spec.name)
            {
                return Err(
                    Diagnostic::error(format!("duplicate flag specified: {flag_name}"))
                        .at(span)
                        .with_hint(format!("give {flag_name} only once")),
                );
            }
            let value = match (spec.kind, value) {
                (FlagKind::Bool, None) => Value::Bool(true),
                (FlagKind::Bool, Some("")) | (FlagKind::String | FlagKind::List, None) => {
                    return Err(missing_value(&flag_name, spec.kind, span));
                }
                (FlagKind::Bool, Some(value)) => match value.to_lowercase().as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => {
                        return Err(Diagnostic::error(format!(
                            "expecting boolean value for flag {flag_name}, not: {value}"
                        ))
                        .at(span)
                        .with_hint(format!(
                            "use {flag_name}, {flag_name}=true or {flag_name}=false"
                        )));
                    }
                },
                (FlagKind::String | FlagKind::List, Some(value)) => Value::Text(value.to_string()),
            };
            flags.given.push(Given {
                name: spec.name,
                index,
                value,
            });
        }
        Ok(flags)
    }

    fn last(&self, name: &str) -> Option<&Given> {
        self.given.iter().rev().find(|given| given.name == name)
    }

    /// A bool flag's value; `None` when not given.
    pub(super) fn bool(&self, name: &str) -> Option<bool> {
        match self.last(name)?.value {
            Value::Bool(value) => Some(value),
            Value::Text(_) => None,
        }
    }

    /// A string flag's value as written; `None` when not given.
    pub(super) fn string(&self, name: &str) -> Option<&str> {
        match &self.last(name)?.value {
            Value::Text(value) => Some(value),
            Value::Bool(_) => None,
        }
    }

    /// A string flag's value, with `None` also for an empty value: BuildKit treats `--chown=` as
    /// no `--chown` at all.
    pub(super) fn non_empty_string(&self, name: &str) -> Option<String> {
        self.string(name)
            .filter(|value| !value.is_empty())
            .map(str::to_string)
    }

    /// Every value of a list flag, in order, with the span of the flag that gave it.
    pub(super) fn list(&self, name: &str) -> Vec<(String, Span)> {
        self.given
            .iter()
            .filter(|given| given.name == name)
            .filter_map(|given| match &given.value {
                Value::Text(value) => Some((value.clone(), self.span(given.index))),
                Value::Bool(_) => None,
            })
            .collect()
    }

    /// Where the flag `name` was given (its last occurrence), for errors about its value.
    pub(super) fn span_of(&self, name: &str) -> Option<Span> {
        self.last(name).map(|given| self.span(given.index))
    }

    fn span(&self, index: usize) -> Span {
        self.spans.get(index).copied().unwrap_or_default()
    }

    /// The names of the flags given, in the order first given.
    pub(super) fn used(&self) -> Vec<String> {
        let mut used: Vec<String> = Vec::new();
        for given in &self.given {
            if !used.iter().any(|name| name == given.name) {
                used.push(given.name.to_string());
            }
        }
        used
    }
}

fn unknown_flag(flag_name: &str, name: &str, specs: &[FlagSpec], span: Span) -> Diagnostic {
    let error = Diagnostic::error(format!("unknown flag: {flag_name}")).at(span);
    if let Some(near) = suggest::closest(name, specs.iter().map(|spec| spec.name), true) {
        return error.with_hint(format!("did you mean --{near}?"));
    }
    match specs {
        [] => error.with_hint("this instruction takes no flags"),
        _ => {
            let accepted: Vec<String> = specs
                .iter()
                .map(|spec| format!("--{}", spec.name))
                .collect();
            error.with_hint(format!("the accepted flags are {}", accepted.join(", ")))
        }
    }
}

fn missing_value(flag_name: &str, kind: FlagKind, span: Span) -> Diagnostic {
    let hint = match kind {
        FlagKind::Bool => format!("write {flag_name} or {flag_name}=true|false"),
        FlagKind::String | FlagKind::List => format!("write {flag_name}=<value>"),
    };
    Diagnostic::error(format!("missing a value on flag: {flag_name}"))
        .at(span)
        .with_hint(hint)
}
