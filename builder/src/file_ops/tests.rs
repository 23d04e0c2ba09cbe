use super::*;
use crate::context::{IncludeAll, hash_context};
use std::os::unix::fs::symlink;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn copy(input: usize, sources: &[&str], dest: &str) -> FileAction {
    FileAction::Copy {
        input,
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.to_string(),
        owner: None,
        mode: None,
        link: false,
        parents: false,
        exclude: Vec::new(),
        unpack_archives: false,
    }
}

/// A context with `a.txt`, `dir/{b.txt,sub/c.txt}`, `dir/b-again.txt` (a hard link to
/// `dir/b.txt`), `dir/link -> b.txt`, `run.sh` (0755).
fn context(dir: &Path) -> PathBuf {
    let root = dir.join("context");
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("a.txt"), "a").unwrap();
    fs::write(root.join("dir/b.txt"), "b").unwrap();
    fs::hard_link(root.join("dir/b.txt"), root.join("dir/b-again.txt")).unwrap();
    fs::write(root.join("dir/sub/c.txt"), "c").unwrap();
    symlink("b.txt", root.join("dir/link")).unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// A base image: `/etc/passwd` naming `app` (1000, primary group 60) and `/etc/group` naming
/// `staff` (50), `/srv -> /data` with `/data` a directory owned by 7:7, `/filelink ->
/// data/file`, and the dangling `/dangling -> ../../gone`.
fn base(dir: &Path) -> LayeredView {
    let layer = dir.join("base");
    fs::create_dir_all(layer.join("etc")).unwrap();
    fs::create_dir_all(layer.join("data")).unwrap();
    fs::write(
        layer.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1000:60::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(layer.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
    symlink("/data", layer.join("srv")).unwrap();
    symlink("../../gone", layer.join("dangling")).unwrap();
    fs::write(layer.join("data/file"), "old").unwrap();
    symlink("data/file", layer.join("filelink")).unwrap();
    rustix::fs::chown(
        layer.join("data"),
        Some(rustix::fs::Uid::from_raw(7)),
        Some(rustix::fs::Gid::from_raw(7)),
    )
    .unwrap();
    LayeredView::new(vec![layer])
}

/// Applies `actions` with the fixture context as input 1 and returns the upper dir.
fn try_run(actions: &[FileAction], dir: &Path) -> Result<PathBuf, FileOpError> {
    let hashed = hash_context(&context(dir), &IncludeAll, None).unwrap();
    let upper = dir.join("upper");
    fs::create_dir(&upper).unwrap();
    let inputs = [None, Some(SourceRoot::Context(&hashed))];
    apply_file_actions(actions, &base(dir), &inputs, &upper, ApplyLimits::default()).map(|()| upper)
}

fn run(actions: &[FileAction], dir: &Path) -> PathBuf {
    try_run(actions, dir).unwrap_or_else(|e| panic!("{e}"))
}

fn owner_of(path: &Path) -> (u32, u32) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

#[test]
fn copying_a_directory_copies_its_contents_and_links_stay_links() {
    if !is_root() {
        eprintln!("notice: file-op tests need root (chown); skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = run(&[copy(1, &["dir"], "/app")], dir.path());
    assert_eq!(fs::read_to_string(upper.join("app/b.txt")).unwrap(), "b");
    assert_eq!(
        fs::read_to_string(upper.join("app/sub/c.txt")).unwrap(),
        "c"
    );
    assert_eq!(
        fs::read_link(upper.join("app/link")).unwrap(),
        Path::new("b.txt")
    );
    assert!(
        !upper.join("app/dir").exists(),
        "the directory itself is not copied"
    );
}

#[test]
fn file_into_a_trailing_slash_destination_keeps_its_name_and_mode() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = run(&[copy(1, &["run.sh", "a.txt"], "/bin/")], dir.path());
    assert_eq!(
        fs::metadata(upper.join("bin/run.sh")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(fs::read_to_string(upper.join("bin/a.txt")).unwrap(), "a");
    assert_eq!(owner_of(&upper.join("bin/a.txt")), (0, 0));
}

#[test]
fn file_to_a_new_path_is_renamed() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = run(&[copy(1, &["a.txt"], "/renamed")], dir.path());
    assert_eq!(fs::read_to_string(upper.join("renamed")).unwrap(), "a");
}

#[test]
fn several_sources_need_a_directory_destination() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let error = try_run(&[copy(1, &["a.txt", "run.sh"], "/file")], dir.path()).unwrap_err();
    assert!(
        matches!(error, FileOpError::DestinationNotDirectory),
        "{error}"
    );
}

#[test]
fn destination_through_a_symlink_in_the_base_lands_at_its_target() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = run(&[copy(1, &["a.txt"], "/srv/")], dir.path());
    assert_eq!(fs::read_to_string(upper.join("data/a.txt")).unwrap(), "a");
    assert!(
        !upper.join("srv").exists(),
        "the base's symlink is not replaced"
    );
    assert_eq!(
        owner_of(&upper.join("data")),
        (7, 7),
        "existing parents keep the base's owner"
    );
}

#[test]
fn destination_through_a_dangling_symlink_creates_its_target_inside_the_root() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = run(&[copy(1, &["a.txt"], "/dangling/a.txt")], dir.path());
    assert_eq!(fs::read_to_string(upper.join("gone/a.txt")).unwrap(), "a");
    assert!(
        fs::symlink_metadata(upper.join("dangling")).is_err(),
        "the base's symlink is not replaced"
    );
}

#[test]
fn destinations_that_are_symlinks_in_the_base_are_written_through() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = run(
        &[copy(1, &["a.txt"], "/filelink"), copy(1, &["dir"], "/srv")],
        dir.path(),
    );
    assert_eq!(fs::read_to_string(upper.join("data/file")).unwrap(), "a");
    assert_eq!(fs::read_to_string(upper.join("data/b.txt")).unwrap(), "b");
    for link in ["filelink", "srv"] {
        assert!(
            fs::symlink_metadata(upper.join(link)).is_err(),
            "the base's {link} is not replaced"
        );
    }
}

