use super::*;
use std::fs;
use std::os::unix::fs::symlink;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Two snapshots: the lower has /etc/passwd, /usr/bin/sh, /bin -> usr/bin, /a/{x,keep},
/// /d/{old}; the upper whites out /a/x, adds /a/y, makes /d opaque with /d/new, and adds
/// escaping symlinks.
fn stack(dir: &Path) -> LayeredView {
    let lower = dir.join("lower");
    let upper = dir.join("upper");
    for path in ["etc", "usr/bin", "a", "d"] {
        fs::create_dir_all(lower.join(path)).unwrap();
    }
    fs::write(lower.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(lower.join("usr/bin/sh"), "lower sh").unwrap();
    symlink("usr/bin", lower.join("bin")).unwrap();
    fs::write(lower.join("a/x"), "x").unwrap();
    fs::write(lower.join("a/keep"), "keep").unwrap();
    fs::write(lower.join("d/old"), "old").unwrap();

    for path in ["a", "d"] {
        fs::create_dir_all(upper.join(path)).unwrap();
    }
    fs::write(upper.join("a/y"), "y").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        upper.join("a/x"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    rustix::fs::lsetxattr(
        upper.join("d"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(upper.join("d/new"), "new").unwrap();
    symlink("/../../../etc", upper.join("escape")).unwrap();
    symlink("loop2", upper.join("loop1")).unwrap();
    symlink("loop1", upper.join("loop2")).unwrap();
    LayeredView::new(vec![lower, upper])
}

fn read(view: &LayeredView, path: &str) -> Option<String> {
    let entry = view.lookup(path, true).unwrap()?;
    let mut text = String::new();
    io::Read::read_to_string(&mut view.open(&entry).unwrap(), &mut text).unwrap();
    Some(text)
}

fn names(view: &LayeredView, dir: &str) -> Vec<String> {
    let entry = view.lookup(dir, true).unwrap().unwrap();
    view.read_dir(&entry)
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect()
}

#[test]
fn whiteouts_hide_lower_files_and_directories_merge() {
    if !is_root() {
        eprintln!("notice: whiteout tests need root (mknod, trusted xattrs); skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let view = stack(dir.path());
    assert_eq!(read(&view, "/a/x"), None);
    assert_eq!(read(&view, "/a/y").as_deref(), Some("y"));
    assert_eq!(read(&view, "/a/keep").as_deref(), Some("keep"));
    assert_eq!(names(&view, "/a"), vec!["/a/keep", "/a/y"]);
}

#[test]
fn opaque_directories_hide_lower_contents() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let view = stack(dir.path());
    assert_eq!(read(&view, "/d/old"), None);
    assert_eq!(names(&view, "/d"), vec!["/d/new"]);
}

#[test]
fn symlinks_resolve_inside_the_view() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let view = stack(dir.path());
    assert_eq!(read(&view, "/bin/sh").as_deref(), Some("lower sh"));
    let link = view.lookup("/bin", false).unwrap().unwrap();
    assert!(link.is_symlink());
    // An absolute target with `..` above the root stays inside the view.
    assert!(read(&view, "/escape/passwd").unwrap().starts_with("root:"));
    assert_eq!(
        view.lookup("/escape/passwd", true).unwrap().unwrap().path,
        "/etc/passwd"
    );
}

#[test]
fn symlink_loops_are_an_error_not_a_hang() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let view = stack(dir.path());
    assert!(matches!(
        view.lookup("/loop1", true),
        Err(ViewError::SymlinkLoop { .. })
    ));
    assert!(view.lookup("/loop1", false).unwrap().unwrap().is_symlink());
}

#[test]
fn file_used_as_directory_is_reported() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let view = stack(dir.path());
    assert!(matches!(
        view.lookup("/etc/passwd/x", true),
        Err(ViewError::NotADirectory { .. })
    ));
}

#[test]
fn empty_view_has_only_the_root() {
    let view = LayeredView::new(Vec::new());
    assert!(view.lookup("/anything", true).unwrap().is_none());
    let root = view.lookup("/", true).unwrap().unwrap();
    assert!(view.read_dir(&root).unwrap().is_empty());
}
