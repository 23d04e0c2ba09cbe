use std::fs::FileTimes;
use std::time::{Duration, SystemTime};

use super::*;
use crate::context::ContentDigest;
use crate::context::stat_cache::{CachedDigest, FILE_NAME, RACY_WINDOW_NS, StatCache, StatKey};

fn cache_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("cache directory")
}

fn sample() -> Tree {
    let tree = Tree::new();
    tree.file("a.txt", "alpha")
        .file("sub/b.txt", "beta")
        .file("sub/c.txt", "gamma");
    tree
}

#[test]
fn warm_rehash_reads_no_file_and_leaves_the_cache_file_alone() {
    let tree = sample();
    let cache = cache_dir();
    let cold = hash_cached(&tree, cache.path());
    assert_eq!(cold.stats().files_hashed, 3);
    assert!(cold.stats().cache_written);
    let written = fs::metadata(cache.path().join(FILE_NAME)).expect("cache file");

    let warm = hash_cached(&tree, cache.path());

    assert_eq!(warm.digest(), cold.digest());
    assert_eq!(warm.entries(), cold.entries());
    assert_eq!(warm.stats().files_hashed, 0);
    assert_eq!(warm.stats().cache_hits, 3);
    assert_eq!(warm.stats().cache_records_loaded, 3);
    assert!(!warm.stats().cache_written);
    let after = fs::metadata(cache.path().join(FILE_NAME)).expect("cache file");
    assert_eq!(after.modified().ok(), written.modified().ok());
}

#[test]
fn matching_stat_data_reuses_the_recorded_digest_without_reading_the_file() {
    let tree = sample();
    let cache = cache_dir();
    let canonical = tree.path().canonicalize().expect("canonical root");
    let key = StatKey::of(&fs::symlink_metadata(tree.abs("a.txt")).expect("stat"));
    let planted = ContentDigest::of(b"not the contents");
    StatCache::save(
        cache.path(),
        &canonical,
        [(
            "a.txt",
            CachedDigest {
                key,
                digest: planted,
            },
        )]
        .into_iter(),
    )
    .expect("save cache");

    let context = hash_cached(&tree, cache.path());

    assert_eq!(digest_of(&context, "a.txt"), planted);
    assert_eq!(context.stats().files_hashed, 2);
}

#[test]
fn lookup_misses_when_any_stat_field_differs() {
    let key = StatKey {
        size: 5,
        mtime_ns: 1_000,
        ctime_ns: 2_000,
        ino: 42,
        dev: 7,
        mode: 0o100_644,
    };
    let cache = cache_dir();
    let root = Path::new("/context");
    let digest = ContentDigest::of(b"alpha");
    StatCache::save(
        cache.path(),
        root,
        [("a.txt", CachedDigest { key, digest })].into_iter(),
    )
    .expect("save cache");
    let loaded = StatCache::load(cache.path(), root);

    assert_eq!(loaded.lookup("a.txt", &key), Some(digest));
    assert_eq!(loaded.lookup("b.txt", &key), None);
    let variants = [
        StatKey { size: 6, ..key },
        StatKey {
            mtime_ns: 1_001,
            ..key
        },
        StatKey {
            ctime_ns: 2_001,
            ..key
        },
        StatKey { ino: 43, ..key },
        StatKey { dev: 8, ..key },
        StatKey {
            mode: 0o100_755,
            ..key
        },
    ];
    for variant in variants {
        assert_eq!(loaded.lookup("a.txt", &variant), None, "{variant:?}");
    }
}

/// Hashes twice with the cache and returns the second run, after `change` ran between them.
fn rehash_after(change: impl FnOnce(&Tree)) -> (Tree, HashedContext) {
    let tree = sample();
    let cache = cache_dir();
    hash_cached(&tree, cache.path());
    change(&tree);
    let context = hash_cached(&tree, cache.path());
    (tree, context)
}

fn set_mtime(tree: &Tree, rel: &str, mtime: SystemTime) {
    fs::File::options()
        .write(true)
        .open(tree.abs(rel))
        .expect("open")
        .set_times(FileTimes::new().set_modified(mtime))
        .expect("set mtime");
}

#[test]
fn size_change_is_a_miss() {
    let (_tree, context) = rehash_after(|tree| {
        tree.file("a.txt", "alphabet");
    });
    assert_eq!(context.stats().files_hashed, 1);
    assert_eq!(digest_of(&context, "a.txt"), ContentDigest::of(b"alphabet"));
}

#[test]
fn same_size_rewrite_with_the_old_mtime_is_a_miss_through_ctime() {
    let (_tree, context) = rehash_after(|tree| {
        let mtime = fs::metadata(tree.abs("a.txt"))
            .and_then(|m| m.modified())
            .expect("mtime");
        tree.file("a.txt", "ALPHA");
        set_mtime(tree, "a.txt", mtime);
    });
    assert_eq!(context.stats().files_hashed, 1);
    assert_eq!(digest_of(&context, "a.txt"), ContentDigest::of(b"ALPHA"));
}

#[test]
fn mtime_change_is_a_miss() {
    let (_tree, context) = rehash_after(|tree| {
        set_mtime(
            tree,
            "sub/b.txt",
            SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
        );
    });
    assert_eq!(context.stats().files_hashed, 1);
}

