//! Cache records: one file per key under the state directory's `records/`, mapping the key to
//! the result a step produced, plus `records/by-name/`, which remembers the last key of each
//! step position so that a miss can be explained against it.
//!
//! ```text
//! records/<key hex>               {"version", "key", "name", "explanation", "result"}
//! records/by-name/<position hex>  the last key solved at that position
//! records/contexts/<selection hex> the context listing of a selection digest (see `listing`)
//! ```
//!
//! Invariants:
//! - Every file is written to the store's `tmp/` and renamed into place: readers see a whole
//!   file or none. Records are fsynced (file and directory) before and after the rename; the
//!   by-name index and the context listings are advisory (they only sharpen explanations) and
//!   skip the fsyncs to keep cache hits cheap; a listing is named by its selection digest and
//!   never rewritten.
//! - A record is written only after every blob its result names is in the store
//!   ([`RecordStore::write`] checks), so a killed build never leaves a record that points at a
//!   missing or partial layer.
//! - A record that names a missing blob, or that cannot be read, is a miss and is removed — but
//!   only if the file is still the one that was read, so a fresh record another process renamed
//!   into place meanwhile survives. Losing a record costs a rebuild, never a wrong result.
//! - Concurrent imgb processes may write the same key: each rename is atomic and every version
//!   is a valid result for the key, so the last one simply wins.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use imgb_cache::{Digest, Durability, RecordRef, Resource, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::solve::key::{CacheKey, Change, ChangeDetail, INSTRUCTION, KeyExplanation};
use crate::solve::listing::ContextListing;
use crate::solve::result::Solved;

/// The format of record files.
pub const RECORD_VERSION: u32 = 1;

const BY_NAME: &str = "by-name";
const CONTEXTS: &str = "contexts";

/// What a step produced for a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub key: CacheKey,
    /// The step's name when it was recorded, shown when the same step later misses.
    pub name: String,
    pub explanation: KeyExplanation,
    pub result: Solved,
}

impl Record {
    pub fn new(name: impl Into<String>, explanation: KeyExplanation, result: Solved) -> Self {
        Record {
            version: RECORD_VERSION,
            key: explanation.key(),
            name: name.into(),
            explanation,
            result,
        }
    }
}

/// A stable identity for a step across builds — the same stage and step number in the same
/// project — under which the last key is remembered. Hashed, so it is a safe file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position(Digest);

impl Position {
    /// The position of the vertex named `vertex_name` in `scope` (what identifies the project,
    /// e.g. the Dockerfile's path): see [`step_identity`].
    pub fn new(scope: &str, vertex_name: &str) -> Self {
        let identity = format!("{scope}\n{}", step_identity(vertex_name));
        Position(Digest::of(identity.as_bytes()))
    }
}

/// The part of a vertex name that survives edits to the step: `[build 2/4] RUN make` → `build 2`
/// (the step count and the instruction may change between builds); a name without a numbered
/// `[stage n/m]` prefix is its own identity.
pub fn step_identity(name: &str) -> &str {
    name.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(bracket, _)| bracket.rsplit_once('/'))
        .map_or(name, |(stage_and_step, _total)| stage_and_step)
}

/// What the record file `bytes` needs, for `imgb prune` (which owns no record format): its
/// layers (blob or snapshot) and the image documents it names. An unreadable record or one of
/// another version is an error, so prune removes it as a lookup would.
pub fn record_references(bytes: &[u8]) -> Result<Vec<RecordRef>, String> {
    let record: Record = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
    if record.version != RECORD_VERSION {
        return Err(format!(
            "record version {}, expected {RECORD_VERSION}",
            record.version
        ));
    }
    let Solved::Filesystem(filesystem) = record.result else {
        return Ok(Vec::new());
    };
    let layers = filesystem.layers.into_iter().map(|layer| RecordRef::Layer {
        diff_id: layer.diff_id,
        blob: layer.blob.digest,
    });
    let image = filesystem
        .image
        .into_iter()
        .flat_map(|origin| [origin.manifest, origin.config])
        .map(RecordRef::Blob);
    Ok(layers.chain(image).collect())
}

/// Why a record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum RecordProblem {
    /// A blob the result names is no longer in the store (removed by hand or by GC).
    MissingBlob { digest: Digest },
    /// Not a record of this version for this key.
    Unreadable { reason: String },
}

impl fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordProblem::MissingBlob { digest } => {
                write!(f, "its blob {digest} is missing from the store")
            }
            RecordProblem::Unreadable { reason } => write!(f, "it is unreadable: {reason}"),
        }
    }
}

/// Why a step ran instead of being served from the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum MissReason {
    /// Image sources and downloads are resolved on every build.
    Source,
    /// `--no-cache` or `--no-cache-filter` covers this step.
    CacheDisabled,
    /// Nothing was recorded for this step before (or the last record is gone).
    NoRecord,
    /// A record for this very key exists but cannot be used; it was removed.
    InvalidRecord { problem: RecordProblem },
    /// The last record of this step had a different key; these components differ.
    Changed {
        changes: Vec<Change>,
        /// The step's name in that record (its instruction text then).
        previous_name: String,
    },
}

