//! Instructions that set one piece of image configuration: MAINTAINER, EXPOSE, VOLUME, USER,
//! WORKDIR, STOPSIGNAL, and ONBUILD (which records a trigger for images built from this one).

use super::flags::Flags;
use super::{
    Context, Origin, WordExpander, at_least_one_argument, exactly_one_argument, expand_word,
    expand_words,
};
use crate::diagnostic::Diagnostic;

/// `MAINTAINER name` (deprecated in favour of a label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintainerInstruction {
    pub origin: Origin,
    pub maintainer: String,
}

/// `EXPOSE 80/tcp 53/udp ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeInstruction {
    pub origin: Origin,
    /// The port words as written, sorted (as BuildKit keeps them); validated after expansion.
    pub ports: Vec<String>,
}

/// `VOLUME /data ...` or `VOLUME ["/data"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInstruction {
    pub origin: Origin,
    pub volumes: Vec<String>,
}

/// `USER name[:group]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInstruction {
    pub origin: Origin,
    pub user: String,
}

/// `WORKDIR /path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkdirInstruction {
    pub origin: Origin,
    pub path: String,
}

/// `STOPSIGNAL SIGTERM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopSignalInstruction {
    pub origin: Origin,
    pub signal: String,
}

/// `ONBUILD <instruction>`: stored in the image and run by builds that use it as a base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnbuildInstruction {
    pub origin: Origin,
    /// The wrapped instruction's keyword, upper-case (`RUN`, `COPY`, ...).
    pub trigger: String,
    /// The wrapped instruction as written, heredoc bodies appended: what goes into the image
    /// config and is parsed again when the trigger fires. It is not validated here, as in
    /// BuildKit.
    pub expression: String,
}

pub(super) fn parse_maintainer(context: &Context<'_>) -> Result<MaintainerInstruction, Diagnostic> {
    let maintainer = single_argument(context, "MAINTAINER")?;
    Flags::parse(context, &[])?;
    Ok(MaintainerInstruction {
        origin: context.origin(),
        maintainer,
    })
}

pub(super) fn parse_expose(context: &Context<'_>) -> Result<ExposeInstruction, Diagnostic> {
    if context.args().is_empty() {
        return Err(at_least_one_argument(context, "EXPOSE")
            .with_hint("write EXPOSE <port>[/<protocol>] ..."));
    }
    Flags::parse(context, &[])?;
    let mut ports = context.args().to_vec();
    ports.sort();
    Ok(ExposeInstruction {
        origin: context.origin(),
        ports,
    })
}

pub(super) fn parse_volume(context: &Context<'_>) -> Result<VolumeInstruction, Diagnostic> {
    if context.args().is_empty() {
        return Err(at_least_one_argument(context, "VOLUME"));
    }
    Flags::parse(context, &[])?;
    let volumes = context
        .args()
        .iter()
        .map(|volume| match volume.trim() {
            "" => Err(context.error("VOLUME specified can not be an empty string")),
            volume => Ok(volume.to_string()),
        })
        .collect::<Result<_, _>>()?;
    Ok(VolumeInstruction {
        origin: context.origin(),
        volumes,
    })
}

pub(super) fn parse_user(context: &Context<'_>) -> Result<UserInstruction, Diagnostic> {
    let user = single_argument(context, "USER")?;
    Flags::parse(context, &[])?;
    Ok(UserInstruction {
        origin: context.origin(),
        user,
    })
}

pub(super) fn parse_workdir(context: &Context<'_>) -> Result<WorkdirInstruction, Diagnostic> {
    let path = single_argument(context, "WORKDIR")?;
    Flags::parse(context, &[])?;
    Ok(WorkdirInstruction {
        origin: context.origin(),
        path,
    })
}

/// STOPSIGNAL takes no flags; BuildKit does not look at them, so neither do we.
pub(super) fn parse_stop_signal(
    context: &Context<'_>,
) -> Result<StopSignalInstruction, Diagnostic> {
    let signal = single_argument(context, "STOPSIGNAL")?;
    Ok(StopSignalInstruction {
        origin: context.origin(),
        signal,
    })
}

fn single_argument(context: &Context<'_>, keyword: &str) -> Result<String, Diagnostic> {
    match context.args() {
        [only] => Ok(only.clone()),
        _ => Err(exactly_one_argument(context, keyword)),
    }
}

pub(super) fn parse_onbuild(context: &Context<'_>) -> Result<OnbuildInstruction, Diagnostic> {
    let Some(wrapped) = context.node.sub.as_deref() else {
        return Err(
            at_least_one_argument(context, "ONBUILD").with_hint("write ONBUILD <instruction>")
        );
    };
    Flags::parse(context, &[])?;
    let trigger = wrapped.keyword.trim().to_uppercase();
    let written = super::first_word(&wrapped.original);
    match trigger.as_str() {
        "ONBUILD" => {
            return Err(context
                .error_at_word(
                    written,
                    "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                )
                .with_hint("an ONBUILD trigger cannot itself be ONBUILD"));
        }
        "MAINTAINER" | "FROM" => {
            return Err(context.error_at_word(
                written,
                format!("{trigger} isn't allowed as an ONBUILD trigger"),
            ));
        }
        _ => {}
    }
    let mut expression = strip_onbuild_keyword(&context.node.original).to_string();
    for doc in &context.node.heredocs {
        expression.push('\n');
        expression.push_str(&doc.content);
        expression.push_str(&doc.name);
    }
    Ok(OnbuildInstruction {
        origin: context.origin(),
        trigger,
        expression,
    })
}

/// The text after a leading `ONBUILD` keyword (any case) and the blanks around it.
fn strip_onbuild_keyword(original: &str) -> &str {
    let text = original.trim_start();
    match text.get(..7) {
        Some(keyword) if keyword.eq_ignore_ascii_case("onbuild") => text[7..].trim_start(),
        _ => original,
    }
}

impl MaintainerInstruction {
    /// Nothing to expand: BuildKit records MAINTAINER as written.
    pub fn expand(&mut self, _expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        Ok(())
    }
}

impl ExposeInstruction {
    /// Nothing to expand here: BuildKit expands EXPOSE with word splitting (one `$PORTS` may give
    /// several ports), which a single-word expander cannot do; the stage planner splits each of
    /// [`Self::ports`] with the shell lexer and then validates the port specs.
    pub fn expand(&mut self, _expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        Ok(())
    }
}

impl VolumeInstruction {
    /// Expands every path.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        expand_words(&self.origin, expander, &mut self.volumes)
    }
}

impl UserInstruction {
    /// Expands the user.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        self.user = expand_word(&self.origin, expander, &self.user)?;
        Ok(())
    }
}

impl WorkdirInstruction {
    /// Expands the path.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        self.path = expand_word(&self.origin, expander, &self.path)?;
        Ok(())
    }
}

impl StopSignalInstruction {
    /// Expands the signal.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        self.signal = expand_word(&self.origin, expander, &self.signal)?;
        Ok(())
    }
}

impl OnbuildInstruction {
    /// Nothing to expand: the trigger is expanded when it fires, in the child build.
    pub fn expand(&mut self, _expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        Ok(())
    }
}
