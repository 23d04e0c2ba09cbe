//! `.dockerignore` matching with moby's semantics (`moby/patternmatcher` and its `ignorefile`
//! reader), and BuildKit's choice of which ignore file applies.
//!
//! Each line goes through the same steps as in BuildKit:
//! 1. the reader: a UTF-8 BOM is dropped, lines starting with `#` are comments, whitespace is
//!    trimmed, a leading `!` is split off, the rest is `filepath.Clean`ed and one leading `/` is
//!    dropped;
//! 2. the matcher constructor: the pattern is trimmed and cleaned again, `!` split off again, and
//!    the glob must pass Go's `filepath.Match` syntax check;
//! 3. lowering: moby classifies the pattern as exact, prefix (`dir/**`), suffix (`**/name`) or
//!    regex, and for the latter writes a Go regular expression. moby's odd results come from how
//!    Go's regexp parser reads that text (a `*` inside `[...]` becomes `[^/]*` whose `]` closes the
//!    class early, `\d` is a digit class, a bare `^` is an anchor), so we write the same text and
//!    read it the way RE2 does into a small instruction program, run by a bounded backtracker:
//!    linear time, no regex crate.
//!
//! A path is excluded when the last pattern matching it, or one of its parent directories, is not
//! an exception (`!`). Paths are context-relative with `/` separators; the context root itself is
//! never excluded. Everything here is pure except [`find_ignore_file`].
//!
//! Where we differ from moby, we fail loudly rather than match differently: moby reports an
//! invalid regular expression only when the pattern is first evaluated, we reject it up front;
//! `\p` Unicode classes are rejected (we carry no Unicode tables). Only Unix separators are
//! modelled.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The context-wide ignore file, and the suffix of a Dockerfile-specific one.
const IGNORE_FILE_NAME: &str = ".dockerignore";

/// Compiled ignore patterns, in file order.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    patterns: Vec<IgnorePattern>,
}

/// One pattern as moby keeps it: cleaned, with its `!` split off.
#[derive(Debug, Clone)]
pub struct IgnorePattern {
    text: String,
    exception: bool,
    matcher: Matcher,
}

/// Where an invalid pattern came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternLocation {
    /// 1-based line of the ignore file.
    Line(usize),
    /// 1-based position in the list given to [`IgnoreRules::from_patterns`].
    ListItem(usize),
}

impl fmt::Display for PatternLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternLocation::Line(line) => write!(f, "line {line}"),
            PatternLocation::ListItem(index) => write!(f, "pattern {index}"),
        }
    }
}

/// An ignore pattern BuildKit would refuse (or fail the build on when it is first used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: invalid ignore pattern `{pattern}`: {problem}")]
pub struct IgnoreError {
    pub location: PatternLocation,
    /// The pattern after the reader's normalisation, `!` included.
    pub pattern: String,
    pub problem: PatternProblem,
}

/// What is wrong with a pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternProblem {
    #[error("`!` alone is not a pattern")]
    LoneExclamation,
    #[error("it ends with a backslash that escapes nothing")]
    TrailingBackslash,
    #[error("a `[` character class is never closed")]
    UnclosedClass,
    #[error("`{0}` cannot start an item of a character class")]
    ClassItemStart(char),
    #[error("moby turns it into a Go regular expression whose `[` class never closes")]
    RegexUnclosedClass,
    #[error("moby turns it into a Go regular expression with the invalid range `{0}`")]
    RegexClassRange(String),
    #[error("moby turns it into a Go regular expression with the invalid escape `{0}`")]
    RegexEscape(String),
    #[error("moby turns it into a Go regular expression with a misplaced `{0}`")]
    RegexOperator(char),
    #[error("it uses a `\\{0}` Unicode class, which imgb does not implement")]
    UnicodeClass(char),
}

impl PatternProblem {
    pub fn hint(&self) -> &'static str {
        match self {
            PatternProblem::LoneExclamation => {
                "write the path to re-include after `!`, e.g. `!docs/README.md`"
            }
            PatternProblem::TrailingBackslash => "write `\\\\` to match a literal backslash",
            PatternProblem::UnclosedClass | PatternProblem::RegexUnclosedClass => {
                "write `\\[` to match a literal `[`"
            }
            PatternProblem::ClassItemStart(_) => {
                "escape `-` and `]` inside a class as `\\-` and `\\]`"
            }
            PatternProblem::RegexClassRange(_) => {
                "ranges are case-sensitive and go from low to high (`a-z`); BuildKit accepts this \
                 line but fails the build once it is used"
            }
            PatternProblem::RegexEscape(_) | PatternProblem::RegexOperator(_) => {
                "BuildKit accepts this line but fails the build once it is used; drop the \
                 backslash or escape only punctuation"
            }
            PatternProblem::UnicodeClass(_) => "list the characters in a `[...]` class instead",
        }
    }
}

impl IgnoreRules {
    /// Reads an ignore file's text the way BuildKit does.
    pub fn parse(text: &str) -> Result<Self, IgnoreError> {
        let mut patterns = Vec::new();
        for (line, pattern) in read_pattern_lines(text) {
            match compile_pattern(&pattern) {
                Ok(Some(compiled)) => patterns.push(compiled),
                Ok(None) => {}
                Err(problem) => {
                    return Err(IgnoreError {
                        location: PatternLocation::Line(line),
                        pattern,
                        problem,
                    });
                }
            }
        }
        Ok(IgnoreRules { patterns })
    }

    /// Compiles patterns as moby's `patternmatcher.New` does (no reader normalisation: a leading
    /// `/` stays, `!` is split off only after cleaning). Blank patterns are skipped.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<Self, IgnoreError> {
        let mut compiled = Vec::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let pattern = pattern.as_ref();
            match compile_pattern(pattern) {
                Ok(Some(one)) => compiled.push(one),
                Ok(None) => {}
                Err(problem) => {
                    return Err(IgnoreError {
                        location: PatternLocation::ListItem(index + 1),
                        pattern: pattern.trim().to_string(),
                        problem,
                    });
                }
            }
        }
        Ok(IgnoreRules { patterns: compiled })
    }

    /// moby's `MatchesOrParentMatches`: the last pattern matching `path` or one of its parent
    /// directories decides, and excludes unless it is an exception.
    pub fn is_excluded(&self, path: &str) -> bool {
        if path.is_empty() || path == "." {
            return false;
        }
        let parent = parent_dir(path);
        self.patterns
            .iter()
            .rev()
            .find(|pattern| {
                pattern.matches(path)
                    || parent
                        .as_deref()
                        .is_some_and(|dir| component_prefixes(dir).any(|p| pattern.matches(p)))
            })
            .is_some_and(|pattern| !pattern.exception)
    }

    /// False only when every (clean) path strictly below `dir` is excluded, so a context walker
    /// may skip the directory without reading it. May answer true when nothing is re-included.
    pub fn may_reinclude_below(&self, dir: &str) -> bool {
        let dir = clean(dir);
        let (dir, below) = if dir == "." {
            (None, String::new())
        } else {
            (Some(dir.as_str()), format!("{dir}/"))
        };
        // Whether some path below `dir` can come out not excluded after each pattern. A pattern
        // matching `dir` or an ancestor matches everything below it, as may one that matches
        // every path starting with `below`; one that can match some such path may or may not;
        // any other changes nothing.
        let mut may_be_kept = true;
        for pattern in &self.patterns {
            let keeps = pattern.exception;
            if dir.is_some_and(|dir| component_prefixes(dir).any(|p| pattern.matches(p)))
                || pattern.matches_all_below(&below)
            {
                may_be_kept = keeps;
            } else if keeps && pattern.may_match_below(&below) {
                may_be_kept = true;
            }
        }
        may_be_kept
    }

    /// The compiled patterns in order, e.g. to derive a cache key.
    pub fn patterns(&self) -> &[IgnorePattern] {
        &self.patterns
    }
}

impl IgnorePattern {
    /// The pattern as matched: cleaned, without its `!`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// A `!` pattern, which re-includes what it matches.
    pub fn is_exception(&self) -> bool {
        self.exception
    }

