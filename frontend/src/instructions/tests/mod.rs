//! Instruction conversion tests, on real Dockerfile text parsed by [`crate::parser::parse`]. Many
//! port the cases of BuildKit's `instructions/parse_test.go`, `bflag_test.go` and
//! `parse_heredoc_test.go`, with their error messages.

mod flags;
mod from;
mod healthcheck;
mod run;
mod settings;
mod transfer;

use super::*;
use crate::parser::parse;

/// Converts the last instruction of `source`.
fn convert(source: &str) -> Result<Instruction, Diagnostic> {
    let ast = parse(source).unwrap_or_else(|error| panic!("{source:?} does not parse:\n{error}"));
    parse_instruction(ast.nodes.last().expect("at least one instruction"))
}

fn instruction(source: &str) -> Instruction {
    convert(source).unwrap_or_else(|error| panic!("{source:?} was rejected:\n{error}"))
}

fn rejection(source: &str) -> Diagnostic {
    match convert(source) {
        Ok(instruction) => panic!("{source:?} was accepted: {instruction:?}"),
        Err(error) => error,
    }
}

/// Substitutes `$NAME` and `${NAME}` from `vars`; `${FAIL}` is an expansion error.
fn expander<'a>(
    vars: &'a [(&'a str, &'a str)],
) -> impl FnMut(&str) -> Result<String, Diagnostic> + 'a {
    move |word: &str| {
        if word.contains("${FAIL}") {
            return Err(Diagnostic::error("FAIL is not set"));
        }
        let mut by_length: Vec<_> = vars.to_vec();
        by_length.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        Ok(by_length
            .iter()
            .fold(word.to_string(), |word, (name, value)| {
                word.replace(&format!("${{{name}}}"), value)
                    .replace(&format!("${name}"), value)
            }))
    }
}

fn expand(mut instruction: Instruction, vars: &[(&str, &str)]) -> Result<Instruction, Diagnostic> {
    instruction.expand(&mut expander(vars))?;
    Ok(instruction)
}

#[test]
fn unknown_instruction_is_rejected_with_a_near_miss_hint() {
    let error = rejection("FROM a\nFORM b\n");
    assert_eq!(error.message, "unknown instruction: FORM");
    assert_eq!(error.hint.as_deref(), Some("did you mean FROM?"));
    assert_eq!(error.span, Some(Span::at(2, 1, 4)));

    let error = rejection("FROM a\ncopyy x y\n");
    assert_eq!(error.message, "unknown instruction: copyy");
    assert_eq!(error.hint.as_deref(), Some("did you mean copy?"));
    assert_eq!(
        rejection("Form a").hint.as_deref(),
        Some("did you mean from?")
    );

    // The keyword opens the first line even when the instruction continues.
    let error = rejection("FROM a\nFORM b \\\n  c\n");
    assert_eq!(error.span, Some(Span::at(2, 1, 4)));
}

#[test]
fn unknown_instruction_without_a_near_miss_lists_the_instructions() {
    for (source, message) in [
        ("BANANA bar", "unknown instruction: BANANA"),
        ("banana bar", "unknown instruction: banana"),
    ] {
        let error = rejection(source);
        assert_eq!(error.message, message);
        assert!(
            error
                .hint
                .as_deref()
                .is_some_and(|hint| hint.contains("HEALTHCHECK")),
            "{error}"
        );
    }
    // BuildKit's own cases, which do have a near miss.
    assert_eq!(rejection("FOO bar").message, "unknown instruction: FOO");
    assert_eq!(
        rejection("foo bar").hint.as_deref(),
        Some("did you mean from?")
    );
}

#[test]
fn commands_that_take_exactly_one_argument() {
    for keyword in ["MAINTAINER", "WORKDIR", "USER", "STOPSIGNAL"] {
        assert_eq!(
            rejection(keyword).message,
            format!("{keyword} requires exactly one argument")
        );
    }
}

#[test]
fn commands_that_take_at_least_one_argument() {
    for keyword in [
        "ENV",
        "LABEL",
        "ONBUILD",
        "HEALTHCHECK",
        "EXPOSE",
        "VOLUME",
        "ARG",
    ] {
        assert_eq!(
            rejection(keyword).message,
            format!("{keyword} requires at least one argument")
        );
    }
}

#[test]
fn add_and_copy_need_a_destination() {
    for keyword in ["ADD", "COPY"] {
        assert_eq!(
            rejection(&format!("{keyword} arg1")).message,
            format!(
                "{keyword} requires at least two arguments, but only one was provided. Destination could not be determined"
            )
        );
    }
    // BuildKit's copyEmptyWhitespace case: the arguments are on the following lines.
    let ast = parse("COPY\t\n\t\tquux \\\n      bar").unwrap();
    let error = parse_instruction(&ast.nodes[0]).unwrap_err();
    assert!(
        error
            .message
            .starts_with("COPY requires at least two arguments"),
        "{error}"
    );
}