#[test]
fn ctime_only_change_is_a_miss() {
    // A hard link added and removed leaves size, mtime, inode and mode as they were.
    let (_tree, context) = rehash_after(|tree| {
        fs::hard_link(tree.abs("sub/c.txt"), tree.abs("sub/c.link")).expect("link");
        fs::remove_file(tree.abs("sub/c.link")).expect("unlink");
    });
    assert_eq!(context.stats().files_hashed, 1);
}

#[test]
fn replaced_inode_is_a_miss() {
    let (_tree, context) = rehash_after(|tree| {
        let mtime = fs::metadata(tree.abs("a.txt"))
            .and_then(|m| m.modified())
            .expect("mtime");
        fs::write(tree.abs("a.new"), "alpha").expect("write");
        fs::rename(tree.abs("a.new"), tree.abs("a.txt")).expect("rename");
        tree.chmod("a.txt", 0o644);
        set_mtime(tree, "a.txt", mtime);
    });
    assert_eq!(context.stats().files_hashed, 1);
    assert_eq!(digest_of(&context, "a.txt"), ContentDigest::of(b"alpha"));
}

#[test]
fn racy_file_is_hashed_again_until_it_has_settled() {
    let tree = sample();
    let cache = cache_dir();
    let changed_at = fs::metadata(tree.abs("a.txt"))
        .and_then(|m| m.modified())
        .expect("mtime");
    let window = Duration::from_nanos(RACY_WINDOW_NS.unsigned_abs());

    // Walks starting right after the files were written must not trust what they read.
    let first = hash_cached_at(&tree, cache.path(), changed_at);
    assert_eq!(first.stats().racy_files, 3);
    let second = hash_cached_at(&tree, cache.path(), changed_at + window / 2);
    assert_eq!(second.stats().files_hashed, 3);

    // Once the changes are older than the window, the digests are recorded and reused.
    let settled = hash_cached_at(&tree, cache.path(), changed_at + window * 2);
    assert_eq!(settled.stats().racy_files, 0);
    assert!(settled.stats().cache_written);
    let warm = hash_cached_at(&tree, cache.path(), changed_at + window * 3);
    assert_eq!(warm.stats().files_hashed, 0);
}

#[test]
fn corrupt_truncated_or_foreign_cache_files_are_ignored() {
    let tree = sample();
    let expected = hash(&tree).digest();
    let other = sample();
    let foreign = cache_dir();
    hash_cached(&other, foreign.path());
    let valid = fs::read(foreign.path().join(FILE_NAME)).expect("cache file");

    let mut flipped = valid.clone();
    flipped[valid.len() / 2] ^= 0x40;
    let truncated = valid[..valid.len() - 1].to_vec();
    let garbage = b"definitely not a stat cache".to_vec();
    for (name, bytes) in [
        ("flipped", flipped),
        ("truncated", truncated),
        ("garbage", garbage),
        ("foreign", valid),
        ("empty", Vec::new()),
    ] {
        let cache = cache_dir();
        fs::write(cache.path().join(FILE_NAME), bytes).expect("plant cache file");
        let context = hash_cached(&tree, cache.path());
        assert_eq!(context.stats().cache_records_loaded, 0, "{name}");
        assert_eq!(context.stats().files_hashed, 3, "{name}");
        assert_eq!(context.digest(), expected, "{name}");
        assert!(
            context.stats().cache_written,
            "{name}: the cache is rewritten"
        );
        assert_eq!(
            hash_cached(&tree, cache.path()).stats().files_hashed,
            0,
            "{name}"
        );
    }
}

#[test]
fn removed_file_is_dropped_from_the_cache() {
    let tree = sample();
    let cache = cache_dir();
    hash_cached(&tree, cache.path());
    tree.remove("sub/b.txt");
    let context = hash_cached(&tree, cache.path());
    assert_eq!(context.stats().files_hashed, 0);
    assert!(context.stats().cache_written);
    assert_eq!(
        hash_cached(&tree, cache.path())
            .stats()
            .cache_records_loaded,
        2
    );
}

#[test]
fn saving_leaves_no_temporary_files() {
    let tree = sample();
    let cache = cache_dir();
    hash_cached(&tree, cache.path());
    tree.file("d.txt", "delta");
    hash_cached(&tree, cache.path());
    let names: Vec<_> = fs::read_dir(cache.path())
        .expect("list cache directory")
        .map(|dirent| dirent.expect("dirent").file_name())
        .collect();
    assert_eq!(names, [FILE_NAME]);
}

#[test]
fn unwritable_cache_directory_is_reported_but_hashing_succeeds() {
    let tree = sample();
    let blocker = cache_dir();
    fs::write(
        blocker.path().join("file"),
        "a file where the cache directory should be",
    )
    .expect("write");
    let context = hash_cached(&tree, &blocker.path().join("file/contexts"));
    assert!(context.stats().cache_save_error.is_some());
    assert_eq!(context.digest(), hash(&tree).digest());
}

#[test]
fn cache_id_names_the_canonical_context_path() {
    let tree = sample();
    tree.symlink("self", ".");
    let direct = crate::context::context_cache_id(tree.path()).expect("id");
    let via_link = crate::context::context_cache_id(&tree.abs("self")).expect("id");
    assert_eq!(direct, via_link);
    assert_eq!(direct.len(), 64);
    assert_ne!(
        direct,
        crate::context::context_cache_id(&tree.abs("sub")).expect("id")
    );
}
