use super::*;
use crate::context::EntryKind;

fn escapes(error: &ContextError, source: &str) -> bool {
    matches!(error, ContextError::SourceEscapes { requested, .. } if requested == source)
        && error.to_string().contains(source)
        && error.hint().is_some()
}

#[test]
fn dot_dot_above_the_root_is_refused_naming_the_source() {
    let tree = Tree::new();
    tree.file("a/file", "x");
    let context = hash(&tree);
    for source in ["../x", "a/../../x", "/../x", "..", "a/../..", "*/../../x"] {
        let error = select_error(&context, &[source]);
        assert!(escapes(&error, source), "{source}: {error}");
    }
    // Climbing back down inside the context is fine.
    assert_eq!(
        context
            .select(&["a/../a/file"], None)
            .expect("inside")
            .sources
            .len(),
        1
    );
}

#[test]
fn absolute_source_is_rooted_at_the_context_not_the_host() {
    let tree = Tree::new();
    tree.file("etc/app.conf", "in the context");
    let context = hash(&tree);
    let selection = context.select(&["/etc/app.conf"], None).expect("select");
    assert_eq!(selection.sources[0].entry.path, "etc/app.conf");
    assert!(matches!(
        select_error(&context, &["/etc/passwd"]),
        ContextError::SourceNotFound { missing, .. } if missing == "etc/passwd"
    ));
}

#[test]
fn symlink_source_leading_outside_is_refused_naming_the_link() {
    let outside = Tree::new();
    outside.file("secret", "s");
    let tree = Tree::new();
    tree.symlink("abs", &outside.abs("secret").display().to_string())
        .symlink("rel", "../../../../../../../../etc/passwd")
        .symlink("dir/up", "../..")
        .file("dir/file", "f");
    let context = hash(&tree);

    for (source, link) in [
        ("abs", "abs"),
        ("rel", "rel"),
        ("dir/up/x", "dir/up"),
        ("a*", "abs"),
    ] {
        let error = select_error(&context, &[source]);
        assert!(escapes(&error, source), "{source}: {error}");
        assert!(
            matches!(&error, ContextError::SourceEscapes { link: Some(found), .. } if found == link),
            "{source}: {error}"
        );
    }
}

#[test]
fn symlink_source_inside_the_context_is_followed() {
    let tree = Tree::new();
    tree.file("real/data.txt", "d")
        .file("real/more/deep.txt", "e")
        .symlink("alias", "real")
        .symlink("nested/hop", "../alias/data.txt");
    let absolute_target = tree.path().canonicalize().expect("canonical").join("real");
    tree.symlink("absolute", &absolute_target.display().to_string());
    let context = hash(&tree);

    let selection = context
        .select(&["alias", "nested/hop", "absolute", "alias/more"], None)
        .expect("select");
    let followed: Vec<(&str, &str)> = selection
        .sources
        .iter()
        .map(|source| (source.path.as_str(), source.entry.path.as_str()))
        .collect();
    assert_eq!(
        followed,
        [
            ("alias", "real"),
            ("nested/hop", "real/data.txt"),
            ("absolute", "real"),
            ("alias/more", "real/more"),
        ]
    );
    assert_eq!(selection.sources[0].contents.len(), 3);
    assert_eq!(selection.sources[0].digest, digest_of(&context, "real"));
    let relative: Vec<&str> = selection.sources[0]
        .contents
        .iter()
        .map(|entry| selection.sources[0].relative_path(entry))
        .collect();
    assert_eq!(relative, ["data.txt", "more", "more/deep.txt"]);
}

#[test]
fn symlinked_source_directory_is_named_by_the_link_in_the_digest() {
    let tree = Tree::new();
    tree.file("real/data.txt", "d").symlink("alias", "real");
    let context = hash(&tree);
    let via_link = context.select(&["alias"], None).expect("select");
    let direct = context.select(&["real"], None).expect("select");
    assert_eq!(via_link.sources[0].digest, direct.sources[0].digest);
    assert_ne!(
        via_link.digest, direct.digest,
        "COPY names the copy after the link"
    );
}

#[test]
fn dangling_and_looping_symlinks_are_errors() {
    let tree = Tree::new();
    tree.symlink("dangling", "nowhere")
        .symlink("loop1", "loop2")
        .symlink("loop2", "loop1")
        .symlink("self", "self/x");
    let context = hash(&tree);
    assert!(matches!(
        select_error(&context, &["dangling"]),
        ContextError::SourceNotFound { missing, .. } if missing == "nowhere"
    ));
    for source in ["loop1", "self"] {
        let error = select_error(&context, &[source]);
        assert!(
            matches!(error, ContextError::SymlinkLoop { .. }),
            "{source}: {error}"
        );
    }
}

#[test]
fn links_pointing_outside_are_fine_as_contents_of_a_copied_directory() {
    let tree = Tree::new();
    tree.file("pkg/file", "f")
        .symlink("pkg/passwd", "/etc/passwd");
    let context = hash(&tree);
    let selection = context
        .select(&["pkg"], None)
        .expect("a link inside is copied as a link");
    assert!(selection.sources[0].contents.iter().any(|entry| {
        entry.path == "pkg/passwd"
            && entry.kind
                == EntryKind::Symlink {
                    target: "/etc/passwd".into(),
                }
    }));
}
