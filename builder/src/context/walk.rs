//! The parallel walk behind [`super::hash_context`], in three passes:
//! 1. list the tree breadth-first, every directory of a level in parallel, `lstat`ing each entry
//!    and taking file digests from the stat cache where the stat data matches;
//! 2. read and hash the remaining files in parallel, largest first so one big file does not
//!    finish last on an otherwise idle pool;
//! 3. bottom-up, drop excluded directories nothing was re-included under, compute directory
//!    digests, and lay the entries out in tree order.
//!
//! Breadth-first listing keeps the stack flat however deep the context is. Files are opened
//! with `O_NOFOLLOW` and checked against what the listing saw, so a file swapped for a symlink
//! mid-walk is reported, not followed.

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use rustix::fs::{Mode, OFlags};
use sha2::{Digest as _, Sha256};

use super::digest::{ContentDigest, DirectoryHasher, special_file_digest};
use super::stat_cache::{CachedDigest, StatCache, StatKey};
use super::{ContextError, Entry, EntryKind, HashStats, HashedContext, PathFilter};

/// Read size when hashing a file: large enough for full-speed sequential reads.
const READ_CHUNK: u64 = 256 * 1024;

/// `S_IFMT`: the file type bits of `st_mode`.
const FILE_TYPE_MASK: u32 = 0o170_000;

/// A walked path while the tree is being assembled.
struct Node {
    entry: Entry,
    file: FileState,
    /// Indices of the children in `nodes`, in name order.
    children: Vec<usize>,
    /// An excluded directory walked only because something below may be re-included; it is
    /// dropped if nothing is.
    conditional: bool,
}

/// Where a regular file's digest comes from, with the stat data it belongs to.
#[derive(Clone, Copy)]
enum FileState {
    NotAFile,
    /// From the stat cache.
    Cached(StatKey),
    /// To be read in pass 2; the entry's digest is a placeholder until then.
    Read(StatKey),
}

impl Node {
    fn new(entry: Entry) -> Self {
        Node {
            entry,
            file: FileState::NotAFile,
            children: Vec::new(),
            conditional: false,
        }
    }
}

