//! Tests of context hashing on real directory trees in temporary directories.

mod escape;
mod merkle;
mod order_independence;
mod select;
mod stat_cache;
mod walking;

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::{ContextError, HashedContext, IncludeAll, PathFilter};

/// A temporary context directory and helpers to fill it.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        Tree {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (creating parent directories) with mode 0644.
    fn file(&self, rel: &str, contents: &str) -> &Self {
        let path = self.abs(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("parent directories");
        }
        fs::write(&path, contents).expect("write file");
        self.chmod(rel, 0o644)
    }

    fn dir(&self, rel: &str) -> &Self {
        fs::create_dir_all(self.abs(rel)).expect("create directory");
        self.chmod(rel, 0o755)
    }

    fn symlink(&self, rel: &str, target: &str) -> &Self {
        let path = self.abs(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("parent directories");
        }
        symlink(target, path).expect("create symlink");
        self
    }

    fn chmod(&self, rel: &str, mode: u32) -> &Self {
        fs::set_permissions(self.abs(rel), fs::Permissions::from_mode(mode)).expect("chmod");
        self
    }

    fn remove(&self, rel: &str) -> &Self {
        fs::remove_file(self.abs(rel)).expect("remove file");
        self
    }
}

/// Hashes without a stat cache, excluding nothing.
fn hash(tree: &Tree) -> HashedContext {
    hash_filtered(tree, &IncludeAll)
}

fn hash_filtered(tree: &Tree, filter: &dyn PathFilter) -> HashedContext {
    super::hash_context(tree.path(), filter, None).expect("hash context")
}

/// Hashes with a stat cache, as if the walk ran an hour from now so that every file written by
/// the test counts as settled.
fn hash_cached(tree: &Tree, cache_dir: &Path) -> HashedContext {
    hash_cached_at(
        tree,
        cache_dir,
        SystemTime::now() + Duration::from_secs(3600),
    )
}

fn hash_cached_at(tree: &Tree, cache_dir: &Path, started: SystemTime) -> HashedContext {
    super::walk::hash_context_at(tree.path(), &IncludeAll, Some(cache_dir), started)
        .expect("hash context")
}

/// The digest of the entry at `path`, which must exist.
fn digest_of(context: &HashedContext, path: &str) -> super::ContentDigest {
    context
        .get(path)
        .unwrap_or_else(|| panic!("no entry {path:?}"))
        .digest
}

fn paths(context: &HashedContext) -> Vec<&str> {
    context
        .entries()
        .iter()
        .map(|entry| entry.path.as_str())
        .collect()
}

/// A `.dockerignore`-like filter for tests: `excluded` paths (and everything below them) are
/// left out, except `reincluded` paths and everything below those. Records every path it is
/// asked about.
#[derive(Debug, Default)]
struct TestFilter {
    excluded: Vec<&'static str>,
    reincluded: Vec<&'static str>,
    /// `*.ext` patterns matching a base name anywhere.
    excluded_extensions: Vec<&'static str>,
    asked: Mutex<Vec<String>>,
}

fn at_or_below(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl PathFilter for TestFilter {
    fn excluded(&self, rel: &str, _is_dir: bool) -> bool {
        self.asked.lock().expect("lock").push(rel.to_owned());
        let by_extension = self.excluded_extensions.iter().any(|extension| {
            rel.rsplit('/')
                .next()
                .is_some_and(|name| name.ends_with(extension))
        });
        let excluded = by_extension || self.excluded.iter().any(|prefix| at_or_below(rel, prefix));
        excluded
            && !self
                .reincluded
                .iter()
                .any(|prefix| at_or_below(rel, prefix))
    }

    fn may_include_below(&self, dir: &str) -> bool {
        self.reincluded.iter().any(|kept| {
            kept.strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// The error of a selection that must fail.
fn select_error(context: &HashedContext, sources: &[&str]) -> ContextError {
    match context.select(sources, None) {
        Ok(selection) => panic!("{sources:?} selected {:?}", selection.sources),
        Err(error) => error,
    }
}
