//! The registry's chunked blob upload sessions (`/v2/<name>/blobs/uploads/<id>`), kept on disk
//! so that they survive a server restart.
//!
//! A session is a file `registry/uploads/<id>` in the server's store holding the bytes received
//! so far. Between requests its [`BlobWriter`] (which hashes while appending) stays in memory;
//! after a restart it is rebuilt from the file, whose content is hashed again. Closing the
//! session commits the file into the blob store with one rename, and only when its content
//! hashes to the client's digest.
//!
//! Invariants:
//! - One request at a time per session: a session in use is [`Slot::Busy`], and another
//!   request on it meanwhile finds it unknown rather than interleaving bytes.
//! - Ids are 32 lowercase hex digits, checked before they become paths.
//! - A session untouched for [`IDLE`] is removed when a new one starts, and at server start;
//!   at most [`MAX_OPEN`] are open.
//! - After a kill, a session's file holds what requests wrote to it (the last one perhaps
//!   partly): a client that asks for the upload's `Range` goes on from there, and the store
//!   only ever receives whole, verified blobs.

use anyhow::Context;
use imgb_cache::{BlobWriter, Digest, Store, StoreError};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Upload sessions open at once.
pub const MAX_OPEN: usize = 256;
/// A session untouched this long is abandoned.
pub const IDLE: Duration = Duration::from_secs(3600);
const ID_LENGTH: usize = 32;

/// The open sessions: their files, and the writers of those between requests. A session's
/// last use is its file's mtime (appending updates it), so it carries over a restart.
#[derive(Debug)]
pub struct Uploads {
    dir: PathBuf,
    slots: Mutex<HashMap<String, Slot>>,
    counter: AtomicU64,
}

#[derive(Debug)]
enum Slot {
    Idle(Box<BlobWriter>),
    /// A request is appending to or closing the session.
    Busy,
}

impl Uploads {
    /// The sessions in `dir` (created if missing), after removing those idle for [`IDLE`].
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let uploads = Self {
            dir,
            slots: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        };
        uploads.remove_stale(&uploads.slots())?;
        Ok(uploads)
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Every change under the lock is a single insert or removal, so a poisoned lock still
        // guards a consistent map.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session's file; `None` for an id this server could not have issued.
    fn path(&self, id: &str) -> Option<PathBuf> {
        let valid = id.len() == ID_LENGTH
            && id
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        valid.then(|| self.dir.join(id))
    }

    /// Opens a session on `store`; its id, or `None` when too many are open.
    pub fn start(&self, store: &Store) -> anyhow::Result<Option<String>> {
        let mut slots = self.slots();
        if self.sweep(&mut slots)? >= MAX_OPEN {
            return Ok(None);
        }
        let id = self.fresh_id();
        let writer = store.resume_blob_writer(&self.dir.join(&id))?;
        slots.insert(id.clone(), Slot::Idle(Box::new(writer)));
        Ok(Some(id))
    }

    /// Ends the sessions idle for [`IDLE`], dropping their writers too (and with them the
    /// store lease each holds).
    pub fn remove_idle(&self) -> anyhow::Result<()> {
        self.sweep(&mut self.slots()).map(drop)
    }

    /// Removes idle sessions' files and writers; returns how many sessions remain.
    fn sweep(&self, slots: &mut HashMap<String, Slot>) -> anyhow::Result<usize> {
        let open = self
            .remove_stale(slots)
            .with_context(|| format!("listing {}", self.dir.display()))?;
        slots.retain(|id, slot| {
            matches!(slot, Slot::Busy) || self.path(id).is_some_and(|path| path.exists())
        });
        Ok(open)
    }