/// [`super::hash_context`] with the walk's start time given, so tests can age files.
pub(super) fn hash_context_at(
    root: &Path,
    filter: &dyn PathFilter,
    cache_dir: Option<&Path>,
    started: SystemTime,
) -> Result<HashedContext, ContextError> {
    let root_metadata = fs::metadata(root).map_err(|error| ContextError::io(root, error))?;
    if !root_metadata.is_dir() {
        return Err(ContextError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let canonical_root = root
        .canonicalize()
        .map_err(|error| ContextError::io(root, error))?;
    let cache = cache_dir
        .map(|dir| StatCache::load(dir, &canonical_root))
        .unwrap_or_default();

    let walker = Walker {
        root,
        filter,
        cache: &cache,
    };
    let mut nodes = walker.list_tree(&root_metadata)?;
    let mut stats = HashStats {
        cache_records_loaded: cache.len(),
        ..HashStats::default()
    };
    hash_files(root, &mut nodes, &mut stats)?;
    let entries = assemble(nodes, &mut stats, cache_dir.is_some(), started, &cache);

    let mut context = HashedContext {
        root: root.to_path_buf(),
        canonical_root,
        entries: entries.entries,
        stats,
    };
    if let Some(dir) = cache_dir
        && entries.cache_changed
    {
        let records = entries
            .settled
            .iter()
            .map(|&(index, record)| (context.entries[index].path.as_str(), record));
        match StatCache::save(dir, &context.canonical_root, records) {
            Ok(()) => context.stats.cache_written = true,
            Err(error) => context.stats.cache_save_error = Some(ContextError::io(dir, error)),
        }
    }
    Ok(context)
}

struct Walker<'a> {
    root: &'a Path,
    filter: &'a dyn PathFilter,
    cache: &'a StatCache,
}

impl Walker<'_> {
    /// Pass 1: every included path, parents before children (breadth-first), the root first.
    fn list_tree(&self, root_metadata: &Metadata) -> Result<Vec<Node>, ContextError> {
        let mut nodes = vec![Node::new(entry_from(
            String::new(),
            EntryKind::Dir,
            root_metadata,
        ))];
        let mut level = vec![0];
        while !level.is_empty() {
            let listings: Vec<Vec<Node>> = level
                .par_iter()
                .map(|&index| self.list_dir(&nodes[index].entry.path))
                .collect::<Result<_, _>>()?;
            nodes.reserve(listings.iter().map(Vec::len).sum());
            let mut next_level = Vec::new();
            for (parent, listing) in level.into_iter().zip(listings) {
                for child in listing {
                    let index = nodes.len();
                    if child.entry.is_dir() {
                        next_level.push(index);
                    }
                    nodes[parent].children.push(index);
                    nodes.push(child);
                }
            }
            level = next_level;
        }
        Ok(nodes)
    }

    /// The included children of the directory `rel`, in name order.
    fn list_dir(&self, rel: &str) -> Result<Vec<Node>, ContextError> {
        let dir = self.root.join(rel);
        let read_error = |error: io::Error| match error.kind() {
            // Listed a moment ago, gone now: something is changing the context.
            io::ErrorKind::NotFound if !rel.is_empty() => {
                ContextError::ChangedWhileHashing { path: dir.clone() }
            }
            _ => ContextError::io(&dir, error),
        };
        let mut listing = fs::read_dir(&dir)
            .map_err(read_error)?
            .map(|dirent| dirent.map(|dirent| (dirent.file_name(), dirent)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_error)?;
        listing.sort_unstable_by(|(left, _), (right, _)| left.cmp(right));
        listing
            .into_par_iter()
            .filter_map(|(name, dirent)| self.visit(rel, &name, &dirent).transpose())
            .collect()
    }

    /// One directory entry: `None` when it is excluded or vanished since it was listed.
    fn visit(
        &self,
        parent: &str,
        name: &std::ffi::OsStr,
        dirent: &fs::DirEntry,
    ) -> Result<Option<Node>, ContextError> {
        let utf8_name = name.to_str();
        // A non-UTF-8 name is matched in its lossy form: excluding it is how a user gets past it.
        let rel = join(
            parent,
            &utf8_name.map_or_else(|| name.to_string_lossy(), Into::into),
        );
        let listed_as_dir = dirent
            .file_type()
            .map_err(|error| ContextError::io(dirent.path(), error))?
            .is_dir();
        let excluded = self.filter.excluded(&rel, listed_as_dir);
        let conditional = excluded && listed_as_dir && self.filter.may_include_below(&rel);
        if excluded && !conditional {
            return Ok(None);
        }
        if utf8_name.is_none() {
            return Err(ContextError::NonUtf8Name {
                path: dirent.path(),
            });
        }
        let metadata = match dirent.metadata() {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ContextError::io(dirent.path(), error)),
        };
        let file_type = metadata.file_type();
        if conditional && !file_type.is_dir() {
            return Ok(None);
        }

        let mut node = if file_type.is_dir() {
            Node::new(entry_from(rel, EntryKind::Dir, &metadata))
        } else if file_type.is_file() {
            let key = StatKey::of(&metadata);
            let cached = self.cache.lookup(&rel, &key);
            let mut node = Node::new(entry_from(rel, EntryKind::File, &metadata));
            node.file = match cached {
                Some(digest) => {
                    node.entry.digest = digest;
                    FileState::Cached(key)
                }
                None => FileState::Read(key),
            };
            node
        } else if file_type.is_symlink() {
            let target = fs::read_link(dirent.path())
                .map_err(|error| ContextError::io(dirent.path(), error))?
                .into_os_string()
                .into_string()
                .map_err(|_| ContextError::NonUtf8Target {
                    path: dirent.path(),
                })?;
            let mut entry = entry_from(rel, EntryKind::Symlink { target }, &metadata);
            if let EntryKind::Symlink { target } = &entry.kind {
                entry.digest = ContentDigest::of(target.as_bytes());
            }
            Node::new(entry)
        } else {
            let type_bits = metadata.mode() & FILE_TYPE_MASK;
            let rdev = if file_type.is_block_device() || file_type.is_char_device() {
                metadata.rdev()
            } else {
                0
            };
            let mut entry = entry_from(rel, EntryKind::Other { type_bits, rdev }, &metadata);
            entry.digest = special_file_digest(type_bits, rdev);
            Node::new(entry)
        };
        node.conditional = conditional;
        Ok(Some(node))
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// An entry with its metadata; the digest is filled in later for files and directories.
fn entry_from(path: String, kind: EntryKind, metadata: &Metadata) -> Entry {
    Entry {
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        size: metadata.size(),
        ..Entry {
            path,
            kind,
            ..placeholder_entry()
        }
    }
}

/// An entry without data, allocating nothing.
fn placeholder_entry() -> Entry {
    Entry {
        path: String::new(),
        kind: EntryKind::Dir,
        mode: 0,
        uid: 0,
        gid: 0,
        size: 0,
        digest: ContentDigest::from_bytes([0; 32]),
        subtree_len: 1,
    }
}

/// Pass 2: read and hash every file the stat cache could not vouch for.
fn hash_files(root: &Path, nodes: &mut [Node], stats: &mut HashStats) -> Result<(), ContextError> {
    let mut pending: Vec<(&mut Entry, &mut StatKey)> = nodes
        .iter_mut()
        .filter_map(|Node { entry, file, .. }| match file {
            FileState::Read(key) => Some((entry, key)),
            FileState::NotAFile | FileState::Cached(_) => None,
        })
        .collect();
    pending.sort_unstable_by_key(|(entry, _)| std::cmp::Reverse(entry.size));
    stats.files_hashed = pending.len();
    pending.par_iter_mut().try_for_each(|(entry, key)| {
        let (digest, read_under) = hash_file(&root.join(&entry.path), key)?;
        entry.digest = digest;
        entry.size = read_under.size;
        **key = read_under;
        Ok::<(), ContextError>(())
    })?;
    stats.bytes_hashed = pending.iter().map(|(entry, _)| entry.size).sum();
    Ok(())
}

/// The sha256 of the regular file at `path` and the stat data it was read under. The file must
/// still be the one the listing saw (same inode and device).
fn hash_file(path: &Path, listed: &StatKey) -> Result<(ContentDigest, StatKey), ContextError> {
    let changed = || ContextError::ChangedWhileHashing {
        path: path.to_path_buf(),
    };
    let io_error = |error: io::Error| ContextError::io(path, error);
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let mut file = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        // ELOOP: the path has become a symlink.
        Err(rustix::io::Errno::LOOP) => return Err(changed()),
        Err(errno) => return Err(io_error(errno.into())),
    };
    let metadata = file.metadata().map_err(io_error)?;
    let key = StatKey::of(&metadata);
    if !metadata.is_file() || listed.ino != key.ino || listed.dev != key.dev {
        return Err(changed());
    }

    let mut hasher = Sha256::new();
    // One byte more than the size, so a file read whole is known to be at its end.
    let chunk = key.size.saturating_add(1).min(READ_CHUNK);
    let mut buffer = vec![0; usize::try_from(chunk).unwrap_or(usize::MAX)];
    let mut read_total = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                hasher.update(&buffer[..read]);
                read_total += read as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(io_error(error)),
        }
    }
    if read_total != key.size {
        return Err(changed());
    }
    Ok((ContentDigest::finish(hasher), key))
}

