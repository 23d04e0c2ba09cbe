//! HEALTHCHECK: `NONE`, or `[options] CMD <command>` with BuildKit's option checks (durations in
//! Go syntax, at least 1ms unless 0; retries a non-negative 32-bit number).

use std::time::Duration;

use super::commands::{CommandForm, json_or_joined_args};
use super::duration::parse_go_duration;
use super::flags::{FlagSpec, Flags, string_flag};
use super::{Context, Origin, WordExpander, at_least_one_argument};
use crate::diagnostic::{Diagnostic, Span};

/// A container health check, as the image config stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Exec form: the argument vector. Shell form: one element, run with the image's shell.
    pub command: Vec<String>,
    pub form: CommandForm,
    /// Zero durations and retries mean "not set": the runtime's default (or the base image's).
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: u32,
}

impl HealthCheck {
    /// The image config's `Test`: `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub fn test(&self) -> Vec<String> {
        let kind = match self.form {
            CommandForm::Exec => "CMD",
            CommandForm::Shell => "CMD-SHELL",
        };
        std::iter::once(kind.to_string())
            .chain(self.command.iter().cloned())
            .collect()
    }
}

/// What a HEALTHCHECK instruction sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any check inherited from the base image (`Test: ["NONE"]`).
    Disabled,
    Check(HealthCheck),
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [options] CMD <command>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckInstruction {
    pub origin: Origin,
    pub health: Healthcheck,
}

const FLAGS: [FlagSpec; 5] = [
    string_flag("interval"),
    string_flag("timeout"),
    string_flag("start-period"),
    string_flag("start-interval"),
    string_flag("retries"),
];

/// The shortest non-zero interval Docker accepts.
const MINIMUM_INTERVAL_NANOS: u64 = 1_000_000;

pub(super) fn parse(context: &Context<'_>) -> Result<HealthcheckInstruction, Diagnostic> {
    let [kind_word, rest @ ..] = context.args() else {
        return Err(at_least_one_argument(context, "HEALTHCHECK")
            .with_hint("write HEALTHCHECK CMD <command> or HEALTHCHECK NONE"));
    };
    let kind = kind_word.to_uppercase();
    let origin = context.origin();
    if kind == "NONE" {
        // BuildKit reads no options for NONE, so none are checked.
        if !rest.is_empty() {
            return Err(context.error("HEALTHCHECK NONE takes no arguments"));
        }
        return Ok(HealthcheckInstruction {
            origin,
            health: Healthcheck::Disabled,
        });
    }
    let flags = Flags::parse(context, &FLAGS)?;
    if kind != "CMD" {
        return Err(context
            .error_at_word(
                kind_word,
                format!("Unknown type {kind:?} in HEALTHCHECK (try CMD)"),
            )
            .with_hint("write HEALTHCHECK [options] CMD <command>"));
    }
    let command = json_or_joined_args(rest, context.node.json);
    if command.is_empty() {
        return Err(context.error("Missing command after HEALTHCHECK CMD"));
    }
    let interval = |name| optional_interval(&flags, name, context.lines());
    let check = HealthCheck {
        command,
        form: if context.node.json {
            CommandForm::Exec
        } else {
            CommandForm::Shell
        },
        interval: interval("interval")?,
        timeout: interval("timeout")?,
        start_period: interval("start-period")?,
        start_interval: interval("start-interval")?,
        retries: retries(&flags, context.lines())?,
    };
    Ok(HealthcheckInstruction {
        origin,
        health: Healthcheck::Check(check),
    })
}

/// A duration option: zero when absent or zero, otherwise at least 1ms.
fn optional_interval(flags: &Flags, name: &str, fallback: Span) -> Result<Duration, Diagnostic> {
    let Some(text) = flags.string(name).filter(|text| !text.is_empty()) else {
        return Ok(Duration::ZERO);
    };
    let span = flags.span_of(name).unwrap_or(fallback);
    let nanos = parse_go_duration(text).map_err(|message| {
        Diagnostic::error(message).at(span).with_hint(format!(
            "write a duration such as --{name}=30s, 1m30s or 500ms"
        ))
    })?;
    if nanos == 0 {
        return Ok(Duration::ZERO);
    }
    match u64::try_from(nanos) {
        Ok(nanos) if nanos >= MINIMUM_INTERVAL_NANOS => Ok(Duration::from_nanos(nanos)),
        _ => Err(Diagnostic::error(format!("Interval {name:?} cannot be less than 1ms")).at(span)),
    }
}

/// `--retries`: Go's `strconv.ParseInt(text, 10, 32)`, not negative.
fn retries(flags: &Flags, fallback: Span) -> Result<u32, Diagnostic> {
    let Some(text) = flags.string("retries").filter(|text| !text.is_empty()) else {
        return Ok(0);
    };
    let span = flags.span_of("retries").unwrap_or(fallback);
    let retries: i32 = text.parse().map_err(|error: std::num::ParseIntError| {
        let problem = match error.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                "value out of range"
            }
            _ => "invalid syntax",
        };
        Diagnostic::error(format!("strconv.ParseInt: parsing {text:?}: {problem}"))
            .at(span)
            .with_hint("--retries takes a whole number, e.g. --retries=3")
    })?;
    u32::try_from(retries).map_err(|_| {
        Diagnostic::error(format!("--retries cannot be negative ({retries})")).at(span)
    })
}

impl HealthcheckInstruction {
    /// Nothing to expand: BuildKit takes HEALTHCHECK as written.
    pub fn expand(&mut self, _expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        Ok(())
    }
}
