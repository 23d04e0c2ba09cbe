//! Context listings: the files a step selects from the build context, kept per selection digest
//! so that a later miss can name the files that changed instead of saying "context files
//! changed".
//!
//! A listing holds each selected path (relative to the context) with what a copy of it
//! reproduces: its type, permission bits and content digest (shortened to 64 bits: a listing only
//! explains a miss, it never decides one, so that tells changes apart well enough and keeps it
//! small). The [`RecordStore`](crate::solve::RecordStore) keeps listings under
//! `records/contexts/`, named by the selection digest they belong to, in the binary form of
//! [`ContextListing::encode`].
//!
//! Invariants:
//! - Entries are sorted by path, each path once, so two listings compare in one merge pass.
//! - A listing is a pure function of the selection it is named by: two listings stored under
//!   the same name are equal, so writing one is idempotent and readers never see a mix.
//! - Directories are listed by type and mode only (their content shows in the entries below).

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How many paths of each kind of change are named; the rest are counted.
pub const NAMED_PATHS: usize = 3;

/// The first bytes of an encoded listing; a file without them is not one (or an older format).
const MAGIC: &[u8] = b"imgb-listing 1\n";

/// Bytes of an encoded entry before its path: kind, mode (u32 LE), digest prefix (u64 LE).
const ENTRY_HEADER: usize = 1 + 4 + 8;

/// Selected context paths and what a copy of each reproduces, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextListing {
    entries: Vec<ListedEntry>,
}

/// One selected path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    path: Box<str>,
    kind: ListedKind,
    mode: u32,
    /// The first 8 bytes of the content digest; 0 for directories.
    digest: u64,
}

/// What kind of file a listed path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListedKind {
    File,
    Dir,
    Symlink,
    /// A fifo, socket or device node.
    Other,
}

impl ListedKind {
    fn tag(self) -> u8 {
        match self {
            ListedKind::File => b'f',
            ListedKind::Dir => b'd',
            ListedKind::Symlink => b'l',
            ListedKind::Other => b'o',
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            b'f' => ListedKind::File,
            b'd' => ListedKind::Dir,
            b'l' => ListedKind::Symlink,
            b'o' => ListedKind::Other,
            _ => return None,
        })
    }
}

impl ListedEntry {
    /// `digest` (any length; its first 8 bytes are kept) is ignored for directories.
    pub fn new(path: &str, kind: ListedKind, mode: u32, digest: &[u8]) -> Self {
        let mut prefix = [0; 8];
        if kind != ListedKind::Dir {
            for (kept, byte) in prefix.iter_mut().zip(digest) {
                *kept = *byte;
            }
        }
        ListedEntry {
            path: path.into(),
            kind,
            mode,
            digest: u64::from_be_bytes(prefix),
        }
    }
}

impl FromIterator<ListedEntry> for ContextListing {
    /// Sorts the entries; a path listed twice (two sources selecting it) keeps one entry: the
    /// same context gives it the same content.
    fn from_iter<I: IntoIterator<Item = ListedEntry>>(entries: I) -> Self {
        let mut entries: Vec<ListedEntry> = entries.into_iter().collect();
        // Stable, so of duplicate paths the first listed stays; selections come in tree order,
        // which is close to sorted, and a stable sort is linear on sorted runs.
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries.dedup_by(|later, first| later.path == first.path);
        ContextListing { entries }
    }
}

impl ContextListing {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The stored form: [`MAGIC`], then per entry its kind tag, mode, digest prefix and path,
    /// NUL-terminated (a path never holds a NUL, while it may hold a newline).
    pub fn encode(&self) -> Vec<u8> {
        let paths: usize = self.entries.iter().map(|entry| entry.path.len()).sum();
        let mut bytes =
            Vec::with_capacity(MAGIC.len() + paths + self.entries.len() * (ENTRY_HEADER + 1));
        bytes.extend_from_slice(MAGIC);
        for entry in &self.entries {
            bytes.push(entry.kind.tag());
            bytes.extend_from_slice(&entry.mode.to_le_bytes());
            bytes.extend_from_slice(&entry.digest.to_le_bytes());
            bytes.extend_from_slice(entry.path.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    /// Reads what [`encode`](Self::encode) wrote; `None` for anything else, truncated or
    /// unsorted input included.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut rest = bytes.strip_prefix(MAGIC)?;
        let mut entries: Vec<ListedEntry> = Vec::new();
        while !rest.is_empty() {
            let (header, tail) = rest.split_first_chunk::<ENTRY_HEADER>()?;
            let (tag, header) = header.split_first()?;
            let (mode, digest) = header.split_first_chunk::<4>()?;
            let end = tail.iter().position(|&byte| byte == 0)?;
            let path = std::str::from_utf8(tail.get(..end)?).ok()?;
            if entries.last().is_some_and(|last| *last.path >= *path) {
                return None;
            }
            entries.push(ListedEntry {
                path: path.into(),
                kind: ListedKind::from_tag(*tag)?,
                mode: u32::from_le_bytes(*mode),
                digest: u64::from_le_bytes(digest.try_into().ok()?),
            });
            rest = tail.get(end + 1..)?;
        }
        Some(ContextListing { entries })
    }

    /// The paths added, removed and modified (contents, type or mode) since `earlier`.
    pub fn changes_from(&self, earlier: &ContextListing) -> FileChanges {
        let mut changes = FileChanges::default();
        let (mut now, mut before) = (
            self.entries.iter().peekable(),
            earlier.entries.iter().peekable(),
        );
        loop {
            match (now.peek(), before.peek()) {
                (Some(current), Some(old)) => match current.path.cmp(&old.path) {
                    Ordering::Less => {
                        changes.added.push(&current.path);
                        now.next();
                    }
                    Ordering::Greater => {
                        changes.removed.push(&old.path);
                        before.next();
                    }
                    Ordering::Equal => {
                        if current != old {
                            changes.modified.push(&current.path);
                        }
                        now.next();
                        before.next();
                    }
                },
                (Some(current), None) => {
                    changes.added.push(&current.path);
                    now.next();
                }
                (None, Some(old)) => {
                    changes.removed.push(&old.path);
                    before.next();
                }
                (None, None) => return changes,
            }
        }
    }
}

/// Context paths that differ between two listings: the first [`NAMED_PATHS`] of each kind by
/// name (in path order), all of them counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChanges {
    pub modified: PathSample,
    pub added: PathSample,
    pub removed: PathSample,
}

impl FileChanges {
    pub fn is_empty(&self) -> bool {
        self.modified.count == 0 && self.added.count == 0 && self.removed.count == 0
    }
}

/// The first few paths of a kind of change and how many there are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathSample {
    pub count: usize,
    pub first: Vec<String>,
}