    /// moby's `Pattern.match`: this path alone, no parent directories.
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => path == self.text,
            Matcher::Prefix => self
                .text
                .strip_suffix("**")
                .is_some_and(|stem| path.starts_with(stem)),
            Matcher::Suffix => {
                let suffix = self.suffix();
                path.as_bytes().ends_with(suffix)
                    || suffix
                        .strip_prefix(b"/")
                        .is_some_and(|rest| path.as_bytes() == rest)
            }
            Matcher::Regex(program) => program.is_match(path),
        }
    }

    /// The pattern minus its leading `**`, byte-wise as Go slices it: a leading BOM leaves part
    /// of itself in the suffix.
    fn suffix(&self) -> &[u8] {
        self.text.as_bytes().get(2..).unwrap_or_default()
    }

    /// Whether every path starting with `prefix` matches (under-approximated).
    fn matches_all_below(&self, prefix: &str) -> bool {
        match &self.matcher {
            Matcher::Prefix => self
                .text
                .strip_suffix("**")
                .is_some_and(|stem| prefix.starts_with(stem)),
            Matcher::Suffix => self.suffix().is_empty(),
            Matcher::Exact | Matcher::Regex(_) => false,
        }
    }

    /// Whether some path starting with `prefix` might match (over-approximated).
    fn may_match_below(&self, prefix: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => self.text.starts_with(prefix),
            Matcher::Prefix => self
                .text
                .strip_suffix("**")
                .is_some_and(|stem| stem.starts_with(prefix) || prefix.starts_with(stem)),
            Matcher::Suffix => true,
            Matcher::Regex(program) => program.may_match_beyond(prefix),
        }
    }
}

impl fmt::Display for IgnorePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exception {
            f.write_str("!")?;
        }
        f.write_str(&self.text)
    }
}

/// Picks the ignore file BuildKit would use: `<Dockerfile>.dockerignore` next to the Dockerfile
/// (named as given, so `Dockerfile` even when the lowercase `dockerfile` is the one read), else
/// the context's `.dockerignore`. Only regular files count (symlinks followed). A Dockerfile
/// read from stdin has no specific file: pass the context's `.dockerignore` path to skip it.
pub fn find_ignore_file(context_dir: &Path, dockerfile: &Path) -> io::Result<Option<PathBuf>> {
    if let Some(name) = dockerfile.file_name() {
        let mut specific = name.to_os_string();
        specific.push(IGNORE_FILE_NAME);
        let specific = dockerfile.with_file_name(specific);
        if is_regular_file(&specific)? {
            return Ok(Some(specific));
        }
    }
    let shared = context_dir.join(IGNORE_FILE_NAME);
    Ok(is_regular_file(&shared)?.then_some(shared))
}

fn is_regular_file(path: &Path) -> io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(metadata.is_file()),
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// The reader (`ignorefile.ReadAll`): each pattern line with its 1-based line number.
fn read_pattern_lines(text: &str) -> Vec<(usize, String)> {
    let mut patterns = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_text = if index == 0 {
            line.strip_prefix('\u{FEFF}').unwrap_or(line)
        } else {
            line
        };
        // Comments are recognised before trimming: ` # x` is a pattern.
        if line_text.starts_with('#') {
            continue;
        }
        let trimmed = line_text.trim();
        if trimmed.is_empty() {
            continue;
        }
        let (exception, body) = match trimmed.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, trimmed),
        };
        let mut pattern = String::from(if exception { "!" } else { "" });
        if !body.is_empty() {
            let cleaned = clean(body);
            let relative = match cleaned.strip_prefix('/') {
                Some(rest) if !rest.is_empty() => rest,
                _ => &cleaned,
            };
            pattern.push_str(relative);
        }
        patterns.push((index + 1, pattern));
    }
    patterns
}

/// One entry of moby's `patternmatcher.New`; `None` for a blank pattern.
fn compile_pattern(raw: &str) -> Result<Option<IgnorePattern>, PatternProblem> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    // Cleaned before `!` is split off, so `!a/../b` loses its `!`, as in moby.
    let cleaned = clean(trimmed);
    let (exception, text) = match cleaned.strip_prefix('!') {
        Some("") => return Err(PatternProblem::LoneExclamation),
        Some(rest) => (true, rest),
        None => (false, cleaned.as_str()),
    };
    check_glob_syntax(text)?;
    let matcher = match lower(text) {
        (MatchKind::Exact, _) => Matcher::Exact,
        (MatchKind::Prefix, _) => Matcher::Prefix,
        (MatchKind::Suffix, _) => Matcher::Suffix,
        (MatchKind::Regex, regex) => Matcher::Regex(Program::parse(&regex)?),
    };
    Ok(Some(IgnorePattern {
        text: text.to_string(),
        exception,
        matcher,
    }))
}

/// Go's `path.Clean`: collapse slashes, drop `.`, resolve `..` lexically, `"."` when empty.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    // Leading `..` of a relative path, which nothing can cancel.
    let mut fixed = 0;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.len() > fixed => {
                parts.pop();
            }
            ".." if rooted => {}
            ".." => {
                parts.push("..");
                fixed += 1;
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// Go's `filepath.Dir`, or `None` where it returns `"."` (moby then checks no parents).
fn parent_dir(path: &str) -> Option<Cow<'_, str>> {
    let slash = path.rfind('/')?;
    let head = &path[..slash];
    let dir = if is_clean(head) {
        Cow::Borrowed(head)
    } else {
        Cow::Owned(clean(&path[..=slash]))
    };
    (dir != ".").then_some(dir)
}

/// Whether `clean` would return `path` unchanged (the usual case for a walker's paths).
fn is_clean(path: &str) -> bool {
    let relative = path.strip_prefix('/').unwrap_or(path);
    !relative.is_empty()
        && relative
            .split('/')
            .all(|part| !matches!(part, "" | "." | ".."))
}

/// `a`, `a/b`, `a/b/c` for `a/b/c`: the joins of the first 1, 2, ... components.
fn component_prefixes(dir: &str) -> impl Iterator<Item = &str> {
    dir.match_indices('/')
        .map(|(slash, _)| &dir[..slash])
        .chain(std::iter::once(dir))
}

