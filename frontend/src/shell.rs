//! Shell-style word expansion for Dockerfile arguments, with the behaviour of BuildKit's shell
//! lexer (`frontend/dockerfile/shell/lex.go`).
//!
//! [`Lexer::expand_word`] expands one word and reports which variables it used;
//! [`Lexer::expand_words`] expands a line and splits it into words. Both understand:
//! - `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`, `${NAME+word}`,
//!   `${NAME:?message}`, `${NAME?message}` (the `:` forms treat an empty value as unset);
//! - `${NAME#pattern}`, `${NAME##pattern}`, `${NAME%pattern}`, `${NAME%%pattern}` and
//!   `${NAME/pattern/replacement}`, `${NAME//pattern/replacement}`, where a pattern knows `*`, `?`
//!   and the escapes `\*`, `\?`, `\\` (brackets are literal, as in BuildKit);
//! - single quotes (all literal), double quotes (only `$`, and the escape token before `"`, `$`
//!   or itself, are special) and the escape token (`\` or a backtick) outside quotes;
//! - positional and special parameters (`$1`, `$*`, `$$`, ...), which are never set here;
//! - `<<` with the blanks after it stays in one word, so the parser finds `<< EOF` heredocs.
//!
//! Invariants: expansion never panics and never reads the process environment; variable names
//! are case-sensitive; quirks of BuildKit are kept on purpose (an unquoted `''` adds no word, a
//! pattern error names the reversed pattern for `%`, `${V//p/r}` expands `$0` in `r`, a leading
//! U+FEFF is ignored as Go's `text/scanner` does, `${UNSET/p/r}` under `skip_unset_env` comes back
//! as `${UNSET/p/r}` even for `//`). Two deliberate deviations: BuildKit's `ProcessWords` loses the
//! text of a word that precedes a nested `${...}` (its buffers are shared between nesting levels),
//! which is a bug this port does not copy; and substitutions nested deeper than
//! [`MAX_NESTING`] are rejected instead of growing the stack without bound.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::LazyLock;

use regex::Regex;

/// How deeply `${...}` may nest (`${A:-${B:-...}}`): real Dockerfiles use two or three levels.
pub const MAX_NESTING: usize = 100;

/// Go's `text/scanner`, which BuildKit reads words with, skips a byte order mark at the start.
const BYTE_ORDER_MARK: char = '\u{feff}';

/// Variables a word may refer to.
pub trait Env {
    /// The value of `name`, or `None` when it is unset (an empty value is set).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// The last pair with the name wins, as a later `ENV` overrides an earlier one.
impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

/// The expanded text of one word and the variables it referred to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    pub value: String,
    /// Referenced names that are set (possibly empty): the build args a step depends on.
    pub matched: BTreeSet<String>,
    /// Referenced names that are unset, including those only named in an unused default such
    /// as `${SET:-$UNSET}`: the "undefined variable" lint reports them.
    pub unmatched: BTreeSet<String>,
}

/// A word that cannot be expanded. Displays as BuildKit's message:
/// `failed to process "<word>": <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {}: {}", go_quote(.word), .message)]
pub struct ShellError {
    /// The word as it was given.
    pub word: String,
    /// Characters (not bytes) from the start of `word` to the construct that failed: the opening
    /// quote of an unterminated string, the `$` of a bad substitution.
    pub offset: usize,
    /// BuildKit's text for the error, e.g. `syntax error: bad substitution`.
    pub message: String,
    /// What to do about it, where that is not obvious from the message.
    pub hint: Option<String>,
}

/// A shell lexer: the escape token and BuildKit's options. Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
}

impl Lexer {
    /// A lexer with the escape token `escape` (`\`, or `` ` `` after `# escape=``) and no options.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the result (the heredoc parser uses this to see quoting).
    #[must_use]
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape tokens in the result instead of removing them.
    #[must_use]
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as written (`$UNSET`, `${UNSET:-x}`) instead of
    /// expanding them to the empty string or their default.
    #[must_use]
    pub fn skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Treat quotes as ordinary characters (heredoc bodies, whose quotes belong to the script).
    #[must_use]
    pub fn skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Expands `word` as one word: quotes and escapes are removed, whitespace is kept.
    pub fn expand_word<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Expansion, ShellError> {
        let mut expander = Expander::new(self, word, env);
        let processed = expander.run().map_err(|failure| failure.into_error(word))?;
        Ok(Expansion {
            value: processed.text,
            matched: expander.matched,
            unmatched: expander.unmatched,
        })
    }

    /// Expands `text` and splits it into words at unquoted, unescaped whitespace. Whitespace
    /// that comes from a variable's value splits too (`$V` with `V="a b"` gives two words),
    /// except inside double quotes; empty words are dropped.
    pub fn expand_words<E: Env + ?Sized>(
        &self,
        text: &str,
        env: &E,
    ) -> Result<Vec<String>, ShellError> {
        let mut expander = Expander::new(self, text, env);
        let processed = expander.run().map_err(|failure| failure.into_error(text))?;
        Ok(processed.words)
    }
}

/// What a failing construct reports before it is tied to the word.
#[derive(Debug)]
struct Failure {
    offset: usize,
    message: String,
    hint: Option<String>,
}

impl Failure {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        Failure {
            offset,
            message: message.into(),
            hint: None,
        }
    }

    fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn missing_brace(offset: usize) -> Self {
        Failure::new(offset, "syntax error: missing '}'")
            .with_hint("close the substitution with `}`")
    }

    fn unsupported_modifier(offset: usize, spelled: &str) -> Self {
        Failure::new(offset, format!("unsupported modifier ({spelled}) in substitution")).with_hint(
            "supported: ${VAR:-default}, ${VAR:+alternative}, ${VAR:?message} (also without `:`), \
             ${VAR#pattern}, ${VAR%pattern} (also `##`, `%%`), ${VAR/pattern/replacement} (also `//`)",
        )
    }

    fn into_error(self, word: &str) -> ShellError {
        ShellError {
            word: word.to_owned(),
            offset: self.offset,
            message: self.message,
            hint: self.hint,
        }
    }
}

/// The characters of the word being expanded and the position in them.
#[derive(Debug)]
struct Scanner {
    chars: Vec<char>,
    position: usize,
}

