//! Word expansion (the shell lexer every ARG, ENV, COPY and FROM goes through) must never panic,
//! and what it reports as used must agree with the variables it was given: a name it counts as
//! matched is set, one it counts as unmatched is not.
//!
//! Input: one byte of lexer options, then UTF-8 text: the word, and after the first NUL the
//! variables as `NAME=value` lines.
#![no_main]

use std::collections::BTreeMap;

use imgb_frontend::shell::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&options, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (word, variables) = text.split_once('\0').unwrap_or((text, ""));
    let env: BTreeMap<String, String> = variables
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let lexer = Lexer::new(if options & 1 == 0 { '\\' } else { '`' })
        .raw_quotes(options & 2 != 0)
        .raw_escapes(options & 4 != 0)
        .skip_unset_env(options & 8 != 0)
        .skip_process_quotes(options & 16 != 0);
    if let Ok(expansion) = lexer.expand_word(word, &env) {
        for name in &expansion.matched {
            assert!(
                env.contains_key(name),
                "{name:?} counted as matched but unset"
            );
        }
        for name in &expansion.unmatched {
            assert!(
                !env.contains_key(name),
                "{name:?} counted as unmatched but set"
            );
        }
    }
    let _ = lexer.expand_words(word, &env);
});
