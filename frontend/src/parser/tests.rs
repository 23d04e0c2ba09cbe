use super::*;

fn dump(source: &str) -> String {
    parse(source)
        .unwrap_or_else(|e| panic!("parse failed:\n{e}"))
        .dump()
}

#[test]
fn crlf_line_endings_parse_like_lf() {
    assert_eq!(
        dump("FROM a\r\nRUN echo \\\r\n  hi\r\n"),
        "(from \"a\")\n(run \"echo   hi\")\n"
    );
}

#[test]
fn byte_order_mark_is_ignored() {
    assert_eq!(dump("\u{feff}FROM a\n"), "(from \"a\")\n");
}

#[test]
fn directives_only_count_at_the_top() {
    let ast =
        parse("# syntax=docker/dockerfile:1\n# check=skip=all\n# escape=`\nFROM a\n").unwrap();
    assert_eq!(ast.escape, '`');
    assert_eq!(
        ast.directive("syntax").map(|d| d.value.as_str()),
        Some("docker/dockerfile:1")
    );
    assert_eq!(ast.directive("check").map(|d| d.line), Some(2));

    let late = parse("FROM a\n# escape=`\nRUN x\n").unwrap();
    assert_eq!(late.escape, '\\');
    assert!(late.directives.is_empty());
}

#[test]
fn repeated_directive_is_an_error_naming_its_line() {
    let error = parse("# escape=`\n# escape=\\\nFROM a\n").unwrap_err();
    assert_eq!(error.line(), Some(2));
    assert!(
        error.message.contains("only one escape parser directive"),
        "{error}"
    );
}

#[test]
fn invalid_escape_token_is_rejected() {
    let error = parse("# escape=x\nFROM a\n").unwrap_err();
    assert!(error.message.contains("invalid escape token"), "{error}");
}

#[test]
fn instruction_names_are_case_insensitive() {
    assert_eq!(dump("from a\nRuN x\n"), "(from \"a\")\n(run \"x\")\n");
}

#[test]
fn continuation_at_eof_ends_the_instruction() {
    assert_eq!(dump("FROM a\nRUN x \\"), "(from \"a\")\n(run \"x\")\n");
}

#[test]
fn empty_continuation_line_is_a_located_warning() {
    let ast = parse("FROM a\nRUN a \\\n\n  b\n").unwrap();
    assert_eq!(ast.nodes[1].args, vec!["a   b"]);
    assert_eq!(ast.warnings.len(), 1);
    assert_eq!(ast.warnings[0].line(), Some(3));
}

#[test]
fn heredoc_body_is_attached_and_lines_counted() {
    let ast = parse("FROM a\nRUN <<EOF\necho hi\necho there\nEOF\nRUN true\n").unwrap();
    let run = &ast.nodes[1];
    assert_eq!(run.args, vec!["<<EOF"]);
    assert_eq!(run.heredocs.len(), 1);
    assert_eq!(run.heredocs[0].content, "echo hi\necho there\n");
    assert!(run.heredocs[0].expand);
    assert_eq!((run.start_line, run.end_line), (2, 5));
    assert_eq!(ast.nodes[2].start_line, 6);
}

#[test]
fn several_heredocs_in_one_line_are_read_in_order() {
    let ast = parse("FROM a\nCOPY <<one <<-\"two\" /dst/\nfirst\none\n\tsecond\n\ttwo\n").unwrap();
    let copy = &ast.nodes[1];
    assert_eq!(copy.heredocs.len(), 2);
    assert_eq!(copy.heredocs[0].name, "one");
    assert_eq!(copy.heredocs[0].content, "first\n");
    assert!(copy.heredocs[0].expand);
    assert_eq!(copy.heredocs[1].name, "two");
    assert!(copy.heredocs[1].chomp);
    assert!(
        !copy.heredocs[1].expand,
        "a quoted delimiter disables expansion"
    );
    assert_eq!(copy.heredocs[1].content, "\tsecond\n");
}

#[test]
fn heredoc_with_file_descriptor_and_partly_quoted_delimiter() {
    let ast = parse("FROM a\nRUN 3<<E'O'F cat <&3\nx\nEOF\n").unwrap();
    let doc = &ast.nodes[1].heredocs[0];
    assert_eq!(
        (doc.file_descriptor, doc.name.as_str(), doc.expand),
        (3, "EOF", false)
    );
}