#[test]
fn chown_names_resolve_in_the_base_and_chmod_applies() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut action = copy(1, &["dir"], "/home/app/");
    if let FileAction::Copy { owner, mode, .. } = &mut action {
        *owner = Some(Owner {
            user: "app".into(),
            group: Some("staff".into()),
        });
        *mode = Some("u=rw,go=r".into());
    }
    let upper = run(&[action], dir.path());
    assert_eq!(owner_of(&upper.join("home/app/b.txt")), (1000, 50));
    assert_eq!(
        fs::metadata(upper.join("home/app/b.txt")).unwrap().mode() & 0o7777,
        0o644
    );
    assert_eq!(
        owner_of(&upper.join("home")),
        (1000, 50),
        "created parents get the --chown owner"
    );
}

#[test]
fn chown_user_name_without_group_takes_the_users_primary_group() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let by_name = |user: &str, dest: &str| {
        let mut action = copy(1, &["a.txt"], dest);
        if let FileAction::Copy { owner, .. } = &mut action {
            *owner = Some(Owner {
                user: user.into(),
                group: None,
            });
        }
        action
    };
    let upper = run(
        &[by_name("app", "/named"), by_name("1234", "/numeric")],
        dir.path(),
    );
    assert_eq!(owner_of(&upper.join("named")), (1000, 60));
    assert_eq!(owner_of(&upper.join("numeric")), (1234, 1234));
}

#[test]
fn unknown_chown_user_is_an_error_naming_it() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut action = copy(1, &["a.txt"], "/x");
    if let FileAction::Copy { owner, .. } = &mut action {
        *owner = Some(Owner {
            user: "nobody-here".into(),
            group: None,
        });
    }
    let error = try_run(&[action], dir.path()).unwrap_err();
    assert!(error.to_string().contains("nobody-here"), "{error}");
}

#[test]
fn exclude_patterns_leave_files_out() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut action = copy(1, &["dir"], "/app");
    if let FileAction::Copy { exclude, .. } = &mut action {
        *exclude = vec!["sub".into()];
    }
    let upper = run(&[action], dir.path());
    assert!(upper.join("app/b.txt").exists());
    assert!(!upper.join("app/sub").exists());
}

#[test]
fn parents_keep_the_source_path() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut action = copy(1, &["dir/sub/c.txt"], "/out/");
    if let FileAction::Copy { parents, .. } = &mut action {
        *parents = true;
    }
    let upper = run(&[action], dir.path());
    assert_eq!(
        fs::read_to_string(upper.join("out/dir/sub/c.txt")).unwrap(),
        "c"
    );
}

#[test]
fn writes_and_mkdirs() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = run(
        &[
            FileAction::Mkdir {
                path: "/work/dir".into(),
                mode: 0o755,
                owner: Some(Owner {
                    user: "app".into(),
                    group: None,
                }),
            },
            FileAction::Write {
                path: "/work/dir/hello".into(),
                data: "hi\n".into(),
                mode: 0o600,
                owner: None,
            },
        ],
        dir.path(),
    );
    assert_eq!(owner_of(&upper.join("work/dir")), (1000, 60));
    assert_eq!(
        fs::read_to_string(upper.join("work/dir/hello")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        fs::metadata(upper.join("work/dir/hello")).unwrap().mode() & 0o777,
        0o600
    );
}

