//! The image name table: image name → manifest digest, in `images/names.json`.
//!
//! Readers load the file without locking (it is only ever replaced by an atomic rename).
//! Writers take `images/names.lock` exclusively, read, modify, and replace the file, so
//! concurrent tagging from several processes never loses an update. Names are checked only for
//! what would corrupt the table or confuse a terminal; reference syntax belongs to the caller.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use crate::digest::Digest;
use crate::lock::FileLock;
use crate::store::{Store, StoreError, TmpFile};

const TABLE: &str = "names.json";
const LOCK: &str = "names.lock";
const MAX_NAME_LEN: usize = 4096;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct NameTable {
    images: BTreeMap<String, Digest>,
}

impl Store {
    /// All image names and their manifest digests.
    pub fn images(&self) -> Result<BTreeMap<String, Digest>, StoreError> {
        Ok(self.load_names()?.images)
    }

    /// The manifest digest `name` points at, if any.
    pub fn image(&self, name: &str) -> Result<Option<Digest>, StoreError> {
        Ok(self.load_names()?.images.remove(name))
    }

    /// Points `name` at `manifest`; returns the digest it pointed at before.
    pub fn tag_image(&self, name: &str, manifest: &Digest) -> Result<Option<Digest>, StoreError> {
        validate_name(name)?;
        self.update_names(|table| table.images.insert(name.to_owned(), manifest.clone()))
    }

    /// Removes `name`; returns the digest it pointed at.
    pub fn untag_image(&self, name: &str) -> Result<Option<Digest>, StoreError> {
        self.update_names(|table| table.images.remove(name))
    }

    fn names_path(&self) -> PathBuf {
        self.images_dir().join(TABLE)
    }

    fn load_names(&self) -> Result<NameTable, StoreError> {
        let path = self.names_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::ImageTable { path, source }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(NameTable::default()),
            Err(error) => Err(StoreError::io("read image names", path)(error)),
        }
    }

    fn update_names<T>(&self, change: impl FnOnce(&mut NameTable) -> T) -> Result<T, StoreError> {
        let _lock = FileLock::exclusive(&self.images_dir().join(LOCK))?;
        let mut table = self.load_names()?;
        let result = change(&mut table);
        let path = self.names_path();
        let mut bytes =
            serde_json::to_vec_pretty(&table).map_err(|source| StoreError::ImageTable {
                path: path.clone(),
                source,
            })?;
        bytes.push(b'\n');
        let mut tmp = TmpFile::create(&self.tmp_dir(), "names")?;
        tmp.write_all(&bytes)
            .map_err(StoreError::io("write image names", self.tmp_dir()))?;
        tmp.persist(&path)?;
        Ok(result)
    }
}

fn validate_name(name: &str) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 4096 bytes"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidImageName {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn tag_lookup_retag_and_untag() {
        let (_dir, store) = store();
        let one = Digest::of(b"one");
        let two = Digest::of(b"two");
        assert_eq!(store.image("app:latest").unwrap(), None);
        assert_eq!(store.tag_image("app:latest", &one).unwrap(), None);
        assert_eq!(store.image("app:latest").unwrap(), Some(one.clone()));
        assert_eq!(store.tag_image("app:latest", &two).unwrap(), Some(one));
        assert_eq!(store.untag_image("app:latest").unwrap(), Some(two));
        assert!(store.images().unwrap().is_empty());
    }

    #[test]
    fn invalid_names_are_rejected() {
        let (_dir, store) = store();
        let digest = Digest::of(b"x");
        for name in ["", "bad\nname"] {
            let error = store.tag_image(name, &digest).unwrap_err();
            assert!(
                matches!(error, StoreError::InvalidImageName { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn concurrent_taggers_lose_no_update() {
        let (_dir, store) = store();
        let digest = Digest::of(b"m");
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (store, digest) = (&store, &digest);
                scope.spawn(move || {
                    for i in 0..10 {
                        store
                            .tag_image(&format!("img{thread}-{i}"), digest)
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(store.images().unwrap().len(), 40);
    }

    #[test]
    fn corrupt_table_is_reported_with_path() {
        let (_dir, store) = store();
        std::fs::write(store.names_path(), b"{not json").unwrap();
        let error = store.images().unwrap_err();
        assert!(error.to_string().contains("names.json"), "{error}");
    }
}