#[test]
fn heredoc_in_onbuild_is_read() {
    let ast = parse("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n").unwrap();
    assert_eq!(ast.nodes[1].heredocs[0].content, "echo hi\n");
    assert_eq!(ast.dump(), "(from \"a\")\n(onbuild (run \"<<EOF\"))\n");
}

#[test]
fn heredocs_are_not_read_for_json_form_or_other_instructions() {
    let ast = parse("FROM a\nRUN [\"<<EOF\"]\nENV a=<<EOF\n").unwrap();
    assert!(ast.nodes.iter().all(|node| node.heredocs.is_empty()));
}

#[test]
fn quoted_heredoc_marker_is_not_a_heredoc() {
    let ast = parse("FROM a\nRUN echo '<<EOF'\nRUN true\n").unwrap();
    assert!(ast.nodes[1].heredocs.is_empty());
}

#[test]
fn unterminated_heredoc_is_an_error_spanning_to_eof() {
    let error = parse("FROM a\nRUN <<EOF\necho hi\n").unwrap_err();
    assert!(error.message.contains("unterminated heredoc"), "{error}");
    assert_eq!(error.span.map(|s| (s.start.line, s.end.line)), Some((2, 3)));
}

#[test]
fn chomp_strips_leading_tabs_only() {
    assert_eq!(chomp_heredoc_content("\t\ta\n  b\n\tc"), "a\n  b\nc");
}

#[test]
fn json_array_of_non_strings_is_an_error() {
    let error = parse("FROM a\nCMD [\"a\", 1]\n").unwrap_err();
    assert_eq!(error.line(), Some(2));
    assert!(error.message.contains("strings only"));
}

#[test]
fn invalid_json_falls_back_to_shell_form() {
    assert_eq!(dump("CMD [\"a\", \n"), "(cmd \"[\\\"a\\\",\")\n");
    assert_eq!(dump("CMD ['a']\n"), "(cmd \"['a']\")\n");
}

#[test]
fn empty_and_comment_only_files_have_no_instructions() {
    for source in ["", "# just a comment\n\n", "\n\n  \n"] {
        let error = parse(source).unwrap_err();
        assert!(
            error.message.contains("no instructions"),
            "{source:?}: {error}"
        );
    }
}

#[test]
fn comments_before_an_instruction_are_kept() {
    let ast = parse("FROM a\n# build stage\n# second\nRUN x\n").unwrap();
    assert_eq!(ast.nodes[1].comments, vec!["build stage", "second"]);
}

#[test]
fn go_quote_escapes_like_strconv_quote() {
    assert_eq!(
        dump::go_quote("a\"b\\c\u{0}\u{7f}é\u{a0}"),
        "\"a\\\"b\\\\c\\x00\\x7fé\\u00a0\""
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Dockerfile-ish text: instruction words, flags, quotes, escapes, heredoc markers, JSON
    /// brackets, comments, continuations and line endings, in any order.
    fn dockerfile_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("FROM ".to_string()),
            Just("RUN ".to_string()),
            Just("COPY ".to_string()),
            Just("ENV ".to_string()),
            Just("ONBUILD ".to_string()),
            Just("HEALTHCHECK ".to_string()),
            Just("--flag=".to_string()),
            Just("<<EOF".to_string()),
            Just("<<-'E'".to_string()),
            Just("EOF".to_string()),
            Just("[\"a\", ".to_string()),
            Just("]".to_string()),
            Just("# escape=`".to_string()),
            Just("\\".to_string()),
            Just("`".to_string()),
            Just("\n".to_string()),
            Just("\r\n".to_string()),
            Just("\t".to_string()),
            Just("=".to_string()),
            "[a-z\"' $#{}]{0,6}".prop_map(String::from),
            any::<char>().prop_map(String::from),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn parsing_random_input_never_panics(source in dockerfile_text()) {
            if let Ok(ast) = parse(&source) {
                let _ = ast.dump();
                for node in &ast.nodes {
                    prop_assert!(node.start_line >= 1 && node.start_line <= node.end_line);
                }
            }
        }

        #[test]
        fn parsing_arbitrary_unicode_never_panics(source in "\\PC{0,200}") {
            let _ = parse(&source);
        }
    }
}
