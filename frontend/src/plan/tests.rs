use super::*;

fn plan(source: &str, options: &BuildOptions) -> Result<BuildPlan, Diagnostic> {
    let dockerfile = Dockerfile::parse("Dockerfile", source)?;
    BuildPlan::new(&dockerfile, options)
}

fn target(name: &str) -> BuildOptions {
    BuildOptions {
        target: Some(name.to_string()),
        ..BuildOptions::default()
    }
}

fn with_args(args: &[(&str, &str)]) -> BuildOptions {
    BuildOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..BuildOptions::default()
    }
}

const MULTISTAGE: &str = "\
FROM scratch AS a
FROM scratch AS b
FROM a AS c
COPY --from=b /x /x
FROM scratch AS unused
FROM c
";

#[test]
fn target_pruning_keeps_only_what_the_target_needs() {
    let full = plan(MULTISTAGE, &BuildOptions::default()).unwrap();
    assert_eq!(full.target, 4);
    assert_eq!(full.needed, vec![0, 1, 2, 4]);
    let only_b = plan(MULTISTAGE, &target("B")).unwrap();
    assert_eq!(only_b.needed, vec![1], "target names are case-insensitive");
}

#[test]
fn stages_resolve_by_name_index_scratch_or_image() {
    let plan = plan(
        "FROM scratch AS a\nFROM a\nCOPY --from=0 / /\nCOPY --from=busybox:1 / /\nFROM A\n",
        &BuildOptions::default(),
    )
    .unwrap();
    assert_eq!(plan.stages[0].base, Base::Scratch);
    assert_eq!(plan.stages[1].base, Base::Stage(0));
    assert_eq!(
        plan.stages[2].base,
        Base::Image("A".into()),
        "FROM matches stage names exactly, as BuildKit"
    );
    let references: Vec<_> = plan.stages[1].references.iter().cloned().collect();
    assert_eq!(
        references,
        vec![Reference::Stage(0), Reference::Image("busybox:1".into())]
    );
}

#[test]
fn run_mount_from_is_a_reference() {
    let plan = plan(
        "FROM scratch AS a\nFROM scratch\nRUN --mount=from=a,target=/m true\n",
        &BuildOptions::default(),
    )
    .unwrap();
    assert!(plan.stages[1].references.contains(&Reference::Stage(0)));
    assert_eq!(plan.needed, vec![0, 1]);
}

#[test]
fn unknown_target_is_an_error_listing_stages() {
    let error = plan(MULTISTAGE, &target("nope")).unwrap_err();
    assert!(
        error.message.contains("\"nope\" could not be found"),
        "{error}"
    );
    assert!(
        error
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("a, b, c, unused")
    );
}

#[test]
fn invalid_stage_index_is_an_error_on_its_line() {
    let error = plan(
        "FROM scratch\nCOPY --from=3 / /\n",
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(error.message.contains("invalid stage index 3"), "{error}");
    assert_eq!(error.line(), Some(2));
}

#[test]
fn copy_from_itself_is_a_cycle() {
    let error = plan(
        "FROM scratch AS a\nCOPY --from=a / /\n",
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(error.message.contains("circular dependency"), "{error}");
}

#[test]
fn copy_from_a_later_stage_is_rejected() {
    let error = plan(
        "FROM scratch AS a\nCOPY --from=b / /\nFROM scratch AS b\nCOPY --from=a / /\n",
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(
        error.message.contains("needs to be defined before"),
        "{error}"
    );
    assert_eq!(error.line(), Some(2));
}

#[test]
fn global_args_expand_from_and_build_args_override() {
    let source = "ARG TAG=1.0\nARG IMAGE=alpine:$TAG\nFROM $IMAGE\n";
    let plan_default = plan(source, &BuildOptions::default()).unwrap();
    assert_eq!(
        plan_default.stages[0].base,
        Base::Image("alpine:1.0".into())
    );
    let plan_override = plan(source, &with_args(&[("TAG", "2.0")])).unwrap();
    assert_eq!(
        plan_override.stages[0].base,
        Base::Image("alpine:2.0".into())
    );
}

#[test]
fn predefined_platform_args_are_in_global_scope() {
    let plan = plan(
        "FROM --platform=$BUILDPLATFORM alpine:$TARGETARCH\n",
        &BuildOptions::default(),
    )
    .unwrap();
    let host = Platform::host();
    assert_eq!(
        plan.stages[0].base,
        Base::Image(format!("alpine:{}", host.architecture))
    );
    assert_eq!(
        plan.global_arg("TARGETPLATFORM"),
        Some(host.to_string().as_str())
    );
    assert_eq!(plan.global_arg("TARGETSTAGE"), Some("stage-0"));
}

#[test]
fn blank_base_name_is_an_error_with_a_hint() {
    let error = plan("ARG IMAGE\nFROM $IMAGE\n", &BuildOptions::default()).unwrap_err();
    assert!(error.message.contains("should not be blank"), "{error}");
    assert_eq!(error.line(), Some(2));
}

#[test]
fn from_platform_flag_is_expanded_and_validated() {
    let plan_ok = plan(
        "ARG P=linux/arm64\nFROM --platform=$P scratch\n",
        &BuildOptions::default(),
    )
    .unwrap();
    assert_eq!(plan_ok.stages[0].platform.to_string(), "linux/arm64");
    let error = plan(
        "FROM --platform=not/a/valid/one scratch\n",
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(
        error.message.contains("failed to parse platform"),
        "{error}"
    );
}

#[test]
fn instructions_before_from_other_than_arg_are_rejected() {
    let error = Dockerfile::parse("Dockerfile", "ARG A\nRUN true\nFROM scratch\n").unwrap_err();
    assert!(error.message.contains("before the first FROM"), "{error}");
    assert_eq!(error.line(), Some(2));
}

#[test]
fn unused_build_args_are_warned_but_proxies_and_builtins_are_not() {
    let options = with_args(&[
        ("A", "1"),
        ("UNUSED", "2"),
        ("http_proxy", "x"),
        ("SOURCE_DATE_EPOCH", "0"),
    ]);
    let plan = plan(
        "FROM scratch AS other\nARG OTHER\nFROM scratch\nARG A\n",
        &options,
    )
    .unwrap();
    assert_eq!(plan.warnings.len(), 1);
    assert!(
        plan.warnings[0].message.contains("[UNUSED]"),
        "{}",
        plan.warnings[0]
    );
}

#[test]
fn build_arg_used_only_by_a_pruned_stage_is_unused() {
    let options = BuildOptions {
        target: Some("b".into()),
        ..with_args(&[("ONLY_A", "1")])
    };
    let plan = plan(
        "FROM scratch AS a\nARG ONLY_A\nFROM scratch AS b\n",
        &options,
    )
    .unwrap();
    assert_eq!(plan.warnings.len(), 1);
}

#[test]
fn arg_names_cover_global_and_stage_args() {
    let dockerfile = Dockerfile::parse(
        "Dockerfile",
        "ARG BASE=scratch\nFROM $BASE\nARG VERSION=1 DEBUG\nRUN true\n",
    )
    .unwrap();
    assert_eq!(
        dockerfile.arg_names().into_iter().collect::<Vec<_>>(),
        ["BASE", "DEBUG", "VERSION"]
    );
}