/// The syntax check moby delegates to Go's `filepath.Match(pattern, ".")`.
fn check_glob_syntax(pattern: &str) -> Result<(), PatternProblem> {
    let mut chars = pattern.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => {
                chars.next().ok_or(PatternProblem::TrailingBackslash)?;
            }
            '[' => {
                if chars.as_str().starts_with('^') {
                    chars.next();
                }
                let mut items = 0;
                loop {
                    if items > 0 && chars.as_str().starts_with(']') {
                        chars.next();
                        break;
                    }
                    check_class_char(&mut chars)?;
                    if chars.as_str().starts_with('-') {
                        chars.next();
                        check_class_char(&mut chars)?;
                    }
                    items += 1;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One end of a class item (Go's `getEsc`), which must be followed by more of the class.
fn check_class_char(chars: &mut std::str::Chars<'_>) -> Result<(), PatternProblem> {
    match chars.next() {
        None => return Err(PatternProblem::UnclosedClass),
        Some(ch @ ('-' | ']')) => return Err(PatternProblem::ClassItemStart(ch)),
        Some('\\') => {
            chars.next().ok_or(PatternProblem::UnclosedClass)?;
        }
        Some(_) => {}
    }
    if chars.as_str().is_empty() {
        Err(PatternProblem::UnclosedClass)
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchKind {
    Exact,
    Prefix,
    Suffix,
    Regex,
}

#[derive(Debug, Clone)]
enum Matcher {
    /// The path equals the pattern.
    Exact,
    /// The path starts with the pattern minus its trailing `**`.
    Prefix,
    /// The path ends with the pattern minus its leading `**`, or is that minus its `/`.
    Suffix,
    Regex(Program),
}

/// moby's `Pattern.compile`: the match kind, and the Go regular expression it writes (used only
/// for [`MatchKind::Regex`]). `**` counts as a prefix or suffix marker only at either end of an
/// otherwise plain pattern, and a leading `**` makes the kind `Suffix` until a later wildcard.
fn lower(pattern: &str) -> (MatchKind, String) {
    // Go's text/scanner silently drops a byte-order mark at the start of its input.
    let body = pattern.strip_prefix('\u{FEFF}').unwrap_or(pattern);
    let mut chars = body.chars().peekable();
    let mut kind = MatchKind::Exact;
    let mut regex = String::from("^");
    let mut first = true;
    while let Some(ch) = chars.next() {
        match ch {
            '*' if chars.next_if_eq(&'*').is_some() => {
                chars.next_if_eq(&'/');
                if chars.peek().is_some() {
                    regex.push_str("(.*/)?");
                    kind = MatchKind::Regex;
                } else if kind == MatchKind::Exact {
                    kind = MatchKind::Prefix;
                } else {
                    regex.push_str(".*");
                    kind = MatchKind::Regex;
                }
                if first {
                    kind = MatchKind::Suffix;
                }
            }
            '*' => {
                regex.push_str("[^/]*");
                kind = MatchKind::Regex;
            }
            '?' => {
                regex.push_str("[^/]");
                kind = MatchKind::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                regex.push('\\');
                regex.push(ch);
            }
            '\\' => {
                regex.push('\\');
                if let Some(escaped) = chars.next() {
                    regex.push(escaped);
                    kind = MatchKind::Regex;
                }
            }
            '[' | ']' => {
                regex.push(ch);
                kind = MatchKind::Regex;
            }
            _ => regex.push(ch),
        }
        first = false;
    }
    if kind == MatchKind::Regex {
        regex.push('$');
    }
    (kind, regex)
}

// ---------------------------------------------------------------------------------------------
// The regular expressions moby writes, read as Go's RE2 parser (Perl flags) reads them.
//
// The lowering escapes `.+()|{}$` and replaces `*` and `?`, so besides user literals the text
// holds only `[...]` classes, `\` escapes, bare `^` and `]`, and the generated `[^/]`, `[^/]*`,
// `(.*/)?`, `.*` and final `$`. Repetition therefore only ever follows an atom, and groups only
// come from `(.*/)?`. Other characters are literals here.

#[derive(Debug, Clone)]
struct Program {
    insts: Vec<Inst>,
    /// Literal text every match starts with (after the leading `^`) and ends with (before a
    /// final `$`): a cheap rejection before the simulation.
    literal_prefix: String,
    literal_suffix: String,
}

#[derive(Debug, Clone)]
enum Inst {
    Char(char),
    Class(CharClass),
    /// `.`: RE2 without the `s` flag does not match a newline.
    AnyButNewline,
    Assert(Assertion),
    Split(usize, usize),
    Jump(usize),
    Match,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assertion {
    BeginText,
    EndText,
    WordBoundary,
    NotWordBoundary,
}

#[derive(Debug, Clone)]
struct CharClass {
    negated: bool,
    items: Vec<ClassItem>,
}

#[derive(Debug, Clone, Copy)]
enum ClassItem {
    Range(char, char),
    /// A named group (`\d`, `[:alpha:]`), possibly negated (`\D`, `[:^alpha:]`).
    Group {
        negated: bool,
        ranges: &'static [(char, char)],
    },
}

impl CharClass {
    fn contains(&self, ch: char) -> bool {
        let listed = self.items.iter().any(|item| match *item {
            ClassItem::Range(lo, hi) => (lo..=hi).contains(&ch),
            ClassItem::Group { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&ch)) != negated
            }
        });
        listed != self.negated
    }
}

const DIGIT: &[(char, char)] = &[('0', '9')];
const PERL_SPACE: &[(char, char)] = &[('\t', '\n'), ('\x0C', '\r'), (' ', ' ')];
const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];

fn perl_group(letter: char) -> Option<ClassItem> {
    let (negated, ranges) = match letter {
        'd' => (false, DIGIT),
        'D' => (true, DIGIT),
        's' => (false, PERL_SPACE),
        'S' => (true, PERL_SPACE),
        'w' => (false, WORD),
        'W' => (true, WORD),
        _ => return None,
    };
    Some(ClassItem::Group { negated, ranges })
}

/// `[:name:]` or `[:^name:]`, ASCII as in RE2.
fn posix_group(name: &str) -> Option<ClassItem> {
    let inner = name.strip_prefix("[:")?.strip_suffix(":]")?;
    let (negated, inner) = match inner.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, inner),
    };
    let ranges: &'static [(char, char)] = match inner {
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "ascii" => &[('\0', '\x7F')],
        "blank" => &[('\t', '\t'), (' ', ' ')],
        "cntrl" => &[('\0', '\x1F'), ('\x7F', '\x7F')],
        "digit" => DIGIT,
        "graph" => &[('!', '~')],
        "lower" => &[('a', 'z')],
        "print" => &[(' ', '~')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "upper" => &[('A', 'Z')],
        "word" => WORD,
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        _ => return None,
    };
    Some(ClassItem::Group { negated, ranges })
}

#[derive(Debug)]
enum Node {
    Char(char),
    Class(CharClass),
    AnyButNewline,
    Assert(Assertion),
    Group(Vec<Node>),
    Repeat { node: Box<Node>, at_most_once: bool },
}

fn first_char(text: &str) -> Option<char> {
    text.chars().next()
}

/// Parses the text after a `\` as an RE2 single-character escape.
fn parse_escape(text: &str) -> Result<(char, &str), PatternProblem> {
    let mut chars = text.chars();
    let escape = chars.next().ok_or(PatternProblem::TrailingBackslash)?;
    let invalid = |consumed: &str| PatternProblem::RegexEscape(format!("\\{consumed}"));
    let ch = match escape {
        c if c.is_ascii() && !c.is_ascii_alphanumeric() => c,
        // A lone `\1`..`\7` would be a backreference, which RE2 does not support.
        '1'..='7'
            if !chars
                .as_str()
                .starts_with(|c: char| ('0'..='7').contains(&c)) =>
        {
            return Err(invalid(&text[..1]));
        }
        '0'..='7' => {
            let mut value = u32::from(escape) - u32::from('0');
            for _ in 0..2 {
                match chars.as_str().chars().next().and_then(|c| c.to_digit(8)) {
                    Some(digit) => {
                        value = value * 8 + digit;
                        chars.next();
                    }
                    None => break,
                }
            }
            char::from_u32(value)
                .ok_or_else(|| invalid(&text[..text.len() - chars.as_str().len()]))?
        }
        'x' => {
            let high = chars.next().and_then(|c| c.to_digit(16));
            let low = chars.next().and_then(|c| c.to_digit(16));
            let consumed = &text[..text.len() - chars.as_str().len()];
            match (high, low) {
                (Some(high), Some(low)) => {
                    char::from_u32(high * 16 + low).ok_or_else(|| invalid(consumed))?
                }
                _ => return Err(invalid(consumed)),
            }
        }
        'a' => '\x07',
        'f' => '\x0C',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\x0B',
        _ => return Err(invalid(&text[..escape.len_utf8()])),
    };
    Ok((ch, chars.as_str()))
}

/// One character of a class, escaped or not.
fn parse_class_char(text: &str) -> Result<(char, &str), PatternProblem> {
    match text.strip_prefix('\\') {
        Some(escaped) => parse_escape(escaped),
        None => {
            let ch = first_char(text).ok_or(PatternProblem::RegexUnclosedClass)?;
            Ok((ch, &text[ch.len_utf8()..]))
        }
    }
}

/// Parses a class whose `[` is already consumed; returns it and the text after its `]`.
fn parse_class(text: &str) -> Result<(CharClass, &str), PatternProblem> {
    let (negated, mut rest) = match text.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut items = Vec::new();
    // `]` right after `[` or `[^` is a literal.
    let mut first = true;
    loop {
        if !first && let Some(after) = rest.strip_prefix(']') {
            return Ok((CharClass { negated, items }, after));
        }
        first = false;
        // RE2 looks for the closing `:]` anywhere in the rest of the expression, not just in the
        // class, and rejects an unknown name.
        if rest.starts_with("[:")
            && let Some(end) = rest.get(2..).and_then(|after| after.find(":]"))
        {
            let name = &rest[..end + 4];
            items.push(
                posix_group(name)
                    .ok_or_else(|| PatternProblem::RegexClassRange(name.to_string()))?,
            );
            rest = &rest[end + 4..];
            continue;
        }
        if let Some(escaped) = rest.strip_prefix('\\') {
            if let Some(letter @ ('p' | 'P')) = first_char(escaped) {
                return Err(PatternProblem::UnicodeClass(letter));
            }
            if let Some(group) = first_char(escaped).and_then(perl_group) {
                items.push(group);
                rest = &escaped[1..];
                continue;
            }
        }
        let range_start = rest;
        let (lo, after) = parse_class_char(rest)?;
        rest = after;
        let mut hi = lo;
        // `a-]` is `a` and `-`.
        if rest.len() >= 2
            && let Some(after_dash) = rest.strip_prefix('-')
            && !after_dash.starts_with(']')
        {
            let (end, after) = parse_class_char(after_dash)?;
            rest = after;
            hi = end;
            if hi < lo {
                let range = &range_start[..range_start.len() - rest.len()];
                return Err(PatternProblem::RegexClassRange(range.to_string()));
            }
        }
        items.push(ClassItem::Range(lo, hi));
    }
}

impl Program {
    fn parse(regex: &str) -> Result<Program, PatternProblem> {
        let mut open: Vec<Vec<Node>> = vec![Vec::new()];
        let mut rest = regex;
        while let Some(ch) = first_char(rest) {
            let after = &rest[ch.len_utf8()..];
            let sequence = open.last_mut().ok_or(PatternProblem::RegexOperator(ch))?;
            rest = after;
            match ch {
                '(' => open.push(Vec::new()),
                ')' => {
                    let group = open
                        .pop()
                        .filter(|_| !open.is_empty())
                        .ok_or(PatternProblem::RegexOperator(')'))?;
                    open.last_mut()
                        .ok_or(PatternProblem::RegexOperator(')'))?
                        .push(Node::Group(group));
                }
                '*' | '?' => {
                    let node = sequence.pop().ok_or(PatternProblem::RegexOperator(ch))?;
                    sequence.push(Node::Repeat {
                        node: Box::new(node),
                        at_most_once: ch == '?',
                    });
                }
                '^' => sequence.push(Node::Assert(Assertion::BeginText)),
                '$' => sequence.push(Node::Assert(Assertion::EndText)),
                '.' => sequence.push(Node::AnyButNewline),
                '[' => {
                    let (class, after) = parse_class(after)?;
                    sequence.push(Node::Class(class));
                    rest = after;
                }
                '\\' => rest = parse_escape_sequence(after, sequence)?,
                _ => sequence.push(Node::Char(ch)),
            }
        }
        let [sequence] =
            <[Vec<Node>; 1]>::try_from(open).map_err(|_| PatternProblem::RegexOperator('('))?;
        let literal_prefix = match sequence.split_first() {
            Some((Node::Assert(Assertion::BeginText), rest)) => leading_literal(rest.iter()),
            _ => String::new(),
        };
        let literal_suffix = match sequence.split_last() {
            Some((Node::Assert(Assertion::EndText), rest)) => {
                leading_literal(rest.iter().rev()).chars().rev().collect()
            }
            _ => String::new(),
        };
        let mut insts = Vec::new();
        compile(&sequence, &mut insts);
        insts.push(Inst::Match);
        Ok(Program {
            insts,
            literal_prefix,
            literal_suffix,
        })
    }

    /// Go's `MatchString`: unanchored at the end, and every moby regex starts with `^`.
    fn is_match(&self, text: &str) -> bool {
        text.starts_with(&self.literal_prefix)
            && text.ends_with(&self.literal_suffix)
            && self.run(text, Ahead::End) == Outcome::Matched
    }

    /// Whether some text strictly longer than `prefix`, starting with it, might match.
    fn may_match_beyond(&self, prefix: &str) -> bool {
        self.run(prefix, Ahead::Unknown) != Outcome::Dead
    }

    /// Depth-first search over (instruction, position) pairs, each visited at most once, so
    /// linear in `text` (RE2's bit-state backtracker); `beyond` says what follows `text`.
    fn run(&self, text: &str, beyond: Ahead) -> Outcome {
        let width = text.len() + 1;
        let mut visited = vec![0u64; (self.insts.len() * width).div_ceil(64)];
        let mut pending = vec![(0, 0)];
        let mut alive = false;
        while let Some((mut pc, mut pos)) = pending.pop() {
            loop {
                let bit = pc * width + pos;
                match visited.get_mut(bit / 64) {
                    Some(word) if *word & (1 << (bit % 64)) == 0 => *word |= 1 << (bit % 64),
                    _ => break,
                }
                let ahead = text.get(pos..).and_then(first_char);
                match self.insts.get(pc) {
                    Some(Inst::Split(first, second)) => {
                        pending.push((*second, pos));
                        pc = *first;
                    }
                    Some(Inst::Jump(target)) => pc = *target,
                    Some(Inst::Assert(assertion)) => {
                        let before = text.get(..pos).and_then(|done| done.chars().next_back());
                        if !assertion.holds(before, ahead.map_or(beyond, Ahead::Char)) {
                            break;
                        }
                        pc += 1;
                    }
                    Some(Inst::Match) => return Outcome::Matched,
                    Some(inst) => match ahead {
                        Some(ch) if inst.accepts(ch) => {
                            pc += 1;
                            pos += ch.len_utf8();
                        }
                        Some(_) => break,
                        None => {
                            alive = true;
                            break;
                        }
                    },
                    None => break,
                }
            }
        }
        if alive { Outcome::Alive } else { Outcome::Dead }
    }
}

impl Inst {
    /// Whether a consuming instruction accepts `ch`.
    fn accepts(&self, ch: char) -> bool {
        match self {
            Inst::Char(expected) => *expected == ch,
            Inst::Class(class) => class.contains(ch),
            Inst::AnyButNewline => ch != '\n',
            Inst::Assert(_) | Inst::Split(..) | Inst::Jump(_) | Inst::Match => false,
        }
    }
}

/// Parses what follows a `\` outside a class, pushing the node; returns the rest of the text.
fn parse_escape_sequence<'a>(
    text: &'a str,
    sequence: &mut Vec<Node>,
) -> Result<&'a str, PatternProblem> {
    let Some(letter) = first_char(text) else {
        return Err(PatternProblem::TrailingBackslash);
    };
    let after = &text[letter.len_utf8()..];
    let assertion = match letter {
        'A' => Some(Assertion::BeginText),
        'z' => Some(Assertion::EndText),
        'b' => Some(Assertion::WordBoundary),
        'B' => Some(Assertion::NotWordBoundary),
        _ => None,
    };
    if let Some(assertion) = assertion {
        sequence.push(Node::Assert(assertion));
        return Ok(after);
    }
    match letter {
        'C' => Err(PatternProblem::RegexEscape("\\C".to_string())),
        // `\Q...\E` quotes up to `\E` or the end of the expression, `$` included.
        'Q' => {
            let (quoted, rest) = after.split_once("\\E").unwrap_or((after, ""));
            sequence.extend(quoted.chars().map(Node::Char));
            Ok(rest)
        }
        'p' | 'P' => Err(PatternProblem::UnicodeClass(letter)),
        _ => match perl_group(letter) {
            Some(group) => {
                sequence.push(Node::Class(CharClass {
                    negated: false,
                    items: vec![group],
                }));
                Ok(after)
            }
            None => {
                let (ch, rest) = parse_escape(text)?;
                sequence.push(Node::Char(ch));
                Ok(rest)
            }
        },
    }
}

