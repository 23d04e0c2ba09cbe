//! AST [`Node`]s → typed, validated [`Instruction`]s, with BuildKit's rules
//! (`frontend/dockerfile/instructions`): the same accepted flags per instruction, the same
//! argument checks, and the same error messages, each turned into a [`Diagnostic`] located on the
//! instruction (on the offending flag or word when it can be found on the instruction's line).
//!
//! Two phases, as in BuildKit:
//! 1. [`parse_instruction`] checks what can be checked on the text alone (flag names and types,
//!    argument counts, stage names, `--network`, `--security`, healthcheck options, ...).
//! 2. Each instruction's `expand` method substitutes build-time variables into exactly the fields
//!    BuildKit expands, and validates the values BuildKit only checks after expansion
//!    (`--mount` options, `--chmod`). The stage planner calls it with the shell lexer.
//!
//! Invariants: nothing here panics on user input; every error names the instruction's lines.

mod chmod;
mod commands;
mod duration;
mod files;
mod flags;
mod from;
mod healthcheck;
mod image_settings;
mod mount;
mod run;
mod variables;

#[cfg(test)]
mod tests;

pub use chmod::FileMode;
pub use commands::{
    CmdInstruction, CommandForm, EntrypointInstruction, InlineFile, ShellCommandLine,
    ShellInstruction,
};
pub use files::{AddInstruction, CopyInstruction, InlineSource, SourcesAndDest, TransferOptions};
pub use from::FromInstruction;
pub use healthcheck::{HealthCheck, Healthcheck, HealthcheckInstruction};
pub use image_settings::{
    ExposeInstruction, MaintainerInstruction, OnbuildInstruction, StopSignalInstruction,
    UserInstruction, VolumeInstruction, WorkdirInstruction,
};
pub use mount::{CacheSharing, Mount, MountType};
pub use run::{NetworkMode, RunInstruction, RunMount, SecurityMode};
pub use variables::{ArgDefinition, ArgInstruction, EnvInstruction, KeyValue, LabelInstruction};

use crate::diagnostic::{Diagnostic, Span};
use crate::parser::Node;
use crate::suggest;

/// Substitutes build-time variables into one word (BuildKit's `SingleWordExpander`): the stage
/// planner passes the shell lexer with the environment in effect at the instruction.
pub type WordExpander<'a> = dyn FnMut(&str) -> Result<String, Diagnostic> + 'a;

/// Where an instruction came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// 1-based and inclusive: the lines of the instruction, its continuations and heredocs.
    pub start_line: usize,
    pub end_line: usize,
    /// The instruction as written (continuations joined), surrounding whitespace removed: what
    /// BuildKit shows in progress output and build history.
    pub code: String,
}

impl Origin {
    fn of(node: &Node) -> Self {
        Origin {
            start_line: node.start_line,
            end_line: node.end_line,
            code: node.original.trim().to_string(),
        }
    }

    pub fn span(&self) -> Span {
        Span::lines(self.start_line, self.end_line)
    }

    /// The instruction keyword in the case the user wrote it (`Run`, `COPY`), for casing lints.
    pub fn keyword_as_written(&self) -> &str {
        first_word(&self.code)
    }

    /// Places an expansion or validation error on this instruction unless it is already located.
    fn locate(&self, error: Diagnostic) -> Diagnostic {
        error.at_lines_if_unset(self.start_line, self.end_line)
    }
}

/// One typed Dockerfile instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From(FromInstruction),
    Run(RunInstruction),
    Cmd(CmdInstruction),
    Label(LabelInstruction),
    Maintainer(MaintainerInstruction),
    Expose(ExposeInstruction),
    Env(EnvInstruction),
    Add(AddInstruction),
    Copy(CopyInstruction),
    Entrypoint(EntrypointInstruction),
    Volume(VolumeInstruction),
    User(UserInstruction),
    Workdir(WorkdirInstruction),
    Arg(ArgInstruction),
    Onbuild(OnbuildInstruction),
    StopSignal(StopSignalInstruction),
    Healthcheck(HealthcheckInstruction),
    Shell(ShellInstruction),
}