    /// Removes session files untouched for [`IDLE`] that no request is using; returns how many
    /// sessions remain.
    fn remove_stale(&self, slots: &HashMap<String, Slot>) -> std::io::Result<usize> {
        let mut open = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let busy = name
                .to_str()
                .is_some_and(|id| matches!(slots.get(id), Some(Slot::Busy)));
            let idle_for = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .map(|modified| {
                    SystemTime::now()
                        .duration_since(modified)
                        .unwrap_or_default()
                });
            match idle_for {
                Ok(idle_for) if !busy && idle_for >= IDLE => {
                    remove(&entry.path());
                }
                // Removed meanwhile by the request that closed it.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                _ => open += 1,
            }
        }
        Ok(open)
    }

    /// A fresh, hard to guess id.
    fn fresh_id(&self) -> String {
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seed = format!("{}:{count}:{now}:{:p}", std::process::id(), &self.slots);
        Digest::of(seed.as_bytes())
            .hex()
            .get(..ID_LENGTH)
            .unwrap_or_default()
            .to_string()
    }

    /// The session's writer for one request, marking it busy; a session left by an earlier
    /// server is resumed from its file (hashing it: call off the async threads). `Ok(None)`:
    /// no such session, or another request is using it.
    pub fn take(&self, store: &Store, id: &str) -> Result<Option<BlobWriter>, StoreError> {
        let Some(path) = self.path(id) else {
            return Ok(None);
        };
        let mut slots = self.slots();
        let previous = slots.insert(id.to_string(), Slot::Busy);
        match previous {
            Some(Slot::Idle(writer)) => Ok(Some(*writer)),
            Some(Slot::Busy) => Ok(None),
            None if path.is_file() => {
                drop(slots);
                let resumed = store.resume_blob_writer(&path);
                if resumed.is_err() {
                    self.slots().remove(id);
                }
                resumed.map(Some)
            }
            None => {
                slots.remove(id);
                Ok(None)
            }
        }
    }

    /// Ends a request on the session, which stays open: its bytes are flushed to the file, so
    /// the file's length is what [`written`](Self::written) reports after a restart.
    pub fn put_back(&self, id: &str, mut writer: BlobWriter) -> std::io::Result<()> {
        if let Err(error) = writer.flush() {
            self.discard(id);
            return Err(error);
        }
        self.slots()
            .insert(id.to_string(), Slot::Idle(Box::new(writer)));
        Ok(())
    }

    /// Ends the session (closed, failed or deleted), removing its file; whether it existed.
    pub fn discard(&self, id: &str) -> bool {
        let slot = self.slots().remove(id);
        let file = self.path(id).is_some_and(|path| remove(&path));
        slot.is_some() || file
    }

    /// Bytes the session holds; `None` for an unknown session.
    pub fn written(&self, id: &str) -> Option<u64> {
        let path = self.path(id)?;
        if let Some(Slot::Idle(writer)) = self.slots().get(id) {
            return Some(writer.written());
        }
        std::fs::metadata(path).ok().map(|metadata| metadata.len())
    }
}

/// Removes a session file; whether it was there.
fn remove(path: &Path) -> bool {
    std::fs::remove_file(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploads() -> (tempfile::TempDir, Store, Uploads) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        let uploads = Uploads::open(dir.path().join("root/registry/uploads")).unwrap();
        (dir, store, uploads)
    }

    #[test]
    fn a_session_serves_one_request_at_a_time() {
        let (_dir, store, uploads) = uploads();
        let id = uploads.start(&store).unwrap().unwrap();
        let mut writer = uploads.take(&store, &id).unwrap().unwrap();
        assert!(uploads.take(&store, &id).unwrap().is_none());
        writer.write_all(b"abc").unwrap();
        uploads.put_back(&id, writer).unwrap();
        assert_eq!(uploads.written(&id), Some(3));
        let writer = uploads.take(&store, &id).unwrap().unwrap();
        assert_eq!(writer.written(), 3);
        assert!(uploads.discard(&id));
        assert_eq!(uploads.written(&id), None);
    }

    #[test]
    fn ids_the_server_did_not_issue_never_become_paths() {
        let (_dir, store, uploads) = uploads();
        let upper = "A".repeat(ID_LENGTH);
        let long = "a".repeat(ID_LENGTH + 1);
        for id in ["", "../../leases", upper.as_str(), long.as_str()] {
            assert!(uploads.take(&store, id).unwrap().is_none(), "{id}");
            assert_eq!(uploads.written(id), None, "{id}");
            assert!(!uploads.discard(id), "{id}");
        }
    }

    #[test]
    fn idle_sessions_are_removed_with_their_writers() {
        let (_dir, store, uploads) = uploads();
        let idle = uploads.start(&store).unwrap().unwrap();
        let fresh = uploads.start(&store).unwrap().unwrap();
        let idle_file = uploads.path(&idle).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&idle_file)
            .unwrap()
            .set_modified(SystemTime::now() - IDLE - Duration::from_secs(60))
            .unwrap();
        uploads.remove_idle().unwrap();
        assert!(!idle_file.exists());
        assert!(!uploads.slots().contains_key(&idle));
        assert_eq!(uploads.written(&fresh), Some(0));
    }
}
