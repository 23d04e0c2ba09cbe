use super::*;
use crate::context::{EntryKind, Selection};

fn sample() -> Tree {
    let tree = Tree::new();
    tree.file("README.md", "readme")
        .file("a.txt", "a")
        .file("b.txt", "b")
        .file(".hidden.txt", "h")
        .file("src/main.rs", "fn main() {}")
        .file("src/lib.rs", "")
        .file("src/debug.log", "noise")
        .file("src/nested/deep.log", "deep noise")
        .file("src/nested/keep.rs", "")
        .file("dir1/x.txt", "1")
        .file("dir2/x.txt", "2")
        .file("dir2/y.md", "y");
    tree
}

/// The matched paths of a selection, with the index of the source that matched each.
fn matched<'s>(selection: &'s Selection<'_>) -> Vec<(usize, &'s str)> {
    selection
        .sources
        .iter()
        .map(|source| (source.source_index, source.path.as_str()))
        .collect()
}

fn select<'a>(context: &'a HashedContext, sources: &[&str]) -> Selection<'a> {
    context
        .select(sources, None)
        .unwrap_or_else(|error| panic!("{sources:?}: {error}"))
}

#[test]
fn literal_sources_select_files_and_directories() {
    let tree = sample();
    let context = hash(&tree);
    let selection = select(&context, &["a.txt", "src"]);
    assert_eq!(matched(&selection), [(0, "a.txt"), (1, "src")]);
    let src = &selection.sources[1];
    assert_eq!(src.entry.path, "src");
    let contents: Vec<&str> = src
        .contents
        .iter()
        .map(|entry| src.relative_path(entry))
        .collect();
    assert_eq!(
        contents,
        [
            "debug.log",
            "lib.rs",
            "main.rs",
            "nested",
            "nested/deep.log",
            "nested/keep.rs"
        ]
    );
    assert_eq!(src.digest, digest_of(&context, "src"));
    assert!(selection.sources[0].contents.is_empty());
}

#[test]
fn trailing_slash_leading_slash_and_dots_select_the_same() {
    let tree = sample();
    let context = hash(&tree);
    let plain = select(&context, &["src"]).digest;
    for spelling in ["src/", "/src", "./src", "src/.", "src//", "src/nested/.."] {
        assert_eq!(select(&context, &[spelling]).digest, plain, "{spelling}");
    }
    // A trailing slash on a file is dropped when the path is cleaned, as in BuildKit.
    assert_eq!(
        select(&context, &["a.txt/"]).digest,
        select(&context, &["a.txt"]).digest
    );
}

#[test]
fn dot_selects_the_whole_context() {
    let tree = sample();
    let context = hash(&tree);
    let selection = select(&context, &["."]);
    assert_eq!(matched(&selection), [(0, "")]);
    assert_eq!(
        selection.sources[0].contents.len(),
        context.entries().len() - 1
    );
    assert_eq!(selection.sources[0].digest, context.digest());
    assert_eq!(select(&context, &["/"]).digest, selection.digest);
}

#[test]
fn wildcards_match_in_tree_order_including_dotfiles() {
    let tree = sample();
    let context = hash(&tree);
    assert_eq!(
        matched(&select(&context, &["*.txt"])),
        [(0, ".hidden.txt"), (0, "a.txt"), (0, "b.txt")]
    );
    assert_eq!(
        matched(&select(&context, &["[ab].txt"])),
        [(0, "a.txt"), (0, "b.txt")]
    );
    assert_eq!(
        matched(&select(&context, &["?.txt"])),
        [(0, "a.txt"), (0, "b.txt")]
    );
    assert_eq!(
        matched(&select(&context, &["src/*.rs"])),
        [(0, "src/lib.rs"), (0, "src/main.rs")]
    );
    assert_eq!(
        matched(&select(&context, &["dir*/x.txt"])),
        [(0, "dir1/x.txt"), (0, "dir2/x.txt")]
    );
    assert_eq!(
        matched(&select(&context, &["dir?"])),
        [(0, "dir1"), (0, "dir2")]
    );
    // Without an unescaped wildcard the source is a literal path, backslash and all (BuildKit).
    assert!(matches!(
        select_error(&context, &["\\*.txt"]),
        ContextError::SourceNotFound { missing, .. } if missing == "\\*.txt"
    ));
}