impl PathSample {
    fn push(&mut self, path: &str) {
        self.count += 1;
        if self.first.len() < NAMED_PATHS {
            self.first.push(path.to_string());
        }
    }
}

impl fmt::Display for FileChanges {
    /// `modified app/main.c; added a, b, c and 4 more`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = [
            ("modified", &self.modified),
            ("added", &self.added),
            ("removed", &self.removed),
        ];
        let mut first = true;
        for (verb, sample) in kinds.into_iter().filter(|(_, sample)| sample.count > 0) {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{verb} {}", sample.first.join(", "))?;
            let rest = sample.count - sample.first.len();
            if rest > 0 {
                write!(f, " and {rest} more")?;
            }
        }
        if first {
            // Same paths, types, modes and contents: what changed is outside the listing
            // (the order of sources, or ownership after --chown).
            f.write_str("the same files, selected differently")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(entries: &[(&str, ListedKind, u32, &str)]) -> ContextListing {
        entries
            .iter()
            .map(|(path, kind, mode, digest)| {
                ListedEntry::new(path, *kind, *mode, digest.as_bytes())
            })
            .collect()
    }

    #[test]
    fn changes_name_modified_added_and_removed_paths() {
        let before = listing(&[
            ("app", ListedKind::Dir, 0o755, "d1"),
            ("app/main.c", ListedKind::File, 0o644, "aaaa"),
            ("app/old.c", ListedKind::File, 0o644, "bbbb"),
            ("run.sh", ListedKind::File, 0o644, "cccc"),
        ]);
        let after = listing(&[
            ("run.sh", ListedKind::File, 0o755, "cccc"),
            ("app", ListedKind::Dir, 0o755, "d2"),
            ("app/main.c", ListedKind::File, 0o644, "aaab"),
            ("app/new.c", ListedKind::File, 0o644, "dddd"),
        ]);
        let changes = after.changes_from(&before);
        assert_eq!(changes.modified.first, ["app/main.c", "run.sh"]);
        assert_eq!(changes.added.first, ["app/new.c"]);
        assert_eq!(changes.removed.first, ["app/old.c"]);
        assert_eq!(
            changes.to_string(),
            "modified app/main.c, run.sh; added app/new.c; removed app/old.c"
        );
        assert!(after.changes_from(&after).is_empty());
    }

    #[test]
    fn many_changes_name_the_first_few_and_count_the_rest() {
        let before = ContextListing::default();
        let after: ContextListing = (0..10)
            .map(|index| ListedEntry::new(&format!("f{index}"), ListedKind::File, 0o644, b"aa"))
            .collect();
        let changes = after.changes_from(&before);
        assert_eq!(changes.added.count, 10);
        assert_eq!(changes.to_string(), "added f0, f1, f2 and 7 more");
        assert_eq!(before.changes_from(&after).removed.count, 10);
    }

    #[test]
    fn a_file_turning_into_a_symlink_is_a_modification() {
        let before = listing(&[("conf", ListedKind::File, 0o644, "abc")]);
        let after = listing(&[("conf", ListedKind::Symlink, 0o777, "abc")]);
        assert_eq!(after.changes_from(&before).modified.first, ["conf"]);
    }

    #[test]
    fn a_path_selected_twice_is_listed_once() {
        let twice = listing(&[
            ("a", ListedKind::File, 0o644, "aaaa"),
            ("a", ListedKind::File, 0o644, "aaaa"),
        ]);
        assert_eq!(twice.len(), 1);
    }

    #[test]
    fn listings_round_trip_through_their_encoding_newlines_in_paths_included() {
        let listing = listing(&[
            ("a\nb", ListedKind::File, 0o600, "0123456789abcdef0123"),
            ("dir", ListedKind::Dir, 0o755, "ignored"),
            ("link", ListedKind::Symlink, 0o777, "target"),
        ]);
        let bytes = listing.encode();
        assert_eq!(ContextListing::decode(&bytes), Some(listing));
        assert_eq!(ContextListing::decode(b""), None);
        assert_eq!(ContextListing::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(
            ContextListing::decode(br#"{"a":"f600:0123456789abcdef"}"#),
            None
        );
    }
}
