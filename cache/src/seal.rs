//! Seals: the stat data of a snapshot's tree as it was stored, so a build can tell cheaply,
//! before it stacks or copies a snapshot, whether anything changed it since.
//!
//! A seal lists every entry below the snapshot's root in walk order (depth first, names sorted
//! bytewise): its path and its type and mode, owner, device number, size, mtime and inode.
//! Checking walks the tree again with `lstat` only (no content is read) and compares entry by
//! entry, streaming both sides, so memory stays bounded by one directory's listing. The first
//! difference is reported by path: an entry added, removed, or changed in named fields.
//!
//! Invariants:
//! - The root itself is left out: leases mark a snapshot as used by setting its mtime, and the
//!   rename into place changes its ctime; neither is in the layer's tar.
//! - ctime and the link count are left out: `COPY --from` shares a snapshot's files with the
//!   new layer by hard link (see the builder's file ops), which changes both. An edit that
//!   keeps size and mtime is therefore not seen here; it is caught when an export rebuilds and
//!   verifies the layer's tar.
//! - Equal trees give equal seals; a seal that cannot be parsed differs from every tree.

use std::cmp::Ordering;
use std::fmt;
use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Longest path a seal record may hold; longer lengths mean the seal file is damaged.
const MAX_PATH_BYTES: usize = 64 * 1024;

/// What a seal keeps of one entry, besides its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ino: u64,
}

const STAT_BYTES: usize = 4 * 3 + 8 * 5;

impl Stat {
    fn of(metadata: &Metadata) -> Self {
        Self {
            mode: metadata.mode(),
            uid: metadata.uid(),
            gid: metadata.gid(),
            rdev: metadata.rdev(),
            size: metadata.size(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
            ino: metadata.ino(),
        }
    }

    fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }

    fn encode(&self) -> [u8; STAT_BYTES] {
        let mut out = [0u8; STAT_BYTES];
        let fields = [
            &self.mode.to_le_bytes()[..],
            &self.uid.to_le_bytes(),
            &self.gid.to_le_bytes(),
            &self.rdev.to_le_bytes(),
            &self.size.to_le_bytes(),
            &self.mtime.to_le_bytes(),
            &self.mtime_nsec.to_le_bytes(),
            &self.ino.to_le_bytes(),
        ];
        let mut at = 0;
        for field in fields {
            out[at..at + field.len()].copy_from_slice(field);
            at += field.len();
        }
        out
    }

    fn decode(bytes: &[u8; STAT_BYTES]) -> Self {
        let mut at = 0;
        let mut take = |len: usize| {
            let mut field = [0u8; 8];
            field[..len].copy_from_slice(&bytes[at..at + len]);
            at += len;
            u64::from_le_bytes(field)
        };
        Self {
            mode: take(4) as u32,
            uid: take(4) as u32,
            gid: take(4) as u32,
            rdev: take(8),
            size: take(8),
            mtime: take(8) as i64,
            mtime_nsec: take(8) as i64,
            ino: take(8),
        }
    }

    /// The names of the fields that differ between `self` and `other`.
    fn changed_fields(&self, other: &Self) -> Vec<&'static str> {
        [
            (self.mode & 0o170000 != other.mode & 0o170000, "type"),
            (self.mode & 0o7777 != other.mode & 0o7777, "mode"),
            ((self.uid, self.gid) != (other.uid, other.gid), "owner"),
            (self.rdev != other.rdev, "device number"),
            (self.size != other.size, "size"),
            (
                (self.mtime, self.mtime_nsec) != (other.mtime, other.mtime_nsec),
                "mtime",
            ),
            (self.ino != other.ino, "inode"),
        ]
        .into_iter()
        .filter_map(|(differs, name)| differs.then_some(name))
        .collect()
    }
}

/// The entries below a root, depth first with names sorted bytewise, as (relative path, stat).
struct TreeWalk {
    root: PathBuf,
    /// Entries still to visit, the next one last.
    pending: Vec<(Vec<u8>, Stat)>,
}

impl TreeWalk {
    fn new(root: &Path) -> io::Result<Self> {
        let mut walk = Self {
            root: root.to_owned(),
            pending: Vec::new(),
        };
        walk.push_children(Vec::new())?;
        Ok(walk)
    }

