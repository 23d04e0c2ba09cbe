use super::*;

/// `(line, rule)` for every warning `imgb check` reports on `source`.
fn rules(source: &str) -> Vec<(usize, &'static str)> {
    rules_with(source, &BuildOptions::default(), None)
}

fn rules_with(
    source: &str,
    options: &BuildOptions,
    ignore: Option<&IgnoreRules>,
) -> Vec<(usize, &'static str)> {
    let dockerfile = Dockerfile::parse("Dockerfile", source).unwrap_or_else(|e| panic!("{e}"));
    let (warnings, _) =
        check(&dockerfile, options, ignore, &mut |_| None).unwrap_or_else(|e| panic!("{e}"));
    warnings
        .iter()
        .map(|w| (w.line().unwrap_or(0), w.rule.unwrap_or("?")))
        .collect()
}

#[test]
fn clean_dockerfile_has_no_warnings() {
    assert_eq!(
        rules("FROM scratch AS base\nENV A=1\nCOPY a /a\nCMD [\"/a\"]\n"),
        vec![]
    );
}

#[test]
fn legacy_env_and_label_format() {
    assert_eq!(
        rules("FROM scratch\nENV A 1\nLABEL b 2\n"),
        vec![(2, "LegacyKeyValueFormat"), (3, "LegacyKeyValueFormat")]
    );
}

#[test]
fn shell_form_cmd_and_entrypoint_recommend_json() {
    assert_eq!(
        rules("FROM scratch\nENTRYPOINT run\nCMD x\n"),
        vec![(2, "JSONArgsRecommended"), (3, "JSONArgsRecommended")]
    );
}

#[test]
fn undefined_variable_in_scratch_stage() {
    assert_eq!(
        rules("FROM scratch\nARG DECLARED\nCOPY $DECLARED$MISSING /x\n"),
        vec![(3, "UndefinedVar")]
    );
}

#[test]
fn undefined_variable_is_not_reported_when_base_image_env_is_unknown() {
    assert_eq!(rules("FROM alpine\nWORKDIR $GOPATH\n"), vec![]);
}

#[test]
fn stage_name_casing_and_from_as_casing() {
    assert_eq!(
        rules("FROM scratch AS Builder\nFROM scratch as final\n"),
        vec![(1, "StageNameCasing"), (2, "FromAsCasing")]
    );
}

#[test]
fn maintainer_is_deprecated() {
    assert_eq!(
        rules("FROM scratch\nMAINTAINER me\n"),
        vec![(2, "MaintainerDeprecated")]
    );
}

#[test]
fn mixed_instruction_casing() {
    assert_eq!(
        rules("FROM scratch\nCOPY a /a\ncopy b /b\n"),
        vec![(3, "ConsistentInstructionCasing")]
    );
}

#[test]
fn duplicate_and_reserved_stage_names() {
    assert_eq!(
        rules("FROM scratch AS a\nFROM scratch AS a\nFROM scratch AS context\n"),
        vec![(2, "DuplicateStageName"), (3, "ReservedStageName")]
    );
}

#[test]
fn empty_continuation_line() {
    assert_eq!(
        rules("FROM scratch\nCOPY a \\\n\n  /a\n"),
        vec![(3, "NoEmptyContinuation")]
    );
}

#[test]
fn undefined_arg_in_from() {
    // "alpine:" is no valid reference either: BuildKit reports both.
    assert_eq!(
        rules("FROM alpine:$TAG\n"),
        vec![(1, "UndefinedArgInFrom"), (1, "InvalidDefaultArgInFrom")]
    );
    assert_eq!(rules("ARG TAG=3\nFROM alpine:$TAG\n"), vec![]);
    assert_eq!(rules("FROM --platform=$BUILDPLATFORM alpine\n"), vec![]);
}

#[test]
fn relative_workdir_before_any_absolute_one() {
    assert_eq!(
        rules("FROM scratch\nWORKDIR app\nWORKDIR /srv\nWORKDIR sub\n"),
        vec![(2, "WorkdirRelativePath")]
    );
}

