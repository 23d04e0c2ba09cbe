//! BuildKit's `bflag_test.go`, and the flag rules as instructions apply them.

use super::super::flags::{FlagSpec, Flags, bool_flag, list_flag, string_flag};
use super::*;

fn node_with_flags(flags: &[&str]) -> Node {
    let text: Vec<&str> = flags.to_vec();
    Node {
        keyword: "copy".into(),
        flags: flags.iter().map(|flag| flag.to_string()).collect(),
        args: vec!["a".into(), "b".into()],
        original: format!("COPY {} a b", text.join(" ")),
        start_line: 1,
        end_line: 1,
        ..Node::default()
    }
}

fn parse_flags(specs: &[FlagSpec], flags: &[&str]) -> Result<Flags, Diagnostic> {
    let node = node_with_flags(flags);
    Flags::parse(&Context::new(&node), specs)
}

const STR_AND_BOOL: [FlagSpec; 2] = [string_flag("str1"), bool_flag("bool1")];

#[test]
fn no_flags_and_a_lone_double_dash_are_fine() {
    assert!(parse_flags(&[], &[]).is_ok());
    assert!(parse_flags(&[], &["--"]).is_ok());
    let flags = parse_flags(&STR_AND_BOOL, &[]).unwrap();
    assert_eq!(flags.string("str1"), None);
    assert_eq!(flags.bool("bool1"), None);
    assert!(flags.used().is_empty());
}

#[test]
fn double_dash_ends_the_flags() {
    let flags = parse_flags(&STR_AND_BOOL, &["--bool1", "--", "--unknown"]).unwrap();
    assert_eq!(flags.bool("bool1"), Some(true));
}

#[test]
fn string_flags_need_an_equals_sign_but_may_be_empty() {
    let error = parse_flags(&STR_AND_BOOL, &["--str1"]).unwrap_err();
    assert_eq!(error.message, "missing a value on flag: --str1");
    assert_eq!(
        parse_flags(&STR_AND_BOOL, &["--str1="])
            .unwrap()
            .string("str1"),
        Some("")
    );
    assert_eq!(
        parse_flags(&STR_AND_BOOL, &["--str1=BYE"])
            .unwrap()
            .string("str1"),
        Some("BYE")
    );
    assert_eq!(
        parse_flags(&STR_AND_BOOL, &["--str1=a=b"])
            .unwrap()
            .string("str1"),
        Some("a=b")
    );
}

#[test]
fn bool_flags_take_nothing_true_or_false() {
    for (flag, value) in [
        ("--bool1", true),
        ("--bool1=true", true),
        ("--bool1=TRUE", true),
        ("--bool1=false", false),
        ("--bool1=False", false),
    ] {
        assert_eq!(
            parse_flags(&STR_AND_BOOL, &[flag]).unwrap().bool("bool1"),
            Some(value),
            "{flag}"
        );
    }
    let error = parse_flags(&STR_AND_BOOL, &["--bool1=false1"]).unwrap_err();
    assert_eq!(
        error.message,
        "expecting boolean value for flag --bool1, not: false1"
    );
    let error = parse_flags(&STR_AND_BOOL, &["--bool1="]).unwrap_err();
    assert_eq!(error.message, "missing a value on flag: --bool1");
}

#[test]
fn unknown_flags_are_rejected_with_a_near_miss_hint() {
    let error = parse_flags(&STR_AND_BOOL, &["--bool2"]).unwrap_err();
    assert_eq!(error.message, "unknown flag: --bool2");
    assert_eq!(error.hint.as_deref(), Some("did you mean --bool1?"));
    let error = parse_flags(&STR_AND_BOOL, &["--completely-different"]).unwrap_err();
    assert_eq!(
        error.hint.as_deref(),
        Some("the accepted flags are --str1, --bool1")
    );
}

