//! Wildcards in COPY/ADD source paths, with the semantics of Go's `filepath.Match` (which
//! BuildKit uses) applied to one path component: `*` matches any run of characters, `?` one
//! character, `[...]` a character class with ranges (`[a-z]`) and `^` for negation, and `\`
//! escapes the next character. A pattern is validated whole before it is used, so a malformed
//! one is an error even where Go would report a mismatch first.

use std::fmt;

/// Why a source component is not a valid pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("it ends with a backslash that escapes nothing")]
    TrailingBackslash,
    #[error("a `[` character class is never closed")]
    UnclosedClass,
    #[error("a character class is empty or starts a range with `-` or `]`")]
    BadClassItem,
}

/// One component pattern, parsed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyChar,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({} tokens)", self.tokens.len())
    }
}

/// Whether a path component contains an unescaped `*`, `?` or `[` (BuildKit's test for where
/// the literal prefix of a source ends).
pub(crate) fn has_wildcards(component: &str) -> bool {
    let mut chars = component.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

impl Pattern {
    pub(crate) fn parse(component: &str) -> Result<Self, GlobError> {
        let chars: Vec<char> = component.chars().collect();
        let mut tokens = Vec::new();
        let mut next = 0;
        while let Some(&c) = chars.get(next) {
            next += 1;
            let token = match c {
                '*' => Token::AnyRun,
                '?' => Token::AnyChar,
                '[' => parse_class(&chars, &mut next)?,
                '\\' => {
                    let escaped = chars.get(next).ok_or(GlobError::TrailingBackslash)?;
                    next += 1;
                    Token::Literal(*escaped)
                }
                other => Token::Literal(other),
            };
            // `**` matches what `*` does; keeping one makes backtracking cheaper.
            if !(token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun)) {
                tokens.push(token);
            }
        }
        Ok(Pattern { tokens })
    }

    /// Whether the whole of `name` matches. Runs in O(len(pattern) × len(name)) at worst: on a
    /// mismatch only the most recent `*` is retried, one character further.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let (mut token, mut position) = (0, 0);
        // The last `*` seen, and where in `name` its run currently ends.
        let mut retry: Option<(usize, usize)> = None;
        while position < name.len() {
            match self.tokens.get(token) {
                Some(Token::AnyRun) => {
                    retry = Some((token, position));
                    token += 1;
                }
                Some(single) if single.matches_char(name[position]) => {
                    token += 1;
                    position += 1;
                }
                _ => match retry {
                    Some((star, run_end)) => {
                        retry = Some((star, run_end + 1));
                        token = star + 1;
                        position = run_end + 1;
                    }
                    None => return false,
                },
            }
        }
        self.tokens[token..]
            .iter()
            .all(|rest| *rest == Token::AnyRun)
    }
}

impl Token {
    fn matches_char(&self, c: char) -> bool {
        match self {
            Token::Literal(literal) => *literal == c,
            Token::AnyChar => true,
            Token::AnyRun => false,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(low, high)| low <= c && c <= high) != *negated
            }
        }
    }
}

/// A class after its `[` (at `chars[*next]`): `^` negates, then one or more items `c` or `c-d`
/// up to `]`. An item may not start with `-` or `]` unless escaped (Go's rule).
fn parse_class(chars: &[char], next: &mut usize) -> Result<Token, GlobError> {
    let negated = chars.get(*next) == Some(&'^');
    if negated {
        *next += 1;
    }
    let mut ranges = Vec::new();
    loop {
        match chars.get(*next) {
            None => return Err(GlobError::UnclosedClass),
            Some(']') if !ranges.is_empty() => {
                *next += 1;
                return Ok(Token::Class { negated, ranges });
            }
            _ => {}
        }
        let low = class_char(chars, next)?;
        let high = if chars.get(*next) == Some(&'-') {
            *next += 1;
            class_char(chars, next)?
        } else {
            low
        };
        ranges.push((low, high));
    }
}

fn class_char(chars: &[char], next: &mut usize) -> Result<char, GlobError> {
    let c = *chars.get(*next).ok_or(GlobError::UnclosedClass)?;
    *next += 1;
    match c {
        '-' | ']' => Err(GlobError::BadClassItem),
        '\\' => {
            let escaped = *chars.get(*next).ok_or(GlobError::UnclosedClass)?;
            *next += 1;
            Ok(escaped)
        }
        c => Ok(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        Pattern::parse(pattern).expect(pattern).matches(name)
    }

    #[test]
    fn star_matches_any_run_including_dotfiles_and_nothing() {
        assert!(matches("*", ".hidden"));
        assert!(matches("*.txt", ".txt"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("**x", "yyx"));
    }

    #[test]
    fn question_mark_matches_one_character_not_byte() {
        assert!(matches("f?.txt", "fé.txt"));
        assert!(!matches("f?.txt", "f.txt"));
    }

    #[test]
    fn classes_ranges_negation_and_escapes() {
        assert!(matches("[ab]1", "b1"));
        assert!(!matches("[ab]1", "c1"));
        assert!(matches("[a-c]", "b"));
        assert!(matches("[^a-c]", "d"));
        assert!(!matches("[^a-c]", "a"));
        assert!(matches("[\\]]", "]"));
        assert!(matches("[*]", "*"));
        assert!(!matches("[*]", "x"));
        assert!(matches("\\*", "*"));
        assert!(!matches("\\*", "x"));
        // A reversed range is valid and matches nothing, as in Go.
        assert!(!matches("[z-a]", "m"));
    }

    #[test]
    fn malformed_patterns_are_errors() {
        assert_eq!(Pattern::parse("a\\"), Err(GlobError::TrailingBackslash));
        assert_eq!(Pattern::parse("[ab"), Err(GlobError::UnclosedClass));
        assert_eq!(Pattern::parse("[]"), Err(GlobError::BadClassItem));
        assert_eq!(Pattern::parse("[-a]"), Err(GlobError::BadClassItem));
        assert_eq!(Pattern::parse("[a-]"), Err(GlobError::BadClassItem));
    }

    #[test]
    fn wildcard_detection_skips_escaped_characters() {
        assert!(has_wildcards("a*"));
        assert!(has_wildcards("[x]"));
        assert!(!has_wildcards("a\\*"));
        assert!(!has_wildcards("plain.txt"));
    }
}
