use super::*;
use crate::plan::BuildOptions;

/// Dispatches every stage in order from scratch (or its base stage) and returns the last.
fn dispatch_all(source: &str, options: &BuildOptions) -> Result<Vec<DispatchedStage>, Diagnostic> {
    let dockerfile = Dockerfile::parse("Dockerfile", source)?;
    let plan = BuildPlan::new(&dockerfile, options)?;
    let mut done: Vec<DispatchedStage> = Vec::new();
    for stage in &plan.stages {
        let start = match stage.base {
            crate::plan::Base::Stage(index) => done[index].end.clone(),
            _ => StageStart::default(),
        };
        done.push(plan.dispatch(&dockerfile, stage.index, start, options)?);
    }
    Ok(done)
}

fn last(source: &str, options: &BuildOptions) -> DispatchedStage {
    dispatch_all(source, options)
        .unwrap_or_else(|e| panic!("{e}"))
        .pop()
        .expect("a stage")
}

fn env(stage: &DispatchedStage) -> Vec<(String, String)> {
    stage
        .end
        .config
        .env
        .iter()
        .filter(|(k, _)| k != "PATH")
        .cloned()
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn env_words_in_one_instruction_see_the_old_values() {
    let stage = last(
        "FROM scratch\nENV a=1\nENV a=2 b=$a\n",
        &BuildOptions::default(),
    );
    assert_eq!(env(&stage), pairs(&[("a", "2"), ("b", "1")]));
}

#[test]
fn path_defaults_when_the_base_sets_none() {
    let stage = last("FROM scratch\n", &BuildOptions::default());
    assert_eq!(stage.end.config.env, pairs(&[("PATH", DEFAULT_PATH)]));
}

#[test]
fn args_reach_steps_but_never_the_image_config() {
    let options = BuildOptions {
        build_args: [("V".to_string(), "cli".to_string())].into(),
        ..BuildOptions::default()
    };
    let stage = last(
        "FROM scratch\nARG V=default\nARG W=w-$V\nRUN true\n",
        &options,
    );
    assert_eq!(env(&stage), vec![]);
    let run = &stage.steps[0];
    assert_eq!(run.args, pairs(&[("V", "cli"), ("W", "w-cli")]));
    assert!(run.env.contains(&("W".to_string(), "w-cli".to_string())));
}

#[test]
fn arg_without_default_inherits_the_global_value() {
    let stage = last(
        "ARG G=global\nFROM scratch\nARG G\nARG TARGETOS\nWORKDIR /$G/$TARGETOS\n",
        &BuildOptions::default(),
    );
    assert_eq!(stage.end.config.working_dir, "/global/linux");
}

#[test]
fn global_args_are_invisible_in_a_stage_until_declared() {
    let stages = dispatch_all(
        "ARG G=global\nFROM scratch\nWORKDIR /x$G\n",
        &BuildOptions::default(),
    )
    .unwrap();
    assert_eq!(stages[0].end.config.working_dir, "/x");
}

#[test]
fn later_arg_or_env_of_the_same_name_wins() {
    let stage = last(
        "FROM scratch\nARG A=arg\nENV A=env\nWORKDIR /$A\n",
        &BuildOptions::default(),
    );
    assert_eq!(stage.end.config.working_dir, "/env");
}

#[test]
fn stage_based_on_a_stage_inherits_env_and_args() {
    let stage = last(
        "FROM scratch AS base\nENV E=1\nARG A=2\nFROM base\nWORKDIR /$E/$A\n",
        &BuildOptions::default(),
    );
    assert_eq!(stage.end.config.working_dir, "/1/2");
}

#[test]
fn relative_workdir_resolves_against_the_current_one() {
    let stage = last(
        "FROM scratch\nWORKDIR /a\nWORKDIR b/../c\n",
        &BuildOptions::default(),
    );
    assert_eq!(stage.end.config.working_dir, "/a/c");
}

#[test]
fn entrypoint_resets_an_inherited_cmd_but_not_one_set_in_the_stage() {
    let inherited = last(
        "FROM scratch AS base\nCMD [\"x\"]\nFROM base\nENTRYPOINT [\"e\"]\n",
        &BuildOptions::default(),
    );
    assert_eq!(inherited.end.config.cmd, None);
    let own = last(
        "FROM scratch\nCMD [\"x\"]\nENTRYPOINT [\"e\"]\n",
        &BuildOptions::default(),
    );
    assert_eq!(own.end.config.cmd, Some(vec!["x".to_string()]));
}

#[test]
fn shell_form_cmd_uses_the_stage_shell() {
    let stage = last(
        "FROM scratch\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo hi\n",
        &BuildOptions::default(),
    );
    assert_eq!(
        stage.end.config.cmd,
        Some(vec!["/bin/bash".into(), "-c".into(), "echo hi".into()])
    );
}

#[test]
fn onbuild_triggers_are_recorded() {
    let stage = last(
        "FROM scratch\nONBUILD RUN echo hi\n",
        &BuildOptions::default(),
    );
    assert_eq!(stage.end.config.on_build, vec!["RUN echo hi".to_string()]);
}

#[test]
fn steps_snapshot_user_workdir_and_shell() {
    let stage = last(
        "FROM scratch\nUSER 1000\nWORKDIR /w\nRUN a\nUSER root\nCOPY x y\n",
        &BuildOptions::default(),
    );
    assert_eq!(stage.steps.len(), 3);
    assert_eq!(
        (
            stage.steps[1].user.as_str(),
            stage.steps[1].working_dir.as_str()
        ),
        ("1000", "/w")
    );
    assert_eq!(stage.steps[2].user, "root");
}

#[test]
fn proxy_build_args_reach_run_without_declaration() {
    let options = BuildOptions {
        build_args: [("HTTPS_PROXY".to_string(), "p".to_string())].into(),
        ..BuildOptions::default()
    };
    let stage = last("FROM scratch\nRUN true\n", &options);
    assert!(
        stage.steps[0]
            .env
            .contains(&("HTTPS_PROXY".to_string(), "p".to_string()))
    );
    assert!(stage.steps[0].args.is_empty());
}

#[test]
fn history_marks_which_instructions_made_layers() {
    let stage = last(
        "FROM scratch\nENV A=1\nRUN true\nARG B\n",
        &BuildOptions::default(),
    );
    assert_eq!(
        stage.history,
        vec![
            ("ENV A=1".to_string(), false),
            ("RUN /bin/sh -c true # buildkit".to_string(), true),
            ("ARG B".to_string(), false)
        ]
    );
}

/// The texts BuildKit's commitToHistory writes, checked against Docker 20.10's BuildKit for
/// the RUN, WORKDIR, ENV, LABEL, USER, VOLUME, SHELL, STOPSIGNAL, CMD and ENTRYPOINT forms.
#[test]
fn history_records_instructions_as_buildkit_writes_them() {
    let options = BuildOptions {
        build_args: [("B1".to_string(), "given".to_string())].into(),
        ..BuildOptions::default()
    };
    let stage = last(
        "FROM scratch\nARG B1\nARG A1=one\nENV E1=env E2=\"two words\"\n\
         LABEL l1=v1 \"l2\"=\"v 2\"\nWORKDIR rel/dir\nENV A1=from-env\nRUN echo hi\n\
         RUN [\"/bin/echo\", \"x\"]\n\
         COPY --chown=1:2 --chmod=644 --link f ./g\nCOPY --from=base --parents a/b <<EOF /p/\nx\nEOF\n\
         USER bob\nVOLUME /v1 /v2\nSHELL [\"/bin/sh\", \"-ec\"]\nSTOPSIGNAL SIGTERM\n\
         ONBUILD RUN true\nCMD echo \"a b\"\nENTRYPOINT [\"/bin/echo\", \"x\"]\n",
        &options,
    );
    let history: Vec<&str> = stage
        .history
        .iter()
        .map(|(text, _)| text.as_str())
        .collect();
    assert_eq!(
        history,
        [
            "ARG B1=given",
            "ARG A1=one",
            "ENV E1=env E2=two words",
            "LABEL l1=v1 l2=v 2",
            "WORKDIR /rel/dir",
            "ENV A1=from-env",
            "RUN |2 B1=given A1=from-env /bin/sh -c echo hi # buildkit",
            "RUN |2 B1=given A1=from-env /bin/echo x # buildkit",
            "COPY --chown=1:2 --chmod=644 f ./g # buildkit",
            "COPY --parents a/b <<EOF /p/ # buildkit",
            "USER bob",
            "VOLUME [/v1 /v2]",
            "SHELL [/bin/sh -ec]",
            "STOPSIGNAL SIGTERM",
            r#"CMD ["/bin/sh" "-ec" "echo \"a b\""]"#,
            r#"ENTRYPOINT ["/bin/echo" "x"]"#,
        ]
    );
}

#[test]
fn expansion_error_names_the_line() {
    let error = dispatch_all(
        "FROM scratch\nWORKDIR ${A:?must be set}\n",
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert_eq!(error.line(), Some(2));
}

#[test]
fn base_image_triggers_run_first_and_forbidden_ones_name_the_from_line() {
    let dockerfile = Dockerfile::parse("Dockerfile", "FROM base\nRUN own\n").unwrap();
    let options = BuildOptions::default();
    let plan = BuildPlan::new(&dockerfile, &options).unwrap();
    let start = |triggers: &[&str]| {
        StageStart::from_image(ImageConfig {
            on_build: triggers.iter().map(|t| t.to_string()).collect(),
            ..ImageConfig::default()
        })
    };
    let stage = plan
        .dispatch(
            &dockerfile,
            0,
            start(&["RUN first", "WORKDIR /w"]),
            &options,
        )
        .unwrap();
    let codes: Vec<&str> = stage
        .steps
        .iter()
        .map(|step| step.instruction.origin().code.as_str())
        .collect();
    assert_eq!(codes, ["RUN first", "WORKDIR /w", "RUN own"]);
    assert_eq!(stage.steps[2].working_dir, "/w");
    assert!(stage.end.config.on_build.is_empty());
    for forbidden in ["FROM other", "MAINTAINER me", "ONBUILD RUN x"] {
        let error = plan
            .dispatch(&dockerfile, 0, start(&[forbidden]), &options)
            .unwrap_err();
        assert!(error.message.contains("ONBUILD trigger"), "{error}");
        assert_eq!(error.span.map(|span| span.start.line), Some(1), "{error}");
    }
}
