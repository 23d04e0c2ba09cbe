//! FROM: base, stage name, `--platform`, doc comment, expansion.

use super::*;

fn from(source: &str) -> FromInstruction {
    match instruction(source) {
        Instruction::From(from) => from,
        other => panic!("not a FROM: {other:?}"),
    }
}

#[test]
fn base_image_alone() {
    let from = from("FROM busybox:1.36");
    assert_eq!(from.base_name, "busybox:1.36");
    assert_eq!(from.stage_name, None);
    assert_eq!(from.platform, None);
}

#[test]
fn stage_names_are_lower_cased_and_as_is_case_insensitive() {
    let from = from("FROM golang AS Build-Env_1.2");
    assert_eq!(from.stage_name.as_deref(), Some("build-env_1.2"));
    assert_eq!(self::from("from a as b").stage_name.as_deref(), Some("b"));
}

#[test]
fn invalid_stage_names_are_rejected_naming_the_word() {
    for name in ["1stage", "st@ge", "-x", "_x", "ünï"] {
        let error = rejection(&format!("FROM a AS {name}"));
        assert_eq!(
            error.message,
            format!(
                "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
            )
        );
    }
    assert_eq!(rejection("FROM a AS 1x").span, Some(Span::at(1, 11, 2)));
}

#[test]
fn from_takes_one_or_three_arguments() {
    for source in [
        "FROM",
        "FROM a b",
        "FROM a AS",
        "FROM a TO b",
        "FROM a AS b c",
    ] {
        assert_eq!(
            rejection(source).message,
            "FROM requires either one or three arguments",
            "{source}"
        );
    }
    // The arguments are checked before the flags, as in BuildKit.
    assert_eq!(
        rejection("FROM --nope a b").message,
        "FROM requires either one or three arguments"
    );
}

#[test]
fn platform_flag_and_unknown_flags() {
    let from = from("FROM --platform=linux/arm64 a AS b");
    assert_eq!(from.platform.as_deref(), Some("linux/arm64"));
    assert_eq!(self::from("FROM --platform= a").platform, None);
    let error = rejection("FROM --platfrom=linux/amd64 a");
    assert_eq!(error.message, "unknown flag: --platfrom");
    assert_eq!(error.hint.as_deref(), Some("did you mean --platform?"));
}

#[test]
fn doc_comment_comes_from_the_comment_naming_the_stage() {
    let from = from("# base defines first stage\n# unrelated\nFROM busybox AS base\n");
    assert_eq!(from.doc_comment.as_deref(), Some("defines first stage"));
    assert_eq!(
        self::from("# base\nFROM busybox AS base\n").doc_comment,
        None
    );
    assert_eq!(
        self::from("# busybox is nice\nFROM busybox\n").doc_comment,
        None
    );
}

#[test]
fn expand_substitutes_base_name_and_platform() {
    let Instruction::From(from) = expand(
        instruction("FROM --platform=$BUILDPLATFORM ${IMAGE}:${TAG} AS b"),
        &[
            ("BUILDPLATFORM", "linux/amd64"),
            ("IMAGE", "alpine"),
            ("TAG", "3"),
        ],
    )
    .unwrap() else {
        panic!("not a FROM")
    };
    assert_eq!(from.base_name, "alpine:3");
    assert_eq!(from.platform.as_deref(), Some("linux/amd64"));
}

#[test]
fn expand_rejects_an_empty_base_or_platform() {
    let error = expand(instruction("FROM ${IMAGE}"), &[("IMAGE", "")]).unwrap_err();
    assert_eq!(error.message, "base name (${IMAGE}) should not be blank");
    assert_eq!(error.span, Some(Span::lines(1, 1)));
    let error = expand(instruction("FROM --platform=$P a"), &[("P", "")]).unwrap_err();
    assert_eq!(error.message, "empty platform value from expression $P");
    let error = expand(instruction("FROM --platform=${FAIL} a"), &[]).unwrap_err();
    assert_eq!(
        error.message,
        "failed to process arguments for platform ${FAIL}: FAIL is not set"
    );
}
