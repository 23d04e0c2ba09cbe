//! ADD and COPY: sources (paths, URLs, or heredoc bodies) copied to a destination, with the
//! options both share (`--chown`, `--chmod`, `--link`, `--exclude`) and their own (`--from`,
//! `--parents` for COPY; `--checksum`, `--keep-git-dir`, `--unpack` for ADD).

use super::chmod::FileMode;
use super::flags::{FlagSpec, Flags, bool_flag, list_flag, string_flag};
use super::{Context, Origin, WordExpander, expand_word, expand_words};
use crate::diagnostic::Diagnostic;
use crate::parser::{Heredoc, chomp_heredoc_content, parse_heredoc_word};

/// A source given inline as a heredoc (`COPY <<EOF /dst`): a file named after the delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineSource {
    /// The file name: the heredoc delimiter.
    pub path: String,
    /// The body (for `<<-`, leading tabs already removed).
    pub data: String,
    /// False when the delimiter was quoted: the body is taken literally.
    pub expand: bool,
}

/// What ADD and COPY copy, and where to (BuildKit's `SourcesAndDest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesAndDest {
    /// Paths in the source (context, stage or image), URLs or Git addresses, in order.
    pub sources: Vec<String>,
    /// Heredoc sources, in order.
    pub inline_sources: Vec<InlineSource>,
    pub dest: String,
}

impl SourcesAndDest {
    /// Expands every source path and the destination.
    pub fn expand(
        &mut self,
        origin: &Origin,
        expander: &mut WordExpander<'_>,
    ) -> Result<(), Diagnostic> {
        expand_words(origin, expander, &mut self.sources)?;
        self.dest = expand_word(origin, expander, &self.dest)?;
        Ok(())
    }

    /// Expands the bodies of unquoted heredoc sources. BuildKit does this separately from
    /// [`Self::expand`], with a lexer that keeps quotes (`SkipProcessQuotes`), so the planner
    /// passes a different expander here.
    pub fn expand_inline_sources(
        &mut self,
        origin: &Origin,
        expander: &mut WordExpander<'_>,
    ) -> Result<(), Diagnostic> {
        for source in self
            .inline_sources
            .iter_mut()
            .filter(|source| source.expand)
        {
            source.data = expand_word(origin, expander, &source.data)?;
        }
        Ok(())
    }
}

/// The options ADD and COPY share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOptions {
    /// `--chown=user[:group]`; `None` when not given or empty.
    pub chown: Option<String>,
    /// `--chmod=` as written; validated by `expand`.
    pub chmod: Option<String>,
    /// The validated `--chmod`, set by `expand`.
    pub mode: Option<FileMode>,
    /// `--link`: copy into a separate layer that does not depend on the files below it.
    pub link: bool,
    /// `--exclude=<pattern>` (repeatable): paths not to copy. Not expanded (as in BuildKit).
    pub exclude: Vec<String>,
}

impl TransferOptions {
    fn from_flags(flags: &Flags) -> Self {
        TransferOptions {
            chown: flags.non_empty_string("chown"),
            chmod: flags.non_empty_string("chmod"),
            mode: None,
            link: flags.bool("link").unwrap_or(false),
            exclude: flags
                .list("exclude")
                .into_iter()
                .map(|(pattern, _)| pattern)
                .collect(),
        }
    }

    /// Expands `--chown` and `--chmod`, then validates the mode.
    fn expand(
        &mut self,
        origin: &Origin,
        expander: &mut WordExpander<'_>,
    ) -> Result<(), Diagnostic> {
        if let Some(chown) = &self.chown {
            self.chown =
                Some(expand_word(origin, expander, chown)?).filter(|chown| !chown.is_empty());
        }
        if let Some(chmod) = &self.chmod {
            self.chmod =
                Some(expand_word(origin, expander, chmod)?).filter(|chmod| !chmod.is_empty());
        }
        self.mode = match &self.chmod {
            Some(chmod) => Some(FileMode::parse(chmod).map_err(|message| {
                origin
                    .locate(Diagnostic::error(message))
                    .with_hint("use an octal mode such as 0755, or a symbolic one such as u+x,go-w")
            })?),
            None => None,
        };
        Ok(())
    }
}

/// `ADD [options] <src>... <dest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddInstruction {
    pub origin: Origin,
    pub files: SourcesAndDest,
    pub options: TransferOptions,
    /// `--keep-git-dir`: keep `.git` of a Git source; `None` when not given.
    pub keep_git_dir: Option<bool>,
    /// `--checksum=<digest>` of an HTTP or Git source; `None` when not given or empty.
    pub checksum: Option<String>,
    /// `--unpack`: whether to extract archives; `None` when not given (local archives are
    /// extracted, remote ones not).
    pub unpack: Option<bool>,
}

/// `COPY [options] <src>... <dest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInstruction {
    pub origin: Origin,
    pub files: SourcesAndDest,
    pub options: TransferOptions,
    /// `--from=<stage, index or image>`; `None` for the build context. Never expanded.
    pub from: Option<String>,
    /// `--parents`: keep the sources' parent directories under the destination.
    pub parents: bool,
}

const ADD_FLAGS: [FlagSpec; 7] = [
    list_flag("exclude"),
    string_flag("chown"),
    string_flag("chmod"),
    bool_flag("link"),
    bool_flag("keep-git-dir"),
    string_flag("checksum"),
    bool_flag("unpack"),
];