/// Every instruction keyword BuildKit knows, upper-case; the candidates for "did you mean".
const KEYWORDS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Converts one parsed instruction into its typed form, validating flags and arguments.
pub fn parse_instruction(node: &Node) -> Result<Instruction, Diagnostic> {
    let context = Context::new(node);
    Ok(match node.keyword.to_ascii_lowercase().as_str() {
        "from" => Instruction::From(from::parse(&context)?),
        "run" => Instruction::Run(run::parse(&context)?),
        "cmd" => Instruction::Cmd(commands::parse_cmd(&context)?),
        "entrypoint" => Instruction::Entrypoint(commands::parse_entrypoint(&context)?),
        "shell" => Instruction::Shell(commands::parse_shell(&context)?),
        "label" => Instruction::Label(variables::parse_label(&context)?),
        "env" => Instruction::Env(variables::parse_env(&context)?),
        "arg" => Instruction::Arg(variables::parse_arg(&context)?),
        "add" => Instruction::Add(files::parse_add(&context)?),
        "copy" => Instruction::Copy(files::parse_copy(&context)?),
        "maintainer" => Instruction::Maintainer(image_settings::parse_maintainer(&context)?),
        "expose" => Instruction::Expose(image_settings::parse_expose(&context)?),
        "volume" => Instruction::Volume(image_settings::parse_volume(&context)?),
        "user" => Instruction::User(image_settings::parse_user(&context)?),
        "workdir" => Instruction::Workdir(image_settings::parse_workdir(&context)?),
        "stopsignal" => Instruction::StopSignal(image_settings::parse_stop_signal(&context)?),
        "onbuild" => Instruction::Onbuild(image_settings::parse_onbuild(&context)?),
        "healthcheck" => Instruction::Healthcheck(healthcheck::parse(&context)?),
        _ => return Err(unknown_instruction(&context)),
    })
}

fn unknown_instruction(context: &Context<'_>) -> Diagnostic {
    let written = context.keyword_as_written();
    let hint = match suggest::closest(written, KEYWORDS, false) {
        Some(keyword) => format!("did you mean {keyword}?"),
        None => format!("the instructions are {}", KEYWORDS.join(", ")),
    };
    Diagnostic::error(format!("unknown instruction: {written}"))
        .at(context.span_of_keyword())
        .with_hint(hint)
}

impl Instruction {
    /// The instruction keyword, upper-case (`FROM`, `RUN`, ...).
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Env(_) => "ENV",
            Instruction::Add(_) => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Arg(_) => "ARG",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
        }
    }

    pub fn origin(&self) -> &Origin {
        match self {
            Instruction::From(i) => &i.origin,
            Instruction::Run(i) => &i.origin,
            Instruction::Cmd(i) => &i.origin,
            Instruction::Label(i) => &i.origin,
            Instruction::Maintainer(i) => &i.origin,
            Instruction::Expose(i) => &i.origin,
            Instruction::Env(i) => &i.origin,
            Instruction::Add(i) => &i.origin,
            Instruction::Copy(i) => &i.origin,
            Instruction::Entrypoint(i) => &i.origin,
            Instruction::Volume(i) => &i.origin,
            Instruction::User(i) => &i.origin,
            Instruction::Workdir(i) => &i.origin,
            Instruction::Arg(i) => &i.origin,
            Instruction::Onbuild(i) => &i.origin,
            Instruction::StopSignal(i) => &i.origin,
            Instruction::Healthcheck(i) => &i.origin,
            Instruction::Shell(i) => &i.origin,
        }
    }

    pub fn start_line(&self) -> usize {
        self.origin().start_line
    }

    pub fn end_line(&self) -> usize {
        self.origin().end_line
    }

    pub fn span(&self) -> Span {
        self.origin().span()
    }

    /// Expands build-time variables in the fields BuildKit expands for this instruction; see each
    /// instruction's `expand` for which ones.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        match self {
            Instruction::From(i) => i.expand(expander),
            Instruction::Run(i) => i.expand(expander),
            Instruction::Cmd(i) => i.expand(expander),
            Instruction::Label(i) => i.expand(expander),
            Instruction::Maintainer(i) => i.expand(expander),
            Instruction::Expose(i) => i.expand(expander),
            Instruction::Env(i) => i.expand(expander),
            Instruction::Add(i) => i.expand(expander),
            Instruction::Copy(i) => i.expand(expander),
            Instruction::Entrypoint(i) => i.expand(expander),
            Instruction::Volume(i) => i.expand(expander),
            Instruction::User(i) => i.expand(expander),
            Instruction::Workdir(i) => i.expand(expander),
            Instruction::Arg(i) => i.expand(expander),
            Instruction::Onbuild(i) => i.expand(expander),
            Instruction::StopSignal(i) => i.expand(expander),
            Instruction::Healthcheck(i) => i.expand(expander),
            Instruction::Shell(i) => i.expand(expander),
        }
    }
}

