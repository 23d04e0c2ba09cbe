use super::*;
use imgb_builder::graph::Vertex;

fn lowered(source: &str, options: &BuildOptions) -> Lowered {
    let dockerfile = Dockerfile::parse("Dockerfile", source).unwrap_or_else(|e| panic!("{e}"));
    let plan = BuildPlan::new(&dockerfile, options).unwrap_or_else(|e| panic!("{e}"));
    let mut resolve = |reference: &str, _: &Platform| {
        Ok(ImageConfig {
            env: vec![("FROM_IMAGE".into(), reference.into())],
            ..ImageConfig::default()
        })
    };
    lower(&dockerfile, &plan, options, &mut resolve).unwrap_or_else(|e| panic!("{e}"))
}

fn target_vertex(lowered: &Lowered) -> &Vertex {
    lowered.graph.vertex(lowered.target_stage().root)
}

fn exec(vertex: &Vertex) -> &ExecOp {
    match &vertex.op {
        Op::Exec(exec) => exec,
        other => panic!("expected an exec, got {other:?}"),
    }
}

fn file_actions(vertex: &Vertex) -> &[FileAction] {
    match &vertex.op {
        Op::File { actions } => actions,
        other => panic!("expected a file op, got {other:?}"),
    }
}

#[test]
fn shell_form_run_goes_through_the_stage_shell_with_its_env_and_workdir() {
    let lowered = lowered(
        "FROM scratch\nWORKDIR /app\nENV A=1\nRUN make all\n",
        &BuildOptions::default(),
    );
    let run = exec(target_vertex(&lowered));
    assert_eq!(run.argv, vec!["/bin/sh", "-c", "make all"]);
    assert_eq!(run.cwd, "/app");
    assert!(run.env.contains(&"A=1".to_string()));
    assert_eq!(target_vertex(&lowered).name, "[stage-0 2/2] RUN make all");
}

#[test]
fn exec_form_run_is_used_as_is() {
    let lowered = lowered(
        "FROM scratch\nSHELL [\"/bin/bash\", \"-c\"]\nRUN [\"/bin/true\", \"x\"]\n",
        &BuildOptions::default(),
    );
    assert_eq!(exec(target_vertex(&lowered)).argv, vec!["/bin/true", "x"]);
}

#[test]
fn lone_heredoc_runs_its_body_and_a_shebang_body_runs_as_a_script() {
    let plain = lowered(
        "FROM scratch\nRUN <<EOF\necho hi\nEOF\n",
        &BuildOptions::default(),
    );
    assert_eq!(
        exec(target_vertex(&plain)).argv,
        vec!["/bin/sh", "-c", "echo hi\n"]
    );
    let script = lowered(
        "FROM scratch\nRUN <<EOF\n#!/bin/python3\nprint(1)\nEOF\n",
        &BuildOptions::default(),
    );
    let run = exec(target_vertex(&script));
    assert_eq!(run.argv, vec!["/bin/sh", "-c", "/dev/pipes/EOF"]);
    assert_eq!(
        run.inline_files,
        vec![(
            "/dev/pipes/EOF".to_string(),
            "#!/bin/python3\nprint(1)\n".to_string()
        )]
    );
}

#[test]
fn heredoc_inside_a_command_is_handed_back_to_the_shell() {
    let lowered = lowered(
        "FROM scratch\nRUN cat <<EOF > /f\nhello\nEOF\n",
        &BuildOptions::default(),
    );
    assert_eq!(
        exec(target_vertex(&lowered)).argv[2],
        "cat <<EOF > /f\nhello\nEOF"
    );
}

#[test]
fn copy_reads_the_context_and_resolves_dest_against_workdir() {
    let lowered = lowered(
        "FROM scratch\nWORKDIR /srv\nCOPY --chown=1:2 --chmod=600 a b sub/\n",
        &BuildOptions::default(),
    );
    let vertex = target_vertex(&lowered);
    let [
        FileAction::Copy {
            input,
            sources,
            dest,
            owner,
            mode,
            ..
        },
    ] = file_actions(vertex)
    else {
        panic!("one copy expected: {:?}", vertex.op)
    };
    assert_eq!(
        (*input, sources.as_slice(), dest.as_str()),
        (1, &["a".to_string(), "b".to_string()][..], "/srv/sub/")
    );
    assert_eq!(
        owner,
        &Some(Owner {
            user: "1".into(),
            group: Some("2".into())
        })
    );
    assert_eq!(mode.as_deref(), Some("600"));
    assert_eq!(lowered.graph.vertex(vertex.inputs[1]).op, Op::Context);
}