#[test]
fn several_flags_combine() {
    let flags = parse_flags(&STR_AND_BOOL, &["--bool1", "--str1=BYE"]).unwrap();
    assert_eq!(flags.string("str1"), Some("BYE"));
    assert_eq!(flags.bool("bool1"), Some(true));
}

#[test]
fn used_lists_every_given_flag() {
    let specs = [
        bool_flag("bool1"),
        bool_flag("bool2"),
        bool_flag("bool3"),
        bool_flag("bool4"),
        bool_flag("bool5"),
        string_flag("str1"),
        string_flag("str2"),
        string_flag("str3"),
        string_flag("str4"),
    ];
    let flags = parse_flags(
        &specs,
        &[
            "--bool2=false",
            "--bool3",
            "--bool4=true",
            "--bool5",
            "--str2= ",
            "--str3=def3",
            "--str4=my-val",
        ],
    )
    .unwrap();
    assert_eq!(
        flags.used(),
        ["bool2", "bool3", "bool4", "bool5", "str2", "str3", "str4"]
    );
    assert_eq!(flags.bool("bool2"), Some(false));
    assert_eq!(flags.string("str2"), Some(" "));
}

#[test]
fn a_flag_given_twice_is_an_error_unless_it_is_a_list() {
    let error = parse_flags(&STR_AND_BOOL, &["--str1=a", "--str1=b"]).unwrap_err();
    assert_eq!(error.message, "duplicate flag specified: --str1");
    assert_eq!(error.span, Some(Span::at(1, 15, 8)));
    let error = parse_flags(&STR_AND_BOOL, &["--bool1", "--bool1=false"]).unwrap_err();
    assert_eq!(error.message, "duplicate flag specified: --bool1");

    let flags = parse_flags(&[list_flag("mount")], &["--mount=a", "--mount=b"]).unwrap();
    let values: Vec<String> = flags
        .list("mount")
        .into_iter()
        .map(|(value, _)| value)
        .collect();
    assert_eq!(values, ["a", "b"]);
    let error = parse_flags(&[list_flag("mount")], &["--mount"]).unwrap_err();
    assert_eq!(error.message, "missing a value on flag: --mount");
}

#[test]
fn flag_errors_point_at_the_flag() {
    let error = parse_flags(&STR_AND_BOOL, &["--str1=x", "--nope=1"]).unwrap_err();
    assert_eq!(error.span, Some(Span::at(1, 15, 8)));
}

#[test]
fn instructions_accept_exactly_their_flags() {
    let error = rejection("COPY --chonw=me a b");
    assert_eq!(error.message, "unknown flag: --chonw");
    assert_eq!(error.hint.as_deref(), Some("did you mean --chown?"));
    assert_eq!(error.span, Some(Span::at(1, 6, 10)));

    assert_eq!(
        rejection("COPY --checksum=sha256:x a b").message,
        "unknown flag: --checksum"
    );
    assert_eq!(
        rejection("COPY --keep-git-dir a b").message,
        "unknown flag: --keep-git-dir"
    );
    assert_eq!(
        rejection("ADD --from=x a b").message,
        "unknown flag: --from"
    );
    assert_eq!(
        rejection("ADD --parents a b").message,
        "unknown flag: --parents"
    );
    assert_eq!(
        rejection("RUN --chown=x a").message,
        "unknown flag: --chown"
    );
    assert_eq!(rejection("CMD --doit a").message, "unknown flag: --doit");
    assert_eq!(rejection("ENV --x a=b").message, "unknown flag: --x");
    let error = rejection("WORKDIR --x /a");
    assert_eq!(
        error.hint.as_deref(),
        Some("this instruction takes no flags")
    );
}

#[test]
fn arg_and_stopsignal_ignore_flags_as_buildkit_does() {
    assert!(matches!(instruction("ARG --nope a"), Instruction::Arg(_)));
    assert!(matches!(
        instruction("STOPSIGNAL --nope SIGINT"),
        Instruction::StopSignal(_)
    ));
}
