//! The overlay's upper directory → what the layer writer takes: the directory itself plus the
//! deletions and opaque directories, in OCI terms.
//!
//! Runs after the container is gone (its mount namespace, and with it the overlay, no longer
//! exists), on a directory nothing else uses; it edits the directory in place:
//! - imgb's stubs (paths created only to mount on) are removed, and so are directories that
//!   were copied up only because a stub went into them — recognized as empty, not opaque, with
//!   the mode and owner they had before (an mtime-only change to such a directory is lost);
//! - overlay whiteouts (0:0 character devices) are removed and become deleted paths;
//! - directories marked opaque (`trusted.overlay.opaque=y`, or `user.` for `userxattr`
//!   mounts) are listed as opaque; the marker xattr itself never reaches the layer.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use imgb_cache::{LayerChanges, OverlayXattrs};

use crate::resolve::Stubs;

/// Removes imgb's stubs from `upper` and collects its whiteouts and opaque directories.
pub(crate) fn prepare_upper(
    upper: &Path,
    stubs: &Stubs,
    xattrs: OverlayXattrs,
) -> io::Result<LayerChanges> {
    remove_stubs(upper, stubs, xattrs)?;
    let mut changes = LayerChanges::default();
    collect(upper, &mut PathBuf::new(), xattrs, &mut changes)?;
    Ok(changes)
}

fn remove_stubs(upper: &Path, stubs: &Stubs, xattrs: OverlayXattrs) -> io::Result<()> {
    for stub in stubs.created.iter().rev() {
        let path = upper.join(stub);
        let Some(meta) = metadata(&path)? else {
            continue;
        };
        if meta.is_file() && meta.len() == 0 {
            fs::remove_file(&path)?;
        } else if meta.is_dir() {
            remove_if_empty(&path)?;
        }
    }
    let mut parents: Vec<_> = stubs.parents.iter().collect();
    // Deepest first, so that a parent emptied by its child's removal goes too.
    parents.sort_by_key(|parent| std::cmp::Reverse(parent.path.components().count()));
    for parent in parents {
        let path = upper.join(&parent.path);
        let Some(meta) = metadata(&path)? else {
            continue;
        };
        let unchanged = meta.is_dir()
            && meta.mode() & 0o7777 == parent.mode
            && meta.uid() == parent.uid
            && meta.gid() == parent.gid
            && !is_opaque(&path, xattrs)?;
        if unchanged {
            remove_if_empty(&path)?;
        }
    }
    Ok(())
}

fn metadata(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

fn remove_if_empty(path: &Path) -> io::Result<()> {
    match fs::remove_dir(path) {
        Err(error) if error.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
        other => other,
    }
}

fn is_opaque(path: &Path, xattrs: OverlayXattrs) -> io::Result<bool> {
    let mut value = [0u8; 4];
    match rustix::fs::lgetxattr(path, xattrs.opaque_name(), &mut value) {
        Ok(len) => Ok(value.get(..len) == Some(b"y")),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => Ok(false),
        Err(errno) => Err(io::Error::new(
            io::Error::from(errno).kind(),
            format!(
                "reading {} of {}: {errno}",
                xattrs.opaque_name(),
                path.display()
            ),
        )),
    }
}

/// Walks `dir` (at `relative` inside the upper directory), removing whiteouts as it lists them.
fn collect(
    dir: &Path,
    relative: &mut PathBuf,
    xattrs: OverlayXattrs,
    changes: &mut LayerChanges,
) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        relative.push(entry.file_name());
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            fs::remove_file(&path)?;
            changes.deleted.push(relative.clone());
        } else if meta.is_dir() {
            if is_opaque(&path, xattrs)? {
                changes.opaque_dirs.push(relative.clone());
            }
            collect(&path, relative, xattrs, changes)?;
        }
        relative.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::StubParent;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stubs_and_their_copied_up_parents_go_but_real_changes_stay() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::set_permissions(upper.join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(upper.join("etc/hosts"), b"").unwrap();
        fs::create_dir_all(upper.join("proc")).unwrap();
        fs::create_dir_all(upper.join("mnt/cache")).unwrap();
        fs::write(upper.join("mnt/kept"), b"step output").unwrap();
        let meta = fs::metadata(upper.join("etc")).unwrap();
        let stubs = Stubs {
            created: vec!["etc/hosts".into(), "proc".into(), "mnt/cache".into()],
            parents: vec![
                StubParent {
                    path: "etc".into(),
                    mode: 0o755,
                    uid: meta.uid(),
                    gid: meta.gid(),
                },
                StubParent {
                    path: "mnt".into(),
                    mode: 0o755,
                    uid: meta.uid(),
                    gid: meta.gid(),
                },
            ],
        };
        let changes = prepare_upper(upper, &stubs, OverlayXattrs::User).unwrap();
        assert_eq!(changes, LayerChanges::default());
        let mut left: Vec<_> = fs::read_dir(upper)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["mnt"]);
        assert!(upper.join("mnt/kept").exists());
    }

    #[test]
    fn copied_up_parent_whose_mode_changed_is_a_real_change() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::set_permissions(dir.path().join("etc"), fs::Permissions::from_mode(0o700)).unwrap();
        let meta = fs::metadata(dir.path().join("etc")).unwrap();
        let stubs = Stubs {
            created: vec![],
            parents: vec![StubParent {
                path: "etc".into(),
                mode: 0o755,
                uid: meta.uid(),
                gid: meta.gid(),
            }],
        };
        prepare_upper(dir.path(), &stubs, OverlayXattrs::User).unwrap();
        assert!(dir.path().join("etc").is_dir());
    }

    #[test]
    fn stub_that_the_step_filled_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("work")).unwrap();
        fs::write(dir.path().join("work/out"), b"x").unwrap();
        let stubs = Stubs {
            created: vec!["work".into()],
            parents: vec![],
        };
        prepare_upper(dir.path(), &stubs, OverlayXattrs::User).unwrap();
        assert!(dir.path().join("work/out").is_file());
    }
}