#[test]
fn copy_from_a_stage_reads_that_stage_and_from_an_image_reads_the_image() {
    let lowered = lowered(
        "FROM scratch AS build\nRUN make\nFROM scratch\nCOPY --from=build /out /out\nCOPY --from=busybox:1 /bin/sh /sh\n",
        &BuildOptions::default(),
    );
    let last = target_vertex(&lowered);
    let image = lowered.graph.vertex(last.inputs[1]);
    assert_eq!(
        image.op,
        Op::Image {
            reference: "busybox:1".into(),
            platform: Platform::host().to_string()
        }
    );
    let previous = lowered.graph.vertex(last.inputs[0]);
    assert_eq!(previous.inputs[1], lowered.stages[&0].root);
}

#[test]
fn heredoc_copy_source_becomes_a_write() {
    let lowered = lowered(
        "FROM scratch\nARG NAME=world\nCOPY <<EOF /greeting\nhello $NAME\nEOF\n",
        &BuildOptions::default(),
    );
    assert_eq!(
        file_actions(target_vertex(&lowered)),
        &[FileAction::Write {
            path: "/greeting".into(),
            data: "hello world\n".into(),
            mode: 0o644,
            owner: None
        }]
    );
}

#[test]
fn workdir_becomes_a_mkdir_owned_by_the_current_user() {
    let lowered = lowered(
        "FROM scratch\nUSER 1000\nWORKDIR /home/app\n",
        &BuildOptions::default(),
    );
    assert_eq!(
        file_actions(target_vertex(&lowered)),
        &[FileAction::Mkdir {
            path: "/home/app".into(),
            mode: 0o755,
            owner: Some(Owner {
                user: "1000".into(),
                group: None
            })
        }]
    );
}

#[test]
fn run_mounts_become_exec_mounts_with_their_inputs() {
    let lowered = lowered(
        "FROM scratch AS deps\nFROM scratch\nRUN --mount=type=bind,from=deps,source=/lib,target=/l --mount=type=cache,target=/c --mount=type=secret,id=tok --mount=type=tmpfs,target=/t true\n",
        &BuildOptions::default(),
    );
    let vertex = target_vertex(&lowered);
    let run = exec(vertex);
    assert_eq!(run.mounts.len(), 4);
    assert!(matches!(&run.mounts[0], ExecMount::Bind { input: 1, source, .. } if source == "/lib"));
    assert_eq!(vertex.inputs[1], lowered.stages[&0].root);
    assert!(
        matches!(&run.mounts[1], ExecMount::Cache { id, sharing: CacheSharing::Shared, .. } if id == "/c")
    );
    assert!(matches!(&run.mounts[2], ExecMount::Secret { id, mode: 0o400, .. } if id == "tok"));
    assert!(matches!(&run.mounts[3], ExecMount::Tmpfs { .. }));
}

#[test]
fn mount_defaults_follow_buildkit() {
    let lowered = lowered(
        "FROM scratch AS seed\nFROM scratch\nWORKDIR /src\n\
         RUN --mount=type=cache,target=cache,from=seed,source=/data \
             --mount=type=secret,target=/etc/key --mount=type=secret,source=tok,env=TOK \
             --mount=type=ssh --mount=type=ssh,id=work,target=/agent true\n",
        &BuildOptions::default(),
    );
    let vertex = target_vertex(&lowered);
    let run = exec(vertex);
    let targets: Vec<&str> = run.mounts.iter().map(ExecMount::target).collect();
    assert_eq!(
        targets,
        [
            "/src/cache",
            "/etc/key",
            "",
            "/run/buildkit/ssh_agent.0",
            "/agent"
        ]
    );
    assert!(
        matches!(&run.mounts[0], ExecMount::Cache { from: Some(1), source, id, .. } if source == "/data" && id == "cache")
    );
    assert_eq!(vertex.inputs[1], lowered.stages[&0].root);
    assert!(matches!(&run.mounts[1], ExecMount::Secret { id, .. } if id == "key"));
    assert!(matches!(&run.mounts[2], ExecMount::Secret { id, .. } if id == "tok"));
    assert!(matches!(&run.mounts[3], ExecMount::Ssh { id, mode: 0o600, .. } if id == "default"));
    assert!(
        run.env
            .contains(&"SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0".to_string())
    );
}