#[test]
fn wildcard_matching_nothing_selects_nothing_but_a_missing_literal_is_an_error() {
    let tree = sample();
    let context = hash(&tree);
    let empty = select(&context, &["*.none"]);
    assert!(empty.sources.is_empty());
    assert_ne!(empty.digest, select(&context, &[] as &[&str]).digest);

    let error = select_error(&context, &["missing.txt"]);
    assert!(
        matches!(&error, ContextError::SourceNotFound { missing, .. } if missing == "missing.txt"),
        "{error}"
    );
    assert!(matches!(
        select_error(&context, &["nodir/*.txt"]),
        ContextError::SourceNotFound { .. }
    ));
    assert!(matches!(
        select_error(&context, &["a.txt/inside"]),
        ContextError::SourceNotADirectory { .. }
    ));
}

#[test]
fn malformed_wildcard_is_an_error_naming_it() {
    let tree = sample();
    let context = hash(&tree);
    let error = select_error(&context, &["src/[ab"]);
    assert!(
        matches!(&error, ContextError::BadPattern { component, .. } if component == "[ab"),
        "{error}"
    );
    assert!(error.to_string().contains("src/[ab"), "{error}");
}

#[test]
fn wildcards_do_not_descend_through_symlinked_directories() {
    let tree = sample();
    tree.symlink("linked", "dir2");
    let context = hash(&tree);
    assert_eq!(
        matched(&select(&context, &["*/y.md"])),
        [(0, "dir2/y.md")],
        "`linked/y.md` is only reachable through a symlink"
    );
    // A match that is itself a symlink is followed.
    let selection = select(&context, &["link*"]);
    assert_eq!(matched(&selection), [(0, "linked")]);
    assert_eq!(selection.sources[0].entry.path, "dir2");
    assert_eq!(selection.sources[0].contents.len(), 2);
}

#[test]
fn excludes_apply_below_each_selected_directory_relative_to_it() {
    let tree = sample();
    let context = hash(&tree);
    let filter = TestFilter {
        excluded_extensions: vec![".log"],
        ..TestFilter::default()
    };
    let selection = context
        .select(&["src", "src/debug.log"], Some(&filter))
        .expect("select");

    let src = &selection.sources[0];
    let contents: Vec<&str> = src
        .contents
        .iter()
        .map(|entry| src.relative_path(entry))
        .collect();
    assert_eq!(contents, ["lib.rs", "main.rs", "nested", "nested/keep.rs"]);
    assert_ne!(src.digest, digest_of(&context, "src"));
    // The selected path itself is never excluded (BuildKit applies excludes below it only).
    assert_eq!(selection.sources[1].path, "src/debug.log");
    let asked = filter.asked.lock().expect("lock").clone();
    assert!(
        asked.contains(&"nested/deep.log".to_owned()),
        "paths are relative: {asked:?}"
    );

    // Excluded files do not count: changing one leaves the digest alone.
    tree.file("src/nested/deep.log", "different noise");
    let rehashed = hash(&tree);
    let again = rehashed.select(&["src"], Some(&filter)).expect("select");
    assert_eq!(
        again.digest,
        context
            .select(&["src"], Some(&filter))
            .expect("select")
            .digest
    );
}