/// Expands one word, locating an expansion error on the instruction.
fn expand_word(
    origin: &Origin,
    expander: &mut WordExpander<'_>,
    word: &str,
) -> Result<String, Diagnostic> {
    expander(word).map_err(|error| origin.locate(error))
}

/// Expands each word of `words` in place.
fn expand_words(
    origin: &Origin,
    expander: &mut WordExpander<'_>,
    words: &mut [String],
) -> Result<(), Diagnostic> {
    for word in words {
        *word = expand_word(origin, expander, word)?;
    }
    Ok(())
}

/// Go's `strconv.ParseUint(text, radix, 32)`: digits of the radix only (no sign, prefix or
/// underscore), at least one, and a value that fits 32 bits.
fn go_parse_u32(text: &str, radix: u32) -> Option<u32> {
    if text.is_empty() || !text.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(text, radix).ok()
}

fn first_word(text: &str) -> &str {
    let text = text.trim_start();
    text.split(char::is_whitespace).next().unwrap_or(text)
}

/// The node being converted, with the helpers that build its diagnostics.
///
/// Columns are only given when the instruction's text sits on one physical line: the node keeps
/// the joined logical line, and a column measured in it would be wrong after a continuation.
/// They count from the first non-blank character of the line, which is where `original` starts.
struct Context<'a> {
    node: &'a Node,
}

impl<'a> Context<'a> {
    fn new(node: &'a Node) -> Self {
        Context { node }
    }

    fn origin(&self) -> Origin {
        Origin::of(self.node)
    }

    fn args(&self) -> &'a [String] {
        &self.node.args
    }

    fn keyword_as_written(&self) -> &'a str {
        match first_word(&self.node.original) {
            "" => &self.node.keyword,
            written => written,
        }
    }

    fn lines(&self) -> Span {
        Span::lines(self.node.start_line, self.node.end_line)
    }

    /// An error located on the instruction's lines.
    fn error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(message).at(self.lines())
    }

    /// An error located on `needle`, the first time it appears after the keyword.
    fn error_at_word(&self, needle: &str, message: impl Into<String>) -> Diagnostic {
        let start = self.keyword_as_written().len();
        let span = self
            .find(needle, start)
            .map_or_else(|| self.lines(), |(_, span)| span);
        Diagnostic::error(message).at(span)
    }

    /// The keyword always opens the instruction's first line, continuation or not.
    fn span_of_keyword(&self) -> Span {
        let length = self.keyword_as_written().chars().count();
        Span::at(self.node.start_line, self.node.indent + 1, length)
    }

    /// The span of the `index`-th flag of the node (flags come in order right after the keyword),
    /// or the node's lines when it cannot be found literally (it was quoted or continued).
    fn flag_span(&self, index: usize) -> Span {
        let mut cursor = self.keyword_as_written().len();
        for (position, flag) in self.node.flags.iter().enumerate() {
            let name = flag.split('=').next().unwrap_or(flag);
            let found = self.find(flag, cursor).or_else(|| self.find(name, cursor));
            let Some((byte, span)) = found else {
                return self.lines();
            };
            if position == index {
                return span;
            }
            cursor = byte + name.len();
        }
        self.lines()
    }

    /// Finds `needle` in the instruction text at or after byte `from`: its byte offset and span.
    fn find(&self, needle: &str, from: usize) -> Option<(usize, Span)> {
        if needle.is_empty() || !self.is_single_physical_line() {
            return None;
        }
        let text = &self.node.original;
        let byte = from + text.get(from..)?.find(needle)?;
        let column = self.node.indent + text[..byte].chars().count() + 1;
        Some((
            byte,
            Span::at(self.node.start_line, column, needle.chars().count()),
        ))
    }

    /// True when the instruction (heredoc bodies aside) is written on a single line.
    fn is_single_physical_line(&self) -> bool {
        let heredoc_lines: usize = self
            .node
            .heredocs
            .iter()
            .map(|doc| doc.content.matches('\n').count() + 1)
            .sum();
        let total = (self.node.end_line + 1).saturating_sub(self.node.start_line);
        total.saturating_sub(heredoc_lines) <= 1 && !self.node.original.contains('\n')
    }
}

// BuildKit's shared error messages.

fn at_least_one_argument(context: &Context<'_>, keyword: &str) -> Diagnostic {
    context.error(format!("{keyword} requires at least one argument"))
}

fn exactly_one_argument(context: &Context<'_>, keyword: &str) -> Diagnostic {
    context.error(format!("{keyword} requires exactly one argument"))
}
