//! RUN and its flags: `--mount` (see [`super::mount`]), `--network` and `--security`.

use super::commands::ShellCommandLine;
use super::flags::{Flags, list_flag, string_flag};
use super::mount::{self, Mount};
use super::{Context, Origin, WordExpander};
use crate::diagnostic::{Diagnostic, Span};

/// `--network=`: the network a RUN step sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// The builder's default network.
    #[default]
    Default,
    /// No network at all.
    None,
    /// The host's network (an entitlement the build must be granted).
    Host,
}

/// `--security=`: whether a RUN step runs sandboxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityMode {
    #[default]
    Sandbox,
    /// Full privileges (an entitlement the build must be granted).
    Insecure,
}

/// One `--mount` of a RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMount {
    /// The value as written: CSV `key=value` options.
    pub spec: String,
    /// `from=` as written, known before expansion (it may not contain variables), so that the
    /// stage planner can order stages.
    pub from: Option<String>,
    /// Where the flag is, for errors found when it is resolved.
    pub span: Span,
    /// The expanded, validated mount, set by [`RunInstruction::expand`].
    pub resolved: Option<Mount>,
}

/// `RUN [--mount=...] [--network=...] [--security=...] <command>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstruction {
    pub origin: Origin,
    pub command: ShellCommandLine,
    pub mounts: Vec<RunMount>,
    pub network: NetworkMode,
    pub security: SecurityMode,
    /// The names of the flags given, in order (for lints and history).
    pub flags_used: Vec<String>,
}

pub(super) fn parse(context: &Context<'_>) -> Result<RunInstruction, Diagnostic> {
    let flags = Flags::parse(
        context,
        &[
            list_flag("mount"),
            string_flag("network"),
            string_flag("security"),
        ],
    )?;
    let command = ShellCommandLine::from_context(context);
    let mounts = flags
        .list("mount")
        .into_iter()
        .map(|(spec, span)| {
            let from = mount::scan(&spec).map_err(|error| error.at(span))?;
            Ok(RunMount {
                spec,
                from,
                span,
                resolved: None,
            })
        })
        .collect::<Result<_, Diagnostic>>()?;
    let flag_span = |name| flags.span_of(name).unwrap_or_else(|| context.lines());
    let network = match flags.string("network").unwrap_or("default") {
        "default" => NetworkMode::Default,
        "none" => NetworkMode::None,
        "host" => NetworkMode::Host,
        other => {
            return Err(Diagnostic::error(format!("invalid network mode {other:?}"))
                .at(flag_span("network"))
                .with_hint("use --network=default, --network=none or --network=host"));
        }
    };
    let security = match flags.string("security").unwrap_or("sandbox") {
        "sandbox" => SecurityMode::Sandbox,
        "insecure" => SecurityMode::Insecure,
        other => {
            return Err(
                Diagnostic::error(format!("security {other:?} is not valid"))
                    .at(flag_span("security"))
                    .with_hint("use --security=sandbox or --security=insecure"),
            );
        }
    };
    Ok(RunInstruction {
        origin: context.origin(),
        command,
        mounts,
        network,
        security,
        flags_used: flags.used(),
    })
}

impl RunInstruction {
    /// Expands every `--mount` option value, then validates each mount and stores it in
    /// [`RunMount::resolved`]. The command itself is left to the shell, and `--network` and
    /// `--security` are not expanded, as in BuildKit.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        for run_mount in &mut self.mounts {
            let span = run_mount.span;
            let place = |error: Diagnostic| {
                if error.span.is_some() {
                    error
                } else {
                    error.at(span)
                }
            };
            run_mount.resolved = Some(mount::resolve(&run_mount.spec, expander).map_err(place)?);
        }
        Ok(())
    }

    /// The resolved mounts, in order; empty until [`Self::expand`] succeeded.
    pub fn resolved_mounts(&self) -> impl Iterator<Item = &Mount> {
        self.mounts
            .iter()
            .filter_map(|run_mount| run_mount.resolved.as_ref())
    }
}
