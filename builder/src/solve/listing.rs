//! Context listings: the files a step selects from the build context, kept per selection digest
//! so that a later miss can name the files that changed instead of saying "context files
//! changed".
//!
//! A listing maps each selected path (relative to the context) to what a copy of it reproduces:
//! its type, permission bits and content digest (shortened: a listing only explains a miss, it
//! never decides one, so 64 bits tell changes apart well enough and keep it small). The
//! [`RecordStore`](crate::solve::RecordStore) keeps listings under `records/contexts/`, named by
//! the selection digest they belong to.
//!
//! Invariants:
//! - A listing is a pure function of the selection it is named by: two listings stored under
//!   the same name are equal, so writing one is idempotent and readers never see a mix.
//! - Directories are listed by type and mode only (their content shows in the entries below).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How many paths of each kind of change are named; the rest are counted.
pub const NAMED_PATHS: usize = 3;

/// The digest prefix a listing keeps of each file (hex digits).
const DIGEST_HEX_DIGITS: usize = 16;

/// Selected context paths → what a copy of each reproduces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContextListing {
    entries: BTreeMap<String, String>,
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

impl ContextListing {
    /// Adds `path`; `digest` (hex, any length) is ignored for directories. A path listed twice
    /// (two sources selecting it) keeps one entry: the same context gives it the same content.
    pub fn insert(&mut self, path: &str, kind: ListedKind, mode: u32, digest: &str) {
        let tag = match kind {
            ListedKind::File => 'f',
            ListedKind::Dir => 'd',
            ListedKind::Symlink => 'l',
            ListedKind::Other => 'o',
        };
        let digest = match kind {
            ListedKind::Dir => "",
            _ => digest.get(..DIGEST_HEX_DIGITS).unwrap_or(digest),
        };
        self.entries
            .insert(path.to_string(), format!("{tag}{mode:o}:{digest}"));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The paths added, removed and modified (contents, type or mode) since `earlier`.
    pub fn changes_from(&self, earlier: &ContextListing) -> FileChanges {
        let mut changes = FileChanges::default();
        for (path, now) in &self.entries {
            match earlier.entries.get(path) {
                None => changes.added.push(path),
                Some(before) if before != now => changes.modified.push(path),
                Some(_) => {}
            }
        }
        for path in earlier.entries.keys() {
            if !self.entries.contains_key(path) {
                changes.removed.push(path);
            }
        }
        changes
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
        let mut listing = ContextListing::default();
        for (path, kind, mode, digest) in entries {
            listing.insert(path, *kind, *mode, digest);
        }
        listing
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
            ("app", ListedKind::Dir, 0o755, "d2"),
            ("app/main.c", ListedKind::File, 0o644, "aaab"),
            ("app/new.c", ListedKind::File, 0o644, "dddd"),
            ("run.sh", ListedKind::File, 0o755, "cccc"),
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
        let mut after = ContextListing::default();
        for index in 0..10 {
            after.insert(&format!("f{index}"), ListedKind::File, 0o644, "aa");
        }
        let changes = after.changes_from(&before);
        assert_eq!(changes.added.count, 10);
        assert_eq!(changes.to_string(), "added f0, f1, f2 and 7 more");
    }

    #[test]
    fn a_file_turning_into_a_symlink_is_a_modification() {
        let before = listing(&[("conf", ListedKind::File, 0o644, "abc")]);
        let after = listing(&[("conf", ListedKind::Symlink, 0o777, "abc")]);
        assert_eq!(after.changes_from(&before).modified.first, ["conf"]);
    }

    #[test]
    fn listings_keep_short_digests_and_round_trip_as_json() {
        let listing = listing(&[(
            "a",
            ListedKind::File,
            0o600,
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )]);
        let json = serde_json::to_string(&listing).unwrap();
        assert_eq!(json, r#"{"a":"f600:0123456789abcdef"}"#);
        assert_eq!(
            serde_json::from_str::<ContextListing>(&json).unwrap(),
            listing
        );
    }
}
