//! COPY from the build context, end to end: what lands where, with which owner, mode and mtime,
//! checked in the exported root filesystem and inside the image with `imgb run`. Expectations
//! were confirmed by building the same Dockerfiles with Docker 20.10's BuildKit, except
//! `--parents`, `--exclude`, symbolic `--chmod` and heredocs (newer Dockerfile syntax, checked
//! against BuildKit's source) and the refusal of sources escaping the context (BuildKit roots
//! them at the context instead; imgb refuses them, as its issue asks).

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use support::{BASE, TestContext, run_in, shared_root, stderr};

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

/// A context with `file.txt`, `w1.log`, `w2.log` and `dir/` holding `a.txt` (0600), `sub/b.txt`,
/// `empty/`, `link -> a.txt` and the hard-linked pair `hard1`/`hard2`.
fn tree_context(dockerfile: &str) -> TestContext {
    let context = TestContext::new(
        dockerfile,
        &[
            ("file.txt", "f\n"),
            ("w1.log", "1\n"),
            ("w2.log", "2\n"),
            ("dir/a.txt", "a\n"),
            ("dir/sub/b.txt", "b\n"),
            ("dir/hard1", "h\n"),
        ],
    );
    let dir = context.path().join("dir");
    fs::create_dir(dir.join("empty")).unwrap();
    fs::set_permissions(dir.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("a.txt", dir.join("link")).unwrap();
    fs::hard_link(dir.join("hard1"), dir.join("hard2")).unwrap();
    context
}

#[test]
fn directory_sources_copy_their_contents_and_the_destination_slash_decides_file_or_dir() {
    let Some(root) = shared_root() else { return };
    let context = tree_context(&format!(
        "FROM {BASE}\n\
         RUN mkdir -p /existing/dir\n\
         COPY dir /contents/\n\
         COPY dir /named/dir\n\
         COPY file.txt /renamed\n\
         COPY file.txt /into/\n\
         COPY file.txt /existing/dir\n\
         COPY dir/empty /emptycopy/\n"
    ));
    let rootfs = context.rootfs(root, &[]);
    assert_eq!(
        fs::read_to_string(rootfs.join("contents/a.txt")).unwrap(),
        "a\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("contents/sub/b.txt")).unwrap(),
        "b\n"
    );
    assert!(
        rootfs.join("contents/empty").is_dir(),
        "empty directories are copied"
    );
    assert!(
        !rootfs.join("contents/dir").exists(),
        "the directory itself is not copied"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("named/dir/a.txt")).unwrap(),
        "a\n"
    );
    assert_eq!(fs::read_to_string(rootfs.join("renamed")).unwrap(), "f\n");
    assert_eq!(
        fs::read_to_string(rootfs.join("into/file.txt")).unwrap(),
        "f\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("existing/dir/file.txt")).unwrap(),
        "f\n",
        "an existing directory destination receives the file without a trailing slash"
    );
    assert!(rootfs.join("emptycopy").is_dir());
    assert_eq!(fs::read_dir(rootfs.join("emptycopy")).unwrap().count(), 0);
}

#[test]
fn wildcards_select_files_and_several_sources_need_a_directory_destination() {
    let Some(root) = shared_root() else { return };
    let context = tree_context(&format!(
        "FROM {BASE}\nCOPY *.log /logs/\nCOPY file.txt w?.log /multi/\n"
    ));
    let rootfs = context.rootfs(root, &[]);
    let mut logs: Vec<_> = fs::read_dir(rootfs.join("logs"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    logs.sort();
    assert_eq!(logs, ["w1.log", "w2.log"]);
    assert!(rootfs.join("multi/file.txt").is_file());
    assert!(rootfs.join("multi/w2.log").is_file());

    let context = tree_context(&format!("FROM {BASE}\nCOPY file.txt w1.log /multi\n"));
    let output = context.build(root, &[]);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("the destination must be a directory and end with a /"),
        "{text}"
    );
    assert!(text.contains("Dockerfile:2"), "{text}");
}

#[test]
fn destinations_resolve_through_the_images_symlinks_inside_its_root() {
    let Some(root) = shared_root() else { return };
    let context = tree_context(&format!(
        "FROM {BASE}\n\
         RUN mkdir /real && ln -s /real /linkdir && ln -s ../../../../outside /up \
             && echo old > /real/target && ln -s real/target /linkfile\n\
         COPY file.txt /linkdir/through.txt\n\
         COPY file.txt /up/escaped.txt\n\
         COPY file.txt /linkfile\n\
         COPY dir /linkdir\n"
    ));
    let rootfs = context.rootfs(root, &[]);
    assert_eq!(
        fs::read_link(rootfs.join("linkfile")).unwrap(),
        Path::new("real/target"),
        "a destination that is a link is written through, not replaced"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("real/target")).unwrap(),
        "f\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("real/a.txt")).unwrap(),
        "a\n"
    );
    assert_eq!(
        fs::read_link(rootfs.join("linkdir")).unwrap(),
        Path::new("/real")
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("real/through.txt")).unwrap(),
        "f\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("outside/escaped.txt")).unwrap(),
        "f\n",
        "`..` past the image's root stays at its root"
    );
}