#[test]
fn identical_steps_in_two_stages_are_one_vertex() {
    let lowered = lowered(
        "FROM scratch AS a\nRUN make\nFROM scratch AS b\nRUN make\nFROM scratch\nCOPY --from=a / /a\nCOPY --from=b / /b\n",
        &BuildOptions::default(),
    );
    assert_eq!(lowered.stages[&0].root, lowered.stages[&1].root);
}

#[test]
fn unused_stages_are_not_lowered() {
    let lowered = lowered(
        "FROM scratch AS unused\nRUN expensive\nFROM scratch\nRUN true\n",
        &BuildOptions::default(),
    );
    assert!(!lowered.stages.contains_key(&0));
    assert!(
        lowered
            .graph
            .vertices()
            .all(|(_, vertex)| vertex.name != "[unused 1/1] RUN expensive")
    );
}

#[test]
fn base_image_config_enters_the_stage_env() {
    let lowered = lowered("FROM alpine:3\nRUN true\n", &BuildOptions::default());
    assert!(
        exec(target_vertex(&lowered))
            .env
            .contains(&"FROM_IMAGE=alpine:3".to_string())
    );
}

#[test]
fn add_url_downloads_under_the_url_file_name_in_a_vertex_named_like_the_step() {
    let lowered = lowered(
        "FROM scratch\nADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://example.com/dl/tool%20v1.tar.gz?x=1 /opt/\n",
        &BuildOptions::default(),
    );
    let add = target_vertex(&lowered);
    let [
        FileAction::Copy {
            input,
            sources,
            unpack_archives,
            ..
        },
    ] = file_actions(add)
    else {
        panic!("one copy expected: {add:?}");
    };
    assert_eq!(sources, &["tool v1.tar.gz"]);
    assert!(!unpack_archives, "URLs are not extracted unless --unpack");
    let http = lowered.graph.vertex(add.inputs[*input]);
    let Op::Http(source) = &http.op else {
        panic!("expected the download: {http:?}");
    };
    assert_eq!(source.filename, "tool v1.tar.gz");
    assert_eq!(http.name, add.name);
}

#[test]
fn url_file_names_follow_buildkit() {
    for (url, name) in [
        ("https://example.com/a/b.txt", "b.txt"),
        ("https://example.com/a/dir/", "dir"),
        ("https://example.com", "__unnamed__"),
        ("https://example.com/", "__unnamed__"),
        ("http://example.com/x.tgz#frag", "x.tgz"),
        ("http://example.com/bad%zz", "__unnamed__"),
    ] {
        assert_eq!(url_file_name(url), name, "{url}");
    }
}

#[test]
fn add_checksum_errors_name_the_line() {
    for (line, message) in [
        (
            "ADD --checksum=sha256:00 https://example.com/f /f",
            "invalid checksum digest length",
        ),
        (
            "ADD --checksum=md5:00 https://example.com/f /f",
            "unsupported digest algorithm",
        ),
        (
            "ADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 local.txt /f",
            "checksum requires HTTP(S) or Git sources",
        ),
        (
            "ADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://a/f https://b/g /d/",
            "checksum can't be specified for multiple sources",
        ),
    ] {
        let source = format!("FROM scratch\n{line}\n");
        let dockerfile = Dockerfile::parse("Dockerfile", &source).unwrap();
        let options = BuildOptions::default();
        let plan = BuildPlan::new(&dockerfile, &options).unwrap();
        let mut resolve = |_: &str, _: &Platform| Ok(ImageConfig::default());
        let error = lower(&dockerfile, &plan, &options, &mut resolve).unwrap_err();
        let text = error.with_source("Dockerfile", &source).to_string();
        assert!(text.contains(message), "{line}: {text}");
        assert!(text.contains("Dockerfile:2"), "{line}: {text}");
    }
}
