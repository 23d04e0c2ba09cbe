//! Dockerfile text → AST, with BuildKit's parser behaviour: parser directives, line
//! continuations, comments, JSON (exec) form with the fallback to shell form, heredocs and flags.
//!
//! The AST is BuildKit's: one [`Node`] per instruction, its arguments already split the way the
//! instruction's line parser splits them (ENV and LABEL as name/value/separator triples,
//! HEALTHCHECK as type + command, ONBUILD as a nested node). [`dump`] prints it in BuildKit's
//! dump format, which the conformance golden files use.

/// A heredoc attached to an instruction (`RUN <<EOF`, `COPY <<a.txt /dst`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// `3<<EOF` redirects file descriptor 3; 0 when none was given.
    pub file_descriptor: u32,
    /// False when any part of the delimiter was quoted: the content is taken literally.
    pub expand: bool,
    /// `<<-EOF`: leading tabs are stripped from the content and the delimiter line.
    pub chomp: bool,
    /// The body, every line with its newline, the delimiter line excluded.
    pub content: String,
}

/// One instruction as parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The instruction name, lower-cased (`run`, `copy`, ...).
    pub keyword: String,
    /// `--name=value` flags in order, as written.
    pub flags: Vec<String>,
    /// The arguments as the instruction's line parser split them.
    pub args: Vec<String>,
    /// The instruction ONBUILD wraps.
    pub sub: Option<Box<Node>>,
    /// True when the arguments came from the JSON (exec) form.
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
    /// The logical line after continuations were joined and comments removed.
    pub original: String,
    /// 1-based, inclusive: the physical lines this instruction (and its heredocs) spans.
    pub start_line: usize,
    pub end_line: usize,
    /// The comment lines right before the instruction, without their `#`.
    pub comments: Vec<String>,
}