impl Scanner {
    fn new(text: &str) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let position = usize::from(chars.first() == Some(&BYTE_ORDER_MARK));
        Scanner { chars, position }
    }

    fn peek_char(&self) -> Option<char> {
        self.chars.get(self.position).copied()
    }

    fn next_char(&mut self) -> Option<char> {
        let next = self.peek_char();
        if next.is_some() {
            self.position += 1;
        }
        next
    }

    fn at_end(&self) -> bool {
        self.position >= self.chars.len()
    }
}

/// Collects the words of [`Lexer::expand_words`]: "splitting" input breaks words at whitespace,
/// "literal" input (quoted or escaped text) never does.
#[derive(Debug, Default)]
struct WordSplitter {
    words: Vec<String>,
    current: String,
}

impl WordSplitter {
    fn push_splitting(&mut self, c: char) {
        if c.is_whitespace() {
            self.end_word();
        } else {
            self.current.push(c);
        }
    }

    fn push_splitting_str(&mut self, text: &str) {
        text.chars().for_each(|c| self.push_splitting(c));
    }

    fn push_literal(&mut self, c: char) {
        self.current.push(c);
    }

    fn push_literal_str(&mut self, text: &str) {
        self.current.push_str(text);
    }

    fn end_word(&mut self) {
        if !self.current.is_empty() {
            self.words.push(std::mem::take(&mut self.current));
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.end_word();
        self.words
    }
}

/// Text processed up to a stop character, as one string and as split words.
#[derive(Debug)]
struct Processed {
    text: String,
    words: Vec<String>,
}

/// The state of one expansion.
#[derive(Debug)]
struct Expander<'a, E: ?Sized> {
    lexer: &'a Lexer,
    env: &'a E,
    scanner: Scanner,
    /// Whether escape tokens are kept right now: patterns keep them for the pattern compiler.
    raw_escapes: bool,
    nesting: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<'a, E: Env + ?Sized> Expander<'a, E> {
    fn new(lexer: &'a Lexer, text: &str, env: &'a E) -> Self {
        Expander {
            lexer,
            env,
            scanner: Scanner::new(text),
            raw_escapes: lexer.raw_escapes,
            nesting: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn run(&mut self) -> Result<Processed, Failure> {
        self.process_until(None, self.lexer.raw_escapes)
    }

    fn lookup(&mut self, name: &str) -> Option<&'a str> {
        let env: &'a E = self.env;
        let value = env.lookup(name);
        let seen = if value.is_some() {
            &mut self.matched
        } else {
            &mut self.unmatched
        };
        seen.insert(name.to_owned());
        value
    }

    /// Processes up to `stop` (consumed) or, for `None`, to the end of the word.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<Processed, Failure> {
        let outer_raw_escapes = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let processed = self.process_until_inner(stop);
        self.raw_escapes = outer_raw_escapes;
        processed
    }

    fn process_until_inner(&mut self, stop: Option<char>) -> Result<Processed, Failure> {
        let mut text = String::new();
        let mut words = WordSplitter::default();
        while let Some(c) = self.scanner.peek_char() {
            if Some(c) == stop {
                self.scanner.next_char();
                return Ok(Processed {
                    text,
                    words: words.finish(),
                });
            }
            match c {
                '$' => {
                    let value = self.process_dollar()?;
                    words.push_splitting_str(&value);
                    text.push_str(&value);
                }
                '\'' | '"' if !self.lexer.skip_process_quotes => {
                    let quoted = if c == '\'' {
                        self.process_single_quote()?
                    } else {
                        self.process_double_quote()?
                    };
                    words.push_literal_str(&quoted);
                    text.push_str(&quoted);
                }
                '<' => {
                    let marker = self.process_heredoc_marker();
                    words.push_literal_str(&marker);
                    text.push_str(&marker);
                }
                _ => {
                    self.scanner.next_char();
                    if c == self.lexer.escape {
                        if self.raw_escapes {
                            words.push_literal(c);
                            text.push(c);
                        }
                        // A trailing escape token escapes nothing and is dropped.
                        let Some(escaped) = self.scanner.next_char() else {
                            break;
                        };
                        words.push_literal(escaped);
                        text.push(escaped);
                    } else {
                        words.push_splitting(c);
                        text.push(c);
                    }
                }
            }
        }
        match stop {
            Some(stop) => Err(Failure::new(
                self.scanner.position,
                format!("unexpected end of statement while looking for matching {stop}"),
            )),
            None => Ok(Processed {
                text,
                words: words.finish(),
            }),
        }
    }

    fn unterminated_quote(&self, opening: usize, kind: &str) -> Failure {
        Failure::new(
            opening,
            format!("unexpected end of statement while looking for matching {kind}"),
        )
        .with_hint(format!(
            "close the quote, or escape it with `{}`",
            self.lexer.escape
        ))
    }

    fn process_single_quote(&mut self) -> Result<String, Failure> {
        let opening = self.scanner.position;
        let mut quoted = String::new();
        self.scanner.next_char();
        if self.lexer.raw_quotes {
            quoted.push('\'');
        }
        loop {
            match self.scanner.next_char() {
                None => return Err(self.unterminated_quote(opening, "single-quote")),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        quoted.push('\'');
                    }
                    return Ok(quoted);
                }
                Some(c) => quoted.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, Failure> {
        let opening = self.scanner.position;
        let mut quoted = String::new();
        self.scanner.next_char();
        if self.lexer.raw_quotes {
            quoted.push('"');
        }
        loop {
            match self.scanner.peek_char() {
                None => return Err(self.unterminated_quote(opening, "double-quote")),
                Some('"') => {
                    self.scanner.next_char();
                    if self.lexer.raw_quotes {
                        quoted.push('"');
                    }
                    return Ok(quoted);
                }
                Some('$') => quoted.push_str(&self.process_dollar()?),
                Some(c) => {
                    self.scanner.next_char();
                    let mut literal = c;
                    if c == self.lexer.escape {
                        // BuildKit writes a kept escape token and then the character again, so an
                        // escape token before an ordinary character appears twice.
                        if self.raw_escapes {
                            quoted.push(c);
                        }
                        match self.scanner.peek_char() {
                            // Dropped here; the missing closing quote is reported next.
                            None => continue,
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                self.scanner.next_char();
                                literal = next;
                            }
                            Some(_) => {}
                        }
                    }
                    quoted.push(literal);
                }
            }
        }
    }

    /// `<<` and the blanks after it stay in one word, so `<< EOF` is found as a heredoc.
    fn process_heredoc_marker(&mut self) -> String {
        self.scanner.next_char();
        if self.scanner.peek_char() != Some('<') {
            return "<".to_owned();
        }
        self.scanner.next_char();
        let mut marker = String::from("<<");
        while let Some(blank @ (' ' | '\t' | '\r')) = self.scanner.peek_char() {
            marker.push(blank);
            self.scanner.next_char();
        }
        marker
    }

    fn process_dollar(&mut self) -> Result<String, Failure> {
        let start = self.scanner.position;
        self.scanner.next_char();
        if self.scanner.peek_char() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value.to_owned(),
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.scanner.next_char();
        if self.nesting >= MAX_NESTING {
            return Err(Failure::new(
                start,
                format!("substitutions nested more than {MAX_NESTING} levels deep"),
            ));
        }
        self.nesting += 1;
        let expanded = self.process_braced(start);
        self.nesting -= 1;
        expanded
    }

    /// The rest of a `${...}` whose `${` starts at `start`.
    fn process_braced(&mut self, start: usize) -> Result<String, Failure> {
        match self.scanner.peek_char() {
            None => return Err(Failure::missing_brace(start)),
            Some('{' | '}' | ':') => {
                return Err(Failure::new(start, "syntax error: bad substitution")
                    .with_hint("a substitution starts with a variable name: ${NAME}"));
            }
            Some(_) => {}
        }
        let name = self.process_name();
        let operator = self.scanner.next_char();
        // Go formats a missing character (end of input) as U+FFFD.
        let mut spelled = String::from(operator.unwrap_or(char::REPLACEMENT_CHARACTER));
        match operator {
            Some('}') => Ok(match self.lookup(&name) {
                Some(value) => value.to_owned(),
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') => {
                let modifier = self.scanner.next_char();
                spelled.push(modifier.unwrap_or(char::REPLACEMENT_CHARACTER));
                self.expand_modifier(start, &name, modifier, true, &spelled)
            }
            Some('+' | '-' | '?' | '#' | '%') => {
                self.expand_modifier(start, &name, operator, false, &spelled)
            }
            Some('/') => self.expand_replacement(start, &name),
            _ => Err(Failure::unsupported_modifier(start, &spelled)),
        }
    }

    /// Processes the text up to `stop` inside a `${...}`; running out of input means the
    /// substitution was never closed, whatever failed inside it.
    fn process_inside_braces(
        &mut self,
        start: usize,
        stop: char,
        raw_escapes: bool,
    ) -> Result<String, Failure> {
        match self.process_until(Some(stop), raw_escapes) {
            Ok(processed) => Ok(processed.text),
            Err(_) if self.scanner.at_end() => Err(Failure::missing_brace(start)),
            Err(failure) => Err(failure),
        }
    }

    /// `${NAME<spelled>word}` for the modifiers `-`, `+`, `?`, `#`, `%` (`null_is_unset` after
    /// `:`). The word is processed before the variable is looked up, as BuildKit does, so its
    /// variables count as referenced even when the default is not used.
    fn expand_modifier(
        &mut self,
        start: usize,
        name: &str,
        modifier: Option<char>,
        null_is_unset: bool,
        spelled: &str,
    ) -> Result<String, Failure> {
        let is_pattern = matches!(modifier, Some('#' | '%'));
        if null_is_unset && is_pattern {
            return Err(Failure::unsupported_modifier(start, spelled));
        }
        let word = self.process_inside_braces(start, '}', is_pattern)?;
        let value = self.lookup(name);
        if value.is_none() && self.lexer.skip_unset_env {
            return Ok(format!("${{{name}{spelled}{word}}}"));
        }
        let usable = value.filter(|value| !(null_is_unset && value.is_empty()));
        match modifier {
            Some('-') => Ok(usable.map_or(word, str::to_owned)),
            Some('+') => Ok(if usable.is_some() {
                word
            } else {
                String::new()
            }),
            Some('?') => match usable {
                Some(value) => Ok(value.to_owned()),
                None => {
                    let default = if value.is_none() {
                        "is not allowed to be unset"
                    } else {
                        "is not allowed to be empty"
                    };
                    let message = if word.is_empty() {
                        default
                    } else {
                        word.as_str()
                    };
                    Err(Failure::new(start, format!("{name}: {message}")))
                }
            },
            Some(operator @ ('#' | '%')) => {
                let value = value.unwrap_or_default();
                let (pattern, greedy) = match word.strip_prefix(operator) {
                    Some(rest) => (rest, true),
                    None => (word.as_str(), false),
                };
                let trimmed = if operator == '%' {
                    trim_suffix(pattern, value, greedy)
                } else {
                    trim_prefix(pattern, value, greedy)
                };
                trimmed.map_err(|failure| failure.at(start))
            }
            _ => Err(Failure::unsupported_modifier(start, spelled)),
        }
    }

    /// `${NAME/pattern/replacement}` and `${NAME//pattern/replacement}`.
    fn expand_replacement(&mut self, start: usize, name: &str) -> Result<String, Failure> {
        let replace_all = self.scanner.peek_char() == Some('/');
        if replace_all {
            self.scanner.next_char();
        }
        let pattern = match self.process_until(Some('/'), true) {
            Ok(processed) => processed.text,
            Err(_) if self.scanner.at_end() => {
                return Err(Failure::new(start, "syntax error: missing '/' in ${}")
                    .with_hint("write ${VAR/pattern/replacement}"));
            }
            Err(failure) => return Err(failure),
        };
        let replacement = self.process_inside_braces(start, '}', true)?;
        let value = match self.lookup(name) {
            Some(value) => value,
            None if self.lexer.skip_unset_env => {
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            None => "",
        };
        let regex = pattern_regex(&pattern, true, false).map_err(|failure| failure.at(start))?;
        if replace_all {
            return Ok(replace_all_matches(&regex, value, &replacement));
        }
        Ok(match regex.find(value) {
            Some(found) => [&value[..found.start()], &replacement, &value[found.end()..]].concat(),
            None => value.to_owned(),
        })
    }

    /// A variable name: a run of digits, one special parameter character, or letters, digits
    /// and `_` (letters and digits in Unicode's sense, as Go's `unicode` package has them).
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.scanner.peek_char() {
            if name.is_empty() && is_decimal_digit(c) {
                while let Some(digit) = self.scanner.peek_char().filter(|&c| is_decimal_digit(c)) {
                    name.push(digit);
                    self.scanner.next_char();
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.scanner.next_char();
                return c.to_string();
            }
            if !is_letter(c) && !is_decimal_digit(c) && c != '_' {
                break;
            }
            name.push(c);
            self.scanner.next_char();
        }
        name
    }
}

/// A pattern that does not compile; its position is the substitution's, known to the caller.
#[derive(Debug)]
struct PatternError {
    pattern: String,
    reason: String,
}

impl PatternError {
    fn at(self, offset: usize) -> Failure {
        Failure::new(
            offset,
            format!(
                "invalid pattern ({}) in substitution: {}",
                self.pattern, self.reason
            ),
        )
        .with_hint("in a pattern only `*`, `?` and `\\` can be escaped with `\\`")
    }
}

/// Converts a shell pattern to a regular expression as BuildKit does: `*` is any run of
/// characters (shortest unless `greedy`), `?` one character, `\*` `\?` `\\` literal; a `\`
/// before `}` or `/` only kept the substitution open and is dropped; everything else is literal.
/// Go's and this regex engine share leftmost-first semantics, and `.` excludes `\n` in both.
fn pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, PatternError> {
    let fail = |reason: String| PatternError {
        pattern: pattern.to_owned(),
        reason,
    };
    let mut chars = pattern
        .strip_prefix(BYTE_ORDER_MARK)
        .unwrap_or(pattern)
        .chars()
        .peekable();
    let mut regex = String::with_capacity(pattern.len() + 4);
    if anchored {
        regex.push('^');
    }
    while let Some(c) = chars.next() {
        match c {
            '*' => regex.push_str(if greedy { ".*" } else { ".*?" }),
            '?' => regex.push('.'),
            '\\' => {
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(escaped @ ('*' | '?' | '\\')) => {
                        regex.push('\\');
                        regex.push(escaped);
                    }
                    other => {
                        let shown = other.unwrap_or(char::REPLACEMENT_CHARACTER);
                        return Err(fail(format!("invalid escape '\\{shown}'")));
                    }
                }
            }
            '[' | ']' | '{' | '}' | '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                regex.push('\\');
                regex.push(c);
            }
            _ => regex.push(c),
        }
    }
    Regex::new(&regex).map_err(|error| fail(error.to_string()))
}

/// `${V#pattern}` / `${V##pattern}`: removes the shortest (longest) matching prefix.
fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, PatternError> {
    let regex = pattern_regex(pattern, greedy, true)?;
    Ok(match regex.find(value) {
        Some(found) => value[found.end()..].to_owned(),
        None => value.to_owned(),
    })
}

/// `${V%pattern}` / `${V%%pattern}`: a regex cannot find the shortest match ending at the end,
/// so pattern and value are reversed and the prefix is trimmed instead.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, PatternError> {
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern keeping each `\x` escape in order (`a\*c` → `c\*a`).
fn reverse_pattern(pattern: &str) -> String {
    let mut units: Vec<&str> = Vec::new();
    let mut rest = pattern;
    while let Some(first) = rest.chars().next() {
        let mut unit_len = first.len_utf8();
        if first == '\\' {
            unit_len += rest[unit_len..].chars().next().map_or(0, char::len_utf8);
        }
        let (unit, tail) = rest.split_at(unit_len);
        units.push(unit);
        rest = tail;
    }
    units.into_iter().rev().collect()
}

/// Go's `Regexp.ReplaceAllString`: an empty match right after a match is not replaced, and
/// `$0` / `${0}` in the template stand for the match (see [`expand_template`]).
fn replace_all_matches(regex: &Regex, haystack: &str, template: &str) -> String {
    let mut replaced = String::with_capacity(haystack.len());
    let mut last_match_end = 0;
    let mut search_from = 0;
    while search_from <= haystack.len() {
        let Some(found) = regex.find_at(haystack, search_from) else {
            break;
        };
        replaced.push_str(&haystack[last_match_end..found.start()]);
        if found.end() > last_match_end || found.start() == 0 {
            expand_template(&mut replaced, template, found.as_str());
        }
        last_match_end = found.end();
        let width = haystack[search_from..]
            .chars()
            .next()
            .map_or(1, char::len_utf8);
        search_from = if search_from + width > found.end() {
            search_from + width
        } else {
            found.end()
        };
    }
    replaced.push_str(&haystack[last_match_end..]);
    replaced
}

/// Go's `Regexp.Expand` for a pattern without groups: `$$` is `$`, `$0` and `${0}` are the
/// match, any other well-formed `$name` / `${name}` is empty, a malformed `$` is kept.
fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (braced, body) = match rest.strip_prefix('{') {
            Some(body) => (true, body),
            None => (false, rest),
        };
        let name_len = body
            .char_indices()
            .find(|&(_, c)| !is_letter(c) && !is_decimal_digit(c) && c != '_')
            .map_or(body.len(), |(index, _)| index);
        let name = &body[..name_len];
        let after_name = &body[name_len..];
        let after = if braced {
            after_name.strip_prefix('}')
        } else {
            Some(after_name)
        };
        match after {
            Some(after) if !name.is_empty() => {
                if name == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            _ => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// Go's `unicode.IsLetter`, `IsDigit` and `IsPrint` test general categories, which std does not
/// expose (`char::is_alphabetic` is the wider Alphabetic property), so non-ASCII characters are
/// classified with the regex engine's Unicode tables.
fn in_class(class: &LazyLock<Regex>, c: char) -> bool {
    class.is_match(c.encode_utf8(&mut [0; 4]))
}

fn unicode_class(class: &str) -> Regex {
    Regex::new(&format!("^{class}$")).expect("a Unicode class is a valid regex")
}

static LETTER: LazyLock<Regex> = LazyLock::new(|| unicode_class(r"\p{L}"));
static DECIMAL_DIGIT: LazyLock<Regex> = LazyLock::new(|| unicode_class(r"\p{Nd}"));
static GRAPHIC: LazyLock<Regex> = LazyLock::new(|| unicode_class(r"[\p{L}\p{M}\p{N}\p{P}\p{S}]"));

fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        in_class(&LETTER, c)
    }
}

fn is_decimal_digit(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        in_class(&DECIMAL_DIGIT, c)
    }
}