impl fmt::Display for MissReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&|label| label.to_string()))
    }
}

impl MissReason {
    /// The reason in words, with `term` naming change labels (see [`Change::describe`]).
    pub fn describe(&self, term: &dyn Fn(&str) -> String) -> String {
        self.describe_each(term).join("; ")
    }

    /// The reason in words, one entry per changed component (a single one for the other
    /// reasons).
    pub fn describe_each(&self, term: &dyn Fn(&str) -> String) -> Vec<String> {
        match self {
            MissReason::Source => vec!["sources are resolved on every build".to_string()],
            MissReason::CacheDisabled => {
                vec!["cache disabled for this step (--no-cache or --no-cache-filter)".to_string()]
            }
            MissReason::NoRecord => vec!["no record".to_string()],
            MissReason::InvalidRecord { problem } => {
                vec![format!("the record for this step was dropped: {problem}")]
            }
            MissReason::Changed {
                changes,
                previous_name,
            } => changes
                .iter()
                .map(|change| {
                    let text = change.describe(term);
                    if change.component == INSTRUCTION {
                        format!("{text}; was `{previous_name}`")
                    } else {
                        text
                    }
                })
                .collect(),
        }
    }
}

/// The outcome of [`RecordStore::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(Record),
    Miss,
    /// There was a record for the key, but it could not be used and has been removed.
    Invalid(RecordProblem),
}

/// The outcome of [`RecordStore::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Hit(Record),
    Miss(MissReason),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot record {key}: blob {digest} is not in the store \
         (hint: a record may only name stored blobs; the step's executor must store its layers first)"
    )]
    BlobNotStored { key: CacheKey, digest: Digest },
    /// A store operation failed: writing the record file, or naming it in the build's lease.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RecordError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RecordError {
        let path = path.to_path_buf();
        move |source| RecordError::Io { op, path, source }
    }
}

/// The cache records of one state directory.
#[derive(Debug, Clone)]
pub struct RecordStore {
    store: Store,
}

impl RecordStore {
    pub fn new(store: Store) -> Self {
        RecordStore { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn record_path(&self, key: &CacheKey) -> PathBuf {
        self.store.records_dir().join(key.digest().hex())
    }

    /// Keeps the record of `key` from prune for the rest of the build's lease and marks it
    /// used: a hit refreshes its place in `imgb prune --keep-storage`'s LRU order.
    fn protect(&self, key: &CacheKey) -> Result<(), RecordError> {
        let name = key.digest().hex().to_owned();
        Ok(self.store.protect(&Resource::Record(name))?)
    }

    fn index_path(&self, position: &Position) -> PathBuf {
        self.store
            .records_dir()
            .join(BY_NAME)
            .join(position.0.hex())
    }

    /// The usable record for `key`, if any. An unusable one is removed (see the module docs).
    pub fn lookup(&self, key: &CacheKey) -> Result<Lookup, RecordError> {
        self.protect(key)?;
        let path = self.record_path(key);
        let Some((bytes, file_id)) = read_if_exists(&path)? else {
            return Ok(Lookup::Miss);
        };
        let problem = match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) if record.version != RECORD_VERSION || record.key != *key => {
                RecordProblem::Unreadable {
                    reason: format!(
                        "record version {} for key {}, expected version {RECORD_VERSION} for {key}",
                        record.version, record.key
                    ),
                }
            }
            Ok(record) => match record.result.missing_from(&self.store) {
                None => return Ok(Lookup::Hit(record)),
                Some(digest) => RecordProblem::MissingBlob {
                    digest: digest.clone(),
                },
            },
            Err(error) => RecordProblem::Unreadable {
                reason: error.to_string(),
            },
        };
        remove_if_unchanged(&path, file_id)?;
        Ok(Lookup::Invalid(problem))
    }

    /// Stores `record` durably; refuses one that names a blob the store does not hold.
    pub fn write(&self, record: &Record) -> Result<(), RecordError> {
        self.protect(&record.key)?;
        if let Some(digest) = record.result.missing_from(&self.store) {
            return Err(RecordError::BlobNotStored {
                key: record.key.clone(),
                digest: digest.clone(),
            });
        }
        let bytes = serde_json::to_vec(record).map_err(|error| {
            RecordError::io("encode record", &self.record_path(&record.key))(error.into())
        })?;
        self.store
            .write_small_file(&self.record_path(&record.key), &bytes, Durability::Synced)
            .map_err(RecordError::Store)
    }