/// The characters of the literal nodes at the start of `nodes`.
fn leading_literal<'a>(nodes: impl Iterator<Item = &'a Node>) -> String {
    nodes
        .map_while(|node| match node {
            Node::Char(ch) => Some(*ch),
            _ => None,
        })
        .collect()
}

fn compile(nodes: &[Node], insts: &mut Vec<Inst>) {
    for node in nodes {
        match node {
            Node::Char(ch) => insts.push(Inst::Char(*ch)),
            Node::Class(class) => insts.push(Inst::Class(class.clone())),
            Node::AnyButNewline => insts.push(Inst::AnyButNewline),
            Node::Assert(assertion) => insts.push(Inst::Assert(*assertion)),
            Node::Group(inner) => compile(inner, insts),
            Node::Repeat { node, at_most_once } => {
                let split = insts.len();
                insts.push(Inst::Match); // placeholder, patched below
                compile(std::slice::from_ref(node.as_ref()), insts);
                if !at_most_once {
                    insts.push(Inst::Jump(split));
                }
                insts[split] = Inst::Split(split + 1, insts.len());
            }
        }
    }
}

/// What follows the current position.
#[derive(Debug, Clone, Copy)]
enum Ahead {
    Char(char),
    End,
    /// At least one more character, not known yet.
    Unknown,
}

