//! ADD and COPY: sources and destination, heredoc sources (BuildKit's `TestCopyHeredoc`), flags,
//! and what expansion expands and validates.

use super::*;

fn copy(source: &str) -> CopyInstruction {
    match instruction(source) {
        Instruction::Copy(copy) => copy,
        other => panic!("not a COPY: {other:?}"),
    }
}

fn add(source: &str) -> AddInstruction {
    match instruction(source) {
        Instruction::Add(add) => add,
        other => panic!("not an ADD: {other:?}"),
    }
}

fn inline(path: &str, data: &str, expand: bool) -> InlineSource {
    InlineSource {
        path: path.into(),
        data: data.into(),
        expand,
    }
}

fn files(sources: &[&str], inline_sources: Vec<InlineSource>, dest: &str) -> SourcesAndDest {
    SourcesAndDest {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        inline_sources,
        dest: dest.into(),
    }
}

#[test]
fn sources_and_destination_in_both_forms() {
    assert_eq!(
        copy("COPY a b /dst/").files,
        files(&["a", "b"], vec![], "/dst/")
    );
    assert_eq!(
        copy(r#"COPY ["a b", "c", "/dst dir/"]"#).files,
        files(&["a b", "c"], vec![], "/dst dir/")
    );
    assert_eq!(
        add("ADD https://example.com/x.tgz /x").files,
        files(&["https://example.com/x.tgz"], vec![], "/x")
    );
}

#[test]
fn heredoc_sources() {
    let cases = [
        ("COPY /foo /bar", files(&["/foo"], vec![], "/bar")),
        (
            "COPY <<EOF /bar\nEOF",
            files(&[], vec![inline("EOF", "", true)], "/bar"),
        ),
        (
            "COPY <<EOF /bar\nTESTING\nEOF",
            files(&[], vec![inline("EOF", "TESTING\n", true)], "/bar"),
        ),
        (
            "COPY <<-EOF /bar\n\tTESTING\nEOF",
            files(&[], vec![inline("EOF", "TESTING\n", true)], "/bar"),
        ),
        (
            "COPY <<'EOF' /bar\nTESTING\nEOF",
            files(&[], vec![inline("EOF", "TESTING\n", false)], "/bar"),
        ),
        (
            "COPY <<EOF1 <<EOF2 /bar\nthis is the first file\nEOF1\nthis is the second file\nEOF2",
            files(
                &[],
                vec![
                    inline("EOF1", "this is the first file\n", true),
                    inline("EOF2", "this is the second file\n", true),
                ],
                "/bar",
            ),
        ),
        (
            "COPY <<EOF foo.txt /bar\nthis is inline\nEOF",
            files(
                &["foo.txt"],
                vec![inline("EOF", "this is inline\n", true)],
                "/bar",
            ),
        ),
        (
            "COPY <<EOF /quotes\n\"quotes\"\nEOF",
            files(&[], vec![inline("EOF", "\"quotes\"\n", true)], "/quotes"),
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(copy(source).files, expected, "{source}");
    }
    assert_eq!(
        add("ADD <<x.sh /x.sh\necho hi\nx.sh").files,
        files(&[], vec![inline("x.sh", "echo hi\n", true)], "/x.sh")
    );
}

#[test]
fn heredoc_as_destination_is_rejected() {
    let error = rejection("COPY /foo <<EOF\nEOF");
    assert_eq!(
        error.message,
        "COPY cannot accept a heredoc as a destination"
    );
    assert_eq!(error.span, Some(Span::at(1, 11, 5)));
    assert_eq!(
        rejection("ADD a <<-EOF\nEOF").message,
        "ADD cannot accept a heredoc as a destination"
    );
}

#[test]
fn copy_flags() {
    let copy = copy(
        "COPY --from=build --chown=app:app --chmod=0755 --link --parents --exclude=*.md --exclude=.git a /b",
    );
    assert_eq!(copy.from.as_deref(), Some("build"));
    assert!(copy.parents);
    assert_eq!(
        copy.options,
        TransferOptions {
            chown: Some("app:app".into()),
            chmod: Some("0755".into()),
            mode: None,
            link: true,
            exclude: vec!["*.md".into(), ".git".into()],
        }
    );
    let plain = self::copy("COPY --link=false --chown= a /b");
    assert_eq!(plain.options.chown, None);
    assert!(!plain.options.link);
    assert!(!plain.parents);
    assert_eq!(plain.from, None);
}

#[test]
fn add_flags() {
    let add = add(
        "ADD --checksum=sha256:abc --keep-git-dir --unpack=false --exclude=x https://example.com/a.git /src",
    );
    assert_eq!(add.checksum.as_deref(), Some("sha256:abc"));
    assert_eq!(add.keep_git_dir, Some(true));
    assert_eq!(add.unpack, Some(false));
    assert_eq!(add.options.exclude, ["x"]);
    let plain = self::add("ADD a /b");
    assert_eq!(
        (plain.keep_git_dir, plain.unpack, plain.checksum),
        (None, None, None)
    );
}

#[test]
fn expand_covers_chown_chmod_sources_and_destination() {
    let vars = [
        ("USER", "app"),
        ("MODE", "0640"),
        ("SRC", "dist"),
        ("DST", "/srv"),
        ("PAT", "*.md"),
    ];
    let Instruction::Copy(copy) = expand(
        instruction("COPY --chown=$USER --chmod=$MODE --exclude=$PAT ${SRC}/a $DST/"),
        &vars,
    )
    .unwrap() else {
        panic!("not a COPY")
    };
    assert_eq!(copy.options.chown.as_deref(), Some("app"));
    assert_eq!(copy.options.chmod.as_deref(), Some("0640"));
    assert_eq!(copy.options.mode, Some(FileMode::Octal(0o640)));
    assert_eq!(
        copy.options.exclude,
        ["$PAT"],
        "exclude patterns are not expanded"
    );
    assert_eq!(copy.files, files(&["dist/a"], vec![], "/srv/"));

    let Instruction::Add(add) = expand(
        instruction("ADD --checksum=$SUM --chmod=u+x $URL /bin/tool"),
        &[("SUM", "sha256:0123"), ("URL", "https://example.com/tool")],
    )
    .unwrap() else {
        panic!("not an ADD")
    };
    assert_eq!(add.checksum.as_deref(), Some("sha256:0123"));
    assert_eq!(add.options.mode, Some(FileMode::Symbolic("u+x".into())));
    assert_eq!(add.files.sources, ["https://example.com/tool"]);
}

#[test]
fn chmod_is_validated_after_expansion() {
    let error = expand(instruction("COPY --chmod=$MODE a /b"), &[("MODE", "0999")]).unwrap_err();
    assert_eq!(
        error.message,
        "invalid chmod parameter: '0999'. it should be octal string and between 0 and 07777"
    );
    assert_eq!(error.span, Some(Span::lines(1, 1)));
    let error = expand(instruction("ADD --chmod=10000 a /b"), &[]).unwrap_err();
    assert_eq!(
        error.message,
        "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777"
    );
    let error = expand(instruction("COPY --chmod=u+q a /b"), &[]).unwrap_err();
    assert_eq!(
        error.message,
        "invalid chmod parameter: 'u+q': invalid syntax"
    );
    // A chmod that expands to nothing is no chmod, as in BuildKit.
    let Instruction::Copy(copy) =
        expand(instruction("COPY --chmod=$EMPTY a /b"), &[("EMPTY", "")]).unwrap()
    else {
        panic!("not a COPY")
    };
    assert_eq!((copy.options.chmod, copy.options.mode), (None, None));
}

#[test]
fn copy_from_is_never_expanded() {
    let Instruction::Copy(copy) = expand(instruction("COPY --from=builder a /b"), &[]).unwrap()
    else {
        panic!("not a COPY")
    };
    assert_eq!(copy.from.as_deref(), Some("builder"));
    let stage = [("STAGE", "builder")];
    assert!(
        self::copy("COPY --from=$STAGE a /b")
            .check_from(&mut expander(&stage))
            .is_err()
    );
    let error = expand(
        instruction("COPY --from=$STAGE a /b"),
        &[("STAGE", "builder")],
    )
    .unwrap_err();
    assert_eq!(
        error.message,
        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"
    );
}

#[test]
fn inline_sources_expand_only_when_unquoted() {
    let mut copy = copy("COPY <<A <<'B' /dst\n$X\nA\n$X\nB");
    let origin = copy.origin.clone();
    copy.files
        .expand_inline_sources(&origin, &mut expander(&[("X", "1")]))
        .unwrap();
    assert_eq!(
        copy.files.inline_sources,
        [inline("A", "1\n", true), inline("B", "$X\n", false)]
    );
}
