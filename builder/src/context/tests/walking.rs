use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;

use rustix::fs::{FileType, Mode};

use super::*;
use crate::context::{ContentDigest, EntryKind};

#[test]
fn walk_lists_every_path_in_tree_order_with_its_metadata() {
    let tree = Tree::new();
    tree.file("a/b.txt", "hello\n")
        .file("a/c/d", "")
        .file("a-z", "dash sorts before slash")
        .dir("empty")
        .symlink("link", "a/b.txt")
        .chmod("a/b.txt", 0o4750);

    let context = hash(&tree);

    assert_eq!(
        paths(&context),
        ["", "a", "a/b.txt", "a/c", "a/c/d", "a-z", "empty", "link"]
    );
    let file = context.get("a/b.txt").expect("a/b.txt");
    assert_eq!(file.kind, EntryKind::File);
    assert_eq!(file.mode, 0o4750);
    assert_eq!(file.size, 6);
    assert_eq!(file.digest, ContentDigest::of(b"hello\n"));
    assert_eq!(
        (file.uid, file.gid),
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw()
        )
    );
    let link = context.get("link").expect("link");
    assert_eq!(
        link.kind,
        EntryKind::Symlink {
            target: "a/b.txt".into()
        }
    );
    assert_eq!(link.digest, ContentDigest::of(b"a/b.txt"));
    assert!(context.get("empty").expect("empty").is_dir());
    assert_eq!(context.get(".").map(|root| root.path.as_str()), Some(""));
    assert_eq!(context.subtree("a").map(<[_]>::len), Some(4));
    assert_eq!(context.stats().entries, 8);
    assert_eq!(context.stats().files, 3);
}

#[test]
fn walk_does_not_follow_symlinks_to_directories() {
    let outside = Tree::new();
    outside.file("secret.txt", "not part of the context");
    let tree = Tree::new();
    tree.symlink("escape", &outside.path().display().to_string());

    let context = hash(&tree);

    assert_eq!(paths(&context), ["", "escape"]);
    assert!(matches!(
        context.get("escape").expect("escape").kind,
        EntryKind::Symlink { .. }
    ));
}

#[test]
fn walk_skips_excluded_directories_without_reading_them() {
    let tree = Tree::new();
    tree.file("keep.txt", "k")
        .file("node_modules/pkg/index.js", "x");
    let filter = TestFilter {
        excluded: vec!["node_modules"],
        ..TestFilter::default()
    };

    let context = hash_filtered(&tree, &filter);

    assert_eq!(paths(&context), ["", "keep.txt"]);
    let asked = filter.asked.lock().expect("lock");
    assert!(
        !asked.iter().any(|path| path.starts_with("node_modules/")),
        "the walk read inside an excluded directory: {asked:?}"
    );
}

#[test]
fn excluded_directory_stays_only_when_something_below_is_reincluded() {
    let tree = Tree::new();
    tree.file("docs/keep.md", "k")
        .file("docs/other.md", "o")
        .file("build/out.bin", "b");
    let filter = TestFilter {
        excluded: vec!["docs", "build"],
        reincluded: vec!["docs/keep.md", "build/missing"],
        ..TestFilter::default()
    };

    let context = hash_filtered(&tree, &filter);

    // `build` may have had something re-included below it, but nothing was: it is dropped.
    assert_eq!(paths(&context), ["", "docs", "docs/keep.md"]);
}

#[test]
fn excluded_files_change_no_digest() {
    let tree = Tree::new();
    tree.file("app.py", "print(1)").file("debug.log", "one");
    let filter = TestFilter {
        excluded_extensions: vec![".log"],
        ..TestFilter::default()
    };
    let before = hash_filtered(&tree, &filter).digest();
    tree.file("debug.log", "two").file("more.log", "three");
    assert_eq!(hash_filtered(&tree, &filter).digest(), before);
}

#[test]
fn non_utf8_name_is_an_error_unless_excluded() {
    let tree = Tree::new();
    let name = OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(tree.path().join(name), "latin-1 name").expect("write");

    let error = super::super::hash_context(tree.path(), &IncludeAll, None).expect_err("non-UTF-8");
    assert!(matches!(error, ContextError::NonUtf8Name { .. }), "{error}");
    assert!(error.hint().is_some());

    let filter = TestFilter {
        excluded_extensions: vec![".txt"],
        ..TestFilter::default()
    };
    assert_eq!(paths(&hash_filtered(&tree, &filter)), [""]);
}

#[test]
fn special_files_are_entries_of_their_own_kind() {
    let tree = Tree::new();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        tree.abs("pipe"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");

    let context = hash(&tree);

    let pipe = context.get("pipe").expect("pipe");
    assert!(matches!(
        pipe.kind,
        EntryKind::Other {
            type_bits: 0o010_000,
            rdev: 0
        }
    ));
    assert_eq!(pipe.mode, 0o600);
}

#[test]
fn context_root_must_be_a_directory() {
    let tree = Tree::new();
    tree.file("Dockerfile", "FROM scratch");
    let error = super::super::hash_context(&tree.abs("Dockerfile"), &IncludeAll, None)
        .expect_err("a file is no context");
    assert!(
        matches!(error, ContextError::NotADirectory { .. }),
        "{error}"
    );
    let missing = super::super::hash_context(&tree.abs("missing"), &IncludeAll, None)
        .expect_err("missing context");
    assert!(matches!(missing, ContextError::Io { .. }), "{missing}");
}

#[test]
fn large_files_are_hashed_across_many_reads() {
    let tree = Tree::new();
    let contents: String = (0..600_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    tree.file("big.txt", &contents);
    assert_eq!(
        digest_of(&hash(&tree), "big.txt"),
        ContentDigest::of(contents.as_bytes())
    );
}