#[test]
fn copy_from_another_stage_keeps_owners() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join("stage");
    fs::create_dir_all(stage.join("out")).unwrap();
    fs::write(stage.join("out/bin"), "binary").unwrap();
    rustix::fs::chown(
        stage.join("out/bin"),
        Some(rustix::fs::Uid::from_raw(5)),
        Some(rustix::fs::Gid::from_raw(6)),
    )
    .unwrap();
    let upper = dir.path().join("upper");
    fs::create_dir(&upper).unwrap();
    let inputs = [None, Some(SourceRoot::View(LayeredView::new(vec![stage])))];
    apply_file_actions(
        &[copy(1, &["/out/bin"], "/usr/local/bin/")],
        &base(dir.path()),
        &inputs,
        &upper,
        ApplyLimits::default(),
    )
    .unwrap();
    assert_eq!(owner_of(&upper.join("usr/local/bin/bin")), (5, 6));
}

#[test]
fn symbolic_modes_follow_chmod() {
    let change = parse_mode("u+x,g-w,o=").unwrap();
    assert_eq!(change.apply(0o664, false), 0o740);
    let exec_if_dir = parse_mode("a+X").unwrap();
    assert_eq!(exec_if_dir.apply(0o644, false), 0o644);
    assert_eq!(exec_if_dir.apply(0o644, true), 0o755);
    assert!(parse_mode("q+x").is_err());
}

#[test]
fn hard_linked_sources_stay_hard_linked_in_the_copy() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = run(&[copy(1, &["dir"], "/app")], dir.path());
    let first = fs::metadata(upper.join("app/b.txt")).unwrap();
    let second = fs::metadata(upper.join("app/b-again.txt")).unwrap();
    assert_eq!(first.ino(), second.ino());
    assert_eq!(first.nlink(), 2);
}

#[test]
fn copied_symlinks_keep_their_mtime() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = run(&[copy(1, &["dir"], "/app")], dir.path());
    let source = fs::symlink_metadata(dir.path().join("context/dir/link")).unwrap();
    let copied = fs::symlink_metadata(upper.join("app/link")).unwrap();
    assert_eq!(
        (copied.mtime(), copied.mtime_nsec()),
        (source.mtime(), source.mtime_nsec())
    );
}

/// ADD of context sources: archives are extracted.
fn add(sources: &[&str], dest: &str, owner: Option<&str>) -> FileAction {
    FileAction::Copy {
        input: 1,
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.to_string(),
        owner: owner.map(|user| Owner {
            user: user.to_string(),
            group: None,
        }),
        mode: None,
        link: false,
        parents: false,
        exclude: Vec::new(),
        unpack_archives: true,
    }
}

/// `app.tar` in the fixture context: `bin/tool` (0750, owned 3:4) and `share/` (0700).
fn write_archive(dir: &Path) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o700);
    header.set_size(0);
    builder
        .append_data(&mut header, "share/", io::empty())
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_mode(0o750);
    header.set_uid(3);
    header.set_gid(4);
    header.set_size(4);
    builder
        .append_data(&mut header, "bin/tool", &b"tool"[..])
        .unwrap();
    let context = dir.join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(context.join("app.tar"), builder.into_inner().unwrap()).unwrap();
    fs::write(context.join("fake.tar.gz"), "not an archive").unwrap();
}

#[test]
fn add_extracts_a_local_archive_through_base_symlinks_keeping_entry_metadata() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_archive(dir.path());
    let upper = run(
        &[add(&["app.tar", "fake.tar.gz"], "/srv/", None)],
        dir.path(),
    );
    let tool = upper.join("data/bin/tool");
    assert_eq!(fs::read_to_string(&tool).unwrap(), "tool");
    assert_eq!(owner_of(&tool), (3, 4), "entries keep their owners");
    let mode = |path: &Path| fs::metadata(path).unwrap().mode() & 0o7777;
    assert_eq!(mode(&tool), 0o750);
    assert_eq!(mode(&upper.join("data/share")), 0o700);
    assert_eq!(
        owner_of(&upper.join("data")),
        (7, 7),
        "copied up from the base"
    );
    assert!(
        !upper.join("srv").exists(),
        "the base's symlink is followed"
    );
    assert_eq!(
        fs::read_to_string(upper.join("data/fake.tar.gz")).unwrap(),
        "not an archive",
        "a file that only has an archive's name is copied as is"
    );
}

#[test]
fn add_chown_owns_extracted_entries_and_new_destination_directories() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_archive(dir.path());
    let upper = run(&[add(&["app.tar"], "/opt/app", Some("app"))], dir.path());
    // `app` is 1000 with primary group 60 in the fixture's /etc/passwd.
    for path in ["opt/app/bin/tool", "opt/app", "opt"] {
        assert_eq!(owner_of(&upper.join(path)), (1000, 60), "{path}");
    }
}

#[test]
fn add_without_unpacking_copies_the_archive_as_a_file() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_archive(dir.path());
    let upper = run(&[copy(1, &["app.tar"], "/opt/")], dir.path());
    assert!(upper.join("opt/app.tar").is_file());
    assert!(!upper.join("opt/bin").exists());
}