const COPY_FLAGS: [FlagSpec; 6] = [
    list_flag("exclude"),
    bool_flag("parents"),
    string_flag("chown"),
    string_flag("from"),
    string_flag("chmod"),
    bool_flag("link"),
];

pub(super) fn parse_add(context: &Context<'_>) -> Result<AddInstruction, Diagnostic> {
    let (flags, files) = parse_transfer(context, "ADD", &ADD_FLAGS)?;
    Ok(AddInstruction {
        origin: context.origin(),
        files,
        options: TransferOptions::from_flags(&flags),
        keep_git_dir: flags.bool("keep-git-dir"),
        checksum: flags.non_empty_string("checksum"),
        unpack: flags.bool("unpack"),
    })
}

pub(super) fn parse_copy(context: &Context<'_>) -> Result<CopyInstruction, Diagnostic> {
    let (flags, files) = parse_transfer(context, "COPY", &COPY_FLAGS)?;
    Ok(CopyInstruction {
        origin: context.origin(),
        files,
        options: TransferOptions::from_flags(&flags),
        from: flags.non_empty_string("from"),
        parents: flags.bool("parents").unwrap_or(false),
    })
}

fn parse_transfer(
    context: &Context<'_>,
    keyword: &str,
    specs: &[FlagSpec],
) -> Result<(Flags, SourcesAndDest), Diagnostic> {
    let [sources @ .., dest] = context.args() else {
        return Err(no_destination(context, keyword));
    };
    if sources.is_empty() {
        return Err(no_destination(context, keyword));
    }
    let flags = Flags::parse(context, specs)?;
    if parse_heredoc_word(dest)?.is_some() {
        return Err(context
            .error_at_word(
                dest,
                format!("{keyword} cannot accept a heredoc as a destination"),
            )
            .with_hint(format!(
                "put the heredoc before the destination: {keyword} <<EOF /path"
            )));
    }
    let mut files = SourcesAndDest {
        sources: Vec::new(),
        inline_sources: Vec::new(),
        dest: dest.clone(),
    };
    let mut heredocs = context.node.heredocs.iter();
    for source in sources {
        match parse_heredoc_word(source)? {
            Some(word) => files.inline_sources.push(inline_source(
                &word,
                heredocs.next(),
                &context.node.heredocs,
            )),
            None => files.sources.push(source.clone()),
        }
    }
    Ok((flags, files))
}

fn no_destination(context: &Context<'_>, keyword: &str) -> Diagnostic {
    context
        .error(format!(
            "{keyword} requires at least two arguments, but only one was provided. Destination could not be determined"
        ))
        .with_hint(format!("write {keyword} <source>... <destination>"))
}

/// The body for the `k`-th heredoc word: BuildKit looks bodies up by delimiter name (the last
/// heredoc of that name wins), taking the name from the parser's `k`-th heredoc.
fn inline_source(word: &Heredoc, nth: Option<&Heredoc>, all: &[Heredoc]) -> InlineSource {
    let name = nth.map_or_else(|| word.name.clone(), |doc| doc.name.clone());
    let body = all
        .iter()
        .rev()
        .find(|doc| doc.name == name)
        .map(|doc| doc.content.as_str())
        .unwrap_or_default();
    let (expand, chomp) = nth.map_or((word.expand, word.chomp), |doc| (doc.expand, doc.chomp));
    let data = if chomp {
        chomp_heredoc_content(body)
    } else {
        body.to_string()
    };
    InlineSource {
        path: name,
        data,
        expand,
    }
}

impl AddInstruction {
    /// Expands `--chown`, `--chmod` (then validates it), `--checksum`, the sources and the
    /// destination. `--exclude`, `--keep-git-dir`, `--unpack`, `--link` and heredoc bodies
    /// (see [`SourcesAndDest::expand_inline_sources`]) are not expanded here.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        self.options.expand(&self.origin, expander)?;
        if let Some(checksum) = &self.checksum {
            self.checksum =
                Some(expand_word(&self.origin, expander, checksum)?).filter(|sum| !sum.is_empty());
        }
        self.files.expand(&self.origin, expander)
    }
}

impl CopyInstruction {
    /// BuildKit's rule for `--from`, which is never expanded: a value the shell lexer would
    /// change (a variable, quotes, escapes) is rejected, because the stage graph is built before
    /// variables are known. The stage planner calls this with the lexer and no variables when it
    /// resolves `--from`; [`Self::expand`] repeats it.
    pub fn check_from(&self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        match &self.from {
            Some(from) if expand_word(&self.origin, expander, from)? != *from => Err(self
                .origin
                .locate(Diagnostic::error(
                    "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                ))
                .with_hint(format!(
                    "add `ARG NAME` before the first FROM and `FROM ${{NAME}} AS src`, then use --from=src instead of --from={from}"
                ))),
            _ => Ok(()),
        }
    }

    /// Checks `--from` (see [`Self::check_from`]), then expands `--chown`, `--chmod` (and
    /// validates it), the sources and the destination. `--exclude`, `--parents`, `--link` and
    /// heredoc bodies (see [`SourcesAndDest::expand_inline_sources`]) are not expanded here.
    pub fn expand(&mut self, expander: &mut WordExpander<'_>) -> Result<(), Diagnostic> {
        self.check_from(expander)?;
        self.options.expand(&self.origin, expander)?;
        self.files.expand(&self.origin, expander)
    }
}
