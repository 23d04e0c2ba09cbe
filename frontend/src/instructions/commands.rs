//! Command lines (the part RUN, CMD and ENTRYPOINT share) and CMD, ENTRYPOINT and SHELL.

use super::flags::Flags;
use super::{Context, Origin, WordExpander, at_least_one_argument};
use crate::diagnostic::Diagnostic;

/// How a command was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandForm {
    /// `RUN echo hi`: run through the stage's SHELL.
    Shell,
    /// `RUN ["echo", "hi"]`: run as is.
    Exec,
}

/// A heredoc body handed to a shell-form command (`RUN <<EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The body as written; for `<<-` heredocs, tabs are stripped when the command is run.
    pub data: String,
    /// `<<-EOF`: leading tabs are to be stripped from each line.
    pub chomp: bool,
}

/// A command line as RUN, CMD and ENTRYPOINT carry it (BuildKit's `ShellDependantCmdLine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommandLine {
    /// Exec form: the argument vector. Shell form: one element, the command text (heredoc
    /// openers such as `<<EOF` left in place).
    pub args: Vec<String>,
    pub form: CommandForm,
    /// Heredoc bodies, in the order their openers appear.
    pub files: Vec<InlineFile>,
}

impl ShellCommandLine {
    pub(super) fn from_context(context: &Context<'_>) -> Self {
        let node = context.node;
        let files = node
            .heredocs
            .iter()
            .map(|doc| InlineFile {
                name: doc.name.clone(),
                data: doc.content.clone(),
                chomp: doc.chomp,
            })
            .collect();
        ShellCommandLine {
            args: json_or_joined(context),
            form: form_of(context),
            files,
        }
    }

    /// True when the stage's SHELL is to be prepended (shell form).
    pub fn prepends_shell(&self) -> bool {
        self.form == CommandForm::Shell
    }
}

fn form_of(context: &Context<'_>) -> CommandForm {
    if context.node.json {
        CommandForm::Exec
    } else {
        CommandForm::Shell
    }
}

/// BuildKit's `handleJSONArgs`: the JSON array as is, or the shell-form words joined into one.
pub(super) fn json_or_joined(context: &Context<'_>) -> Vec<String> {
    json_or_joined_args(context.args(), context.node.json)
}

pub(super) fn json_or_joined_args(args: &[String], json: bool) -> Vec<String> {
    if json {
        args.to_vec()
    } else {
        vec![args.join(" ")]
    }
}

/// `CMD ["executable", "param"]` or `CMD command param`: the image's default command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdInstruction {
    pub origin: Origin,
    pub command: ShellCommandLine,
}

/// `ENTRYPOINT ["executable", "param"]` or `ENTRYPOINT command param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrypointInstruction {
    pub origin: Origin,
    /// `ENTRYPOINT []` gives empty exec-form args: the entrypoint is cleared.
    pub command: ShellCommandLine,
}

/// `SHELL ["executable", "parameters"]`: the shell for the shell form of later instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellInstruction {
    pub origin: Origin,
    pub shell: Vec<String>,
}

pub(super) fn parse_cmd(context: &Context<'_>) -> Result<CmdInstruction, Diagnostic> {
    Flags::parse(context, &[])?;
    Ok(CmdInstruction {
        origin: context.origin(),
        command: ShellCommandLine::from_context(context),
    })
}

pub(super) fn parse_entrypoint(context: &Context<'_>) -> Result<EntrypointInstruction, Diagnostic> {
    Flags::parse(context, &[])?;
    Ok(EntrypointInstruction {
        origin: context.origin(),
        command: ShellCommandLine::from_context(context),
    })
}

pub(super) fn parse_shell(context: &Context<'_>) -> Result<ShellInstruction, Diagnostic> {
    Flags::parse(context, &[])?;
    let shell = json_or_joined(context);
    if shell.is_empty() {
        return Err(at_least_one_argument(context, "SHELL"));
    }
    if !context.node.json {
        return Err(context
            .error("SHELL requires the arguments to be in JSON form")
            .with_hint(r#"write it as a JSON array, e.g. SHELL ["/bin/bash", "-c"]"#));
    }
    Ok(ShellInstruction {
        origin: context.origin(),
        shell,
    })
}

impl CmdInstruction {
    /// Nothing to expand: BuildKit leaves CMD to the shell (shell form) or as written (exec form).
    pub fn expand(&mut self, _expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        Ok(())
    }
}

impl EntrypointInstruction {
    /// Nothing to expand, as for CMD.
    pub fn expand(&mut self, _expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        Ok(())
    }
}

impl ShellInstruction {
    /// Nothing to expand: BuildKit takes the SHELL array literally.
    pub fn expand(&mut self, _expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        Ok(())
    }
}