/// The outcome of pass 3.
struct Assembled {
    entries: Vec<Entry>,
    /// Files whose records may be saved, as (index into `entries`, record).
    settled: Vec<(usize, CachedDigest)>,
    /// Whether the records to save differ from the ones loaded.
    cache_changed: bool,
}

/// Pass 3: prune, digest directories bottom-up, lay out in tree order, and count.
fn assemble(
    mut nodes: Vec<Node>,
    stats: &mut HashStats,
    with_cache: bool,
    started: SystemTime,
    cache: &StatCache,
) -> Assembled {
    // Children always have larger indices than their parent, so a reverse sweep sees every
    // directory after all of its descendants.
    let mut kept = vec![true; nodes.len()];
    for index in (0..nodes.len()).rev() {
        if !nodes[index].entry.is_dir() {
            continue;
        }
        let children: Vec<usize> = std::mem::take(&mut nodes[index].children)
            .into_iter()
            .filter(|&child| kept[child])
            .collect();
        if nodes[index].conditional && children.is_empty() {
            kept[index] = false;
            continue;
        }
        let mut hasher = DirectoryHasher::new();
        let mut subtree_len = 1;
        for &child in &children {
            let child = &nodes[child].entry;
            hasher.add_child(
                child.name(),
                child.kind.type_tag(),
                child.mode,
                &child.digest,
            );
            subtree_len += child.subtree_len;
        }
        let directory = &mut nodes[index];
        directory.entry.digest = hasher.finish();
        directory.entry.subtree_len = subtree_len;
        directory.children = children;
    }

    let mut order = Vec::with_capacity(nodes.len());
    let mut stack = vec![0];
    while let Some(index) = stack.pop() {
        order.push(index);
        stack.extend(nodes[index].children.iter().rev());
    }

    let walk_started_ns = started.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
    });
    let mut entries = Vec::with_capacity(order.len());
    let mut settled = Vec::new();
    let mut settled_hits = 0;
    for index in order {
        let node = &mut nodes[index];
        if let FileState::Cached(key) | FileState::Read(key) = node.file {
            let from_cache = matches!(node.file, FileState::Cached(_));
            stats.files += 1;
            stats.cache_hits += usize::from(from_cache);
            if key.is_settled(walk_started_ns) {
                settled_hits += usize::from(from_cache);
                let record = CachedDigest {
                    key,
                    digest: node.entry.digest,
                };
                settled.push((entries.len(), record));
            } else {
                stats.racy_files += 1;
            }
        }
        // Each index occurs once in `order`: the placeholder left behind is never read.
        entries.push(std::mem::replace(&mut node.entry, placeholder_entry()));
    }
    stats.entries = entries.len();
    let cache_changed =
        with_cache && (settled.len() != settled_hits || settled_hits != cache.len());
    Assembled {
        entries,
        settled,
        cache_changed,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn file_replaced_since_the_listing_is_reported_not_hashed() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (listed, replacement) = (dir.path().join("listed"), dir.path().join("other"));
        fs::write(&listed, "one").expect("write");
        fs::write(&replacement, "two").expect("write");
        let listed_key = StatKey::of(&fs::symlink_metadata(&listed).expect("stat"));
        fs::rename(&replacement, &listed).expect("replace");

        let error = hash_file(&listed, &listed_key).expect_err("another inode");
        assert!(
            matches!(error, ContextError::ChangedWhileHashing { .. }),
            "{error}"
        );
    }

    #[test]
    fn file_turned_symlink_is_not_followed() {
        let dir = tempfile::tempdir().expect("temporary directory");
        fs::write(dir.path().join("target"), "secret").expect("write");
        let listed_key =
            StatKey::of(&fs::symlink_metadata(dir.path().join("target")).expect("stat"));
        symlink("target", dir.path().join("link")).expect("symlink");

        let error = hash_file(&dir.path().join("link"), &listed_key).expect_err("a symlink");
        assert!(
            matches!(error, ContextError::ChangedWhileHashing { .. }),
            "{error}"
        );
    }
}
