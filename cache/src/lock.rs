//! Cross-process locks on files in the state directory (`flock(2)`).
//!
//! A [`FileLock`] holds an exclusive or shared lock for as long as it lives; the kernel drops it
//! when the descriptor closes, so a crashed process never leaves a stale lock behind. Locks
//! guard read-modify-write cycles (the image name table); single-file writes need none because
//! they are atomic renames.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::store::StoreError;

/// A held `flock` on a lock file.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until `path` (created if missing) is locked exclusively.
    pub fn exclusive(path: &Path) -> Result<Self, StoreError> {
        Self::acquire(path, FlockOperation::LockExclusive)
    }

    /// Blocks until `path` (created if missing) is locked shared.
    pub fn shared(path: &Path) -> Result<Self, StoreError> {
        Self::acquire(path, FlockOperation::LockShared)
    }

    /// Locks `path` (created if missing) exclusively if nobody holds it; `None` otherwise.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>, StoreError> {
        match Self::acquire(path, FlockOperation::NonBlockingLockExclusive) {
            Ok(lock) => Ok(Some(lock)),
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    fn acquire(path: &Path, operation: FlockOperation) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(StoreError::io("open lock file", path))?;
        flock(&file, operation).map_err(|errno| StoreError::io("lock", path)(errno.into()))?;
        Ok(Self {
            _file: file,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn exclusive_lock_blocks_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = FileLock::exclusive(&path).unwrap();
        let acquired = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // A separate open file description, as another process would have.
                let _second = FileLock::exclusive(&path).unwrap();
                acquired.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!acquired.load(Ordering::SeqCst));
            drop(first);
        });
        assert!(acquired.load(Ordering::SeqCst));
    }

    #[test]
    fn try_exclusive_gives_way_to_any_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.lock");
        let shared = FileLock::shared(&path).unwrap();
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        drop(shared);
        let held = FileLock::try_exclusive(&path).unwrap();
        assert!(held.is_some());
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
    }

    #[test]
    fn shared_locks_coexist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.lock");
        let a = FileLock::shared(&path).unwrap();
        let b = FileLock::shared(&path).unwrap();
        assert_eq!(a.path(), b.path());
    }
}