#[test]
fn repeated_cmd_in_one_stage() {
    assert_eq!(
        rules("FROM scratch\nCMD [\"a\"]\nCMD [\"b\"]\n"),
        vec![(3, "MultipleInstructionsDisallowed")]
    );
}

#[test]
fn secrets_in_arg_and_env_names() {
    assert_eq!(
        rules("FROM scratch\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x\nARG PUBLIC_KEY\n"),
        vec![(2, "SecretsUsedInArgOrEnv"), (3, "SecretsUsedInArgOrEnv")]
    );
}

#[test]
fn platform_flag_rules() {
    assert_eq!(
        rules("FROM --platform=$TARGETPLATFORM scratch\nFROM --platform=linux/amd64 scratch\n"),
        vec![
            (1, "RedundantTargetPlatform"),
            (2, "FromPlatformFlagConstDisallowed")
        ]
    );
}

#[test]
fn expose_protocol_casing_and_mappings() {
    assert_eq!(
        rules("FROM scratch\nEXPOSE 80/TCP\nEXPOSE 8080:80\n"),
        vec![(2, "ExposeProtoCasing"), (3, "ExposeInvalidFormat")]
    );
}

#[test]
fn invalid_default_arg_in_from() {
    assert_eq!(
        rules("ARG IMAGE\nARG TAG=\"\"\nFROM ${IMAGE}scratch AS ok\nFROM busybox:$TAG\n"),
        vec![(4, "InvalidDefaultArgInFrom")]
    );
}

#[test]
fn copy_of_ignored_file() {
    let ignore = IgnoreRules::parse("secret.txt\n").unwrap();
    assert_eq!(
        rules_with(
            "FROM scratch\nCOPY secret.txt /s\n",
            &BuildOptions::default(),
            Some(&ignore)
        ),
        vec![(2, "CopyIgnoredFile")]
    );
}

#[test]
fn unused_build_arg_is_reported() {
    let options = BuildOptions {
        build_args: [
            ("USED".to_string(), "1".to_string()),
            ("NOPE".to_string(), "2".to_string()),
            ("HTTP_PROXY".to_string(), "p".to_string()),
        ]
        .into(),
        ..BuildOptions::default()
    };
    let dockerfile = Dockerfile::parse("Dockerfile", "FROM scratch\nARG USED\n").unwrap();
    let (warnings, _) = check(&dockerfile, &options, None, &mut |_| None).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.contains("[NOPE]"), "{}", warnings[0]);
}

#[test]
fn check_directive_skips_rules_and_makes_errors() {
    assert_eq!(
        rules("# check=skip=JSONArgsRecommended\nFROM scratch\nCMD x\n"),
        vec![]
    );
    assert_eq!(
        rules("# check=skip=all\nFROM scratch\nCMD x\nMAINTAINER m\n"),
        vec![]
    );
    let dockerfile = Dockerfile::parse("Dockerfile", "# check=error=true\nFROM scratch\n").unwrap();
    let (_, config) = check(&dockerfile, &BuildOptions::default(), None, &mut |_| None).unwrap();
    assert!(config.error);
}

#[test]
fn bad_check_directive_is_an_error_on_its_line() {
    let dockerfile = Dockerfile::parse("Dockerfile", "# check=bogus\nFROM scratch\n").unwrap();
    let error = check(&dockerfile, &BuildOptions::default(), None, &mut |_| None).unwrap_err();
    assert_eq!(error.line(), Some(1));
}

#[test]
fn image_reference_grammar() {
    for valid in [
        "busybox",
        "busybox:1.36",
        "library/busybox",
        "localhost:5000/a/b:tag",
        "Example.COM/x",
        "a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert!(is_valid_reference(valid), "{valid} should be valid");
    }
    for invalid in [
        "",
        "busybox:",
        "Busybox",
        "a//b",
        ":tag",
        "a@sha256:xyz",
        "a b",
        "-a",
    ] {
        assert!(!is_valid_reference(invalid), "{invalid} should be invalid");
    }
}