/// Quotes `text` as Go's `%q` does, so error messages read as BuildKit's.
fn go_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            ' '..='~' => quoted.push(c),
            _ if !c.is_ascii() && in_class(&GRAPHIC, c) => quoted.push(c),
            '\u{7}' => quoted.push_str("\\a"),
            '\u{8}' => quoted.push_str("\\b"),
            '\u{c}' => quoted.push_str("\\f"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            '\u{b}' => quoted.push_str("\\v"),
            _ if c < ' ' || c == '\u{7f}' => {
                let _ = write!(quoted, "\\x{:02x}", u32::from(c));
            }
            _ if u32::from(c) < 0x10000 => {
                let _ = write!(quoted, "\\u{:04x}", u32::from(c));
            }
            _ => {
                let _ = write!(quoted, "\\U{:08x}", u32::from(c));
            }
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|&name| name.to_owned()).collect()
    }

    fn expand(word: &str, pairs: &[(&str, &str)]) -> Result<Expansion, ShellError> {
        Lexer::new('\\').expand_word(word, &env(pairs))
    }

    /// (input, environment, expected value, matched names, unmatched names)
    type MatchCase<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
    );

    #[test]
    fn matched_and_unmatched_names_follow_buildkit_process_word_with_matches() {
        let foo_bar = [("FOO", "xxx"), ("BAR", "")];
        let cases: &[MatchCase] = &[
            ("x", &[("DUMMY", "dummy")], "x", &[], &[]),
            ("x ${UNUSED}", &[("DUMMY", "dummy")], "x ", &[], &["UNUSED"]),
            ("x ${FOO}", &[("FOO", "y")], "x y", &["FOO"], &[]),
            (
                "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
                &foo_bar,
                "xxx  ccc",
                &["BAR", "FOO"],
                &["BAZ"],
            ),
            (
                "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
                &foo_bar,
                "xxx bbb ccc",
                &["BAR", "FOO"],
                &["BAZ"],
            ),
            ("${FOO:-}", &foo_bar, "xxx", &["FOO"], &[]),
            ("${FOO:-}", &[], "", &[], &["FOO"]),
            (
                "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
                &foo_bar,
                "aaa bbb ",
                &["BAR", "FOO"],
                &["BAZ"],
            ),
            (
                "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
                &foo_bar,
                "aaa  ",
                &["BAR", "FOO"],
                &["BAZ"],
            ),
            ("${FOO?aaa}", &foo_bar, "xxx", &["FOO"], &[]),
            ("${BAR?bbb}", &foo_bar, "", &["BAR"], &[]),
            ("${FOO:?aaa}", &foo_bar, "xxx", &["FOO"], &[]),
            (
                "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
                &[("FOO", "()[]{}^$.*?|\\x")],
                "x",
                &["FOO"],
                &[],
            ),
            ("${FOO%%\\**}", &[("FOO", "xx**")], "xx", &["FOO"], &[]),
            ("${FOO#*x*y}", &[("FOO", "xxyy")], "y", &["FOO"], &[]),
            ("${FOO#*}", &[("FOO", "xxyy")], "xxyy", &["FOO"], &[]),
            (
                "${FOO#$BAR}",
                &[("FOO", "xxyy"), ("BAR", "x")],
                "xyy",
                &["BAR", "FOO"],
                &[],
            ),
            (
                "${FOO#$BAR}",
                &[("FOO", "xxyy"), ("BAR", "")],
                "xxyy",
                &["BAR", "FOO"],
                &[],
            ),
            ("${FOO#}", &[("FOO", "xxyy")], "xxyy", &["FOO"], &[]),
            ("${FOO##*x}", &[("FOO", "xxyy")], "yy", &["FOO"], &[]),
            ("${FOO##}", &[("FOO", "xxyy")], "xxyy", &["FOO"], &[]),
            ("${FOO#?\\?}", &[("FOO", "???y")], "?y", &["FOO"], &[]),
            (
                "${ABC:-.}${FOO%x}${ABC:-.}",
                &[("FOO", "xxyy")],
                ".xxyy.",
                &["FOO"],
                &["ABC"],
            ),
            ("${FOO%%\\**\\*}", &[("FOO", "a***yy*")], "a", &["FOO"], &[]),
            ("${FOO%}", &[("FOO", "xxyy")], "xxyy", &["FOO"], &[]),
            (
                "${FOO%%$BAR}",
                &[("FOO", "xxyy"), ("BAR", "")],
                "xxyy",
                &["BAR", "FOO"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
                &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
                "/foo.*/*.txt - /foo..*.txt",
                &["FOO", "NEEDLE"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
                &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
                "/tmp/bar.txt - /bar.txt",
                &["FOO", "NEEDLE"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "/a/foo/b/c.txt"),
                    ("NEEDLE", "/?/"),
                    ("REPLACEMENT", "/"),
                ],
                "/foo/b/c.txt - /foo/c.txt",
                &["FOO", "NEEDLE", "REPLACEMENT"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "http://google.de"),
                    ("NEEDLE", "http://"),
                    ("REPLACEMENT", "https://"),
                ],
                "https://google.de",
                &["FOO", "NEEDLE", "REPLACEMENT"],
                &[],
            ),
            (
                "${FOO//\\//\\/}",
                &[("FOO", "/tmp/foo.txt")],
                "\\/tmp\\/foo.txt",
                &["FOO"],
                &[],
            ),
            (
                "${FOO/$BAR/ww}",
                &[("FOO", "xxyy"), ("BAR", "")],
                "wwxxyy",
                &["BAR", "FOO"],
                &[],
            ),
            ("${FOO///}", &[("FOO", "xxyy")], "xxyy", &["FOO"], &[]),
            ("${FOO///}", &[], "", &[], &["FOO"]),
        ];
        for &(input, pairs, value, matched, unmatched) in cases {
            let expansion = expand(input, pairs).unwrap_or_else(|error| panic!("{input}: {error}"));
            assert_eq!(expansion.value, value, "value of {input}");
            assert_eq!(expansion.matched, names(matched), "matched of {input}");
            assert_eq!(
                expansion.unmatched,
                names(unmatched),
                "unmatched of {input}"
            );
        }
    }

    #[test]
    fn invalid_substitutions_fail_as_in_buildkit() {
        let foo_bar = [("FOO", "xxx"), ("BAR", "")];
        for input in [
            "${BAZ?ccc}",
            "${BAR:?bbb}",
            "${BAZ:?ccc}",
            "${BAZ:?}",
            "${FOO=aaa}",
            "${FOO=:aaa}",
            "${FOO=}",
            "${FOO:#}",
            "${FOO:##}",
            "${FOO:%}",
            "${FOO:%%}",
            "${FOO//ww}",
            "${FOO//}",
        ] {
            assert!(expand(input, &foo_bar).is_err(), "{input} should fail");
        }
    }

    #[test]
    fn required_variable_messages_use_the_given_text_or_buildkits_default() {
        let no_empty = "${VAR:?message here$ARG}";
        let no_unset = "${VAR?message here$ARG}";
        let set = [("VAR", "plain"), ("ARG", "x")];
        let empty = [("VAR", ""), ("ARG", "x")];
        let unset = [("ARG", "x")];
        assert_eq!(
            expand(no_empty, &set).map(|e| e.value),
            Ok("plain".to_owned())
        );
        assert_eq!(
            expand(no_empty, &empty).map_err(|e| e.message),
            Err("VAR: message herex".to_owned())
        );
        assert_eq!(
            expand(no_empty, &unset).map_err(|e| e.message),
            Err("VAR: message herex".to_owned())
        );
        assert_eq!(
            expand(no_unset, &set).map(|e| e.value),
            Ok("plain".to_owned())
        );
        assert_eq!(expand(no_unset, &empty).map(|e| e.value), Ok(String::new()));
        assert_eq!(
            expand(no_unset, &unset).map_err(|e| e.message),
            Err("VAR: message herex".to_owned())
        );

        let error = expand("x${FOO:?}", &[]).unwrap_err();
        assert_eq!(error.message, "FOO: is not allowed to be unset");
        assert_eq!(error.offset, 1);
        assert_eq!(
            error.to_string(),
            r#"failed to process "x${FOO:?}": FOO: is not allowed to be unset"#
        );
        let error = expand("${FOO:?}", &[("FOO", "")]).unwrap_err();
        assert_eq!(error.message, "FOO: is not allowed to be empty");
    }

    #[test]
    fn syntax_errors_carry_buildkits_message_and_the_offending_offset() {
        let cases = [
            (
                "ab'cd",
                "unexpected end of statement while looking for matching single-quote",
                2,
            ),
            (
                "a\"b",
                "unexpected end of statement while looking for matching double-quote",
                1,
            ),
            ("x${}", "syntax error: bad substitution", 1),
            (
                "${PWD",
                "unsupported modifier (\u{fffd}) in substitution",
                0,
            ),
            ("${", "syntax error: missing '}'", 0),
            ("${A:-${B}", "syntax error: missing '}'", 0),
            ("${A:-'x}", "syntax error: missing '}'", 0),
            ("${A:-b'}'", "syntax error: missing '}'", 0),
            ("${A/x", "syntax error: missing '/' in ${}", 0),
            ("${A:=x}", "unsupported modifier (:=) in substitution", 0),
            (
                "${A%\\x}",
                "invalid pattern (\\x) in substitution: invalid escape '\\x'",
                0,
            ),
            (
                "${A%a\\x}",
                "invalid pattern (\\xa) in substitution: invalid escape '\\x'",
                0,
            ),
            ("${A#a\\", "syntax error: missing '}'", 0),
            ("${A#a\\}", "syntax error: missing '}'", 0),
        ];
        for (input, message, offset) in cases {
            let error = expand(input, &[("A", "abc")]).unwrap_err();
            assert_eq!(
                (error.message.as_str(), error.offset),
                (message, offset),
                "{input}"
            );
        }
        // The inner error surfaces when the input goes on after it.
        let error = expand("${A:-${B:?oops}}x", &[]).unwrap_err();
        assert_eq!(error.message, "B: oops");
        let error = expand("${A:-${B:?oops}", &[]).unwrap_err();
        assert_eq!(error.message, "syntax error: missing '}'");
    }

    #[test]
    fn error_display_quotes_the_word_like_go() {
        let error = expand("\"a\tb\u{1}é\u{a0}", &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed to process \"\\\"a\\tb\\x01é\\u00a0\": \
             unexpected end of statement while looking for matching double-quote"
        );
        assert!(error.hint.is_some());
    }

    #[test]
    fn pattern_conversion_matches_buildkits_regexes() {
        let cases = [
            ("*", "^.*"),
            ("?", "^."),
            ("\\*", "^\\*"),
            (
                "(()[]{\\}^$.\\*\\?|\\\\",
                "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\",
            ),
        ];
        for (pattern, regex) in cases {
            assert_eq!(
                pattern_regex(pattern, true, true)
                    .map(|r| r.as_str().to_owned())
                    .ok(),
                Some(regex.to_owned())
            );
        }
        for invalid in ["\\", "\\x", "\\\\\\"] {
            assert!(pattern_regex(invalid, true, true).is_err(), "{invalid}");
        }
        assert_eq!(
            pattern_regex("a*", false, false)
                .map(|r| r.as_str().to_owned())
                .ok(),
            Some("a.*?".to_owned())
        );
    }

    #[test]
    fn reverse_pattern_keeps_escapes_in_order() {
        let cases = [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
        ];
        for (pattern, reversed) in cases {
            assert_eq!(reverse_pattern(pattern), reversed);
        }
    }

    #[test]
    fn wildcards_do_not_match_newlines_as_in_go_regexp() {
        assert_eq!(
            expand("${V#*}", &[("V", "a\nb")]).map(|e| e.value),
            Ok("a\nb".to_owned())
        );
        assert_eq!(
            expand("${V##*}", &[("V", "a\nb")]).map(|e| e.value),
            Ok("\nb".to_owned())
        );
        assert_eq!(
            expand("${V%%?b}", &[("V", "a\nb")]).map(|e| e.value),
            Ok("a\nb".to_owned())
        );
    }

    /// `$` in a replacement is expanded by the lexer first (`$0` there is the unset parameter
    /// 0); a `$0` that reaches the replacement through a variable stands for the match.
    #[test]
    fn replace_all_expands_whole_match_references_like_go() {
        let env = [
            ("V", "foo"),
            ("MATCH", "[$0]"),
            ("TWICE", "${0}${0}"),
            ("DOLLARS", "$$"),
            ("OTHER", "$1$x${y}"),
            ("BROKEN", "${0"),
        ];
        let cases = [
            ("${V//o/$MATCH}", "f[o][o]"),
            ("${V//o/$TWICE}", "foooo"),
            ("${V//o/$DOLLARS}", "f$$"),
            ("${V//o/$OTHER}", "f"),
            ("${V//o/$BROKEN}", "f${0${0"),
            ("${V/o/$MATCH}", "f[$0]o"),
            ("${V//o/[$0]}", "f[][]"),
            ("${V//o/$.}", "f$.$."),
            ("${V///-}", "-f-o-o-"),
            ("${V//o*/-}", "f-"),
            ("${V//*/-}", "-"),
        ];
        for (input, value) in cases {
            assert_eq!(
                expand(input, &env).map(|e| e.value),
                Ok(value.to_owned()),
                "{input}"
            );
        }
    }

    #[test]
    fn special_and_positional_parameters_are_single_names() {
        assert_eq!(expand("$@@@", &[]).map(|e| e.value), Ok("@@".to_owned()));
        assert_eq!(
            expand("$001aaa", &[("001", "x")]).map(|e| e.value),
            Ok("xaaa".to_owned())
        );
        assert_eq!(
            expand("$$a", &[("$", "pid")]).map(|e| e.value),
            Ok("pida".to_owned())
        );
        assert_eq!(
            expand("${#V}", &[]).map_err(|e| e.message),
            Err("unsupported modifier (V) in substitution".to_owned())
        );
        assert_eq!(
            expand("$é1", &[("é1", "v")]).map(|e| e.value),
            Ok("v".to_owned())
        );
        // U+00B2 is a number but not a decimal digit: not part of a name.
        assert_eq!(expand("$²", &[]).map(|e| e.value), Ok("$²".to_owned()));
        assert_eq!(
            expand("$\u{663}x", &[("\u{663}", "3")]).map(|e| e.value),
            Ok("3x".to_owned())
        );
    }

    #[test]
    fn names_are_case_sensitive() {
        let expansion = expand("$pwd-$PWD", &[("PWD", "/home")]).unwrap();
        assert_eq!(expansion.value, "-/home");
        assert_eq!(expansion.unmatched, names(&["pwd"]));
    }

    #[test]
    fn slice_environment_lets_the_last_definition_win() {
        let pairs: Vec<(String, String)> = [("car", "hat"), ("foo", "bar"), ("car", "bike")]
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let expansion = Lexer::new('\\')
            .expand_word("$car/$foo/$none", pairs.as_slice())
            .unwrap();
        assert_eq!(expansion.value, "bike/bar/");
    }

    #[test]
    fn release_file_name_with_optional_variant() {
        let release = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        let base = [("VERSION", "v1.2.3"), ("TARGETOS", "linux")];
        let arm_v7 = [
            base[0],
            base[1],
            ("TARGETARCH", "arm"),
            ("TARGETVARIANT", "v7"),
        ];
        let empty_variant = [
            base[0],
            base[1],
            ("TARGETARCH", "arm64"),
            ("TARGETVARIANT", ""),
        ];
        let no_variant = [base[0], base[1], ("TARGETARCH", "arm64")];
        assert_eq!(
            expand(release, &arm_v7).unwrap().value,
            "something-v1.2.3.linux-arm-v7.tar.gz"
        );
        assert_eq!(
            expand(release, &empty_variant).unwrap().value,
            "something-v1.2.3.linux-arm64.tar.gz"
        );
        assert_eq!(
            expand(release, &no_variant).unwrap().value,
            "something-v1.2.3.linux-arm64.tar.gz"
        );
    }

    #[test]
    fn backtick_escape_token_replaces_backslash() {
        let lexer = Lexer::new('`');
        let none = env(&[]);
        assert_eq!(
            lexer.expand_word("a`$b\\c", &none).map(|e| e.value),
            Ok("a$b\\c".to_owned())
        );
        assert_eq!(
            lexer.expand_word("\"`\"x\\\"", &none).map(|e| e.value),
            Ok("\"x\\".to_owned())
        );
        assert_eq!(
            lexer.expand_words("a` b c", &none),
            Ok(vec!["a b".to_owned(), "c".to_owned()])
        );
    }

    /// The parser finds heredocs with raw quotes, raw escapes and unset variables kept.
    #[test]
    fn heredoc_line_lexing_keeps_the_words_as_written() {
        let lexer = Lexer::new('\\')
            .raw_quotes(true)
            .raw_escapes(true)
            .skip_unset_env(true);
        let none = env(&[]);
        let cases: &[(&str, &[&str])] = &[
            ("cat <<EOF > /out", &["cat", "<<EOF", ">", "/out"]),
            ("cat << EOF", &["cat", "<< EOF"]),
            ("cat <<\t'EOF' x", &["cat", "<<\t'EOF'", "x"]),
            // Only blanks right after `<<` join the word, not those after the `-` modifier.
            ("cat <<- EOF", &["cat", "<<-", "EOF"]),
            ("<<$EOF ${A:-b} ${B}", &["<<$EOF", "${A:-b}", "${B}"]),
            ("\"<<NOHEREDOC\"", &["\"<<NOHEREDOC\""]),
            ("a\\ b \"c\\d\" 'e f'", &["a\\ b", "\"c\\\\d\"", "'e f'"]),
            ("3<<a <<b <c", &["3<<a", "<<b", "<c"]),
            ("${A/x/y} ${A//x/y}", &["${A/x/y}", "${A/x/y}"]),
            ("$A${A:=q}", &["$A${A:=q}"]),
        ];
        for &(line, words) in cases {
            assert_eq!(
                lexer.expand_words(line, &none),
                Ok(words.iter().map(|&w| w.to_owned()).collect()),
                "{line}"
            );
        }
    }

    /// Whether a heredoc delimiter was quoted: lex it with and without raw quotes and compare
    /// the number of quote characters (escaped quotes count in both).
    #[test]
    fn heredoc_delimiter_lexing_with_and_without_raw_quotes() {
        let plain = Lexer::new('\\').skip_unset_env(true);
        let raw = plain.raw_quotes(true);
        let none = env(&[]);
        let cases = [
            ("eof", "eof", "eof"),
            ("eo\\'f", "eo'f", "eo'f"),
            ("eo'f'", "eof", "eo'f'"),
            ("'e'o\\'f", "eo'f", "'e'o'f"),
            ("\"EOF\"", "EOF", "\"EOF\""),
            ("'one two'", "one two", "'one two'"),
            ("$EOF", "$EOF", "$EOF"),
        ];
        for (delimiter, without, with) in cases {
            assert_eq!(
                plain.expand_words(delimiter, &none),
                Ok(vec![without.to_owned()]),
                "{delimiter}"
            );
            assert_eq!(
                raw.expand_words(delimiter, &none),
                Ok(vec![with.to_owned()]),
                "{delimiter}"
            );
        }
    }

    #[test]
    fn skip_unset_env_keeps_unset_references_as_written() {
        let lexer = Lexer::new('\\').skip_unset_env(true);
        let vars = env(&[("SET", "v"), ("E", "")]);
        let cases = [
            ("$UNSET", "$UNSET"),
            ("${UNSET}", "${UNSET}"),
            ("${UNSET:-$SET}", "${UNSET:-v}"),
            ("${UNSET#a*}", "${UNSET#a*}"),
            ("${UNSET:?}", "${UNSET:?}"),
            ("${UNSET:=x}", "${UNSET:=x}"),
            ("${E:-d}", "d"),
            ("$SET", "v"),
            ("$1 $@", "$1 $@"),
        ];
        for (input, value) in cases {
            assert_eq!(
                lexer.expand_word(input, &vars).map(|e| e.value),
                Ok(value.to_owned()),
                "{input}"
            );
        }
        assert!(lexer.expand_word("${SET:=x}", &vars).is_err());
    }

    #[test]
    fn raw_escapes_keep_escape_tokens_but_not_in_defaults() {
        let lexer = Lexer::new('\\').raw_escapes(true);
        let none = env(&[]);
        let cases = [
            ("a\\$b", "a\\$b"),
            ("a\\", "a\\"),
            ("\"x\\$y\\\"\"", "x\\$y\\\""),
            // BuildKit writes the kept escape token and then the token itself again.
            ("\"a\\b\"", "a\\\\b"),
            ("${U:-a\\b}", "ab"),
            ("${U#a\\*}", ""),
        ];
        for (input, value) in cases {
            assert_eq!(
                lexer.expand_word(input, &none).map(|e| e.value),
                Ok(value.to_owned()),
                "{input}"
            );
        }
    }

    #[test]
    fn skip_process_quotes_only_expands_variables() {
        let lexer = Lexer::new('\\').skip_process_quotes(true);
        let vars = env(&[("FOO", "bar")]);
        let script = "echo \"$FOO\" '$FOO' 'unterminated";
        assert_eq!(
            lexer.expand_word(script, &vars).map(|e| e.value),
            Ok("echo \"bar\" 'bar' 'unterminated".to_owned())
        );
    }

    #[test]
    fn empty_quotes_add_no_word_and_values_split_unless_quoted() {
        let lexer = Lexer::new('\\');
        let vars = env(&[("V", " a  b "), ("E", "")]);
        let words = |text| lexer.expand_words(text, &vars).unwrap();
        assert_eq!(words("x '' y"), ["x", "y"]);
        assert_eq!(words("x$V\"$V\"y"), ["x", "a", "b", " a  b y"]);
        assert_eq!(words("${E:-p q}"), ["p", "q"]);
        assert_eq!(words("pre${E:-d}post"), ["predpost"]);
        assert!(words("  ").is_empty());
    }

    #[test]
    fn leading_byte_order_mark_is_ignored_like_gos_scanner() {
        let expansion = expand("\u{feff}a\u{feff}", &[]).unwrap();
        assert_eq!(expansion.value, "a\u{feff}");
        assert_eq!(expand("\u{feff}'", &[]).unwrap_err().offset, 1);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "${A:-".repeat(MAX_NESTING + 1) + &"}".repeat(MAX_NESTING + 1);
        let error = expand(&deep, &[]).unwrap_err();
        assert!(error.message.contains("nested"), "{}", error.message);
        let allowed = "${A:-".repeat(MAX_NESTING) + "x" + &"}".repeat(MAX_NESTING);
        assert_eq!(expand(&allowed, &[]).map(|e| e.value), Ok("x".to_owned()));
    }

    fn lexer_strategy() -> impl Strategy<Value = Lexer> {
        (prop::sample::select(vec!['\\', '`']), any::<[bool; 4]>()).prop_map(
            |(escape, [quotes, escapes, skip, raw])| {
                Lexer::new(escape)
                    .raw_quotes(quotes)
                    .raw_escapes(escapes)
                    .skip_unset_env(skip)
                    .skip_process_quotes(raw)
            },
        )
    }

    /// Text made mostly of the characters the lexer treats specially.
    fn shellish_text() -> impl Strategy<Value = String> {
        let alphabet: Vec<char> = "${}:-+?#%/'\"\\`<* @!.0a_Z é한\t\n\u{feff}"
            .chars()
            .collect();
        prop::collection::vec(prop::sample::select(alphabet), 0..48).prop_map(String::from_iter)
    }

    fn fuzz_env() -> BTreeMap<String, String> {
        env(&[
            ("a", "x y"),
            ("Z", ""),
            ("_", "*\\?$0"),
            ("0", "zero"),
            ("é", "<<"),
        ])
    }

    proptest! {
        #[test]
        fn expansion_never_panics(lexer in lexer_strategy(), text in prop_oneof![shellish_text(), any::<String>()]) {
            let vars = fuzz_env();
            let word = lexer.expand_word(&text, &vars);
            let words = lexer.expand_words(&text, &vars);
            prop_assert_eq!(word.is_ok(), words.is_ok());
            if let Err(error) = word {
                prop_assert!(error.offset <= text.chars().count());
            }
        }

        #[test]
        fn text_without_specials_expands_to_itself(lexer in lexer_strategy(), text in any::<String>()) {
            let special = ['$', '\'', '"', lexer.escape()];
            let text: String = text.chars().filter(|c| !special.contains(c)).collect();
            let text = text.trim_start_matches(BYTE_ORDER_MARK);
            let expansion = lexer.expand_word(text, &fuzz_env()).unwrap();
            prop_assert_eq!(expansion.value, text);
            prop_assert!(expansion.matched.is_empty() && expansion.unmatched.is_empty());
        }

        #[test]
        fn plain_words_joined_by_spaces_split_back(lexer in lexer_strategy(), words in prop::collection::vec("[a-zA-Z0-9]{1,8}", 0..8)) {
            prop_assert_eq!(lexer.expand_words(&words.join(" "), &fuzz_env()).unwrap(), words);
        }
    }
}
