//! The overlay's upper directory → the step's layer, in overlayfs form: the store adopts the
//! directory as the layer's snapshot as it is, whiteout devices and opaque xattrs included
//! (the layer writer turns them into OCI whiteouts, see `imgb_cache::layer`).
//!
//! Runs after the container is gone (its mount namespace, and with it the overlay, no longer
//! exists), on a directory nothing else uses; it edits the directory in place: imgb's stubs
//! (paths created only to mount on) are removed, and so are directories that were copied up
//! only because a stub went into them — recognized as empty, not opaque, with the mode and
//! owner they had before (an mtime-only change to such a directory is lost).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use imgb_cache::OverlayXattrs;

use crate::resolve::Stubs;

/// Removes imgb's stubs (and the parents copied up only for them) from `upper`.
pub(crate) fn remove_stubs(upper: &Path, stubs: &Stubs, xattrs: OverlayXattrs) -> io::Result<()> {
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
        remove_stubs(upper, &stubs, OverlayXattrs::User).unwrap();
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
        remove_stubs(dir.path(), &stubs, OverlayXattrs::User).unwrap();
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
        remove_stubs(dir.path(), &stubs, OverlayXattrs::User).unwrap();
        assert!(dir.path().join("work/out").is_file());
    }
}