    /// The key last solved at `position`, if remembered.
    pub fn last_key_at(&self, position: &Position) -> Result<Option<CacheKey>, RecordError> {
        let Some((bytes, _)) = read_if_exists(&self.index_path(position))? else {
            return Ok(None);
        };
        // A garbled index entry only costs an explanation.
        Ok(std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| Digest::parse(text.trim()).ok())
            .map(CacheKey::from))
    }

    pub fn set_last_key_at(&self, position: &Position, key: &CacheKey) -> Result<(), RecordError> {
        let path = self.index_path(position);
        let dir = self.store.records_dir().join(BY_NAME);
        fs::create_dir_all(&dir).map_err(RecordError::io("create directory", &dir))?;
        self.store
            .write_small_file(&path, key.to_string().as_bytes(), Durability::Advisory)
            .map_err(RecordError::Store)
    }

    /// Looks `key` up for the step at `position`. A hit makes `key` the position's last key;
    /// a miss is explained against the record of the position's last key.
    pub fn find(
        &self,
        key: &CacheKey,
        position: &Position,
        explanation: &KeyExplanation,
    ) -> Result<Found, RecordError> {
        match self.lookup(key)? {
            Lookup::Hit(record) => {
                if self.last_key_at(position)?.as_ref() != Some(key) {
                    self.set_last_key_at(position, key)?;
                }
                Ok(Found::Hit(record))
            }
            Lookup::Invalid(problem) => Ok(Found::Miss(MissReason::InvalidRecord { problem })),
            Lookup::Miss => Ok(Found::Miss(self.explain_miss(
                key,
                position,
                explanation,
            )?)),
        }
    }

    /// Why there is no record for `key`: what differs from the record last solved at
    /// `position`, or that there is none to compare with.
    pub fn explain_miss(
        &self,
        key: &CacheKey,
        position: &Position,
        explanation: &KeyExplanation,
    ) -> Result<MissReason, RecordError> {
        let previous = match self.last_key_at(position)? {
            Some(last) if last != *key => read_if_exists(&self.record_path(&last))?
                .and_then(|(bytes, _)| serde_json::from_slice::<Record>(&bytes).ok()),
            _ => None,
        };
        let Some(previous) = previous else {
            return Ok(MissReason::NoRecord);
        };
        let changes = explanation.changes_from(&previous.explanation);
        if changes.is_empty() {
            return Ok(MissReason::NoRecord);
        }
        Ok(MissReason::Changed {
            changes,
            previous_name: previous.name,
        })
    }

    fn listing_path(&self, selection: &Digest) -> PathBuf {
        self.store
            .records_dir()
            .join(CONTEXTS)
            .join(selection.hex())
    }

    /// Keeps `listing` as the one of `selection` (a context selection digest), unless one is
    /// kept already.
    pub fn write_listing(
        &self,
        selection: &Digest,
        listing: &ContextListing,
    ) -> Result<(), RecordError> {
        let path = self.listing_path(selection);
        if path.exists() {
            return Ok(());
        }
        let dir = self.store.records_dir().join(CONTEXTS);
        fs::create_dir_all(&dir).map_err(RecordError::io("create directory", &dir))?;
        self.store
            .write_small_file(&path, &listing.encode(), Durability::Advisory)
            .map_err(RecordError::Store)
    }

    /// The listing kept for `selection`, if any (an unreadable one only costs an explanation).
    pub fn listing(&self, selection: &Digest) -> Result<Option<ContextListing>, RecordError> {
        Ok(read_if_exists(&self.listing_path(selection))?
            .and_then(|(bytes, _)| ContextListing::decode(&bytes)))
    }

    /// Sharpens the `context files` changes in `changes` into the files that differ between
    /// the earlier selection's listing and `current`, where that listing was kept.
    pub fn explain_files(
        &self,
        changes: &mut [Change],
        current: &ContextListing,
    ) -> Result<(), RecordError> {
        for change in changes {
            let Some(ChangeDetail::Selection { from, .. }) = &change.detail else {
                continue;
            };
            let Ok(earlier) = Digest::parse(from) else {
                continue;
            };
            if let Some(earlier) = self.listing(&earlier)? {
                change.detail = Some(ChangeDetail::Files(current.changes_from(&earlier)));
            }
        }
        Ok(())
    }
}

/// Device and inode: which file a path named when it was read.
type FileId = (u64, u64);

fn read_if_exists(path: &Path) -> Result<Option<(Vec<u8>, FileId)>, RecordError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(RecordError::io("open", path)(error)),
    };
    let metadata = file.metadata().map_err(RecordError::io("stat", path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(RecordError::io("read", path))?;
    Ok(Some((bytes, (metadata.dev(), metadata.ino()))))
}

/// Removes `path` if it is still the file identified by `read`. The check and the removal are
/// not one atomic step; the window only risks dropping a fresh record (a rebuild), never
/// keeping a bad one.
fn remove_if_unchanged(path: &Path, read: FileId) -> Result<(), RecordError> {
    let current = match fs::symlink_metadata(path) {
        Ok(metadata) => (metadata.dev(), metadata.ino()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(RecordError::io("stat", path)(error)),
    };
    if current != read {
        return Ok(());
    }
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(RecordError::io("remove invalid record", path)(error))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