    fn push_children(&mut self, dir: Vec<u8>) -> io::Result<()> {
        let path = self.root.join(std::ffi::OsStr::from_bytes(&dir));
        let mut children = fs::read_dir(path)?
            .map(|entry| {
                let entry = entry?;
                let mut child = dir.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(entry.file_name().as_bytes());
                Ok((child, Stat::of(&entry.metadata()?)))
            })
            .collect::<io::Result<Vec<_>>>()?;
        children.sort_by(|(a, _), (b, _)| b.cmp(a));
        self.pending.extend(children);
        Ok(())
    }
}

impl Iterator for TreeWalk {
    type Item = io::Result<(Vec<u8>, Stat)>;

    fn next(&mut self) -> Option<Self::Item> {
        let (path, stat) = self.pending.pop()?;
        if stat.is_dir()
            && let Err(error) = self.push_children(path.clone())
        {
            return Some(Err(error));
        }
        Some(Ok((path, stat)))
    }
}

/// Writes the seal of the tree at `root` to `out`.
pub(crate) fn write_seal(root: &Path, mut out: impl Write) -> io::Result<()> {
    for entry in TreeWalk::new(root)? {
        let (path, stat) = entry?;
        let length = u32::try_from(path.len()).map_err(io::Error::other)?;
        out.write_all(&length.to_le_bytes())?;
        out.write_all(&path)?;
        out.write_all(&stat.encode())?;
    }
    out.flush()
}

/// How a tree differs from its seal, at the first entry that does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealDifference {
    /// The entry's path below the snapshot root (empty when the seal itself is unusable).
    pub path: String,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    /// The fields that differ (type, mode, owner, device number, size, mtime, inode).
    Changed(Vec<&'static str>),
    /// The seal is missing or damaged, so nothing vouches for the tree.
    NoSeal,
}

impl fmt::Display for SealDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = &self.path;
        match &self.change {
            Change::Added => write!(f, "/{path} was added"),
            Change::Removed => write!(f, "/{path} was removed"),
            Change::Changed(fields) => write!(f, "/{path} changed ({})", fields.join(", ")),
            Change::NoSeal => f.write_str("it has no readable seal"),
        }
    }
}

/// Reads the next record of a seal: `None` at its end, `Err` when it is damaged.
fn next_record(seal: &mut impl Read) -> Result<Option<(Vec<u8>, Stat)>, ()> {
    let mut length = [0u8; 4];
    match seal.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(_) => return Err(()),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_PATH_BYTES {
        return Err(());
    }
    let mut path = vec![0u8; length];
    let mut stat = [0u8; STAT_BYTES];
    seal.read_exact(&mut path).map_err(drop)?;
    seal.read_exact(&mut stat).map_err(drop)?;
    Ok(Some((path, Stat::decode(&stat))))
}

/// Walk order of two paths: component by component, as [`TreeWalk`] visits them.
fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&byte| byte == b'/')
        .cmp(b.split(|&byte| byte == b'/'))
}

