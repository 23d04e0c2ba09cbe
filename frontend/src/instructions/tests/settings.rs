//! ENV, LABEL, ARG, EXPOSE, VOLUME, USER, WORKDIR, STOPSIGNAL, MAINTAINER, ONBUILD, SHELL, CMD
//! and ENTRYPOINT.

use super::*;

fn pairs(values: &[KeyValue]) -> Vec<(&str, &str, bool)> {
    values
        .iter()
        .map(|pair| (pair.key.as_str(), pair.value.as_str(), pair.legacy_form))
        .collect()
}

#[test]
fn env_in_both_forms() {
    let Instruction::Env(env) = instruction("ENV A=1 B=\"two words\"") else {
        panic!()
    };
    // Quotes stay until expansion, as in BuildKit.
    assert_eq!(
        pairs(&env.vars),
        [("A", "1", false), ("B", "\"two words\"", false)]
    );
    let Instruction::Env(legacy) = instruction("ENV PATH /usr/bin:/bin") else {
        panic!()
    };
    assert_eq!(pairs(&legacy.vars), [("PATH", "/usr/bin:/bin", true)]);
}

#[test]
fn env_and_label_expand_names_and_values() {
    let Instruction::Env(env) =
        expand(instruction("ENV ${K}=$V"), &[("K", "key"), ("V", "value")]).unwrap()
    else {
        panic!()
    };
    assert_eq!(pairs(&env.vars), [("key", "value", false)]);
    let Instruction::Label(label) =
        expand(instruction("LABEL version=$V"), &[("V", "1.0")]).unwrap()
    else {
        panic!()
    };
    assert_eq!(pairs(&label.labels), [("version", "1.0", false)]);
}

#[test]
fn arg_defines_several_names_with_optional_defaults() {
    let Instruction::Arg(arg) = instruction("ARG a b=c d= e=f=g") else {
        panic!()
    };
    let defined: Vec<(&str, Option<&str>)> = arg
        .args
        .iter()
        .map(|arg| (arg.name.as_str(), arg.default.as_deref()))
        .collect();
    assert_eq!(
        defined,
        [
            ("a", None),
            ("b", Some("c")),
            ("d", Some("")),
            ("e", Some("f=g"))
        ]
    );
    assert_eq!(rejection("ARG =x").message, "ARG names can not be blank");
}

#[test]
fn arg_doc_comments() {
    // BuildKit's TestCommentsDetection.
    let Instruction::Arg(arg) =
        instruction("# bar defines bar\n# baz is something else\nARG bar baz=123\n")
    else {
        panic!()
    };
    assert_eq!(arg.args[0].doc_comment.as_deref(), Some("defines bar"));
    assert_eq!(
        arg.args[1].doc_comment.as_deref(),
        Some("is something else")
    );
    let Instruction::Arg(arg) = instruction("# this is irrelevant\nARG foo\n") else {
        panic!()
    };
    assert_eq!(arg.args[0].doc_comment, None);
}

#[test]
fn arg_expand_covers_names_and_defaults() {
    let Instruction::Arg(arg) = expand(instruction("ARG V=${BASE}-1"), &[("BASE", "v2")]).unwrap()
    else {
        panic!()
    };
    assert_eq!(arg.args[0].default.as_deref(), Some("v2-1"));
}