#[test]
fn chown_takes_names_from_the_images_passwd_and_group_or_numbers() {
    let Some(root) = shared_root() else { return };
    let context = tree_context(&format!(
        "FROM {BASE}\n\
         COPY --chown=bob:staff file.txt /own/byname\n\
         COPY --chown=bob file.txt /own/useronly\n\
         COPY --chown=1234:5678 file.txt /own/numeric\n\
         COPY --chown=1234 file.txt /own/numericuser\n\
         COPY --chown=bob:builders dir /tree/\n"
    ));
    context.build_ok(root, &["-t", "copy-chown:1"]);
    let listing = run_in(
        root,
        "copy-chown:1",
        "cd / && stat -c '%n %u:%g' own own/* tree tree/sub/b.txt tree/link",
    );
    assert_eq!(
        listing,
        "own 1001:1002\n\
         own/byname 1001:1002\n\
         own/numeric 1234:5678\n\
         own/numericuser 1234:1234\n\
         own/useronly 1001:1002\n\
         tree 1001:2000\n\
         tree/sub/b.txt 1001:2000\n\
         tree/link 1001:2000\n"
    );

    let context = tree_context(&format!(
        "FROM {BASE}\nCOPY --chown=nobody-here file.txt /x\n"
    ));
    let output = context.build(root, &[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("nobody-here"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn chmod_takes_octal_and_symbolic_modes() {
    let Some(root) = shared_root() else { return };
    let context = tree_context(&format!(
        "FROM {BASE}\n\
         COPY --chmod=0640 file.txt /octal\n\
         COPY --chmod=u+x,g-r file.txt /symbolic\n\
         COPY --chmod=go-rwx,a+X dir /tree/\n\
         COPY --chmod=4755 file.txt /setuid\n"
    ));
    let rootfs = context.rootfs(root, &[]);
    assert_eq!(mode(&rootfs.join("octal")), 0o640);
    assert_eq!(mode(&rootfs.join("symbolic")), 0o704);
    assert_eq!(mode(&rootfs.join("tree/a.txt")), 0o600);
    assert_eq!(
        mode(&rootfs.join("tree/sub")),
        0o711,
        "X adds execute to directories"
    );
    assert_eq!(mode(&rootfs.join("setuid")), 0o4755);
}

#[test]
fn parents_keeps_source_paths_and_exclude_drops_matches() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\n\
             COPY --parents p/*/one.txt p/y/two.txt /kept/\n\
             COPY --exclude=**/*.log --exclude=y p /filtered/\n"
        ),
        &[
            ("p/x/one.txt", "1"),
            ("p/y/one.txt", "1"),
            ("p/y/two.txt", "2"),
            ("p/x/skip.log", "l"),
            ("p/z/keep.txt", "k"),
        ],
    );
    let rootfs = context.rootfs(root, &[]);
    for path in ["kept/p/x/one.txt", "kept/p/y/one.txt", "kept/p/y/two.txt"] {
        assert!(rootfs.join(path).is_file(), "{path}");
    }
    assert!(!rootfs.join("kept/p/x/skip.log").exists());
    assert!(rootfs.join("filtered/x/one.txt").is_file());
    assert!(rootfs.join("filtered/z/keep.txt").is_file());
    assert!(!rootfs.join("filtered/x/skip.log").exists());
    assert!(
        !rootfs.join("filtered/y").exists(),
        "patterns are relative to the source"
    );
}

#[test]
fn symlink_sources_are_followed_inside_the_context_and_never_out_of_it() {
    let Some(root) = shared_root() else { return };
    let context = tree_context(&format!(
        "FROM {BASE}\nCOPY filelink /followed\nCOPY dirlink /followeddir/\n"
    ));
    symlink("file.txt", context.path().join("filelink")).unwrap();
    symlink("dir", context.path().join("dirlink")).unwrap();
    let rootfs = context.rootfs(root, &[]);
    assert!(
        fs::symlink_metadata(rootfs.join("followed"))
            .unwrap()
            .is_file()
    );
    assert_eq!(fs::read_to_string(rootfs.join("followed")).unwrap(), "f\n");
    assert_eq!(
        fs::read_to_string(rootfs.join("followeddir/a.txt")).unwrap(),
        "a\n"
    );

    // A secret beside the context must never be reachable from it.
    let outside = context.dir.path().join("outside.txt");
    fs::write(&outside, "secret").unwrap();
    symlink(&outside, context.path().join("abslink")).unwrap();
    symlink("../outside.txt", context.path().join("rellink")).unwrap();
    for source in [
        "../outside.txt",
        "abslink",
        "rellink",
        "dir/../../outside.txt",
    ] {
        context.write("Dockerfile", &format!("FROM {BASE}\nCOPY {source} /x\n"));
        let output = context.build(root, &[]);
        let text = stderr(&output);
        assert!(!output.status.success(), "{source} was copied:\n{text}");
        assert!(
            text.contains("outside the build context"),
            "{source}:\n{text}"
        );
        assert!(text.contains("Dockerfile:2"), "{source}:\n{text}");
    }
}

#[test]
fn links_inside_copied_directories_stay_links_and_hard_links_stay_linked() {
    let Some(root) = shared_root() else { return };
    let context = tree_context(&format!("FROM {BASE}\nCOPY dir /d/\n"));
    let rootfs = context.rootfs(root, &[]);
    assert_eq!(
        fs::read_link(rootfs.join("d/link")).unwrap(),
        Path::new("a.txt")
    );
    let source = fs::symlink_metadata(context.path().join("dir/link")).unwrap();
    let copied = fs::symlink_metadata(rootfs.join("d/link")).unwrap();
    assert_eq!(copied.mtime(), source.mtime(), "a link keeps its mtime");
    let first = fs::metadata(rootfs.join("d/hard1")).unwrap();
    let second = fs::metadata(rootfs.join("d/hard2")).unwrap();
    assert_eq!((first.ino(), first.nlink()), (second.ino(), 2));
}

#[test]
fn copied_files_keep_mode_and_mtime_and_belong_to_root() {
    let Some(root) = shared_root() else { return };
    let context = tree_context(&format!("FROM {BASE}\nCOPY dir/a.txt file.txt /files/\n"));
    let source = context.path().join("dir/a.txt");
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_934_245);
    fs::File::options()
        .write(true)
        .open(&source)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::os::unix::fs::chown(&source, Some(1000), Some(1000)).unwrap();
    let rootfs = context.rootfs(root, &[]);
    let copied = fs::metadata(rootfs.join("files/a.txt")).unwrap();
    assert_eq!(copied.mode() & 0o7777, 0o600);
    assert_eq!(
        copied.modified().unwrap(),
        mtime,
        "BuildKit keeps mtimes to the nanosecond"
    );
    assert_eq!(owner(&rootfs.join("files/a.txt")), (0, 0));
    assert_eq!(owner(&rootfs.join("files")), (0, 0));
    assert_eq!(
        mode(&rootfs.join("files")),
        0o755,
        "created parents are 0755"
    );
}