#[test]
fn excluded_directory_with_a_reincluded_file_keeps_just_that() {
    let tree = sample();
    let context = hash(&tree);
    let filter = TestFilter {
        excluded: vec!["nested"],
        reincluded: vec!["nested/keep.rs"],
        ..TestFilter::default()
    };
    let selection = context.select(&["src"], Some(&filter)).expect("select");
    let src = &selection.sources[0];
    let contents: Vec<&str> = src
        .contents
        .iter()
        .map(|entry| src.relative_path(entry))
        .collect();
    assert_eq!(
        contents,
        ["debug.log", "lib.rs", "main.rs", "nested", "nested/keep.rs"]
    );
}

#[test]
fn an_exclude_filter_that_excludes_nothing_gives_the_unfiltered_digest() {
    let tree = sample();
    let context = hash(&tree);
    let nothing = TestFilter::default();
    let filtered = context
        .select(&[".", "src", "*.txt"], Some(&nothing))
        .expect("select");
    let unfiltered = select(&context, &[".", "src", "*.txt"]);
    assert_eq!(filtered.digest, unfiltered.digest);
    let contents = |selection: &Selection<'_>| -> Vec<Vec<String>> {
        selection
            .sources
            .iter()
            .map(|source| {
                source
                    .contents
                    .iter()
                    .map(|entry| entry.path.clone())
                    .collect()
            })
            .collect()
    };
    assert_eq!(contents(&filtered), contents(&unfiltered));
}

#[test]
fn selection_digest_follows_selected_content_only() {
    let tree = sample();
    let before = hash(&tree);
    let digest = |context: &HashedContext| select(context, &["src", "*.txt"]).digest;
    let original = digest(&before);

    tree.file("README.md", "unselected change");
    assert_eq!(digest(&hash(&tree)), original);

    tree.file("src/nested/keep.rs", "// changed");
    let changed = digest(&hash(&tree));
    assert_ne!(changed, original);

    tree.chmod("b.txt", 0o600);
    assert_ne!(digest(&hash(&tree)), changed);
}

#[test]
fn selection_digest_covers_matched_names_and_source_grouping() {
    let tree = sample();
    let context = hash(&tree);
    let both = select(&context, &["a.txt", "b.txt"]).digest;
    assert_ne!(
        both,
        select(&context, &["b.txt", "a.txt"]).digest,
        "order matters to COPY"
    );
    assert_ne!(
        both,
        select(&context, &["[ab].txt"]).digest,
        "grouping by source is recorded"
    );

    let renamed = Tree::new();
    renamed.file("c.txt", "a");
    let one = |tree: &Tree, source: &str| select(&hash(tree), &[source]).digest;
    assert_ne!(
        one(&tree, "a.txt"),
        one(&renamed, "c.txt"),
        "same content, other name"
    );
}

#[test]
fn ignored_paths_do_not_exist_for_selection() {
    let tree = sample();
    let filter = TestFilter {
        excluded: vec!["dir2"],
        ..TestFilter::default()
    };
    let context = hash_filtered(&tree, &filter);
    assert!(matches!(
        select_error(&context, &["dir2/x.txt"]),
        ContextError::SourceNotFound { .. }
    ));
    assert_eq!(matched(&select(&context, &["dir*"])), [(0, "dir1")]);
}

#[test]
fn symlinks_inside_a_selected_directory_are_reported_as_links() {
    let tree = sample();
    tree.symlink("dir1/up", "../README.md")
        .symlink("dir1/out", "/etc/passwd");
    let context = hash(&tree);
    let selection = select(&context, &["dir1"]);
    let links: Vec<(&str, &EntryKind)> = selection.sources[0]
        .contents
        .iter()
        .filter(|entry| matches!(entry.kind, EntryKind::Symlink { .. }))
        .map(|entry| (entry.path.as_str(), &entry.kind))
        .collect();
    assert_eq!(
        links,
        [
            (
                "dir1/out",
                &EntryKind::Symlink {
                    target: "/etc/passwd".into()
                }
            ),
            (
                "dir1/up",
                &EntryKind::Symlink {
                    target: "../README.md".into()
                }
            ),
        ]
    );
}