#[test]
fn expose_keeps_ports_sorted_and_unexpanded() {
    let Instruction::Expose(expose) = expand(
        instruction("EXPOSE 8080/tcp 53/udp $PORTS"),
        &[("PORTS", "1 2")],
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(expose.ports, ["$PORTS", "53/udp", "8080/tcp"]);
}

#[test]
fn volume_in_both_forms_rejects_empty_paths() {
    let Instruction::Volume(volume) = instruction("VOLUME /a /b") else {
        panic!()
    };
    assert_eq!(volume.volumes, ["/a", "/b"]);
    let Instruction::Volume(volume) = instruction(r#"VOLUME [" /data ", "/logs"]"#) else {
        panic!()
    };
    assert_eq!(volume.volumes, ["/data", "/logs"]);
    assert_eq!(
        rejection(r#"VOLUME ["/a", " "]"#).message,
        "VOLUME specified can not be an empty string"
    );
    let Instruction::Volume(volume) =
        expand(instruction("VOLUME $DIR"), &[("DIR", "/cache")]).unwrap()
    else {
        panic!()
    };
    assert_eq!(volume.volumes, ["/cache"]);
}

#[test]
fn single_value_instructions_expand_their_value() {
    let vars = [("U", "app"), ("D", "/srv"), ("S", "SIGINT")];
    let Instruction::User(user) = expand(instruction("USER ${U}:staff"), &vars).unwrap() else {
        panic!()
    };
    assert_eq!(user.user, "app:staff");
    let Instruction::Workdir(workdir) = expand(instruction("WORKDIR $D/app"), &vars).unwrap()
    else {
        panic!()
    };
    assert_eq!(workdir.path, "/srv/app");
    let Instruction::StopSignal(signal) = expand(instruction("STOPSIGNAL $S"), &vars).unwrap()
    else {
        panic!()
    };
    assert_eq!(signal.signal, "SIGINT");
    let Instruction::Maintainer(maintainer) =
        expand(instruction("MAINTAINER $U <a@b.c>"), &vars).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        maintainer.maintainer, "$U <a@b.c>",
        "MAINTAINER is not expanded"
    );
}

#[test]
fn onbuild_records_the_trigger_expression() {
    let Instruction::Onbuild(onbuild) = instruction("onbuild   RUN echo $HOME") else {
        panic!()
    };
    assert_eq!(onbuild.trigger, "RUN");
    assert_eq!(onbuild.expression, "RUN echo $HOME");

    let Instruction::Onbuild(onbuild) = instruction("ONBUILD COPY <<EOF /x\nhello\nEOF") else {
        panic!()
    };
    assert_eq!(onbuild.expression, "COPY <<EOF /x\nhello\nEOF");
    // The trigger is not validated until it fires, as in BuildKit.
    assert!(matches!(
        instruction("ONBUILD RUN --bogus x"),
        Instruction::Onbuild(_)
    ));
    assert_eq!(
        rejection("ONBUILD --bogus RUN x").message,
        "unknown flag: --bogus"
    );
    assert_eq!(rejection("ONBUILD FROM x").span, Some(Span::at(1, 9, 4)));
}

#[test]
fn shell_requires_a_json_array() {
    let Instruction::Shell(shell) = instruction(r#"SHELL ["powershell", "-command"]"#) else {
        panic!()
    };
    assert_eq!(shell.shell, ["powershell", "-command"]);
    assert_eq!(
        rejection("SHELL powershell -command").message,
        "SHELL requires the arguments to be in JSON form"
    );
    assert_eq!(
        rejection("SHELL []").message,
        "SHELL requires at least one argument"
    );
}

#[test]
fn cmd_and_entrypoint_keep_their_form_and_are_not_expanded() {
    let Instruction::Cmd(cmd) =
        expand(instruction("CMD echo $HOME"), &[("HOME", "/root")]).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (cmd.command.args.as_slice(), cmd.command.form),
        (&["echo $HOME".to_string()][..], CommandForm::Shell)
    );
    let Instruction::Cmd(cmd) = instruction("CMD []") else {
        panic!()
    };
    assert_eq!(
        (cmd.command.args.len(), cmd.command.form),
        (0, CommandForm::Exec)
    );
    let Instruction::Entrypoint(entrypoint) = instruction(r#"ENTRYPOINT ["/bin/app", "--serve"]"#)
    else {
        panic!()
    };
    assert_eq!(entrypoint.command.args, ["/bin/app", "--serve"]);
    assert_eq!(entrypoint.command.form, CommandForm::Exec);
}