/// The first way the tree at `root` differs from `seal`, or `None` when it matches.
pub(crate) fn first_difference(
    root: &Path,
    mut seal: impl Read,
) -> io::Result<Option<SealDifference>> {
    let difference = |path: &[u8], change| SealDifference {
        path: String::from_utf8_lossy(path).into_owned(),
        change,
    };
    let no_seal = || Ok(Some(difference(b"", Change::NoSeal)));
    let mut walk = TreeWalk::new(root)?;
    let Ok(mut sealed) = next_record(&mut seal) else {
        return no_seal();
    };
    // A directory whose only change is its mtime had an entry added or removed: that entry,
    // found further on, is the better name for the change.
    let mut changed_dir = None;
    loop {
        let found = walk.next().transpose()?;
        let (expected, actual) = match (sealed, found) {
            (None, None) => return Ok(changed_dir),
            (Some((path, _)), None) => return Ok(Some(difference(&path, Change::Removed))),
            (None, Some((path, _))) => return Ok(Some(difference(&path, Change::Added))),
            (Some(expected), Some(actual)) => (expected, actual),
        };
        match walk_order(&expected.0, &actual.0) {
            Ordering::Less => return Ok(Some(difference(&expected.0, Change::Removed))),
            Ordering::Greater => return Ok(Some(difference(&actual.0, Change::Added))),
            Ordering::Equal if expected.1 != actual.1 => {
                let fields = expected.1.changed_fields(&actual.1);
                let only_mtime = fields == ["mtime"];
                let change = difference(&actual.0, Change::Changed(fields));
                if !(actual.1.is_dir() && only_mtime) {
                    return Ok(Some(change));
                }
                changed_dir.get_or_insert(change);
            }
            Ordering::Equal => {}
        }
        let Ok(next) = next_record(&mut seal) else {
            return no_seal();
        };
        sealed = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::create_dir_all(dir.path().join("a-b")).unwrap();
        fs::write(dir.path().join("a/b/file"), b"content").unwrap();
        fs::write(dir.path().join("a/z"), b"z").unwrap();
        fs::write(dir.path().join("a-b/y"), b"y").unwrap();
        std::os::unix::fs::symlink("a/z", dir.path().join("link")).unwrap();
        dir
    }

    fn seal_of(root: &Path) -> Vec<u8> {
        let mut seal = Vec::new();
        write_seal(root, &mut seal).unwrap();
        seal
    }

    fn difference(root: &Path, seal: &[u8]) -> Option<SealDifference> {
        first_difference(root, seal).unwrap()
    }

    #[test]
    fn an_unchanged_tree_matches_its_seal_and_reading_it_changes_nothing() {
        let dir = tree();
        let seal = seal_of(dir.path());
        assert_eq!(difference(dir.path(), &seal), None);
        fs::read(dir.path().join("a/b/file")).unwrap();
        // The root's own mtime is a lease's last-use mark, not content.
        filetime_touch(dir.path());
        assert_eq!(difference(dir.path(), &seal), None);
        assert_eq!(seal_of(dir.path()), seal);
    }

    fn filetime_touch(path: &Path) {
        fs::File::open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
    }

    #[test]
    fn each_kind_of_change_is_named_with_its_path() {
        let dir = tree();
        let seal = seal_of(dir.path());

        fs::write(dir.path().join("a/b/file"), b"CONTENT-longer").unwrap();
        let found = difference(dir.path(), &seal).unwrap();
        assert_eq!(found.path, "a/b/file");
        assert!(
            matches!(&found.change, Change::Changed(fields) if fields.contains(&"size")),
            "{found}"
        );
        let seal = seal_of(dir.path());

        fs::set_permissions(dir.path().join("a/z"), fs::Permissions::from_mode(0o600)).unwrap();
        let found = difference(dir.path(), &seal).unwrap();
        assert_eq!(found.to_string(), "/a/z changed (mode)");
        let seal = seal_of(dir.path());

        // Removing a file also changes its directory's mtime; the file is what is named.
        fs::remove_file(dir.path().join("a/z")).unwrap();
        let found = difference(dir.path(), &seal).unwrap();
        assert_eq!(found.to_string(), "/a/z was removed");
        let seal = seal_of(dir.path());

        fs::write(dir.path().join("a-b/new"), b"n").unwrap();
        let found = difference(dir.path(), &seal).unwrap();
        assert_eq!(found.to_string(), "/a-b/new was added");
        let seal = seal_of(dir.path());

        filetime_touch(&dir.path().join("a-b"));
        let found = difference(dir.path(), &seal).unwrap();
        assert_eq!(found.to_string(), "/a-b changed (mtime)");
    }

    #[test]
    fn additions_and_removals_are_told_apart_by_walk_order() {
        let dir = tree();
        let seal = seal_of(dir.path());
        let parent = dir.path().join("a");
        fs::write(parent.join("c"), b"c").unwrap();
        let found = difference(dir.path(), &seal).unwrap();
        assert_eq!(
            (found.path.as_str(), &found.change),
            ("a/c", &Change::Added)
        );

        let seal = seal_of(dir.path());
        fs::remove_file(parent.join("c")).unwrap();
        let found = difference(dir.path(), &seal).unwrap();
        assert_eq!(
            (found.path.as_str(), &found.change),
            ("a/c", &Change::Removed)
        );
    }

    #[test]
    fn a_damaged_or_missing_seal_matches_nothing() {
        let dir = tree();
        let mut seal = seal_of(dir.path());
        seal.truncate(seal.len() - 3);
        assert_eq!(
            difference(dir.path(), &seal).unwrap().change,
            Change::NoSeal
        );
        let found = difference(dir.path(), &[0xff; 8]).unwrap();
        assert_eq!(found.change, Change::NoSeal);
        let found = difference(dir.path(), &[]).unwrap();
        assert_eq!(
            found.change,
            Change::Added,
            "an empty seal is an empty tree"
        );
    }
}