impl Assertion {
    fn holds(self, before: Option<char>, ahead: Ahead) -> bool {
        let is_word = |ch: char| ch.is_ascii_alphanumeric() || ch == '_';
        let word_before = before.is_some_and(is_word);
        match (self, ahead) {
            (Assertion::BeginText, _) => before.is_none(),
            (Assertion::EndText, ahead) => matches!(ahead, Ahead::End),
            (Assertion::WordBoundary | Assertion::NotWordBoundary, Ahead::Unknown) => true,
            (Assertion::WordBoundary, Ahead::Char(ch)) => word_before != is_word(ch),
            (Assertion::WordBoundary, Ahead::End) => word_before,
            (Assertion::NotWordBoundary, Ahead::Char(ch)) => word_before == is_word(ch),
            (Assertion::NotWordBoundary, Ahead::End) => !word_before,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Matched,
    /// No match yet, but the text ended where more input could continue one.
    Alive,
    Dead,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[&str]) -> IgnoreRules {
        IgnoreRules::from_patterns(patterns).unwrap_or_else(|error| panic!("{patterns:?}: {error}"))
    }

    fn excluded(path: &str, patterns: &[&str]) -> bool {
        rules(patterns).is_excluded(path)
    }

    fn single(pattern: &str) -> IgnorePattern {
        match compile_pattern(pattern) {
            Ok(Some(compiled)) => compiled,
            other => panic!("{pattern:?}: {other:?}"),
        }
    }

    fn problem(patterns: &[&str]) -> PatternProblem {
        match IgnoreRules::from_patterns(patterns) {
            Ok(_) => panic!("{patterns:?} should be rejected"),
            Err(error) => error.problem,
        }
    }

    // --- moby/patternmatcher patternmatcher_test.go -------------------------------------------

    #[test]
    fn wildcard_matches() {
        assert!(excluded("fileutils.go", &["*"]));
    }

    #[test]
    fn pattern_matches() {
        assert!(excluded("fileutils.go", &["*.go"]));
    }

    #[test]
    fn exclusion_pattern_matches_pattern_before() {
        assert!(excluded("fileutils.go", &["!fileutils.go", "*.go"]));
    }

    #[test]
    fn pattern_matches_folder_exclusions() {
        assert!(!excluded("docs/README.md", &["docs", "!docs/README.md"]));
    }

    #[test]
    fn pattern_matches_folder_with_slash_exclusions() {
        assert!(!excluded("docs/README.md", &["docs/", "!docs/README.md"]));
    }

    #[test]
    fn pattern_matches_folder_wildcard_exclusions() {
        assert!(!excluded("docs/README.md", &["docs/*", "!docs/README.md"]));
    }

    #[test]
    fn exclusion_pattern_matches_pattern_after() {
        assert!(!excluded("fileutils.go", &["*.go", "!fileutils.go"]));
    }

    #[test]
    fn exclusion_pattern_matches_whole_directory() {
        assert!(!excluded(".", &["*.go"]));
        assert!(!excluded("", &["*"]));
    }

    #[test]
    fn single_exclamation_error() {
        assert_eq!(problem(&["!"]), PatternProblem::LoneExclamation);
    }

    #[test]
    fn matches_with_no_patterns() {
        assert!(!excluded("/any/path/there", &[]));
    }

    #[test]
    fn matches_with_malformed_patterns() {
        assert_eq!(problem(&["["]), PatternProblem::UnclosedClass);
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Expect {
        Fail,
        /// The pattern matches the path itself.
        Exact,
        /// The pattern matches only a parent directory of the path.
        Inexact,
    }
    use Expect::{Exact, Fail, Inexact};

    const MATCHES_TABLE: &[(&str, &str, Expect)] = &[
        ("**", "file", Exact),
        ("**", "file/", Exact),
        ("**/", "file", Exact), // weird one
        ("**/", "file/", Exact),
        ("**", "/", Exact),
        ("**/", "/", Exact),
        ("**", "dir/file", Exact),
        ("**/", "dir/file", Exact),
        ("**", "dir/file/", Exact),
        ("**/", "dir/file/", Exact),
        ("**/**", "dir/file", Exact),
        ("**/**", "dir/file/", Exact),
        ("dir/**", "dir/file", Exact),
        ("dir/**", "dir/file/", Exact),
        ("dir/**", "dir/dir2/file", Exact),
        ("dir/**", "dir/dir2/file/", Exact),
        ("**/dir", "dir", Exact),
        ("**/dir", "dir/file", Inexact),
        ("**/dir2/*", "dir/dir2/file", Exact),
        ("**/dir2/*", "dir/dir2/file/", Inexact),
        ("**/dir2/**", "dir/dir2/dir3/file", Exact),
        ("**/dir2/**", "dir/dir2/dir3/file/", Exact),
        ("**file", "file", Exact),
        ("**file", "dir/file", Exact),
        ("**/file", "dir/file", Exact),
        ("**file", "dir/dir/file", Exact),
        ("**/file", "dir/dir/file", Exact),
        ("**/file*", "dir/dir/file", Exact),
        ("**/file*", "dir/dir/file.txt", Exact),
        ("**/file*txt", "dir/dir/file.txt", Exact),
        ("**/file*.txt", "dir/dir/file.txt", Exact),
        ("**/file*.txt*", "dir/dir/file.txt", Exact),
        ("**/**/*.txt", "dir/dir/file.txt", Exact),
        ("**/**/*.txt2", "dir/dir/file.txt", Fail),
        ("**/*.txt", "file.txt", Exact),
        ("**/**/*.txt", "file.txt", Exact),
        ("a**/*.txt", "a/file.txt", Exact),
        ("a**/*.txt", "a/dir/file.txt", Exact),
        ("a**/*.txt", "a/dir/dir/file.txt", Exact),
        ("a/*.txt", "a/dir/file.txt", Fail),
        ("a/*.txt", "a/file.txt", Exact),
        ("a/*.txt**", "a/file.txt", Exact),
        ("a[b-d]e", "ae", Fail),
        ("a[b-d]e", "ace", Exact),
        ("a[b-d]e", "aae", Fail),
        ("a[^b-d]e", "aze", Exact),
        (".*", ".foo", Exact),
        (".*", "foo", Fail),
        ("abc.def", "abcdef", Fail),
        ("abc.def", "abc.def", Exact),
        ("abc.def", "abcZdef", Fail),
        ("abc?def", "abcZdef", Exact),
        ("abc?def", "abcdef", Fail),
        ("**/foo/bar", "foo/bar", Exact),
        ("**/foo/bar", "dir/foo/bar", Exact),
        ("**/foo/bar", "dir/dir2/foo/bar", Exact),
        ("abc/**", "abc", Fail),
        ("abc/**", "abc/def", Exact),
        ("abc/**", "abc/def/ghi", Exact),
        ("**/.foo", ".foo", Exact),
        ("**/.foo", "bar.foo", Fail),
        ("a(b)c/def", "a(b)c/def", Exact),
        ("a(b)c/def", "a(b)c/xyz", Fail),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", Exact),
        (
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Exact,
        ),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Exact,
        ),
        // The non-Windows additions.
        ("a\\\\", "a\\", Exact),
        ("a\\*b", "a*b", Exact),
    ];

    #[test]
    fn matches_table_exact() {
        for &(pattern, path, expect) in MATCHES_TABLE {
            assert_eq!(
                single(pattern).matches(path),
                expect == Exact,
                "pattern {pattern:?} path {path:?}"
            );
        }
    }

    #[test]
    fn matches_table_or_parent_matches() {
        for &(pattern, path, expect) in MATCHES_TABLE {
            assert_eq!(
                excluded(path, &[pattern]),
                expect != Fail,
                "pattern {pattern:?} path {path:?}"
            );
        }
    }

    #[test]
    fn matches_table_multiple_patterns() {
        let whl = "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl";
        let cases: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                whl,
                false,
            ),
            (&["**", "!dist/*.whl"], whl, false),
        ];
        for &(patterns, path, expected) in cases {
            assert_eq!(
                excluded(path, patterns),
                expected,
                "patterns {patterns:?} path {path:?}"
            );
        }
    }

    #[test]
    fn clean_patterns() {
        assert_eq!(rules(&["docs", "config"]).patterns().len(), 2);
    }

    #[test]
    fn clean_patterns_strip_empty_patterns() {
        assert_eq!(rules(&["docs", "config", ""]).patterns().len(), 2);
    }

    #[test]
    fn clean_patterns_exception_flag() {
        for patterns in [
            ["docs", "!docs/README.md"],
            ["docs", "  !docs/README.md"],
            ["docs", "!docs/README.md  "],
        ] {
            let compiled = rules(&patterns);
            assert!(
                compiled.patterns().iter().any(IgnorePattern::is_exception),
                "{patterns:?}"
            );
            assert_eq!(compiled.patterns()[1].text(), "docs/README.md");
        }
    }

    #[test]
    fn clean_patterns_error_single_exception() {
        assert_eq!(problem(&["!"]), PatternProblem::LoneExclamation);
    }

    /// Go's filepath.Match tests, as moby runs them through its matcher.
    #[test]
    fn filepath_match_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
        ];
        for &(pattern, path, expected) in cases {
            assert_eq!(
                excluded(path, &[pattern]),
                expected,
                "pattern {pattern:?} path {path:?}"
            );
        }
        let malformed: &[(&str, PatternProblem)] = &[
            ("[]a]", PatternProblem::ClassItemStart(']')),
            ("[-]", PatternProblem::ClassItemStart('-')),
            ("[x-]", PatternProblem::ClassItemStart(']')),
            ("[-x]", PatternProblem::ClassItemStart('-')),
            ("\\", PatternProblem::TrailingBackslash),
            ("[a-b-c]", PatternProblem::ClassItemStart('-')),
            ("[", PatternProblem::UnclosedClass),
            ("[^", PatternProblem::UnclosedClass),
            ("[^bc", PatternProblem::UnclosedClass),
            ("a[", PatternProblem::UnclosedClass),
        ];
        for (pattern, expected) in malformed {
            assert_eq!(&problem(&[pattern]), expected, "pattern {pattern:?}");
        }
    }

    /// moby's TestCompile, slash variant: match kind and the regular expression written.
    #[test]
    fn lowering_table() {
        use MatchKind::{Exact as E, Prefix as P, Regex as R, Suffix as S};
        let cases: &[(&str, MatchKind, &str)] = &[
            ("*", R, "^[^/]*$"),
            ("file*", R, "^file[^/]*$"),
            ("*file", R, "^[^/]*file$"),
            ("a*/b", R, "^a[^/]*/b$"),
            ("**", S, ""),
            ("**/**", R, "^(.*/)?.*$"),
            ("dir/**", P, ""),
            ("**/dir", S, ""),
            ("**/dir2/*", R, "^(.*/)?dir2/[^/]*$"),
            ("**/dir2/**", R, "^(.*/)?dir2/.*$"),
            ("**file", S, ""),
            ("**/file*txt", R, "^(.*/)?file[^/]*txt$"),
            ("**/**/*.txt", R, "^(.*/)?(.*/)?[^/]*\\.txt$"),
            ("a[b-d]e", R, "^a[b-d]e$"),
            (".*", R, "^\\.[^/]*$"),
            ("abc.def", E, ""),
            ("abc?def", R, "^abc[^/]def$"),
            ("**/foo/bar", S, ""),
            ("a(b)c/def", E, ""),
            ("a.|)$(}+{bc", E, ""),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                E,
                "",
            ),
        ];
        for &(pattern, kind, regex) in cases {
            let (lowered_kind, lowered) = lower(&clean(pattern));
            assert_eq!(lowered_kind, kind, "pattern {pattern:?}");
            if kind == MatchKind::Regex {
                assert_eq!(lowered, regex, "pattern {pattern:?}");
            }
        }
    }

    /// moby accepts `[Local-Only]/` and fails with ErrBadPattern on every match (it once
    /// panicked on the second); we refuse it when compiling, naming the bad range.
    #[test]
    fn reversed_class_range_is_rejected_when_compiling() {
        let error = IgnoreRules::parse("ok\n[Local-Only]/\n").expect_err("must be rejected");
        assert_eq!(error.location, PatternLocation::Line(2));
        assert_eq!(error.pattern, "[Local-Only]");
        assert_eq!(
            error.problem,
            PatternProblem::RegexClassRange("l-O".to_string())
        );
    }

    // --- moby/patternmatcher ignorefile_test.go and BuildKit dockerignore_test.go -------------

    const READ_ALL_CONTENT: &str =
        "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";

    fn read_all(text: &str) -> Vec<String> {
        read_pattern_lines(text)
            .into_iter()
            .map(|(_, pattern)| pattern)
            .collect()
    }

    #[test]
    fn read_all_of_nothing_is_empty() {
        assert!(read_all("").is_empty());
        assert!(
            IgnoreRules::parse("")
                .expect("empty file")
                .patterns()
                .is_empty()
        );
    }

    #[test]
    fn read_all_normalises_lines() {
        let expected = [
            "test1",
            "test2",
            "a/file/here",
            "lastfile",
            "!inverted/abs/path",
            "!",
            "!",
        ];
        assert_eq!(read_all(READ_ALL_CONTENT), expected);
        // BuildKit's copy of the test ends the file with a newline.
        assert_eq!(read_all(&format!("{READ_ALL_CONTENT}\n")), expected);
        let lines: Vec<usize> = read_pattern_lines(READ_ALL_CONTENT)
            .into_iter()
            .map(|(line, _)| line)
            .collect();
        assert_eq!(lines, [1, 2, 3, 5, 7, 8, 9]);
    }

    #[test]
    fn lone_exclamation_line_is_rejected_with_its_line() {
        let error = IgnoreRules::parse(READ_ALL_CONTENT).expect_err("`!` lines are invalid");
        assert_eq!(error.location, PatternLocation::Line(8));
        assert_eq!(error.pattern, "!");
        assert_eq!(error.problem, PatternProblem::LoneExclamation);
        assert_eq!(
            error.to_string(),
            "line 8: invalid ignore pattern `!`: `!` alone is not a pattern"
        );
    }

    #[test]
    fn reader_strips_bom_only_on_the_first_line() {
        assert_eq!(read_all("\u{FEFF}# comment\n\u{FEFF}x\n"), ["\u{FEFF}x"]);
    }

    #[test]
    fn comment_marker_counts_only_in_the_first_column() {
        assert_eq!(read_all("#a\n #b\n\t# c"), ["#b", "# c"]);
    }

    #[test]
    fn reader_handles_crlf_and_slash_only_lines() {
        assert_eq!(read_all("a\r\n/\r\n//b//\r\n!/\r\n"), ["a", "/", "b", "!/"]);
        // `!/` survives the reader but is `!` to the matcher, as in BuildKit.
        assert_eq!(
            IgnoreRules::parse("!/").expect_err("invalid").problem,
            PatternProblem::LoneExclamation
        );
        // `/` is kept and matches no context-relative path.
        assert!(!IgnoreRules::parse("/").expect("valid").is_excluded("a"));
    }

    #[test]
    fn dotdot_cleaning_drops_the_exception_only_without_the_reader() {
        let listed = rules(&["!a/../b"]);
        assert!(!listed.patterns()[0].is_exception());
        assert!(listed.is_excluded("b"));
        let read = IgnoreRules::parse("!a/../b").expect("valid");
        assert!(read.patterns()[0].is_exception());
        assert!(!read.is_excluded("b"));
    }

    // --- moby's regex quirks, reproduced ------------------------------------------------------

    #[test]
    fn star_inside_brackets_closes_the_class_early() {
        // `[*]` becomes `^[[^/]*]$`: any run of `[`, `^`, `/`, then a literal `]`.
        let star = rules(&["[*]"]);
        assert!(star.is_excluded("]"));
        assert!(star.is_excluded("[^]"));
        assert!(!star.is_excluded("*"));
        // `[?]` becomes `^[[^/]]$`: one of `[`, `^`, `/`, then `]`.
        let question = rules(&["[?]"]);
        assert!(question.is_excluded("^]"));
        assert!(!question.is_excluded("?"));
        // `[**]` puts `(.*/)?` inside the class.
        let double = rules(&["x[**]"]);
        assert!(double.is_excluded("x("));
        assert!(double.is_excluded("x?"));
        assert!(!double.is_excluded("xa"));
    }

    #[test]
    fn bare_caret_is_an_anchor_in_regex_patterns_only() {
        assert!(excluded("a^b", &["a^b"]));
        assert!(!excluded("a^bc", &["a^b*"]));
        assert!(excluded("bc", &["^b*"]));
    }

    #[test]
    fn escaped_letters_are_regex_escapes() {
        assert!(excluded("a5", &["a\\d"]));
        assert!(!excluded("ad", &["a\\d"]));
        assert!(excluded("a b", &["a\\sb"]));
        assert!(excluded("aA", &["a\\x41"]));
        assert!(excluded("a\tb", &["a\\tb"]));
        assert!(excluded("a\u{1}", &["a\\001"]));
        assert!(excluded("foo-bar", &["foo\\b-bar"]));
        assert!(!excluded("foo-bar", &["foo\\B-bar"]));
        assert_eq!(
            problem(&["a\\q"]),
            PatternProblem::RegexEscape("\\q".to_string())
        );
        assert_eq!(
            problem(&["a\\1"]),
            PatternProblem::RegexEscape("\\1".to_string())
        );
        assert_eq!(
            problem(&["a\\C"]),
            PatternProblem::RegexEscape("\\C".to_string())
        );
        assert_eq!(
            problem(&["a\\xg0"]),
            PatternProblem::RegexEscape("\\xg0".to_string())
        );
        assert_eq!(problem(&["a\\pL"]), PatternProblem::UnicodeClass('p'));
        assert_eq!(
            problem(&["[\\P{Greek}]"]),
            PatternProblem::UnicodeClass('P')
        );
    }

    #[test]
    fn quoted_text_swallows_the_end_anchor() {
        // `\Qa*` becomes `^\Qa[^/]*$`: the literal text `a[^/]*$` as a prefix.
        let quoted = rules(&["\\Qa*"]);
        assert!(quoted.is_excluded("a[^/]*$"));
        assert!(quoted.is_excluded("a[^/]*$and/more"));
        assert!(!quoted.is_excluded("abc"));
        assert!(excluded("x.y", &["\\Qx\\E.y"]));
    }

    #[test]
    fn posix_classes_are_read_inside_brackets() {
        assert!(excluded("5", &["[[:digit:]]"]));
        assert!(!excluded("[", &["[[:digit:]]"]));
        assert!(excluded("x", &["[[:^digit:]]"]));
        assert_eq!(
            problem(&["[[:nope:]]"]),
            PatternProblem::RegexClassRange("[:nope:]".to_string())
        );
        // Go's glob closes the class at the first `]`, but RE2 sees `[:alpha:]` and no `]` after.
        assert_eq!(problem(&["[[:alpha:]"]), PatternProblem::RegexUnclosedClass);
    }

    #[test]
    fn leading_double_star_is_a_plain_suffix() {
        assert!(excluded("barfoo", &["**foo"]));
        assert!(excluded("x/yfoo", &["**foo"]));
        assert!(!excluded("barfoo", &["**/foo"]));
    }

    #[test]
    fn dot_in_double_star_does_not_cross_newlines() {
        assert!(!excluded("x\ny/ab", &["**/a*"]));
        assert!(excluded("x\ny/ab", &["**/ab"]));
        assert!(excluded("x\ny", &["x?y"]));
    }

    #[test]
    fn leading_bom_is_dropped_from_regex_patterns_only() {
        assert!(excluded("x.go", &["\u{FEFF}*.go"]));
        assert!(!excluded("x.go", &["\u{FEFF}x.go"]));
        assert!(excluded("\u{FEFF}x.go", &["\u{FEFF}x.go"]));
        // Go slices the suffix by bytes, splitting the BOM: `\xBF**` ends `¿**`.
        assert!(excluded("¿**", &["\u{FEFF}**"]));
    }

    #[test]
    fn unanchored_paths_keep_their_shape() {
        assert!(excluded("a/b/", &["a/b"]));
        assert!(!excluded("a//b", &["a/b"]));
        assert!(excluded("a//b", &["a"]));
    }

    // --- errors -------------------------------------------------------------------------------

    #[test]
    fn list_errors_name_the_position() {
        let error = IgnoreRules::from_patterns(&["a", " b\\ "]).expect_err("trailing backslash");
        assert_eq!(error.location, PatternLocation::ListItem(2));
        assert_eq!(error.pattern, "b\\");
        assert!(error.to_string().starts_with("pattern 2: "));
    }

    #[test]
    fn patterns_display_with_their_exception_mark() {
        let compiled = IgnoreRules::parse("a/\n! b/./c\n").expect("valid");
        let shown: Vec<String> = compiled
            .patterns()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["a", "!b/c"]);
    }

    // --- may_reinclude_below ------------------------------------------------------------------

    #[test]
    fn excluded_dir_without_reachable_exceptions_can_be_skipped() {
        assert!(!rules(&["vendor"]).may_reinclude_below("vendor"));
        assert!(!rules(&["vendor", "!*.go"]).may_reinclude_below("vendor"));
        assert!(!rules(&["vendor", "!other/keep"]).may_reinclude_below("vendor"));
        assert!(!rules(&["**", "!a/b"]).may_reinclude_below("c"));
        assert!(!rules(&["vendor/**"]).may_reinclude_below("vendor"));
        assert!(!rules(&["vendor", "!vendor/keep", "vendor"]).may_reinclude_below("vendor/"));
    }

    #[test]
    fn excluded_dir_with_reachable_exceptions_must_be_walked() {
        assert!(rules(&["vendor", "!vendor/keep"]).may_reinclude_below("vendor"));
        assert!(rules(&["vendor", "!**/*.go"]).may_reinclude_below("vendor"));
        assert!(rules(&["vendor", "!**.go"]).may_reinclude_below("vendor"));
        assert!(rules(&["**", "!a/b"]).may_reinclude_below("a"));
        assert!(rules(&["vendor", "!vendor/*/keep"]).may_reinclude_below("vendor"));
        assert!(rules(&["*", "!vend*/x"]).may_reinclude_below("vendor"));
        assert!(rules(&["*", "!vendor/**"]).may_reinclude_below("vendor"));
        // An exception on the directory itself re-includes everything below it.
        assert!(rules(&["*", "!vendor"]).may_reinclude_below("vendor"));
    }

    #[test]
    fn dir_that_is_not_excluded_may_hold_kept_paths() {
        assert!(IgnoreRules::default().may_reinclude_below("any"));
        assert!(rules(&["*.go"]).may_reinclude_below("src"));
        assert!(rules(&["*.go"]).may_reinclude_below(""));
        assert!(!rules(&["**"]).may_reinclude_below("."));
    }

    // --- find_ignore_file ---------------------------------------------------------------------

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imgb-ignore-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[test]
    fn dockerfile_specific_ignore_file_takes_precedence() {
        let context = scratch_dir("precedence");
        let dockerfile = context.join("build").join("app.Dockerfile");
        std::fs::create_dir_all(context.join("build")).expect("mkdir");
        assert_eq!(
            find_ignore_file(&context, &dockerfile).expect("lookup"),
            None
        );

        std::fs::write(context.join(".dockerignore"), "shared").expect("write");
        assert_eq!(
            find_ignore_file(&context, &dockerfile).expect("lookup"),
            Some(context.join(".dockerignore"))
        );

        let specific = context.join("build").join("app.Dockerfile.dockerignore");
        std::fs::write(&specific, "").expect("write");
        assert_eq!(
            find_ignore_file(&context, &dockerfile).expect("lookup"),
            Some(specific.clone())
        );

        // A directory in the way is not an ignore file.
        std::fs::remove_file(&specific).expect("rm");
        std::fs::create_dir(&specific).expect("mkdir");
        assert_eq!(
            find_ignore_file(&context, &dockerfile).expect("lookup"),
            Some(context.join(".dockerignore"))
        );
        std::fs::remove_dir_all(&context).expect("cleanup");
    }

    #[test]
    fn missing_context_or_dockerfile_dir_means_no_ignore_file() {
        let context = scratch_dir("missing");
        let file = context.join("file");
        std::fs::write(&file, "").expect("write");
        // A path through a regular file fails with NotADirectory, which means "absent".
        assert_eq!(
            find_ignore_file(&file, &file.join("Dockerfile")).expect("lookup"),
            None
        );
        std::fs::remove_dir_all(&context).expect("cleanup");
    }

    // --- properties ---------------------------------------------------------------------------

    /// moby's semantics restated over a small alphabet, without regex text or instructions:
    /// kind rules, a backtracking token matcher, and the forward "last match wins" loop.
    mod reference {
        #[derive(Clone, Copy)]
        enum Token {
            Literal(char),
            Star,
            Question,
            /// `**` before more pattern: any run of components, each with its `/`.
            Dirs,
            /// `**` at the end of a regex pattern: anything.
            Rest,
            AorB,
        }

        fn clean(pattern: &str) -> String {
            let joined = pattern
                .split('/')
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join("/");
            if pattern.starts_with('/') {
                format!("/{joined}")
            } else {
                joined
            }
        }

        fn has_wildcard(text: &str) -> bool {
            text.contains(['*', '?', '['])
        }

        fn tokens(text: &str) -> Vec<Token> {
            let mut tokens = Vec::new();
            let mut rest = text;
            while !rest.is_empty() {
                if let Some(after) = rest.strip_prefix("**") {
                    let after = after.strip_prefix('/').unwrap_or(after);
                    tokens.push(if after.is_empty() {
                        Token::Rest
                    } else {
                        Token::Dirs
                    });
                    rest = after;
                } else if let Some(after) = rest.strip_prefix("[ab]") {
                    tokens.push(Token::AorB);
                    rest = after;
                } else {
                    let ch = rest.chars().next().unwrap_or_default();
                    tokens.push(match ch {
                        '*' => Token::Star,
                        '?' => Token::Question,
                        other => Token::Literal(other),
                    });
                    rest = &rest[ch.len_utf8()..];
                }
            }
            tokens
        }

        fn regex_matches(tokens: &[Token], path: &[char]) -> bool {
            let Some((token, rest)) = tokens.split_first() else {
                return path.is_empty();
            };
            let one = |accepts: &dyn Fn(char) -> bool| {
                path.first().is_some_and(|&ch| accepts(ch)) && regex_matches(rest, &path[1..])
            };
            match *token {
                Token::Literal(expected) => one(&|ch| ch == expected),
                Token::Question => one(&|ch| ch != '/'),
                Token::AorB => one(&|ch| ch == 'a' || ch == 'b'),
                Token::Star => {
                    let run = path.iter().take_while(|&&ch| ch != '/').count();
                    (0..=run).any(|skip| regex_matches(rest, &path[skip..]))
                }
                Token::Dirs => {
                    regex_matches(rest, path)
                        || (1..=path.len())
                            .any(|skip| path[skip - 1] == '/' && regex_matches(rest, &path[skip..]))
                }
                Token::Rest => (0..=path.len()).any(|skip| regex_matches(rest, &path[skip..])),
            }
        }

        fn pattern_matches(text: &str, path: &str) -> bool {
            if !has_wildcard(text) {
                return path == text;
            }
            if let Some(suffix) = text.strip_prefix("**")
                && !has_wildcard(suffix)
            {
                return path.ends_with(suffix) || suffix.strip_prefix('/') == Some(path);
            }
            if let Some(stem) = text.strip_suffix("**")
                && !has_wildcard(stem)
            {
                return path.starts_with(stem);
            }
            let path: Vec<char> = path.chars().collect();
            regex_matches(&tokens(text), &path)
        }

        /// `None` when moby rejects the patterns (only a lone `!` in this alphabet).
        pub fn is_excluded(patterns: &[String], path: &str) -> Option<bool> {
            let mut compiled = Vec::new();
            for pattern in patterns {
                let cleaned = clean(pattern);
                match cleaned.strip_prefix('!') {
                    Some("") => return None,
                    Some(text) => compiled.push((true, text.to_string())),
                    None => compiled.push((false, cleaned)),
                }
            }
            let components: Vec<&str> = path.split('/').collect();
            let parents: Vec<String> = (1..components.len())
                .map(|n| components[..n].join("/"))
                .collect();
            let mut excluded = false;
            for (exception, text) in &compiled {
                if pattern_matches(text, path)
                    || parents.iter().any(|parent| pattern_matches(text, parent))
                {
                    excluded = !exception;
                }
            }
            Some(excluded)
        }
    }

    mod properties {
        use super::super::IgnoreRules;
        use super::reference;
        use proptest::prelude::*;

        fn glob() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                Just("a"),
                Just("b"),
                Just("/"),
                Just("*"),
                Just("?"),
                Just("**"),
                Just("[ab]")
            ];
            prop::collection::vec(token, 1..6).prop_map(|tokens| tokens.concat())
        }

        fn rule() -> impl Strategy<Value = String> {
            (any::<bool>(), glob())
                .prop_map(|(exception, glob)| if exception { format!("!{glob}") } else { glob })
        }

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec("[ab]{1,3}", 1..5).prop_map(|components| components.join("/"))
        }

        fn literal_path() -> impl Strategy<Value = String> {
            prop::collection::vec("[a-z0-9_-]{1,4}(\\.[a-z]{1,3})?", 1..4)
                .prop_map(|parts| parts.join("/"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn random_input_never_panics(
                patterns in prop::collection::vec("[ab/*?\\[\\]\\\\!^.:{}()$x-]{0,10}|\\PC{0,6}", 0..4),
                paths in prop::collection::vec("[ab/*?\\[\\]\\\\^.:x-]{0,10}|\\PC{0,6}", 1..4),
                text in "\\PC{0,40}|[ab/*?\\[\\]\\\\!#\n\r ]{0,40}",
            ) {
                let _ = IgnoreRules::parse(&text);
                if let Ok(compiled) = IgnoreRules::from_patterns(&patterns) {
                    for path in &paths {
                        let _ = compiled.is_excluded(path);
                        let _ = compiled.may_reinclude_below(path);
                    }
                }
            }

            #[test]
            fn literal_pattern_excludes_exactly_the_path_and_below(
                pattern in literal_path(),
                other in literal_path(),
            ) {
                let compiled = IgnoreRules::from_patterns(&[&pattern]).expect("literal patterns are valid");
                let candidates = [
                    pattern.clone(),
                    format!("{pattern}/{other}"),
                    format!("{pattern}x"),
                    format!("{pattern}.x/{other}"),
                    other.clone(),
                    format!("{other}/{pattern}"),
                ];
                for candidate in &candidates {
                    let expected = candidate == &pattern || candidate.starts_with(&format!("{pattern}/"));
                    prop_assert_eq!(compiled.is_excluded(candidate), expected, "{}", candidate);
                }
                if let Some((parent, _)) = pattern.rsplit_once('/') {
                    prop_assert!(!compiled.is_excluded(parent));
                }
            }

            #[test]
            fn exception_after_the_pattern_reincludes_it(pattern in glob(), path in path()) {
                let exception = format!("!{pattern}");
                if let Ok(compiled) = IgnoreRules::from_patterns(&[&pattern, &exception]) {
                    prop_assert!(!compiled.is_excluded(&path));
                }
            }

            #[test]
            fn exception_before_the_pattern_changes_nothing(pattern in glob(), path in path()) {
                let exception = format!("!{pattern}");
                if let Ok(compiled) = IgnoreRules::from_patterns(&[&exception, &pattern]) {
                    let alone = IgnoreRules::from_patterns(&[&pattern]).expect("valid alone");
                    prop_assert_eq!(compiled.is_excluded(&path), alone.is_excluded(&path));
                }
            }

            #[test]
            fn agrees_with_the_reference_matcher(
                patterns in prop::collection::vec(rule(), 1..5),
                paths in prop::collection::vec(path(), 1..8),
            ) {
                let compiled = IgnoreRules::from_patterns(&patterns);
                for path in &paths {
                    let expected = reference::is_excluded(&patterns, path);
                    prop_assert_eq!(compiled.as_ref().ok().map(|c| c.is_excluded(path)), expected, "{}", path);
                }
            }

            #[test]
            fn reinclusion_below_a_dir_is_never_missed(
                patterns in prop::collection::vec(rule(), 1..5),
                dir in prop::option::of(path()),
                below in prop::collection::vec(path(), 1..8),
            ) {
                if let Ok(compiled) = IgnoreRules::from_patterns(&patterns) {
                    let dir = dir.unwrap_or_default();
                    let kept = below.iter().find(|rest| {
                        let path = if dir.is_empty() { (*rest).clone() } else { format!("{dir}/{rest}") };
                        !compiled.is_excluded(&path)
                    });
                    if let Some(rest) = kept {
                        prop_assert!(compiled.may_reinclude_below(&dir), "{}/{} is kept", dir, rest);
                    }
                }
            }
        }
    }
}