/// Layer tars record whole seconds, truncated as containerd's tar writer (BuildKit's differ)
/// truncates them, so the image holds the second before the file's mtime; the snapshot a later
/// step runs on keeps the nanoseconds, as BuildKit's snapshots do. (BuildKit's `-o type=local`
/// copies its snapshot and so keeps nanoseconds; imgb's flattens the layer tars.)
#[test]
fn copied_files_keep_whole_second_mtimes_in_layers_and_nanoseconds_for_later_steps() {
    let Some(root) = shared_root() else { return };
    let context = tree_context(&format!(
        "FROM {BASE}\nCOPY file.txt /f\nRUN stat -c %y /f > /seen\n"
    ));
    let seconds = 1_577_934_245;
    fs::File::options()
        .write(true)
        .open(context.path().join("file.txt"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(seconds, 987_654_321))
        .unwrap();
    let rootfs = context.rootfs(root, &[]);
    assert_eq!(
        fs::metadata(rootfs.join("f")).unwrap().modified().unwrap(),
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds),
        "truncated, never rounded up"
    );
    let seen = fs::read_to_string(rootfs.join("seen")).unwrap();
    assert!(seen.contains("05.987654321"), "{seen}");
}

#[test]
fn heredoc_copy_writes_its_text() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\nARG NAME=world\n\
             COPY <<EOF /etc/greeting\nhello $NAME\nEOF\n\
             COPY <<'EOF' /etc/quoted\nhello $NAME\nEOF\n"
        ),
        &[],
    );
    let rootfs = context.rootfs(root, &[]);
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/greeting")).unwrap(),
        "hello world\n",
        "an unquoted delimiter expands build args"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/quoted")).unwrap(),
        "hello $NAME\n"
    );
    assert_eq!(mode(&rootfs.join("etc/greeting")), 0o644);
}