#[test]
fn env_and_label_reject_malformed_triples() {
    for keyword in ["env", "label"] {
        let node = Node {
            keyword: keyword.to_string(),
            args: vec!["arg1".into(), "arg2".into(), "=".into(), "arg3".into()],
            original: format!("{keyword} arg1=arg2 arg3"),
            start_line: 1,
            end_line: 1,
            ..Node::default()
        };
        let upper = keyword.to_uppercase();
        assert_eq!(
            parse_instruction(&node).unwrap_err().message,
            format!("Bad input to {upper}, too many arguments")
        );

        let blank = Node {
            args: vec![String::new(), "arg2".into(), "=".into()],
            ..node
        };
        assert_eq!(
            parse_instruction(&blank).unwrap_err().message,
            format!("{upper} names can not be blank")
        );
    }
}

#[test]
fn buildkit_error_cases() {
    for (source, message) in [
        (
            "ONBUILD FROM scratch",
            "FROM isn't allowed as an ONBUILD trigger",
        ),
        (
            "ONBUILD MAINTAINER me",
            "MAINTAINER isn't allowed as an ONBUILD trigger",
        ),
        ("MAINTAINER --boo joe@example.com", "unknown flag: --boo"),
        (
            "ONBUILD ONBUILD RUN touch foobar",
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
    ] {
        assert_eq!(rejection(source).message, message, "{source}");
    }
}

#[test]
fn errors_are_located_on_the_instruction_lines() {
    let error = rejection("FROM a\nRUN --network=nope \\\n  make\n");
    assert_eq!(error.span, Some(Span::lines(2, 3)));
    let error = rejection("FROM a\nRUN --network=nope make\n");
    assert_eq!(error.span, Some(Span::at(2, 5, 14)));
}

#[test]
fn keyword_and_origin_describe_the_source() {
    let instruction = instruction("FROM a\nrun echo \\\n  hi\n");
    assert_eq!(instruction.keyword(), "RUN");
    assert_eq!((instruction.start_line(), instruction.end_line()), (2, 3));
    assert_eq!(instruction.span(), Span::lines(2, 3));
    assert_eq!(instruction.origin().code, "run echo   hi");
    assert_eq!(instruction.origin().keyword_as_written(), "run");
}

#[test]
fn every_keyword_converts_to_its_variant() {
    for (source, keyword) in [
        ("FROM a", "FROM"),
        ("RUN x", "RUN"),
        ("CMD x", "CMD"),
        ("LABEL a=b", "LABEL"),
        ("MAINTAINER me", "MAINTAINER"),
        ("EXPOSE 80", "EXPOSE"),
        ("ENV a=b", "ENV"),
        ("ADD a b", "ADD"),
        ("COPY a b", "COPY"),
        ("ENTRYPOINT x", "ENTRYPOINT"),
        ("VOLUME /v", "VOLUME"),
        ("USER u", "USER"),
        ("WORKDIR /w", "WORKDIR"),
        ("ARG a", "ARG"),
        ("ONBUILD RUN x", "ONBUILD"),
        ("STOPSIGNAL SIGKILL", "STOPSIGNAL"),
        ("HEALTHCHECK NONE", "HEALTHCHECK"),
        ("SHELL [\"sh\"]", "SHELL"),
    ] {
        assert_eq!(instruction(source).keyword(), keyword, "{source}");
    }
}

#[test]
fn expansion_errors_are_located_on_the_instruction() {
    let error = expand(instruction("FROM a\nWORKDIR ${FAIL}\n"), &[]).unwrap_err();
    assert_eq!(error.message, "FAIL is not set");
    assert_eq!(error.span, Some(Span::lines(2, 2)));
}

/// Converts (and expands, with an identity expander) every instruction of `source`, whatever the
/// outcome: the point is that nothing panics.
fn convert_everything(source: &str) {
    let Ok(ast) = parse(source) else { return };
    for node in &ast.nodes {
        if let Ok(mut instruction) = parse_instruction(node) {
            let _ = instruction.expand(&mut |word: &str| Ok(word.to_string()));
        }
    }
}

#[test]
fn odd_argument_shapes_never_panic() {
    // BuildKit's TestNilLinter shapes, for every keyword.
    for keyword in KEYWORDS {
        for arguments in [
            "foo=bar",
            "a",
            "a b",
            "a b c",
            "0 0",
            "",
            "[]",
            "[\"\"]",
            "<<EOF\nEOF",
            "--x",
        ] {
            convert_everything(&format!("FROM busybox\n{keyword} {arguments}\n"));
        }
    }
}

proptest::proptest! {
    #[test]
    fn conversion_never_panics(
        source in "((FROM|RUN|COPY|ADD|HEALTHCHECK|ONBUILD|ENV|ARG|SHELL|EXPOSE|FORM) \
                    (--(mount|chmod|chown|interval|retries|network|from|platform|[a-z-]{1,10})\
                    (=[a-z0-9,=$\"'{}: /.+-]{0,24})? ){0,3}\
                    [a-zA-Z0-9 =<>\"'$\\[\\],:/.-]{0,40}\n){1,4}"
    ) {
        convert_everything(&source);
    }
}

proptest::proptest! {
    #[test]
    fn value_parsers_never_panic(text in "\\PC{0,30}") {
        let _ = duration::parse_go_duration(&text);
        let _ = FileMode::parse(&text);
        let mut identity = |word: &str| Ok(word.to_string());
        for spec in [text.clone(), format!("type=tmpfs,size={text}"), format!("type=cache,{text}")] {
            if mount::scan(&spec).is_ok() {
                let _ = mount::resolve(&spec, &mut identity);
            }
        }
    }
}
