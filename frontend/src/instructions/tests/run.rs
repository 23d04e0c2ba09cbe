//! RUN: command forms, heredocs (BuildKit's `TestRunHeredoc`), `--network`, `--security`, and
//! `--mount` in both passes (BuildKit's run-mount rules and messages).

use super::*;

fn run(source: &str) -> RunInstruction {
    match instruction(source) {
        Instruction::Run(run) => run,
        other => panic!("not a RUN: {other:?}"),
    }
}

/// The mount of `RUN --mount=<spec> true`, expanded with `vars`.
fn resolved_mount(spec: &str, vars: &[(&str, &str)]) -> Result<Mount, Diagnostic> {
    let mut run = run(&format!("RUN --mount={spec} true"));
    run.expand(&mut expander(vars))?;
    Ok(run.resolved_mounts().next().expect("one mount").clone())
}

fn mount_error(spec: &str) -> Diagnostic {
    resolved_mount(spec, &[]).expect_err(spec)
}

#[test]
fn shell_and_exec_forms() {
    let shell = run("RUN echo hi");
    assert_eq!(shell.command.args, ["echo hi"]);
    assert_eq!(shell.command.form, CommandForm::Shell);
    assert!(shell.command.prepends_shell());

    let exec = run(r#"RUN ["ls", "/"]"#);
    assert_eq!(exec.command.args, ["ls", "/"]);
    assert_eq!(exec.command.form, CommandForm::Exec);
    assert!(!exec.command.prepends_shell());

    // BuildKit keeps an empty shell-form command as one empty word.
    assert_eq!(run("RUN").command.args, [""]);
}

/// An inline file as (name, data, chomp).
type FileSummary<'a> = (&'a str, &'a str, bool);

#[test]
fn heredoc_bodies_become_inline_files() {
    let cases: [(&str, &[&str], &[FileSummary<'_>]); 5] = [
        (r#"RUN ["<<EOF"]"#, &["<<EOF"], &[]),
        (
            "RUN <<EOF\nls /\nwhoami\nEOF",
            &["<<EOF"],
            &[("EOF", "ls /\nwhoami\n", false)],
        ),
        (
            "RUN <<'EOF' | python\nprint(\"hello\")\nprint(\"world\")\nEOF",
            &["<<'EOF' | python"],
            &[("EOF", "print(\"hello\")\nprint(\"world\")\n", false)],
        ),
        (
            "RUN <<-EOF\n\techo test\nEOF",
            &["<<-EOF"],
            &[("EOF", "\techo test\n", true)],
        ),
        (
            "RUN <<A cat - <<B\na\nA\nb\nB",
            &["<<A cat - <<B"],
            &[("A", "a\n", false), ("B", "b\n", false)],
        ),
    ];
    for (source, args, files) in cases {
        let run = run(source);
        assert_eq!(run.command.args, args, "{source}");
        let actual: Vec<FileSummary<'_>> = run
            .command
            .files
            .iter()
            .map(|file| (file.name.as_str(), file.data.as_str(), file.chomp))
            .collect();
        assert_eq!(actual, files, "{source}");
    }
}

#[test]
fn flags_used_lists_the_given_flags() {
    assert_eq!(
        run("RUN --mount=type=tmpfs,target=/foo/ echo hello").flags_used,
        ["mount"]
    );
    assert_eq!(
        run("RUN --network=none --mount=type=tmpfs,target=/a --mount=type=tmpfs,target=/b x")
            .flags_used,
        ["network", "mount"]
    );
}

#[test]
fn network_modes() {
    assert_eq!(run("RUN x").network, NetworkMode::Default);
    assert_eq!(run("RUN --network=none x").network, NetworkMode::None);
    assert_eq!(run("RUN --network=host x").network, NetworkMode::Host);
    assert_eq!(run("RUN --network=default x").network, NetworkMode::Default);
    assert_eq!(
        rejection("RUN --network=bridge x").message,
        "invalid network mode \"bridge\""
    );
    assert_eq!(
        rejection("RUN --network= x").message,
        "invalid network mode \"\""
    );
}

#[test]
fn security_modes() {
    assert_eq!(run("RUN x").security, SecurityMode::Sandbox);
    assert_eq!(
        run("RUN --security=insecure x").security,
        SecurityMode::Insecure
    );
    let error = rejection("RUN --security=privileged x");
    assert_eq!(error.message, "security \"privileged\" is not valid");
    assert_eq!(error.span, Some(Span::at(1, 5, 21)));
}

#[test]
fn mounts_keep_their_spec_and_from_until_expansion() {
    let run = run(
        "RUN --mount=type=bind,from=builder,source=/out,target=/in --mount=type=cache,target=/c make",
    );
    assert_eq!(run.mounts.len(), 2);
    assert_eq!(
        run.mounts[0].spec,
        "type=bind,from=builder,source=/out,target=/in"
    );
    assert_eq!(run.mounts[0].from.as_deref(), Some("builder"));
    assert_eq!(run.mounts[1].from, None);
    assert!(run.mounts.iter().all(|mount| mount.resolved.is_none()));
    assert_eq!(run.mounts[1].span, Span::at(1, 59, 28));
}

#[test]
fn mount_from_may_not_use_variables() {
    for spec in ["from=$STAGE", "from=${STAGE}", "from=a$b"] {
        let error = rejection(&format!("RUN --mount={spec} x"));
        assert_eq!(
            error.message, "'from' doesn't support variable expansion, define alias stage instead",
            "{spec}"
        );
        assert_eq!(error.span, Some(Span::at(1, 5, 8 + spec.len())));
    }
    // A `$` at the end cannot start a variable.
    assert_eq!(
        run("RUN --mount=from=a$ x").mounts[0].from.as_deref(),
        Some("a$")
    );
    assert_eq!(
        run("RUN --mount=FROM=x x").mounts[0].from.as_deref(),
        Some("x")
    );
}

#[test]
fn mount_csv_errors_surface_at_parse_time() {
    let error = rejection(r#"RUN --mount=type=bind,target=a\"b x"#);
    assert!(
        error.message.starts_with("failed to parse csv mounts: "),
        "{error}"
    );
    assert!(
        error.message.ends_with("bare \" in non-quoted-field"),
        "{error}"
    );
}

#[test]
fn other_mount_options_are_only_checked_when_expanded() {
    let mut run = run("RUN --mount=type=nope,bogus x");
    assert!(run.mounts[0].resolved.is_none());
    let error = run.expand(&mut expander(&[])).unwrap_err();
    assert_eq!(error.message, "unsupported mount type \"nope\"");
    assert_eq!(error.span, Some(Span::at(1, 5, 23)));
}

#[test]
fn mount_defaults_are_bind_and_read_only() {
    let mount = resolved_mount("target=/src", &[]).unwrap();
    assert_eq!(mount.kind, MountType::Bind);
    assert_eq!(mount.target, "/src");
    assert!(mount.read_only);
    assert_eq!(
        mount,
        Mount {
            target: "/src".into(),
            read_only: true,
            ..Mount::default()
        }
    );
}

#[test]
fn cache_and_tmpfs_mounts_are_writable_by_default() {
    assert!(
        !resolved_mount("type=cache,target=/c", &[])
            .unwrap()
            .read_only
    );
    assert!(
        !resolved_mount("type=tmpfs,target=/t", &[])
            .unwrap()
            .read_only
    );
    assert!(
        resolved_mount("type=cache,target=/c,ro", &[])
            .unwrap()
            .read_only
    );
    assert!(
        !resolved_mount("type=bind,target=/b,rw", &[])
            .unwrap()
            .read_only
    );
    assert!(
        !resolved_mount("type=bind,target=/b,readwrite=true", &[])
            .unwrap()
            .read_only
    );
    assert!(
        resolved_mount("type=cache,target=/c,readonly=1", &[])
            .unwrap()
            .read_only
    );
    assert!(
        !resolved_mount("type=bind,target=/b,ro=false", &[])
            .unwrap()
            .read_only
    );
    assert_eq!(
        mount_error("type=bind,ro=maybe").message,
        "invalid value for ro: maybe"
    );
}

#[test]
fn every_mount_option_is_read() {
    let mount = resolved_mount(
        "type=cache,id=go-build,target=/root/.cache,sharing=locked,mode=0750,uid=1000,gid=1001,from=base,source=/cache",
        &[],
    )
    .unwrap();
    assert_eq!(
        mount,
        Mount {
            kind: MountType::Cache,
            from: "base".into(),
            source: "/cache".into(),
            target: "/root/.cache".into(),
            cache_id: "go-build".into(),
            sharing: Some(CacheSharing::Locked),
            mode: Some(0o750),
            uid: Some(1000),
            gid: Some(1001),
            ..Mount::default()
        }
    );
    let aliases = resolved_mount("TYPE=Bind,src=/a,dst=/b", &[]).unwrap();
    assert_eq!(
        (
            aliases.kind,
            aliases.source.as_str(),
            aliases.target.as_str()
        ),
        (MountType::Bind, "/a", "/b")
    );
    assert_eq!(resolved_mount("destination=/d", &[]).unwrap().target, "/d");
}

#[test]
fn secret_and_ssh_mounts() {
    let secret = resolved_mount("type=secret,id=token,env=TOKEN,required", &[]).unwrap();
    assert_eq!(secret.kind, MountType::Secret);
    assert_eq!(secret.cache_id, "token");
    assert_eq!(secret.env.as_deref(), Some("TOKEN"));
    assert!(secret.required);
    assert!(secret.read_only);
    assert!(
        !resolved_mount("type=ssh,required=false", &[])
            .unwrap()
            .required
    );
    assert!(
        resolved_mount("type=ssh,required=true", &[])
            .unwrap()
            .required
    );
    assert_eq!(
        resolved_mount("type=secret,target=/run/s", &[])
            .unwrap()
            .target,
        "/run/s"
    );
}

#[test]
fn mount_type_rules() {
    for (spec, message) in [
        (
            "required",
            "unexpected key 'required' for mount type 'bind'",
        ),
        (
            "required=true,type=secret,id=a",
            "unexpected key 'required' for mount type 'bind'",
        ),
        (
            "type=cache,size=1m",
            "unexpected key 'size' for mount type 'cache'",
        ),
        (
            "type=bind,mode=0700",
            "mode not allowed for \"bind\" type mounts",
        ),
        (
            "type=tmpfs,uid=1",
            "uid not allowed for \"tmpfs\" type mounts",
        ),
        (
            "type=bind,gid=1",
            "gid not allowed for \"bind\" type mounts",
        ),
        (
            "type=secret,id=a,from=x",
            "secret mount should not have a from",
        ),
        (
            "type=secret,id=a,sharing=shared",
            "secret mount should not define sharing",
        ),
        (
            "type=secret",
            "invalid secret mount. one of source, target required",
        ),
        (
            "type=secret,source=a,id=b",
            "both source and id can't be set",
        ),
        (
            "type=bind,sharing=private",
            "invalid cache sharing set for bind mount",
        ),
        (
            "type=cache,sharing=exclusive",
            "unsupported sharing value \"exclusive\"",
        ),
        ("type=cache,mode=999", "invalid value 999 for mode"),
        ("type=cache,uid=-1", "invalid value -1 for uid"),
        ("type=cache,gid=x", "invalid value x for gid"),
        ("type=tmpfs,size=lots", "invalid value for size: lots"),
        ("target", "invalid field 'target' must be a key=value pair"),
        ("type=bnd", "unsupported mount type \"bnd\""),
        (
            "type=cache,tagret=/x",
            "unexpected key 'tagret' in 'tagret=/x'",
        ),
        (
            "bind-propagation=rshared",
            "unexpected key 'bind-propagation' in 'bind-propagation=rshared'",
        ),
    ] {
        assert_eq!(mount_error(spec).message, message, "{spec}");
    }
}

#[test]
fn mount_errors_suggest_near_misses() {
    assert_eq!(
        mount_error("type=bnd").hint.as_deref(),
        Some("did you mean bind?")
    );
    assert_eq!(
        mount_error("type=cache,tagret=/x").hint.as_deref(),
        Some("did you mean target?")
    );
    assert_eq!(
        mount_error("type=cache,sharing=lockd").hint.as_deref(),
        Some("did you mean locked?")
    );
}

#[test]
fn tmpfs_size_in_go_units() {
    assert_eq!(
        resolved_mount("type=tmpfs,target=/t,size=64m", &[])
            .unwrap()
            .size_limit,
        64 << 20
    );
    assert_eq!(
        resolved_mount("type=tmpfs,target=/t,size=1.5g", &[])
            .unwrap()
            .size_limit,
        3 << 29
    );
    assert_eq!(
        resolved_mount("type=tmpfs,target=/t,size=4096", &[])
            .unwrap()
            .size_limit,
        4096
    );
}

#[test]
fn mount_values_are_expanded_before_they_are_read() {
    let mount = resolved_mount(
        "type=$KIND,target=${HOME}/.cache,id=$ID,sharing=$SHARING,uid=$UID",
        &[
            ("KIND", "cache"),
            ("HOME", "/root"),
            ("ID", "pip"),
            ("SHARING", "private"),
            ("UID", "42"),
        ],
    )
    .unwrap();
    assert_eq!(mount.kind, MountType::Cache);
    assert_eq!(mount.target, "/root/.cache");
    assert_eq!(mount.cache_id, "pip");
    assert_eq!(mount.sharing, Some(CacheSharing::Private));
    assert_eq!(mount.uid, Some(42));
}

#[test]
fn mount_expansion_errors_point_at_the_mount() {
    let mut run = run("RUN --mount=type=cache,target=${FAIL} x");
    let error = run.expand(&mut expander(&[])).unwrap_err();
    assert_eq!(error.message, "FAIL is not set");
    assert_eq!(error.span, Some(Span::at(1, 5, 33)));
}
